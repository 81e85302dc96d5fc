#pragma once

#include <memory>

#include "models/io/config.hpp"
#include "models/nn/nn.hpp"
#include "models/io/state_dict.hpp"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace hybridiff::models {

struct t5_config {
  std::int64_t vocab_size, d_model, d_kv, d_ff, num_layers, num_heads, relative_attention_num_buckets,
      relative_attention_max_distance;
  double layer_norm_epsilon;
  std::string dense_act_fn, source;
  static t5_config from(const config& values);
};

/// transformers' `T5EncoderModel` (v1.1: gated-GELU feed-forward, RMS layer norm, relative position buckets
/// computed by layer 0 and shared by every layer, unscaled attention). Keys: `shared.weight`,
/// `encoder.block.N.layer.{0,1}.*`, `encoder.final_layer_norm.weight`.
/// Ref: transformers/models/t5/modeling_t5.py.
class T5EncoderModelImpl : public torch::nn::Module {
 public:
  explicit T5EncoderModelImpl(const t5_config& config);
  /// input_ids [B, L] -> last_hidden_state [B, L, d_model]. No attention mask, as diffusers' SD3 pipeline.
  at::Tensor forward(const at::Tensor& input_ids);
  const t5_config& config() const { return config_; }

 private:
  at::Tensor position_bias(std::int64_t length, const c10::Device& device, at::ScalarType dtype);

  t5_config config_;
  torch::nn::Embedding shared{nullptr}, relative_attention_bias{nullptr};
  struct layer_weights {
    Linear q{nullptr}, k{nullptr}, v{nullptr}, o{nullptr}, wi_0{nullptr}, wi_1{nullptr}, wo{nullptr};
    at::Tensor attention_norm, feed_forward_norm;
  };
  std::vector<layer_weights> layers_;
  at::Tensor final_layer_norm;
};
TORCH_MODULE(T5EncoderModel);

T5EncoderModel load_t5_encoder(const std::filesystem::path& dir, const load_options& options = {});

/// T5's SentencePiece tokenizer (`spiece.model`, read with libsentencepiece), as transformers' T5TokenizerFast
/// pads for SD3: the pieces' ids, then `</s>`, truncated to `max_length` (keeping `</s>`), padded with `<pad>`.
class t5_tokenizer {
 public:
  /// `dir` holds `spiece.model`. Throws naming the file when it is missing or not a SentencePiece model.
  static t5_tokenizer load(const std::filesystem::path& dir);
  /// Exactly `max_length` ids.
  std::vector<std::int64_t> encode(const std::string& text, std::size_t max_length, bool* truncated = nullptr) const;
  std::int64_t eos_id() const;
  std::int64_t pad_id() const;

 private:
  std::shared_ptr<sentencepiece::SentencePieceProcessor> processor_;
};

}  // namespace hybridiff::models
