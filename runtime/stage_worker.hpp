#pragma once
// What one worker computes, without any messaging: its model replica, its conditioning, its activation cache.
// The worker actor (actors/) wraps one of these; tests compose them by hand to check the actors' numerics.

#include <map>
#include <memory>
#include <set>
#include <string>

#include "models/pipeline.hpp"

namespace hybridiff::runtime {

/// Module path -> that module's latest output.
using activation_cache = std::map<std::string, models::activation>;

/// One worker of a parallel generation. Inputs arrive on any device and are moved to the worker's (its
/// pipeline's placement), as are the other workers' activations; outputs stay on the worker's device.
class stage_worker {
 public:
  stage_worker(std::shared_ptr<models::diffusion_pipeline> pipeline, int rank);

  int rank() const { return rank_; }
  models::diffusion_pipeline& pipeline() { return *pipeline_; }

  /// The conditioning this worker runs with: one branch (batch 1) or both stacked (batch 2, AsyncDiff's CFG);
  /// moved to the worker's device.
  void set_conditioning(models::branch_conditioning conditioning);
  /// A different conditioning for fill and pipeline steps (hybrid's `cond` window); unset: the same.
  void set_window_conditioning(models::branch_conditioning conditioning);
  /// The modules this worker owns in pipeline steps (its AsyncDiff component).
  void set_component(std::set<std::string> modules) { owned_ = std::move(modules); }
  const std::set<std::string>& component() const { return owned_; }

  /// A full forward pass (a CFG branch or the batched model): latents [B, C, h, w] -> prediction. `conditioning`
  /// replaces the worker's own for this call (both branches batched, when a worker takes over a lost one's work).
  at::Tensor predict(const at::Tensor& latents, const at::Tensor& timestep,
                     const models::branch_conditioning* conditioning = nullptr);
  /// The first step of a pipeline window: a full forward pass that records every module's output.
  at::Tensor fill(const at::Tensor& latents, const at::Tensor& timestep);
  /// A stale-activation step: owned modules compute (on whatever reaches them) and refresh the cache; every
  /// other module returns `peers`' entry (the owners' outputs of the previous step), or this worker's own cache
  /// entry when `peers` lacks it. Returns the forward pass's output (meaningful on the output component's worker).
  at::Tensor pipeline_step(const at::Tensor& latents, const at::Tensor& timestep, const activation_cache& peers);
  /// This worker's cache: every module after `fill`, then its owned modules' latest outputs.
  const activation_cache& cache() const { return cache_; }
  /// The owned modules' entries, for the other workers' next step.
  activation_cache owned_outputs() const;
  void clear_cache() { cache_.clear(); }

 private:
  std::shared_ptr<models::diffusion_pipeline> pipeline_;
  int rank_;
  models::branch_conditioning on_device(models::branch_conditioning conditioning) const;

  models::branch_conditioning conditioning_, window_conditioning_;
  const models::branch_conditioning& window_conditioning() const {
    return window_conditioning_.context.defined() ? window_conditioning_ : conditioning_;
  }
  std::set<std::string> owned_;
  activation_cache cache_;
};

}  // namespace hybridiff::runtime
