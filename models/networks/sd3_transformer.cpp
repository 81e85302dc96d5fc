#include "models/networks/sd3_transformer.hpp"

#include <algorithm>

#include "models/networks/unet.hpp"

namespace hybridiff::models {
namespace {

// A child module holding only `name`-registered children: builds dotted checkpoint paths such as "attn.to_q".
std::shared_ptr<torch::nn::Module> container(torch::nn::Module& parent, const std::string& name) {
  return parent.register_module(name, std::make_shared<torch::nn::Module>());
}

constexpr double norm_eps = 1e-6;  // SD3's LayerNorms (no affine parameters)

// LayerNorm, then adaLN modulation x·(1 + scale) + shift: one kernel on CUDA (models::layer_norm_modulate).
// shift, scale: [B, D].
at::Tensor modulate(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale) {
  return layer_norm_modulate(x, shift, scale, norm_eps);
}

// The gated residual x + gate·y as one addcmul. x, y: [B, L, D]; gate: [B, D].
at::Tensor gated_residual(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& y) {
  return torch::addcmul(x, gate.unsqueeze(1), y);
}

// diffusers' FeedForward "gelu-approximate": net.0.proj, tanh GELU, net.2.
std::pair<Linear, Linear> feed_forward(torch::nn::Module& parent, const std::string& name,
                                                             std::int64_t dim) {
  auto ff = container(parent, name);
  auto net = ff->register_module("net", torch::nn::ModuleList());
  auto gelu = std::make_shared<torch::nn::Module>();
  auto in = gelu->register_module("proj", linear(dim, 4 * dim));
  net->push_back(gelu);
  net->push_back(torch::nn::Dropout(0.0));
  auto out = linear(4 * dim, dim);
  net->push_back(out);
  return {in, out};
}

// diffusers' RMSNorm(head_dim, eps=1e-6) of qk_norm: its weight [head_dim] under `name`.
at::Tensor rms_norm_weight(torch::nn::Module& parent, const std::string& name, std::int64_t head_dim) {
  return container(parent, name)->register_parameter("weight", torch::ones({head_dim}));
}

// RMSNorm of every head of a projection's rows, in place: rows [B, L, heads·d], weight [d].
void normalize_heads(const at::Tensor& rows, std::int64_t heads, const at::Tensor& weight) {
  if (!weight.defined()) return;
  auto per_head = rows.unflatten(-1, {heads, weight.size(0)});  // [B, L, heads, d], a view of `rows`
  per_head.copy_(at::rms_norm(per_head, {weight.size(0)}, weight, norm_eps));
}

}  // namespace

sd3_transformer_config sd3_transformer_config::from(const config& values) {
  sd3_transformer_config c;
  c.sample_size = values.get<std::int64_t>("sample_size");
  c.patch_size = values.get<std::int64_t>("patch_size");
  c.in_channels = values.get<std::int64_t>("in_channels");
  c.out_channels = values.get_or<std::int64_t>("out_channels", c.in_channels);
  c.num_layers = values.get<std::int64_t>("num_layers");
  c.attention_head_dim = values.get<std::int64_t>("attention_head_dim");
  c.num_attention_heads = values.get<std::int64_t>("num_attention_heads");
  c.joint_attention_dim = values.get<std::int64_t>("joint_attention_dim");
  c.caption_projection_dim = values.get<std::int64_t>("caption_projection_dim");
  c.pooled_projection_dim = values.get<std::int64_t>("pooled_projection_dim");
  c.pos_embed_max_size = values.get<std::int64_t>("pos_embed_max_size");
  if (values.has("qk_norm")) {
    const auto kind = values.get<std::string>("qk_norm");
    if (kind != "rms_norm") values.reject("qk_norm", "is \"" + kind + "\"; supported: null or \"rms_norm\"");
    c.qk_norm = true;
  }
  c.dual_attention_layers = values.get<std::vector<std::int64_t>>("dual_attention_layers");
  for (auto layer : c.dual_attention_layers)
    if (layer < 0 || layer >= c.num_layers)
      values.reject("dual_attention_layers",
                    "names block " + std::to_string(layer) + " of " + std::to_string(c.num_layers));
  if (c.caption_projection_dim != c.inner_dim())
    values.reject("caption_projection_dim", "must equal num_attention_heads × attention_head_dim");
  if (c.num_layers < 1) values.reject("num_layers", "must be at least 1");
  return c;
}

JointTransformerBlockImpl::JointTransformerBlockImpl(std::int64_t dim, std::int64_t heads, std::int64_t head_dim,
                                                     bool context_pre_only, bool qk_norm, bool dual_attention)
    : context_pre_only_(context_pre_only), dual_attention_(dual_attention), heads_(heads) {
  norm1_linear = container(*this, "norm1")->register_module("linear", linear(dim, (dual_attention ? 9 : 6) * dim));
  norm1_context_linear =
      container(*this, "norm1_context")->register_module("linear", linear(dim, (context_pre_only ? 2 : 6) * dim));
  auto attn = container(*this, "attn");
  const auto inner = heads * head_dim;
  to_q = attn->register_module("to_q", linear(dim, inner));
  to_k = attn->register_module("to_k", linear(dim, inner));
  to_v = attn->register_module("to_v", linear(dim, inner));
  add_q_proj = attn->register_module("add_q_proj", linear(dim, inner));
  add_k_proj = attn->register_module("add_k_proj", linear(dim, inner));
  add_v_proj = attn->register_module("add_v_proj", linear(dim, inner));
  auto to_out = attn->register_module("to_out", torch::nn::ModuleList());
  to_out_0 = linear(inner, dim);
  to_out->push_back(to_out_0);
  if (!context_pre_only) to_add_out = attn->register_module("to_add_out", linear(inner, dim));
  if (qk_norm) {
    norm_q = rms_norm_weight(*attn, "norm_q", head_dim);
    norm_k = rms_norm_weight(*attn, "norm_k", head_dim);
    norm_added_q = rms_norm_weight(*attn, "norm_added_q", head_dim);
    norm_added_k = rms_norm_weight(*attn, "norm_added_k", head_dim);
  }
  if (dual_attention) {
    auto attn2 = container(*this, "attn2");
    attn2_to_q = attn2->register_module("to_q", linear(dim, inner));
    attn2_to_k = attn2->register_module("to_k", linear(dim, inner));
    attn2_to_v = attn2->register_module("to_v", linear(dim, inner));
    attn2_to_out_0 = linear(inner, dim);
    attn2->register_module("to_out", torch::nn::ModuleList())->push_back(attn2_to_out_0);
    if (qk_norm) {
      attn2_norm_q = rms_norm_weight(*attn2, "norm_q", head_dim);
      attn2_norm_k = rms_norm_weight(*attn2, "norm_k", head_dim);
    }
  }
  std::tie(ff_in, ff_out) = feed_forward(*this, "ff", dim);
  if (!context_pre_only) std::tie(ff_context_in, ff_context_out) = feed_forward(*this, "ff_context", dim);
}

std::pair<at::Tensor, at::Tensor> JointTransformerBlockImpl::forward(const at::Tensor& hidden, const at::Tensor& context,
                                                                     const at::Tensor& temb) {
  auto conditioning = torch::silu(temb);
  // shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp [, shift_msa2, scale_msa2, gate_msa2]: [B, D] each
  auto image_mod = norm1_linear(conditioning).chunk(dual_attention_ ? 9 : 6, 1);
  auto norm_hidden = modulate(hidden, image_mod[0], image_mod[1]);
  std::vector<at::Tensor> context_mod;
  at::Tensor norm_context;
  if (context_pre_only_) {
    // AdaLayerNormContinuous: scale first, then shift.
    auto scale_shift = norm1_context_linear(conditioning).chunk(2, 1);
    norm_context = modulate(context, scale_shift[1], scale_shift[0]);
  } else {
    context_mod = norm1_context_linear(conditioning).chunk(6, 1);
    norm_context = modulate(context, context_mod[0], context_mod[1]);
  }
  // Joint attention over [image; context] tokens: each stream's q, k and v GEMMs write their rows straight into
  // contiguous joint [B, N + S, inner] buffers, whose split_heads view is the layout SDPA reads natively. (Cat-ing
  // the streams' outputs along the tokens instead cost 2.4 ms of copies per batch-1 SD3-medium step on an H100, 4.8
  // at batch 2; SDPA on strided views of one [B, N + S, 3, heads, d] buffer made copies of its own.)
  const auto image_tokens = hidden.size(1), context_tokens = context.size(1);
  auto joint_heads = [&](const Linear& image_layer, const Linear& context_layer, const at::Tensor& image_norm,
                         const at::Tensor& context_norm) {
    auto joint = at::empty({hidden.size(0), image_tokens + context_tokens, image_layer->weight.size(0)},
                           norm_hidden.options());
    linear_into(joint.narrow(1, 0, image_tokens), norm_hidden, image_layer);
    linear_into(joint.narrow(1, image_tokens, context_tokens), norm_context, context_layer);
    normalize_heads(joint.narrow(1, 0, image_tokens), heads_, image_norm);
    normalize_heads(joint.narrow(1, image_tokens, context_tokens), heads_, context_norm);
    return split_heads(joint, heads_);  // [B, heads, N + S, d]
  };
  auto q = joint_heads(to_q, add_q_proj, norm_q, norm_added_q);
  auto k = joint_heads(to_k, add_k_proj, norm_k, norm_added_k);
  auto v = joint_heads(to_v, add_v_proj, at::Tensor(), at::Tensor());
  auto joint = merge_heads(attention(q, k, v));  // [B, N + S, inner], contiguous
  auto image_attention = linear_rows(joint.narrow(1, 0, image_tokens), to_out_0);
  // The gated residual and the feed-forward's modulation in one pass (one kernel on CUDA).
  auto [out_hidden, mlp_in] =
      dual_attention_
          ? gated_residual_layer_norm_modulate(gated_residual(hidden, image_mod[2], image_attention), image_mod[8],
                                               image_self_attention(modulate(hidden, image_mod[6], image_mod[7])),
                                               image_mod[3], image_mod[4], norm_eps)
          : gated_residual_layer_norm_modulate(hidden, image_mod[2], image_attention, image_mod[3], image_mod[4],
                                               norm_eps);
  out_hidden = gated_residual(out_hidden, image_mod[5], feed_forward_gelu_tanh(ff_in, ff_out, mlp_in));
  if (context_pre_only_) return {at::Tensor(), out_hidden};

  auto context_attention = linear_rows(joint.narrow(1, image_tokens, context_tokens), to_add_out);
  auto [out_context, context_mlp_in] = gated_residual_layer_norm_modulate(context, context_mod[2], context_attention,
                                                                          context_mod[3], context_mod[4], norm_eps);
  out_context = gated_residual(out_context, context_mod[5],
                               feed_forward_gelu_tanh(ff_context_in, ff_context_out, context_mlp_in));
  return {out_context, out_hidden};
}

at::Tensor JointTransformerBlockImpl::image_self_attention(const at::Tensor& norm_hidden) {
  auto heads_of = [&](const Linear& layer, const at::Tensor& norm) {
    auto rows = linear_rows(norm_hidden, layer);  // [B, N, inner]
    normalize_heads(rows, heads_, norm);
    return split_heads(rows, heads_);
  };
  auto attended = attention(heads_of(attn2_to_q, attn2_norm_q), heads_of(attn2_to_k, attn2_norm_k),
                            heads_of(attn2_to_v, at::Tensor()));
  return linear_rows(merge_heads(attended), attn2_to_out_0);
}

SD3Transformer2DModelImpl::SD3Transformer2DModelImpl(const sd3_transformer_config& config) : config_(config) {
  const auto dim = config.inner_dim();
  auto pos_embed = container(*this, "pos_embed");
  patch_proj =
      pos_embed->register_module("proj", conv2d(config.in_channels, dim, config.patch_size, config.patch_size));
  pos_embed_table = pos_embed->register_buffer(
      "pos_embed", torch::zeros({1, config.pos_embed_max_size * config.pos_embed_max_size, dim}));
  auto time_text_embed = container(*this, "time_text_embed");
  auto timestep_embedder = container(*time_text_embed, "timestep_embedder");
  timestep_linear_1 = timestep_embedder->register_module("linear_1", linear(256, dim));
  timestep_linear_2 = timestep_embedder->register_module("linear_2", linear(dim, dim));
  auto text_embedder = container(*time_text_embed, "text_embedder");
  text_linear_1 = text_embedder->register_module("linear_1", linear(config.pooled_projection_dim, dim));
  text_linear_2 = text_embedder->register_module("linear_2", linear(dim, dim));
  context_embedder = register_module("context_embedder", linear(config.joint_attention_dim, config.caption_projection_dim));
  transformer_blocks = register_module("transformer_blocks", torch::nn::ModuleList());
  for (std::int64_t i = 0; i < config.num_layers; ++i)
    transformer_blocks->push_back(JointTransformerBlock(
        dim, config.num_attention_heads, config.attention_head_dim, i == config.num_layers - 1, config.qk_norm,
        std::count(config.dual_attention_layers.begin(), config.dual_attention_layers.end(), i) > 0));
  norm_out_linear = container(*this, "norm_out")->register_module("linear", linear(dim, 2 * dim));
  proj_out = register_module("proj_out", linear(dim, config.patch_size * config.patch_size * config.out_channels));
}

SD3Transformer2DModelImpl::state SD3Transformer2DModelImpl::embed(const at::Tensor& latents, const at::Tensor& timestep,
                                                                  const at::Tensor& context, const at::Tensor& pooled,
                                                                  const recorder& record) {
  TORCH_CHECK(latents.dim() == 4 && latents.size(1) == config_.in_channels, "SD3 transformer: latents must be [B, ",
              config_.in_channels, ", H, W], got ", latents.sizes());
  const auto batch = latents.size(0), patch = config_.patch_size;
  state s;
  s.height = latents.size(2);
  s.width = latents.size(3);
  const auto rows = s.height / patch, columns = s.width / patch;
  TORCH_CHECK(s.height % patch == 0 && s.width % patch == 0, "SD3 transformer: latent size ", s.height, "x", s.width,
              " is not a multiple of the patch size ", patch);
  TORCH_CHECK(rows <= config_.pos_embed_max_size && columns <= config_.pos_embed_max_size, "SD3 transformer: ", rows, "x",
              columns, " patches exceed pos_embed_max_size ", config_.pos_embed_max_size);
  // Patch embedding plus the centre crop of the position table.
  auto tokens = patch_proj(latents).flatten(2).transpose(1, 2);  // [B, N, D]
  const auto top = (config_.pos_embed_max_size - rows) / 2, left = (config_.pos_embed_max_size - columns) / 2;
  auto table = pos_embed_table.reshape({1, config_.pos_embed_max_size, config_.pos_embed_max_size, -1});
  auto crop = table.narrow(1, top, rows).narrow(2, left, columns).reshape({1, rows * columns, -1});
  // Contiguous: `tokens` is a transposed view and the sum takes its layout, which every later add, norm and linear of
  // the blocks would inherit (strided elementwise kernels, unfused linear biases, copies): SD3-medium's batch-2 step
  // went from 65.9 to 58.9 ms on an H200 with this (bench --profile; docs/benchmarks.md).
  s.hidden = (tokens + crop.to(tokens.scalar_type())).contiguous();
  if (record) record("pos_embed", s.hidden);
  auto t = timestep.reshape({-1});
  if (t.size(0) == 1) t = t.expand({batch});
  auto time_features = timestep_embedding(t, 256, true, 0).to(latents.scalar_type());
  auto time_embedding = timestep_linear_2(torch::silu(timestep_linear_1(time_features)));
  auto text_embedding = text_linear_2(torch::silu(text_linear_1(pooled)));
  s.temb = time_embedding + text_embedding;  // [B, D]
  if (record) record("time_text_embed", s.temb);
  s.context = context_embedder(context);  // [B, S, D]
  if (record) record("context_embedder", s.context);
  return s;
}

void SD3Transformer2DModelImpl::run_blocks(state& s, std::int64_t begin, std::int64_t end, const recorder& record) {
  TORCH_CHECK(0 <= begin && begin <= end && end <= num_blocks(), "SD3 transformer: block range [", begin, ", ", end,
              ") outside [0, ", num_blocks(), ")");
  for (std::int64_t i = begin; i < end; ++i) {
    TORCH_CHECK(s.context.defined(), "SD3 transformer: block ", i, " runs after the context_pre_only block");
    auto [context, hidden] = transformer_blocks[i]->as<JointTransformerBlock>()->forward(s.hidden, s.context, s.temb);
    s.context = context;
    s.hidden = hidden;
    if (record) {
      if (context.defined()) record("transformer_blocks." + std::to_string(i) + ".0", context);
      record("transformer_blocks." + std::to_string(i) + ".1", hidden);
    }
  }
}

at::Tensor SD3Transformer2DModelImpl::norm_out(const state& s) {
  auto scale_shift = norm_out_linear(torch::silu(s.temb)).chunk(2, 1);  // AdaLayerNormContinuous: scale, shift
  return modulate(s.hidden, scale_shift[1], scale_shift[0]);
}

at::Tensor SD3Transformer2DModelImpl::unpatchify(const at::Tensor& projected, const state& s) const {
  const auto batch = projected.size(0), patch = config_.patch_size, channels = config_.out_channels;
  const auto rows = s.height / patch, columns = s.width / patch;
  // [B, h·w, p·q·C] -> [B, h, w, p, q, C] -> [B, C, h, p, w, q] -> [B, C, H, W]
  return projected.reshape({batch, rows, columns, patch, patch, channels})
      .permute({0, 5, 1, 3, 2, 4})
      .reshape({batch, channels, rows * patch, columns * patch});
}

at::Tensor SD3Transformer2DModelImpl::finish(const state& s, const recorder& record) {
  auto hidden = norm_out(s);
  if (record) record("norm_out", hidden);
  return unpatchify(proj_out(hidden), s);
}

at::Tensor SD3Transformer2DModelImpl::forward(const at::Tensor& latents, const at::Tensor& timestep,
                                              const at::Tensor& context, const at::Tensor& pooled, const recorder& record) {
  auto s = embed(latents, timestep, context, pooled, record);
  run_blocks(s, 0, num_blocks(), record);
  return finish(s, record);
}

at::Tensor SD3Transformer2DModelImpl::forward(const at::Tensor& latents, const at::Tensor& timestep,
                                              const at::Tensor& context, const at::Tensor& pooled, module_runner& runner) {
  auto s = embed(latents, timestep, context, pooled);
  for (std::int64_t b = 0; b < num_blocks(); ++b) {
    auto out = runner.run("transformer_blocks." + std::to_string(b), [&] {
      auto next = s;
      run_blocks(next, b, b + 1);
      return activation{next.context, next.hidden};
    });
    s.context = out[0];
    s.hidden = out[1];
  }
  auto normed = runner.run("norm_out", [&] { return activation{norm_out(s)}; })[0];
  auto projected = runner.run("proj_out", [&] { return activation{proj_out(normed)}; })[0];
  return unpatchify(projected, s);
}

SD3Transformer2DModel load_sd3_transformer(const std::filesystem::path& dir, const load_options& options) {
  const auto config = sd3_transformer_config::from(read_config(dir / "config.json", "SD3Transformer2DModel"));
  SD3Transformer2DModel model = [&] {
    uninitialized_weights for_the_checkpoint;
    return SD3Transformer2DModel(config);
  }();
  load_state_dict(*model, component_weights(dir, options), options);
  model->eval();
  return model;
}

}  // namespace hybridiff::models
