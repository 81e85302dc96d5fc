// AsyncDiff split tables against the reference (the reference scripts' SDXL split tables and SD3 block groups).
#include "schedule/asyncdiff_plan.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <stdexcept>

namespace hybridiff::schedule {
namespace {

// Every module of SDXL's UNet at the granularity the splits use.
const std::set<std::string> sdxl_modules = {
    "conv_in", "down_blocks.0", "down_blocks.1", "down_blocks.2", "mid_block",
    "up_blocks.0.resnets.0", "up_blocks.0.attentions.0", "up_blocks.0.resnets.1", "up_blocks.0.attentions.1",
    "up_blocks.0.resnets.2", "up_blocks.0.attentions.2", "up_blocks.0.upsamplers", "up_blocks.1", "up_blocks.2",
    "conv_norm_out", "conv_out"};

TEST(AsyncDiffPlan, SdxlSplitsCoverEveryModuleOnce) {
  for (int n : {2, 3, 4}) {
    auto plan = make_plan(denoiser_family::sdxl_unet, n, 1);
    ASSERT_EQ(static_cast<int>(plan.components.size()), n);
    std::multiset<std::string> seen;
    for (const auto& c : plan.components) seen.insert(c.modules.begin(), c.modules.end());
    EXPECT_EQ(std::set<std::string>(seen.begin(), seen.end()), sdxl_modules) << n;
    EXPECT_EQ(seen.size(), sdxl_modules.size()) << n;
    // The outer shell (conv_in … conv_out) is the last component, as AsyncDiff groups first and last blocks.
    const auto& last = plan.components.back().modules;
    EXPECT_NE(std::find(last.begin(), last.end(), "conv_out"), last.end());
    EXPECT_NE(std::find(last.begin(), last.end(), "conv_in"), last.end());
  }
  // Reference table, n = 2: C0 = down_blocks[2], mid_block, up0.resnets[0..1], up0.attentions[0..1].
  auto two = make_plan(denoiser_family::sdxl_unet, 2, 1);
  EXPECT_EQ(two.components[0].modules,
            (std::vector<std::string>{"down_blocks.2", "mid_block", "up_blocks.0.resnets.0", "up_blocks.0.attentions.0",
                                      "up_blocks.0.resnets.1", "up_blocks.0.attentions.1"}));
  // n = 4 (Hybridiff): C0 = down_blocks[1], down_blocks[2].
  EXPECT_EQ(make_plan(denoiser_family::sdxl_unet, 4, 1).components[0].modules,
            (std::vector<std::string>{"down_blocks.1", "down_blocks.2"}));
}

TEST(AsyncDiffPlan, Sd3GroupsAreContiguous) {
  // Reference: n = 3 on 24 blocks: {0–7}, {8–15}, {16–23, norm_out, proj_out}.
  auto plan = make_plan(denoiser_family::sd3_transformer, 3, 1, 24);
  ASSERT_EQ(plan.components.size(), 3u);
  EXPECT_EQ(plan.components[0].first_block, 0);
  EXPECT_EQ(plan.components[0].end_block, 8);
  EXPECT_EQ(plan.components[1].end_block, 16);
  EXPECT_EQ(plan.components[2].end_block, 24);
  EXPECT_EQ(plan.components[2].modules.back(), "proj_out");
  auto four = make_plan(denoiser_family::sd3_transformer, 4, 1, 24);
  EXPECT_EQ(four.components[1].first_block, 6);
  EXPECT_EQ(four.components[1].end_block, 12);
  EXPECT_THROW(make_plan(denoiser_family::sd3_transformer, 3, 1, 2), std::invalid_argument);
}

// What each component computes on, from the models' structure (reference §5: SDXL's up blocks read the down blocks'
// skips; SD3's blocks each read the previous block's output).
TEST(AsyncDiffPlan, InputsAreWhatAComponentComputesOnAndNothingAfterIt) {
  auto two = make_plan(denoiser_family::sdxl_unet, 2, 1);
  EXPECT_EQ(two.module_order().size(), sdxl_modules.size());
  // The core (down_blocks.2 … up_blocks.0.attentions.1) reads the shell's modules before it, not its later ones.
  EXPECT_EQ(two.inputs_of(0), (std::vector<std::string>{"conv_in", "down_blocks.0", "down_blocks.1"}));
  EXPECT_EQ(two.inputs_of(1), two.components[0].modules);  // the shell's up blocks read the whole core
  EXPECT_EQ(two.read_by_others(1), (std::vector<std::string>{"conv_in", "down_blocks.0", "down_blocks.1"}));
  EXPECT_EQ(two.read_by_others(0), two.components[0].modules);
  // n = 4: C0 (down_blocks.1, down_blocks.2) reads conv_in and down_blocks.0 of the shell; nobody reads conv_out.
  auto four = make_plan(denoiser_family::sdxl_unet, 4, 1);
  EXPECT_EQ(four.inputs_of(0), (std::vector<std::string>{"conv_in", "down_blocks.0"}));
  const auto shell_out = four.read_by_others(3);
  EXPECT_EQ(std::find(shell_out.begin(), shell_out.end(), "conv_out"), shell_out.end());
  EXPECT_NE(std::find(shell_out.begin(), shell_out.end(), "down_blocks.0"), shell_out.end());

  auto sd3 = make_plan(denoiser_family::sd3_transformer, 3, 1, 24);
  EXPECT_TRUE(sd3.inputs_of(0).empty());
  EXPECT_EQ(sd3.inputs_of(1), (std::vector<std::string>{"transformer_blocks.7"}));
  EXPECT_EQ(sd3.inputs_of(2), (std::vector<std::string>{"transformer_blocks.15"}));
  EXPECT_EQ(sd3.read_by_others(0), (std::vector<std::string>{"transformer_blocks.7"}));
  EXPECT_TRUE(sd3.read_by_others(2).empty());  // the output component hands nothing on
}

TEST(AsyncDiffPlan, WorldSizeIsNPlusStrideMinusOne) {
  auto stride1 = make_plan(denoiser_family::sdxl_unet, 2, 1);
  EXPECT_EQ(stride1.world_size(), 2);
  auto stride2 = make_plan(denoiser_family::sdxl_unet, 3, 2);
  EXPECT_EQ(stride2.world_size(), 4);
  EXPECT_EQ(stride2.component_of(3), 2);  // the extra worker runs a second copy of the last component
  EXPECT_NO_THROW(check_world_size(stride2, 4));
  EXPECT_THROW(check_world_size(stride2, 3), std::invalid_argument);
  EXPECT_THROW(make_plan(denoiser_family::sdxl_unet, 5, 1), std::invalid_argument);
  EXPECT_THROW(make_plan(denoiser_family::sdxl_unet, 2, 3), std::invalid_argument);
}

}  // namespace
}  // namespace hybridiff::schedule
