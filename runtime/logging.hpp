#pragma once

#include <string>

namespace hybridiff::runtime {

/// Sets the level of every spdlog logger: trace, debug, info, warn, error, critical or off. Throws
/// `hybridiff::error` listing the valid names for anything else.
void configure_logging(const std::string& level);

}  // namespace hybridiff::runtime
