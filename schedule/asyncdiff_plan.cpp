#include "schedule/asyncdiff_plan.hpp"

#include <algorithm>
#include <set>
#include <stdexcept>

namespace hybridiff::schedule {

asyncdiff_plan make_plan(denoiser_family family, int n, int stride, int blocks) {
  if (n < 2 || n > 4) throw std::invalid_argument("--model_n " + std::to_string(n) + " is not supported (2, 3 or 4)");
  if (stride != 1 && stride != 2) throw std::invalid_argument("--stride " + std::to_string(stride) + " must be 1 or 2");
  asyncdiff_plan plan{family, n, stride, {}};
  if (family == denoiser_family::sdxl_unet) {
    const std::vector<std::string> outer = {"conv_in", "down_blocks.0", "down_blocks.1", "up_blocks.1", "up_blocks.2",
                                            "conv_norm_out", "conv_out"};
    const std::vector<std::string> up0_tail = {"up_blocks.0.resnets.2", "up_blocks.0.attentions.2", "up_blocks.0.upsamplers"};
    switch (n) {
      case 2: {
        component core{{"down_blocks.2", "mid_block", "up_blocks.0.resnets.0", "up_blocks.0.attentions.0",
                        "up_blocks.0.resnets.1", "up_blocks.0.attentions.1"}};
        component shell{outer};
        shell.modules.insert(shell.modules.end(), up0_tail.begin(), up0_tail.end());
        plan.components = {core, shell};
        break;
      }
      case 3:
        plan.components = {
            component{{"down_blocks.2", "mid_block", "up_blocks.0.resnets.0"}},
            component{{"up_blocks.0.attentions.0", "up_blocks.0.resnets.1", "up_blocks.0.attentions.1",
                       "up_blocks.0.resnets.2", "up_blocks.0.attentions.2", "up_blocks.0.upsamplers"}},
            component{outer}};
        break;
      case 4:
        plan.components = {
            component{{"down_blocks.1", "down_blocks.2"}},
            component{{"mid_block", "up_blocks.0.resnets.0", "up_blocks.0.attentions.0"}},
            component{{"up_blocks.0.resnets.1", "up_blocks.0.attentions.1", "up_blocks.0.resnets.2",
                       "up_blocks.0.attentions.2", "up_blocks.0.upsamplers"}},
            component{{"conv_in", "down_blocks.0", "up_blocks.1", "up_blocks.2", "conv_norm_out", "conv_out"}}};
        break;
    }
  } else {
    if (blocks < n)
      throw std::invalid_argument("an SD3 transformer with " + std::to_string(blocks) + " blocks cannot split into " +
                                  std::to_string(n) + " components");
    const int size = blocks / n;
    for (int j = 0; j < n; ++j) {
      component group;
      group.first_block = j * size;
      group.end_block = j + 1 == n ? blocks : (j + 1) * size;
      for (int b = group.first_block; b < group.end_block; ++b) group.modules.push_back("transformer_blocks." + std::to_string(b));
      if (j + 1 == n) {
        group.modules.push_back("norm_out");
        group.modules.push_back("proj_out");
      }
      plan.components.push_back(group);
    }
  }
  return plan;
}

std::vector<std::string> asyncdiff_plan::module_order() const {
  if (family == denoiser_family::sd3_transformer) {  // contiguous block groups, in order
    std::vector<std::string> order;
    for (const auto& c : components) order.insert(order.end(), c.modules.begin(), c.modules.end());
    return order;
  }
  return {"conv_in", "down_blocks.0", "down_blocks.1", "down_blocks.2", "mid_block", "up_blocks.0.resnets.0",
          "up_blocks.0.attentions.0", "up_blocks.0.resnets.1", "up_blocks.0.attentions.1", "up_blocks.0.resnets.2",
          "up_blocks.0.attentions.2", "up_blocks.0.upsamplers", "up_blocks.1", "up_blocks.2", "conv_norm_out",
          "conv_out"};
}

std::vector<std::string> asyncdiff_plan::inputs_of(int c) const {
  const auto order = module_order();
  const auto& own = components.at(c).modules;
  auto owned = [&](const std::string& module) { return std::find(own.begin(), own.end(), module) != own.end(); };
  std::vector<std::string> inputs;
  if (family == denoiser_family::sd3_transformer) {
    for (std::size_t i = 1; i < order.size(); ++i)
      if (owned(order[i]) && !owned(order[i - 1])) inputs.push_back(order[i - 1]);
    return inputs;
  }
  std::size_t last = 0;
  for (std::size_t i = 0; i < order.size(); ++i)
    if (owned(order[i])) last = i;
  for (std::size_t i = 0; i < last; ++i)
    if (!owned(order[i])) inputs.push_back(order[i]);
  return inputs;
}

std::vector<std::string> asyncdiff_plan::read_by_others(int c) const {
  std::set<std::string> read;
  for (int other = 0; other < n; ++other)
    if (other != c)
      for (auto& module : inputs_of(other)) read.insert(std::move(module));
  std::vector<std::string> outputs;
  for (const auto& module : components.at(c).modules)
    if (read.count(module)) outputs.push_back(module);
  return outputs;
}

void check_world_size(const asyncdiff_plan& plan, int workers) {
  if (workers != plan.world_size())
    throw std::invalid_argument("--workers " + std::to_string(workers) + " does not fit --model_n " + std::to_string(plan.n) +
                                " --stride " + std::to_string(plan.stride) + ": AsyncDiff needs n + stride − 1 = " +
                                std::to_string(plan.world_size()) + " workers");
}

}  // namespace hybridiff::schedule
