#include "schedule_plot.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <iterator>
#include <optional>

#include <torch/torch.h>

#include "models/errors.hpp"
#include "models/io/image_io.hpp"

namespace hybridiff::cli {
namespace {

using layout = schedule_plot_layout;
using namespace plot;

// ---- colours ------------------------------------------------------------------------------------------------------

constexpr rgb8 cfg_rgb{44, 160, 44}, cfg_pipeline_rgb{23, 166, 166}, fill_rgb{240, 200, 30},
    pipeline_rgb{148, 103, 189}, degraded_rgb{214, 39, 40}, other_rgb{160, 160, 160};
constexpr colour white{1, 1, 1}, black{0, 0, 0}, frame{0.35f, 0.35f, 0.35f}, grid{0.88f, 0.88f, 0.88f},
    text{0.15f, 0.15f, 0.15f}, zero_line{0.55f, 0.55f, 0.55f}, metric_colour{0.12f, 0.47f, 0.71f},
    slope_colour{1.0f, 0.50f, 0.05f}, window_fill{1.0f, 0.88f, 0.88f};

// ---- scales -------------------------------------------------------------------------------------------------------

/// Maps values in [lo, hi] onto rows [bottom, top] (y grows down). A zero or non-finite range maps to the middle.
struct value_scale {
  double lo = 0, hi = 0;
  double top = 0, bottom = 0;
  bool flat() const { return !(hi - lo > 0) || !std::isfinite(hi - lo); }
  double y(double v) const { return flat() ? (top + bottom) / 2 : bottom - (v - lo) / (hi - lo) * (bottom - top); }
};

bool usable(const std::optional<double>& v) { return v && std::isfinite(*v); }

/// Values worth a tick label: the finite ones; inset keeps points and their dots off the panel's edges.
value_scale scale_of(const std::vector<step_trace>& trace, std::optional<double> step_trace::*field, bool with_zero) {
  value_scale s;
  s.top = layout::panel_top + 12;
  s.bottom = layout::panel_bottom - 12;
  bool any = false;
  for (const auto& row : trace) {
    const auto& v = row.*field;
    if (!usable(v)) continue;
    s.lo = any ? std::min(s.lo, *v) : *v;
    s.hi = any ? std::max(s.hi, *v) : *v;
    any = true;
  }
  if (any && with_zero) {
    s.lo = std::min(s.lo, 0.0);
    s.hi = std::max(s.hi, 0.0);
  }
  return s;
}

// ---- the picture --------------------------------------------------------------------------------------------------

/// Plots `field` of every row as a polyline with dots: neighbouring steps joined by a solid stroke, points further
/// apart (steps without a value between them) by a dashed one.
void plot_series(canvas& image, const std::vector<step_trace>& trace, std::optional<double> step_trace::*field,
                 const value_scale& scale, int steps, colour c, double dot_radius) {
  std::vector<std::pair<int, double>> points;  // (step, value), in trace order
  for (const auto& row : trace) {
    const auto& v = row.*field;
    if (usable(v) && row.step >= 0 && row.step < steps) points.emplace_back(row.step, *v);
  }
  std::stable_sort(points.begin(), points.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (std::size_t i = 1; i < points.size(); ++i) {
    const double x0 = layout::step_x(points[i - 1].first, steps), y0 = scale.y(points[i - 1].second);
    const double x1 = layout::step_x(points[i].first, steps), y1 = scale.y(points[i].second);
    if (points[i].first - points[i - 1].first <= 1)
      image.line(x0, y0, x1, y1, c, 2);
    else
      image.dashed_line(x0, y0, x1, y1, c, 1.5, 5, 4);
  }
  if (dot_radius > 0)
    for (const auto& [step, value] : points) image.dot(layout::step_x(step, steps), scale.y(value), dot_radius, c);
}

/// Labels a scale's extremes beside the panel: right-aligned on the left (`left`), else left-aligned on the right.
void label_scale(canvas& image, const value_scale& scale, double data_lo, double data_hi, bool left, colour c) {
  const int x = left ? layout::panel_left - 8 : layout::panel_right + 8;
  const int tick_x0 = left ? layout::panel_left - 5 : layout::panel_right, tick_x1 = tick_x0 + 5;
  auto label = [&](double v, double y) {
    const int row = static_cast<int>(std::lround(y));
    image.hline(tick_x0, tick_x1, row, c);
    const int top =
        std::clamp(row - text_height / 2, layout::panel_top - text_height / 2, layout::panel_bottom - text_height / 2);
    draw_text(image, x, top, format_value(v), c, left ? align::right : align::left);
  };
  if (scale.flat()) {
    label(data_lo, scale.y(data_lo));
    return;
  }
  label(data_hi, scale.y(data_hi));
  label(data_lo, scale.y(data_lo));
}

std::optional<double> extreme(const std::vector<step_trace>& trace, std::optional<double> step_trace::*field,
                              bool max) {
  std::optional<double> out;
  for (const auto& row : trace) {
    const auto& v = row.*field;
    if (usable(v)) out = out ? (max ? std::max(*out, *v) : std::min(*out, *v)) : *v;
  }
  return out;
}

/// Cuts `s` to `max_chars` characters, ending in ".." when cut.
std::string fit(std::string s, std::size_t max_chars) {
  if (s.size() > max_chars) s = s.substr(0, max_chars > 2 ? max_chars - 2 : 0) + "..";
  return s;
}

}  // namespace

rgb8 mode_colour(const std::string& mode) {
  if (mode == "cfg") return cfg_rgb;
  if (mode == "cfg-pipeline") return cfg_pipeline_rgb;
  if (mode == "fill") return fill_rgb;
  if (mode == "pipeline") return pipeline_rgb;
  if (mode == "cfg-degraded") return degraded_rgb;
  return other_rgb;
}

void write_schedule_plot(const std::filesystem::path& png, const std::vector<step_trace>& trace,
                         const std::string& title_note) {
  if (trace.empty()) throw error("schedule plot: the trace is empty");
  int steps = 0;
  for (const auto& row : trace) steps = std::max(steps, row.step + 1);
  steps = std::max(steps, 1);
  std::optional<int> tau1, tau2;
  for (const auto& row : trace) {
    if (row.tau1) tau1 = row.tau1;
    if (row.tau2) tau2 = row.tau2;
  }

  // Rows with a negative step have no place on the x axis: left out (their tau1/tau2 still count above).
  std::vector<step_trace> rows;
  std::copy_if(trace.begin(), trace.end(), std::back_inserter(rows),
               [](const step_trace& row) { return row.step >= 0; });

  canvas image(layout::width, layout::height);
  const int left = layout::panel_left, right = layout::panel_right, top = layout::panel_top,
            bottom = layout::panel_bottom;

  // Title: the window, the step count and the caller's note.
  std::string title = "schedule: " + std::to_string(steps) + (steps == 1 ? " step" : " steps") +
                      "  tau1=" + (tau1 ? std::to_string(*tau1) : "none") +
                      " tau2=" + (tau2 ? std::to_string(*tau2) : "none");
  if (!title_note.empty()) title += "  " + printable_ascii(title_note);
  draw_text(image, 12, 8, fit(title, static_cast<std::size_t>((layout::width - 24 + text_scale) / advance)), black);

  // The window [tau1, tau2] (to the end when tau2 is absent), shaded under everything else.
  const auto window_x = [&](int step) { return layout::step_x(std::clamp(step, 0, steps - 1), steps); };
  if (tau1 && *tau1 < steps && (!tau2 || *tau2 >= 0)) {
    const int x0 = window_x(*tau1), x1 = tau2 ? window_x(*tau2) : right;
    image.fill(x0, top, x1 + 1, bottom, window_fill);
  }

  // Grid and x ticks: every 10 steps, coarser (20, 50, 100, ...) when labels would crowd.
  const double step_width = static_cast<double>(right - left) / steps;
  int tick = 10;
  for (int m : {20, 50, 100, 200, 500, 1000, 2000, 5000, 10000})
    if (tick * step_width < 5 * advance) tick = m;
  for (int s = 0; s < steps; s += tick) {
    const int x = layout::step_x(s, steps);
    image.vline(x, top, bottom, grid);
    image.vline(x, bottom, bottom + 4, frame);
    draw_text(image, x, bottom + 7, std::to_string(s), text, align::centre);
  }
  draw_text(image, right + 8, bottom + 7, "step", text);

  // Scales: rel-MAE on the left, the slope (with its zero line) on the right.
  const value_scale metric_scale = scale_of(rows, &step_trace::metric, false);
  const value_scale slope_scale = scale_of(rows, &step_trace::slope, true);
  const auto slope_lo = extreme(rows, &step_trace::slope, false), slope_hi = extreme(rows, &step_trace::slope, true);
  if (slope_lo) {
    const double y0 = slope_scale.y(0);
    image.hline(left, right, static_cast<int>(std::lround(y0)), zero_line, 6, 4);
  }

  // The window's edges.
  for (const auto& tau : {tau1, tau2})
    if (tau && *tau >= 0 && *tau < steps)
      image.fill(window_x(*tau), top, window_x(*tau) + 2, bottom, from8(window_line_colour));

  // The data: slope under rel-MAE; dots only where steps are far enough apart to show them one by one.
  const bool dots = step_width >= 8;
  plot_series(image, rows, &step_trace::slope, slope_scale, steps, slope_colour, dots ? 2 : 0);
  plot_series(image, rows, &step_trace::metric, metric_scale, steps, metric_colour, dots ? 3 : 0);

  // Frame and axis labels.
  image.hline(left, right, top, frame);
  image.hline(left, right, bottom - 1, frame);
  image.vline(left, top, bottom, frame);
  image.vline(right - 1, top, bottom, frame);
  draw_text(image, left, top - text_height - 6, "rel-MAE", metric_colour);
  draw_text(image, right, top - text_height - 6, "slope", slope_colour, align::right);
  if (const auto lo = extreme(rows, &step_trace::metric, false)) {
    label_scale(image, metric_scale, *lo, *extreme(rows, &step_trace::metric, true), true, metric_colour);
  }
  if (slope_lo) {
    label_scale(image, slope_scale, *slope_lo, *slope_hi, false, slope_colour);
    const double y0 = slope_scale.y(0);
    const bool crowded = std::abs(y0 - slope_scale.y(*slope_lo)) < text_height + 2 ||
                         std::abs(y0 - slope_scale.y(*slope_hi)) < text_height + 2;
    if (!crowded) draw_text(image, right + 8, static_cast<int>(std::lround(y0)) - text_height / 2, "0", zero_line);
  }
  if (!extreme(rows, &step_trace::metric, false) && !slope_lo)
    draw_text(image, (left + right) / 2, (top + bottom) / 2 - text_height / 2, "no metric recorded", text,
              align::centre);

  // The mode strip: one cell per step (a white seam between cells when they are wide enough to show one).
  draw_text(image, left - 8, (layout::strip_top + layout::strip_bottom - text_height) / 2, "mode", text, align::right);
  image.fill(left, layout::strip_top, right, layout::strip_bottom, from8(other_rgb));
  for (const auto& row : rows) {
    if (row.step < 0 || row.step >= steps) continue;
    const int x0 = layout::cell_left(row.step, steps), x1 = layout::cell_left(row.step + 1, steps);
    const bool seam = x1 - x0 >= 5;
    image.fill(x0, layout::strip_top, x1, layout::strip_bottom, white);
    image.fill(x0 + (seam ? 1 : 0), layout::strip_top, x1, layout::strip_bottom, from8(mode_colour(row.mode)));
  }

  // Legend: the modes, then the lines.
  int x = 24;
  const int row1 = layout::strip_bottom + 12, row2 = row1 + text_height + 10;
  static const std::pair<const char*, rgb8> modes[] = {
      {"cfg", cfg_rgb},           {"cfg-pipeline", cfg_pipeline_rgb}, {"fill", fill_rgb},
      {"pipeline", pipeline_rgb}, {"cfg-degraded", degraded_rgb},     {"other", other_rgb}};
  for (const auto& [name, c] : modes) {
    image.fill(x, row1, x + 14, row1 + text_height, from8(c));
    draw_text(image, x + 20, row1, name, text);
    x += 20 + text_width(name) + 20;
  }
  x = 24;
  const double mid = row2 + text_height / 2.0;
  image.line(x, mid, x + 24, mid, metric_colour, 2);
  image.dot(x + 12, mid, 3, metric_colour);
  draw_text(image, x + 32, row2, "rel-MAE", text);
  x += 32 + text_width("rel-MAE") + 20;
  image.line(x, mid, x + 24, mid, slope_colour, 2);
  image.dot(x + 12, mid, 2, slope_colour);
  draw_text(image, x + 32, row2, "slope", text);
  x += 32 + text_width("slope") + 20;
  image.hline(x, x + 24, static_cast<int>(mid), zero_line, 6, 4);
  draw_text(image, x + 32, row2, "slope=0", text);
  x += 32 + text_width("slope=0") + 20;
  image.fill(x, row2, x + 24, row2 + text_height, window_fill);
  image.fill(x, row2, x + 2, row2 + text_height, from8(window_line_colour));
  image.fill(x + 22, row2, x + 24, row2 + text_height, from8(window_line_colour));
  draw_text(image, x + 32, row2, "window [tau1, tau2]", text);

  plot::save(image, png);
}

}  // namespace hybridiff::cli
