#pragma once
// LoRA files merged into a pipeline's weights at load: W += scale · alpha / rank · up · down for every weight a
// LoRA targets. Two formats:
//   diffusers / PEFT: COMPONENT.MODULE.lora_A.weight [rank, in(, kh, kw)] and .lora_B.weight [out, rank(, 1, 1)]
//     (or the older .lora.down.weight / .lora.up.weight), COMPONENT one of the pipeline's (unet, transformer,
//     text_encoder, text_encoder_2, text_encoder_3); alpha from the file's `lora_adapter_metadata`
//     ({"unet.lora_alpha": ..., ...}), else the rank (scale 1), as diffusers assumes.
//   kohya / A1111: lora_unet_MODULE.lora_down.weight / .lora_up.weight / .alpha, MODULE the module path with '_'
//     for '.'; lora_te1_ and lora_te2_ (lora_te_) for the text encoders, lora_transformer_ for SD3.

#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace torch::nn {
class Module;
}

namespace hybridiff::models {

/// One `--lora FILE[:SCALE]`.
struct lora_spec {
  std::filesystem::path file;
  double scale = 1.0;
};

/// "FILE" (scale 1) or "FILE:SCALE"; throws std::invalid_argument for an empty file or a scale that is not a finite
/// number.
lora_spec parse_lora_spec(const std::string& text);

/// The LoRAs of one pipeline load: every file read and checked up front (each pair complete, ranks agreeing), then
/// merged component by component; finish() checks that every pair found its weight. Throws hybridiff::error naming
/// the file and the key.
class lora_merge {
 public:
  explicit lora_merge(const std::vector<lora_spec>& loras);
  ~lora_merge();
  lora_merge(const lora_merge&) = delete;
  lora_merge& operator=(const lora_merge&) = delete;

  /// Called with each weight just before a merge changes it (in place).
  using change_hook = std::function<void(const at::Tensor& weight)>;
  void before_change(change_hook hook) { before_change_ = std::move(hook); }

  /// Another layout's kohya module name ("input_blocks_4_1_proj_in") as the module's own, '_'-joined
  /// ("down_blocks_1_attentions_0_proj_in"), or nullopt.
  using kohya_alias = std::function<std::optional<std::string>(const std::string& kohya_module)>;

  /// Merges into `module` (the pipeline's `component`) every pair that targets it; kohya names that match no
  /// weight are tried again through `alias` where given.
  void merge(const std::string& component, torch::nn::Module& module, const kohya_alias& alias = nullptr);
  /// The pipeline has `component` but did not load it (a worker rank loads only the denoiser): its pairs are
  /// not reported by finish().
  void skip(const std::string& component);
  /// Throws listing (up to five of) the pairs that targeted no weight: a component the pipeline has no such
  /// module in, or that it does not have at all (a LoRA of another model family).
  void finish() const;
  /// Weights changed so far.
  int merged() const { return merged_; }

 private:
  struct pair;
  std::vector<std::unique_ptr<pair>> pairs_;
  std::set<std::string> visited_, skipped_;
  int merged_ = 0;
  change_hook before_change_;
};

}  // namespace hybridiff::models
