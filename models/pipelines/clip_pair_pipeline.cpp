#include "models/pipelines/clip_pair_pipeline.hpp"

#include <spdlog/spdlog.h>

#include "models/pipelines/sampler.hpp"

namespace hybridiff::models {

std::unique_ptr<sampler> clip_pair_pipeline::make_sampler(const std::string& name) const {
  return models::make_sampler(scheduler_config_, name);
}

at::Tensor clip_pair_pipeline::decode(const at::Tensor& latents) {
  if (!vae_) denoiser_only("decode latents");
  return vae_->decode_to_image(latents);
}

void clip_pair_pipeline::open(const model_folder& folder, const load_options& options,
                              std::initializer_list<const char*> components) {
  for (const char* name : components) folder.get(name);
  placement_ = options;
  scheduler_config_ = folder.component_config("scheduler");
  vae_factor_ = vae_config::from(folder.component_config("vae")).spatial_factor();
}

void clip_pair_pipeline::load_text_encoders_and_vae(const model_folder& folder, bool first_projected) {
  tokenizer_ = clip_tokenizer::load(folder.get("tokenizer").dir);
  tokenizer_2_ = clip_tokenizer::load(folder.get("tokenizer_2").dir);
  text_encoder_ = load_clip_text_model(folder.get("text_encoder").dir, first_projected,
                                       component_options(folder, "text_encoder", placement_));
  text_encoder_2_ = load_clip_text_model(folder.get("text_encoder_2").dir, true,
                                         component_options(folder, "text_encoder_2", placement_));
  const auto vae_options = vae_placement(folder.component_config("vae").get<bool>("force_upcast"), placement_);
  vae_ = load_vae(folder.get("vae").dir, component_options(folder, "vae", vae_options));
}

void clip_pair_pipeline::merge_text_encoder_loras(lora_merge& loras) {
  if (!text_encoder_) {
    loras.skip("text_encoder");
    loras.skip("text_encoder_2");
    return;
  }
  loras.merge("text_encoder", *text_encoder_);
  loras.merge("text_encoder_2", *text_encoder_2_);
}

clip_pair_pipeline::clip_outputs clip_pair_pipeline::encode_with_clips(const std::string& text) const {
  clip_outputs outputs;
  const clip_tokenizer* tokenizers[] = {&tokenizer_, &tokenizer_2_};
  CLIPTextModel encoders[] = {text_encoder_, text_encoder_2_};  // handles (shared), so a const method can call them
  for (int i = 0; i < 2; ++i) {
    bool truncated = false;
    auto ids = tokenizers[i]->encode(text, &truncated);
    if (truncated && i == 0)
      spdlog::warn("prompt is longer than {} CLIP tokens; the rest is cut off (as diffusers does)",
                   tokenizers[i]->max_length() - 2);
    auto out = encoders[i]->forward(torch::tensor(ids, torch::kLong).unsqueeze(0).to(placement_.device));
    outputs.hidden.push_back(out.hidden_states[out.hidden_states.size() - 2]);  // penultimate layer
    outputs.pooled.push_back(out.pooled);
  }
  return outputs;
}

}  // namespace hybridiff::models
