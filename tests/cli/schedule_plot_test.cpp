// The schedule plot (examples/hybridiff/schedule_plot.cpp, in the CLI library): the PNG is read back and its
// pixels checked where the layout constants say the mode strip, the window and the curves are.
// HYBRIDIFF_PLOT_DIR=DIR keeps a copy of every plot drawn here, to look at.
#include <cmath>
#include <cstdlib>
#include <limits>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "examples/hybridiff/schedule_plot.hpp"
#include "models/errors.hpp"
#include "models/io/image_io.hpp"
#include "test_support.hpp"

namespace hybridiff {
namespace {

using cli::rgb8;
using layout = cli::schedule_plot_layout;

/// The plot read back (models::load_png) as 8-bit RGB.
struct plot_pixels {
  at::Tensor hwc;  ///< uint8 [H, W, 3]
  rgb8 operator()(int x, int y) const {
    const auto* p = hwc.data_ptr<std::uint8_t>() + 3 * (static_cast<std::int64_t>(y) * layout::width + x);
    return {p[0], p[1], p[2]};
  }
};

plot_pixels read_plot(const std::filesystem::path& png) {
  auto image = models::load_png(png);
  EXPECT_EQ(image.sizes(), (std::vector<std::int64_t>{1, 3, layout::height, layout::width}));
  if (const char* keep = std::getenv("HYBRIDIFF_PLOT_DIR"))
    std::filesystem::copy_file(png, std::filesystem::path(keep) / png.filename(),
                               std::filesystem::copy_options::overwrite_existing);
  return {(image[0].permute({1, 2, 0}) * 255).round().to(torch::kUInt8).contiguous()};
}

rgb8 pixel(const plot_pixels& rgb, int x, int y) { return rgb(x, y); }

std::string show(rgb8 c) {
  return "(" + std::to_string(c.r) + ", " + std::to_string(c.g) + ", " + std::to_string(c.b) + ")";
}

/// The middle row of the mode strip, under step `step`'s cell.
rgb8 strip_colour(const plot_pixels& rgb, int step, int steps) {
  const int x = (layout::cell_left(step, steps) + layout::cell_left(step + 1, steps)) / 2;
  return pixel(rgb, x, (layout::strip_top + layout::strip_bottom) / 2);
}

/// 50 steps as the hybrid schedule runs them: CFG with a falling rel-MAE and a slope rising towards 0, tau1 = 20
/// and tau2 = 24 decided at step 19, a fill step and pipeline steps in the window 20..24, CFG again after it.
std::vector<step_trace> hybrid_trace() {
  std::vector<step_trace> trace;
  for (int i = 0; i < 50; ++i) {
    step_trace row;
    row.step = i;
    row.mode = i == 20 ? "fill" : (i > 20 && i <= 24) ? "pipeline" : "cfg";
    if (row.mode == "cfg") row.metric = 0.02 + 0.4 * std::exp(-i / 8.0);
    if (row.mode == "cfg" && i >= 4) row.slope = -0.05 * std::exp(-i / 6.0) + (i > 30 ? 0.001 : 0.0);
    row.worker_ms = {10.0, 10.0};
    if (i >= 19) {
      row.tau1 = 20;
      row.tau2 = 24;
    }
    trace.push_back(row);
  }
  return trace;
}

TEST(SchedulePlot, DrawsModesWindowAndCurves) {
  test::temp_dir dir;
  const auto png = dir / "hybrid_schedule.png";
  cli::write_schedule_plot(png, hybrid_trace(), "seed 42");
  ASSERT_TRUE(std::filesystem::exists(png));
  EXPECT_FALSE(std::filesystem::exists(dir / "hybrid_schedule.png.partial"));
  const auto rgb = read_plot(png);
  const int steps = 50;

  EXPECT_EQ(strip_colour(rgb, 22, steps), cli::mode_colour("pipeline")) << show(strip_colour(rgb, 22, steps));
  EXPECT_EQ(strip_colour(rgb, 20, steps), cli::mode_colour("fill")) << show(strip_colour(rgb, 20, steps));
  EXPECT_EQ(strip_colour(rgb, 5, steps), cli::mode_colour("cfg")) << show(strip_colour(rgb, 5, steps));
  EXPECT_EQ(strip_colour(rgb, 49, steps), cli::mode_colour("cfg")) << show(strip_colour(rgb, 49, steps));
  // The colours differ from one another (the strip tells the modes apart).
  EXPECT_NE(cli::mode_colour("pipeline"), cli::mode_colour("cfg"));
  EXPECT_EQ(cli::mode_colour("none"), cli::mode_colour("something else"));

  // The lines at tau1 and tau2 (2 pixels wide from step_x): red down most of the panel (curves may cross them).
  for (int tau : {20, 24}) {
    const int x = layout::step_x(tau, steps);
    int red = 0;
    for (int y = layout::panel_top; y < layout::panel_bottom; ++y) red += pixel(rgb, x, y) == cli::window_line_colour;
    EXPECT_GT(red, (layout::panel_bottom - layout::panel_top) / 2) << "tau " << tau << " at column " << x;
  }
  // Shaded light red between them, white outside (a row near the top, where no curve passes).
  const rgb8 inside = pixel(rgb, layout::step_x(22, steps), layout::panel_top + 3);
  EXPECT_TRUE(inside.r == 255 && inside.g < 245 && inside.b < 245) << show(inside);
  EXPECT_EQ(pixel(rgb, layout::step_x(35, steps), layout::panel_top + 3), (rgb8{255, 255, 255}));

  // The rel-MAE curve is blue in the panel: its first point (the maximum) at the top of the value range.
  int blue = 0;
  for (int y = layout::panel_top; y < layout::panel_bottom; ++y)
    for (int x = layout::panel_left; x < layout::panel_right; ++x) {
      const rgb8 p = pixel(rgb, x, y);
      blue += p.b > 150 && p.r < 100;
    }
  EXPECT_GT(blue, 200);
  const rgb8 first = pixel(rgb, layout::step_x(0, steps), layout::panel_top + 12);
  EXPECT_TRUE(first.b > 150 && first.r < 100) << show(first);
}

TEST(SchedulePlot, EmptyTraceIsAnError) {
  test::temp_dir dir;
  try {
    cli::write_schedule_plot(dir / "empty.png", {});
    FAIL() << "no error";
  } catch (const error& e) {
    EXPECT_STREQ(e.what(), "schedule plot: the trace is empty");
  }
  EXPECT_FALSE(std::filesystem::exists(dir / "empty.png"));
}

TEST(SchedulePlot, ConstantMetricAndMissingValues) {
  test::temp_dir dir;
  const int steps = 30;
  std::vector<step_trace> trace;
  for (int i = 0; i < steps; ++i) {
    step_trace row;
    row.step = i;
    row.mode = i % 7 == 3 ? "none" : "cfg";
    if (i != 10) row.metric = i == 12 ? std::numeric_limits<double>::quiet_NaN() : 0.25;  // flat: no range
    if (i >= 5) row.slope = i == 6 ? std::numeric_limits<double>::infinity() : 0.0;
    trace.push_back(row);
  }
  trace[20].tau1 = 21;  // no tau2: the window runs to the end
  const auto png = dir / "constant_metric.png";
  cli::write_schedule_plot(png, trace, "flat metric, unicode \xc3\xa9 note");
  const auto rgb = read_plot(png);

  // The flat curve runs through the middle of the value range.
  const int middle = (layout::panel_top + 12 + layout::panel_bottom - 12) / 2;
  const rgb8 p = pixel(rgb, layout::step_x(2, steps), middle);
  EXPECT_TRUE(p.b > 150 && p.r < 100) << show(p);
  EXPECT_EQ(strip_colour(rgb, 3, steps), cli::mode_colour("none"));
  EXPECT_EQ(strip_colour(rgb, 4, steps), cli::mode_colour("cfg"));
  int red = 0;
  for (int y = layout::panel_top; y < layout::panel_bottom; ++y)
    red += pixel(rgb, layout::step_x(21, steps), y) == cli::window_line_colour;
  EXPECT_GT(red, 0);
}

TEST(SchedulePlot, TraceWithoutAnyMetric) {
  test::temp_dir dir;
  std::vector<step_trace> trace(1);
  trace[0].mode = "cfg";
  const auto png = dir / "one_step.png";
  cli::write_schedule_plot(png, trace);
  const auto rgb = read_plot(png);
  EXPECT_EQ(strip_colour(rgb, 0, 1), cli::mode_colour("cfg"));
  // Written again over an existing file.
  trace[0].mode = "pipeline";
  cli::write_schedule_plot(png, trace);
  EXPECT_EQ(strip_colour(read_plot(png), 0, 1), cli::mode_colour("pipeline"));
}

// Many steps: ticks thin out, cells shrink to a pixel or two, odd rows (a negative step, tau2 before tau1) are
// drawn around, not trusted.
TEST(SchedulePlot, ManyStepsAndOddRows) {
  test::temp_dir dir;
  const int steps = 1000;
  std::vector<step_trace> trace;
  for (int i = 0; i < steps; ++i) {
    step_trace row;
    row.step = i;
    row.mode = i < 300 ? "cfg" : i < 700 ? "cfg-pipeline" : "cfg-degraded";
    row.metric = 1e-5 * (1 + std::sin(i / 50.0));
    row.slope = -1e-7 * std::cos(i / 80.0);
    trace.push_back(row);
  }
  step_trace odd;
  odd.step = -3;
  odd.mode = "pipeline";
  odd.metric = 5.0;
  odd.tau1 = 600;
  odd.tau2 = 550;
  trace.push_back(odd);
  const auto png = dir / "many_steps.png";
  cli::write_schedule_plot(png, trace, std::string(200, 'x'));
  const auto rgb = read_plot(png);
  EXPECT_EQ(strip_colour(rgb, 100, steps), cli::mode_colour("cfg"));
  EXPECT_EQ(strip_colour(rgb, 500, steps), cli::mode_colour("cfg-pipeline"));
  EXPECT_EQ(strip_colour(rgb, 900, steps), cli::mode_colour("cfg-degraded"));
}

}  // namespace
}  // namespace hybridiff
