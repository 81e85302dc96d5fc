// `hybridiff generate` run as a user runs it: the binary, its flags, its files.
#include <sys/stat.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <regex>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "models/io/image_io.hpp"
#include "models/io/safetensors.hpp"
#include "cli/run_binary.hpp"
#include "test_support.hpp"

namespace hybridiff {
using test::quoted;
using test::run_hybridiff;
namespace {

const char* pipe_prompt = "'astronaut in a jungle, cold color palette, muted colors, detailed, 8k'";

TEST(GenerateCli, ReproducesDiffusersEulerLatents) {
  test::temp_dir dir;
  models::save_safetensors(dir / "init.safetensors",
                           {{"latents", test::golden("tiny-sdxl-golden.safetensors", "pipe_init_latents")}});
  auto result = run_hybridiff("generate --model " + quoted(test::fixtures_dir() / "tiny-sdxl") + " --prompt " + pipe_prompt +
                              " --steps 8 --guidance 5 --height 32 --width 32 --latents-in " + quoted(dir / "init.safetensors") +
                              " --save-latents " + quoted(dir / "out.safetensors") + " --output " + quoted(dir / "out.png"));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  auto latents = models::load_named_tensor(dir / "out.safetensors", "latents");
  EXPECT_LT(test::relative_error(latents, test::golden("tiny-sdxl-golden.safetensors", "pipe_euler_latents")), 1e-3);
  auto image = models::load_png(dir / "out.png");
  EXPECT_EQ(image.sizes(), (c10::IntArrayRef{1, 3, 32, 32}));
}

// --dtype fp8 in the sequential and the hybrid schedule: each run's latents within float8's error (0.1, as
// tests/models/networks/fp8_test.cpp) of the same schedule's float32 latents, and not equal to them.
TEST(GenerateCli, Fp8RunsInEveryScheduleNearItsFloat32Latents) {
  test::temp_dir dir;
  models::save_safetensors(dir / "init.safetensors",
                           {{"latents", test::golden("tiny-sdxl-golden.safetensors", "pipe_init_latents")}});
  for (const std::string schedule : {"none", "hybrid --workers 2 --tau1 2 --tau2 5"}) {
    std::map<std::string, at::Tensor> latents;
    for (const std::string dtype : {"fp32", "fp8"}) {
      const auto out = dir / ("out-" + dtype + ".safetensors");
      auto result = run_hybridiff("generate --model " + quoted(test::fixtures_dir() / "tiny-sdxl") + " --prompt " +
                                  pipe_prompt + " --steps 8 --height 32 --width 32 --latents-in " +
                                  quoted(dir / "init.safetensors") + " --parallel " + schedule + " --dtype " + dtype +
                                  " --save-latents " + quoted(out) + " --output " + quoted(dir / "out.png"));
      ASSERT_EQ(result.exit_code, 0) << schedule << " " << dtype << "\n" << result.output;
      EXPECT_NE(result.output.find(" in " + dtype + " on cpu"), std::string::npos) << result.output;
      latents[dtype] = models::load_named_tensor(out, "latents");
    }
    const auto distance = test::relative_error(latents["fp8"], latents["fp32"]);
    EXPECT_GT(distance, 1e-4) << schedule;
    EXPECT_LT(distance, 0.1) << schedule;
  }
}

TEST(GenerateCli, AHuggingFaceDownloadIsNamedByItsIdAndItsVariantIsChosen) {
  // A download of tiny-sdxl whose weights are only the fp16 variant's files (fixture values), in a cache named by
  // HF_HUB_CACHE, as huggingface_hub leaves it.
  test::temp_dir dir;
  test::make_hub_repository(test::fixtures_dir() / "tiny-sdxl", dir / "hub", "hybridiff/tiny-sdxl", "c0ffee", "fp16");
  models::save_safetensors(dir / "init.safetensors",
                           {{"latents", test::golden("tiny-sdxl-golden.safetensors", "pipe_init_latents")}});
  const auto request = "HF_HUB_CACHE=" + quoted(dir / "hub") + " " + test::hybridiff_binary() +
                       " generate --model hybridiff/tiny-sdxl --prompt " + pipe_prompt +
                       " --steps 8 --guidance 5 --height 32 --width 32 --latents-in " +
                       quoted(dir / "init.safetensors") + " --save-latents " + quoted(dir / "out.safetensors") +
                       " --output " + quoted(dir / "out.png");
  auto result = test::run_shell(request + " --variant fp16");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_LT(test::relative_error(models::load_named_tensor(dir / "out.safetensors", "latents"),
                                 test::golden("tiny-sdxl-golden.safetensors", "pipe_euler_latents")),
            1e-3);
  // Without --variant the only variant loads, and the log says so.
  result = test::run_shell(request);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("no plain weights; loading the fp16 variant (diffusion_pytorch_model.fp16.safetensors)"),
            std::string::npos)
      << result.output;
  result = test::run_shell(request + " --variant bf16");
  EXPECT_EQ(result.exit_code, 1) << result.output;
  EXPECT_NE(result.output.find("no 'bf16' variant weights found"), std::string::npos) << result.output;
  result = test::run_shell("HF_HUB_CACHE=" + quoted(dir / "hub") + " " + test::hybridiff_binary() +
                           " generate --model hybridiff/other --prompt fox");
  EXPECT_EQ(result.exit_code, 1) << result.output;
  EXPECT_NE(result.output.find("hybridiff/other: model folder does not exist, nor is it in the Hugging Face cache"),
            std::string::npos)
      << result.output;
}

TEST(GenerateCli, ALoraReachesEveryWorkerOfEveryProcess) {
  // A diffusers/PEFT LoRA of tiny-sdxl (tests/golden/make_lora_goldens.py) at scale 0.7, on CFG split over two
  // processes: rank 1 merges it into its UNet, rank 0 into its UNet and text encoders; the latents are those of
  // diffusers' fused pipeline.
  test::temp_dir dir;
  models::save_safetensors(dir / "init.safetensors",
                           {{"latents", test::golden("tiny-sdxl-golden.safetensors", "pipe_init_latents")}});
  const auto golden_dir = std::filesystem::path(HYBRIDIFF_SOURCE_DIR) / "tests/golden/lora";
  const auto request = " generate --model " + quoted(test::fixtures_dir() / "tiny-sdxl") + " --prompt " + pipe_prompt +
                       " --steps 8 --guidance 5 --height 32 --width 32 --latents-in " +
                       quoted(dir / "init.safetensors") + " --save-latents " + quoted(dir / "out.safetensors") +
                       " --output " + quoted(dir / "out.png");
  auto result =
      run_hybridiff("launch --nproc 2 --master-port " + std::to_string(test::free_port_pair()) + " --" + request +
                    " --parallel cfg --lora " + quoted(golden_dir / "tiny-sdxl-lora-peft.safetensors") + ":0.7");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const auto golden =
      models::checkpoint::open(golden_dir / "tiny-sdxl-lora-golden.safetensors").tensor("euler_latents");
  EXPECT_LT(test::relative_error(models::load_named_tensor(dir / "out.safetensors", "latents"), golden), 1e-3);

  result = run_hybridiff(request + " --lora " + quoted(dir / "init.safetensors"));
  EXPECT_EQ(result.exit_code, 1) << result.output;
  EXPECT_NE(result.output.find("'latents' is not a LoRA weight this loader reads"), std::string::npos) << result.output;
  result = run_hybridiff(request + " --lora :2");
  EXPECT_EQ(result.exit_code, 2) << result.output;
}

TEST(GenerateCli, ASingleFileCheckpointRunsOnEveryWorkerOfEveryProcess) {
  // tiny-sdxl as one file in the original layout, with CFG split over two processes: the latents are those of
  // diffusers' from_single_file pipeline (tests/golden/make_single_file_goldens.py).
  test::temp_dir dir;
  const auto file = test::write_tiny_sdxl_single_file(dir / "tiny-sdxl.safetensors");
  models::save_safetensors(dir / "init.safetensors",
                           {{"latents", test::golden("tiny-sdxl-golden.safetensors", "pipe_init_latents")}});
  const auto request = " generate --model " + quoted(file) + " --config-from " +
                       quoted(test::fixtures_dir() / "tiny-sdxl") + " --prompt " + pipe_prompt +
                       " --steps 8 --guidance 5 --height 32 --width 32 --latents-in " +
                       quoted(dir / "init.safetensors") + " --save-latents " + quoted(dir / "out.safetensors") +
                       " --output " + quoted(dir / "out.png");
  auto result = run_hybridiff("launch --nproc 2 --master-port " + std::to_string(test::free_port_pair()) + " --" +
                              request + " --parallel cfg");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const auto golden = models::checkpoint::open(std::filesystem::path(HYBRIDIFF_SOURCE_DIR) /
                                               "tests/golden/single_file/tiny-sdxl-single-file-golden.safetensors")
                          .tensor("euler_latents");
  EXPECT_LT(test::relative_error(models::load_named_tensor(dir / "out.safetensors", "latents"), golden), 1e-3);

  // info reads the same parameters from the file as from the folder (2599273: the info_tiny_sdxl_total test).
  result = run_hybridiff("info " + quoted(file) + " --config-from " + quoted(test::fixtures_dir() / "tiny-sdxl"));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_TRUE(std::regex_search(result.output, std::regex("total +2599273"))) << result.output;

  result = run_hybridiff(request + " --variant fp16");
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find("a single-file --model holds its weights itself"), std::string::npos) << result.output;
  result = run_hybridiff("generate --model " + quoted(test::fixtures_dir() / "tiny-sdxl") + " --config-from " +
                         quoted(test::fixtures_dir() / "tiny-sdxl") + " --prompt cat --steps 2");
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find("--config-from gives the configs of a single-file --model"), std::string::npos)
      << result.output;
}

