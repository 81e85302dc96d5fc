#pragma once
// Where the models that ship with hybridiff (models/builtin/ in the source tree) are found at run time.

#include <filesystem>
#include <string>

namespace hybridiff::models {

/// The folder of the built-in model `name` (e.g. "fashion-classifier"): $HYBRIDIFF_BUILTIN/<name> when that
/// variable is set, else <source tree>/models/builtin/<name> (fixed at compile time). Throws hybridiff::error naming
/// the folder, and telling to set HYBRIDIFF_BUILTIN, when it does not exist (e.g. a binary moved off its tree).
std::filesystem::path builtin_model_dir(const std::string& name);

}  // namespace hybridiff::models
