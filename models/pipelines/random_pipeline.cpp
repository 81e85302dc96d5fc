#include "models/pipelines/random_pipeline.hpp"

#include <torch/torch.h>

#include "models/errors.hpp"
#include "models/networks/sd3_transformer.hpp"
#include "models/networks/unet.hpp"

namespace hybridiff::models {

random_pipeline::random_pipeline(const std::filesystem::path& denoiser_dir, const std::filesystem::path& scheduler_dir,
                                 const load_options& options, std::uint64_t seed, bool channels_last)
    : seed_(seed) {
  placement_ = options;
  torch::manual_seed(seed);
  const auto values = read_config(denoiser_dir / "config.json");
  class_name_ = values.get_or<std::string>("_class_name", "");
  if (class_name_ == "UNet2DConditionModel") {
    unet_ = UNet2DConditionModel(unet_config::from(values));
    place_module(*unet_, options);
    if (options.device.is_cuda() && channels_last) unet_->use_channels_last();  // as load_unet
    unet_->eval();
  } else if (class_name_ == "SD3Transformer2DModel") {
    transformer_ = SD3Transformer2DModel(sd3_transformer_config::from(values));
    place_module(*transformer_, options);
    transformer_->eval();
  } else {
    throw error((denoiser_dir / "config.json").string() +
                ": random pipelines support UNet2DConditionModel and "
                "SD3Transformer2DModel, not '" +
                class_name_ + "'");
  }
  if (!scheduler_dir.empty()) scheduler_ = read_config(scheduler_dir / "scheduler_config.json");
  has_scheduler_ = !scheduler_dir.empty();
  if (options.fp8) quantize_denoiser_to_fp8();
}

std::string random_pipeline::class_name() const { return "random " + class_name_; }

generation_plan random_pipeline::plan(const generation_request& request) const {
  // Multiples of 16: the VAE factor 8 times SD3's patch size 2.
  return settle_plan(request, 50, 1024, 5.0, 16, "16 (VAE factor × patch size)", 8192);
}

prompt_conditioning random_pipeline::encode_prompt(const generation_request&, const generation_plan& plan) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed_);
  auto options = torch::TensorOptions().dtype(placement_.dtype.value_or(at::kFloat)).device(placement_.device);
  auto random = [&](std::vector<std::int64_t> shape) {
    return torch::randn(shape, generator, torch::kFloat32).to(options.device(), options.dtype());
  };
  auto branch = [&]() {
    branch_conditioning b;
    if (unet_) {
      const auto& c = unet_->config();
      b.context = random({1, 77, c.cross_attention_dim.back()});
      if (c.text_time) {
        b.pooled = random({1, c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim});
        b.time_ids = torch::tensor({static_cast<float>(plan.height), static_cast<float>(plan.width), 0.f, 0.f,
                                    static_cast<float>(plan.height), static_cast<float>(plan.width)})
                         .unsqueeze(0)
                         .to(options.device(), options.dtype());
      }
    } else {
      const auto& c = transformer_->config();
      b.context = random({1, 77 + 256, c.joint_attention_dim});  // CLIP 77 + T5 256 tokens
      b.pooled = random({1, c.pooled_projection_dim});
    }
    return b;
  };
  auto negative = branch();
  return {negative, branch()};
}

at::Tensor random_pipeline::predict(const at::Tensor& latents, const at::Tensor& timestep,
                                    const branch_conditioning& cond, module_runner* runner) {
  if (unet_) {
    const UNet2DConditionModelImpl::conditioning c{cond.context, cond.pooled, cond.time_ids};
    return runner ? unet_->forward(latents, timestep, c, *runner) : unet_->forward(latents, timestep, c);
  }
  return runner ? transformer_->forward(latents, timestep, cond.context, cond.pooled, *runner)
                : transformer_->forward(latents, timestep, cond.context, cond.pooled);
}

denoiser_family random_pipeline::family() const {
  return transformer_ ? denoiser_family::transformer : denoiser_family::unet;
}

std::int64_t random_pipeline::transformer_blocks() const { return transformer_ ? transformer_->num_blocks() : 0; }

std::unique_ptr<sampler> random_pipeline::make_sampler(const std::string& name) const {
  if (!has_scheduler_)
    throw error("random pipeline: made without a scheduler config, it times the denoiser only (no sampler)");
  return models::make_sampler(scheduler_, name);
}

at::Tensor random_pipeline::decode(const at::Tensor&) {
  throw error("random pipeline: there is no VAE to decode with (this pipeline only times the denoiser)");
}

std::vector<std::int64_t> random_pipeline::latent_shape(std::int64_t height, std::int64_t width) const {
  const auto channels = unet_ ? unet_->config().in_channels : transformer_->config().in_channels;
  return {1, channels, height / 8, width / 8};
}

torch::nn::Module& random_pipeline::denoiser() {
  if (unet_) return *unet_;
  return *transformer_;
}

bool random_pipeline::channels_last() const { return unet_ && unet_->channels_last(); }

std::unique_ptr<random_pipeline> make_random_pipeline(const std::filesystem::path& denoiser_config_dir,
                                                      const std::filesystem::path& scheduler_config_dir,
                                                      const load_options& options, std::uint64_t seed,
                                                      bool channels_last) {
  return std::make_unique<random_pipeline>(denoiser_config_dir, scheduler_config_dir, options, seed, channels_last);
}

}  // namespace hybridiff::models
