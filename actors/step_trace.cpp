// The schedule trace as CSV.
#include <fstream>
#include <iomanip>
#include <map>
#include <sstream>

#include "actors/hybridiff.hpp"

namespace hybridiff {

void write_trace_csv(const std::string& path, const std::vector<step_trace>& trace, const std::string& model) {
  if (model.find_first_of(",\n\"") != std::string::npos)
    throw error("write_trace_csv: model name '" + model + "' would break the CSV");
  std::ofstream out(path);
  if (!out) throw error(path + ": cannot open for writing");
  const std::size_t workers = trace.empty() ? 0 : trace.front().worker_ms.size();
  out << "step,mode,rel_mae,slope,step_ms";
  for (std::size_t w = 0; w < workers; ++w) out << ",worker" << w << "_ms";
  for (std::size_t w = 0; w < workers; ++w) out << ",worker" << w << "_overhead_ms";
  out << ",tau1,tau2" << (model.empty() ? "" : ",model") << "\n" << std::setprecision(9);
  for (const auto& row : trace) {
    out << row.step << "," << row.mode << ",";
    if (row.metric) out << *row.metric;
    out << ",";
    if (row.slope) out << *row.slope;
    out << "," << row.step_ms;
    for (std::size_t w = 0; w < workers; ++w) out << "," << (w < row.worker_ms.size() ? row.worker_ms[w] : 0.0);
    for (std::size_t w = 0; w < workers; ++w)
      out << "," << (w < row.worker_overhead_ms.size() ? row.worker_overhead_ms[w] : 0.0);
    out << ",";
    if (row.tau1) out << *row.tau1;
    out << ",";
    if (row.tau2) out << *row.tau2;
    if (!model.empty()) out << "," << model;
    out << "\n";
  }
}

std::vector<step_trace> read_trace_csv(const std::string& path, std::string* model) {
  std::ifstream in(path);
  if (!in) throw error(path + ": cannot open the trace");
  std::string line;
  if (!std::getline(in, line)) throw error(path + ": empty (expected a trace CSV with a header line)");
  auto split = [](const std::string& text) {
    std::vector<std::string> cells;
    std::stringstream stream(text);
    for (std::string cell; std::getline(stream, cell, ',');) cells.push_back(cell);
    if (!text.empty() && text.back() == ',') cells.emplace_back();
    return cells;
  };
  const auto header = split(line);
  std::map<std::string, std::size_t> column;
  std::vector<std::size_t> compute, overhead;
  for (std::size_t c = 0; c < header.size(); ++c) {
    column[header[c]] = c;
    const auto& name = header[c];
    if (name.rfind("worker", 0) != 0) continue;
    if (name.size() > 12 && name.compare(name.size() - 12, 12, "_overhead_ms") == 0) {
      overhead.push_back(c);
    } else if (name.size() > 3 && name.compare(name.size() - 3, 3, "_ms") == 0) {
      compute.push_back(c);
    }
  }
  for (const char* needed : {"step", "mode", "rel_mae"})
    if (!column.count(needed)) throw error(path + ": not a hybridiff trace (no '" + std::string(needed) + "' column)");
  std::vector<step_trace> trace;
  std::string model_named;
  for (int number = 2; std::getline(in, line); ++number) {
    if (line.empty()) continue;
    const auto cells = split(line);
    if (cells.size() != header.size())
      throw error(path + ":" + std::to_string(number) + ": " + std::to_string(cells.size()) +
                  " fields, the header has " + std::to_string(header.size()));
    auto number_in = [&](std::size_t c) -> std::optional<double> {
      if (cells[c].empty()) return std::nullopt;
      try {
        std::size_t used = 0;
        const double value = std::stod(cells[c], &used);
        if (used == cells[c].size()) return value;
      } catch (const std::exception&) {}
      throw error(path + ":" + std::to_string(number) + ": " + header[c] + " '" + cells[c] + "' is not a number");
    };
    step_trace row;
    const auto step = number_in(column["step"]);
    if (!step || *step != static_cast<double>(trace.size()))
      throw error(path + ":" + std::to_string(number) + ": step '" + cells[column["step"]] + "', expected " +
                  std::to_string(trace.size()) + " (one row per step, in order)");
    row.step = static_cast<int>(*step);
    row.mode = cells[column["mode"]];
    row.metric = number_in(column["rel_mae"]);
    if (column.count("slope")) row.slope = number_in(column["slope"]);
    if (column.count("step_ms")) row.step_ms = number_in(column["step_ms"]).value_or(0.0);
    for (auto c : compute) row.worker_ms.push_back(number_in(c).value_or(0.0));
    for (auto c : overhead) row.worker_overhead_ms.push_back(number_in(c).value_or(0.0));
    if (column.count("tau1"))
      if (auto tau1 = number_in(column["tau1"])) row.tau1 = static_cast<int>(*tau1);
    if (column.count("tau2"))
      if (auto tau2 = number_in(column["tau2"])) row.tau2 = static_cast<int>(*tau2);
    if (column.count("model")) {
      const auto& named = cells[column["model"]];
      if (trace.empty()) model_named = named;
      if (named != model_named)
        throw error(path + ":" + std::to_string(number) + ": model '" + named + "', earlier rows '" + model_named +
                    "' (one trace is one run)");
    }
    trace.push_back(std::move(row));
  }
  if (trace.empty()) throw error(path + ": the trace has no steps");
  if (model) *model = model_named;
  return trace;
}

}  // namespace hybridiff
