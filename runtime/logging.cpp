#include "runtime/logging.hpp"

#include <spdlog/spdlog.h>

#include "models/errors.hpp"

namespace hybridiff::runtime {

void configure_logging(const std::string& level) {
  const char* names[] = {"trace", "debug", "info", "warn", "error", "critical", "off"};
  for (const char* name : names) {
    if (level == name) {
      spdlog::set_level(spdlog::level::from_str(level));
      spdlog::set_pattern("[%H:%M:%S.%e] [%^%l%$] %v");
      return;
    }
  }
  throw error("--log-level: unknown level '" + level + "' (use trace, debug, info, warn, error, critical or off)");
}

}  // namespace hybridiff::runtime
