#pragma once
// A small raster for the CLI's plots: anti-aliased lines and dots on an RGB canvas, text in a built-in 5×7 bitmap
// font, written as PNG.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace hybridiff::cli::plot {

struct rgb8 {
  std::uint8_t r, g, b;
  friend constexpr bool operator==(const rgb8& a, const rgb8& b) { return a.r == b.r && a.g == b.g && a.b == b.b; }
  friend constexpr bool operator!=(const rgb8& a, const rgb8& b) { return !(a == b); }
};

struct colour {
  float r, g, b;
};

constexpr colour from8(rgb8 c) { return {c.r / 255.0f, c.g / 255.0f, c.b / 255.0f}; }

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

  int width() const { return width_; }
  int height() const { return height_; }
  /// Row-major RGB, each in [0, 1].
  const std::vector<float>& pixels() const { return pixels_; }

 private:
  int width_, height_;
  std::vector<float> pixels_;
};

constexpr int text_scale = 2;                // every glyph drawn at 2×: 10×14 pixels
constexpr int advance = 6 * text_scale;      // 5 columns and one of spacing
constexpr int text_height = 7 * text_scale;  // cap height; descenders reach 2 pixels further

int text_width(const std::string& s);
/// `s` with every character outside printable ASCII as one '?' (a UTF-8 sequence counts as one character).
std::string printable_ascii(const std::string& s);
/// Draws `s` (printable ASCII) with its top-left corner at (x, y).
void draw_text(canvas& image, int x, int y, const std::string& s, colour c);
enum class align { left, centre, right };
void draw_text(canvas& image, int x, int y, const std::string& s, colour c, align how);
/// At most 7 characters: 3 significant digits in fixed notation for magnitudes 1e-3 .. 1e4, else 2 in scientific
/// ("1.2e-5").
std::string format_value(double v);
/// Writes the canvas as an 8-bit RGB PNG; throws hybridiff::error when it cannot.
void save(const canvas& image, const std::filesystem::path& png);

}  // namespace hybridiff::cli::plot
