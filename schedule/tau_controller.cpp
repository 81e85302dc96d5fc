#include "schedule/tau_controller.hpp"

#include <algorithm>
#include <stdexcept>

#include "schedule/builtin_policies.hpp"

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
  if (!s.policy_spec.empty()) {  // the spec's policy checks its own parameters
    make_policy(s);
    return;
  }
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

std::unique_ptr<schedule_policy> make_policy(const schedule_settings& s) {
  if (!s.policy_spec.empty())
    return make_policy(s.policy_spec, {s.steps, s.tau.L_slope, s.tau.eps_slope, s.tau.k, s.tau.tau_cap, s.warmup});
  switch (s.policy) {
    case tau_policy::slope:
      return std::make_unique<slope_policy>(s.tau.L_slope, s.tau.eps_slope, s.tau.k, s.tau.tau_cap);
    case tau_policy::fixed: return std::make_unique<fixed_policy>(*s.tau1, *s.tau2);
    case tau_policy::never: return std::make_unique<never_policy>();
    case tau_policy::always: return std::make_unique<always_policy>(s.warmup, s.steps);
  }
  reject("unknown tau policy");
}

double relative_mae(double mean_abs_difference, double mean_abs_uncond) {
  return mean_abs_difference / (mean_abs_uncond + 1e-12);
}

tau_controller::tau_controller(schedule_settings settings)
    : tau_controller((validate(settings), make_policy(settings)), settings.steps) {}

tau_controller::tau_controller(std::unique_ptr<schedule_policy> policy, int steps)
    : policy_(std::move(policy)), steps_(steps) {
  if (!policy_) throw std::invalid_argument("tau_controller needs a policy");
}

phase tau_controller::phase_of(int step) const {
  const phase p = policy_->phase_of(step);
  // A window's stages need the activations its fill step caches.
  const bool after_cfg = step == 0 || (last_step_ == step - 1 && last_ == phase::cfg);
  if (p == phase::pipeline && after_cfg)
    throw std::logic_error("schedule policy: step " + std::to_string(step) +
                           " is a pipeline step right after a CFG step (a window starts with a fill step)");
  if (p != phase::cfg && step <= promised_cfg_through_)
    throw std::logic_error("schedule policy: step " + std::to_string(step) + " is a " + to_string(p) +
                           " step, but the policy promised CFG through step " + std::to_string(promised_cfg_through_));
  if (p != phase::pipeline && step >= promised_window_from_ && step <= promised_window_through_)
    throw std::logic_error("schedule policy: step " + std::to_string(step) + " is a " + to_string(p) +
                           " step, but the policy promised the window's pipeline steps through step " +
                           std::to_string(promised_window_through_));
  return p;
}

int tau_controller::promise_window(int step) {
  const int through = std::min(std::max(policy_->window_certain_through(step), step), steps_ - 1);
  promised_window_from_ = step + 1;
  promised_window_through_ = through;
  return through;
}

int tau_controller::promise_cfg(int step) {
  const int through = std::min(std::max(policy_->cfg_certain_through(step), step), steps_ - 1);
  promised_cfg_through_ = std::max(promised_cfg_through_, through);
  return through;
}

bool tau_controller::end_step(int step, std::optional<double> metric, double step_ms) {
  const phase ran = policy_->phase_of(step);
  const bool had_tau1 = tau1().has_value();
  if (ran == phase::fill && !first_fill_) first_fill_ = step;
  if (first_fill_ && !first_window_end_ && ran == phase::cfg) first_window_end_ = step - 1;
  last_ = ran;
  last_step_ = step;
  policy_->end_step({step, ran, ran == phase::cfg ? metric : std::nullopt, step_ms});
  if (first_fill_ && !first_window_end_ && step + 1 == steps_) first_window_end_ = step;
  // A fill decided for the next step opens the first window now (tau1 is known a step ahead, as the detector's).
  if (!first_fill_ && step + 1 < steps_ && policy_->phase_of(step + 1) == phase::fill) first_fill_ = step + 1;
  return !had_tau1 && tau1().has_value();
}

std::optional<int> tau_controller::tau1() const {
  if (const auto own = policy_->tau1()) return own;
  return first_fill_;
}

std::optional<int> tau_controller::tau2() const {
  if (const auto own = policy_->tau2()) return own;
  return first_window_end_;
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
