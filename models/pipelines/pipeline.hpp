#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include <ATen/core/Tensor.h>

#include "models/nn/module_runner.hpp"
#include "models/pipelines/sampler.hpp"
#include "models/io/state_dict.hpp"

namespace torch::nn {
class Module;
}

namespace hybridiff::models {

/// The conditioning of one classifier-free-guidance branch, batch 1: what the denoiser needs besides the latents
/// and the timestep. SDXL: context [1, 77, 2048], pooled (text_embeds) [1, 1280], time_ids [1, 6].
/// SD3: context [1, 77 + T5 length, 4096], pooled [1, 2048], time_ids undefined.
struct branch_conditioning {
  at::Tensor context;
  at::Tensor pooled;
  at::Tensor time_ids;

  /// Both branches stacked along the batch: [negative, positive] as diffusers orders them.
  static branch_conditioning stack(const branch_conditioning& negative, const branch_conditioning& positive);
};

/// Both branches of a prompt.
struct prompt_conditioning {
  branch_conditioning negative, positive;
};

/// What a user asks for. Unset fields take the model folder's defaults.
struct generation_request {
  std::string prompt;
  std::optional<std::string> negative_prompt;  ///< unset: SDXL uses zeros (force_zeros_for_empty_prompt), SD3 ""
  std::optional<std::int64_t> steps, height, width;
  std::optional<double> guidance;
  std::string sampler;           ///< "", euler, ddim, dpm++2m, flow-euler ("" = the folder's scheduler)
  std::uint64_t seed = 0;
  at::Tensor initial_latents;    ///< diffusers' `latents=`: unscaled noise [1, C, h, w]; undefined = seeded noise
  std::int64_t max_sequence_length = 256;  ///< SD3's T5 token count
};

/// The settled parameters of one generation, after defaults and validation.
struct generation_plan {
  std::int64_t steps, height, width;
  double guidance;
  bool classifier_free;  ///< guidance > 1
};

/// The kind of denoiser a pipeline runs: it decides how AsyncDiff splits the denoiser into components and which
/// tau detection defaults apply.
enum class denoiser_family { unet, transformer };

/// A folder's own tau detection settings (model_index.json `tau_detection`), measured on its rel-MAE curves.
struct tau_detection {
  int L_slope, k, tau_cap;
  double eps_slope;
};

/// A text-to-image pipeline split into the pieces the schedules compose: prompt encoding, one denoiser call,
/// the sampler, VAE decoding. SDXL and SD3 implement it.
class diffusion_pipeline {
 public:
  virtual ~diffusion_pipeline() = default;

  /// "StableDiffusionXLPipeline", ...
  virtual std::string class_name() const = 0;
  /// Validates `request` (sizes, steps, guidance) and fills in the folder's defaults; throws `hybridiff::error`.
  virtual generation_plan plan(const generation_request& request) const = 0;
  /// Throws hybridiff::error when the model cannot take the request's prompts (a class-conditional model: a prompt
  /// that names none of its classes), without encoding them: a service checks requests before queueing them.
  virtual void check_prompt(const generation_request& request) const {}
  /// Encodes the prompt and the negative prompt for both guidance branches.
  virtual prompt_conditioning encode_prompt(const generation_request& request, const generation_plan& plan) = 0;
  /// One denoiser call: latents [B, C, h, w] (already scaled by the sampler), timestep (scalar tensor),
  /// conditioning with batch B -> the model output [B, C, h, w]. With a runner, the denoiser's modules (AsyncDiff's
  /// split granularity) go through it.
  virtual at::Tensor predict(const at::Tensor& latents, const at::Tensor& timestep, const branch_conditioning& cond,
                             module_runner* runner = nullptr) = 0;
  /// The denoiser's family (SDXL and the built-in model: unet; SD3: transformer).
  virtual denoiser_family family() const = 0;
  /// The number of transformer blocks of a transformer denoiser, 0 for a UNet: the units an AsyncDiff plan deals out.
  virtual std::int64_t transformer_blocks() const = 0;
  /// The tau detection the model folder recommends; unset: the family's defaults apply.
  virtual std::optional<tau_detection> recommended_tau() const { return std::nullopt; }
  /// A new sampler configured from the folder's scheduler (or the named one).
  virtual std::unique_ptr<sampler> make_sampler(const std::string& name) const = 0;
  /// Final latents [1, C, h, w] -> image [1, 3, H, W] in [0, 1], float32 on the CPU.
  virtual at::Tensor decode(const at::Tensor& latents) = 0;
  /// The shape of the latents for an image of height × width: [1, C, height/f, width/f].
  virtual std::vector<std::int64_t> latent_shape(std::int64_t height, std::int64_t width) const = 0;
  /// Merges LoRAs into the loaded components (each under its folder's name: unet, text_encoder, ...); components
  /// not loaded are skipped. Pipelines without LoRA support throw hybridiff::error.
  virtual void merge_loras(lora_merge& loras);
  /// Swaps the LoRAs merged on top of the loaded weights (a service's per-request LoRAs): restores the weights the
  /// previous set changed, exactly (their originals are kept on their device), then merges `loras`. The same set
  /// again is a no-op; an empty set restores the loaded model. LoRAs given at load (load_options::loras) stay. The
  /// files are read and checked before any weight changes; on error the loaded model is restored.
  void use_loras(const std::vector<lora_spec>& loras);
  const std::vector<lora_spec>& active_loras() const { return active_loras_; }
  /// The denoiser's module (UNet or transformer): its parameters and submodules under their checkpoint names.
  virtual torch::nn::Module& denoiser() = 0;
  /// Stores the denoiser's linear layers where float8 gains in float8 e4m3 (LinearImpl::quantize_to_fp8): the
  /// feed-forwards of a UNet's attention blocks; the feed-forwards and the image stream's q, k and v of a
  /// transformer's blocks. Everything else keeps `placement().dtype`. Afterwards placement().fp8 is true, and
  /// use_loras refuses to swap (LoRAs given at load were merged before). Returns how many layers it quantized.
  int quantize_denoiser_to_fp8();

