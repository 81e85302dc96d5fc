// hybridiff schedule: the schedule lab. policies (what can be chosen), simulate (one policy on one metric series or
// trace, with a predicted latency), profile (a cost profile from traces), sweep (a grid of policy parameters over
// many traces: predicted speedup per setting, a table and a plot).
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "actors/hybridiff.hpp"
#include "cli.hpp"
#include "models/errors.hpp"
#include "schedule/cost_model.hpp"
#include "schedule/tau_controller.hpp"
#include "schedule_lab.hpp"

namespace hybridiff::cli {
namespace {

using nlohmann::json;

// ---- inputs -------------------------------------------------------------------------------------------------------

std::vector<double> read_metric_file(const std::string& path) {
  std::ifstream file(path);
  if (!file) throw error(path + ": cannot open");
  std::vector<double> metrics;
  std::string text;
  for (int line_number = 1; std::getline(file, text); ++line_number) {
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      std::size_t used = 0;
      metrics.push_back(std::stod(text, &used));
      if (text.find_first_not_of(" \t\r", used) != std::string::npos) throw std::invalid_argument(text);
    } catch (const std::exception&) {
      throw error(path + ":" + std::to_string(line_number) + ": '" + text + "' is not a number");
    }
  }
  return metrics;
}

// ---- the commands -------------------------------------------------------------------------------------------------

// The slope detector's settings: the policy itself without --policy, the defaults of a spec's missing parameters.
void add_detector_options(po::options_description& options) {
  // clang-format off
  options.add_options()
      ("L_slope", po::value<int>()->default_value(12)->value_name("L"), "slope window (SDXL 12, SD3 15, built-in 8)")
      ("eps_slope", po::value<double>()->default_value(4e-4)->value_name("E"), "slope threshold (SDXL 4e-4, SD3 5e-4)")
      ("k", po::value<int>()->default_value(5)->value_name("K"), "pipeline window length after detection")
      ("tau_cap", po::value<int>()->default_value(15)->value_name("C"), "fallback tau1 (SDXL 15, SD3 40, built-in 25)");
  // clang-format on
}

schedule::tau_settings detector_from(const po::variables_map& values) {
  return {values["L_slope"].as<int>(), values["eps_slope"].as<double>(), values["k"].as<int>(),
          values["tau_cap"].as<int>()};
}

schedule::schedule_settings settings_from(const po::variables_map& values, int steps) {
  schedule::schedule_settings settings;
  settings.steps = steps;
  settings.tau = detector_from(values);
  if (values.count("policy")) settings.policy_spec = values["policy"].as<std::string>();
  try {
    schedule::validate(settings);
  } catch (const std::invalid_argument& bad) {
    throw usage_error(bad.what());
  }
  return settings;
}

schedule::cost_profile profile_from(const po::variables_map& values) {
  return read_cost_profile(values["cost"].as<std::string>());
}

int run_policies(const std::vector<std::string>& args) {
  command_line line;
  line.name = "schedule policies";
  line.usage = "hybridiff schedule policies";
  line.summary = "Lists the schedule policies --policy can name, with their parameters.";
  if (!parse(line, args)) return 0;
  for (const auto& [name, summary] : schedule::registered_policies()) std::cout << name << "\t" << summary << "\n";
  return 0;
}

int run_simulate(const std::vector<std::string>& args) {
  command_line line;
  line.name = "schedule simulate";
  line.usage = "hybridiff schedule simulate (--metric-file F --steps T | --trace CSV) [options]";
  line.summary =
      "What-if tool for the schedule, no model needed. Replays a policy on one image's rel-MAE series: a metric\n"
      "file (one value per line, step 0 first; missing lines count as absent metrics) or a trace written by\n"
      "generate/coco --trace (its rel_mae column: a hybrid run's window steps have none, so replay traces of\n"
      "--parallel cfg runs, which measure every step). Prints CSV 'step,mode' (cfg, fill or pipeline), a line\n"
      "'tau1=A tau2=B' and, with --cost, the predicted latency on --workers workers and the speedup over the\n"
      "sequential step. The default policy is the reference's slope detector: tau1 = the first step i >= L with\n"
      "0 <= (M[i+1-L] - M[i]) / L < eps, else tau_cap (at step tau_cap - 1); tau2 = tau1 + k.";
  // clang-format off
  line.options.add_options()
      ("metric-file", po::value<std::string>()->value_name("F"), "one metric value per line")
      ("trace", po::value<std::string>()->value_name("CSV"), "a trace CSV (generate --trace)")
      ("steps", po::value<int>()->value_name("T"), "denoising steps (default: the trace's)")
      ("cost", po::value<std::string>()->value_name("PROFILE"),
       "a cost profile (schedule profile, bench --cost-profile): predict the latency")
      ("workers", po::value<int>()->default_value(2)->value_name("N"), "with --cost: workers of the prediction (2 or 4)")
      ("split-branches", po::value<bool>()->default_value(true)->value_name("B"),
       "with --cost and 4 workers: CFG steps split each branch over 2 workers (hybrid's default)")
      ("policy", po::value<std::string>()->value_name("SPEC"),
       "the policy by spec (slope:L=12,eps=4e-4,k=5,cap=15; fixed:tau1=A,tau2=B; never; always:warmup=W; or one "
       "registered from C++); default: the slope detector with the flags below, which also give a spec's "
       "missing parameters");
  // clang-format on
  add_detector_options(line.options);
  auto parsed = parse(line, args);
  if (!parsed) return 0;
  const auto& values = *parsed;
  if (values.count("metric-file") == values.count("trace")) throw usage_error("give --metric-file or --trace (one)");
  std::vector<std::optional<double>> metrics;
  int steps = 0;
  if (values.count("trace")) {
    const auto series = trace_series(values["trace"].as<std::string>());
    steps = static_cast<int>(series.metrics.size());
    if (values.count("steps") && values["steps"].as<int>() != steps)
      throw usage_error("--steps " + std::to_string(values["steps"].as<int>()) + " but the trace " +
                        values["trace"].as<std::string>() + " has " + std::to_string(steps) + " steps");
    metrics = series.metrics;
  } else {
    if (!values.count("steps")) throw usage_error("--metric-file needs --steps");
    steps = values["steps"].as<int>();
    for (double metric : read_metric_file(values["metric-file"].as<std::string>())) metrics.emplace_back(metric);
  }
  const auto settings = settings_from(values, steps);
  const auto run = replay(settings, metrics);
  std::cout << "step,mode\n";
  for (int i = 0; i < settings.steps; ++i) std::cout << i << "," << schedule::to_string(run.phases[i]) << "\n";
  std::cout << "tau1=" << (run.tau1 ? std::to_string(*run.tau1) : "none")
            << " tau2=" << (run.tau2 ? std::to_string(*run.tau2) : "none") << "\n";
  if (values.count("cost")) {
    const int workers = values["workers"].as<int>();
    if (workers != 2 && workers != 4) throw usage_error("--workers " + std::to_string(workers) + ": use 2 or 4");
    const auto costs = profile_from(values);
    const auto prediction = predict(run.phases, workers, values["split-branches"].as<bool>(), costs);
    std::cout << json{{"workers", workers},
                      {"predicted_ms", prediction.latency_ms},
                      {"sequential_ms", prediction.sequential_ms},
                      {"predicted_speedup", prediction.speedup()}}
                     .dump()
              << "\n";
  }
  return 0;
}

int run_profile(const std::vector<std::string>& args) {
  command_line line;
  line.name = "schedule profile";
  line.usage = "hybridiff schedule profile --out PROFILE.json TRACE.csv...";
  line.summary =
      "A cost profile from traces (generate/coco --trace): the median step_ms of every mode (cfg, fill, pipeline,\n"
      "cfg-pipeline) on every worker count the traces ran. Give traces of the runs a simulation will price:\n"
      "--parallel none (the sequential baseline: cfg on 1 worker), and hybrid or cfg + asyncdiff on N workers.\n"
      "Degraded steps are left out.";
  // clang-format off
  line.options.add_options()
      ("out", po::value<std::string>()->required()->value_name("FILE"), "the profile (JSON)")
      ("model", po::value<std::string>()->default_value("")->value_name("NAME"),
       "what was measured, for the reader (default: the traces' model)")
      ("trace", po::value<std::vector<std::string>>()->required()->value_name("CSV"), "traces (also positional)");
  // clang-format on
  line.positional.add("trace", -1);
  auto parsed = parse(line, args);
  if (!parsed) return 0;
  const auto& values = *parsed;
  std::vector<std::vector<step_trace>> traces;
  std::vector<std::pair<std::string, std::string>> models;
  for (const auto& path : values["trace"].as<std::vector<std::string>>()) {
    models.emplace_back(path, "");
    traces.push_back(read_trace_csv(path, &models.back().second));
  }
  const auto model = one_model(models, "profile");
  auto profile = profile_of_traces(traces);
  profile.model = values["model"].as<std::string>().empty() ? model : values["model"].as<std::string>();
  write_cost_profile(values["out"].as<std::string>(), profile);
  std::cout << cost_profile_json(profile).dump(2) << "\n";
  return 0;
}

int run_sweep(const std::vector<std::string>& args) {
  command_line line;
  line.name = "schedule sweep";
  line.usage = "hybridiff schedule sweep --traces DIR --grid \"L=4,8,12 eps=1e-4,4e-4\" --cost PROFILE [options]";
  line.summary =
      "Every combination of the grid's parameter values, replayed on every trace in --traces (*.csv, of --parallel\n"
      "cfg runs: every step measured), priced with --cost on --workers workers: mean, min and max predicted\n"
      "speedup over the sequential step, and the mean window length, per setting. Settings the policy refuses\n"
      "(e.g. L >= cap) are listed with the reason. With --measure N, each setting also generates N images with the\n"
      "built-in model on 2 CPU workers and reports PSNR against the sequential images and the classifier's\n"
      "accuracy: the plot then shows speedup against PSNR with the Pareto frontier. Parameters the grid leaves out\n"
      "take --L_slope, --eps_slope, --k, --tau_cap.";
  // clang-format off
  line.options.add_options()
      ("traces", po::value<std::string>()->required()->value_name("DIR"), "a folder of trace CSVs")
      ("grid", po::value<std::string>()->required()->value_name("GRID"),
       "space-separated KEY=V1,V2,... of the policy's parameters")
      ("policy", po::value<std::string>()->default_value("slope")->value_name("NAME"), "the policy swept")
      ("cost", po::value<std::string>()->required()->value_name("PROFILE"), "a cost profile")
      ("workers", po::value<int>()->default_value(2)->value_name("N"), "workers of the prediction (2 or 4)")
      ("split-branches", po::value<bool>()->default_value(true)->value_name("B"),
       "with 4 workers: CFG steps split each branch over 2 workers")
      ("out", po::value<std::string>()->value_name("FILE"), "the table: .csv or .json (default: CSV on stdout)")
      ("plot", po::value<std::string>()->value_name("PNG"), "a plot of the table")
      ("measure", po::value<int>()->value_name("N"), "images per setting for the quality side (built-in model, CPU)")
      ("seed", po::value<std::uint64_t>()->default_value(0)->value_name("S"), "with --measure: the first image's seed");
  // clang-format on
  add_detector_options(line.options);  // the values of parameters the grid leaves out
  auto parsed = parse(line, args);
  if (!parsed) return 0;
  const auto& values = *parsed;
  const int workers = values["workers"].as<int>();
  if (workers != 2 && workers != 4) throw usage_error("--workers " + std::to_string(workers) + ": use 2 or 4");
  sweep_request request;
  request.policy = values["policy"].as<std::string>();
  request.grid = parse_grid(values["grid"].as<std::string>());
  request.workers = workers;
  request.split_branches = values["split-branches"].as<bool>();
  request.costs = profile_from(values);
  request.defaults = detector_from(values);
  const auto folder = std::filesystem::path(values["traces"].as<std::string>());
  if (!std::filesystem::is_directory(folder)) throw error(folder.string() + ": not a folder of traces");
  std::vector<std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(folder))
    if (entry.path().extension() == ".csv") files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  if (files.empty()) throw error(folder.string() + ": no *.csv traces");
  for (const auto& file : files) request.traces.push_back(trace_series(file.string()));
  auto table = sweep(request);
  if (values.count("measure")) {
    const int images = values["measure"].as<int>();
    if (images < 1 || images > 1000) throw usage_error("--measure " + std::to_string(images) + ": use 1 to 1000");
    measure_quality(table, request, images, values["seed"].as<std::uint64_t>());
  }
  if (values.count("out")) {
    const auto out = values["out"].as<std::string>();
    write_sweep_table(out, table);
    spdlog::info("wrote {} ({} settings over {} traces)", out, table.rows.size(), request.traces.size());
  } else {
    std::cout << sweep_csv(table);
  }
  if (values.count("plot")) {
    write_sweep_plot(values["plot"].as<std::string>(), table);
    spdlog::info("wrote {}", values["plot"].as<std::string>());
  }
  return 0;
}

}  // namespace

int run_schedule(const std::vector<std::string>& args) {
  const std::string action = args.empty() ? "" : args.front();
  const std::vector<std::string> rest(args.begin() + (args.empty() ? 0 : 1), args.end());
  if (action == "simulate") return run_simulate(rest);
  if (action == "sweep") return run_sweep(rest);
  if (action == "profile") return run_profile(rest);
  if (action == "policies") return run_policies(rest);
  if (action == "--help" || action == "-h") {
    std::cout << "Usage: hybridiff schedule ACTION [options]\n\n"
                 "  policies    the schedule policies --policy can name\n"
                 "  simulate    one policy on one image's rel-MAE series, with a predicted latency\n"
                 "  profile     a cost profile (step cost per mode and worker count) from traces\n"
                 "  sweep       a grid of policy parameters over many traces: predicted speedup (and quality)\n\n"
                 "'hybridiff schedule ACTION --help' describes each one.\n";
    return 0;
  }
  throw usage_error(action.empty() ? "missing action (use: policies, simulate, profile or sweep)"
                                   : "unknown action '" + action + "' (use: policies, simulate, profile or sweep)");
}

}  // namespace hybridiff::cli
