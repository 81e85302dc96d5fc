#pragma once

#include <functional>
#include <map>
#include <vector>

#include "models/io/config.hpp"
#include "models/nn/module_runner.hpp"
#include "models/nn/nn.hpp"
#include "models/io/state_dict.hpp"

namespace hybridiff::models {

/// `BasicTransformerBlock` (layer_norm type): self-attention, cross-attention, GEGLU feed-forward, each pre-norm
/// with a residual. Ref: diffusers/models/attention.py.
class BasicTransformerBlockImpl : public torch::nn::Module {
 public:
  BasicTransformerBlockImpl(std::int64_t dim, std::int64_t heads, std::int64_t head_dim, std::int64_t context_dim);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& context);  // x [B, L, dim], context [B, S, context_dim]

  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr}, norm3{nullptr};
  Attention attn1{nullptr}, attn2{nullptr};
  std::shared_ptr<torch::nn::Module> ff;
  Linear ff_geglu_proj{nullptr}, ff_out{nullptr};
};
TORCH_MODULE(BasicTransformerBlock);

/// `Transformer2DModel` as the SD UNets use it: GroupNorm, proj_in (linear or 1×1 conv), `depth` transformer
/// blocks, proj_out, residual. Ref: diffusers/models/transformers/transformer_2d.py.
class Transformer2DModelImpl : public torch::nn::Module {
 public:
  Transformer2DModelImpl(std::int64_t channels, std::int64_t heads, std::int64_t depth, std::int64_t context_dim,
                         std::int64_t groups, bool linear_projection);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& context);  // [B, C, H, W] -> same

  torch::nn::GroupNorm norm{nullptr};
  std::shared_ptr<torch::nn::Module> proj_in, proj_out;
  torch::nn::ModuleList transformer_blocks{nullptr};

 private:
  bool linear_projection_;
};
TORCH_MODULE(Transformer2DModel);

/// The UNet's down and up blocks (`DownBlock2D`, `CrossAttnDownBlock2D`, `UpBlock2D`, `CrossAttnUpBlock2D`) and the
/// mid block (`UNetMidBlock2DCrossAttn`): resnets, optional attentions, optional down/upsampler.
/// Ref: diffusers/models/unets/unet_2d_blocks.py.
class UNetBlockImpl : public torch::nn::Module {
 public:
  enum class kind { down, mid, up };
  struct options {
    kind role = kind::down;
    std::int64_t in_channels = 0, out_channels = 0, prev_output_channels = 0, temb_channels = 0;
    std::int64_t num_layers = 1, groups = 32, heads = 1, context_dim = 0;
    std::vector<std::int64_t> transformer_depth;  ///< per layer; empty: no attention
    double eps = 1e-5, output_scale_factor = 1.0;
    bool resample = false;  ///< downsampler (down) or upsampler (up)
    std::int64_t downsample_padding = 1;
    bool linear_projection = true;
  };
  explicit UNetBlockImpl(const options& opts);

  /// Down block: returns the hidden state; appends each layer's output (and the downsampled one) to `skips`.
  at::Tensor forward_down(at::Tensor h, const at::Tensor& temb, const at::Tensor& context, std::vector<at::Tensor>& skips);
  /// Mid block.
  at::Tensor forward_mid(at::Tensor h, const at::Tensor& temb, const at::Tensor& context);
  /// Up block: consumes one skip per layer from the back of `skips`; upsamples to `upsample_size` (e.g. the next
  /// skip's). With a runner, each resnet, attention and the upsampler is a module of its own, named
  /// `<prefix>.resnets.j`, `<prefix>.attentions.j`, `<prefix>.upsamplers`.
  at::Tensor forward_up(at::Tensor h, const at::Tensor& temb, const at::Tensor& context, std::vector<at::Tensor>& skips,
                        c10::IntArrayRef upsample_size, module_runner* runner = nullptr, const std::string& prefix = "");
  std::size_t num_resnets() const { return resnets->size(); }

  torch::nn::ModuleList resnets{nullptr}, attentions{nullptr}, samplers{nullptr};
};
TORCH_MODULE(UNetBlock);

