#pragma once
// The Hybridiff phase schedule: which phase every denoising step runs in, decided online from the divergence of
// the two guidance branches. Pure logic (standard library only), shared by the runtime's tau-controller actor and
// the what-if simulator. Ref: the Hybridiff reference scripts' schedule (docs/schedules.md).

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace hybridiff::schedule {

/// What a step computes.
enum class phase : std::uint8_t {
  cfg,       ///< classifier-free-guidance data parallel: each branch's full prediction, guided
  fill,      ///< first step of a pipeline window: every worker runs its whole branch and caches its activations
  pipeline,  ///< stale-activation step: each worker runs its component on the previous step's activations
};
const char* to_string(phase p);

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
};

/// Rejects impossible settings with std::invalid_argument naming the flag: steps >= 1; L_slope >= 1 and
/// L_slope < tau_cap; tau_cap + k < steps; k >= 1; eps_slope > 0; fixed: 0 <= tau1 <= tau2 < steps;
/// always: 1 <= warmup <= steps.
void validate(const schedule_settings& settings);

/// rel-MAE of one CFG step: mean|ε_c − ε_u| / (mean|ε_u| + 1e-12), given the two means.
double relative_mae(double mean_abs_difference, double mean_abs_uncond);

/// The tau controller's state machine. Call `phase_of(i)` at the start of step i, and `end_step(i, metric)` at
/// its end (`metric`: the step's rel-MAE; ignored for non-CFG steps). A decision made at the end of step i takes
/// effect at step i + 1, as in the reference: detection at step i* gives the window i*+1 .. i*+k (k steps), the
/// tau_cap fallback (taken at step tau_cap − 1) gives tau_cap .. tau_cap+k (k + 1 steps).
class tau_controller {
 public:
  explicit tau_controller(schedule_settings settings);

  phase phase_of(int step) const;
  /// Records the step's metric and decides tau1/tau2. Returns true when this call set tau1.
  bool end_step(int step, std::optional<double> metric);

  std::optional<int> tau1() const { return tau1_; }
  std::optional<int> tau2() const { return tau2_; }
  /// The first step of the pipeline window (the fill step), once decided.
  std::optional<int> window_begin() const { return window_begin_; }
  /// The slope computed at the last `end_step`, when one was (i >= L_slope).
  std::optional<double> last_slope() const { return last_slope_; }
  /// Whether tau1 came from the tau_cap fallback.
  bool fell_back() const { return fell_back_; }
  const schedule_settings& settings() const { return settings_; }

 private:
  schedule_settings settings_;
  std::vector<double> metrics_;
  std::optional<int> tau1_, tau2_;
  std::optional<int> window_begin_;  ///< the fill step: tau1 + 1 after detection, tau1 otherwise
  std::optional<double> last_slope_;
  bool fell_back_ = false;
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
