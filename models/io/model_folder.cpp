#include "models/io/model_folder.hpp"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <vector>

#include <spdlog/spdlog.h>

#include "models/errors.hpp"

namespace hybridiff::models {
namespace {

// A repository folder of the Hugging Face cache (models--ORG--NAME): snapshots/REV/ holds the files (links into
// blobs/), refs/main names the revision downloaded last.
bool is_hub_repository(const std::filesystem::path& dir) {
  return std::filesystem::is_directory(dir / "snapshots") && !std::filesystem::exists(dir / "model_index.json") &&
         !std::filesystem::exists(dir / "config.json");
}

std::filesystem::path snapshot_of(const std::filesystem::path& repository) {
  const auto snapshots = repository / "snapshots";
  std::ifstream ref(repository / "refs" / "main");
  std::string revision;
  if (ref && std::getline(ref, revision) && !revision.empty() && revision.find('/') == std::string::npos &&
      std::filesystem::is_directory(snapshots / revision))
    return snapshots / revision;
  std::vector<std::filesystem::path> found;
  for (const auto& entry : std::filesystem::directory_iterator(snapshots))
    if (entry.is_directory()) found.push_back(entry.path());
  if (found.size() == 1) return found.front();
  std::sort(found.begin(), found.end());
  std::string names;
  for (const auto& path : found) names += (names.empty() ? "" : ", ") + path.filename().string();
  throw error(repository.string() + ": a Hugging Face cache folder with " +
              (found.empty() ? std::string("no snapshot") : "several snapshots (" + names + ")") +
              " and no refs/main naming one: pass the snapshot folder (" + snapshots.string() + "/REVISION)");
}

// Where huggingface_hub keeps its cache: HF_HUB_CACHE, HF_HOME/hub, XDG_CACHE_HOME/huggingface/hub or
// ~/.cache/huggingface/hub.
std::filesystem::path hub_cache_dir() {
  if (const char* cache = std::getenv("HF_HUB_CACHE"); cache && *cache) return cache;
  if (const char* home = std::getenv("HF_HOME"); home && *home) return std::filesystem::path(home) / "hub";
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg)
    return std::filesystem::path(xdg) / "huggingface" / "hub";
  const char* user_home = std::getenv("HOME");
  return std::filesystem::path(user_home ? user_home : "") / ".cache" / "huggingface" / "hub";
}

// "ORG/NAME", as the Hub spells a repository: two plain names.
bool looks_like_repository_id(const std::string& text) {
  const auto slash = text.find('/');
  if (slash == std::string::npos || slash == 0 || slash + 1 == text.size() ||
      text.find('/', slash + 1) != std::string::npos)
    return false;
  return std::all_of(text.begin(), text.end(),
                     [](unsigned char c) { return std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '/'; }) &&
         text.front() != '.';
}

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

std::filesystem::path resolve_model_dir(const std::filesystem::path& given) {
  if (std::filesystem::is_directory(given)) {
    if (!is_hub_repository(given)) return given;
    const auto snapshot = snapshot_of(given);
    spdlog::info("{}: a Hugging Face cache folder; loading its snapshot {}", given.string(),
                 snapshot.filename().string());
    return snapshot;
  }
  const auto text = given.string();
  if (!std::filesystem::exists(given) && looks_like_repository_id(text)) {
    const auto cache = hub_cache_dir();
    const auto slash = text.find('/');
    const auto repository = cache / ("models--" + text.substr(0, slash) + "--" + text.substr(slash + 1));
    if (std::filesystem::is_directory(repository)) {
      const auto snapshot = snapshot_of(repository);
      spdlog::info("{}: loading {} from the Hugging Face cache", text, snapshot.string());
      return snapshot;
    }
    throw error(text + ": model folder does not exist, nor is it in the Hugging Face cache (no " + repository.string() +
                "; the cache is HF_HUB_CACHE, else HF_HOME/hub, else " + "~/.cache/huggingface/hub)");
  }
  throw error(text + ": model folder does not exist");
}

model_folder model_folder::open(const std::filesystem::path& given) {
  model_folder folder;
  const auto dir = resolve_model_dir(given);
  folder.dir_ = dir;

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

void model_folder::use_weights(const std::string& name, std::shared_ptr<const checkpoint> weights) {
  for (auto& part : components_)
    if (part.name == name) {
      part.weights = std::move(weights);
      return;
    }
  get(name);  // throws naming the folder
}

}  // namespace hybridiff::models
