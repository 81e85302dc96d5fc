#include "models/pipelines/sd3_pipeline.hpp"

#include <spdlog/spdlog.h>

#include "models/errors.hpp"

namespace hybridiff::models {

std::unique_ptr<sd3_pipeline> sd3_pipeline::load(const model_folder& folder, const load_options& options,
                                                  pipeline_parts parts) {
  std::unique_ptr<sd3_pipeline> pipeline(new sd3_pipeline());
  pipeline->open(folder, options,
                 {"scheduler", "tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "transformer", "vae"});
  if (folder.has("text_encoder_3") != folder.has("tokenizer_3"))
    throw error(folder.dir().string() + ": text_encoder_3 and tokenizer_3 come together (one is missing)");
  pipeline->transformer_ =
      load_sd3_transformer(folder.get("transformer").dir, component_options(folder, "transformer", options));
  pipeline->default_size_ = pipeline->transformer_->config().sample_size * pipeline->vae_factor_;
  if (parts == pipeline_parts::denoiser) return pipeline;
  pipeline->load_text_encoders_and_vae(folder, true);
  if (folder.has("text_encoder_3")) {
    pipeline->tokenizer_3_ = t5_tokenizer::load(folder.get("tokenizer_3").dir);
    pipeline->text_encoder_3_ =
        load_t5_encoder(folder.get("text_encoder_3").dir, component_options(folder, "text_encoder_3", options));
  }
  const auto clip_width = pipeline->text_encoder_->config().hidden_size + pipeline->text_encoder_2_->config().hidden_size;
  if (clip_width > pipeline->transformer_->config().joint_attention_dim)
    throw error(folder.dir().string() + ": the CLIP encoders' hidden sizes (" + std::to_string(clip_width) +
                ") exceed the transformer's joint_attention_dim");
  return pipeline;
}

void sd3_pipeline::merge_loras(lora_merge& loras) {
  loras.merge("transformer", *transformer_);
  merge_text_encoder_loras(loras);
  if (text_encoder_3_)
    loras.merge("text_encoder_3", *text_encoder_3_);
  else if (!text_encoder_)
    loras.skip("text_encoder_3");  // loaded with the denoiser only
}

generation_plan sd3_pipeline::plan(const generation_request& request) const {
  // Latents must split into whole patches, and no more of them than the position table holds.
  const auto factor = vae_factor_ * transformer_->config().patch_size;
  auto plan = settle_plan(request, 28, default_size_, 7.0, factor, "VAE factor × patch size",
                          transformer_->config().pos_embed_max_size * factor);
  if (request.max_sequence_length < 1 || request.max_sequence_length > 512)
    throw error("--max-sequence-length " + std::to_string(request.max_sequence_length) + " is outside [1, 512]");
  return plan;
}

branch_conditioning sd3_pipeline::encode_text(const std::string& text, std::int64_t max_sequence_length) {
  auto clips = encode_with_clips(text);
  const auto joint = transformer_->config().joint_attention_dim;
  auto clip = torch::cat(clips.hidden, -1);
  clip = torch::constant_pad_nd(clip, {0, joint - clip.size(-1)}, 0);  // [1, 77, joint]
  at::Tensor t5;
  if (text_encoder_3_) {
    bool truncated = false;
    auto ids = tokenizer_3_->encode(text, static_cast<std::size_t>(max_sequence_length), &truncated);
    if (truncated) spdlog::warn("prompt is longer than {} T5 tokens; the rest is cut off", max_sequence_length - 1);
    t5 = text_encoder_3_->forward(torch::tensor(ids, torch::kLong).unsqueeze(0).to(placement_.device));
  } else {
    t5 = torch::zeros({1, max_sequence_length, joint}, clip.options());
  }
  return {torch::cat({clip, t5.to(clip.scalar_type())}, 1), torch::cat(clips.pooled, -1), at::Tensor()};
}

prompt_conditioning sd3_pipeline::encode_prompt(const generation_request& request, const generation_plan&) {
  if (!text_encoder_) denoiser_only("encode prompts");
  return {encode_text(request.negative_prompt.value_or(""), request.max_sequence_length),
          encode_text(request.prompt, request.max_sequence_length)};
}

at::Tensor sd3_pipeline::predict(const at::Tensor& latents, const at::Tensor& timestep, const branch_conditioning& cond,
                                 module_runner* runner) {
  return runner != nullptr ? transformer_->forward(latents, timestep, cond.context, cond.pooled, *runner)
                           : transformer_->forward(latents, timestep, cond.context, cond.pooled);
}

std::int64_t sd3_pipeline::transformer_blocks() const { return transformer_->num_blocks(); }

std::vector<std::int64_t> sd3_pipeline::latent_shape(std::int64_t height, std::int64_t width) const {
  const auto factor = vae_factor_;
  return {1, transformer_->config().in_channels, height / factor, width / factor};
}

}  // namespace hybridiff::models
