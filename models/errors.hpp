#pragma once

#include <stdexcept>
#include <string>

namespace hybridiff {

/// The error every hybridiff layer throws for bad input or a failed operation. The message names the file (or
/// flag, or component) and says what was wrong; callers add context with `with_context`.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Rethrows the current exception as a `hybridiff::error` whose message starts with `context: `.
[[noreturn]] void rethrow_with_context(const std::string& context);

}  // namespace hybridiff
