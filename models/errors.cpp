#include "models/errors.hpp"

#include <exception>

namespace hybridiff {

void rethrow_with_context(const std::string& context) {
  try {
    throw;
  } catch (const std::exception& failure) {
    throw error(context + ": " + failure.what());
  }
}

}  // namespace hybridiff
