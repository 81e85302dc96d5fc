#include "schedule/builtin_policies.hpp"

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>

namespace hybridiff::schedule {
namespace {

[[noreturn]] void reject(const std::string& message) { throw std::invalid_argument(message); }

}  // namespace

phase single_window_policy::phase_of(int step) const {
  if (!window_begin_ || step < *window_begin_ || step > *tau2_) return phase::cfg;
  return step == *window_begin_ ? phase::fill : phase::pipeline;
}

int single_window_policy::cfg_certain_through(int step) const {
  if (!window_begin_) return std::max(step, undecided_cfg_through(step));
  if (step < *window_begin_) return *window_begin_ - 1;
  return step > *tau2_ ? std::numeric_limits<int>::max() : step;  // one window: after it, CFG to the end
}

int single_window_policy::window_certain_through(int step) const {
  return window_begin_ && step == *window_begin_ ? *tau2_ : step;
}

int slope_policy::undecided_cfg_through(int step) const { return std::max(step, L_slope_); }

slope_policy::slope_policy(int L_slope, double eps_slope, int k, int tau_cap)
    : L_slope_(L_slope), k_(k), tau_cap_(tau_cap), eps_slope_(eps_slope) {}

void slope_policy::end_step(const step_observation& finished) {
  last_slope_.reset();
  // Window steps log 0, as the reference (their two branches are one tensor); the value is never used.
  metrics_.push_back(finished.ran == phase::cfg && finished.metric ? *finished.metric : 0.0);
  const int L = L_slope_;
  if (static_cast<int>(metrics_.size()) > L) {
    // (M[i+1−L] − M[i]) / L: L−1 intervals divided by L, exactly as the reference.
    const double slope = (metrics_[metrics_.size() - L] - metrics_.back()) / L;
    last_slope_ = slope;
    if (!tau1_ && slope >= 0 && slope < eps_slope_) {
      tau1_ = finished.step;
      window_begin_ = finished.step + 1;  // decided at the end of step i*, effective from i*+1
    }
  }
  if (!tau1_ && finished.step >= tau_cap_ - 1) {
    tau1_ = tau_cap_;
    window_begin_ = tau1_;
    fell_back_ = true;
  }
  if (tau1_ && !tau2_) tau2_ = *tau1_ + k_;
}

fixed_policy::fixed_policy(int tau1, int tau2) {
  tau1_ = tau1;
  tau2_ = tau2;
  window_begin_ = tau1;
}

always_policy::always_policy(int warmup, int steps) {
  // Warm-up steps 0 .. W−2 are CFG, step W−1 fills the caches, pipeline to the end.
  tau1_ = warmup - 1;
  tau2_ = steps - 1;
  window_begin_ = tau1_;
}

std::unique_ptr<schedule_policy> make_slope_policy(policy_parameters& parameters, const policy_context& context) {
  const int L = parameters.integer("L", context.L_slope);
  const double eps = parameters.real("eps", context.eps_slope);
  const int k = parameters.integer("k", context.k);
  const int cap = parameters.integer("cap", context.tau_cap);
  const auto where = "policy slope: ";
  if (L < 1) reject(where + std::string("L=") + std::to_string(L) + " must be at least 1");
  if (!(eps > 0)) reject(where + std::string("eps=") + std::to_string(eps) + " must be positive");
  if (k < 1) reject(where + std::string("k=") + std::to_string(k) + " must be at least 1");
  if (L >= cap)
    reject(where + std::string("L=") + std::to_string(L) + " must be less than cap=" + std::to_string(cap) +
           " (the slope needs L + 1 metrics before the fallback)");
  if (cap + k >= context.steps)
    reject(where + std::string("cap + k (") + std::to_string(cap) + " + " + std::to_string(k) +
           ") must be less than the steps (" + std::to_string(context.steps) +
           ": the window must end before the last step)");
  return std::make_unique<slope_policy>(L, eps, k, cap);
}

std::unique_ptr<schedule_policy> make_fixed_policy(policy_parameters& parameters, const policy_context& context) {
  const auto tau1 = parameters.optional_integer("tau1");
  const auto tau2 = parameters.optional_integer("tau2");
  if (!tau1 || !tau2) reject("policy fixed: needs tau1 and tau2 (e.g. fixed:tau1=10,tau2=20)");
  if (*tau1 < 0 || *tau1 > *tau2 || *tau2 >= context.steps)
    reject("policy fixed: tau1=" + std::to_string(*tau1) + ", tau2=" + std::to_string(*tau2) +
           ": need 0 <= tau1 <= tau2 < steps (" + std::to_string(context.steps) + ")");
  return std::make_unique<fixed_policy>(*tau1, *tau2);
}

std::unique_ptr<schedule_policy> make_never_policy(policy_parameters&, const policy_context&) {
  return std::make_unique<never_policy>();
}

std::unique_ptr<schedule_policy> make_always_policy(policy_parameters& parameters, const policy_context& context) {
  const int warmup = parameters.integer("warmup", context.warmup);
  if (warmup < 1 || warmup > context.steps)
    reject("policy always: warmup=" + std::to_string(warmup) + " must be in [1, steps] (" +
           std::to_string(context.steps) + "; the last warm-up step fills the caches)");
  return std::make_unique<always_policy>(warmup, context.steps);
}

}  // namespace hybridiff::schedule
