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

// ---- colours ------------------------------------------------------------------------------------------------------

struct colour {
  float r, g, b;
};

constexpr colour from8(rgb8 c) { return {c.r / 255.0f, c.g / 255.0f, c.b / 255.0f}; }

constexpr rgb8 cfg_rgb{44, 160, 44}, cfg_pipeline_rgb{23, 166, 166}, fill_rgb{240, 200, 30},
    pipeline_rgb{148, 103, 189}, degraded_rgb{214, 39, 40}, other_rgb{160, 160, 160};
constexpr colour white{1, 1, 1}, black{0, 0, 0}, frame{0.35f, 0.35f, 0.35f}, grid{0.88f, 0.88f, 0.88f},
    text{0.15f, 0.15f, 0.15f}, zero_line{0.55f, 0.55f, 0.55f}, metric_colour{0.12f, 0.47f, 0.71f},
    slope_colour{1.0f, 0.50f, 0.05f}, window_fill{1.0f, 0.88f, 0.88f};

// ---- the raster ---------------------------------------------------------------------------------------------------

class canvas {
 public:
  canvas(int width, int height) : width_(width), height_(height), pixels_(3 * width * height, 1.0f) {}

  /// Mixes `c` into pixel (x, y) with weight `alpha`; outside the picture nothing happens.
  void blend(int x, int y, colour c, float alpha = 1) {
    if (x < 0 || y < 0 || x >= width_ || y >= height_ || !(alpha > 0)) return;
    alpha = std::min(alpha, 1.0f);
    float* p = &pixels_[3 * (static_cast<std::size_t>(y) * width_ + x)];
    p[0] += (c.r - p[0]) * alpha;
    p[1] += (c.g - p[1]) * alpha;
    p[2] += (c.b - p[2]) * alpha;
  }

  /// Fills [x0, x1) × [y0, y1).
  void fill(int x0, int y0, int x1, int y1, colour c) {
    for (int y = std::max(y0, 0); y < std::min(y1, height_); ++y)
      for (int x = std::max(x0, 0); x < std::min(x1, width_); ++x) blend(x, y, c);
  }

  void hline(int x0, int x1, int y, colour c, int dash = 0, int gap = 0) {
    for (int x = x0; x < x1; ++x)
      if (dash == 0 || (x - x0) % (dash + gap) < dash) blend(x, y, c);
  }
  void vline(int x, int y0, int y1, colour c, int dash = 0, int gap = 0) {
    for (int y = y0; y < y1; ++y)
      if (dash == 0 || (y - y0) % (dash + gap) < dash) blend(x, y, c);
  }

  /// An anti-aliased segment of `thickness` pixels between pixel centres (x0, y0) and (x1, y1), round ends: each
  /// pixel takes the part of it the stroke covers (distance to the segment, one pixel of feathering).
  void line(double x0, double y0, double x1, double y1, colour c, double thickness) {
    const double half = thickness / 2;
    const int left = static_cast<int>(std::floor(std::min(x0, x1) - half - 1)),
              right = static_cast<int>(std::ceil(std::max(x0, x1) + half + 1));
    const int top = static_cast<int>(std::floor(std::min(y0, y1) - half - 1)),
              bottom = static_cast<int>(std::ceil(std::max(y0, y1) + half + 1));
    const double dx = x1 - x0, dy = y1 - y0, length2 = dx * dx + dy * dy;
    for (int y = std::max(top, 0); y <= std::min(bottom, height_ - 1); ++y)
      for (int x = std::max(left, 0); x <= std::min(right, width_ - 1); ++x) {
        double t = length2 > 0 ? ((x - x0) * dx + (y - y0) * dy) / length2 : 0;
        t = std::clamp(t, 0.0, 1.0);
        const double distance = std::hypot(x - (x0 + t * dx), y - (y0 + t * dy));
        blend(x, y, c, static_cast<float>(std::clamp(half + 0.5 - distance, 0.0, 1.0)));
      }
  }

  /// The same segment drawn as dashes of `dash` pixels every `dash + gap` pixels.
  void dashed_line(double x0, double y0, double x1, double y1, colour c, double thickness, double dash, double gap) {
    const double length = std::hypot(x1 - x0, y1 - y0);
    if (length == 0) return line(x0, y0, x1, y1, c, thickness);
    for (double s = 0; s < length; s += dash + gap) {
      const double e = std::min(s + dash, length);
      line(x0 + (x1 - x0) * s / length, y0 + (y1 - y0) * s / length, x0 + (x1 - x0) * e / length,
           y0 + (y1 - y0) * e / length, c, thickness);
    }
  }