  const load_options& placement() const { return placement_; }

 protected:
  load_options placement_;

 private:
  void restore_lora_originals();

  std::vector<lora_spec> active_loras_;
  std::vector<std::pair<at::Tensor, at::Tensor>> lora_originals_;  // (weight, its value before the swapped LoRAs)
};

/// The folder-independent part of `plan`: fills the defaults and checks steps in [1, 1000] and each side a positive
/// multiple of `size_factor` no larger than `max_size` (`size_factor_name` says what the factor is, for the error).
generation_plan settle_plan(const generation_request& request, std::int64_t default_steps, std::int64_t default_size,
                            double default_guidance, std::int64_t size_factor, const std::string& size_factor_name,
                            std::int64_t max_size);

/// Where a pipeline's VAE goes: `options`, but float32 instead of fp16 when the VAE config sets `force_upcast`
/// (SDXL's VAE overflows in fp16), as diffusers does.
load_options vae_placement(bool force_upcast, const load_options& options);

/// Loads the pipeline a diffusers folder describes (`model_index.json`'s class). Throws naming the folder for
/// unsupported classes.
/// What to load: everything, or only the denoiser and the scheduler (a worker rank of a multi-process run: no text
/// encoders, no VAE weights; encode_prompt and decode then throw).
enum class pipeline_parts { everything, denoiser };
std::unique_ptr<diffusion_pipeline> load_pipeline(const std::filesystem::path& dir, const load_options& options,
                                                  pipeline_parts parts = pipeline_parts::everything);
/// The error of a denoiser-only pipeline asked to encode or decode.
[[noreturn]] void denoiser_only(const std::string& what);

/// Called after each step with the step index, the step count and the sample.
using step_observer = std::function<void(std::int64_t index, std::int64_t steps, const at::Tensor& latents)>;

/// The sequential reference loop (mode `none`): CFG batched as batch 2, diffusers' order of operations.
/// Returns the final latents [1, C, h, w] (before VAE decoding).
/// `denoise` replaces pipeline.predict for the steps (e.g. a CUDA-graph replay of it).
using denoise_function =
    std::function<at::Tensor(const at::Tensor& latents, const at::Tensor& timestep, const branch_conditioning& cond)>;
at::Tensor generate_latents(diffusion_pipeline& pipeline, const generation_request& request,
                            const step_observer& observe = nullptr, const denoise_function& denoise = nullptr);

/// The initial latents of `request`: its `initial_latents` (checked against `shape`) or seeded standard normal
/// noise, times `init_noise_sigma`.
at::Tensor initial_latents(const generation_request& request, const std::vector<std::int64_t>& shape,
                           double init_noise_sigma, const load_options& placement);

/// ε_u + g·(ε_c − ε_u)
at::Tensor guide(const at::Tensor& uncond, const at::Tensor& cond, double guidance);

/// Runs `work`. When it runs out of memory — an allocation failure on any device, or a worker's error that
/// reports one — throws hybridiff::error "out of memory while <what>: <the allocator's message>" with advice, so
/// that the user learns which size and dtype did not fit. Other exceptions pass unchanged.
void with_memory_context(const std::string& what, const std::function<void()>& work);

}  // namespace hybridiff::models
