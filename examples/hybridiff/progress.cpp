#include "progress.hpp"

#include <unistd.h>

#include <cstdio>

#include "cli.hpp"

namespace hybridiff::cli {

bool progress_enabled(const std::string& setting) {
  if (setting == "auto") return isatty(STDERR_FILENO) == 1;
  if (setting == "always") return true;
  if (setting == "never") return false;
  throw usage_error("--progress '" + setting + "': use auto, always or never");
}

progress_bar::progress_bar(std::string label, std::int64_t total, bool enabled)
    : label_(std::move(label)), total_(total > 0 ? total : 1), enabled_(enabled) {}

progress_bar::~progress_bar() { finish(); }

void progress_bar::update(std::int64_t done) {
  if (!enabled_ || finished_) return;
  constexpr int width = 30;
  const auto filled = static_cast<int>(width * done / total_);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  std::string bar(static_cast<std::size_t>(filled), '#');
  bar.resize(width, '.');
  std::fprintf(stderr, "\r%s [%s] %lld/%lld  %.1f/s ", label_.c_str(), bar.c_str(), static_cast<long long>(done),
               static_cast<long long>(total_), seconds > 0 ? static_cast<double>(done) / seconds : 0.0);
  std::fflush(stderr);
}

void progress_bar::finish() {
  if (!enabled_ || finished_) return;
  finished_ = true;
  std::fputs("\n", stderr);
}

}  // namespace hybridiff::cli
