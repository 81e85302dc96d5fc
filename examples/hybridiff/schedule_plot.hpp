#pragma once
// The schedule of one image as a picture: rel-MAE and the detector's slope per step, the pipeline window and the
// mode of every step. Rasterised here (a small built-in bitmap font, anti-aliased lines), written with save_png.

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "actors/hybridiff.hpp"
#include "plot_canvas.hpp"

namespace hybridiff::cli {

/// Where things are in the picture, in pixels (x to the right, y down; ranges half-open: [left, right)).
struct schedule_plot_layout {
  static constexpr int width = 800;
  static constexpr int height = 410;
  /// The main panel: rel-MAE (left scale), slope (right scale), the window, the grid.
  static constexpr int panel_left = 96;
  static constexpr int panel_right = 704;
  static constexpr int panel_top = 48;
  static constexpr int panel_bottom = 296;
  /// The mode strip under the panel: one cell per step, spanning the panel's columns.
  static constexpr int strip_top = 324;
  static constexpr int strip_bottom = 344;

  /// First column of step `step`'s cell in a trace of `steps` steps (cell_left(steps, steps) is panel_right).
  static constexpr int cell_left(int step, int steps) {
    return panel_left + static_cast<int>(static_cast<long long>(step) * (panel_right - panel_left) / steps);
  }
  /// The column of step `step` (the middle of its cell): its points, tick and grid line; the line at tau1 or tau2
  /// covers this column and the next.
  static constexpr int step_x(int step, int steps) {
    return panel_left + static_cast<int>((2LL * step + 1) * (panel_right - panel_left) / (2LL * steps));
  }
};

using plot::rgb8;

/// The colour of a step's mode in the strip: cfg green, cfg-pipeline teal, fill yellow, pipeline purple,
/// cfg-degraded red, anything else (none, unknown) grey.
rgb8 mode_colour(const std::string& mode);
/// The colour of the lines at tau1 and tau2 (2 pixels wide, from step_x(tau)).
inline constexpr rgb8 window_line_colour{214, 39, 40};

/// Draws the schedule of one image as a PNG: rel-MAE per step, the detector's slope, the window [tau1, tau2] marked,
/// the mode of every step. x is the step (row.step; the trace spans steps 0 .. max step). tau1/tau2 are those of the
/// last row that has them (tau2 may be absent: the window then runs to the end). Rows without a metric or slope, or
/// with a NaN/infinite one, are skipped. `title_note` is appended to the title line (cut to fit; characters outside
/// the built-in font show as '?'). Throws hybridiff::error for an empty trace; the write is atomic (save_png).
void write_schedule_plot(const std::filesystem::path& png, const std::vector<step_trace>& trace,
                         const std::string& title_note = "");

}  // namespace hybridiff::cli
