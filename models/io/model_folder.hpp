#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "models/io/config.hpp"

namespace hybridiff::models {

class checkpoint;

/// One entry of a diffusers folder: `model_index.json` names it `[library, class]`; it lives in `dir`.
struct component {
  std::string name;        ///< "unet", "text_encoder_2", ...
  std::string library;     ///< "diffusers" or "transformers"
  std::string class_name;  ///< "UNet2DConditionModel", "CLIPTokenizer", ...
  std::filesystem::path dir;
  /// The weights when they do not come from `dir` (a single-file checkpoint, under diffusers' names).
  std::shared_ptr<const checkpoint> weights;

  /// True for components that carry weights (everything but tokenizers and schedulers).
  bool has_weights() const;
};

/// Where a model named on the command line lives: a folder as given; a Hugging Face cache repository folder
/// (`models--ORG--NAME`) as its snapshot named by refs/main (or its only snapshot); "ORG/NAME" that is no path here
/// as that repository in the Hugging Face cache (HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub). Throws
/// naming what was looked for.
std::filesystem::path resolve_model_dir(const std::filesystem::path& given);

/// A diffusers pipeline folder (`model_index.json` + one folder per component) or a single component folder
/// (`config.json` or `scheduler_config.json`), validated on open: every non-null component of the index must have
/// its folder and its config. `dir` goes through resolve_model_dir; dir() is the folder read.
class model_folder {
 public:
  static model_folder open(const std::filesystem::path& dir);

  const std::filesystem::path& dir() const { return dir_; }
  /// The pipeline class ("StableDiffusionXLPipeline"), or empty for a single component folder.
  const std::string& pipeline_class() const { return pipeline_class_; }
  /// `model_index.json` (empty object for a single component folder).
  const nlohmann::json& index() const { return index_; }
  const std::vector<component>& components() const { return components_; }
  bool has(const std::string& name) const;
  /// Throws naming the folder when the component is absent.
  const component& get(const std::string& name) const;
  /// The component's config with its class defaults filled in.
  config component_config(const std::string& name) const;
  /// Component `name` reads `weights` instead of its folder's files (open_single_file).
  void use_weights(const std::string& name, std::shared_ptr<const checkpoint> weights);

 private:
  std::filesystem::path dir_;
  std::string pipeline_class_;
  nlohmann::json index_ = nlohmann::json::object();
  std::vector<component> components_;
};

/// The config file of a component folder: `config.json`, or `scheduler_config.json` for schedulers,
/// or `tokenizer_config.json` for tokenizers.
std::filesystem::path component_config_path(const component& part);

}  // namespace hybridiff::models
