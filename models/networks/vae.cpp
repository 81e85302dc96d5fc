#include "models/networks/vae.hpp"

namespace hybridiff::models {

vae_config vae_config::from(const config& values) {
  vae_config c;
  c.in_channels = values.get<std::int64_t>("in_channels");
  c.out_channels = values.get<std::int64_t>("out_channels");
  c.latent_channels = values.get<std::int64_t>("latent_channels");
  c.layers_per_block = values.get<std::int64_t>("layers_per_block");
  c.norm_num_groups = values.get<std::int64_t>("norm_num_groups");
  c.block_out_channels = values.get<std::vector<std::int64_t>>("block_out_channels");
  c.scaling_factor = values.get<double>("scaling_factor");
  if (values.has("shift_factor")) c.shift_factor = values.get<double>("shift_factor");
  c.force_upcast = values.get<bool>("force_upcast");
  c.use_quant_conv = values.get<bool>("use_quant_conv");
  c.use_post_quant_conv = values.get<bool>("use_post_quant_conv");
  c.mid_block_add_attention = values.get<bool>("mid_block_add_attention");
  if (c.block_out_channels.empty()) values.reject("block_out_channels", "is empty");
  auto down = values.get<std::vector<std::string>>("down_block_types");
  auto up = values.get<std::vector<std::string>>("up_block_types");
  for (const auto& type : down)
    if (type != "DownEncoderBlock2D") values.reject("down_block_types", "holds unsupported block type '" + type + "'");
  for (const auto& type : up)
    if (type != "UpDecoderBlock2D") values.reject("up_block_types", "holds unsupported block type '" + type + "'");
  if (down.size() != c.block_out_channels.size() || up.size() != c.block_out_channels.size())
    values.reject("block_out_channels", "needs one entry per down and up block");
  if (values.get<std::string>("act_fn") != "silu") values.reject("act_fn", "is not supported (silu only)");
  return c;
}

VAEBlockImpl::VAEBlockImpl(kind role, std::int64_t in_channels, std::int64_t out_channels, std::int64_t num_layers,
                           std::int64_t groups, bool resample, bool attention)
    : role_(role) {
  resnets = register_module("resnets", torch::nn::ModuleList());
  if (role == kind::mid) {
    if (attention) attentions = register_module("attentions", torch::nn::ModuleList());
    resnets->push_back(ResnetBlock2D(in_channels, in_channels, 0, groups, 1e-6));
    if (attention) attentions->push_back(Attention(in_channels, in_channels, 1, in_channels, true, groups, 1e-6));
    resnets->push_back(ResnetBlock2D(in_channels, in_channels, 0, groups, 1e-6));
    return;
  }
  for (std::int64_t i = 0; i < num_layers; ++i)
    resnets->push_back(ResnetBlock2D(i == 0 ? in_channels : out_channels, out_channels, 0, groups, 1e-6));
  if (resample) {
    samplers = register_module(role == kind::down ? "downsamplers" : "upsamplers", torch::nn::ModuleList());
    if (role == kind::down)
      samplers->push_back(Downsample2D(out_channels, 0));
    else
      samplers->push_back(Upsample2D(out_channels));
  }
}

at::Tensor VAEBlockImpl::forward(at::Tensor h) {
  if (role_ == kind::mid) {
    h = resnets[0]->as<ResnetBlock2D>()->forward(h);
    if (attentions) h = attentions[0]->as<Attention>()->forward(h);
    return resnets[1]->as<ResnetBlock2D>()->forward(h);
  }
  for (const auto& resnet : *resnets) h = resnet->as<ResnetBlock2D>()->forward(h);
  if (samplers) {
    if (role_ == kind::down) return samplers[0]->as<Downsample2D>()->forward(h);
    return samplers[0]->as<Upsample2D>()->forward(h);
  }
  return h;
}

VAECoderImpl::VAECoderImpl(const vae_config& config, bool is_decoder) : is_decoder_(is_decoder) {
  const auto& channels = config.block_out_channels;
  const auto levels = channels.size();
  const auto groups = config.norm_num_groups;
  if (is_decoder) {
    conv_in = register_module("conv_in", conv2d(config.latent_channels, channels.back(), 3, 1, 1));
    mid_block = register_module("mid_block", VAEBlock(VAEBlockImpl::kind::mid, channels.back(), channels.back(), 1,
                                                      groups, false, config.mid_block_add_attention));
    blocks = register_module("up_blocks", torch::nn::ModuleList());
    auto previous = channels.back();
    for (std::size_t i = 0; i < levels; ++i) {
      auto out = channels[levels - 1 - i];
      blocks->push_back(VAEBlock(VAEBlockImpl::kind::up, previous, out, config.layers_per_block + 1, groups,
                                 i + 1 < levels, false));
      previous = out;
    }
    conv_norm_out = register_module("conv_norm_out", group_norm(groups, channels[0], 1e-6));
    conv_out = register_module("conv_out", conv2d(channels[0], config.out_channels, 3, 1, 1));
  } else {
    conv_in = register_module("conv_in", conv2d(config.in_channels, channels[0], 3, 1, 1));
    blocks = register_module("down_blocks", torch::nn::ModuleList());
    auto previous = channels[0];
    for (std::size_t i = 0; i < levels; ++i) {
      blocks->push_back(VAEBlock(VAEBlockImpl::kind::down, previous, channels[i], config.layers_per_block, groups,
                                 i + 1 < levels, false));
      previous = channels[i];
    }
    mid_block = register_module("mid_block", VAEBlock(VAEBlockImpl::kind::mid, channels.back(), channels.back(), 1,
                                                      groups, false, config.mid_block_add_attention));
    conv_norm_out = register_module("conv_norm_out", group_norm(groups, channels.back(), 1e-6));
    conv_out = register_module("conv_out", conv2d(channels.back(), 2 * config.latent_channels, 3, 1, 1));
  }
}

at::Tensor VAECoderImpl::forward(const at::Tensor& x) {
  auto h = conv_in(x);
  if (is_decoder_) {
    h = mid_block(h);
    for (const auto& block : *blocks) h = block->as<VAEBlock>()->forward(h);
  } else {
    for (const auto& block : *blocks) h = block->as<VAEBlock>()->forward(h);
    h = mid_block(h);
  }
  return conv_out(apply_group_norm(conv_norm_out, h, true));
}

AutoencoderKLImpl::AutoencoderKLImpl(const vae_config& config) : config_(config) {
  encoder = register_module("encoder", VAECoder(config, false));
  decoder = register_module("decoder", VAECoder(config, true));
  if (config.use_quant_conv)
    quant_conv = register_module("quant_conv", conv2d(2 * config.latent_channels, 2 * config.latent_channels, 1));
  if (config.use_post_quant_conv)
    post_quant_conv = register_module("post_quant_conv", conv2d(config.latent_channels, config.latent_channels, 1));
}

at::Tensor AutoencoderKLImpl::decode(const at::Tensor& z) {
  TORCH_CHECK(z.dim() == 4 && z.size(1) == config_.latent_channels, "VAE decode: latents must be [B, ",
              config_.latent_channels, ", h, w], got ", z.sizes());
  const auto input = z.contiguous(layout_);
  return decoder(post_quant_conv ? post_quant_conv(input) : input).contiguous();
}

at::Tensor AutoencoderKLImpl::decode_to_image(const at::Tensor& latents) {
  torch::NoGradGuard no_grad;
  auto z = latents.to(decoder->conv_in->weight.scalar_type()) / config_.scaling_factor;
  if (config_.shift_factor) z = z + *config_.shift_factor;
  return (decode(z) / 2 + 0.5).clamp(0, 1).to(torch::kCPU, torch::kFloat32);
}

at::Tensor AutoencoderKLImpl::encode_mean(const at::Tensor& image) {
  TORCH_CHECK(image.dim() == 4 && image.size(1) == config_.in_channels, "VAE encode: image must be [B, ",
              config_.in_channels, ", H, W], got ", image.sizes());
  auto moments = encoder(image.contiguous(layout_));
  if (quant_conv) moments = quant_conv(moments);
  return moments.chunk(2, 1)[0].contiguous();  // mean; the second half is the log-variance
}

void AutoencoderKLImpl::use_channels_last() {
  store_channels_last(*this, "VAE");
  layout_ = at::MemoryFormat::ChannelsLast;
}

AutoencoderKL load_vae(const std::filesystem::path& dir, const load_options& options) {
  const auto config = vae_config::from(read_config(dir / "config.json", "AutoencoderKL"));
  AutoencoderKL model = [&] {
    uninitialized_weights for_the_checkpoint;
    return AutoencoderKL(config);
  }();
  load_state_dict(*model, component_weights(dir, options), options);
  if (options.device.is_cuda()) model->use_channels_last();
  model->eval();
  return model;
}

}  // namespace hybridiff::models
