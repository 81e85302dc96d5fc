#include "models/networks/clip_text_model.hpp"

namespace hybridiff::models {

clip_text_config clip_text_config::from(const config& values) {
  clip_text_config c;
  c.vocab_size = values.get<std::int64_t>("vocab_size");
  c.hidden_size = values.get<std::int64_t>("hidden_size");
  c.intermediate_size = values.get<std::int64_t>("intermediate_size");
  c.projection_dim = values.get<std::int64_t>("projection_dim");
  c.num_hidden_layers = values.get<std::int64_t>("num_hidden_layers");
  c.num_attention_heads = values.get<std::int64_t>("num_attention_heads");
  c.max_position_embeddings = values.get<std::int64_t>("max_position_embeddings");
  c.eos_token_id = values.get<std::int64_t>("eos_token_id");
  c.layer_norm_eps = values.get<double>("layer_norm_eps");
  c.hidden_act = values.get<std::string>("hidden_act");
  c.source = values.source().string();
  if (c.hidden_size % c.num_attention_heads != 0)
    values.reject("hidden_size", "(" + std::to_string(c.hidden_size) + ") is not divisible by num_attention_heads");
  activate(torch::zeros({1}), c.hidden_act, c.source);  // unsupported activations fail at load, not mid-run
  return c;
}

CLIPAttentionImpl::CLIPAttentionImpl(std::int64_t hidden, std::int64_t heads) : heads_(heads) {
  k_proj = register_module("k_proj", linear(hidden, hidden));
  v_proj = register_module("v_proj", linear(hidden, hidden));
  q_proj = register_module("q_proj", linear(hidden, hidden));
  out_proj = register_module("out_proj", linear(hidden, hidden));
}

at::Tensor CLIPAttentionImpl::forward(const at::Tensor& x) {
  auto q = split_heads(q_proj(x), heads_), k = split_heads(k_proj(x), heads_), v = split_heads(v_proj(x), heads_);
  return out_proj(merge_heads(attention(q, k, v, /*causal=*/true)));  // [B, L, hidden]
}

CLIPEncoderLayerImpl::CLIPEncoderLayerImpl(const clip_text_config& config)
    : activation_(config.hidden_act), source_(config.source) {
  self_attn = register_module("self_attn", CLIPAttention(config.hidden_size, config.num_attention_heads));
  layer_norm1 = register_module("layer_norm1", layer_norm(config.hidden_size, config.layer_norm_eps));
  mlp = register_module("mlp", std::make_shared<torch::nn::Module>());
  fc1 = mlp->register_module("fc1", linear(config.hidden_size, config.intermediate_size));
  fc2 = mlp->register_module("fc2", linear(config.intermediate_size, config.hidden_size));
  layer_norm2 = register_module("layer_norm2", layer_norm(config.hidden_size, config.layer_norm_eps));
}

at::Tensor CLIPEncoderLayerImpl::forward(const at::Tensor& x) {
  auto h = x + self_attn(layer_norm1(x));
  return h + fc2(activate(fc1(layer_norm2(h)), activation_, source_));
}

CLIPTextModelImpl::CLIPTextModelImpl(const clip_text_config& config, bool with_projection) : config_(config) {
  text_model_ = register_module("text_model", std::make_shared<torch::nn::Module>());
  embeddings_ = text_model_->register_module("embeddings", std::make_shared<torch::nn::Module>());
  token_embedding_ = embeddings_->register_module("token_embedding", embedding(config.vocab_size, config.hidden_size));
  position_embedding_ =
      embeddings_->register_module("position_embedding", embedding(config.max_position_embeddings, config.hidden_size));
  encoder_ = text_model_->register_module("encoder", std::make_shared<torch::nn::Module>());
  layers_ = encoder_->register_module("layers", torch::nn::ModuleList());
  for (std::int64_t i = 0; i < config.num_hidden_layers; ++i) layers_->push_back(CLIPEncoderLayer(config));
  final_layer_norm_ = text_model_->register_module("final_layer_norm", layer_norm(config.hidden_size, config.layer_norm_eps));
  if (with_projection)
    text_projection_ = register_module("text_projection", linear(config.hidden_size, config.projection_dim, false));
}

clip_text_output CLIPTextModelImpl::forward(const at::Tensor& input_ids) {
  TORCH_CHECK(input_ids.dim() == 2, "CLIP text model: input_ids must be [B, L], got ", input_ids.sizes());
  TORCH_CHECK(input_ids.size(1) <= config_.max_position_embeddings, "CLIP text model: ", input_ids.size(1),
              " tokens exceed max_position_embeddings ", config_.max_position_embeddings);
  auto positions = torch::arange(input_ids.size(1), input_ids.options());
  auto h = token_embedding_(input_ids) + position_embedding_(positions).unsqueeze(0);  // [B, L, hidden]
  clip_text_output out;
  out.hidden_states.push_back(h);
  for (const auto& layer : *layers_) {
    h = layer->as<CLIPEncoderLayer>()->forward(h);
    out.hidden_states.push_back(h);
  }
  out.last_hidden_state = final_layer_norm_(h);
  // The EOS position: transformers' legacy rule (eos id 2: the largest id) or the first EOS token.
  auto eos_index = config_.eos_token_id == 2 ? input_ids.argmax(-1)
                                             : (input_ids == config_.eos_token_id).to(torch::kInt).argmax(-1);
  auto rows = torch::arange(input_ids.size(0), input_ids.options());
  out.pooled = out.last_hidden_state.index({rows, eos_index});  // [B, hidden]
  if (text_projection_) out.pooled = text_projection_(out.pooled);  // [B, projection_dim]
  return out;
}

CLIPTextModel load_clip_text_model(const std::filesystem::path& dir, bool with_projection, const load_options& options) {
  auto values = read_config(dir / "config.json", with_projection ? "CLIPTextModelWithProjection" : "CLIPTextModel");
  const auto config = clip_text_config::from(values);
  CLIPTextModel model = [&] {
    uninitialized_weights for_the_checkpoint;
    return CLIPTextModel(config, with_projection);
  }();
  auto with_prefix = options;
  with_prefix.optional_prefix = "text_model.";
  load_state_dict(*model, component_weights(dir, options), with_prefix);
  model->eval();
  return model;
}

}  // namespace hybridiff::models
