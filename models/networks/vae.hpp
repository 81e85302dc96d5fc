#pragma once

#include <optional>

#include "models/io/config.hpp"
#include "models/nn/nn.hpp"
#include "models/io/state_dict.hpp"

namespace hybridiff::models {

struct vae_config {
  std::int64_t in_channels, out_channels, latent_channels, layers_per_block, norm_num_groups;
  std::vector<std::int64_t> block_out_channels;
  double scaling_factor;
  std::optional<double> shift_factor;
  bool force_upcast, use_quant_conv, use_post_quant_conv, mid_block_add_attention;

  /// Pixels per latent along each axis: 2^(levels − 1).
  std::int64_t spatial_factor() const { return std::int64_t{1} << (block_out_channels.size() - 1); }
  static vae_config from(const config& values);
};

/// One resolution level of the VAE (`DownEncoderBlock2D` / `UpDecoderBlock2D`) or its mid block
/// (`UNetMidBlock2D`: resnet, spatial self-attention, resnet). Ref: diffusers/models/unets/unet_2d_blocks.py.
class VAEBlockImpl : public torch::nn::Module {
 public:
  enum class kind { down, mid, up };
  VAEBlockImpl(kind role, std::int64_t in_channels, std::int64_t out_channels, std::int64_t num_layers,
               std::int64_t groups, bool resample, bool attention);
  at::Tensor forward(at::Tensor h);

  torch::nn::ModuleList resnets{nullptr}, attentions{nullptr}, samplers{nullptr};

 private:
  kind role_;
};
TORCH_MODULE(VAEBlock);

/// The encoder or decoder half of `AutoencoderKL`. Ref: diffusers/models/autoencoders/vae.py.
class VAECoderImpl : public torch::nn::Module {
 public:
  VAECoderImpl(const vae_config& config, bool is_decoder);
  at::Tensor forward(const at::Tensor& x);

  torch::nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  torch::nn::GroupNorm conv_norm_out{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  VAEBlock mid_block{nullptr};

 private:
  bool is_decoder_;
};
TORCH_MODULE(VAECoder);

/// diffusers' `AutoencoderKL`. Scaling (`scaling_factor`, `shift_factor`) is the pipeline's job, as in diffusers.
class AutoencoderKLImpl : public torch::nn::Module {
 public:
  explicit AutoencoderKLImpl(const vae_config& config);
  /// z [B, latent, h, w] (already unscaled) -> image [B, out, h·f, w·f] in about [−1, 1]
  at::Tensor decode(const at::Tensor& z);
  /// What a pipeline decodes: its final latents (scaled by `scaling_factor`, shifted by `shift_factor`) ->
  /// image [B, out, H, W] in [0, 1], float32 on the CPU. Runs in the VAE's own dtype.
  at::Tensor decode_to_image(const at::Tensor& latents);
  /// image [B, in, H, W] in [−1, 1] -> the latent distribution's mean [B, latent, H/f, W/f] (unscaled)
  at::Tensor encode_mean(const at::Tensor& image);
  const vae_config& config() const { return config_; }
  /// As the UNet's: conv weights and activations channels-last (images and latents come back in the standard
  /// layout). CUDA weights only (else hybridiff::error); `load_vae` calls it for CUDA.
  void use_channels_last();
  bool channels_last() const { return layout_ == at::MemoryFormat::ChannelsLast; }

  VAECoder encoder{nullptr}, decoder{nullptr};
  torch::nn::Conv2d quant_conv{nullptr}, post_quant_conv{nullptr};

 private:
  vae_config config_;
  at::MemoryFormat layout_ = at::MemoryFormat::Contiguous;  ///< the layout the coders run in
};
TORCH_MODULE(AutoencoderKL);

/// Builds the VAE of a component folder (config.json + weights) and loads its weights.
AutoencoderKL load_vae(const std::filesystem::path& dir, const load_options& options = {});

}  // namespace hybridiff::models
