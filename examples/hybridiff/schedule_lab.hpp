#pragma once
// The schedule lab behind `hybridiff schedule`: replaying policies on measured rel-MAE series, pricing their
// schedules with a cost profile, and sweeping a policy's parameters (with, optionally, the image quality each
// setting gives on the built-in model).

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "actors/hybridiff.hpp"
#include "schedule/cost_model.hpp"
#include "schedule/tau_controller.hpp"

namespace hybridiff::cli {

/// One image's rel-MAE per step, as a trace recorded it (absent where the run computed none: window steps).
struct metric_series {
  std::string source;
  std::vector<std::optional<double>> metrics;
  std::string model;  ///< the pipeline class that ran (empty: the trace does not say)
};
/// The rel_mae column of a trace CSV (read_trace_csv), and its model.
metric_series trace_series(const std::string& path);
/// The one model that traces (source, model) come from, empty when none says; throws naming two traces of
/// different models ("the traces of a WHAT must come from one model: ...").
std::string one_model(const std::vector<std::pair<std::string, std::string>>& traces, const std::string& what);

/// A policy replayed on a series: what the controller decides when every step's metric is the measured one.
schedule::simulation replay(const schedule::schedule_settings& settings,
                            const std::vector<std::optional<double>>& metrics);
schedule::simulation replay(const schedule::schedule_settings& settings, const std::vector<double>& metrics);

struct prediction {
  double latency_ms = 0;     ///< the schedule's steps priced by the profile
  double sequential_ms = 0;  ///< as many sequential steps (cfg on 1 worker)
  double speedup() const { return sequential_ms / latency_ms; }
};
prediction predict(const std::vector<schedule::phase>& phases, int workers, bool split_branches,
                   const schedule::cost_profile& costs);

/// Cost profiles as JSON: {"model": "...", "step_ms": {"cfg": {"1": 12.5, "2": 6.9}, "fill": {"2": ...}, ...}}.
nlohmann::json cost_profile_json(const schedule::cost_profile& profile);
/// Throws hybridiff::error naming the file and the field that is missing or wrong.
schedule::cost_profile read_cost_profile(const std::string& path);
void write_cost_profile(const std::string& path, const schedule::cost_profile& profile);
/// The median step_ms of every (mode, worker count) in `traces`, degraded steps left out. Throws when a trace has
/// no step times (written before traces recorded them).
schedule::cost_profile profile_of_traces(const std::vector<std::vector<step_trace>>& traces);

/// The same from a `bench --run` report: each run's per-phase median step time on its worker count.
schedule::cost_profile cost_profile_of_runs(const nlohmann::json& report);

/// "L=4,8,12 eps=1e-4,4e-4" → [(L, [4, 8, 12]), (eps, [1e-4, 4e-4])]; a usage error for a malformed item.
std::vector<std::pair<std::string, std::vector<std::string>>> parse_grid(const std::string& grid);

struct sweep_request {
  std::string policy;  ///< a registered policy's name
  std::vector<std::pair<std::string, std::vector<std::string>>> grid;
  int workers = 2;
  bool split_branches = true;
  schedule::tau_settings defaults;  ///< the values of parameters the grid leaves out
  schedule::cost_profile costs;
  std::vector<metric_series> traces;  ///< every one the same step count
};

struct sweep_row {
  std::string spec;  ///< the policy spec of this setting
  std::map<std::string, std::string> values;
  std::string refused;  ///< why the policy refused the setting; empty when it ran
  double mean_speedup = 0, min_speedup = 0, max_speedup = 0;
  double mean_window_steps = 0;  ///< fill + pipeline steps per image
  /// --measure: PSNR of the setting's images against the sequential ones (dB, mean) and the classifier's accuracy.
  std::optional<double> psnr_db, accuracy;
};

struct sweep_table {
  std::string policy;
  int workers = 2, traces = 0, steps = 0;
  std::optional<int> measured_images;
  std::optional<double> sequential_accuracy;  ///< --measure: the classifier's accuracy on the sequential images
  std::vector<sweep_row> rows;
};

/// Every grid combination replayed on every trace. A grid key or policy the registry does not know is a usage
/// error; a combination the policy refuses (out of range) becomes a row with `refused` set. Traces of different
/// step counts are an error naming both.
sweep_table sweep(const sweep_request& request);
/// The quality side: `images` images per setting (seeds seed.., the built-in model's classes in turn, 2 CPU
/// workers), PSNR against the sequential image of each seed and the classifier's accuracy.
void measure_quality(sweep_table& table, const sweep_request& request, int images, std::uint64_t seed);

std::string sweep_csv(const sweep_table& table);
nlohmann::json sweep_json(const sweep_table& table);
/// By extension: .csv or .json; anything else is a usage error.
void write_sweep_table(const std::string& path, const sweep_table& table);
/// Predicted speedup per setting as bars; with measured quality, speedup against PSNR with the Pareto frontier.
void write_sweep_plot(const std::string& png, const sweep_table& table);

}  // namespace hybridiff::cli
