#pragma once

#include <string>

namespace hybridiff::runtime {

/// Sets the level of every spdlog logger: trace, debug, info, warn, error, critical or off (trace and debug stamp
/// lines with microseconds; trace follows each step's requests through the driver, the links and the workers).
/// Throws `hybridiff::error` listing the valid names for anything else.
void configure_logging(const std::string& level);

}  // namespace hybridiff::runtime
