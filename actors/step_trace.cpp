// The schedule trace as CSV.
#include <fstream>
#include <iomanip>

#include "actors/hybridiff.hpp"

namespace hybridiff {

void write_trace_csv(const std::string& path, const std::vector<step_trace>& trace) {
  std::ofstream out(path);
  if (!out) throw error(path + ": cannot open for writing");
  const std::size_t workers = trace.empty() ? 0 : trace.front().worker_ms.size();
  out << "step,mode,rel_mae,slope";
  for (std::size_t w = 0; w < workers; ++w) out << ",worker" << w << "_ms";
  out << ",tau1,tau2\n" << std::setprecision(9);
  for (const auto& row : trace) {
    out << row.step << "," << row.mode << ",";
    if (row.metric) out << *row.metric;
    out << ",";
    if (row.slope) out << *row.slope;
    for (double ms : row.worker_ms) out << "," << ms;
    out << ",";
    if (row.tau1) out << *row.tau1;
    out << ",";
    if (row.tau2) out << *row.tau2;
    out << "\n";
  }
}

}  // namespace hybridiff
