#include "models/pipelines/class_conditional_pipeline.hpp"

#include <algorithm>
#include <cctype>
#include <fstream>

#include "models/errors.hpp"
#include "models/io/safetensors.hpp"

namespace hybridiff::models {

namespace {

void write_json(const std::filesystem::path& path, const nlohmann::json& values) {
  std::filesystem::create_directories(path.parent_path());
  std::ofstream file(path);
  file << values.dump(2) << "\n";
  if (!file) throw error(path.string() + ": cannot write");
}

// Lower case, '-' and '_' read as spaces: "Ankle-Boot" and "ankle boot" name the same class.
std::string normalised(const std::string& text) {
  std::string out;
  for (char c : text) out.push_back(c == '-' || c == '_' ? ' ' : static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  const auto first = out.find_first_not_of(' ');
  if (first == std::string::npos) return "";
  return out.substr(first, out.find_last_not_of(' ') - first + 1);
}

struct embedder_config {
  std::vector<std::string> class_names;
  std::int64_t tokens, dim;

  static embedder_config from(const config& values) {
    embedder_config c{values.get<std::vector<std::string>>("class_names"), values.get<std::int64_t>("num_tokens"),
                      values.get<std::int64_t>("embedding_dim")};
    if (c.class_names.empty()) values.reject("class_names", "is empty");
    if (c.tokens < 1) values.reject("num_tokens", "must be at least 1");
    if (c.dim < 1) values.reject("embedding_dim", "must be at least 1");
    return c;
  }
};

}  // namespace

ClassTokenEmbeddingImpl::ClassTokenEmbeddingImpl(std::int64_t classes, std::int64_t tokens, std::int64_t dim)
    : tokens_(tokens), dim_(dim) {
  embedding = register_module("embedding", torch::nn::Embedding(classes + 1, tokens * dim));
}

at::Tensor ClassTokenEmbeddingImpl::forward(const at::Tensor& labels) {
  return embedding(labels).view({labels.size(0), tokens_, dim_});
}

std::string class_file_stem(const std::string& class_name) {
  auto stem = class_name;
  std::replace(stem.begin(), stem.end(), ' ', '-');
  return stem;
}

void write_class_conditional_configs(const std::filesystem::path& dir, const class_conditional_layout& layout) {
  const auto blocks = layout.block_out_channels.size();
  if (blocks < 2 || layout.heads.size() != blocks) throw error("class-conditional layout: need >= 2 blocks and one head count per block");
  write_json(dir / "model_index.json",
             {{"_class_name", class_conditional_pipeline::class_name_text},
              {"_hybridiff_version", "0.1"},
              {"default_steps", layout.default_steps},
              {"default_guidance", layout.default_guidance},
              {"tau_detection",
               {{"L_slope", layout.L_slope}, {"eps_slope", layout.eps_slope}, {"k", layout.k}, {"tau_cap", layout.tau_cap}}},
              {"scheduler", {"diffusers", "DDIMScheduler"}},
              {"unet", {"diffusers", "UNet2DConditionModel"}},
              {"class_embedder", {"hybridiff", "ClassTokenEmbedding"}}});
  write_json(dir / "scheduler" / "scheduler_config.json",
             {{"_class_name", "DDIMScheduler"}, {"num_train_timesteps", 1000}, {"beta_start", 0.0001},
              {"beta_end", 0.02}, {"beta_schedule", "linear"}, {"prediction_type", "epsilon"},
              {"clip_sample", false}, {"set_alpha_to_one", true}, {"steps_offset", 0},
              {"timestep_spacing", "trailing"}});
  // The SDXL layout (plain first block, cross-attention deeper down), small and in pixel space.
  std::vector<std::string> down{"DownBlock2D"}, up;
  for (std::size_t i = 1; i < blocks; ++i) down.push_back("CrossAttnDownBlock2D");
  for (std::size_t i = 1; i < blocks; ++i) up.push_back("CrossAttnUpBlock2D");
  up.push_back("UpBlock2D");
  write_json(dir / "unet" / "config.json",
             {{"_class_name", "UNet2DConditionModel"}, {"sample_size", layout.sample_size},
              {"in_channels", layout.channels}, {"out_channels", layout.channels},
              {"block_out_channels", layout.block_out_channels}, {"layers_per_block", layout.layers_per_block},
              {"down_block_types", down}, {"up_block_types", up}, {"mid_block_type", "UNetMidBlock2DCrossAttn"},
              {"attention_head_dim", layout.heads}, {"cross_attention_dim", layout.token_dim},
              {"transformer_layers_per_block", 1}, {"use_linear_projection", true}, {"norm_num_groups", 32},
              {"norm_eps", 1e-5}, {"flip_sin_to_cos", true}, {"freq_shift", 0}, {"addition_embed_type", nullptr}});
  write_json(dir / "class_embedder" / "config.json",
             {{"_class_name", "ClassTokenEmbedding"}, {"class_names", layout.class_names},
              {"num_tokens", layout.tokens}, {"embedding_dim", layout.token_dim}});
}

void save_class_conditional_weights(const std::filesystem::path& dir, torch::nn::Module& unet,
                                    torch::nn::Module& class_embedder, at::ScalarType dtype) {
  auto save = [&](torch::nn::Module& module, const std::filesystem::path& path) {
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    for (const auto& item : module.named_parameters()) tensors.emplace_back(item.key(), item.value().detach().to(torch::kCPU, dtype));
    save_safetensors(path, tensors);
  };
  save(unet, dir / "unet" / "diffusion_pytorch_model.safetensors");
  save(class_embedder, dir / "class_embedder" / "diffusion_pytorch_model.safetensors");
}

UNet2DConditionModel make_class_conditional_unet(const std::filesystem::path& dir) {
  return UNet2DConditionModel(unet_config::from(read_config(dir / "unet" / "config.json", "UNet2DConditionModel")));
}

ClassTokenEmbedding make_class_embedder(const std::filesystem::path& dir) {
  const auto c = embedder_config::from(read_config(dir / "class_embedder" / "config.json"));
  return ClassTokenEmbedding(static_cast<std::int64_t>(c.class_names.size()), c.tokens, c.dim);
}

std::unique_ptr<class_conditional_pipeline> class_conditional_pipeline::load(const model_folder& folder,
                                                                            const load_options& options) {
  std::unique_ptr<class_conditional_pipeline> pipeline(new class_conditional_pipeline());
  pipeline->placement_ = options;
  for (const char* name : {"scheduler", "unet", "class_embedder"}) folder.get(name);
  pipeline->scheduler_config_ = folder.component_config("scheduler");
  const auto& index = folder.index();
  const auto index_path = (folder.dir() / "model_index.json").string();
  if (index.contains("default_steps")) {
    if (!index["default_steps"].is_number_integer()) throw error(index_path + ": 'default_steps' is not an integer");
    pipeline->default_steps_ = index["default_steps"].get<std::int64_t>();
  }
  if (index.contains("default_guidance")) {
    if (!index["default_guidance"].is_number()) throw error(index_path + ": 'default_guidance' is not a number");
    pipeline->default_guidance_ = index["default_guidance"].get<double>();
  }
  if (index.contains("tau_detection")) {
    const auto& tau = index["tau_detection"];
    try {
      pipeline->tau_ = tau_detection{tau.at("L_slope").get<int>(), tau.at("k").get<int>(), tau.at("tau_cap").get<int>(),
                                     tau.at("eps_slope").get<double>()};
    } catch (const nlohmann::json::exception&) {
      throw error(index_path + ": 'tau_detection' needs numbers L_slope, eps_slope, k and tau_cap");
    }
  }
  const auto embedder = embedder_config::from(folder.component_config("class_embedder"));
  pipeline->class_names_ = embedder.class_names;
  pipeline->unet_ = load_unet(folder.get("unet").dir, options);
  const auto& unet = pipeline->unet_->config();
  if (unet.text_time) throw error(folder.get("unet").dir.string() + ": a class-conditional UNet takes no text_time embedding");
  for (auto dim : unet.cross_attention_dim)
    if (dim != embedder.dim)
      throw error(folder.dir().string() + ": unet's cross_attention_dim " + std::to_string(dim) +
                  " differs from class_embedder's embedding_dim " + std::to_string(embedder.dim));
  pipeline->sample_size_ = folder.component_config("unet").get_or<std::int64_t>("sample_size", 32);
  pipeline->size_factor_ = std::int64_t{1} << (unet.block_out_channels.size() - 1);
  ClassTokenEmbedding class_embedder(static_cast<std::int64_t>(embedder.class_names.size()), embedder.tokens, embedder.dim);
  load_state_dict(*class_embedder, component_weights(folder.get("class_embedder").dir, options), options);
  class_embedder->eval();
  pipeline->class_embedder_ = class_embedder;
  return pipeline;
}

generation_plan class_conditional_pipeline::plan(const generation_request& request) const {
  return settle_plan(request, default_steps_, sample_size_, default_guidance_, size_factor_,
                     "the UNet's downsampling factor", 512);
}

std::int64_t class_conditional_pipeline::label_of(const std::string& prompt) const {
  const auto wanted = normalised(prompt);
  for (std::size_t i = 0; i < class_names_.size(); ++i)
    if (normalised(class_names_[i]) == wanted) return static_cast<std::int64_t>(i);
  std::string names;
  for (const auto& name : class_names_) names += (names.empty() ? "" : ", ") + name;
  throw error("prompt '" + prompt + "' is not a class of this model; it draws: " + names);
}

at::Tensor class_conditional_pipeline::context_of(std::int64_t label) {
  torch::NoGradGuard no_grad;
  auto labels = torch::full({1}, label, torch::TensorOptions(torch::kLong).device(placement_.device));
  return class_embedder_->forward(labels);  // [1, tokens, dim]
}

void class_conditional_pipeline::check_prompt(const generation_request& request) const {
  label_of(request.prompt);
  if (request.negative_prompt && !normalised(*request.negative_prompt).empty()) label_of(*request.negative_prompt);
}

prompt_conditioning class_conditional_pipeline::encode_prompt(const generation_request& request, const generation_plan&) {
  const auto null_class = static_cast<std::int64_t>(class_names_.size());
  const auto negative = request.negative_prompt && !normalised(*request.negative_prompt).empty()
                            ? label_of(*request.negative_prompt)
                            : null_class;
  prompt_conditioning result;
  result.positive.context = context_of(label_of(request.prompt));
  result.negative.context = context_of(negative);
  return result;
}

at::Tensor class_conditional_pipeline::predict(const at::Tensor& latents, const at::Tensor& timestep,
                                               const branch_conditioning& cond, module_runner* runner) {
  const UNet2DConditionModelImpl::conditioning unet_cond{cond.context, at::Tensor(), at::Tensor()};
  return runner != nullptr ? unet_->forward(latents, timestep, unet_cond, *runner) : unet_->forward(latents, timestep, unet_cond);
}

std::unique_ptr<sampler> class_conditional_pipeline::make_sampler(const std::string& name) const {
  return models::make_sampler(scheduler_config_, name);
}

at::Tensor class_conditional_pipeline::decode(const at::Tensor& latents) {
  auto grey = latents.detach().to(torch::kCPU, torch::kFloat32).add(1.0).div(2.0).clamp(0.0, 1.0);  // [1, 1, H, W]
  return grey.expand({grey.size(0), 3, grey.size(2), grey.size(3)}).contiguous();
}

std::vector<std::int64_t> class_conditional_pipeline::latent_shape(std::int64_t height, std::int64_t width) const {
  return {1, unet_->config().in_channels, height, width};
}

void class_conditional_pipeline::merge_loras(lora_merge& loras) { loras.merge("unet", *unet_); }

}  // namespace hybridiff::models
