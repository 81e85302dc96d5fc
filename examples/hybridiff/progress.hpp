#pragma once
// A one-line progress bar on stderr for long runs (denoising steps, batch generation).

#include <chrono>
#include <cstdint>
#include <string>

namespace hybridiff::cli {

/// "auto" (on when stderr is a terminal), "always" or "never" -> on/off; throws usage_error otherwise.
bool progress_enabled(const std::string& setting);

/// Redraws `label [#####.....] done/total rate` in place with '\r'; draws nothing when disabled.
class progress_bar {
 public:
  progress_bar(std::string label, std::int64_t total, bool enabled);
  ~progress_bar();
  progress_bar(const progress_bar&) = delete;
  progress_bar& operator=(const progress_bar&) = delete;

  void update(std::int64_t done);
  /// Ends the line (once); the destructor calls it.
  void finish();

 private:
  std::string label_;
  std::int64_t total_;
  bool enabled_, finished_ = false;
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
};

}  // namespace hybridiff::cli