  /// A filled anti-aliased disc.
  void dot(double cx, double cy, double radius, colour c) {
    for (int y = static_cast<int>(std::floor(cy - radius - 1)); y <= static_cast<int>(std::ceil(cy + radius + 1)); ++y)
      for (int x = static_cast<int>(std::floor(cx - radius - 1)); x <= static_cast<int>(std::ceil(cx + radius + 1));
           ++x)
        blend(x, y, c, static_cast<float>(std::clamp(radius + 0.5 - std::hypot(x - cx, y - cy), 0.0, 1.0)));
  }

  /// [1, 3, H, W] float32 in [0, 1], as save_png takes it.
  at::Tensor tensor() const {
    return torch::from_blob(const_cast<float*>(pixels_.data()), {height_, width_, 3}, torch::kFloat32)
        .permute({2, 0, 1})
        .unsqueeze(0)
        .clone();
  }

 private:
  int width_, height_;
  std::vector<float> pixels_;
};

// ---- text: a 5×7 bitmap font ----------------------------------------------------------------------------------------

// One glyph: 7 rows top to bottom (the classic HD44780-style character set) and an 8th under the baseline for the
// descenders of g, j, p, q and y; bit 4 is the leftmost of 5 columns.
using glyph = std::array<std::uint8_t, 8>;

const glyph& glyph_of(char ch) {
  static const glyph unknown{0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04, 0x00};  // '?'
  static const std::array<glyph, 95> printable = [] {
    std::array<glyph, 95> g{};  // ' ' .. '~'; unlisted ones stay blank until filled below
    auto set = [&](char c, glyph rows) { g[static_cast<std::size_t>(c - ' ')] = rows; };
    set('0', {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E});
    set('1', {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E});
    set('2', {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F});
    set('3', {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E});
    set('4', {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02});
    set('5', {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E});
    set('6', {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E});
    set('7', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08});
    set('8', {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E});
    set('9', {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C});
    set('A', {0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11});
    set('B', {0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E});
    set('C', {0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E});
    set('D', {0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C});
    set('E', {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F});
    set('F', {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10});
    set('G', {0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F});
    set('H', {0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11});
    set('I', {0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E});
    set('J', {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C});
    set('K', {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11});
    set('L', {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F});
    set('M', {0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11});
    set('N', {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11});
    set('O', {0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E});
    set('P', {0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10});
    set('Q', {0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D});
    set('R', {0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11});
    set('S', {0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E});
    set('T', {0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04});
    set('U', {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E});
    set('V', {0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04});
    set('W', {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A});
    set('X', {0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11});
    set('Y', {0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04});
    set('Z', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F});
    set('a', {0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F});
    set('b', {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E});
    set('c', {0x00, 0x00, 0x0E, 0x10, 0x10, 0x11, 0x0E});
    set('d', {0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F});
    set('e', {0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E});
    set('f', {0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08});
    set('g', {0x00, 0x00, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x0E});
    set('h', {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11});
    set('i', {0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E});
    set('j', {0x02, 0x00, 0x06, 0x02, 0x02, 0x02, 0x12, 0x0C});
    set('k', {0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12});
    set('l', {0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E});
    set('m', {0x00, 0x00, 0x1A, 0x15, 0x15, 0x11, 0x11});
    set('n', {0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11});
    set('o', {0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E});
    set('p', {0x00, 0x00, 0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10});
    set('q', {0x00, 0x00, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x01});
    set('r', {0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10});
    set('s', {0x00, 0x00, 0x0E, 0x10, 0x0E, 0x01, 0x1E});
    set('t', {0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06});
    set('u', {0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0D});
    set('v', {0x00, 0x00, 0x11, 0x11, 0x11, 0x0A, 0x04});
    set('w', {0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0A});
    set('x', {0x00, 0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11});
    set('y', {0x00, 0x00, 0x11, 0x11, 0x11, 0x0F, 0x01, 0x0E});
    set('z', {0x00, 0x00, 0x1F, 0x02, 0x04, 0x08, 0x1F});
    set('.', {0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C});
    set(',', {0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08});
    set('-', {0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00});
    set('+', {0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00});
    set('=', {0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00});
    set(':', {0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00});
    set(';', {0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x04, 0x08});
    set('(', {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02});
    set(')', {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08});
    set('[', {0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E});
    set(']', {0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E});
    set('<', {0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02});
    set('>', {0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08});
    set('/', {0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00});
    set('\\', {0x00, 0x10, 0x08, 0x04, 0x02, 0x01, 0x00});
    set('%', {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03});
    set('_', {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F});
    set('\'', {0x0C, 0x04, 0x08, 0x00, 0x00, 0x00, 0x00});
    set('"', {0x0A, 0x0A, 0x0A, 0x00, 0x00, 0x00, 0x00});
    set('#', {0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A});
    set('!', {0x04, 0x04, 0x04, 0x04, 0x04, 0x00, 0x04});
    set('?', {0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04});
    set('*', {0x00, 0x04, 0x15, 0x0E, 0x15, 0x04, 0x00});
    set('|', {0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04});
    set('@', {0x0E, 0x11, 0x01, 0x0D, 0x15, 0x15, 0x0E});
    set('&', {0x0C, 0x12, 0x14, 0x08, 0x15, 0x12, 0x0D});
    set('$', {0x04, 0x0F, 0x14, 0x0E, 0x05, 0x1E, 0x04});
    set('^', {0x04, 0x0A, 0x11, 0x00, 0x00, 0x00, 0x00});
    set('`', {0x08, 0x04, 0x02, 0x00, 0x00, 0x00, 0x00});
    set('{', {0x02, 0x04, 0x04, 0x08, 0x04, 0x04, 0x02});
    set('}', {0x08, 0x04, 0x04, 0x02, 0x04, 0x04, 0x08});
    set('~', {0x00, 0x00, 0x08, 0x15, 0x02, 0x00, 0x00});
    return g;
  }();
  if (ch < ' ' || ch > '~') return unknown;
  return printable[static_cast<std::size_t>(ch - ' ')];
}

