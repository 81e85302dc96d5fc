// Every sampler step against diffusers (fixtures/schedulers-golden.*): 12 steps, teacher-forced with the golden
// sample of each step, float32.
#include "models/pipelines/sampler.hpp"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "models/errors.hpp"
#include "test_support.hpp"

namespace hybridiff::models {
namespace {

constexpr double step_tolerance = 1e-5;  // relative (max|a−b| / max|b|)
const char* golden_file = "schedulers-golden.safetensors";

class SamplerGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(SamplerGolden, EveryStepMatchesDiffusers) {
  const auto name = GetParam();
  const auto cases = read_json_file(test::fixtures_dir() / "schedulers-golden.json");
  auto values = cases[name]["config"];
  values["_class_name"] = cases[name]["class"];
  const auto steps = cases[name]["steps"].get<std::int64_t>();
  auto sampler = make_sampler(config(values, test::fixtures_dir() / "schedulers-golden.json"));
  sampler->set_timesteps(steps);
  auto golden = [&](const std::string& key) { return test::golden(golden_file, name + "_" + key); };
  EXPECT_LT(test::relative_error(sampler->timesteps(), golden("timesteps").to(torch::kFloat32)), step_tolerance);
  if (sampler->sigmas().defined() && name != "ddim")
    EXPECT_LT(test::relative_error(sampler->sigmas(), golden("sigmas")), step_tolerance);
  auto x = golden("x0");
  for (std::int64_t i = 0; i < steps; ++i) {
    auto input = i == 0 ? x : golden("x_" + std::to_string(i));
    EXPECT_LT(test::relative_error(sampler->scale_model_input(input, i), golden("model_in_" + std::to_string(i))),
              step_tolerance) << name << " step " << i;
    auto next = sampler->step(golden("eps_" + std::to_string(i)), i, input);
    EXPECT_LT(test::relative_error(next, golden("x_" + std::to_string(i + 1))), step_tolerance) << name << " step " << i;
  }
}

// A parallel run's worker takes the sampler over mid-image: a fresh copy given the memory of one that stepped to
// step k goes on exactly as diffusers' (teacher-forced as above). Without DPM++ 2M's previous data prediction its
// next step would be first order (relative error ~1e-2 on the golden).
TEST_P(SamplerGolden, AFreshCopyGivenTheMemoryStepsOnFromAnyStep) {
  const auto name = GetParam();
  const auto cases = read_json_file(test::fixtures_dir() / "schedulers-golden.json");
  auto values = cases[name]["config"];
  values["_class_name"] = cases[name]["class"];
  const config scheduler_config(values, test::fixtures_dir() / "schedulers-golden.json");
  const auto steps = cases[name]["steps"].get<std::int64_t>();
  auto golden = [&](const std::string& key) { return test::golden(golden_file, name + "_" + key); };
  auto sample_at = [&](std::int64_t i) { return i == 0 ? golden("x0") : golden("x_" + std::to_string(i)); };
  for (std::int64_t k = 1; k < steps; ++k) {
    auto first = make_sampler(scheduler_config);
    first->set_timesteps(steps);
    for (std::int64_t i = 0; i < k; ++i) first->step(golden("eps_" + std::to_string(i)), i, sample_at(i));
    auto copy = make_sampler(scheduler_config);
    copy->set_timesteps(steps);
    copy->recall(first->memory());
    for (std::int64_t i = k; i < steps; ++i) {
      auto next = copy->step(golden("eps_" + std::to_string(i)), i, sample_at(i));
      EXPECT_LT(test::relative_error(next, golden("x_" + std::to_string(i + 1))), step_tolerance)
          << name << " taken over at step " << k << ", step " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Schedulers, SamplerGolden,
                         ::testing::Values("ddim", "euler", "euler_trailing", "euler_karras", "dpmpp2m", "flow_sd3"));

TEST(Sampler, InitNoiseSigmaFollowsSpacing) {
  // EulerDiscreteScheduler(leading).init_noise_sigma = sqrt(max_sigma² + 1); x0 of the golden is noise·that.
  const auto cases = read_json_file(test::fixtures_dir() / "schedulers-golden.json");
  auto values = cases["euler"]["config"];
  values["_class_name"] = "EulerDiscreteScheduler";
  auto euler = make_sampler(config(values, "euler"));
  euler->set_timesteps(12);
  auto max_sigma = test::golden(golden_file, "euler_sigmas").max().item<double>();
  EXPECT_NEAR(euler->init_noise_sigma(), std::sqrt(max_sigma * max_sigma + 1), 1e-6);
}

TEST(Sampler, ErrorsNameTheProblem) {
  nlohmann::json values = {{"_class_name", "LMSDiscreteScheduler"}};
  EXPECT_THROW(make_sampler(config(values, "scheduler_config.json")), error);
  values["_class_name"] = "EulerDiscreteScheduler";
  EXPECT_THROW(make_sampler(config(values, "scheduler_config.json"), "heun"), error);
  values["prediction_type"] = "v_prediction";
  EXPECT_THROW(make_sampler(config(values, "scheduler_config.json")), error);
  values["prediction_type"] = "epsilon";
  auto euler = make_sampler(config(values, "scheduler_config.json"));
  EXPECT_THROW(euler->step(torch::zeros({1}), 0, torch::zeros({1})), error);  // set_timesteps not called
  euler->set_timesteps(4);
  EXPECT_THROW(euler->step(torch::zeros({1}), 4, torch::zeros({1})), error);
  // A memory the sampler does not keep is refused by name.
  try {
    euler->recall({{"previous_x0", torch::zeros({1})}});
    FAIL() << "euler took over a DPM++ 2M memory";
  } catch (const error& refused) {
    EXPECT_STREQ(refused.what(),
                 "sampler euler: cannot take over 'previous_x0' (it keeps nothing of that name from step to step)");
  }
  auto dpm = make_sampler(config(values, "scheduler_config.json"), "dpm++2m");
  dpm->set_timesteps(4);
  EXPECT_THROW(dpm->recall({{"previous_x0", torch::zeros({1})}, {"model_outputs", torch::zeros({1})}}), error);
}

}  // namespace
}  // namespace hybridiff::models
