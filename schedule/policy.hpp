#pragma once
// Schedule policies: what decides each denoising step's phase. A policy sees the image's history (each finished
// step's phase, rel-MAE and wall time) and answers the phase of the next step; the tau controller (actors) and the
// what-if simulator both run one. The slope detector, fixed, never and always are built in; users register their
// own by name (register_policy) and choose one with a spec "NAME:KEY=VALUE,KEY=VALUE". Standard library only.

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "schedule/phase.hpp"

namespace hybridiff::schedule {

/// A spec that cannot name a policy setting at all: an unknown policy or parameter, a malformed item, a value that
/// is not a number. (A value out of its range is a plain std::invalid_argument.)
struct policy_spec_error : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

/// One finished step, as a policy sees it.
struct step_observation {
  int step = 0;
  phase ran = phase::cfg;
  std::optional<double> metric;  ///< rel-MAE of a CFG step (absent for window steps and when not measured)
  double step_ms = 0;            ///< the step's wall time on the driver (0 when unknown, e.g. in the simulator)
};

/// Decides each step's phase. phase_of(i) is asked at the start of step i and may be asked again; end_step(i) is
/// told once per step, in order, after it ran; a decision made there acts from step i + 1. Any sequence of phases
/// is allowed where every window (a run of pipeline steps) starts with a fill step; several windows per image are
/// fine.
class schedule_policy {
 public:
  virtual ~schedule_policy() = default;
  virtual phase phase_of(int step) const = 0;
  virtual void end_step(const step_observation& finished) = 0;
  /// The policy's own account of its first window, where it has one (the slope detector's tau1 is the step that
  /// detected, one before its fill step). Absent: the controller reports the first window's fill and last steps.
  virtual std::optional<int> tau1() const { return std::nullopt; }
  virtual std::optional<int> tau2() const { return std::nullopt; }
  /// The slope computed at the last end_step, for detectors that compute one.
  virtual std::optional<double> last_slope() const { return std::nullopt; }
  /// Whether the window came from a fallback rather than a detection.
  virtual bool fell_back() const { return false; }
  /// Asked at the start of CFG step `step`: the last step through which every step runs CFG whatever end_step is
  /// told from now on (at least `step`; past the last step is fine). A promise: the CFG workers step ahead on it
  /// without waiting for each step's decision, and a policy that breaks it fails the image. The default promises
  /// this step only.
  virtual int cfg_certain_through(int step) const { return step; }
  /// Asked at the start of fill step `step`: the last step through which every step after it is a pipeline step of
  /// this window whatever end_step is told from now on (at least `step`: none promised). A promise: the window's
  /// stages step ahead on it, and a policy that breaks it fails the image. The default promises none.
  virtual int window_certain_through(int step) const { return step; }
};

/// What a policy is built with besides its parameters: the request's step count and the defaults the model and
/// the command line give (a parameter a spec leaves out takes these).
struct policy_context {
  int steps = 50;
  int L_slope = 12;
  double eps_slope = 4e-4;
  int k = 5;
  int tau_cap = 15;
  int warmup = 1;
};

/// A spec's parameters, read by a policy's factory. Every getter consumes its key; `finish()` throws
/// std::invalid_argument naming a key no getter asked for. Values that do not parse throw naming the key.
class policy_parameters {
 public:
  policy_parameters(std::string policy, std::map<std::string, std::string> values);
  int integer(const std::string& key, int fallback);
  double real(const std::string& key, double fallback);
  std::optional<int> optional_integer(const std::string& key);
  /// Throws when a key was not asked for: "policy slope: unknown parameter 'foo' (it takes L, eps, k, cap)".
  void finish() const;
  const std::string& policy() const { return policy_; }

 private:
  std::optional<std::string> take(const std::string& key);
  std::string policy_;
  std::map<std::string, std::string> values_;
  std::vector<std::string> asked_;
};

using policy_factory = std::function<std::unique_ptr<schedule_policy>(policy_parameters&, const policy_context&)>;

/// Makes `name` choosable in specs. `summary` is one line for listings ("two windows: ..."). A name already
/// registered (a built-in included) throws std::invalid_argument. Thread-safe.
void register_policy(const std::string& name, const std::string& summary, policy_factory make);

/// The registered policies, by name, with their summaries (built-ins first registered).
std::vector<std::pair<std::string, std::string>> registered_policies();

/// A spec split into its name and parameters: "slope:L=12,eps=4e-4" → {"slope", {L: 12, eps: 4e-4}}. Throws
/// std::invalid_argument on an empty name, an item without '=' or a repeated key.
std::pair<std::string, std::map<std::string, std::string>> parse_policy_spec(const std::string& spec);

/// Builds the policy a spec names; throws std::invalid_argument for an unknown name (listing the registered ones),
/// an unknown parameter or a value out of range, naming it.
std::unique_ptr<schedule_policy> make_policy(const std::string& spec, const policy_context& context);

}  // namespace hybridiff::schedule
