#include "schedule_lab.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <numeric>
#include <sstream>

#include <spdlog/spdlog.h>
#include <torch/torch.h>
#include <caf/all.hpp>

#include "cli.hpp"
#include "models/errors.hpp"
#include "models/eval/fashion_mnist.hpp"
#include "models/eval/image_metrics.hpp"
#include "models/io/builtin.hpp"
#include "plot_canvas.hpp"

namespace hybridiff::cli {

using nlohmann::json;

metric_series trace_series(const std::string& path) {
  metric_series series{path, {}, ""};
  for (const auto& row : read_trace_csv(path, &series.model)) series.metrics.push_back(row.metric);
  return series;
}

std::string one_model(const std::vector<std::pair<std::string, std::string>>& traces, const std::string& what) {
  const std::pair<std::string, std::string>* first = nullptr;
  for (const auto& trace : traces) {
    if (trace.second.empty()) continue;  // an older trace: it does not say
    if (!first) first = &trace;
    if (trace.second != first->second)
      throw error("the traces of a " + what + " must come from one model: " + first->first + " is of " + first->second +
                  ", " + trace.first + " of " + trace.second);
  }
  return first ? first->second : "";
}

schedule::simulation replay(const schedule::schedule_settings& settings,
                            const std::vector<std::optional<double>>& metrics) {
  schedule::tau_controller controller(settings);
  schedule::simulation result;
  for (int i = 0; i < settings.steps; ++i) {
    result.phases.push_back(controller.phase_of(i));
    controller.end_step(i, i < static_cast<int>(metrics.size()) ? metrics[i] : std::nullopt);
    result.slopes.push_back(controller.last_slope());
  }
  result.tau1 = controller.tau1();
  result.tau2 = controller.tau2();
  return result;
}

schedule::simulation replay(const schedule::schedule_settings& settings, const std::vector<double>& metrics) {
  return replay(settings, std::vector<std::optional<double>>(metrics.begin(), metrics.end()));
}

prediction predict(const std::vector<schedule::phase>& phases, int workers, bool split_branches,
                   const schedule::cost_profile& costs) {
  try {
    return {schedule::predicted_latency_ms(schedule::modes_of(phases, workers, split_branches), workers, costs),
            schedule::sequential_latency_ms(static_cast<int>(phases.size()), costs)};
  } catch (const std::invalid_argument& missing) {
    throw error(missing.what());
  }
}

// ---- cost profiles ------------------------------------------------------------------------------------------------

json cost_profile_json(const schedule::cost_profile& profile) {
  json out = {{"model", profile.model}, {"step_ms", json::object()}};
  for (const auto& [mode, by_workers] : profile.step_ms)
    for (const auto& [workers, ms] : by_workers) out["step_ms"][mode][std::to_string(workers)] = ms;
  return out;
}

schedule::cost_profile read_cost_profile(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw error(path + ": cannot open the cost profile");
  json document;
  try {
    in >> document;
  } catch (const json::exception& bad) {
    throw error(path + ": not JSON (" + bad.what() + ")");
  }
  schedule::cost_profile profile;
  if (!document.is_object() || !document.contains("step_ms") || !document["step_ms"].is_object())
    throw error(path + ": a cost profile needs \"step_ms\": {MODE: {WORKERS: MS}} (schedule profile writes one)");
  if (document.contains("model") && document["model"].is_string()) profile.model = document["model"];
  for (const auto& [mode, by_workers] : document["step_ms"].items()) {
    if (!by_workers.is_object()) throw error(path + ": step_ms." + mode + " must be {WORKERS: MS}");
    for (const auto& [workers, ms] : by_workers.items()) {
      const auto field = path + ": step_ms." + mode + "." + workers;
      int count = 0;
      try {
        std::size_t used = 0;
        count = std::stoi(workers, &used);
        if (used != workers.size() || count < 1) throw std::invalid_argument(workers);
      } catch (const std::exception&) {
        throw error(field + ": the key must be a worker count");
      }
      if (!ms.is_number() || !(ms.get<double>() > 0) || !std::isfinite(ms.get<double>()))
        throw error(field + ": must be a positive number of milliseconds");
      profile.step_ms[mode][count] = ms.get<double>();
    }
  }
  if (profile.step_ms.empty()) throw error(path + ": the cost profile has no step costs");
  return profile;
}

void write_cost_profile(const std::string& path, const schedule::cost_profile& profile) {
  std::ofstream out(path);
  if (!out) throw error(path + ": cannot open for writing");
  out << cost_profile_json(profile).dump(2) << "\n";
  if (!out) throw error(path + ": write failed");
}

namespace {

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const auto n = values.size();
  return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

}  // namespace

schedule::cost_profile profile_of_traces(const std::vector<std::vector<step_trace>>& traces) {
  std::map<std::string, std::map<int, std::vector<double>>> samples;
  for (const auto& trace : traces)
    for (const auto& row : trace) {
      if (row.mode == "cfg-degraded" || !(row.step_ms > 0)) continue;
      // A trace without worker columns (none of an older version) ran on one worker.
      samples[row.mode][std::max(1, static_cast<int>(row.worker_ms.size()))].push_back(row.step_ms);
    }
  if (samples.empty())
    throw error("the traces have no step times (step_ms): write them again with this version's --trace");
  schedule::cost_profile profile;
  for (const auto& [mode, by_workers] : samples)
    for (const auto& [workers, ms] : by_workers) profile.step_ms[mode][workers] = median(ms);
  return profile;
}

schedule::cost_profile cost_profile_of_runs(const json& report) {
  schedule::cost_profile profile;
  profile.model = report.value("model", "");
  // Where two runs measured the same mode on the same worker count, the one with more such steps speaks for it:
  // asyncdiff's few warm-up steps (trace mode cfg, batched on one worker) must not replace a cfg run's CFG steps.
  std::map<std::string, std::map<int, std::size_t>> steps_behind;
  for (const auto& run : report.at("runs"))
    for (const auto& [mode, stats] : run.at("phases").items()) {
      const int workers = run.at("workers").get<int>();
      const auto steps = stats.at("steps").get<std::size_t>();
      auto& behind = steps_behind[mode][workers];
      if (steps <= behind) continue;
      behind = steps;
      profile.step_ms[mode][workers] = stats.at("step_ms_median").get<double>();
    }
  return profile;
}

// ---- sweeps -------------------------------------------------------------------------------------------------------

std::vector<std::pair<std::string, std::vector<std::string>>> parse_grid(const std::string& grid) {
  std::vector<std::pair<std::string, std::vector<std::string>>> axes;
  std::istringstream words(grid);
  for (std::string item; words >> item;) {
    const auto equals = item.find('=');
    if (equals == std::string::npos || equals == 0 || equals + 1 == item.size())
      throw usage_error("--grid: '" + item + "' is not KEY=V1,V2,...");
    const auto key = item.substr(0, equals);
    for (const auto& axis : axes)
      if (axis.first == key) throw usage_error("--grid: " + key + " is given twice");
    std::vector<std::string> values;
    std::stringstream list(item.substr(equals + 1));
    for (std::string value; std::getline(list, value, ',');) {
      if (value.empty()) throw usage_error("--grid: " + key + " has an empty value");
      values.push_back(value);
    }
    axes.emplace_back(key, values);
  }
  if (axes.empty()) throw usage_error("--grid is empty (e.g. \"L=4,8,12 eps=1e-4,4e-4\")");
  return axes;
}

sweep_table sweep(const sweep_request& request) {
  if (request.traces.empty()) throw error("a sweep needs at least one trace");
  sweep_table table;
  table.policy = request.policy;
  table.workers = request.workers;
  table.traces = static_cast<int>(request.traces.size());
  table.steps = static_cast<int>(request.traces.front().metrics.size());
  std::vector<std::pair<std::string, std::string>> models;
  for (const auto& trace : request.traces) models.emplace_back(trace.source, trace.model);
  one_model(models, "sweep");
  for (const auto& trace : request.traces)
    if (static_cast<int>(trace.metrics.size()) != table.steps)
      throw error("the traces of a sweep must have one step count: " + request.traces.front().source + " has " +
                  std::to_string(table.steps) + " steps, " + trace.source + " " + std::to_string(trace.metrics.size()));
  std::size_t combinations = 1;
  for (const auto& axis : request.grid) combinations *= axis.second.size();
  if (combinations > 100000)
    throw usage_error("--grid has " + std::to_string(combinations) + " settings (at most 100000)");
  for (std::size_t index = 0; index < combinations; ++index) {
    sweep_row row;
    row.spec = request.policy + ":";
    std::size_t rest = index;
    for (auto axis = request.grid.rbegin(); axis != request.grid.rend(); ++axis) {
      row.values[axis->first] = axis->second[rest % axis->second.size()];
      rest /= axis->second.size();
    }
    bool first = true;
    for (const auto& axis : request.grid) {
      row.spec += (first ? "" : ",") + axis.first + "=" + row.values[axis.first];
      first = false;
    }
    schedule::schedule_settings settings;
    settings.steps = table.steps;
    settings.tau = request.defaults;
    settings.policy_spec = row.spec;
    try {
      schedule::validate(settings);
    } catch (const schedule::policy_spec_error& bad) {
      throw usage_error(bad.what());  // the grid names nothing the policy takes: no setting can run
    } catch (const std::invalid_argument& bad) {
      row.refused = bad.what();
      table.rows.push_back(row);
      continue;
    }
    std::vector<double> speedups;
    double window_steps = 0;
    for (const auto& trace : request.traces) {
      const auto run = replay(settings, trace.metrics);
      speedups.push_back(predict(run.phases, request.workers, request.split_branches, request.costs).speedup());
      window_steps += std::count_if(run.phases.begin(), run.phases.end(),
                                    [](schedule::phase p) { return p != schedule::phase::cfg; });
    }
    row.mean_speedup = std::accumulate(speedups.begin(), speedups.end(), 0.0) / speedups.size();
    row.min_speedup = *std::min_element(speedups.begin(), speedups.end());
    row.max_speedup = *std::max_element(speedups.begin(), speedups.end());
    row.mean_window_steps = window_steps / request.traces.size();
    table.rows.push_back(row);
  }
  return table;
}

void measure_quality(sweep_table& table, const sweep_request& request, int images, std::uint64_t seed) {
  torch::NoGradGuard no_grad;
  std::shared_ptr<models::diffusion_pipeline> pipeline =
      models::load_pipeline(models::builtin_model_dir("fashion-diffusion"), {});
  // The windows were found on the traces' metric series: measuring them on another model would mean nothing.
  for (const auto& trace : request.traces)
    if (!trace.model.empty() && trace.model != pipeline->class_name())
      throw error("--measure generates with the built-in model (" + pipeline->class_name() + "), but " + trace.source +
                  " is a trace of " + trace.model);
  auto classifier = models::load_fashion_classifier(models::builtin_model_dir("fashion-classifier"));
  classifier->eval();
  const auto& classes = models::fashion_mnist_classes();
  std::vector<models::generation_request> requests;
  for (int i = 0; i < images; ++i) {
    models::generation_request one;
    one.prompt = classes[static_cast<std::size_t>(i) % classes.size()];
    one.seed = seed + static_cast<std::uint64_t>(i);
    one.steps = table.steps;
    requests.push_back(one);
  }
  auto label_of = [&](const at::Tensor& image) {
    return classifier->forward(models::to_classifier_pixels(image, "a generated image")).argmax(1).item<std::int64_t>();
  };
  auto accuracy_of = [&](const std::vector<at::Tensor>& decoded) {
    int right = 0;
    for (std::size_t i = 0; i < decoded.size(); ++i)
      right += label_of(decoded[i]) == static_cast<std::int64_t>(i % classes.size());
    return static_cast<double>(right) / static_cast<double>(decoded.size());
  };
  caf::actor_system_config config;
  caf::actor_system system{config};
  std::vector<at::Tensor> sequential;
  {
    parallel_session session(system, std::vector{pipeline}, parallel_options{});
    for (const auto& one : requests) sequential.push_back(pipeline->decode(session.generate(one).latents));
  }
  table.measured_images = images;
  table.sequential_accuracy = accuracy_of(sequential);
  parallel_options options;
  options.mode = parallel_mode::hybrid;
  options.workers = 2;
  options.tau = request.defaults;  // as the replays: the same spec decides the same way
  for (auto& row : table.rows) {
    if (!row.refused.empty()) continue;
    options.policy = row.spec;
    parallel_session session(system, std::vector{pipeline, pipeline}, options);
    std::vector<at::Tensor> decoded;
    double psnr_sum = 0;
    for (std::size_t i = 0; i < requests.size(); ++i) {
      decoded.push_back(pipeline->decode(session.generate(requests[i]).latents));
      psnr_sum += models::psnr(decoded.back(), sequential[i]);
    }
    row.psnr_db = psnr_sum / static_cast<double>(images);
    row.accuracy = accuracy_of(decoded);
    spdlog::info("{}: PSNR {:.2f} dB, accuracy {:.3f}, predicted speedup {:.3f}", row.spec, *row.psnr_db, *row.accuracy,
                 row.mean_speedup);
  }
}

std::string sweep_csv(const sweep_table& table) {
  std::ostringstream out;
  out << "spec,mean_speedup,min_speedup,max_speedup,mean_window_steps";
  if (table.measured_images) out << ",psnr_db,accuracy";
  out << ",refused\n" << std::setprecision(6);
  for (const auto& row : table.rows) {
    out << '"' << row.spec << '"';
    if (row.refused.empty()) {
      out << "," << row.mean_speedup << "," << row.min_speedup << "," << row.max_speedup << ","
          << row.mean_window_steps;
    } else {
      out << ",,,,";
    }
    if (table.measured_images) {
      out << ",";
      if (row.psnr_db) out << *row.psnr_db;
      out << ",";
      if (row.accuracy) out << *row.accuracy;
    }
    std::string reason = row.refused;
    std::replace(reason.begin(), reason.end(), '"', '\'');
    out << ",\"" << reason << "\"\n";
  }
  return out.str();
}

json sweep_json(const sweep_table& table) {
  json out = {{"policy", table.policy},
              {"workers", table.workers},
              {"traces", table.traces},
              {"steps", table.steps},
              {"settings", json::array()}};
  if (table.measured_images) {
    out["measured_images"] = *table.measured_images;
    out["sequential_accuracy"] = *table.sequential_accuracy;
  }
  for (const auto& row : table.rows) {
    json entry = {{"spec", row.spec}, {"parameters", row.values}};
    if (!row.refused.empty()) {
      entry["refused"] = row.refused;
    } else {
      entry["mean_speedup"] = row.mean_speedup;
      entry["min_speedup"] = row.min_speedup;
      entry["max_speedup"] = row.max_speedup;
      entry["mean_window_steps"] = row.mean_window_steps;
    }
    if (row.psnr_db) entry["psnr_db"] = *row.psnr_db;
    if (row.accuracy) entry["accuracy"] = *row.accuracy;
    out["settings"].push_back(entry);
  }
  return out;
}

void write_sweep_table(const std::string& path, const sweep_table& table) {
  const auto extension = std::filesystem::path(path).extension().string();
  if (extension != ".csv" && extension != ".json") throw usage_error("--out " + path + ": use a .csv or .json file");
  std::ofstream out(path);
  if (!out) throw error(path + ": cannot open for writing");
  out << (extension == ".csv" ? sweep_csv(table) : sweep_json(table).dump(2) + "\n");
  if (!out) throw error(path + ": write failed");
}

// ---- the plot -----------------------------------------------------------------------------------------------------

namespace {

using namespace plot;

constexpr colour ink{0.15f, 0.15f, 0.15f}, frame_colour{0.35f, 0.35f, 0.35f}, grid_colour{0.88f, 0.88f, 0.88f},
    bar_colour{0.12f, 0.47f, 0.71f}, frontier_colour{0.84f, 0.15f, 0.16f}, point_colour{0.12f, 0.47f, 0.71f};

// Speedup per setting as horizontal bars from the sequential speed (1×), best first (at most 40), with each
// setting's min–max over the traces as a line.
void draw_bars(canvas& image, std::vector<const sweep_row*> rows, int left, int top, int right, int bottom) {
  std::sort(rows.begin(), rows.end(), [](auto* a, auto* b) { return a->mean_speedup > b->mean_speedup; });
  if (rows.size() > 40) rows.resize(40);
  double lo = 1, hi = 1;
  for (auto* row : rows) {
    lo = std::min(lo, row->min_speedup);
    hi = std::max(hi, row->max_speedup);
  }
  const double pad = std::max(hi - lo, 0.01) * 0.08;
  lo -= pad;
  hi += pad;
  const int label_width = 360;
  const int bars_left = left + label_width;
  const double row_height = static_cast<double>(bottom - top) / std::max<std::size_t>(rows.size(), 1);
  auto x_of = [&](double speedup) {
    return bars_left + static_cast<int>((speedup - lo) / (hi - lo) * (right - bars_left));
  };
  for (int i = 0; i <= 4; ++i) {
    const double tick = lo + (hi - lo) * i / 4;
    image.vline(x_of(tick), top, bottom, grid_colour);
    draw_text(image, x_of(tick), bottom + 6, format_value(tick), ink, align::centre);
  }
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const int y0 = top + static_cast<int>(i * row_height) + 2, y1 = top + static_cast<int>((i + 1) * row_height) - 2;
    image.fill(std::min(x_of(1), x_of(rows[i]->mean_speedup)), y0, std::max(x_of(1), x_of(rows[i]->mean_speedup)) + 1,
               y1, bar_colour);
    image.hline(x_of(rows[i]->min_speedup), x_of(rows[i]->max_speedup) + 1, (y0 + y1) / 2, ink);  // min..max
    std::string label = rows[i]->spec;
    const auto fits = static_cast<std::size_t>((label_width - 12) / advance);
    if (label.size() > fits) label = label.substr(0, fits - 2) + "..";
    draw_text(image, bars_left - 8, (y0 + y1) / 2 - text_height / 2, label, ink, align::right);
  }
  image.vline(x_of(1), top, bottom, frame_colour);  // the sequential speed
  draw_text(image, (bars_left + right) / 2, bottom + 26, "predicted speedup over sequential (mean; line: min-max)", ink,
            align::centre);
}

// Speedup (x) against PSNR (y); the Pareto frontier (no other setting both faster and closer) joined in red.
void draw_frontier(canvas& image, const std::vector<const sweep_row*>& rows, int left, int top, int right, int bottom) {
  double x_lo = 1, x_hi = 1, y_lo = 1e9, y_hi = -1e9;
  for (auto* row : rows) {
    x_lo = std::min(x_lo, row->mean_speedup);
    x_hi = std::max(x_hi, row->mean_speedup);
    y_lo = std::min(y_lo, *row->psnr_db);
    y_hi = std::max(y_hi, *row->psnr_db);
  }
  if (!(x_hi > x_lo)) x_hi = x_lo + 1;
  if (!(y_hi > y_lo)) y_hi = y_lo + 1;
  const double x_pad = (x_hi - x_lo) * 0.08, y_pad = (y_hi - y_lo) * 0.08;
  x_lo -= x_pad, x_hi += x_pad, y_lo -= y_pad, y_hi += y_pad;
  auto x_of = [&](double v) { return left + (v - x_lo) / (x_hi - x_lo) * (right - left); };
  auto y_of = [&](double v) { return bottom - (v - y_lo) / (y_hi - y_lo) * (bottom - top); };
  for (int i = 0; i <= 4; ++i) {
    const double xv = x_lo + (x_hi - x_lo) * i / 4, yv = y_lo + (y_hi - y_lo) * i / 4;
    image.vline(static_cast<int>(x_of(xv)), top, bottom, grid_colour);
    image.hline(left, right, static_cast<int>(y_of(yv)), grid_colour);
    draw_text(image, static_cast<int>(x_of(xv)), bottom + 6, format_value(xv), ink, align::centre);
    draw_text(image, left - 8, static_cast<int>(y_of(yv)) - text_height / 2, format_value(yv), ink, align::right);
  }
  std::vector<const sweep_row*> frontier;
  for (auto* row : rows) {
    bool dominated = false;
    for (auto* other : rows)
      dominated |= other != row && other->mean_speedup >= row->mean_speedup && *other->psnr_db >= *row->psnr_db &&
                   (other->mean_speedup > row->mean_speedup || *other->psnr_db > *row->psnr_db);
    if (!dominated) frontier.push_back(row);
  }
  std::sort(frontier.begin(), frontier.end(), [](auto* a, auto* b) { return a->mean_speedup < b->mean_speedup; });
  for (std::size_t i = 1; i < frontier.size(); ++i)
    image.line(x_of(frontier[i - 1]->mean_speedup), y_of(*frontier[i - 1]->psnr_db), x_of(frontier[i]->mean_speedup),
               y_of(*frontier[i]->psnr_db), frontier_colour, 2);
  for (auto* row : rows) image.dot(x_of(row->mean_speedup), y_of(*row->psnr_db), 4, point_colour);
  for (auto* row : frontier) {
    image.dot(x_of(row->mean_speedup), y_of(*row->psnr_db), 5, frontier_colour);
    std::string label = row->spec.substr(row->spec.find(':') + 1);
    draw_text(image, static_cast<int>(x_of(row->mean_speedup)) + 8, static_cast<int>(y_of(*row->psnr_db)) - 18,
              label.size() > 28 ? label.substr(0, 26) + ".." : label, ink);
  }
  draw_text(image, (left + right) / 2, bottom + 26, "predicted speedup", ink, align::centre);
  draw_text(image, left, top - 22, "PSNR vs sequential (dB); red: the Pareto frontier", ink);
}

}  // namespace

void write_sweep_plot(const std::string& png, const sweep_table& table) {
  std::vector<const sweep_row*> rows;
  for (const auto& row : table.rows)
    if (row.refused.empty()) rows.push_back(&row);
  if (rows.empty()) throw error("the sweep has no setting the policy accepted: nothing to plot");
  const bool quality = table.measured_images.has_value();
  const int width = 1000,
            height = quality ? 640 : std::max(300, 90 + 26 * static_cast<int>(std::min<std::size_t>(rows.size(), 40)));
  canvas image(width, height);
  const std::string title = "schedule sweep: " + table.policy + " on " + std::to_string(table.workers) + " workers, " +
                            std::to_string(table.traces) + " trace(s) of " + std::to_string(table.steps) + " steps" +
                            (quality ? ", " + std::to_string(*table.measured_images) + " image(s) per setting" : "");
  draw_text(image, 12, 8, printable_ascii(title), ink);
  if (quality) {
    draw_frontier(image, rows, 110, 70, width - 40, height - 60);
  } else {
    draw_bars(image, rows, 12, 40, width - 30, height - 50);
  }
  save(image, png);
}

}  // namespace hybridiff::cli
