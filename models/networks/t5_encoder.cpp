#include "models/networks/t5_encoder.hpp"

#include <sentencepiece_processor.h>

#include <cmath>

#include "models/errors.hpp"

namespace hybridiff::models {
namespace {

// T5's RMS norm: no mean subtraction, no bias; computed in float32.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  auto variance = x.to(torch::kFloat32).pow(2).mean(-1, true);
  auto normed = (x.to(torch::kFloat32) * torch::rsqrt(variance + eps)).to(weight.scalar_type());
  return weight * normed;
}

// Bidirectional relative position buckets: half the buckets per direction, exact below max_exact, log-spaced
// up to max_distance.
at::Tensor relative_buckets(const at::Tensor& relative, std::int64_t buckets, std::int64_t max_distance) {
  buckets /= 2;
  auto result = (relative > 0).to(torch::kLong) * buckets;
  auto distance = relative.abs();
  const auto max_exact = buckets / 2;
  auto is_small = distance < max_exact;
  auto large = max_exact + (torch::log(distance.to(torch::kFloat32) / max_exact) /
                            std::log(static_cast<double>(max_distance) / static_cast<double>(max_exact)) *
                            static_cast<double>(buckets - max_exact))
                               .to(torch::kLong);
  large = torch::clamp_max(large, buckets - 1);
  return result + torch::where(is_small, distance, large);
}

}  // namespace

t5_config t5_config::from(const config& values) {
  t5_config c;
  c.vocab_size = values.get<std::int64_t>("vocab_size");
  c.d_model = values.get<std::int64_t>("d_model");
  c.d_kv = values.get<std::int64_t>("d_kv");
  c.d_ff = values.get<std::int64_t>("d_ff");
  c.num_layers = values.get<std::int64_t>("num_layers");
  c.num_heads = values.get<std::int64_t>("num_heads");
  c.relative_attention_num_buckets = values.get<std::int64_t>("relative_attention_num_buckets");
  c.relative_attention_max_distance = values.get<std::int64_t>("relative_attention_max_distance");
  c.layer_norm_epsilon = values.get<double>("layer_norm_epsilon");
  c.source = values.source().string();
  const auto projection = values.get<std::string>("feed_forward_proj");
  if (projection != "gated-gelu")
    values.reject("feed_forward_proj", "'" + projection + "' is not supported (T5 v1.1: gated-gelu)");
  c.dense_act_fn = values.get_or<std::string>("dense_act_fn", "gelu_new");
  activate(torch::zeros({1}), c.dense_act_fn, c.source);
  return c;
}

T5EncoderModelImpl::T5EncoderModelImpl(const t5_config& config) : config_(config) {
  shared = register_module("shared", embedding(config.vocab_size, config.d_model));
  auto encoder = register_module("encoder", std::make_shared<torch::nn::Module>());
  auto blocks = encoder->register_module("block", torch::nn::ModuleList());
  const auto inner = config.num_heads * config.d_kv;
  for (std::int64_t i = 0; i < config.num_layers; ++i) {
    auto block = std::make_shared<torch::nn::Module>();
    auto layer = block->register_module("layer", torch::nn::ModuleList());
    auto attention_layer = std::make_shared<torch::nn::Module>();
    auto self_attention = attention_layer->register_module("SelfAttention", std::make_shared<torch::nn::Module>());
    layer_weights weights;
    weights.q = self_attention->register_module("q", linear(config.d_model, inner, false));
    weights.k = self_attention->register_module("k", linear(config.d_model, inner, false));
    weights.v = self_attention->register_module("v", linear(config.d_model, inner, false));
    weights.o = self_attention->register_module("o", linear(inner, config.d_model, false));
    if (i == 0)
      relative_attention_bias = self_attention->register_module(
          "relative_attention_bias", embedding(config.relative_attention_num_buckets, config.num_heads));
    weights.attention_norm = attention_layer->register_module("layer_norm", std::make_shared<torch::nn::Module>())
                                 ->register_parameter("weight", torch::ones({config.d_model}));
    layer->push_back(attention_layer);
    auto feed_forward_layer = std::make_shared<torch::nn::Module>();
    auto dense = feed_forward_layer->register_module("DenseReluDense", std::make_shared<torch::nn::Module>());
    weights.wi_0 = dense->register_module("wi_0", linear(config.d_model, config.d_ff, false));
    weights.wi_1 = dense->register_module("wi_1", linear(config.d_model, config.d_ff, false));
    weights.wo = dense->register_module("wo", linear(config.d_ff, config.d_model, false));
    weights.feed_forward_norm = feed_forward_layer->register_module("layer_norm", std::make_shared<torch::nn::Module>())
                                    ->register_parameter("weight", torch::ones({config.d_model}));
    layer->push_back(feed_forward_layer);
    blocks->push_back(block);
    layers_.push_back(weights);
  }
  final_layer_norm = encoder->register_module("final_layer_norm", std::make_shared<torch::nn::Module>())
                         ->register_parameter("weight", torch::ones({config.d_model}));
}

