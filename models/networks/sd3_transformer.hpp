#pragma once

#include <functional>

#include "models/io/config.hpp"
#include "models/nn/module_runner.hpp"
#include "models/nn/nn.hpp"
#include "models/io/state_dict.hpp"

namespace hybridiff::models {

struct sd3_transformer_config {
  std::int64_t sample_size, patch_size, in_channels, out_channels, num_layers, attention_head_dim, num_attention_heads,
      joint_attention_dim, caption_projection_dim, pooled_projection_dim, pos_embed_max_size;
  bool qk_norm = false;  // "rms_norm" (SD3.5): RMSNorm of q and k per head
  std::vector<std::int64_t>
      dual_attention_layers;  // MMDiT-X (SD3.5 Medium): blocks with a second, image-only attention
  std::int64_t inner_dim() const { return num_attention_heads * attention_head_dim; }
  static sd3_transformer_config from(const config& values);
};

/// diffusers' `JointTransformerBlock` (MMDiT): joint attention over [image tokens, context tokens], adaLN-Zero
/// modulation from the conditioning; the last block is `context_pre_only` (no context output). SD3.5 adds an
/// RMSNorm of each head's q and k (`qk_norm`) and, in MMDiT-X blocks (`dual_attention`), a second self-attention
/// over the image tokens (`attn2`) modulated by three more adaLN outputs.
/// Ref: diffusers/models/attention.py JointTransformerBlock, attention_processor.py JointAttnProcessor2_0.
class JointTransformerBlockImpl : public torch::nn::Module {
 public:
  JointTransformerBlockImpl(std::int64_t dim, std::int64_t heads, std::int64_t head_dim, bool context_pre_only,
                            bool qk_norm = false, bool dual_attention = false);
  /// hidden [B, N, dim] (image), context [B, S, dim], temb [B, dim] -> {context' (undefined when context_pre_only), hidden'}
  std::pair<at::Tensor, at::Tensor> forward(const at::Tensor& hidden, const at::Tensor& context, const at::Tensor& temb);

  bool context_pre_only() const { return context_pre_only_; }

 private:
  // attn2 (dual attention): self-attention over the image tokens. norm_hidden [B, N, D] -> [B, N, D]
  at::Tensor image_self_attention(const at::Tensor& norm_hidden);

  bool context_pre_only_, dual_attention_;
  std::int64_t heads_;
  Linear norm1_linear{nullptr}, norm1_context_linear{nullptr};
  Linear to_q{nullptr}, to_k{nullptr}, to_v{nullptr}, add_q_proj{nullptr}, add_k_proj{nullptr},
      add_v_proj{nullptr}, to_out_0{nullptr}, to_add_out{nullptr};
  // qk_norm: RMSNorm weights [head_dim] of attn.norm_q, norm_k, norm_added_q, norm_added_k (undefined without).
  at::Tensor norm_q, norm_k, norm_added_q, norm_added_k;
  Linear attn2_to_q{nullptr}, attn2_to_k{nullptr}, attn2_to_v{nullptr}, attn2_to_out_0{nullptr};
  at::Tensor attn2_norm_q, attn2_norm_k;
  Linear ff_in{nullptr}, ff_out{nullptr}, ff_context_in{nullptr}, ff_context_out{nullptr};
};
TORCH_MODULE(JointTransformerBlock);

/// diffusers' `SD3Transformer2DModel`: SD3-medium, SD3.5 Large (qk_norm) and SD3.5 Medium (qk_norm, dual attention
/// in the first blocks). Skip-layer guidance is not implemented. The forward pass is
/// exposed in three parts so that a pipeline stage can run a contiguous group of blocks:
/// `embed` -> `run_blocks(begin, end)` for each group -> `finish`.
/// Ref: diffusers/models/transformers/transformer_sd3.py.
class SD3Transformer2DModelImpl : public torch::nn::Module {
 public:
  explicit SD3Transformer2DModelImpl(const sd3_transformer_config& config);

  /// The running state between block groups: image tokens [B, N, D], context tokens [B, S, D] (undefined after
  /// the last block), conditioning [B, D], and the latent size for unpatchify.
  struct state {
    at::Tensor hidden, context, temb;
    std::int64_t height = 0, width = 0;
  };
  using recorder = std::function<void(const std::string& name, const at::Tensor& value)>;

  /// latents [B, C, H, W], timestep [B] or scalar, context [B, S, joint_attention_dim], pooled [B, pooled_dim]
  state embed(const at::Tensor& latents, const at::Tensor& timestep, const at::Tensor& context, const at::Tensor& pooled,
              const recorder& record = nullptr);
  /// Runs transformer_blocks[begin, end) on `s` in place.
  void run_blocks(state& s, std::int64_t begin, std::int64_t end, const recorder& record = nullptr);
  /// norm_out, proj_out, unpatchify -> [B, out_channels, H, W]
  at::Tensor finish(const state& s, const recorder& record = nullptr);
  /// All three.
  at::Tensor forward(const at::Tensor& latents, const at::Tensor& timestep, const at::Tensor& context,
                     const at::Tensor& pooled, const recorder& record = nullptr);
  /// The same with every block (`transformer_blocks.b`, output {context, hidden}), `norm_out` and `proj_out` going
  /// through `runner`; the embeddings and the unpatchify are computed on every call, as the reference.
  at::Tensor forward(const at::Tensor& latents, const at::Tensor& timestep, const at::Tensor& context,
                     const at::Tensor& pooled, module_runner& runner);

  const sd3_transformer_config& config() const { return config_; }
  std::int64_t num_blocks() const { return static_cast<std::int64_t>(transformer_blocks->size()); }

  torch::nn::ModuleList transformer_blocks{nullptr};

 private:
  at::Tensor norm_out(const state& s);
  at::Tensor unpatchify(const at::Tensor& projected, const state& s) const;

  sd3_transformer_config config_;
  torch::nn::Conv2d patch_proj{nullptr};
  at::Tensor pos_embed_table;  // [1, max², D], the checkpoint's "pos_embed.pos_embed"
  Linear timestep_linear_1{nullptr}, timestep_linear_2{nullptr}, text_linear_1{nullptr}, text_linear_2{nullptr};
  Linear context_embedder{nullptr}, norm_out_linear{nullptr}, proj_out{nullptr};
};
TORCH_MODULE(SD3Transformer2DModel);

/// Builds the transformer of a component folder (config.json + weights) and loads its weights.
SD3Transformer2DModel load_sd3_transformer(const std::filesystem::path& dir, const load_options& options = {});

}  // namespace hybridiff::models
