#include "runtime/logging.hpp"

#include <spdlog/spdlog.h>

#include "models/errors.hpp"

namespace hybridiff::runtime {

void configure_logging(const std::string& level) {
  const char* names[] = {"trace", "debug", "info", "warn", "error", "critical", "off"};
  for (const char* name : names) {
    if (level == name) {
      spdlog::set_level(spdlog::level::from_str(level));
      // trace and debug: microseconds, to follow one step's messages across actors and the processes of a host.
      const bool fine = level == "trace" || level == "debug";
      spdlog::set_pattern(fine ? "[%H:%M:%S.%f] [%^%l%$] %v" : "[%H:%M:%S.%e] [%^%l%$] %v");
      return;
    }
  }
  throw error("--log-level: unknown level '" + level + "' (use trace, debug, info, warn, error, critical or off)");
}

}  // namespace hybridiff::runtime
