#pragma once
// The Hybridiff phase schedule: which phase every denoising step runs in, decided online from the divergence of
// the two guidance branches. Pure logic (standard library only), shared by the runtime's tau-controller actor and
// the what-if simulator. Ref: the Hybridiff reference scripts' schedule (docs/schedules.md).

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "schedule/phase.hpp"
#include "schedule/policy.hpp"

namespace hybridiff::schedule {

/// How tau1 (start of the pipeline window) is chosen.
enum class tau_policy : std::uint8_t {
  slope,   ///< detected online from the rel-MAE slope, with the tau_cap fallback (default)
  fixed,   ///< given: --tau1 A --tau2 B
  never,   ///< pure CFG data parallelism
  always,  ///< pure AsyncDiff: warm-up steps, then pipeline to the end
};
/// Parses "slope", "fixed", "never", "always"; throws std::invalid_argument listing them.
tau_policy parse_tau_policy(const std::string& name);

/// The detector's settings. Defaults per model as the reference scripts: SDXL {12, 4e-4, 5, 15}, SD3 {15, 5e-4, 5, 40}.
struct tau_settings {
  int L_slope = 12;
  double eps_slope = 4e-4;
  int k = 5;
  int tau_cap = 15;

  static tau_settings sdxl() { return {12, 4e-4, 5, 15}; }
  static tau_settings sd3() { return {15, 5e-4, 5, 40}; }
};

/// The whole schedule configuration of one image.
struct schedule_settings {
  tau_policy policy = tau_policy::slope;
  tau_settings tau;
  int steps = 50;
  std::optional<int> tau1, tau2;  ///< the fixed policy's window [tau1, tau2]
  int warmup = 1;                 ///< the always policy's warm-up steps (>= 1: the last one fills the caches)
  /// A registered policy by spec ("slope:L=8,eps=1e-4", "fixed:tau1=10,tau2=20", a user's own): replaces `policy`
  /// when set; the parameters it leaves out take `tau` and `warmup`.
  std::string policy_spec;
};

/// Rejects impossible settings with std::invalid_argument naming the flag: steps >= 1; L_slope >= 1 and
/// L_slope < tau_cap; tau_cap + k < steps; k >= 1; eps_slope > 0; fixed: 0 <= tau1 <= tau2 < steps;
/// always: 1 <= warmup <= steps; a policy_spec that names no registered policy or a bad parameter.
void validate(const schedule_settings& settings);

/// The policy `settings` describe (its spec, else the built-in one of `policy`), after validate(settings).
std::unique_ptr<schedule_policy> make_policy(const schedule_settings& settings);

/// rel-MAE of one CFG step: mean|ε_c − ε_u| / (mean|ε_u| + 1e-12), given the two means.
double relative_mae(double mean_abs_difference, double mean_abs_uncond);

/// Runs a schedule policy over one image and checks what it decides. Call `phase_of(i)` at the start of step i,
/// and `end_step(i, metric, step_ms)` at its end (`metric`: the step's rel-MAE, absent for non-CFG steps). A
/// decision made at the end of step i takes effect at step i + 1, as in the reference: the slope detector's
/// detection at step i* gives the window i*+1 .. i*+k (k steps), its tau_cap fallback (taken at step tau_cap − 1)
/// gives tau_cap .. tau_cap+k (k + 1 steps). A policy that starts a window without a fill step throws
/// std::logic_error naming the step.
class tau_controller {
 public:
  explicit tau_controller(schedule_settings settings);
  tau_controller(std::unique_ptr<schedule_policy> policy, int steps);

  phase phase_of(int step) const;
  /// Records the step and lets the policy decide. Returns true when this call set tau1.
  bool end_step(int step, std::optional<double> metric, double step_ms = 0);

  /// The policy's tau1/tau2 where it reports them, else the first window's fill step and its last step.
  std::optional<int> tau1() const;
  std::optional<int> tau2() const;
  /// The slope computed at the last `end_step`, when one was (the slope detector, i >= L_slope).
  std::optional<double> last_slope() const { return policy_->last_slope(); }
  /// Whether tau1 came from a fallback (the slope detector's tau_cap).
  bool fell_back() const { return policy_->fell_back(); }
  /// At the start of CFG step `step`: the last step through which the policy promises CFG (at least `step`, at most
  /// the last step). phase_of throws std::logic_error for a later non-CFG step that a promise covered.
  int promise_cfg(int step);
  /// At the start of fill step `step`: the last step through which the policy promises the window's pipeline steps
  /// (at least `step`, at most the last step). phase_of throws std::logic_error for a step up to it that is not a
  /// pipeline step.
  int promise_window(int step);

 private:
  std::unique_ptr<schedule_policy> policy_;
  int steps_;
  std::optional<phase> last_;  ///< the phase of the last recorded step, last_step_
  int last_step_ = -1;
  int promised_cfg_through_ = -1;
  int promised_window_from_ = 0, promised_window_through_ = -1;  ///< pipeline steps promised at a fill step
  std::optional<int> first_fill_, first_window_end_;
};

/// The phase of every step for metrics given up front (one value per step; values of window steps are
/// ignored), with the final tau1/tau2: the what-if simulator.
struct simulation {
  std::vector<phase> phases;
  std::vector<std::optional<double>> slopes;
  std::optional<int> tau1, tau2;
};
simulation simulate(const schedule_settings& settings, const std::vector<double>& metrics);

}  // namespace hybridiff::schedule
