// Schedule policies by spec, the registry, and user policies: the built-ins chosen by spec decide exactly what the
// flag-configured controller decides (whose phases the reference tables test, tau_controller_test.cpp).
#include "schedule/policy.hpp"

#include <gtest/gtest.h>

#include <random>
#include <stdexcept>

#include "schedule/tau_controller.hpp"

namespace hybridiff::schedule {
namespace {

std::string phases_of(const simulation& run) {
  std::string text;
  for (auto p : run.phases) text += p == phase::cfg ? 'c' : p == phase::fill ? 'F' : 'p';
  return text;
}

// rel-MAE series shaped like real ones: falling, then flattening with noise at a seed-dependent step.
std::vector<double> metric_series(unsigned seed, int steps) {
  std::mt19937 random(seed);
  std::uniform_real_distribution<double> noise(-2e-4, 2e-4);
  const int knee = 6 + static_cast<int>(seed % 12);
  std::vector<double> metrics;
  for (int i = 0; i < steps; ++i) metrics.push_back((i < knee ? 0.5 - 0.02 * i : 0.5 - 0.02 * knee) + noise(random));
  return metrics;
}

std::string expect_invalid(const schedule_settings& settings) {
  try {
    validate(settings);
  } catch (const std::invalid_argument& bad) {
    return bad.what();
  }
  ADD_FAILURE() << "no error for '" << settings.policy_spec << "'";
  return "";
}

TEST(SchedulePolicy, BuiltInsBySpecDecideExactlyAsTheFlags) {
  for (unsigned seed = 0; seed < 40; ++seed) {
    const auto metrics = metric_series(seed, 50);
    schedule_settings flags{tau_policy::slope, {8, 4e-4, 5, 25}, 50, {}, {}, 1};
    schedule_settings spec = flags;
    spec.tau = tau_settings::sdxl();  // the spec's parameters, not the defaults, must decide
    spec.policy_spec = "slope:L=8,eps=4e-4,k=5,cap=25";
    const auto by_flags = simulate(flags, metrics);
    const auto by_spec = simulate(spec, metrics);
    EXPECT_EQ(phases_of(by_spec), phases_of(by_flags)) << "seed " << seed;
    EXPECT_EQ(by_spec.tau1, by_flags.tau1);
    EXPECT_EQ(by_spec.tau2, by_flags.tau2);
    EXPECT_EQ(by_spec.slopes, by_flags.slopes);
  }
  const std::vector<double> metrics(20, 0.1);
  schedule_settings fixed{tau_policy::fixed, tau_settings::sdxl(), 20, 4, 9, 1};
  schedule_settings fixed_spec{tau_policy::slope, tau_settings::sdxl(), 20, {}, {}, 1, "fixed:tau1=4,tau2=9"};
  EXPECT_EQ(phases_of(simulate(fixed_spec, metrics)), phases_of(simulate(fixed, metrics)));
  EXPECT_EQ(phases_of(simulate(fixed_spec, metrics)), "ccccFpppppcccccccccc");
  schedule_settings always{tau_policy::always, tau_settings::sdxl(), 8, {}, {}, 3};
  schedule_settings always_spec{tau_policy::slope, tau_settings::sdxl(), 8, {}, {}, 1, "always:warmup=3"};
  EXPECT_EQ(phases_of(simulate(always_spec, metrics)), phases_of(simulate(always, metrics)));
  schedule_settings never_spec{tau_policy::slope, tau_settings::sdxl(), 8, {}, {}, 1, "never"};
  EXPECT_EQ(phases_of(simulate(never_spec, metrics)), "cccccccc");
}

TEST(SchedulePolicy, ParametersLeftOutTakeTheDefaults) {
  schedule_settings partial{tau_policy::slope, {8, 4e-4, 3, 25}, 50, {}, {}, 1, "slope:k=7"};
  const auto run = simulate(partial, std::vector<double>(50, 0.3));  // flat: detects at L = 8
  EXPECT_EQ(run.tau1, 8);
  EXPECT_EQ(run.tau2, 15);  // k = 7 from the spec
}

TEST(SchedulePolicy, BadSpecsNameWhatIsWrong) {
  auto message = [](const std::string& spec, int steps = 50) {
    return expect_invalid({tau_policy::slope, tau_settings::sdxl(), steps, {}, {}, 1, spec});
  };
  EXPECT_NE(message("sometimes").find("unknown schedule policy 'sometimes' (registered: slope, fixed, never, always"),
            std::string::npos);
  EXPECT_EQ(message("slope:L=8,foo=1"), "policy slope: unknown parameter 'foo' (it takes L, eps, k, cap)");
  EXPECT_EQ(message("never:k=3"), "policy never: unknown parameter 'k' (it takes none)");
  EXPECT_EQ(message("slope:L=eight"), "policy slope: L='eight' is not an integer");
  EXPECT_EQ(message("slope:eps=1e-4x"), "policy slope: eps='1e-4x' is not a number");
  EXPECT_NE(message("slope:L=20").find("policy slope: L=20 must be less than cap=15"), std::string::npos);
  EXPECT_NE(message("slope:cap=40", 44).find("cap + k (40 + 5) must be less than the steps (44"), std::string::npos);
  EXPECT_EQ(message("fixed:tau1=3"), "policy fixed: needs tau1 and tau2 (e.g. fixed:tau1=10,tau2=20)");
  EXPECT_NE(message("fixed:tau1=30,tau2=60").find("need 0 <= tau1 <= tau2 < steps (50)"), std::string::npos);
  EXPECT_NE(message("always:warmup=0").find("policy always: warmup=0 must be in [1, steps]"), std::string::npos);
  EXPECT_NE(message("slope:L").find("'L' is not KEY=VALUE"), std::string::npos);
  EXPECT_NE(message("slope:L=3,L=4").find("L is given twice"), std::string::npos);
  EXPECT_NE(message(":L=3").find("the name is empty"), std::string::npos);
}

// A user policy: two windows of `k` steps starting at `first` and `second`.
class two_windows : public schedule_policy {
 public:
  two_windows(int first, int second, int k) : first_(first), second_(second), k_(k) {}
  phase phase_of(int step) const override {
    for (int begin : {first_, second_}) {
      if (step == begin) return phase::fill;
      if (step > begin && step < begin + k_) return phase::pipeline;
    }
    return phase::cfg;
  }
  void end_step(const step_observation&) override {}

