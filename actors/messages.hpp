#pragma once
// The payloads behind protocol.hpp's handles (in-process transport: tensors shared by reference).

#include <set>
#include <string>

#include <ATen/core/Tensor.h>

#include "actors/protocol.hpp"
#include "models/pipelines/sampler.hpp"
#include "runtime/stage_worker.hpp"

namespace hybridiff::actors {

struct step_request {
  std::int32_t step = 0;
  at::Tensor latents;    ///< the denoiser's input, already scaled by the sampler
  at::Tensor timestep;   ///< scalar
  std::shared_ptr<const runtime::activation_cache> peers;  ///< stage: the owners' outputs of the previous step
  /// predict: run with this conditioning instead of the worker's own (degraded mode: both branches batched)
  std::shared_ptr<const models::branch_conditioning> conditioning;
  /// peer_cfg (no latents, no timestep): the other guidance branch's prediction of step − 1
  at::Tensor other_branch;
  // peer_stage: another stage's outputs of step − 1 in `peers`; from the output stage also `latents`. Neither: a
  // remote stage's stand-in says a producer was lost.
};

struct step_reply {
  at::Tensor prediction;
  double compute_ms = 0;
  runtime::activation_cache owned;  ///< fill and stage (a window run's too): the worker's handed-on outputs
  at::Tensor next_input;            ///< a window run's output stage: the next step's input it hands on
};

/// In a split-branch run's hand-overs, the entry that carries a branch's prediction (its output stage's) beside
/// the modules' outputs.
inline std::string branch_prediction(bool conditional) { return conditional ? "prediction.cond" : "prediction.uncond"; }

/// A window run's hand-over to another stage for `step`, from the reply of the step before: the entries of its
/// `owned` that stage computes on (`modules`), the prediction under a branch_prediction name in `modules`, and from
/// a window's output stage the step's input.
inline step_request_ptr make_hand_over(std::int32_t step, const step_reply& reply,
                                       const std::set<std::string>& modules) {
  auto exchange = std::make_shared<step_request>();
  exchange->step = step;
  exchange->latents = reply.next_input;
  auto peers = std::make_shared<runtime::activation_cache>();
  for (const auto& [module, value] : reply.owned)
    if (modules.count(module)) peers->emplace(module, value);
  for (bool conditional : {false, true})
    if (modules.count(branch_prediction(conditional)))
      peers->emplace(branch_prediction(conditional), models::activation{reply.prediction});
  exchange->peers = std::move(peers);
  return exchange;
}

/// A guided run's start: the latents before `step` (not yet scaled for the denoiser) and what the worker's own
/// sampler needs to step them as the driver does.
struct guided_run {
  std::int32_t step = 0;
  at::Tensor sample;
  std::string sampler;            ///< the request's sampler name ("" = the model folder's)
  models::sampler_memory memory;  ///< the driver's sampler's memory before `step` (DPM++ 2M mid-image)
  std::int64_t steps = 0;
  std::int32_t last = 0;  ///< the run's last step (the policy's promise of CFG steps; steps − 1 at most)
  double guidance = 1;
  bool conditional = true;  ///< the worker's own branch is the conditional one (else the unconditional one)
  /// the other branch's worker, which gets this one's predictions as peer_cfg (none: the caller forwards them)
  worker_actor peer;
};

/// A window run's start (stride 1): its first pipeline step, with the fill step's activations, and what each stage
/// needs to go on by itself. A split-branch run is one over CFG steps whose branches are each a 2-stage pipeline
/// (`branches`): there every stage steps its own copy of the latents, with both branches' predictions of the step
/// before, which the branches' output stages hand on (branch_prediction) with their outputs.
struct window_run {
  std::int32_t step = 0;  ///< the run's first step
  std::int32_t last = 0;  ///< its last step (the policy's promise of pipeline steps)
  at::Tensor latents;     ///< the denoiser's input at `step` (scaled; asyncdiff: both branches stacked)
  at::Tensor timesteps;   ///< [last − step + 1]: the denoiser's timestep at each step of the run (time shift applied)
  std::shared_ptr<const runtime::activation_cache> peers;  ///< the other stages' fill-step outputs it computes on
  /// the stages this one hands over to after each step, with the modules of its outputs each computes on
  std::vector<std::pair<worker_actor, module_names>> hand_on;
  std::vector<worker_actor> producers;  ///< the stages that hand over to this one, watched (none in a remote stage)
  std::int32_t hand_overs = 0;          ///< how many hand-overs each step waits for (one per producer)
  /// The output stage: its output is the step's prediction; it steps its copy of the latents (as the driver does)
  /// and hands the next step's input on with its outputs (every other stage waits for it). branches: the branch's
  /// last stage, whose output is its branch's prediction (handed on, not the next input).
  bool output = false;
  at::Tensor sample;  ///< the latents before `step` (unscaled)
  std::string sampler;
  models::sampler_memory memory;  ///< as guided_run's
  std::int64_t steps = 0;
  bool batched = false;  ///< asyncdiff: the output stacks both branches, guided with `guidance` before the step
  double guidance = 1;
  bool branches = false;     ///< a split-branch run (every stage gets `sample` and the sampler)
  bool conditional = false;  ///< branches: the stage's branch
};

/// What a worker needs to start an image.
struct image_setup {
  models::branch_conditioning conditioning;  ///< its guidance branch (cfg, hybrid) or both stacked (asyncdiff)
  models::branch_conditioning window;        ///< fill and pipeline steps (hybrid's `cond` window); undefined: the same
};

}  // namespace hybridiff::actors
