#pragma once

#include <vector>

#include "models/io/config.hpp"
#include "models/nn/nn.hpp"
#include "models/io/state_dict.hpp"

namespace hybridiff::models {

/// transformers' CLIPTextConfig, the fields the text model reads.
struct clip_text_config {
  std::int64_t vocab_size, hidden_size, intermediate_size, projection_dim, num_hidden_layers, num_attention_heads,
      max_position_embeddings, eos_token_id;
  double layer_norm_eps;
  std::string hidden_act;
  std::string source;  ///< the config file, for error messages

  static clip_text_config from(const config& values);
};

/// What the text model returns.
struct clip_text_output {
  at::Tensor last_hidden_state;            ///< [B, 77, hidden], after final_layer_norm
  std::vector<at::Tensor> hidden_states;   ///< embeddings, then each layer's output: num_hidden_layers + 1 of [B, 77, hidden]
  at::Tensor pooled;                       ///< [B, hidden] at the EOS position; with projection: text_embeds [B, projection_dim]
};

class CLIPAttentionImpl : public torch::nn::Module {
 public:
  CLIPAttentionImpl(std::int64_t hidden, std::int64_t heads);
  at::Tensor forward(const at::Tensor& x);  // [B, L, hidden], causal
  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, out_proj{nullptr};

 private:
  std::int64_t heads_;
};
TORCH_MODULE(CLIPAttention);

class CLIPEncoderLayerImpl : public torch::nn::Module {
 public:
  explicit CLIPEncoderLayerImpl(const clip_text_config& config);
  at::Tensor forward(const at::Tensor& x);  // [B, L, hidden] -> same
  CLIPAttention self_attn{nullptr};
  torch::nn::LayerNorm layer_norm1{nullptr}, layer_norm2{nullptr};
  std::shared_ptr<torch::nn::Module> mlp;
  Linear fc1{nullptr}, fc2{nullptr};

 private:
  std::string activation_, source_;
};
TORCH_MODULE(CLIPEncoderLayer);

/// transformers' `CLIPTextModel` and, with `with_projection`, `CLIPTextModelWithProjection` (then `pooled` is
/// `text_embeds`). Keys: `text_model.embeddings.*`, `text_model.encoder.layers.N.*`, `text_model.final_layer_norm.*`,
/// `text_projection.weight`. Ref: transformers/models/clip/modeling_clip.py.
class CLIPTextModelImpl : public torch::nn::Module {
 public:
  CLIPTextModelImpl(const clip_text_config& config, bool with_projection);
  /// input_ids [B, L] (int64) -> outputs. No attention mask: diffusers' pipelines pass none.
  clip_text_output forward(const at::Tensor& input_ids);

  const clip_text_config& config() const { return config_; }

 private:
  clip_text_config config_;
  std::shared_ptr<torch::nn::Module> text_model_, embeddings_, encoder_;
  torch::nn::Embedding token_embedding_{nullptr}, position_embedding_{nullptr};
  torch::nn::ModuleList layers_{nullptr};
  torch::nn::LayerNorm final_layer_norm_{nullptr};
  Linear text_projection_{nullptr};
};
TORCH_MODULE(CLIPTextModel);

/// Builds the text encoder of a component folder (config.json + weights) and loads its weights.
CLIPTextModel load_clip_text_model(const std::filesystem::path& dir, bool with_projection, const load_options& options = {});

}  // namespace hybridiff::models