/// The fields of `UNet2DConditionModel`'s config that hybridiff implements; `from` rejects the rest by name.
struct unet_config {
  std::int64_t in_channels, out_channels, conv_in_kernel, conv_out_kernel, norm_num_groups, downsample_padding;
  double norm_eps, mid_block_scale_factor, resnet_out_scale_factor;
  bool flip_sin_to_cos, use_linear_projection, text_time;
  double freq_shift;
  std::vector<std::int64_t> block_out_channels, layers_per_block, heads, cross_attention_dim;
  std::vector<std::vector<std::int64_t>> down_transformer_depth;  // per block, per layer
  std::vector<std::int64_t> up_transformer_depth;                 // per up block
  std::vector<bool> down_has_attention, up_has_attention;
  bool has_mid_block;
  std::int64_t addition_time_embed_dim = 0, projection_class_embeddings_input_dim = 0;

  static unet_config from(const config& values);
};

/// diffusers' `UNet2DConditionModel` for the SD/SDXL family. Ref: diffusers/models/unets/unet_2d_condition.py.
class UNet2DConditionModelImpl : public torch::nn::Module {
 public:
  explicit UNet2DConditionModelImpl(const unet_config& config);

  /// Conditioning for one call. `text_embeds` [B, D] and `time_ids` [B, 6] are SDXL's added conditions.
  struct conditioning {
    at::Tensor context;     ///< encoder_hidden_states [B, S, cross_attention_dim]
    at::Tensor text_embeds;
    at::Tensor time_ids;
  };
  /// Records intermediate outputs by diffusers module name (conv_in, down_blocks.i, mid_block, up_blocks.i).
  using recorder = std::function<void(const std::string& name, const at::Tensor& value)>;

  /// sample [B, in, H, W], timestep scalar/[1]/[B] -> ε [B, out, H, W]
  at::Tensor forward(const at::Tensor& sample, const at::Tensor& timestep, const conditioning& cond,
                     const recorder& record = nullptr);
  /// The same forward pass with every module of AsyncDiff's SDXL split tables going through `runner`:
  /// conv_in, down_blocks.i, mid_block, up_blocks.0.{resnets.j, attentions.j, upsamplers}, up_blocks.i (i > 0),
  /// conv_norm_out, conv_out. The time embedding is computed on every call.
  at::Tensor forward(const at::Tensor& sample, const at::Tensor& timestep, const conditioning& cond, module_runner& runner);
  /// The time embedding [B, 4·block_out[0]] (timestep projection + SDXL's text_time embedding).
  at::Tensor time_embedding(const at::Tensor& timestep, std::int64_t batch, at::ScalarType dtype, const conditioning& cond);

  const unet_config& config() const { return config_; }
  /// Stores the conv weights channels-last and runs the activations channels-last from conv_in on (cuDNN's
  /// native NHWC convolutions; GroupNorm through `apply_group_norm`'s NHWC kernels): no layout conversions around
  /// every convolution and norm. ε comes back in the standard layout. CUDA weights only (else hybridiff::error);
  /// `load_unet` calls it for CUDA.
  void use_channels_last();
  bool channels_last() const { return layout_ == at::MemoryFormat::ChannelsLast; }

  torch::nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  torch::nn::GroupNorm conv_norm_out{nullptr};
  std::shared_ptr<torch::nn::Module> time_embedding_module, add_embedding_module;
  Linear time_linear_1{nullptr}, time_linear_2{nullptr}, add_linear_1{nullptr}, add_linear_2{nullptr};
  torch::nn::ModuleList down_blocks{nullptr}, up_blocks{nullptr};
  UNetBlock mid_block{nullptr};

 private:
  at::Tensor forward_modules(const at::Tensor& sample, const at::Tensor& timestep, const conditioning& cond,
                             const recorder& record, module_runner* runner);

  unet_config config_;
  at::MemoryFormat layout_ = at::MemoryFormat::Contiguous;  ///< the activations' layout from conv_in on
};
TORCH_MODULE(UNet2DConditionModel);

/// Sinusoidal timestep features as diffusers' `get_timestep_embedding`: t [N] -> [N, dim] (float32).
at::Tensor timestep_embedding(const at::Tensor& timesteps, std::int64_t dim, bool flip_sin_to_cos, double freq_shift);

/// Builds the UNet of a component folder (config.json + weights) and loads its weights.
UNet2DConditionModel load_unet(const std::filesystem::path& dir, const load_options& options = {});

}  // namespace hybridiff::models
