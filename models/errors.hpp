#pragma once

#include <stdexcept>
#include <string>

namespace hybridiff {

/// The error every hybridiff layer throws for bad input or a failed operation. The message names the file (or
/// flag, or component) and says what was wrong.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace hybridiff