TEST(GenerateCli, ReferenceSpellingsAndSeedsWork) {
  test::temp_dir dir;
  auto common = "generate --model " + quoted(test::fixtures_dir() / "tiny-sdxl") +
                " --prompt cat --num_inference_steps 2 --guidance_scale 3 --image_size 32 --save-latents ";
  auto first = run_hybridiff(common + quoted(dir / "a.safetensors") + " --seed 7 --output " + quoted(dir / "a.png"));
  auto second = run_hybridiff(common + quoted(dir / "b.safetensors") + " --seed 7 --output " + quoted(dir / "b.png"));
  auto third = run_hybridiff(common + quoted(dir / "c.safetensors") + " --seed 8 --output " + quoted(dir / "c.png"));
  ASSERT_EQ(first.exit_code, 0) << first.output;
  ASSERT_EQ(third.exit_code, 0) << third.output;
  auto a = models::load_named_tensor(dir / "a.safetensors", "latents");
  EXPECT_TRUE(torch::equal(a, models::load_named_tensor(dir / "b.safetensors", "latents")));
  EXPECT_FALSE(torch::equal(a, models::load_named_tensor(dir / "c.safetensors", "latents")));
}

TEST(GenerateCli, BadInputExitsNonZeroWithTheReason) {
  test::temp_dir dir;
  const auto model = " --model " + quoted(test::fixtures_dir() / "tiny-sdxl");
  struct expectation {
    std::string arguments;
    int exit_code;
    std::string message;
  };
  models::save_safetensors(dir / "wrong.safetensors", {{"noise", torch::zeros({1, 4, 16, 16})}});
  models::save_safetensors(dir / "small.safetensors", {{"latents", torch::zeros({1, 4, 8, 8})}});
  const expectation cases[] = {
      {"generate --prompt cat", 1, "prompt 'cat' is not a class of this model"},
      {"generate" + model + " --prompt cat --height 33 --width 32 --steps 1", 1,
       "--height 33 is not a positive multiple"},
      {"generate" + model + " --prompt cat --steps 0", 1, "--steps 0"},
      {"generate" + model + " --prompt cat --scheduler heun", 2, "--scheduler 'heun'"},
      {"generate" + model + " --prompt cat --dtype fp4", 2, "--dtype 'fp4': use fp32, fp16, bf16 or fp8"},
      {"generate" + model + " --prompt cat --device tpu", 2, "--device 'tpu'"},
      {"generate" + model + " --prompt cat --steps 2 --num_inference_steps 3", 2, "not both"},
      {"generate --model /nonexistent --prompt cat", 1, "/nonexistent: model folder does not exist"},
      {"generate" + model + " --prompt cat --latents-in " + quoted(dir / "wrong.safetensors"), 1,
       "no tensor named 'latents'"},
      {"generate" + model + " --prompt cat --image_size 32 --latents-in " + quoted(dir / "small.safetensors"), 1,
       "initial latents have shape"},
      {"generate" + model + " --prompt cat --latents-in " + quoted(dir / "absent.safetensors"), 1, "cannot open"},
  };
  for (const auto& expected : cases) {
    auto result = run_hybridiff(expected.arguments + " --output " + quoted(dir / "x.png"));
    EXPECT_EQ(result.exit_code, expected.exit_code) << expected.arguments << "\n" << result.output;
    EXPECT_NE(result.output.find(expected.message), std::string::npos) << expected.arguments << "\n" << result.output;
  }
  EXPECT_FALSE(std::filesystem::exists(dir / "x.png"));  // nothing half-written
}

}  // namespace
}  // namespace hybridiff

