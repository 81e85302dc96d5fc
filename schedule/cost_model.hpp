#pragma once
// Predicted latency of a schedule: each step priced by what its kind of step cost when measured (a cost profile:
// median wall time per step mode and worker count, from traces or `bench --run`). Standard library only.

#include <map>
#include <string>
#include <vector>

#include "schedule/phase.hpp"

namespace hybridiff::schedule {

/// Measured step costs: mode (cfg, fill, pipeline, cfg-pipeline: a trace's mode column) → workers → median ms.
/// "cfg" on 1 worker is the sequential step (both branches batched), the baseline of every speedup.
struct cost_profile {
  std::string model;  ///< what was measured (for the reader; never compared)
  std::map<std::string, std::map<int, double>> step_ms;

  /// Throws std::invalid_argument naming the mode and worker count the profile lacks, and what it has.
  double cost(const std::string& mode, int workers) const;
};

/// The modes the driver runs for `phases` on `workers` workers: CFG steps are "cfg", except that with split
/// branches (4 workers, 2 per branch) each CFG run's first `warmup` steps are full ("cfg") and the rest
/// "cfg-pipeline".
std::vector<std::string> modes_of(const std::vector<phase>& phases, int workers, bool split_branches, int warmup = 1);

/// Σ cost(mode_i, workers) over the steps.
double predicted_latency_ms(const std::vector<std::string>& modes, int workers, const cost_profile& costs);

/// The sequential baseline for `steps` steps: steps × cost("cfg", 1).
double sequential_latency_ms(int steps, const cost_profile& costs);

}  // namespace hybridiff::schedule
