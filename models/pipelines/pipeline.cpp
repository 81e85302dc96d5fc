#include "models/pipelines/pipeline.hpp"

#include <algorithm>
#include <optional>
#include <set>

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "models/errors.hpp"
#include "models/nn/nn.hpp"

namespace hybridiff::models {

branch_conditioning branch_conditioning::stack(const branch_conditioning& negative, const branch_conditioning& positive) {
  auto cat = [](const at::Tensor& a, const at::Tensor& b) { return a.defined() ? torch::cat({a, b}, 0) : at::Tensor(); };
  return {cat(negative.context, positive.context), cat(negative.pooled, positive.pooled),
          cat(negative.time_ids, positive.time_ids)};
}

void denoiser_only(const std::string& what) {
  throw error("this pipeline was loaded with its denoiser only (a worker rank): it cannot " + what);
}

generation_plan settle_plan(const generation_request& request, std::int64_t default_steps, std::int64_t default_size,
                            double default_guidance, std::int64_t size_factor, const std::string& size_factor_name,
                            std::int64_t max_size) {
  generation_plan plan;
  plan.steps = request.steps.value_or(default_steps);
  plan.height = request.height.value_or(default_size);
  plan.width = request.width.value_or(default_size);
  plan.guidance = request.guidance.value_or(default_guidance);
  plan.classifier_free = plan.guidance > 1.0;
  if (plan.steps < 1 || plan.steps > 1000) throw error("--steps " + std::to_string(plan.steps) + " is outside [1, 1000]");
  for (auto [name, value] : {std::pair{"--height", plan.height}, std::pair{"--width", plan.width}}) {
    if (value < size_factor || value % size_factor != 0)
      throw error(std::string(name) + " " + std::to_string(value) + " is not a positive multiple of " +
                  size_factor_name + " " + std::to_string(size_factor));
    if (value > max_size)
      throw error(std::string(name) + " " + std::to_string(value) + " exceeds the limit of " + std::to_string(max_size));
  }
  return plan;
}

load_options vae_placement(bool force_upcast, const load_options& options) {
  auto placement = options;
  if (force_upcast && options.dtype == at::kHalf) placement.dtype = at::kFloat;
  return placement;
}

at::Tensor guide(const at::Tensor& uncond, const at::Tensor& cond, double guidance) {
  return uncond + guidance * (cond - uncond);
}

at::Tensor initial_latents(const generation_request& request, const std::vector<std::int64_t>& shape,
                           double init_noise_sigma, const load_options& placement) {
  at::Tensor noise;
  if (request.initial_latents.defined()) {
    if (request.initial_latents.sizes() != c10::IntArrayRef(shape))
      throw error("initial latents have shape " + c10::str(request.initial_latents.sizes()) + ", the requested size needs " +
                  c10::str(c10::IntArrayRef(shape)));
    noise = request.initial_latents.to(torch::kFloat32);
  } else {
    // Seeded on the CPU as diffusers' torch.Generator("cpu").manual_seed(seed), so a seed means the same noise
    // on every device.
    auto generator = at::make_generator<at::CPUGeneratorImpl>(request.seed);
    noise = torch::randn(shape, generator, torch::kFloat32);
  }
  auto dtype = placement.dtype.value_or(at::kFloat);
  return (noise * init_noise_sigma).to(placement.device, dtype);
}

at::Tensor generate_latents(diffusion_pipeline& pipeline, const generation_request& request,
                            const step_observer& observe, const denoise_function& denoise) {
  torch::NoGradGuard no_grad;
  const auto plan = pipeline.plan(request);
  const auto conditioning = pipeline.encode_prompt(request, plan);
  auto sampler = pipeline.make_sampler(request.sampler);
  sampler->set_timesteps(plan.steps);
  auto latents = initial_latents(request, pipeline.latent_shape(plan.height, plan.width), sampler->init_noise_sigma(),
                                 pipeline.placement());
  const auto batched = plan.classifier_free ? branch_conditioning::stack(conditioning.negative, conditioning.positive)
                                            : conditioning.positive;
  // On the device once: a CPU→GPU copy of each step's timestep would synchronise the host with the GPU every step
  // (ATen waits for a copy from pageable memory), leaving the GPU idle while the next step's work is enqueued.
  const auto timesteps = sampler->timesteps().to(latents.device());
  for (std::int64_t i = 0; i < plan.steps; ++i) {
    auto model_input = plan.classifier_free ? torch::cat({latents, latents}, 0) : latents;
    model_input = sampler->scale_model_input(model_input, i);
    auto t = timesteps[i];
    auto prediction = denoise ? denoise(model_input, t, batched) : pipeline.predict(model_input, t, batched);
    if (plan.classifier_free) {
      auto branches = prediction.chunk(2, 0);
      prediction = guide(branches[0], branches[1], plan.guidance);
    }
    latents = sampler->step(prediction, i, latents);
    if (observe) observe(i, plan.steps, latents);
  }
  return latents;
}

void with_memory_context(const std::string& what, const std::function<void()>& work) {
  auto fail = [&](std::string message) {
    if (auto end = message.find('\n'); end != std::string::npos) message.resize(end);  // the first line is the news
    throw error("out of memory while " + what + ": " + message +
                " (try a smaller image, --dtype fp16 or bf16, or fewer workers per device)");
  };
  // CUDA reports "CUDA out of memory" (c10::OutOfMemoryError), the CPU allocator "can't allocate memory"; a
  // worker actor reports either as text (a CAF error crosses the actor boundary as a string).
  auto exhausted = [](const std::string& message) {
    return message.find("out of memory") != std::string::npos || message.find("can't allocate memory") != std::string::npos;
  };
  try {
    work();
  } catch (const c10::Error& failure) {
    if (!exhausted(failure.what_without_backtrace())) throw;
    fail(failure.what_without_backtrace());
  } catch (const error& failure) {
    if (!exhausted(failure.what())) throw;
    fail(failure.what());
  }
}

void diffusion_pipeline::merge_loras(lora_merge&) {
  throw error(class_name() + " takes no LoRA (SDXL, SD3 and the built-in model do)");
}

void diffusion_pipeline::restore_lora_originals() {
  torch::NoGradGuard no_grad;
  for (auto& [weight, original] : lora_originals_) weight.copy_(original);
  lora_originals_.clear();
  active_loras_.clear();
}

void diffusion_pipeline::use_loras(const std::vector<lora_spec>& loras) {
  auto same = [](const lora_spec& a, const lora_spec& b) { return a.file == b.file && a.scale == b.scale; };
  if (std::equal(loras.begin(), loras.end(), active_loras_.begin(), active_loras_.end(), same)) return;
  if (placement_.fp8)
    throw error("LoRAs cannot be swapped into float8 weights: merge them at load (--lora) or use fp16, bf16 or fp32");
  std::optional<lora_merge> merge;
  if (!loras.empty()) merge.emplace(loras);  // every file read and checked before a weight changes
  restore_lora_originals();
  if (!merge) return;
  // The original of every weight the merge changes, once (two LoRAs may change the same weight).
  std::set<const void*> kept;
  merge->before_change([&](const at::Tensor& weight) {
    if (kept.insert(weight.unsafeGetTensorImpl()).second) lora_originals_.emplace_back(weight, weight.clone());
  });
  try {
    merge_loras(*merge);
    merge->finish();
  } catch (...) {
    restore_lora_originals();
    throw;
  }
  active_loras_ = loras;
}

int diffusion_pipeline::quantize_denoiser_to_fp8() {
  // The layers whose float8 GEMM pays for quantizing its input at run time (docs/models.md): the feed-forwards'
  // wide GEMMs and, in a transformer, the image stream's q, k and v (three GEMMs on one quantized input). A UNet's
  // attention projections (640 and 1280 features) are no faster in float8; an out-projection saves less than its
  // input's quantization costs; SD3's context stream (333 tokens) is too short to gain.
  const bool unet = family() == denoiser_family::unet;
  const std::vector<std::string> unet_layers = {".ff.net.0.proj", ".ff.net.2"};
  const std::vector<std::string> transformer_layers = {".attn.to_q", ".attn.to_k", ".attn.to_v", ".ff.net.0.proj",
                                                       ".ff.net.2"};
  const auto gains = [&](const std::string& name) {
    const auto ends_with = [&](const std::string& tail) {
      return name.size() >= tail.size() && name.compare(name.size() - tail.size(), tail.size(), tail) == 0;
    };
    const bool in_blocks =
        unet ? name.find("attentions.") != std::string::npos : name.rfind("transformer_blocks.", 0) == 0;
    const auto& layers = unet ? unet_layers : transformer_layers;
    return in_blocks && std::any_of(layers.begin(), layers.end(), ends_with);
  };
  const int quantized = quantize_linears_to_fp8(denoiser(), gains);
  placement_.fp8 = true;
  spdlog::info("{}: {} linear layers of the denoiser in float8 e4m3", class_name(), quantized);
  return quantized;
}

}  // namespace hybridiff::models