namespace hybridiff {
namespace {

TEST(GenerateCli, Sd3FolderReproducesDiffusersLatents) {
  test::temp_dir dir;
  models::save_safetensors(dir / "init.safetensors",
                           {{"latents", test::golden("tiny-sd3-golden.safetensors", "pipe_init_latents")}});
  auto result = run_hybridiff("generate --model " + quoted(test::fixtures_dir() / "tiny-sd3") +
                              " --prompt 'A cat holding a sign that says hello world' --steps 8 --guidance 7 --height 32"
                              " --width 32 --max-sequence-length 16 --latents-in " + quoted(dir / "init.safetensors") +
                              " --save-latents " + quoted(dir / "out.safetensors") + " --output " + quoted(dir / "out.png"));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_LT(test::relative_error(models::load_named_tensor(dir / "out.safetensors", "latents"),
                                 test::golden("tiny-sd3-golden.safetensors", "pipe_latents")),
            1e-3);
  EXPECT_LT(test::relative_error(models::load_png(dir / "out.png"), test::golden("tiny-sd3-golden.safetensors", "pipe_image")),
            1.0 / 255);  // 8-bit rounding of the image
}

}  // namespace
}  // namespace hybridiff

namespace hybridiff {
namespace {

TEST(GenerateCli, ParallelModesAndTrace) {
  test::temp_dir dir;
  models::save_safetensors(dir / "init.safetensors",
                           {{"latents", test::golden("tiny-sdxl-golden.safetensors", "pipe_init_latents")}});
  const auto common = "generate --model " + quoted(test::fixtures_dir() / "tiny-sdxl") + " --prompt " + pipe_prompt +
                      " --steps 8 --guidance 5 --height 32 --width 32 --latents-in " + quoted(dir / "init.safetensors");
  // cfg: one worker per branch reproduces diffusers' batched pipeline
  auto cfg = run_hybridiff(common + " --parallel cfg --save-latents " + quoted(dir / "cfg.safetensors") + " --output " +
                           quoted(dir / "cfg.png"));
  ASSERT_EQ(cfg.exit_code, 0) << cfg.output;
  EXPECT_LT(test::relative_error(models::load_named_tensor(dir / "cfg.safetensors", "latents"),
                                 test::golden("tiny-sdxl-golden.safetensors", "pipe_euler_latents")),
            1e-3);
  // hybrid with a fixed window: the trace shows it
  auto hybrid = run_hybridiff(common + " --parallel hybrid --tau1 2 --tau2 5 --trace " + quoted(dir / "trace.csv") +
                              " --output " + quoted(dir / "hybrid.png"));
  ASSERT_EQ(hybrid.exit_code, 0) << hybrid.output;
  std::ifstream trace(dir / "trace.csv");
  std::string header, row, modes;
  std::getline(trace, header);
  EXPECT_EQ(header,
            "step,mode,rel_mae,slope,step_ms,worker0_ms,worker1_ms,worker0_overhead_ms,worker1_overhead_ms,tau1,tau2,"
            "model");
  while (std::getline(trace, row)) modes += row.substr(row.find(',') + 1, 1);
  EXPECT_EQ(modes, "ccfpppcc");
  // 4 workers: split branches in CFG steps; stride 2 on one more worker
  auto split = run_hybridiff(common + " --parallel cfg --workers 4 --trace " + quoted(dir / "split.csv") + " --output " +
                             quoted(dir / "split.png"));
  ASSERT_EQ(split.exit_code, 0) << split.output;
  std::ifstream split_trace(dir / "split.csv");
  std::getline(split_trace, header);
  EXPECT_EQ(header,
            "step,mode,rel_mae,slope,step_ms,worker0_ms,worker1_ms,worker2_ms,worker3_ms,worker0_overhead_ms,"
            "worker1_overhead_ms,worker2_overhead_ms,worker3_overhead_ms,tau1,tau2,model");
  std::getline(split_trace, row);
  std::getline(split_trace, row);
  EXPECT_EQ(row.rfind("1,cfg-pipeline,", 0), 0u) << row;
  auto stride = run_hybridiff(common + " --parallel asyncdiff --stride 2 --warmup 3 --output " + quoted(dir / "stride.png"));
  EXPECT_EQ(stride.exit_code, 0) << stride.output;
  auto bad = run_hybridiff(common + " --parallel hybrid --workers 3 --output " + quoted(dir / "bad.png"));
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
  EXPECT_NE(bad.output.find("--workers 2 or 4"), std::string::npos) << bad.output;
  auto impossible = run_hybridiff(common + " --parallel hybrid --output " + quoted(dir / "bad.png"));  // tau_cap 15 + 5 >= 8
  EXPECT_EQ(impossible.exit_code, 2) << impossible.output;
  EXPECT_NE(impossible.output.find("--tau_cap + --k"), std::string::npos) << impossible.output;
}

}  // namespace
}  // namespace hybridiff

