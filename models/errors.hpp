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

/// Options that contradict each other or the request (a schedule that cannot run, a name that means nothing):
/// the caller asked for something impossible, nothing was loaded or run. The command line reports it as a usage
/// error (exit code 2).
class invalid_options : public error {
 public:
  /// `field`: the option or request field that is wrong ("steps", "size", ...), when one is.
  explicit invalid_options(const std::string& message, std::string field = "")
      : error(message), field_(std::move(field)) {}
  const std::string& field() const { return field_; }

 private:
  std::string field_;
};

}  // namespace hybridiff
