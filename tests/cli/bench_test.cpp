// `hybridiff bench --model DIR --run ...`: whole generations of a diffusers folder (text encoders, denoiser, VAE)
// timed end to end, in one process and over two (CPU transport), as a user runs it. Times are not checked against
// any speed (tests never fail because a machine is slow), only that each part was run and reported.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli/run_binary.hpp"
#include "test_support.hpp"

namespace hybridiff {
namespace {

using test::quoted;
using test::run_hybridiff;

nlohmann::json report_of(const test::run_result& run) {
  // The JSON report is the last thing printed (logs go before it).
  const auto begin = run.output.find("{\n");
  if (begin == std::string::npos) ADD_FAILURE() << "no JSON in:\n" << run.output;
  return nlohmann::json::parse(run.output.substr(begin == std::string::npos ? 0 : begin));
}

void expect_end_to_end(const nlohmann::json& entry) {
  SCOPED_TRACE(entry.dump());
  // end to end = (prompt encoding + steps) + VAE decode; the decode of a 32×32 image takes measurable time.
  EXPECT_GT(entry.at("decode_ms").get<double>(), 0.0);
  EXPECT_GT(entry.at("generation_ms").get<double>(), 0.0);
  EXPECT_NEAR(entry.at("end_to_end_ms").get<double>(),
              entry.at("generation_ms").get<double>() + entry.at("decode_ms").get<double>(), 1e-6);
}

// --dtype fp8 times the unquantized model (float32 on the CPU) on the same inputs beside the float8 one.
TEST(BenchSteps, Fp8ReportsItsUnquantizedBaselineAndTheDistanceToIt) {
  const auto run = run_hybridiff("bench --model-config " + quoted(test::fixtures_dir() / "tiny-sdxl/unet") +
                                 " --device cpu --dtype fp8 --size 32 --batch 1 --iters 2 --warmup 0 --log-level warn");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const auto row = report_of(run).at("batches").at(0);
  EXPECT_GT(row.at("step_ms_median").get<double>(), 0.0);
  EXPECT_EQ(row.at("baseline").at("dtype").get<std::string>(), "Float");
  EXPECT_GT(row.at("baseline").at("step_ms_median").get<double>(), 0.0);
  EXPECT_NEAR(row.at("speedup").get<double>(),
              row.at("baseline").at("step_ms_median").get<double>() / row.at("step_ms_median").get<double>(), 1e-9);
  EXPECT_GT(row.at("relative_l2_error").get<double>(), 0.0);
  // Random, untrained weights amplify float8's error (0.14 measured at 32², 0.04 at 64²); far below 1, the
  // distance to an unrelated prediction.
  EXPECT_LT(row.at("relative_l2_error").get<double>(), 0.5);
}

TEST(BenchLoad, TimesLoadingASingleFileWithAndWithoutItsLora) {
  test::temp_dir dir;
  const auto file = test::write_tiny_sdxl_single_file(dir / "tiny-sdxl.safetensors");
  const auto lora = std::filesystem::path(HYBRIDIFF_SOURCE_DIR) / "tests/golden/lora/tiny-sdxl-lora-peft.safetensors";
  const auto run = run_hybridiff("bench --load --model " + quoted(file) + " --config-from " +
                                 quoted(test::fixtures_dir() / "tiny-sdxl") + " --lora " + quoted(lora) +
                                 " --device cpu --dtype fp32 --iters 3 --log-level warn");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const auto report = report_of(run);
  EXPECT_EQ(report.at("load_s").size(), 3u);
  EXPECT_EQ(report.at("load_with_loras_s").size(), 3u);
  EXPECT_GT(report.at("median_load_s").get<double>(), 0.0);
  EXPECT_NEAR(report.at("median_merge_s").get<double>(),
              report.at("median_load_with_loras_s").get<double>() - report.at("median_load_s").get<double>(), 1e-9);
  // --load needs a --model and no --run.
  EXPECT_EQ(run_hybridiff("bench --load --model-config " + quoted(test::fixtures_dir() / "tiny-sdxl/unet")).exit_code,
            2);
}

TEST(BenchWholePipeline, TimesEncodingDenoisingAndDecodingPerRun) {
  const auto run = run_hybridiff("bench --model " + quoted(test::fixtures_dir() / "tiny-sdxl") +
                                 " --device cpu --dtype fp32 --size 32 --steps 6 --warmup 0 --log-level warn"
                                 " --run none --run 'hybrid --tau1 2 --tau2 4'");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const auto report = report_of(run);
  EXPECT_EQ(report.at("model"), "StableDiffusionXLPipeline");
  ASSERT_EQ(report.at("runs").size(), 2u);
  for (const auto& entry : report.at("runs")) expect_end_to_end(entry);
  const auto& hybrid = report.at("runs")[1];
  EXPECT_EQ(hybrid.at("workers"), 2);
  for (const char* phase : {"cfg", "fill", "pipeline"}) EXPECT_TRUE(hybrid.at("phases").contains(phase)) << phase;
}

TEST(BenchWholePipeline, RankZeroEncodesAndDecodesInATwoProcessRun) {
  const auto ports = test::free_port_pair();
  const auto run = test::run_shell(test::hybridiff_binary() + " launch --nproc 2 --master-port " +
                                   std::to_string(ports) + " -- bench --model " +
                                   quoted(test::fixtures_dir() / "tiny-sd3") +
                                   " --device cpu --dtype fp32 --size 32 --steps 4 --warmup 0 --log-level warn"
                                   " --run cfg");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const auto report = report_of(run);
  EXPECT_EQ(report.at("model"), "StableDiffusion3Pipeline");
  const auto& entry = report.at("runs").at(0);
  EXPECT_EQ(entry.at("processes"), 2);
  expect_end_to_end(entry);
}

TEST(BenchWholePipeline, ModelSourcesAreExclusiveAndNeedRuns) {
  const auto tiny = quoted(test::fixtures_dir() / "tiny-sdxl");
  auto both = run_hybridiff("bench --model " + tiny + " --model-config " + tiny + "/unet --run none");
  EXPECT_EQ(both.exit_code, 2);
  EXPECT_NE(both.output.find("give one of --model-config DIR (random weights) and --model DIR"), std::string::npos)
      << both.output;
  auto neither = run_hybridiff("bench --run none");
  EXPECT_EQ(neither.exit_code, 2);
  EXPECT_NE(neither.output.find("give one of"), std::string::npos) << neither.output;
  auto no_runs = run_hybridiff("bench --model " + tiny + " --device cpu");
  EXPECT_EQ(no_runs.exit_code, 2);
  EXPECT_NE(no_runs.output.find("--model times whole generations (add --run) or loading (add --load)"),
            std::string::npos)
      << no_runs.output;
  auto no_scheduler = run_hybridiff("bench --model-config " + tiny + "/unet --device cpu --run none");
  EXPECT_EQ(no_scheduler.exit_code, 2);
  EXPECT_NE(no_scheduler.output.find("--run with --model-config needs --scheduler-config DIR"), std::string::npos)
      << no_scheduler.output;
  auto missing = run_hybridiff("bench --model /nonexistent/model --device cpu --run none");
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.output.find("/nonexistent/model"), std::string::npos) << missing.output;
}

TEST(BenchPerStep, ReportsTheUnetLayoutAndKeepsNchwForPerStepTiming) {
  const auto unet = quoted(test::fixtures_dir() / "tiny-sdxl" / "unet");
  // On the CPU a UNet keeps the standard layout (channels-last is for CUDA weights).
  const auto run = run_hybridiff("bench --model-config " + unet +
                                 " --device cpu --dtype fp32 --size 64 --batch 1 --iters 1 --warmup 0");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const auto report = report_of(run);
  EXPECT_EQ(report.at("channels_last"), false);
  EXPECT_EQ(report.at("batches").size(), 1u);
  const auto runs = run_hybridiff("bench --model-config " + unet + " --scheduler-config " +
                                  quoted(test::fixtures_dir() / "tiny-sdxl" / "scheduler") +
                                  " --device cpu --nchw --run none");
  EXPECT_EQ(runs.exit_code, 2);
  EXPECT_NE(runs.output.find("--nchw is for per-step timing"), std::string::npos) << runs.output;
}

}  // namespace
}  // namespace hybridiff
