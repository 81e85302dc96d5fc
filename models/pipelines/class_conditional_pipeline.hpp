#pragma once
// The built-in model's pipeline: a class-conditional pixel-space diffusion model (Fashion-MNIST, 32×32 grey).
// The prompt is a class name; the class enters the UNet through cross-attention on a few learned tokens per class,
// and the unconditional branch uses a learned "null class" (trained with label dropout), so classifier-free
// guidance — and the convergence of the two branches that the tau detection watches — works as on a
// text-to-image model.

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/pimpl.h>

#include "models/io/model_folder.hpp"
#include "models/pipelines/pipeline.hpp"
#include "models/networks/unet.hpp"

namespace hybridiff::models {

/// `class_embedder` component: label [B] (0..classes-1, or `classes` for the null class) -> context
/// [B, tokens, dim]. Weights: `embedding.weight` [classes + 1, tokens * dim].
class ClassTokenEmbeddingImpl : public torch::nn::Module {
 public:
  ClassTokenEmbeddingImpl(std::int64_t classes, std::int64_t tokens, std::int64_t dim);
  at::Tensor forward(const at::Tensor& labels);

  torch::nn::Embedding embedding{nullptr};

 private:
  std::int64_t tokens_, dim_;
};
TORCH_MODULE(ClassTokenEmbedding);

/// The shape of a built-in model: what `write_class_conditional_configs` writes.
struct class_conditional_layout {
  std::vector<std::string> class_names;
  std::vector<std::int64_t> block_out_channels{32, 64, 128};
  std::vector<std::int64_t> heads{1, 2, 4};  ///< attention heads per block (diffusers' attention_head_dim)
  std::int64_t layers_per_block = 1;
  std::int64_t tokens = 4, token_dim = 128;  ///< learned context tokens per class and their width
  std::int64_t sample_size = 32, channels = 1;
  std::int64_t default_steps = 50;
  double default_guidance = 4.0;
  /// The tau detector's settings for this model (model_index.json's `tau_detection`), measured on its rel-MAE
  /// curve: it flattens around step 20 of 50 (docs/models.md, "Built-in model").
  int L_slope = 8, k = 5, tau_cap = 25;
  double eps_slope = 4e-4;
};

/// Writes a pipeline folder's configs (model_index.json, scheduler/, unet/config.json, class_embedder/config.json):
/// DDPM linear betas 1e-4..0.02 over 1000 steps, epsilon prediction, DDIM sampling ("trailing" timesteps). x0 is
/// not clipped: with guidance, the first steps' x0 estimates (divided by sqrt(alphas_cumprod[999]) = 0.006) overshoot,
/// and clipping them froze saturated shapes into the image (measured: 42 % vs 83 % classifier accuracy at guidance 3).
void write_class_conditional_configs(const std::filesystem::path& dir, const class_conditional_layout& layout);
/// Writes the two weight files of such a folder, cast to `dtype`.
void save_class_conditional_weights(const std::filesystem::path& dir, torch::nn::Module& unet,
                                    torch::nn::Module& class_embedder, at::ScalarType dtype);
/// Builds the modules a folder's configs describe, with fresh (random) weights.
UNet2DConditionModel make_class_conditional_unet(const std::filesystem::path& dir);
ClassTokenEmbedding make_class_embedder(const std::filesystem::path& dir);

/// `HybridiffClassConditionalPipeline` (the built-in model's folder, `models/builtin/fashion-diffusion`).
/// Prompts are class names (case-insensitive, '-' or ' ' alike); an empty or unset negative prompt is the null
/// class, a class name as negative prompt steers away from that class. No VAE: the UNet works on pixels in [-1, 1].
class class_conditional_pipeline : public diffusion_pipeline {
 public:
  static constexpr const char* class_name_text = "HybridiffClassConditionalPipeline";
  static std::unique_ptr<class_conditional_pipeline> load(const model_folder& folder, const load_options& options);

  std::string class_name() const override { return class_name_text; }
  generation_plan plan(const generation_request& request) const override;
  void check_prompt(const generation_request& request) const override;
  prompt_conditioning encode_prompt(const generation_request& request, const generation_plan& plan) override;
  at::Tensor predict(const at::Tensor& latents, const at::Tensor& timestep, const branch_conditioning& cond,
                     module_runner* runner = nullptr) override;
  denoiser_family family() const override { return denoiser_family::unet; }
  std::int64_t transformer_blocks() const override { return 0; }
  void merge_loras(lora_merge& loras) override;
  std::unique_ptr<sampler> make_sampler(const std::string& name) const override;
  /// Pixels [1, 1, H, W] in [-1, 1] -> [1, 3, H, W] in [0, 1] (grey in all three channels).
  at::Tensor decode(const at::Tensor& latents) override;
  std::vector<std::int64_t> latent_shape(std::int64_t height, std::int64_t width) const override;

  torch::nn::Module& denoiser() override { return *unet_; }
  const std::vector<std::string>& class_names() const { return class_names_; }
  std::optional<tau_detection> recommended_tau() const override { return tau_; }
  /// The label of a prompt; throws listing the class names for anything else.
  std::int64_t label_of(const std::string& prompt) const;
  /// The context of a label [1, tokens, dim]; `class_names().size()` is the null class.
  at::Tensor context_of(std::int64_t label);

 private:
  class_conditional_pipeline() = default;

  config scheduler_config_;
  std::vector<std::string> class_names_;
  std::int64_t default_steps_ = 50, sample_size_ = 32, size_factor_ = 4;
  double default_guidance_ = 4.0;
  std::optional<tau_detection> tau_;
  UNet2DConditionModel unet_{nullptr};
  ClassTokenEmbedding class_embedder_{nullptr};
};

/// A class name written into a file name: spaces become '-' ("ankle boot" -> "ankle-boot").
std::string class_file_stem(const std::string& class_name);

}  // namespace hybridiff::models
