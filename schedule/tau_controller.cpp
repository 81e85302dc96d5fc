#include "schedule/tau_controller.hpp"

#include <stdexcept>

namespace hybridiff::schedule {
namespace {

[[noreturn]] void reject(const std::string& message) { throw std::invalid_argument(message); }

}  // namespace

const char* to_string(phase p) {
  switch (p) {
    case phase::cfg: return "cfg";
    case phase::fill: return "fill";
    case phase::pipeline: return "pipeline";
  }
  return "?";
}

tau_policy parse_tau_policy(const std::string& name) {
  if (name == "slope") return tau_policy::slope;
  if (name == "fixed") return tau_policy::fixed;
  if (name == "never") return tau_policy::never;
  if (name == "always") return tau_policy::always;
  reject("unknown tau policy '" + name + "' (use slope, fixed, never or always)");
}

void validate(const schedule_settings& s) {
  if (s.steps < 1) reject("--steps " + std::to_string(s.steps) + " must be at least 1");
  switch (s.policy) {
    case tau_policy::slope:
      if (s.tau.L_slope < 1) reject("--L_slope " + std::to_string(s.tau.L_slope) + " must be at least 1");
      if (s.tau.k < 1) reject("--k " + std::to_string(s.tau.k) + " must be at least 1");
      if (!(s.tau.eps_slope > 0)) reject("--eps_slope must be positive");
      if (s.tau.tau_cap < 1) reject("--tau_cap " + std::to_string(s.tau.tau_cap) + " must be at least 1");
      if (s.tau.L_slope >= s.tau.tau_cap)
        reject("--L_slope " + std::to_string(s.tau.L_slope) + " must be less than --tau_cap " + std::to_string(s.tau.tau_cap) +
               " (the slope needs L_slope + 1 metrics before the fallback)");
      if (s.tau.tau_cap + s.tau.k >= s.steps)
        reject("--tau_cap + --k (" + std::to_string(s.tau.tau_cap) + " + " + std::to_string(s.tau.k) +
               ") must be less than --steps " + std::to_string(s.steps) + " (the window must end before the last step)");
      break;
    case tau_policy::fixed:
      if (!s.tau1 || !s.tau2) reject("the fixed tau policy needs both --tau1 and --tau2");
      if (*s.tau1 < 0 || *s.tau1 > *s.tau2 || *s.tau2 >= s.steps)
        reject("--tau1 " + std::to_string(*s.tau1) + " --tau2 " + std::to_string(*s.tau2) +
               ": need 0 <= tau1 <= tau2 < steps (" + std::to_string(s.steps) + ")");
      break;
    case tau_policy::never:
      break;
    case tau_policy::always:
      if (s.warmup < 1 || s.warmup > s.steps)
        reject("--warmup " + std::to_string(s.warmup) + " must be in [1, steps] (the last warm-up step fills the caches)");
      break;
  }
}

double relative_mae(double mean_abs_difference, double mean_abs_uncond) {
  return mean_abs_difference / (mean_abs_uncond + 1e-12);
}

tau_controller::tau_controller(schedule_settings settings) : settings_(std::move(settings)) {
  validate(settings_);
  if (settings_.policy == tau_policy::fixed) {
    tau1_ = settings_.tau1;
    tau2_ = settings_.tau2;
    window_begin_ = tau1_;
  } else if (settings_.policy == tau_policy::always) {
    // Warm-up steps 0 .. W−2 are CFG, step W−1 fills the caches, pipeline to the end.
    tau1_ = settings_.warmup - 1;
    tau2_ = settings_.steps - 1;
    window_begin_ = tau1_;
  }
}

phase tau_controller::phase_of(int step) const {
  if (!window_begin_ || step < *window_begin_ || step > *tau2_) return phase::cfg;
  return step == *window_begin_ ? phase::fill : phase::pipeline;
}

bool tau_controller::end_step(int step, std::optional<double> metric) {
  last_slope_.reset();
  if (settings_.policy != tau_policy::slope) return false;
  // Window steps log 0, as the reference (their two branches are one tensor); the value is never used.
  metrics_.push_back(phase_of(step) == phase::cfg && metric ? *metric : 0.0);
  bool decided = false;
  const int L = settings_.tau.L_slope;
  if (static_cast<int>(metrics_.size()) > L) {
    // (M[i+1−L] − M[i]) / L: L−1 intervals divided by L, exactly as the reference.
    const double slope = (metrics_[metrics_.size() - L] - metrics_.back()) / L;
    last_slope_ = slope;
    if (!tau1_ && slope >= 0 && slope < settings_.tau.eps_slope) {
      tau1_ = step;
      window_begin_ = step + 1;  // decided at the end of step i*, effective from i*+1
      decided = true;
    }
  }
  if (!tau1_ && step >= settings_.tau.tau_cap - 1) {
    tau1_ = settings_.tau.tau_cap;
    window_begin_ = tau1_;
    fell_back_ = true;
    decided = true;
  }
  if (tau1_ && !tau2_) tau2_ = *tau1_ + settings_.tau.k;
  return decided;
}

simulation simulate(const schedule_settings& settings, const std::vector<double>& metrics) {
  tau_controller controller(settings);
  simulation result;
  for (int i = 0; i < settings.steps; ++i) {
    result.phases.push_back(controller.phase_of(i));
    std::optional<double> metric;
    if (i < static_cast<int>(metrics.size())) metric = metrics[i];
    controller.end_step(i, metric);
    result.slopes.push_back(controller.last_slope());
  }
  result.tau1 = controller.tau1();
  result.tau2 = controller.tau2();
  return result;
}

}  // namespace hybridiff::schedule
