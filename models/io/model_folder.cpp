#include "models/io/model_folder.hpp"

#include <algorithm>
#include <cctype>

namespace hybridiff::models {
namespace {

bool is_tokenizer_or_scheduler(const std::string& class_name) {
  return class_name.find("Tokenizer") != std::string::npos || class_name.find("Scheduler") != std::string::npos;
}

}  // namespace

bool component::has_weights() const { return !is_tokenizer_or_scheduler(class_name); }

std::filesystem::path component_config_path(const component& part) {
  if (part.class_name.find("Scheduler") != std::string::npos) return part.dir / "scheduler_config.json";
  if (part.class_name.find("Tokenizer") != std::string::npos) return part.dir / "tokenizer_config.json";
  return part.dir / "config.json";
}

model_folder model_folder::open(const std::filesystem::path& dir) {
  model_folder folder;
  folder.dir_ = dir;
  if (!std::filesystem::is_directory(dir)) throw error(dir.string() + ": model folder does not exist");

  const auto index_path = dir / "model_index.json";
  if (std::filesystem::exists(index_path)) {
    folder.index_ = read_json_file(index_path);
    if (!folder.index_.is_object()) throw error(index_path.string() + ": not a JSON object");
    if (!folder.index_.contains("_class_name") || !folder.index_["_class_name"].is_string())
      throw error(index_path.string() + ": missing '_class_name' (the pipeline class)");
    folder.pipeline_class_ = folder.index_["_class_name"].get<std::string>();
    for (const auto& [name, entry] : folder.index_.items()) {
      if (name.empty() || name[0] == '_' || !entry.is_array()) continue;  // private keys and plain options
      if (entry.size() != 2)
        throw error(index_path.string() + ": component '" + name + "' is not a [library, class] pair");
      if (entry[0].is_null() || entry[1].is_null()) continue;  // optional component left out
      // A component is a sub-folder named like a Python attribute; a name with '/' or ".." would reach outside.
      if (name.size() > 128 ||
          !std::all_of(name.begin(), name.end(), [](unsigned char c) { return std::isalnum(c) || c == '_'; }))
        throw error(index_path.string() + ": component name '" + name.substr(0, 128) +
                    "' is not a plain name (up to 128 letters, digits and _)");
      if (!entry[0].is_string() || !entry[1].is_string())
        throw error(index_path.string() + ": component '" + name + "' is not a [library, class] pair of strings");
      component part{name, entry[0].get<std::string>(), entry[1].get<std::string>(), dir / name};
      if (!std::filesystem::is_directory(part.dir))
        throw error(index_path.string() + ": component '" + name + "' (" + part.class_name + ") has no folder " +
                    part.dir.string());
      if (!std::filesystem::exists(component_config_path(part)))
        throw error(part.dir.string() + ": missing " + component_config_path(part).filename().string() + " for " +
                    part.class_name);
      folder.components_.push_back(std::move(part));
    }
    if (folder.components_.empty()) throw error(index_path.string() + ": lists no components");
    return folder;
  }

  // A single component folder.
  for (const char* file_name : {"config.json", "scheduler_config.json"}) {
    const auto path = dir / file_name;
    if (!std::filesystem::exists(path)) continue;
    auto values = read_config(path);
    auto class_name = values.get_or<std::string>("_class_name", "");
    if (class_name.empty())
      throw error(path.string() + ": neither '_class_name' nor 'architectures' says which class this is");
    auto name = std::filesystem::absolute(dir).lexically_normal().filename().string();
    if (name.empty()) name = std::filesystem::absolute(dir).parent_path().filename().string();
    component part{name, values.has("architectures") ? "transformers" : "diffusers", class_name, dir};
    folder.components_.push_back(std::move(part));
    return folder;
  }
  throw error(dir.string() + ": not a model folder (no model_index.json, config.json or scheduler_config.json)");
}

bool model_folder::has(const std::string& name) const {
  return std::any_of(components_.begin(), components_.end(), [&](const component& part) { return part.name == name; });
}

const component& model_folder::get(const std::string& name) const {
  for (const auto& part : components_)
    if (part.name == name) return part;
  throw error(dir_.string() + ": missing component '" + name + "'" +
              (pipeline_class_.empty() ? "" : " (model_index.json of " + pipeline_class_ + " does not list it)"));
}

config model_folder::component_config(const std::string& name) const {
  const auto& part = get(name);
  return read_config(component_config_path(part), part.class_name);
}

}  // namespace hybridiff::models
