#include "models/io/config.hpp"

#include <fstream>
#include <limits>
#include <map>

namespace hybridiff::models {
namespace {

using json = nlohmann::json;

// The __init__ defaults of the classes hybridiff implements (diffusers 0.40 / transformers 5), so that a config
// file that omits a key reads as the Python class would read it.
const std::map<std::string, json>& default_tables() {
  static const std::map<std::string, json> tables = [] {
    std::map<std::string, json> t;
    t["UNet2DConditionModel"] = {
        {"sample_size", nullptr},
        {"in_channels", 4},
        {"out_channels", 4},
        {"center_input_sample", false},
        {"flip_sin_to_cos", true},
        {"freq_shift", 0},
        {"down_block_types", {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"}},
        {"mid_block_type", "UNetMidBlock2DCrossAttn"},
        {"up_block_types", {"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"}},
        {"only_cross_attention", false},
        {"block_out_channels", {320, 640, 1280, 1280}},
        {"layers_per_block", 2},
        {"downsample_padding", 1},
        {"mid_block_scale_factor", 1.0},
        {"dropout", 0.0},
        {"act_fn", "silu"},
        {"norm_num_groups", 32},
        {"norm_eps", 1e-5},
        {"cross_attention_dim", 1280},
        {"transformer_layers_per_block", 1},
        {"reverse_transformer_layers_per_block", nullptr},
        {"encoder_hid_dim", nullptr},
        {"encoder_hid_dim_type", nullptr},
        {"attention_head_dim", 8},
        {"num_attention_heads", nullptr},
        {"dual_cross_attention", false},
        {"use_linear_projection", false},
        {"class_embed_type", nullptr},
        {"addition_embed_type", nullptr},
        {"addition_time_embed_dim", nullptr},
        {"num_class_embeds", nullptr},
        {"upcast_attention", false},
        {"resnet_time_scale_shift", "default"},
        {"resnet_skip_time_act", false},
        {"resnet_out_scale_factor", 1.0},
        {"time_embedding_type", "positional"},
        {"time_embedding_dim", nullptr},
        {"time_embedding_act_fn", nullptr},
        {"timestep_post_act", nullptr},
        {"time_cond_proj_dim", nullptr},
        {"conv_in_kernel", 3},
        {"conv_out_kernel", 3},
        {"projection_class_embeddings_input_dim", nullptr},
        {"attention_type", "default"},
        {"class_embeddings_concat", false},
        {"mid_block_only_cross_attention", nullptr},
        {"cross_attention_norm", nullptr},
        {"addition_embed_type_num_heads", 64},
    };
    t["AutoencoderKL"] = {
        {"in_channels", 3},
        {"out_channels", 3},
        {"down_block_types", {"DownEncoderBlock2D"}},
        {"up_block_types", {"UpDecoderBlock2D"}},
        {"block_out_channels", {64}},
        {"layers_per_block", 1},
        {"act_fn", "silu"},
        {"latent_channels", 4},
        {"norm_num_groups", 32},
        {"sample_size", 32},
        {"scaling_factor", 0.18215},
        {"shift_factor", nullptr},
        {"latents_mean", nullptr},
        {"latents_std", nullptr},
        {"force_upcast", true},
        {"use_quant_conv", true},
        {"use_post_quant_conv", true},
        {"mid_block_add_attention", true},
    };
    t["SD3Transformer2DModel"] = {
        {"sample_size", 128},
        {"patch_size", 2},
        {"in_channels", 16},
        {"num_layers", 18},
        {"attention_head_dim", 64},
        {"num_attention_heads", 18},
        {"joint_attention_dim", 4096},
        {"caption_projection_dim", 1152},
        {"pooled_projection_dim", 2048},
        {"out_channels", 16},
        {"pos_embed_max_size", 96},
        {"dual_attention_layers", json::array()},
        {"qk_norm", nullptr},
    };
    json clip = {
        {"vocab_size", 49408},
        {"hidden_size", 512},
        {"intermediate_size", 2048},
        {"projection_dim", 512},
        {"num_hidden_layers", 12},
        {"num_attention_heads", 8},
        {"max_position_embeddings", 77},
        {"hidden_act", "quick_gelu"},
        {"layer_norm_eps", 1e-5},
        {"pad_token_id", 1},
        {"bos_token_id", 49406},
        {"eos_token_id", 49407},
    };
    t["CLIPTextModel"] = clip;
    t["CLIPTextModelWithProjection"] = clip;
    t["T5EncoderModel"] = {
        {"vocab_size", 32128},
        {"d_model", 512},
        {"d_kv", 64},
        {"d_ff", 2048},
        {"num_layers", 6},
        {"num_heads", 8},
        {"relative_attention_num_buckets", 32},
        {"relative_attention_max_distance", 128},
        {"layer_norm_epsilon", 1e-6},
        {"feed_forward_proj", "relu"},
        {"pad_token_id", 0},
        {"eos_token_id", 1},
    };
    json betas = {
        {"num_train_timesteps", 1000}, {"beta_start", 0.0001},      {"beta_end", 0.02},
        {"beta_schedule", "linear"},   {"trained_betas", nullptr},   {"prediction_type", "epsilon"},
        {"steps_offset", 0},           {"rescale_betas_zero_snr", false},
    };
    t["EulerDiscreteScheduler"] = betas;
    t["EulerDiscreteScheduler"].update({
        {"interpolation_type", "linear"},
        {"use_karras_sigmas", false},
        {"use_exponential_sigmas", false},
        {"use_beta_sigmas", false},
        {"sigma_min", nullptr},
        {"sigma_max", nullptr},
        {"timestep_spacing", "linspace"},
        {"timestep_type", "discrete"},
        {"final_sigmas_type", "zero"},
    });
    t["DDIMScheduler"] = betas;
    t["DDIMScheduler"].update({
        {"clip_sample", true},
        {"set_alpha_to_one", true},
        {"thresholding", false},
        {"dynamic_thresholding_ratio", 0.995},
        {"clip_sample_range", 1.0},
        {"sample_max_value", 1.0},
        {"timestep_spacing", "leading"},
    });
    t["DPMSolverMultistepScheduler"] = betas;
    t["DPMSolverMultistepScheduler"].update({
        {"solver_order", 2},
        {"thresholding", false},
        {"dynamic_thresholding_ratio", 0.995},
        {"sample_max_value", 1.0},
        {"algorithm_type", "dpmsolver++"},
        {"solver_type", "midpoint"},
        {"lower_order_final", true},
        {"euler_at_final", false},
        {"use_karras_sigmas", false},
        {"use_exponential_sigmas", false},
        {"use_beta_sigmas", false},
        {"use_lu_lambdas", false},
        {"final_sigmas_type", "zero"},
        {"lambda_min_clipped", -std::numeric_limits<double>::infinity()},
        {"variance_type", nullptr},
        {"timestep_spacing", "linspace"},
    });
    t["FlowMatchEulerDiscreteScheduler"] = {
        {"num_train_timesteps", 1000},
        {"shift", 1.0},
        {"use_dynamic_shifting", false},
        {"base_shift", 0.5},
        {"max_shift", 1.15},
        {"base_image_seq_len", 256},
        {"max_image_seq_len", 4096},
        {"invert_sigmas", false},
        {"shift_terminal", nullptr},
        {"use_karras_sigmas", false},
        {"use_exponential_sigmas", false},
        {"use_beta_sigmas", false},
        {"time_shift_type", "exponential"},
        {"stochastic_sampling", false},
    };
    return t;
  }();
  return tables;
}

}  // namespace

// Quotes the bare NaN / Infinity / -Infinity literals outside strings so that a strict JSON parser accepts them.
static std::string quote_python_literals(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  bool in_string = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (in_string) {
      out += c;
      if (c == '\\' && i + 1 < text.size()) out += text[++i];
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') in_string = true;
    bool replaced = false;
    for (const char* literal : {"-Infinity", "Infinity", "NaN"}) {
      std::string word(literal);
      if (text.compare(i, word.size(), word) == 0) {
        out += '"' + word + '"';
        i += word.size() - 1;
        replaced = true;
        break;
      }
    }
    if (!replaced) out += c;
  }
  return out;
}

json parse_json_text(const std::string& text, const std::filesystem::path& source) {
  try {
    return json::parse(quote_python_literals(text));
  } catch (const json::exception& malformed) {
    throw error(source.string() + ": malformed JSON: " + malformed.what());
  }
}

json read_json_file(const std::filesystem::path& path) {
  if (!std::filesystem::exists(path)) throw error(path.string() + ": file is missing");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw error(path.string() + ": cannot open");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return parse_json_text(text, path);
}

config::config(json values, std::filesystem::path source) : values_(std::move(values)), source_(std::move(source)) {
  if (!values_.is_object()) throw error(source_.string() + ": config is not a JSON object");
}

bool config::has(const std::string& key) const {
  auto found = values_.find(key);
  return found != values_.end() && !found->is_null();
}

const json& config::at(const std::string& key) const {
  auto found = values_.find(key);
  if (found == values_.end() || found->is_null()) throw error(source_.string() + ": missing config key '" + key + "'");
  return *found;
}

std::vector<int> config::get_per_block(const std::string& key, std::size_t count) const {
  const auto& value = at(key);
  if (value.is_number_integer()) return std::vector<int>(count, value.get<int>());
  auto list = get<std::vector<int>>(key);
  if (list.size() != count)
    reject(key, "has " + std::to_string(list.size()) + " entries, expected one per block (" + std::to_string(count) + ")");
  return list;
}

void config::reject(const std::string& key, const std::string& message) const {
  throw error(source_.string() + ": config key '" + key + "' " + message);
}

config read_config(const std::filesystem::path& path, std::string class_name) {
  return config_from_json(read_json_file(path), path, std::move(class_name));
}

config config_from_json(json values, const std::filesystem::path& path, std::string class_name) {
  if (!values.is_object()) throw error(path.string() + ": config is not a JSON object");
  if (class_name.empty()) {
    if (values.contains("_class_name") && values["_class_name"].is_string())
      class_name = values["_class_name"].get<std::string>();
    else if (values.contains("architectures") && values["architectures"].is_array() && !values["architectures"].empty())
      class_name = values["architectures"][0].get<std::string>();
  }
  const auto& tables = default_tables();
  auto defaults = tables.find(class_name);
  if (defaults != tables.end()) {
    auto merged = defaults->second;
    merged.update(values);
    values = std::move(merged);
  }
  if (!class_name.empty()) values["_class_name"] = class_name;
  return config(std::move(values), path);
}

config as_class(const config& values, const std::string& class_name) {
  const auto& tables = default_tables();
  auto defaults = tables.find(class_name);
  if (defaults == tables.end()) throw error(values.source().string() + ": cannot read as unknown class " + class_name);
  auto merged = defaults->second;
  for (auto& [key, value] : merged.items())
    if (values.values().contains(key)) value = values.values()[key];
  merged["_class_name"] = class_name;
  return config(std::move(merged), values.source());
}

}  // namespace hybridiff::models
