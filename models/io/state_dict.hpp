#pragma once

#include <filesystem>
#include <optional>

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include "models/io/lora.hpp"
#include "models/io/model_folder.hpp"
#include "models/io/safetensors.hpp"

namespace torch::nn {
class Module;
}

namespace hybridiff::models {

/// Where and how the weights land.
struct load_options {
  c10::Device device = c10::kCPU;
  /// Floating-point weights are cast to this dtype; integer and bool tensors keep theirs.
  std::optional<at::ScalarType> dtype;
  /// A prefix of the module's keys that a checkpoint may leave out: transformers saves a base model's weights
  /// with or without it (`text_model.embeddings...` or `embeddings...`). Used only when no checkpoint key has it.
  std::string optional_prefix;
  /// The weight files' variant ("fp16": `diffusion_pytorch_model.fp16.safetensors`); empty: the plain files, or
  /// the only variant a folder has (find_component_weights).
  std::string variant;
  /// LoRAs merged into the weights at load (load_pipeline).
  std::vector<lora_spec> loras;
  /// A single-file checkpoint (`--model FILE.safetensors`): its configs and tokenizers come from this diffusers
  /// folder; empty: the family's repository in the Hugging Face cache (open_single_file).
  std::filesystem::path config_from;
  /// The component's weights when they do not come from its folder's files (a single-file checkpoint read under
  /// diffusers' names); the pipelines set it from the model_folder's component.
  std::shared_ptr<const checkpoint> weights;
  /// The denoiser's linear layers where float8 gains (feed-forwards; a transformer's image-stream q, k, v) in
  /// float8 e4m3, quantized after loading and LoRA merges (diffusion_pipeline::quantize_denoiser_to_fp8); `dtype`
  /// stays everything else's.
  bool fp8 = false;
};

/// `options` for loading component `name` of `folder`: with its weights when they do not come from its folder's
/// files (a single-file checkpoint).
load_options component_options(const model_folder& folder, const std::string& name, load_options options);

/// The weights a component loader reads: `options.weights` when set, else the weight files of `component_dir`
/// (find_component_weights with `options.variant`).
checkpoint component_weights(const std::filesystem::path& component_dir, const load_options& options);

/// Loads `weights` into `module` by exact name: every parameter and buffer of the module must be in the checkpoint
/// with the same shape, and the checkpoint must hold nothing else. A floating-point parameter accepts any
/// floating-point tensor (cast on load); integer and bool tensors must match exactly. On failure nothing is changed
/// and the error lists the missing, unexpected and mismatched keys (each list capped) and names the files.
void load_state_dict(torch::nn::Module& module, const checkpoint& weights, const load_options& options = {});

/// Every parameter and buffer of `module` in place (for modules built with random weights): casts floating-point
/// tensors to `options.dtype` and moves everything to `options.device`.
void place_module(torch::nn::Module& module, const load_options& options);

}  // namespace hybridiff::models
