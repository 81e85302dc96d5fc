#pragma once
// What diffusers' SDXL and SD3 pipelines share: the scheduler's config, two CLIP tokenizers and text encoders, the
// VAE, and the sizes the VAE implies. The subclasses hold their denoiser and build their conditioning.

#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "models/networks/clip_text_model.hpp"
#include "models/text/clip_tokenizer.hpp"
#include "models/io/model_folder.hpp"
#include "models/pipelines/pipeline.hpp"
#include "models/networks/vae.hpp"

namespace hybridiff::models {

class clip_pair_pipeline : public diffusion_pipeline {
 public:
  std::unique_ptr<sampler> make_sampler(const std::string& name) const override;
  at::Tensor decode(const at::Tensor& latents) override;

 protected:
  /// Both encoders' outputs on one prompt, per encoder: penultimate hidden states [1, 77, D_i], pooled [1, P_i].
  struct clip_outputs {
    std::vector<at::Tensor> hidden, pooled;
  };

  /// Checks that every one of `components` is in the folder (a clear error names the missing one), keeps the
  /// placement and the scheduler config, reads the VAE's spatial factor.
  void open(const model_folder& folder, const load_options& options, std::initializer_list<const char*> components);
  /// Loads both tokenizers and text encoders (the first with its projection when `first_projected`: SD3) and the
  /// VAE (float32 when its config sets force_upcast).
  void load_text_encoders_and_vae(const model_folder& folder, bool first_projected);
  /// Merges LoRAs into both text encoders (skipped when loaded with the denoiser only).
  void merge_text_encoder_loras(lora_merge& loras);
  /// Runs both encoders on `text`, warning when the prompt is longer than CLIP's window (it is cut, as diffusers does).
  clip_outputs encode_with_clips(const std::string& text) const;

  config scheduler_config_;
  std::int64_t default_size_ = 1024;
  std::int64_t vae_factor_ = 8;  // the VAE's spatial factor, from its config
  clip_tokenizer tokenizer_, tokenizer_2_;
  CLIPTextModel text_encoder_{nullptr}, text_encoder_2_{nullptr};  // null when loaded with the denoiser only
  AutoencoderKL vae_{nullptr};                                      // null when loaded with the denoiser only
};

}  // namespace hybridiff::models