namespace hybridiff {
namespace {

TEST(GenerateCli, DevicesGiveEachWorkerItsDevice) {
  test::temp_dir dir;
  const auto common = "generate --model " + quoted(test::fixtures_dir() / "tiny-sdxl") +
                      " --prompt cat --steps 3 --image_size 32 --parallel cfg --output " + quoted(dir / "x.png");
  auto both_cpu = run_hybridiff(common + " --devices cpu,cpu");
  EXPECT_EQ(both_cpu.exit_code, 0) << both_cpu.output;
  auto too_few = run_hybridiff(common + " --devices cpu");
  EXPECT_EQ(too_few.exit_code, 2) << too_few.output;
  EXPECT_NE(too_few.output.find("--devices lists 1 devices for 2 workers"), std::string::npos) << too_few.output;
}

}  // namespace
}  // namespace hybridiff

namespace hybridiff {
namespace {

TEST(LaunchCli, TheFirstFailureStopsTheOtherRanks) {
  test::temp_dir dir;
  // Rank 1 hangs: opening a FIFO that nobody writes blocks. Rank 0 fails at once: its metric file is missing.
  ASSERT_EQ(::mkfifo((dir / "metrics_1").c_str(), 0600), 0);
  const auto started = std::chrono::steady_clock::now();
  auto result = run_hybridiff("launch --nproc 2 --grace 1 -- schedule simulate --steps 30 --metric-file " +
                              quoted(dir / "metrics_{rank}"));
  EXPECT_EQ(result.exit_code, 1) << result.output;
  EXPECT_NE(result.output.find("rank 0 exited with status 1; stopping the other 1 process(es)"), std::string::npos)
      << result.output;
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(10));  // rank 1 did not keep it alive
}

}  // namespace
}  // namespace hybridiff
