#include "models/networks/unet.hpp"

#include <cmath>

#include "models/errors.hpp"

namespace hybridiff::models {
namespace {

// A diffusers config field that may be one number or one number per block.
std::vector<std::int64_t> per_block(const config& values, const std::string& key, std::size_t blocks) {
  auto list = values.get_per_block(key, blocks);
  return std::vector<std::int64_t>(list.begin(), list.end());
}

std::shared_ptr<torch::nn::Module> projection(std::int64_t in, std::int64_t out, bool linear_projection) {
  if (linear_projection) return models::linear(in, out).ptr();
  return conv2d(in, out, 1).ptr();
}

at::Tensor run_projection(const std::shared_ptr<torch::nn::Module>& module, const at::Tensor& x) {
  if (auto* as_linear = module->as<Linear>()) return as_linear->forward(x);
  return module->as<torch::nn::Conv2d>()->forward(x);
}

}  // namespace

at::Tensor timestep_embedding(const at::Tensor& timesteps, std::int64_t dim, bool flip_sin_to_cos, double freq_shift) {
  const auto half = dim / 2;
  auto exponent = -std::log(10000.0) * torch::arange(half, timesteps.options().dtype(torch::kFloat32)) /
                  (static_cast<double>(half) - freq_shift);
  auto angles = timesteps.to(torch::kFloat32).unsqueeze(1) * torch::exp(exponent).unsqueeze(0);  // [N, half]
  auto embedding = flip_sin_to_cos ? torch::cat({torch::cos(angles), torch::sin(angles)}, -1)
                                   : torch::cat({torch::sin(angles), torch::cos(angles)}, -1);
  if (dim % 2 == 1) embedding = torch::constant_pad_nd(embedding, {0, 1}, 0);
  return embedding;  // [N, dim]
}

BasicTransformerBlockImpl::BasicTransformerBlockImpl(std::int64_t dim, std::int64_t heads, std::int64_t head_dim,
                                                     std::int64_t context_dim) {
  norm1 = register_module("norm1", layer_norm(dim, 1e-5));
  attn1 = register_module("attn1", Attention(dim, dim, heads, head_dim, false));
  norm2 = register_module("norm2", layer_norm(dim, 1e-5));
  attn2 = register_module("attn2", Attention(dim, context_dim, heads, head_dim, false));
  norm3 = register_module("norm3", layer_norm(dim, 1e-5));
  // ff.net = [GEGLU(proj: dim -> 2·4·dim), Dropout, Linear(4·dim -> dim)]
  ff = register_module("ff", std::make_shared<torch::nn::Module>());
  auto net = ff->register_module("net", torch::nn::ModuleList());
  auto geglu = std::make_shared<torch::nn::Module>();
  ff_geglu_proj = geglu->register_module("proj", linear(dim, dim * 4 * 2));
  net->push_back(geglu);
  net->push_back(torch::nn::Dropout(0.0));
  ff_out = linear(dim * 4, dim);
  net->push_back(ff_out);
}

at::Tensor BasicTransformerBlockImpl::forward(const at::Tensor& x, const at::Tensor& context) {
  auto h = x + attn1(norm1(x));
  h = h + attn2(norm2(h), context);
  return h + geglu_feed_forward(ff_geglu_proj, ff_out, norm3(h));  // GEGLU halves [B, L, 4·dim]
}

Transformer2DModelImpl::Transformer2DModelImpl(std::int64_t channels, std::int64_t heads, std::int64_t depth,
                                               std::int64_t context_dim, std::int64_t groups, bool linear_projection)
    : linear_projection_(linear_projection) {
  const auto head_dim = channels / heads;
  norm = register_module("norm", group_norm(groups, channels, 1e-6));
  proj_in = register_module("proj_in", projection(channels, channels, linear_projection));
  transformer_blocks = register_module("transformer_blocks", torch::nn::ModuleList());
  for (std::int64_t i = 0; i < depth; ++i)
    transformer_blocks->push_back(BasicTransformerBlock(channels, heads, head_dim, context_dim));
  proj_out = register_module("proj_out", projection(channels, channels, linear_projection));
}

at::Tensor Transformer2DModelImpl::forward(const at::Tensor& x, const at::Tensor& context) {
  const auto batch = x.size(0), channels = x.size(1), height = x.size(2), width = x.size(3);
  auto h = apply_group_norm(norm, x);
  if (!linear_projection_) h = run_projection(proj_in, h);
  h = h.permute({0, 2, 3, 1}).reshape({batch, height * width, channels});  // [B, HW, C]
  if (linear_projection_) h = run_projection(proj_in, h);
  for (const auto& block : *transformer_blocks) h = block->as<BasicTransformerBlock>()->forward(h, context);
  // x first: the residual sum takes x's [B, C, H, W] layout, so a permuted view needs no copy of its own.
  if (linear_projection_) return x + run_projection(proj_out, h).view({batch, height, width, channels}).permute({0, 3, 1, 2});
  // [B, C, H, W] in x's layout (a channels-last x makes this a view).
  h = h.reshape({batch, height, width, channels}).permute({0, 3, 1, 2}).contiguous(x.suggest_memory_format());
  return x + run_projection(proj_out, h);
}

UNetBlockImpl::UNetBlockImpl(const options& opts) {
  resnets = register_module("resnets", torch::nn::ModuleList());
  const bool with_attention = !opts.transformer_depth.empty();
  if (with_attention) attentions = register_module("attentions", torch::nn::ModuleList());
  auto add_attention = [&](std::int64_t channels, std::int64_t depth) {
    attentions->push_back(Transformer2DModel(channels, opts.heads, depth, opts.context_dim, opts.groups,
                                             opts.linear_projection));
  };
  auto resnet = [&](std::int64_t in, std::int64_t out) {
    return ResnetBlock2D(in, out, opts.temb_channels, opts.groups, opts.eps, opts.output_scale_factor);
  };
  switch (opts.role) {
    case kind::down:
      for (std::int64_t i = 0; i < opts.num_layers; ++i) {
        resnets->push_back(resnet(i == 0 ? opts.in_channels : opts.out_channels, opts.out_channels));
        if (with_attention) add_attention(opts.out_channels, opts.transformer_depth[i]);
      }
      if (opts.resample) {
        samplers = register_module("downsamplers", torch::nn::ModuleList());
        samplers->push_back(Downsample2D(opts.out_channels, opts.downsample_padding));
      }
      break;
    case kind::mid:
      resnets->push_back(resnet(opts.in_channels, opts.in_channels));
      for (std::int64_t i = 0; i < opts.num_layers; ++i) {
        add_attention(opts.in_channels, opts.transformer_depth[i]);
        resnets->push_back(resnet(opts.in_channels, opts.in_channels));
      }
      break;
    case kind::up:
      for (std::int64_t i = 0; i < opts.num_layers; ++i) {
        auto skip_channels = i == opts.num_layers - 1 ? opts.in_channels : opts.out_channels;
        auto input_channels = i == 0 ? opts.prev_output_channels : opts.out_channels;
        resnets->push_back(resnet(input_channels + skip_channels, opts.out_channels));
        if (with_attention) add_attention(opts.out_channels, opts.transformer_depth[i]);
      }
      if (opts.resample) {
        samplers = register_module("upsamplers", torch::nn::ModuleList());
        samplers->push_back(Upsample2D(opts.out_channels));
      }
      break;
  }
}

at::Tensor UNetBlockImpl::forward_down(at::Tensor h, const at::Tensor& temb, const at::Tensor& context,
                                       std::vector<at::Tensor>& skips) {
  for (std::size_t i = 0; i < resnets->size(); ++i) {
    h = resnets[i]->as<ResnetBlock2D>()->forward(h, temb);
    if (attentions) h = attentions[i]->as<Transformer2DModel>()->forward(h, context);
    skips.push_back(h);
  }
  if (samplers) {
    h = samplers[0]->as<Downsample2D>()->forward(h);
    skips.push_back(h);
  }
  return h;
}

at::Tensor UNetBlockImpl::forward_mid(at::Tensor h, const at::Tensor& temb, const at::Tensor& context) {
  h = resnets[0]->as<ResnetBlock2D>()->forward(h, temb);
  for (std::size_t i = 0; i < attentions->size(); ++i) {
    h = attentions[i]->as<Transformer2DModel>()->forward(h, context);
    h = resnets[i + 1]->as<ResnetBlock2D>()->forward(h, temb);
  }
  return h;
}

at::Tensor UNetBlockImpl::forward_up(at::Tensor h, const at::Tensor& temb, const at::Tensor& context,
                                     std::vector<at::Tensor>& skips, c10::IntArrayRef upsample_size, module_runner* runner,
                                     const std::string& prefix) {
  const auto size = upsample_size.vec();
  for (std::size_t i = 0; i < resnets->size(); ++i) {
    TORCH_CHECK(!skips.empty(), "UNet up block: no skip connection left");
    auto skip = skips.back();
    skips.pop_back();
    h = run_module(runner, prefix + ".resnets." + std::to_string(i), [&] {
          return activation{resnets[i]->as<ResnetBlock2D>()->forward(torch::cat({h, skip}, 1), temb)};  // [B, C + C_skip, H, W] in
        })[0];
    if (attentions)
      h = run_module(runner, prefix + ".attentions." + std::to_string(i), [&] {
            return activation{attentions[i]->as<Transformer2DModel>()->forward(h, context)};
          })[0];
  }
  if (samplers)
    h = run_module(runner, prefix + ".upsamplers", [&] { return activation{samplers[0]->as<Upsample2D>()->forward(h, size)}; })[0];
  return h;
}

unet_config unet_config::from(const config& values) {
  unet_config c;
  auto reject_unless = [&](const std::string& key, bool supported, const std::string& what) {
    if (!supported) values.reject(key, "= " + values.values()[key].dump() + " is not supported (" + what + ")");
  };
  auto down_types = values.get<std::vector<std::string>>("down_block_types");
  auto up_types = values.get<std::vector<std::string>>("up_block_types");
  const auto blocks = down_types.size();
  if (blocks == 0) values.reject("down_block_types", "is empty");
  if (up_types.size() != blocks) values.reject("up_block_types", "must have as many entries as down_block_types");
  for (const auto& type : down_types) {
    reject_unless("down_block_types", type == "DownBlock2D" || type == "CrossAttnDownBlock2D",
                  "block type '" + type + "'; supported: DownBlock2D, CrossAttnDownBlock2D");
    c.down_has_attention.push_back(type == "CrossAttnDownBlock2D");
  }
  for (const auto& type : up_types) {
    reject_unless("up_block_types", type == "UpBlock2D" || type == "CrossAttnUpBlock2D",
                  "block type '" + type + "'; supported: UpBlock2D, CrossAttnUpBlock2D");
    c.up_has_attention.push_back(type == "CrossAttnUpBlock2D");
  }
  auto mid_type = values.get_or<std::string>("mid_block_type", "");
  reject_unless("mid_block_type", mid_type.empty() || mid_type == "UNetMidBlock2DCrossAttn",
                "supported: UNetMidBlock2DCrossAttn or null");
  c.has_mid_block = !mid_type.empty();
  reject_unless("time_embedding_type", values.get<std::string>("time_embedding_type") == "positional", "positional only");
  reject_unless("class_embed_type", !values.has("class_embed_type"), "null only");
  reject_unless("num_class_embeds", !values.has("num_class_embeds"), "null only");
  reject_unless("encoder_hid_dim_type", !values.has("encoder_hid_dim_type"), "null only");
  reject_unless("time_cond_proj_dim", !values.has("time_cond_proj_dim"), "null only");
  reject_unless("resnet_time_scale_shift", values.get<std::string>("resnet_time_scale_shift") == "default", "default only");
  reject_unless("attention_type", values.get<std::string>("attention_type") == "default", "default only");
  reject_unless("dual_cross_attention", !values.get<bool>("dual_cross_attention"), "false only");
  reject_unless("only_cross_attention", values.values()["only_cross_attention"].is_boolean() &&
                                            !values.get<bool>("only_cross_attention"), "false only");
  reject_unless("act_fn", values.get<std::string>("act_fn") == "silu", "silu only");
  auto addition = values.get_or<std::string>("addition_embed_type", "");
  reject_unless("addition_embed_type", addition.empty() || addition == "text_time", "text_time or null");
  c.text_time = addition == "text_time";
  if (c.text_time) {
    c.addition_time_embed_dim = values.get<std::int64_t>("addition_time_embed_dim");
    c.projection_class_embeddings_input_dim = values.get<std::int64_t>("projection_class_embeddings_input_dim");
  }

  c.in_channels = values.get<std::int64_t>("in_channels");
  c.out_channels = values.get<std::int64_t>("out_channels");
  c.conv_in_kernel = values.get<std::int64_t>("conv_in_kernel");
  c.conv_out_kernel = values.get<std::int64_t>("conv_out_kernel");
  c.norm_num_groups = values.get<std::int64_t>("norm_num_groups");
  c.downsample_padding = values.get<std::int64_t>("downsample_padding");
  c.norm_eps = values.get<double>("norm_eps");
  c.mid_block_scale_factor = values.get<double>("mid_block_scale_factor");
  c.resnet_out_scale_factor = values.get<double>("resnet_out_scale_factor");
  c.flip_sin_to_cos = values.get<bool>("flip_sin_to_cos");
  c.freq_shift = values.get<double>("freq_shift");
  c.use_linear_projection = values.get<bool>("use_linear_projection");
  c.block_out_channels = values.get<std::vector<std::int64_t>>("block_out_channels");
  if (c.block_out_channels.size() != blocks)
    values.reject("block_out_channels", "must have one entry per down block (" + std::to_string(blocks) + ")");
  c.layers_per_block = per_block(values, "layers_per_block", blocks);
  // diffusers reads `attention_head_dim` as the number of heads when num_attention_heads is null (a historical
  // naming bug it keeps for compatibility).
  c.heads = per_block(values, values.has("num_attention_heads") ? "num_attention_heads" : "attention_head_dim", blocks);
  c.cross_attention_dim = per_block(values, "cross_attention_dim", blocks);
  auto depth = per_block(values, "transformer_layers_per_block", blocks);
  for (std::size_t i = 0; i < blocks; ++i) {
    c.down_transformer_depth.emplace_back(c.layers_per_block[i], depth[i]);
    bool attends = c.down_has_attention[i] || c.up_has_attention[blocks - 1 - i] || (c.has_mid_block && i + 1 == blocks);
    if (attends && c.block_out_channels[i] % c.heads[i] != 0)
      values.reject("attention_head_dim", "gives " + std::to_string(c.heads[i]) + " heads for " +
                                              std::to_string(c.block_out_channels[i]) + " channels (not divisible)");
    if (c.block_out_channels[i] % c.norm_num_groups != 0)
      values.reject("norm_num_groups", "does not divide block_out_channels");
  }
  if (values.has("reverse_transformer_layers_per_block")) {
    const auto& reverse = values.values()["reverse_transformer_layers_per_block"];
    for (const auto& entry : reverse) {
      if (!entry.is_number_integer()) values.reject("reverse_transformer_layers_per_block", "nested lists are not supported");
      c.up_transformer_depth.push_back(entry.get<std::int64_t>());
    }
    if (c.up_transformer_depth.size() != blocks) values.reject("reverse_transformer_layers_per_block", "needs one entry per block");
  } else {
    c.up_transformer_depth.assign(depth.rbegin(), depth.rend());
  }
  return c;
}

UNet2DConditionModelImpl::UNet2DConditionModelImpl(const unet_config& config) : config_(config) {
  const auto& channels = config.block_out_channels;
  const auto blocks = channels.size();
  const auto time_embed_dim = channels[0] * 4;
  conv_in = register_module("conv_in", conv2d(config.in_channels, channels[0], config.conv_in_kernel, 1,
                                              (config.conv_in_kernel - 1) / 2));
  time_embedding_module = register_module("time_embedding", std::make_shared<torch::nn::Module>());
  time_linear_1 = time_embedding_module->register_module("linear_1", linear(channels[0], time_embed_dim));
  time_linear_2 = time_embedding_module->register_module("linear_2", linear(time_embed_dim, time_embed_dim));
  if (config.text_time) {
    add_embedding_module = register_module("add_embedding", std::make_shared<torch::nn::Module>());
    add_linear_1 = add_embedding_module->register_module(
        "linear_1", linear(config.projection_class_embeddings_input_dim, time_embed_dim));
    add_linear_2 = add_embedding_module->register_module("linear_2", linear(time_embed_dim, time_embed_dim));
  }

  down_blocks = register_module("down_blocks", torch::nn::ModuleList());
  for (std::size_t i = 0; i < blocks; ++i) {
    UNetBlockImpl::options opts;
    opts.role = UNetBlockImpl::kind::down;
    opts.in_channels = i == 0 ? channels[0] : channels[i - 1];
    opts.out_channels = channels[i];
    opts.temb_channels = time_embed_dim;
    opts.num_layers = config.layers_per_block[i];
    opts.groups = config.norm_num_groups;
    opts.heads = config.heads[i];
    opts.context_dim = config.cross_attention_dim[i];
    if (config.down_has_attention[i]) opts.transformer_depth = config.down_transformer_depth[i];
    opts.eps = config.norm_eps;
    opts.output_scale_factor = config.resnet_out_scale_factor;
    opts.resample = i + 1 < blocks;
    opts.downsample_padding = config.downsample_padding;
    opts.linear_projection = config.use_linear_projection;
    down_blocks->push_back(UNetBlock(opts));
  }
  if (config.has_mid_block) {
    UNetBlockImpl::options opts;
    opts.role = UNetBlockImpl::kind::mid;
    opts.in_channels = channels.back();
    opts.temb_channels = time_embed_dim;
    opts.num_layers = 1;
    opts.groups = config.norm_num_groups;
    opts.heads = config.heads.back();
    opts.context_dim = config.cross_attention_dim.back();
    opts.transformer_depth = {config.down_transformer_depth.back().back()};
    opts.eps = config.norm_eps;
    opts.output_scale_factor = config.mid_block_scale_factor;
    opts.linear_projection = config.use_linear_projection;
    mid_block = register_module("mid_block", UNetBlock(opts));
  }
  up_blocks = register_module("up_blocks", torch::nn::ModuleList());
  auto output_channels = channels.back();
  for (std::size_t i = 0; i < blocks; ++i) {
    const auto reversed = blocks - 1 - i;  // index into the down-path lists
    UNetBlockImpl::options opts;
    opts.role = UNetBlockImpl::kind::up;
    opts.prev_output_channels = output_channels;
    output_channels = channels[reversed];
    opts.out_channels = output_channels;
    opts.in_channels = channels[reversed == 0 ? 0 : reversed - 1];
    opts.temb_channels = time_embed_dim;
    opts.num_layers = config.layers_per_block[reversed] + 1;
    opts.groups = config.norm_num_groups;
    opts.heads = config.heads[reversed];
    opts.context_dim = config.cross_attention_dim[reversed];
    if (config.up_has_attention[i]) opts.transformer_depth.assign(opts.num_layers, config.up_transformer_depth[i]);
    opts.eps = config.norm_eps;
    opts.output_scale_factor = config.resnet_out_scale_factor;
    opts.resample = i + 1 < blocks;
    opts.linear_projection = config.use_linear_projection;
    up_blocks->push_back(UNetBlock(opts));
  }
  conv_norm_out = register_module("conv_norm_out", group_norm(config.norm_num_groups, channels[0], config.norm_eps));
  conv_out = register_module("conv_out", conv2d(channels[0], config.out_channels, config.conv_out_kernel, 1,
                                                (config.conv_out_kernel - 1) / 2));
}

at::Tensor UNet2DConditionModelImpl::time_embedding(const at::Tensor& timestep, std::int64_t batch, at::ScalarType dtype,
                                                    const conditioning& cond) {
  auto t = timestep.reshape({-1});
  if (t.size(0) == 1) t = t.expand({batch});
  TORCH_CHECK(t.size(0) == batch, "UNet: ", t.size(0), " timesteps for a batch of ", batch);
  auto features = timestep_embedding(t, config_.block_out_channels[0], config_.flip_sin_to_cos, config_.freq_shift);
  auto emb = time_linear_2(torch::silu(time_linear_1(features.to(dtype))));  // [B, 4·C0]
  if (config_.text_time) {
    TORCH_CHECK(cond.text_embeds.defined() && cond.time_ids.defined(),
                "UNet: addition_embed_type 'text_time' needs text_embeds and time_ids");
    auto time_features = timestep_embedding(cond.time_ids.reshape({-1}), config_.addition_time_embed_dim,
                                            config_.flip_sin_to_cos, config_.freq_shift)
                             .reshape({batch, -1});  // [B, 6·addition_time_embed_dim]
    auto added = torch::cat({cond.text_embeds, time_features.to(cond.text_embeds.scalar_type())}, -1).to(dtype);
    TORCH_CHECK(added.size(1) == config_.projection_class_embeddings_input_dim, "UNet: text_embeds + time_ids give ",
                added.size(1), " features, projection_class_embeddings_input_dim is ",
                config_.projection_class_embeddings_input_dim);
    emb = emb + add_linear_2(torch::silu(add_linear_1(added)));
  }
  return emb;
}

at::Tensor UNet2DConditionModelImpl::forward(const at::Tensor& sample, const at::Tensor& timestep,
                                             const conditioning& cond, const recorder& record) {
  return forward_modules(sample, timestep, cond, record, nullptr);
}

at::Tensor UNet2DConditionModelImpl::forward(const at::Tensor& sample, const at::Tensor& timestep,
                                             const conditioning& cond, module_runner& runner) {
  return forward_modules(sample, timestep, cond, nullptr, &runner);
}

at::Tensor UNet2DConditionModelImpl::forward_modules(const at::Tensor& sample, const at::Tensor& timestep,
                                                     const conditioning& cond, const recorder& record,
                                                     module_runner* runner) {
  TORCH_CHECK(sample.dim() == 4 && sample.size(1) == config_.in_channels, "UNet: sample must be [B, ",
              config_.in_channels, ", H, W], got ", sample.sizes());
  const auto batch = sample.size(0);
  auto emb = time_embedding(timestep, batch, sample.scalar_type(), cond);
  // [B, C0, H, W]
  auto h = run_module(runner, "conv_in", [&] { return activation{conv_in(sample.contiguous(layout_))}; })[0];
  if (record) record("conv_in", h);
  std::vector<at::Tensor> skips{h};
  for (std::size_t i = 0; i < down_blocks->size(); ++i) {
    // A down block's output is its hidden state followed by the skips it adds.
    auto out = run_module(runner, "down_blocks." + std::to_string(i), [&] {
      std::vector<at::Tensor> added;
      auto hidden = down_blocks[i]->as<UNetBlock>()->forward_down(h, emb, cond.context, added);
      activation result{hidden};
      result.insert(result.end(), added.begin(), added.end());
      return result;
    });
    h = out[0];
    skips.insert(skips.end(), out.begin() + 1, out.end());
    if (record) record("down_blocks." + std::to_string(i), h);
  }
  if (mid_block) {
    h = run_module(runner, "mid_block", [&] { return activation{mid_block->forward_mid(h, emb, cond.context)}; })[0];
    if (record) record("mid_block", h);
  }
  for (std::size_t i = 0; i < up_blocks->size(); ++i) {
    auto* block = up_blocks[i]->as<UNetBlock>();
    const auto consumed = static_cast<std::ptrdiff_t>(block->num_resnets());
    TORCH_CHECK(static_cast<std::ptrdiff_t>(skips.size()) >= consumed, "UNet: not enough skip connections");
    std::vector<at::Tensor> block_skips(skips.end() - consumed, skips.end());
    skips.resize(skips.size() - consumed);
    // Upsample to the size of the skip the next block consumes (×2 when H, W divide evenly).
    std::vector<std::int64_t> size;
    if (i + 1 < up_blocks->size()) size = {skips.back().size(2), skips.back().size(3)};
    const auto name = "up_blocks." + std::to_string(i);
    if (runner != nullptr && i == 0) {
      h = block->forward_up(h, emb, cond.context, block_skips, size, runner, name);  // finer modules, as the split tables
    } else {
      h = run_module(runner, name, [&] {
            auto local = block_skips;
            return activation{block->forward_up(h, emb, cond.context, local, size)};
          })[0];
    }
    if (record) record(name, h);
  }
  h = run_module(runner, "conv_norm_out", [&] { return activation{apply_group_norm(conv_norm_out, h)}; })[0];
  // ε [B, out, H, W] in the standard layout whatever the UNet's (4 channels: a small copy).
  return run_module(runner, "conv_out", [&] { return activation{conv_out(torch::silu(h)).contiguous()}; })[0];
}

void UNet2DConditionModelImpl::use_channels_last() {
  store_channels_last(*this, "UNet");
  layout_ = at::MemoryFormat::ChannelsLast;
}

UNet2DConditionModel load_unet(const std::filesystem::path& dir, const load_options& options) {
  const auto config = unet_config::from(read_config(dir / "config.json", "UNet2DConditionModel"));
  UNet2DConditionModel model = [&] {
    uninitialized_weights for_the_checkpoint;
    return UNet2DConditionModel(config);
  }();
  load_state_dict(*model, component_weights(dir, options), options);
  if (options.device.is_cuda()) model->use_channels_last();
  model->eval();
  return model;
}

}  // namespace hybridiff::models