 private:
  int first_, second_, k_;
};

TEST(SchedulePolicy, AUserPolicyIsRegisteredAndChosenByName) {
  register_policy("test-two-windows", "two windows (first, second, k)",
                  [](policy_parameters& parameters, const policy_context&) -> std::unique_ptr<schedule_policy> {
                    const int first = parameters.integer("first", 5);
                    const int second = parameters.integer("second", 12);
                    return std::make_unique<two_windows>(first, second, parameters.integer("k", 3));
                  });
  EXPECT_THROW(
      register_policy("test-two-windows", "again",
                      [](policy_parameters&, const policy_context&) { return std::unique_ptr<schedule_policy>(); }),
      std::invalid_argument);
  EXPECT_THROW(
      register_policy("slope", "a second slope",
                      [](policy_parameters&, const policy_context&) { return std::unique_ptr<schedule_policy>(); }),
      std::invalid_argument);
  bool listed = false;
  for (const auto& [name, summary] : registered_policies()) listed |= name == "test-two-windows";
  EXPECT_TRUE(listed);

  schedule_settings settings{
      tau_policy::slope, tau_settings::sdxl(), 20, {}, {}, 1, "test-two-windows:first=3,second=11,k=4"};
  const auto run = simulate(settings, std::vector<double>(20, 0.1));
  EXPECT_EQ(phases_of(run), "cccFpppccccFpppccccc");
  EXPECT_EQ(run.tau1, 3);  // the first window's fill and last steps, as the controller observed them
  EXPECT_EQ(run.tau2, 6);
  settings.policy_spec = "test-two-windows:first=3,second=11,k=4,third=15";
  EXPECT_EQ(expect_invalid(settings), "policy test-two-windows: unknown parameter 'third' (it takes first, second, k)");
}

TEST(SchedulePolicy, AWindowWithoutAFillStepIsRefusedNamingTheStep) {
  class broken : public schedule_policy {
    phase phase_of(int step) const override { return step == 4 ? phase::pipeline : phase::cfg; }
    void end_step(const step_observation&) override {}
  };
  tau_controller controller(std::make_unique<broken>(), 10);
  for (int step = 0; step < 4; ++step) {
    EXPECT_EQ(controller.phase_of(step), phase::cfg);
    controller.end_step(step, 0.1);
  }
  try {
    controller.phase_of(4);
    ADD_FAILURE() << "no error";
  } catch (const std::logic_error& bad) {
    EXPECT_EQ(std::string(bad.what()),
              "schedule policy: step 4 is a pipeline step right after a CFG step (a window starts with a fill step)");
  }
}

// A promise of CFG steps (schedule_policy::cfg_certain_through) must hold whatever the metrics: for each built-in
// policy and many metric series, every step a promise covers runs CFG. The promises reach as far as each rule
// allows: the slope detector's first L steps (it needs L + 1 metrics), up to a decided window's fill step, and to
// the end after the window; `never`, the whole image.
TEST(SchedulePolicy, PromisedCfgStepsRunCfgWhateverTheMetrics) {
  const int steps = 50;
  for (const std::string spec : {"slope:L=12,eps=4e-4,k=5,cap=15", "slope:L=5,eps=1e-3,k=3,cap=20",
                                 "fixed:tau1=10,tau2=20", "never", "always:warmup=3"}) {
    for (unsigned seed = 0; seed < 20; ++seed) {
      SCOPED_TRACE(spec + ", seed " + std::to_string(seed));
      schedule_settings settings;
      settings.steps = steps;
      settings.policy_spec = spec;
      tau_controller controller(settings);
      const auto metrics = metric_series(seed, steps);
      std::vector<std::pair<int, int>> promises, window_promises;  // (step, through)
      std::vector<phase> phases;
      for (int i = 0; i < steps; ++i) {
        phases.push_back(controller.phase_of(i));
        if (phases.back() == phase::cfg) promises.emplace_back(i, controller.promise_cfg(i));
        if (phases.back() == phase::fill) window_promises.emplace_back(i, controller.promise_window(i));
        controller.end_step(i, metrics[i]);
      }
      // A built-in's window promise at its fill step reaches the window's last pipeline step.
      for (const auto& [fill, through] : window_promises) {
        int window_end = fill;
        while (window_end + 1 < steps && phases[window_end + 1] == phase::pipeline) ++window_end;
        EXPECT_EQ(through, window_end) << "window filled at " << fill;
      }
      EXPECT_EQ(window_promises.size(), spec == "never" ? 0u : 1u);
      for (const auto& [step, through] : promises) {
        EXPECT_GE(through, step);
        EXPECT_LT(through, steps);
        for (int j = step; j <= through; ++j) EXPECT_EQ(phases[j], phase::cfg) << "promised at " << step;
      }
      ASSERT_FALSE(promises.empty());
      const int first = promises.front().second;  // promised at step 0
      if (spec.rfind("slope:L=12", 0) == 0) EXPECT_EQ(first, 12);
      if (spec.rfind("slope:L=5", 0) == 0) EXPECT_EQ(first, 5);
      if (spec.rfind("fixed", 0) == 0) EXPECT_EQ(first, 9);
      if (spec == "never") EXPECT_EQ(first, steps - 1);
      if (spec.rfind("always", 0) == 0) EXPECT_EQ(first, 1);
      if (spec.rfind("never", 0) != 0 && spec.rfind("always", 0) != 0)  // after the window: CFG to the end
        EXPECT_EQ(promises.back().second, steps - 1);
    }
  }
}

TEST(SchedulePolicy, APolicyThatBreaksItsCfgPromiseIsRefusedNamingTheStep) {
  class liar : public schedule_policy {
    phase phase_of(int step) const override { return step == 3 ? phase::fill : phase::cfg; }
    void end_step(const step_observation&) override {}
    int cfg_certain_through(int) const override { return 6; }
  };
  tau_controller controller(std::make_unique<liar>(), 10);
  EXPECT_EQ(controller.phase_of(0), phase::cfg);
  EXPECT_EQ(controller.promise_cfg(0), 6);
  for (int step = 0; step < 3; ++step) controller.end_step(step, 0.1);
  try {
    controller.phase_of(3);
    ADD_FAILURE() << "no error";
  } catch (const std::logic_error& bad) {
    EXPECT_EQ(std::string(bad.what()),
              "schedule policy: step 3 is a fill step, but the policy promised CFG through step 6");
  }
}

TEST(SchedulePolicy, APolicyThatBreaksItsWindowPromiseIsRefusedNamingTheStep) {
  class liar : public schedule_policy {
    phase phase_of(int step) const override {
      return step == 2 ? phase::fill : step == 3 || step == 4 ? phase::pipeline : phase::cfg;
    }
    void end_step(const step_observation&) override {}
    int window_certain_through(int) const override { return 6; }
  };
  tau_controller controller(std::make_unique<liar>(), 10);
  for (int step = 0; step < 2; ++step) controller.end_step(step, 0.1);
  EXPECT_EQ(controller.phase_of(2), phase::fill);
  EXPECT_EQ(controller.promise_window(2), 6);
  for (int step = 2; step < 5; ++step) controller.end_step(step, std::nullopt);
  try {
    controller.phase_of(5);
    ADD_FAILURE() << "no error";
  } catch (const std::logic_error& bad) {
    EXPECT_EQ(std::string(bad.what()),
              "schedule policy: step 5 is a cfg step, but the policy promised the window's pipeline steps through "
              "step 6");
  }
}

TEST(SchedulePolicy, APolicySeesEachStepsPhaseMetricAndTime) {
  struct recorder : schedule_policy {
    std::vector<step_observation>* seen;
    explicit recorder(std::vector<step_observation>* into) : seen(into) {}
    phase phase_of(int step) const override {
      return step == 2 ? phase::fill : step == 3 ? phase::pipeline : phase::cfg;
    }
    void end_step(const step_observation& finished) override { seen->push_back(finished); }
  };
  std::vector<step_observation> seen;
  tau_controller controller(std::make_unique<recorder>(&seen), 5);
  for (int step = 0; step < 5; ++step) controller.end_step(step, 0.25 + step, 10.0 * step);
  ASSERT_EQ(seen.size(), 5u);
  EXPECT_EQ(seen[1].metric, 1.25);
  EXPECT_EQ(seen[2].ran, phase::fill);
  EXPECT_FALSE(seen[2].metric.has_value());  // window steps have no rel-MAE
  EXPECT_EQ(seen[4].step_ms, 40.0);
  EXPECT_EQ(controller.tau1(), 2);
  EXPECT_EQ(controller.tau2(), 3);
}

}  // namespace
}  // namespace hybridiff::schedule
