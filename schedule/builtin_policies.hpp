#pragma once
// The built-in schedule policies: the reference's slope detector, a fixed window, never and always.

#include <limits>
#include <memory>
#include <optional>
#include <vector>

#include "schedule/policy.hpp"

namespace hybridiff::schedule {

/// A policy with at most one window, fill at window_begin_ and pipeline through tau2_.
class single_window_policy : public schedule_policy {
 public:
  phase phase_of(int step) const override;
  std::optional<int> tau1() const override { return tau1_; }
  std::optional<int> tau2() const override { return tau2_; }
  /// Decided: up to the fill step, or to the end after the window. Undecided: undecided_cfg_through.
  int cfg_certain_through(int step) const override;
  /// At the fill step: tau2, the window's last step.
  int window_certain_through(int step) const override;

 protected:
  /// Before the window is decided: the last step it cannot begin after (this policy's own rule).
  virtual int undecided_cfg_through(int step) const { return step; }

  std::optional<int> tau1_, tau2_;
  std::optional<int> window_begin_;  ///< the fill step
};

/// The reference's detector: after each CFG step, slope = (M[i+1−L] − M[i]) / L over the rel-MAE history M
/// (window steps count as 0, as the reference logs them); the first step i* with 0 <= slope < eps sets
/// tau1 = i* and the window i*+1 .. i*+k; if none by step cap − 1, the window cap .. cap+k (the fallback).
class slope_policy : public single_window_policy {
 public:
  slope_policy(int L_slope, double eps_slope, int k, int tau_cap);
  void end_step(const step_observation& finished) override;
  std::optional<double> last_slope() const override { return last_slope_; }
  bool fell_back() const override { return fell_back_; }

 protected:
  /// The slope needs L + 1 metrics: the earliest window fills step L + 1 (and the fallback's, cap, is later).
  int undecided_cfg_through(int step) const override;

 private:
  int L_slope_, k_, tau_cap_;
  double eps_slope_;
  std::vector<double> metrics_;
  std::optional<double> last_slope_;
  bool fell_back_ = false;
};

/// The window [tau1, tau2] given up front (fill at tau1).
class fixed_policy : public single_window_policy {
 public:
  fixed_policy(int tau1, int tau2);
  void end_step(const step_observation&) override {}
};

/// CFG on every step.
class never_policy : public single_window_policy {
 public:
  void end_step(const step_observation&) override {}

 protected:
  int undecided_cfg_through(int) const override { return std::numeric_limits<int>::max(); }
};

/// CFG for steps 0 .. warmup − 2, fill at warmup − 1, pipeline to the end (pure AsyncDiff).
class always_policy : public single_window_policy {
 public:
  always_policy(int warmup, int steps);
  void end_step(const step_observation&) override {}
};

std::unique_ptr<schedule_policy> make_slope_policy(policy_parameters& parameters, const policy_context& context);
std::unique_ptr<schedule_policy> make_fixed_policy(policy_parameters& parameters, const policy_context& context);
std::unique_ptr<schedule_policy> make_never_policy(policy_parameters& parameters, const policy_context& context);
std::unique_ptr<schedule_policy> make_always_policy(policy_parameters& parameters, const policy_context& context);

}  // namespace hybridiff::schedule
