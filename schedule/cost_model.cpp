#include "schedule/cost_model.hpp"

#include <stdexcept>

namespace hybridiff::schedule {

double cost_profile::cost(const std::string& mode, int workers) const {
  const auto by_mode = step_ms.find(mode);
  if (by_mode != step_ms.end()) {
    const auto found = by_mode->second.find(workers);
    if (found != by_mode->second.end()) return found->second;
  }
  std::string has;
  for (const auto& [known, by_workers] : step_ms)
    for (const auto& [count, ms] : by_workers) has += (has.empty() ? "" : ", ") + known + "@" + std::to_string(count);
  throw std::invalid_argument("the cost profile has no '" + mode + "' step on " + std::to_string(workers) +
                              " worker(s) (it has: " + (has.empty() ? "nothing" : has) +
                              "); measure that mode, e.g. a trace of a run with it");
}

std::vector<std::string> modes_of(const std::vector<phase>& phases, int workers, bool split_branches, int warmup) {
  std::vector<std::string> modes;
  int cfg_run = 0;  // steps into the current run of CFG steps
  for (const auto p : phases) {
    if (p != phase::cfg) {
      cfg_run = 0;
      modes.emplace_back(to_string(p));
      continue;
    }
    modes.emplace_back(split_branches && workers > 2 && cfg_run >= warmup ? "cfg-pipeline" : "cfg");
    ++cfg_run;
  }
  return modes;
}

double predicted_latency_ms(const std::vector<std::string>& modes, int workers, const cost_profile& costs) {
  double total = 0;
  for (const auto& mode : modes) total += costs.cost(mode, workers);
  return total;
}

double sequential_latency_ms(int steps, const cost_profile& costs) { return steps * costs.cost("cfg", 1); }

}  // namespace hybridiff::schedule
