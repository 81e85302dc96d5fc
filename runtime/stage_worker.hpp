#pragma once
// What one worker computes, without any messaging: its model replica, its conditioning, its activation cache.
// The worker actor (actors/) wraps one of these; tests compose them by hand to check the actors' numerics.

#include <map>
#include <memory>
#include <set>
#include <string>

#include "models/pipelines/pipeline.hpp"
#include "runtime/cuda_graph.hpp"
#include "schedule/asyncdiff_plan.hpp"

namespace hybridiff::runtime {

/// Module path -> that module's latest output.
using activation_cache = std::map<std::string, models::activation>;

/// Which split a pipelined step follows: `branch` (a guidance branch split over the workers of that branch, in CFG
/// steps, with the branch's conditioning) or `window` (the AsyncDiff split of the pipeline window, with the
/// window's conditioning).
enum class split_scope { branch, window };

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
  /// Full forward passes (predict) and stale-activation steps (pipeline_step) replayed from CUDA graphs (on), or
  /// eager (off, the default). Fill steps stay eager (one per pipelined run).
  void use_cuda_graphs(bool on);
  /// The modules this worker owns in pipelined steps of `scope` (its AsyncDiff component there), and those of them
  /// whose outputs other workers compute on (owned_outputs hands on only these).
  void set_component(split_scope scope, std::set<std::string> modules, std::set<std::string> handed_on) {
    owned_[index(scope)] = std::move(modules);
    handed_on_[index(scope)] = std::move(handed_on);
  }
  const std::set<std::string>& component(split_scope scope) const { return owned_[index(scope)]; }

  /// A full forward pass (a CFG branch or the batched model): latents [B, C, h, w] -> prediction. `conditioning`
  /// replaces the worker's own for this call (both branches batched, when a worker takes over a lost one's work).
  at::Tensor predict(const at::Tensor& latents, const at::Tensor& timestep,
                     const models::branch_conditioning* conditioning = nullptr);
  /// The first step of a pipelined run: a full forward pass (with `scope`'s conditioning) that records every
  /// module's output.
  at::Tensor fill(const at::Tensor& latents, const at::Tensor& timestep, split_scope scope = split_scope::window);
  /// A stale-activation step: owned modules compute (on whatever reaches them) and refresh the cache (replayed
  /// from a CUDA graph: the entries handed on); every other module returns `peers`' entry (the owners' outputs of
  /// the previous step), or this worker's own cache entry when `peers` lacks it (a module whose output cannot reach
  /// the component: after its last module, or an SD3 block before the one just ahead of its first). Returns the
  /// forward pass's output (meaningful on the output component's worker).
  at::Tensor pipeline_step(const at::Tensor& latents, const at::Tensor& timestep, const activation_cache& peers,
                           split_scope scope = split_scope::window);
  /// This worker's cache: every module after `fill`, then its owned modules' latest outputs.
  const activation_cache& cache() const { return cache_; }
  /// The entries of the owned modules of `scope` that other workers compute on, for their next step.
  activation_cache owned_outputs(split_scope scope = split_scope::window) const;
  void clear_cache() { cache_.clear(); }

 private:
  std::shared_ptr<models::diffusion_pipeline> pipeline_;
  int rank_;
  models::branch_conditioning on_device(models::branch_conditioning conditioning) const;

  models::branch_conditioning conditioning_, window_conditioning_;
  const models::branch_conditioning& conditioning_of(split_scope scope) const {
    return scope == split_scope::window && window_conditioning_.context.defined() ? window_conditioning_ : conditioning_;
  }
  static int index(split_scope scope) { return scope == split_scope::branch ? 0 : 1; }
  std::set<std::string> owned_[2], handed_on_[2];
  activation_cache cache_;
  std::unique_ptr<graphed_denoiser> graphed_;
  std::unique_ptr<graphed_stage> graphed_stages_;
};

/// The AsyncDiff split of `pipeline`'s denoiser into `n` components at `stride` (schedule::make_plan for its family
/// and, for a transformer, its block count). Throws hybridiff::invalid_options for a split the model cannot take.
schedule::asyncdiff_plan split_plan(const models::diffusion_pipeline& pipeline, int n, int stride);

}  // namespace hybridiff::runtime