constexpr int text_scale = 2;                // every glyph drawn at 2×: 10×14 pixels
constexpr int advance = 6 * text_scale;      // 5 columns and one of spacing
constexpr int text_height = 7 * text_scale;  // cap height; descenders reach 2 pixels further

int text_width(const std::string& s) { return s.empty() ? 0 : static_cast<int>(s.size()) * advance - text_scale; }

/// `s` with every character outside printable ASCII as one '?' (a UTF-8 sequence counts as one character).
std::string printable_ascii(const std::string& s) {
  std::string out;
  for (char ch : s) {
    const auto byte = static_cast<unsigned char>(ch);
    if (byte >= 0x80 && byte < 0xC0) continue;  // a UTF-8 continuation byte
    out += byte >= ' ' && byte <= '~' ? ch : '?';
  }
  return out;
}

/// Draws `s` (printable ASCII) with its top-left corner at (x, y).
void draw_text(canvas& image, int x, int y, const std::string& s, colour c) {
  for (char ch : s) {
    const glyph& rows = glyph_of(ch);
    for (int row = 0; row < 8; ++row)
      for (int column = 0; column < 5; ++column)
        if (rows[static_cast<std::size_t>(row)] & (0x10 >> column))
          image.fill(x + column * text_scale, y + row * text_scale, x + (column + 1) * text_scale,
                     y + (row + 1) * text_scale, c);
    x += advance;
  }
}

enum class align { left, centre, right };

void draw_text(canvas& image, int x, int y, const std::string& s, colour c, align how) {
  const int w = text_width(s);
  draw_text(image, how == align::left ? x : how == align::centre ? x - w / 2 : x - w, y, s, c);
}

/// At most 7 characters: 3 significant digits in fixed notation for magnitudes 1e-3 .. 1e4, else 2 in scientific
/// ("1.2e-5").
std::string format_value(double v) {
  if (v == 0) return "0";
  const double magnitude = std::abs(v);
  const int exponent = static_cast<int>(std::floor(std::log10(magnitude)));
  char buffer[32];
  if (exponent >= -3 && exponent <= 3) {
    std::snprintf(buffer, sizeof buffer, "%.*f", std::max(0, 2 - exponent), v);
    return buffer;
  }
  // "%.1e" rounds the mantissa itself (9.96e-8 is 1.0e-07); its exponent loses the '+' and the leading zeros.
  std::snprintf(buffer, sizeof buffer, "%.1e", v);
  std::string out = buffer;
  const auto e = out.find('e');
  std::string mantissa = out.substr(0, e + 1), sign = out[e + 1] == '-' ? "-" : "", digits = out.substr(e + 2);
  digits.erase(0, std::min(digits.find_first_not_of('0'), digits.size() - 1));
  return mantissa + sign + digits;
}

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

  models::save_png(png, image.tensor());
}

}  // namespace hybridiff::cli
