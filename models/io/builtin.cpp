#include "models/io/builtin.hpp"

#include <cstdlib>

#include "models/errors.hpp"

#ifndef HYBRIDIFF_BUILTIN_DIR
#error "HYBRIDIFF_BUILTIN_DIR (the source tree's models/builtin) is set by models/CMakeLists.txt"
#endif

namespace hybridiff::models {

std::filesystem::path builtin_model_dir(const std::string& name) {
  const char* override_dir = std::getenv("HYBRIDIFF_BUILTIN");
  const bool from_env = override_dir != nullptr && *override_dir != '\0';
  const std::filesystem::path root = from_env ? std::filesystem::path(override_dir) : HYBRIDIFF_BUILTIN_DIR;
  const auto dir = root / name;
  std::error_code ignored;
  if (!std::filesystem::is_directory(dir, ignored))
    throw error(dir.string() + ": built-in model '" + name + "' not found (" +
                (from_env ? std::string("from $HYBRIDIFF_BUILTIN") : std::string("the source tree's models/builtin")) +
                "); set HYBRIDIFF_BUILTIN to the folder that holds the built-in models (models/builtin of the sources)");
  return dir;
}

}  // namespace hybridiff::models