at::Tensor T5EncoderModelImpl::position_bias(std::int64_t length, const c10::Device& device, at::ScalarType dtype) {
  auto positions = torch::arange(length, torch::TensorOptions().dtype(torch::kLong).device(device));
  auto relative = positions.unsqueeze(0) - positions.unsqueeze(1);  // [L, L]: memory − query
  auto buckets = relative_buckets(relative, config_.relative_attention_num_buckets, config_.relative_attention_max_distance);
  return relative_attention_bias(buckets).permute({2, 0, 1}).unsqueeze(0).to(dtype);  // [1, heads, L, L]
}

at::Tensor T5EncoderModelImpl::forward(const at::Tensor& input_ids) {
  TORCH_CHECK(input_ids.dim() == 2, "T5 encoder: input_ids must be [B, L], got ", input_ids.sizes());
  auto h = shared(input_ids);  // [B, L, d_model]
  auto bias = position_bias(input_ids.size(1), input_ids.device(), h.scalar_type());
  for (auto& layer : layers_) {
    auto normed = rms_norm(h, layer.attention_norm, config_.layer_norm_epsilon);
    auto q = split_heads(layer.q(normed), config_.num_heads), k = split_heads(layer.k(normed), config_.num_heads),
         v = split_heads(layer.v(normed), config_.num_heads);
    // T5 does not scale the scores by 1/sqrt(d); the position bias is the additive mask.
    auto attended = at::scaled_dot_product_attention(q, k, v, bias, 0.0, false, 1.0);
    h = h + layer.o(merge_heads(attended));
    normed = rms_norm(h, layer.feed_forward_norm, config_.layer_norm_epsilon);
    h = h + layer.wo(activate(layer.wi_0(normed), config_.dense_act_fn, config_.source) * layer.wi_1(normed));
  }
  return rms_norm(h, final_layer_norm, config_.layer_norm_epsilon);
}

T5EncoderModel load_t5_encoder(const std::filesystem::path& dir, const load_options& options) {
  const auto config = t5_config::from(read_config(dir / "config.json", "T5EncoderModel"));
  T5EncoderModel model = [&] {
    uninitialized_weights for_the_checkpoint;
    return T5EncoderModel(config);
  }();
  load_state_dict(*model, component_weights(dir, options), options);
  model->eval();
  return model;
}

t5_tokenizer t5_tokenizer::load(const std::filesystem::path& dir) {
  const auto path = dir / "spiece.model";
  if (!std::filesystem::exists(path)) throw error(path.string() + ": file is missing (T5's SentencePiece model)");
  t5_tokenizer tokenizer;
  tokenizer.processor_ = std::make_shared<sentencepiece::SentencePieceProcessor>();
  auto status = tokenizer.processor_->Load(path.string());
  if (!status.ok()) throw error(path.string() + ": not a SentencePiece model: " + status.ToString());
  if (tokenizer.processor_->eos_id() < 0) throw error(path.string() + ": the model defines no </s> token");
  return tokenizer;
}

std::int64_t t5_tokenizer::eos_id() const { return processor_->eos_id(); }

std::int64_t t5_tokenizer::pad_id() const { return std::max(0, processor_->pad_id()); }

std::vector<std::int64_t> t5_tokenizer::encode(const std::string& text, std::size_t max_length, bool* truncated) const {
  if (max_length < 1) throw error("T5 tokenizer: max_length must be at least 1");
  std::vector<int> pieces;
  auto status = processor_->Encode(text, &pieces);
  if (!status.ok()) throw error("T5 tokenizer: " + status.ToString());
  if (truncated != nullptr) *truncated = pieces.size() > max_length - 1;
  if (pieces.size() > max_length - 1) pieces.resize(max_length - 1);
  std::vector<std::int64_t> ids(pieces.begin(), pieces.end());
  ids.push_back(eos_id());
  ids.resize(max_length, pad_id());
  return ids;
}

}  // namespace hybridiff::models
