#include "models/io/single_file.hpp"

#include <algorithm>
#include <map>
#include <regex>
#include <utility>

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "models/errors.hpp"
#include "models/io/safetensors.hpp"
#include "models/networks/unet.hpp"

namespace hybridiff::models {
namespace {

using named_tensors = std::vector<std::pair<std::string, at::Tensor>>;

constexpr const char* sdxl_repository = "stabilityai/stable-diffusion-xl-base-1.0";
constexpr const char* sd3_clip_l_prefix = "text_encoders.clip_l.transformer.";
constexpr const char* sd3_clip_g_prefix = "text_encoders.clip_g.transformer.";
constexpr const char* sd3_t5_prefix = "text_encoders.t5xxl.transformer.";
constexpr const char* unet_prefix = "model.diffusion_model.";
constexpr const char* vae_prefix = "first_stage_model.";
constexpr const char* clip_l_prefix = "conditioner.embedders.0.transformer.";
constexpr const char* clip_g_prefix = "conditioner.embedders.1.model.";

bool starts_with(const std::string& text, const std::string& prefix) { return text.rfind(prefix, 0) == 0; }

// `text` with every '.' replaced by `separator`.
std::string joined(std::string text, char separator) {
  for (auto& c : text)
    if (c == '.') c = separator;
  return text;
}

// A resnet's LDM part names as diffusers' (in_layers.2 -> conv1), with the rest of the name after it.
std::optional<std::string> resnet_name(const std::string& rest, char separator) {
  static const std::pair<const char*, const char*> names[] = {
      {"in_layers.0", "norm1"},  {"in_layers.2", "conv1"},  {"emb_layers.1", "time_emb_proj"},
      {"out_layers.0", "norm2"}, {"out_layers.3", "conv2"}, {"skip_connection", "conv_shortcut"}};
  for (const auto& [ldm, diffusers] : names) {
    const auto ours = joined(ldm, separator);
    if (rest == ours) return joined(diffusers, separator);
    if (starts_with(rest, ours + separator)) return joined(diffusers, separator) + rest.substr(ours.size());
  }
  return std::nullopt;
}

// The single file's tensors that belong to no component read: ignored, but said.
void log_ignored(const std::filesystem::path& file, const std::vector<std::string>& ignored) {
  if (ignored.empty()) return;
  std::string some;
  for (std::size_t i = 0; i < ignored.size() && i < 5; ++i) some += (i ? ", " : "") + ignored[i];
  spdlog::info("{}: {} tensor(s) outside the denoiser, VAE and text encoders are not read ({}{})", file.string(),
               ignored.size(), some, ignored.size() > 5 ? ", ..." : "");
}

// `what`: "an SDXL UNet", "the VAE", ...
[[noreturn]] void unconvertible(const std::filesystem::path& file, const std::string& key, const std::string& what) {
  throw error(file.string() + ": key '" + key + "' is not part of " + what +
              " in the original single-file layout (a checkpoint of another model family, or a damaged file?)");
}

// [2·D, ...] with its halves swapped: the original SD3 layout orders AdaLayerNormContinuous's outputs shift, scale;
// diffusers' scale, shift.
at::Tensor swap_halves(const at::Tensor& value) {
  const auto half = value.size(0) / 2;
  return torch::cat({value.narrow(0, half, half), value.narrow(0, 0, half)});
}

// The SD3/SD3.5 MMDiT in the original layout (after "model.diffusion_model.") as diffusers' SD3Transformer2DModel:
// each stream's fused qkv [3·D, D] splits into q, k, v (views); the last block's context norm and the final
// layer's norm swap their halves. num_layers: the config's, whose last block is the context_pre_only one.
named_tensors sd3_transformer_from_file(const checkpoint& file_weights, const std::filesystem::path& file,
                                        std::int64_t num_layers) {
  static const std::map<std::string, std::string> fixed = {
      {"x_embedder.proj", "pos_embed.proj"},
      {"t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1"},
      {"t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2"},
      {"y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1"},
      {"y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2"},
      {"context_embedder", "context_embedder"},
      {"final_layer.linear", "proj_out"},
      {"final_layer.adaLN_modulation.1", "norm_out.linear"}};
  static const std::map<std::string, std::string> block_parts = {
      {"x_block.attn.proj", "attn.to_out.0"},
      {"context_block.attn.proj", "attn.to_add_out"},
      {"x_block.attn.ln_q", "attn.norm_q"},
      {"x_block.attn.ln_k", "attn.norm_k"},
      {"context_block.attn.ln_q", "attn.norm_added_q"},
      {"context_block.attn.ln_k", "attn.norm_added_k"},
      {"x_block.attn2.proj", "attn2.to_out.0"},
      {"x_block.attn2.ln_q", "attn2.norm_q"},
      {"x_block.attn2.ln_k", "attn2.norm_k"},
      {"x_block.adaLN_modulation.1", "norm1.linear"},
      {"context_block.adaLN_modulation.1", "norm1_context.linear"},
      {"x_block.mlp.fc1", "ff.net.0.proj"},
      {"x_block.mlp.fc2", "ff.net.2"},
      {"context_block.mlp.fc1", "ff_context.net.0.proj"},
      {"context_block.mlp.fc2", "ff_context.net.2"}};
  static const std::map<std::string, std::vector<std::string>> fused = {
      {"x_block.attn.qkv", {"attn.to_q", "attn.to_k", "attn.to_v"}},
      {"context_block.attn.qkv", {"attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"}},
      {"x_block.attn2.qkv", {"attn2.to_q", "attn2.to_k", "attn2.to_v"}}};
  static const std::regex block(R"(^joint_blocks\.(\d+)\.(.+)$)");
  named_tensors out;
  for (const auto& entry : file_weights.entries()) {
    if (!starts_with(entry.name, unet_prefix)) continue;
    const auto key = entry.name.substr(std::string(unet_prefix).size());
    auto value = file_weights.tensor(entry.name);
    if (key == "pos_embed") {
      out.emplace_back("pos_embed.pos_embed", value);
      continue;
    }
    const auto dot = key.rfind('.');
    if (dot == std::string::npos) unconvertible(file, entry.name, "an SD3 transformer");
    const auto module = key.substr(0, dot), leaf = key.substr(dot);  // leaf: ".weight", ".bias"
    if (auto found = fixed.find(module); found != fixed.end()) {
      out.emplace_back(found->second + leaf, module == "final_layer.adaLN_modulation.1" ? swap_halves(value) : value);
      continue;
    }
    std::smatch m;
    if (!std::regex_match(module, m, block)) unconvertible(file, entry.name, "an SD3 transformer");
    const auto index = std::stoll(m[1].str());
    const auto prefix = "transformer_blocks." + m[1].str() + ".";
    const auto part = m[2].str();
    if (auto parts = fused.find(part); parts != fused.end()) {
      if (value.size(0) % 3 != 0) unconvertible(file, entry.name, "an SD3 transformer (qkv not 3 × width)");
      const auto width = value.size(0) / 3;
      for (std::int64_t i = 0; i < 3; ++i)
        out.emplace_back(prefix + parts->second[static_cast<std::size_t>(i)] + leaf, value.narrow(0, i * width, width));
      continue;
    }
    auto found = block_parts.find(part);
    if (found == block_parts.end()) unconvertible(file, entry.name, "an SD3 transformer");
    const bool last_context_norm = found->second == "norm1_context.linear" && index == num_layers - 1;
    out.emplace_back(prefix + found->second + leaf, last_context_norm ? swap_halves(value) : value);
  }
  return out;
}

// A text encoder in transformers' own layout under `prefix` (older files also hold the position_ids buffer).
named_tensors hf_text_encoder(const checkpoint& file_weights, const std::string& prefix) {
  named_tensors out;
  for (const auto& entry : file_weights.entries()) {
    if (!starts_with(entry.name, prefix) || entry.name.find("position_ids") != std::string::npos) continue;
    out.emplace_back(entry.name.substr(prefix.size()), file_weights.tensor(entry.name));
  }
  return out;
}

// The VAE's LDM keys (after "first_stage_model.") as diffusers' AutoencoderKL names them. levels: its number of
// blocks (len(block_out_channels)); the decoder numbers its LDM `up` blocks from the output end.
// The attention projections q, k, v, proj_out are 1×1 convolutions [C, C, 1, 1] in LDM and linear [C, C] here.
named_tensors vae_from_ldm(const checkpoint& file_weights, const std::filesystem::path& file, std::int64_t levels) {
  static const std::regex down(R"(^encoder\.down\.(\d+)\.(block\.(\d+)|downsample)\.(.+)$)");
  static const std::regex up(R"(^decoder\.up\.(\d+)\.(block\.(\d+)|upsample)\.(.+)$)");
  static const std::regex mid(R"(^(encoder|decoder)\.mid\.(block_1|block_2|attn_1)\.(.+)$)");
  static const std::regex ends(R"(^(encoder|decoder)\.(conv_in|conv_out|norm_out)\.(.+)$)");
  static const std::map<std::string, std::string> attention_parts = {
      {"norm", "group_norm"}, {"q", "to_q"}, {"k", "to_k"}, {"v", "to_v"}, {"proj_out", "to_out.0"}};
  named_tensors out;
  for (const auto& entry : file_weights.entries()) {
    if (!starts_with(entry.name, vae_prefix)) continue;
    const auto key = entry.name.substr(std::string(vae_prefix).size());
    auto value = file_weights.tensor(entry.name);
    auto resnet_rest = [&](const std::string& rest) {
      return starts_with(rest, "nin_shortcut.") ? "conv_shortcut." + rest.substr(13) : rest;
    };
    std::smatch m;
    std::string name;
    if (key.rfind("quant_conv.", 0) == 0 || key.rfind("post_quant_conv.", 0) == 0) {
      name = key;
    } else if (std::regex_match(key, m, down)) {
      const auto block = "encoder.down_blocks." + m[1].str() + ".";
      name = m[3].matched ? block + "resnets." + m[3].str() + "." + resnet_rest(m[4].str())
                          : block + "downsamplers.0." + m[4].str();
    } else if (std::regex_match(key, m, up)) {
      const auto index = std::stoll(m[1].str());
      if (index >= levels) unconvertible(file, entry.name, "the VAE");
      const auto block = "decoder.up_blocks." + std::to_string(levels - 1 - index) + ".";
      name = m[3].matched ? block + "resnets." + m[3].str() + "." + resnet_rest(m[4].str())
                          : block + "upsamplers.0." + m[4].str();
    } else if (std::regex_match(key, m, mid)) {
      const auto half = m[1].str() + ".mid_block.";
      if (m[2] == "attn_1") {
        const auto rest = m[3].str();
        const auto dot = rest.find('.');
        auto part = attention_parts.find(rest.substr(0, dot));
        if (dot == std::string::npos || part == attention_parts.end()) unconvertible(file, entry.name, "the VAE");
        name = half + "attentions.0." + part->second + rest.substr(dot);
        if (part->first != "norm" && value.dim() == 4) value = value.flatten(1);  // [C, C, 1, 1] -> [C, C]
      } else {
        name = half + "resnets." + (m[2] == "block_1" ? "0." : "1.") + resnet_rest(m[3].str());
      }
    } else if (std::regex_match(key, m, ends)) {
      name = m[1].str() + "." + (m[2] == "norm_out" ? "conv_norm_out" : m[2].str()) + "." + m[3].str();
    } else {
      unconvertible(file, entry.name, "the VAE");
    }
    out.emplace_back(std::move(name), std::move(value));
  }
  return out;
}

// CLIP-G in OpenCLIP's layout as transformers' CLIPTextModelWithProjection: the fused in_proj [3C, C] splits into
// q, k, v (views); text_projection [C, P] is the transposed weight [P, C] of a linear layer.
named_tensors clip_g_from_open_clip(const checkpoint& file_weights, const std::filesystem::path& file) {
  static const std::regex layer(R"(^transformer\.resblocks\.(\d+)\.(.+)$)");
  static const std::map<std::string, std::string> fixed = {
      {"token_embedding.weight", "text_model.embeddings.token_embedding.weight"},
      {"positional_embedding", "text_model.embeddings.position_embedding.weight"},
      {"ln_final.weight", "text_model.final_layer_norm.weight"},
      {"ln_final.bias", "text_model.final_layer_norm.bias"}};
  static const std::map<std::string, std::string> layer_parts = {{"attn.out_proj", "self_attn.out_proj"},
                                                                 {"ln_1", "layer_norm1"},
                                                                 {"ln_2", "layer_norm2"},
                                                                 {"mlp.c_fc", "mlp.fc1"},
                                                                 {"mlp.c_proj", "mlp.fc2"}};
  named_tensors out;
  for (const auto& entry : file_weights.entries()) {
    if (!starts_with(entry.name, clip_g_prefix)) continue;
    const auto key = entry.name.substr(std::string(clip_g_prefix).size());
    auto value = file_weights.tensor(entry.name);
    if (key == "logit_scale") continue;  // CLIP's image-text temperature: no part of the text encoder
    if (auto found = fixed.find(key); found != fixed.end()) {
      out.emplace_back(found->second, value);
      continue;
    }
    if (key == "text_projection") {
      out.emplace_back("text_projection.weight", value.t());
      continue;
    }
    std::smatch m;
    if (!std::regex_match(key, m, layer)) unconvertible(file, entry.name, "an SDXL CLIP-G text encoder");
    const auto target = "text_model.encoder.layers." + m[1].str() + ".";
    const auto rest = m[2].str();
    if (rest == "attn.in_proj_weight" || rest == "attn.in_proj_bias") {
      const auto leaf = rest == "attn.in_proj_weight" ? "weight" : "bias";
      if (value.size(0) % 3 != 0)
        unconvertible(file, entry.name, "an SDXL CLIP-G text encoder (in_proj not 3 × width)");
      const auto width = value.size(0) / 3;
      const char* parts[] = {"q_proj", "k_proj", "v_proj"};
      for (int i = 0; i < 3; ++i)
        out.emplace_back(target + "self_attn." + parts[i] + "." + leaf, value.narrow(0, i * width, width));
      continue;
    }
    const auto dot = rest.rfind('.');
    auto part = dot == std::string::npos ? layer_parts.end() : layer_parts.find(rest.substr(0, dot));
    if (part == layer_parts.end()) unconvertible(file, entry.name, "an SDXL CLIP-G text encoder");
    out.emplace_back(target + part->second + rest.substr(dot), value);
  }
  return out;
}

named_tensors unet_from_ldm(const checkpoint& file_weights, const std::filesystem::path& file,
                            const ldm_unet_layout& layout) {
  named_tensors out;
  for (const auto& entry : file_weights.entries()) {
    if (!starts_with(entry.name, unet_prefix)) continue;
    auto name = unet_name_from_ldm(entry.name.substr(std::string(unet_prefix).size()), layout);
    if (!name) unconvertible(file, entry.name, "an SDXL UNet");
    out.emplace_back(std::move(*name), file_weights.tensor(entry.name));
  }
  return out;
}

// family: "an SDXL", "an SD3"; repository: the diffusers repository of its configs.
std::filesystem::path find_config_dir(const std::filesystem::path& file, const std::filesystem::path& given,
                                      const std::string& family, const std::string& repository) {
  if (!given.empty()) return resolve_model_dir(given);
  try {
    return resolve_model_dir(repository);
  } catch (const error& absent) {
    throw error(file.string() + ": " + family +
                " single-file checkpoint takes its configs, tokenizers and scheduler from a diffusers folder: give "
                "--config-from DIR (a download of " +
                repository + "; its weights are not read). " + absent.what());
  }
}

}  // namespace

bool is_single_file(const std::filesystem::path& path) { return std::filesystem::is_regular_file(path); }

model_folder open_model(const std::filesystem::path& model, const std::filesystem::path& config_dir) {
  return is_single_file(model) ? open_single_file(model, config_dir) : model_folder::open(model);
}

std::optional<ldm_unet_layout> ldm_unet_layout::from(const unet_config& unet) {
  ldm_unet_layout layout;
  const auto& layers = unet.layers_per_block;
  if (layers.empty() || std::count(layers.begin(), layers.end(), layers.front()) != static_cast<long>(layers.size()))
    return std::nullopt;
  layout.layers_per_block = static_cast<int>(layers.front());
  layout.up_block_has_attention = unet.up_has_attention;
  return layout;
}

std::optional<std::string> unet_name_from_ldm(const std::string& key, const ldm_unet_layout& layout, char separator) {
  const std::string s(1, separator);
  static const std::pair<const char*, const char*> fixed[] = {{"time_embed.0", "time_embedding.linear_1"},
                                                              {"time_embed.2", "time_embedding.linear_2"},
                                                              {"label_emb.0.0", "add_embedding.linear_1"},
                                                              {"label_emb.0.2", "add_embedding.linear_2"},
                                                              {"input_blocks.0.0", "conv_in"},
                                                              {"out.0", "conv_norm_out"},
                                                              {"out.2", "conv_out"}};
  for (const auto& [ldm, diffusers] : fixed) {
    const auto ours = joined(ldm, separator);
    if (key == ours) return joined(diffusers, separator);
    if (starts_with(key, ours + s)) return joined(diffusers, separator) + key.substr(ours.size());
  }
  // Compiled once per separator: this runs for every UNet key of a file and every LoRA module name.
  auto compiled = [](const std::string& sep) {
    return std::pair<std::regex, std::regex>(
        "^(input_blocks|output_blocks)" + sep + "(\\d+)" + sep + "(\\d+)" + sep + "(.+)$",
        "^middle_block" + sep + "(\\d+)" + sep + "(.+)$");
  };
  static const auto dotted = compiled("\\."), underscored = compiled("_");
  if (separator != '.' && separator != '_') throw error("unet_name_from_ldm: separator must be '.' or '_'");
  const auto& [blocks, middle] = separator == '.' ? dotted : underscored;
  const int per_block = layout.layers_per_block + 1;  // LDM numbers the resnets and the re-sampler in one sequence
  std::smatch m;
  if (std::regex_match(key, m, middle)) {
    const auto index = m[1].str();
    if (index == "1") return "mid_block" + s + "attentions" + s + "0" + s + m[2].str();
    auto rest = resnet_name(m[2].str(), separator);
    if (!rest || (index != "0" && index != "2")) return std::nullopt;
    return "mid_block" + s + "resnets" + s + (index == "0" ? "0" : "1") + s + *rest;
  }
  if (!std::regex_match(key, m, blocks)) return std::nullopt;
  const int i = std::stoi(m[2].str()), j = std::stoi(m[3].str());
  const auto rest = m[4].str();
  auto resnet = [&](const std::string& prefix, int l) -> std::optional<std::string> {
    auto inner = resnet_name(rest, separator);
    if (!inner) return std::nullopt;
    return prefix + "resnets" + s + std::to_string(l) + s + *inner;
  };
  if (m[1] == "input_blocks") {
    if (i < 1) return std::nullopt;
    const int block = (i - 1) / per_block, l = (i - 1) % per_block;
    const auto prefix = "down_blocks" + s + std::to_string(block) + s;
    if (l == layout.layers_per_block) {  // the downsampler
      if (j != 0 || !starts_with(rest, "op" + s)) return std::nullopt;
      return prefix + "downsamplers" + s + "0" + s + "conv" + s + rest.substr(3);
    }
    if (j == 0) return resnet(prefix, l);
    if (j == 1) return prefix + "attentions" + s + std::to_string(l) + s + rest;
    return std::nullopt;
  }
  const int block = i / per_block, l = i % per_block;
  if (block >= static_cast<int>(layout.up_block_has_attention.size())) return std::nullopt;
  const auto prefix = "up_blocks" + s + std::to_string(block) + s;
  const bool attention = layout.up_block_has_attention[block];
  const bool upsampler = (j == 2 && attention) || (j == 1 && !attention);
  if (j == 0) return resnet(prefix, l);
  if (upsampler) {
    if (!starts_with(rest, "conv" + s)) return std::nullopt;
    return prefix + "upsamplers" + s + "0" + s + rest;
  }
  if (j == 1) return prefix + "attentions" + s + std::to_string(l) + s + rest;
  return std::nullopt;
}

model_folder open_single_file(const std::filesystem::path& file, const std::filesystem::path& config_dir) {
  if (file.extension() != ".safetensors")
    throw error(file.string() + ": single-file checkpoints are read from .safetensors files only (pickled .ckpt " +
                "files can run code when loaded; convert them to safetensors first)");
  const auto file_weights = checkpoint::open(file);
  auto has = [&](const std::string& key) { return file_weights.find(key) != nullptr; };
  const bool sdxl = has(std::string(unet_prefix) + "input_blocks.0.0.weight") &&
                    has(std::string(clip_g_prefix) + "positional_embedding");
  const bool sd3 = has(std::string(unet_prefix) + "joint_blocks.0.x_block.attn.qkv.weight");
  if (!sdxl && !sd3) {
    std::string some;
    for (std::size_t i = 0; i < file_weights.entries().size() && i < 3; ++i)
      some += (i ? ", " : "") + file_weights.entries()[i].name;
    throw error(file.string() + ": not an SDXL base or SD3/SD3.5 single-file checkpoint (no " + unet_prefix +
                "input_blocks.0.0.weight and " + clip_g_prefix + "positional_embedding, no " + unet_prefix +
                "joint_blocks.0.x_block.attn.qkv.weight); its first keys: " + some);
  }
  // SD3.5 Large normalizes q and k; SD3.5 Medium also has second attentions.
  const std::string repository = sdxl ? sdxl_repository
                                 : !has(std::string(unet_prefix) + "joint_blocks.0.x_block.attn.ln_q.weight")
                                     ? "stabilityai/stable-diffusion-3-medium-diffusers"
                                 : has(std::string(unet_prefix) + "joint_blocks.0.x_block.attn2.qkv.weight")
                                     ? "stabilityai/stable-diffusion-3.5-medium"
                                     : "stabilityai/stable-diffusion-3.5-large";
  auto folder = model_folder::open(find_config_dir(file, config_dir, sdxl ? "an SDXL" : "an SD3", repository));
  const std::string pipeline_class = sdxl ? "StableDiffusionXLPipeline" : "StableDiffusion3Pipeline";
  if (folder.pipeline_class() != pipeline_class)
    throw error(folder.dir().string() + " (--config-from for " + file.string() + "): a " +
                (folder.pipeline_class().empty() ? std::string("component folder") : folder.pipeline_class()) +
                ", not a " + pipeline_class + " folder");
  const std::vector<std::filesystem::path> files = {file};
  auto held = [&](const named_tensors& tensors) {
    return std::make_shared<const checkpoint>(checkpoint::of_tensors(tensors, files));
  };
  const auto vae_levels = static_cast<std::int64_t>(
      folder.component_config("vae").get<std::vector<std::int64_t>>("block_out_channels").size());
  folder.use_weights("vae", held(vae_from_ldm(file_weights, file, vae_levels)));
  std::vector<std::string> read_prefixes = {unet_prefix, vae_prefix};
  if (sdxl) {
    const auto layout = ldm_unet_layout::from(unet_config::from(folder.component_config("unet")));
    if (!layout)
      throw error(folder.dir().string() + " (--config-from for " + file.string() +
                  "): its UNet's blocks have different layers_per_block, which the original layout does not number");
    folder.use_weights("unet", held(unet_from_ldm(file_weights, file, *layout)));
    folder.use_weights("text_encoder", held(hf_text_encoder(file_weights, clip_l_prefix)));
    folder.use_weights("text_encoder_2", held(clip_g_from_open_clip(file_weights, file)));
    read_prefixes.insert(read_prefixes.end(), {clip_l_prefix, clip_g_prefix});
  } else {
    const auto num_layers = folder.component_config("transformer").get<std::int64_t>("num_layers");
    folder.use_weights("transformer", held(sd3_transformer_from_file(file_weights, file, num_layers)));
    // SD3's files hold CLIP-L without its projection, which loaders take as the identity (diffusers does too).
    auto clip_l = hf_text_encoder(file_weights, sd3_clip_l_prefix);
    const bool projected = std::any_of(clip_l.begin(), clip_l.end(),
                                       [](const auto& item) { return item.first == "text_projection.weight"; });
    const auto position = std::string(sd3_clip_l_prefix) + "text_model.embeddings.position_embedding.weight";
    if (!projected && has(position)) {
      const auto width = file_weights.tensor(position);
      clip_l.emplace_back("text_projection.weight", torch::eye(width.size(1), width.options()));
    }
    folder.use_weights("text_encoder", held(clip_l));
    folder.use_weights("text_encoder_2", held(hf_text_encoder(file_weights, sd3_clip_g_prefix)));
    read_prefixes.insert(read_prefixes.end(), {sd3_clip_l_prefix, sd3_clip_g_prefix});
    if (has(std::string(sd3_t5_prefix) + "shared.weight")) {
      if (folder.has("text_encoder_3")) {
        folder.use_weights("text_encoder_3", held(hf_text_encoder(file_weights, sd3_t5_prefix)));
        read_prefixes.push_back(sd3_t5_prefix);
      } else {
        spdlog::info("{}: its T5 encoder is not used: {} has no text_encoder_3 (its 256 T5 positions are zeros)",
                     file.string(), folder.dir().string());
      }
    }
  }
  std::vector<std::string> ignored;
  for (const auto& entry : file_weights.entries())
    if (std::none_of(read_prefixes.begin(), read_prefixes.end(),
                     [&](const std::string& prefix) { return starts_with(entry.name, prefix); }))
      ignored.push_back(entry.name);
  log_ignored(file, ignored);
  spdlog::info("{}: {} single-file checkpoint; configs and tokenizers from {}", file.string(),
               sdxl ? "an SDXL" : "an SD3", folder.dir().string());
  return folder;
}

}  // namespace hybridiff::models
