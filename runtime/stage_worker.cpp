#include "runtime/stage_worker.hpp"

#include <torch/torch.h>

#include "models/errors.hpp"

namespace hybridiff::runtime {
namespace {

// Computes every module and records its output.
class recording_runner : public models::module_runner {
 public:
  explicit recording_runner(activation_cache& cache) : cache_(cache) {}
  models::activation run(const std::string& module, const std::function<models::activation()>& compute) override {
    auto out = compute();
    cache_[module] = out;
    return out;
  }

 private:
  activation_cache& cache_;
};

// Moves every tensor of an activation to `device` (a no-op when it is there already).
models::activation activation_on(const c10::Device& device, const models::activation& value) {
  models::activation moved;
  for (const auto& tensor : value) moved.push_back(tensor.defined() ? tensor.to(device) : tensor);
  return moved;
}

// Computes owned modules (refreshing the cache), takes the others' values from `reuse`.
class stale_runner : public models::module_runner {
 public:
  stale_runner(const std::set<std::string>& owned, const graphed_stage::reuse_function& reuse, activation_cache& cache)
      : owned_(owned), reuse_(reuse), cache_(cache) {}
  models::activation run(const std::string& module, const std::function<models::activation()>& compute) override {
    if (!owned_.count(module)) return reuse_(module);
    auto out = compute();
    cache_[module] = out;
    return out;
  }

 private:
  const std::set<std::string>& owned_;
  const graphed_stage::reuse_function& reuse_;
  activation_cache& cache_;
};

}  // namespace

stage_worker::stage_worker(std::shared_ptr<models::diffusion_pipeline> pipeline, int rank)
    : pipeline_(std::move(pipeline)), rank_(rank) {
  if (!pipeline_) throw error("stage_worker " + std::to_string(rank) + ": no pipeline");
}

void stage_worker::set_conditioning(models::branch_conditioning conditioning) {
  conditioning_ = on_device(std::move(conditioning));
}

void stage_worker::set_window_conditioning(models::branch_conditioning conditioning) {
  window_conditioning_ = on_device(std::move(conditioning));
}

models::branch_conditioning stage_worker::on_device(models::branch_conditioning conditioning) const {
  const auto& device = pipeline_->placement().device;
  for (auto* tensor : {&conditioning.context, &conditioning.pooled, &conditioning.time_ids})
    if (tensor->defined()) *tensor = tensor->to(device);
  return conditioning;
}

void stage_worker::use_cuda_graphs(bool on) {
  if (!on) {
    graphed_.reset();
    graphed_stages_.reset();
  } else if (!graphed_) {
    if (!pipeline_->placement().device.is_cuda())
      throw error("worker " + std::to_string(rank_) + ": CUDA graphs need a CUDA device, not " +
                  pipeline_->placement().device.str());
    graphed_ = std::make_unique<graphed_denoiser>(*pipeline_);
    graphed_stages_ = std::make_unique<graphed_stage>(*pipeline_);
  }
}

at::Tensor stage_worker::predict(const at::Tensor& latents, const at::Tensor& timestep,
                                 const models::branch_conditioning* conditioning) {
  torch::NoGradGuard no_grad;
  const auto& device = pipeline_->placement().device;
  const auto& cond = conditioning != nullptr ? on_device(*conditioning) : conditioning_;
  if (graphed_) return graphed_->predict(latents.to(device), timestep.to(device), cond);
  return pipeline_->predict(latents.to(device), timestep.to(device), cond);
}

at::Tensor stage_worker::fill(const at::Tensor& latents, const at::Tensor& timestep, split_scope scope) {
  torch::NoGradGuard no_grad;
  cache_.clear();
  recording_runner runner(cache_);
  const auto& device = pipeline_->placement().device;
  return pipeline_->predict(latents.to(device), timestep.to(device), conditioning_of(scope), &runner);
}

at::Tensor stage_worker::pipeline_step(const at::Tensor& latents, const at::Tensor& timestep, const activation_cache& peers,
                                       split_scope scope) {
  torch::NoGradGuard no_grad;
  const auto& device = pipeline_->placement().device;
  // A module this worker does not own: the owner's output of the previous step (from `peers`, on the owner's
  // device), or this worker's own cache entry when `peers` lacks it.
  const graphed_stage::reuse_function reuse = [&](const std::string& module) -> models::activation {
    if (auto found = peers.find(module); found != peers.end()) return activation_on(device, found->second);
    if (auto found = cache_.find(module); found != cache_.end()) return found->second;
    throw error("pipeline step: module '" + module + "' is neither owned nor cached (was the window filled?)");
  };
  if (graphed_stages_) {
    activation_cache computed;
    auto out = graphed_stages_->step(latents.to(device), timestep.to(device), conditioning_of(scope), component(scope),
                                     reuse, handed_on_[index(scope)], computed);
    for (auto& [module, value] : computed) cache_[module] = std::move(value);
    return out;
  }
  stale_runner runner(component(scope), reuse, cache_);
  return pipeline_->predict(latents.to(device), timestep.to(device), conditioning_of(scope), &runner);
}

activation_cache stage_worker::owned_outputs(split_scope scope) const {
  activation_cache outputs;
  for (const auto& module : handed_on_[index(scope)])
    if (auto found = cache_.find(module); found != cache_.end()) outputs.emplace(module, found->second);
  return outputs;
}

schedule::asyncdiff_plan split_plan(const models::diffusion_pipeline& pipeline, int n, int stride) {
  const auto family = pipeline.family() == models::denoiser_family::transformer ? schedule::denoiser_family::sd3_transformer
                                                                                 : schedule::denoiser_family::sdxl_unet;
  try {
    return schedule::make_plan(family, n, stride, static_cast<int>(pipeline.transformer_blocks()));
  } catch (const std::invalid_argument& bad) {  // the schedule layer is standard C++ only
    throw invalid_options(pipeline.class_name() + ": " + bad.what());
  }
}

}  // namespace hybridiff::runtime
