// The phase schedule against the reference's tables (the reference scripts' phase timing).
#include "schedule/tau_controller.hpp"

#include <gtest/gtest.h>

#include <stdexcept>

namespace hybridiff::schedule {
namespace {

std::string phases_of(const simulation& run) {
  std::string text;
  for (auto p : run.phases) text += p == phase::cfg ? 'c' : p == phase::fill ? 'F' : 'p';
  return text;
}

schedule_settings sdxl(int steps = 50) { return {tau_policy::slope, tau_settings::sdxl(), steps, {}, {}, 1}; }

TEST(TauController, FlatMetricsDetectAtTheFirstPossibleStep) {
  // SDXL, L = 12: the slope exists from step 12; flat metrics give slope 0 there -> tau1 = 12, the window
  // (one fill step, then pipeline) is steps 13..17: k = 5 steps; tau2 = 17 (reference §4.2, first row).
  auto run = simulate(sdxl(), std::vector<double>(50, 0.3));
  EXPECT_EQ(run.tau1, 12);
  EXPECT_EQ(run.tau2, 17);
  EXPECT_EQ(phases_of(run), std::string(13, 'c') + "F" + std::string(4, 'p') + std::string(32, 'c'));
  EXPECT_FALSE(run.slopes[11].has_value());
  EXPECT_DOUBLE_EQ(*run.slopes[12], 0.0);
}

TEST(TauController, DetectionWindowUsesMetricsFromLStepsBack) {
  // slope(12) = (M1 − M12)/12 = 0.49/12 >= eps; slope(13) = (M2 − M13)/12 = 0 -> tau1 = 13, window 14..18.
  std::vector<double> metrics(50, 0.5);
  metrics[0] = 1.0;
  metrics[1] = 0.99;
  auto run = simulate(sdxl(), metrics);
  EXPECT_EQ(run.tau1, 13);
  EXPECT_EQ(run.tau2, 18);
  EXPECT_NEAR(*run.slopes[12], 0.49 / 12, 1e-15);
  EXPECT_EQ(phases_of(run), std::string(14, 'c') + "F" + std::string(4, 'p') + std::string(31, 'c'));
}

TEST(TauController, RisingMetricsFallBackToTauCapWithKPlusOneWindowSteps) {
  // Negative slopes never detect; at step tau_cap − 1 = 14 tau1 = tau_cap = 15, effective at once:
  // window 15..20 (k + 1 = 6 steps), tau2 = 20.
  std::vector<double> metrics;
  for (int i = 0; i < 50; ++i) metrics.push_back(0.1 + 0.01 * i);
  auto run = simulate(sdxl(), metrics);
  EXPECT_EQ(run.tau1, 15);
  EXPECT_EQ(run.tau2, 20);
  EXPECT_EQ(phases_of(run), std::string(15, 'c') + "F" + std::string(5, 'p') + std::string(29, 'c'));
  tau_controller controller(sdxl());
  for (int i = 0; i < 15; ++i) controller.end_step(i, metrics[i]);
  EXPECT_TRUE(controller.fell_back());
}

TEST(TauController, SlowDecreaseAboveThresholdIsNotDetection) {
  std::vector<double> metrics;
  for (int i = 0; i < 50; ++i) metrics.push_back(1.0 - 0.01 * i);  // slope 0.01·11/12 > 4e-4
  auto run = simulate(sdxl(), metrics);
  EXPECT_EQ(run.tau1, 15);  // fallback
}

TEST(TauController, Sd3DefaultsFallBackTo40) {
  schedule_settings settings{tau_policy::slope, tau_settings::sd3(), 50, {}, {}, 1};
  std::vector<double> rising;
  for (int i = 0; i < 50; ++i) rising.push_back(i);
  auto run = simulate(settings, rising);
  EXPECT_EQ(run.tau1, 40);
  EXPECT_EQ(run.tau2, 45);  // reference §4.2: parallel steps 40–45, DP 46–49
  EXPECT_EQ(phases_of(run), std::string(40, 'c') + "F" + std::string(5, 'p') + std::string(4, 'c'));
}

TEST(TauController, WindowMetricsAreIgnored) {
  auto flat = simulate(sdxl(), std::vector<double>(50, 0.3));
  std::vector<double> noisy(50, 0.3);
  for (int i = 13; i <= 17; ++i) noisy[i] = 1e6;  // window steps: their values must not matter
  auto run = simulate(sdxl(), noisy);
  EXPECT_EQ(run.phases, flat.phases);
}

TEST(TauController, FixedNeverAndAlwaysPolicies) {
  schedule_settings fixed{tau_policy::fixed, tau_settings::sdxl(), 10, 3, 5, 1};
  EXPECT_EQ(phases_of(simulate(fixed, {})), "cccFppcccc");
  schedule_settings never{tau_policy::never, tau_settings::sdxl(), 6, {}, {}, 1};
  EXPECT_EQ(phases_of(simulate(never, {})), "cccccc");
  schedule_settings always{tau_policy::always, tau_settings::sdxl(), 6, {}, {}, 2};
  EXPECT_EQ(phases_of(simulate(always, {})), "cFpppp");
}

TEST(TauController, ImpossibleSettingsAreRejected) {
  auto expect_rejected = [](schedule_settings s, const std::string& fragment) {
    try {
      validate(s);
      FAIL() << "expected rejection mentioning " << fragment;
    } catch (const std::invalid_argument& failure) {
      EXPECT_NE(std::string(failure.what()).find(fragment), std::string::npos) << failure.what();
    }
  };
  auto s = sdxl(20);  // tau_cap 15 + k 5 = 20 is not < 20
  expect_rejected(s, "--tau_cap + --k");
  s = sdxl();
  s.tau.L_slope = 15;
  expect_rejected(s, "--L_slope 15 must be less than --tau_cap 15");
  s = sdxl();
  s.steps = 0;
  expect_rejected(s, "--steps 0");
  schedule_settings fixed{tau_policy::fixed, tau_settings::sdxl(), 10, 6, 4, 1};
  expect_rejected(fixed, "0 <= tau1 <= tau2 < steps");
  fixed.tau2.reset();
  expect_rejected(fixed, "needs both --tau1 and --tau2");
  schedule_settings always{tau_policy::always, tau_settings::sdxl(), 10, {}, {}, 0};
  expect_rejected(always, "--warmup 0");
  EXPECT_THROW(parse_tau_policy("sometimes"), std::invalid_argument);
  EXPECT_THROW(tau_controller(sdxl(20)), std::invalid_argument);
}

TEST(TauController, RelativeMae) {
  EXPECT_NEAR(relative_mae(0.5, 2.0), 0.25, 1e-12);
  EXPECT_NEAR(relative_mae(1.0, 0.0), 1e12, 1);
}

}  // namespace
}  // namespace hybridiff::schedule
