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

/// Hand-over entries that carry a stage's prediction beside the modules' outputs, in the runs where every stage
/// steps its own copy of the latents: a split-branch run's two branch predictions, and a stride-2 window's two
/// predictions of a round (the extra worker's, for the round's first step; the output stage's, for its second).
inline std::string branch_prediction(bool conditional) { return conditional ? "prediction.cond" : "prediction.uncond"; }
inline std::string round_prediction(bool second) { return second ? "prediction.second" : "prediction.first"; }
inline bool is_prediction_entry(const std::string& name) { return name.rfind("prediction.", 0) == 0; }

/// A window run's hand-over to another stage for `step`, from the reply of the run's step before: the entries of
/// its `owned` that stage computes on (`modules`), its prediction under a prediction entry in `modules`, and from a
/// stride-1 window's output stage the step's input.
inline step_request_ptr make_hand_over(std::int32_t step, const step_reply& reply,
                                       const std::set<std::string>& modules) {
  auto exchange = std::make_shared<step_request>();
  exchange->step = step;
  exchange->latents = reply.next_input;
  auto peers = std::make_shared<runtime::activation_cache>();
  for (const auto& [module, value] : reply.owned)
    if (modules.count(module)) peers->emplace(module, value);
  for (const auto& entry : modules)
    if (is_prediction_entry(entry)) peers->emplace(entry, models::activation{reply.prediction});
  exchange->peers = std::move(peers);
  return exchange;
}

/// The hand-over that says a producer was lost or its step failed: no outputs, no input. The stage that waits for
/// it fails the step it waits on.
inline step_request_ptr lost_hand_over(std::int32_t step) {
  auto lost = std::make_shared<step_request>();
  lost->step = step;
  return lost;
}
inline bool is_lost(const step_request& exchange) { return !exchange.peers && !exchange.latents.defined(); }

/// Sends `consumers` (a window run's stages, with what each reads) a lost hand-over for `step`.
template <class Self>
void hand_on_loss(Self self, const std::vector<std::pair<worker_actor, std::set<std::string>>>& consumers,
                  std::int32_t step) {
  for (const auto& consumer : consumers) self->send(consumer.first, peer_stage_atom::value, lost_hand_over(step));
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

/// Whether every stage of a run steps its own copy of the latents: split branches, or a stride-2 window.
inline bool stages_step_own_latents(bool branches, std::int32_t stride) { return branches || stride == 2; }

/// A window run's start: its first pipeline step, with the fill step's activations, and what each stage needs to
/// go on by itself. In a stride-2 window its steps are the compute rounds (every other step). A split-branch run is
/// one over CFG steps whose branches are each a 2-stage pipeline (`branches`). In both every stage steps its own copy
/// of the latents (`own_latents()`), with the predictions of the run's step before that the stages which compute them
/// hand on as prediction entries with their outputs: both branches' (guided), or a round's two (stepped in turn).
struct window_run {
  std::int32_t step = 0;  ///< the run's first step
  std::int32_t last = 0;  ///< its last step (the policy's promise of pipeline steps; stride 2: its last round)
  std::int32_t stride = 1;
  at::Tensor latents;    ///< the denoiser's input at `step` (scaled; asyncdiff: both branches stacked)
  at::Tensor timesteps;  ///< [(last − step) / stride + 1]: this stage's timestep at each of its steps
  std::shared_ptr<const runtime::activation_cache> peers;  ///< the other stages' fill-step outputs it computes on
  /// the stages this one hands over to after each step, with the modules of its outputs each computes on
  std::vector<std::pair<worker_actor, module_names>> hand_on;
  std::vector<worker_actor> producers;  ///< the stages that hand over to this one, watched (none in a remote stage)
  std::int32_t hand_overs = 0;          ///< how many hand-overs each step waits for (one per producer)
  /// A stride-1 window's output stage: its output is the step's prediction; it steps its copy of the latents (as
  /// the driver does) and hands the next step's input on with its outputs (every other stage waits for it).
  bool output = false;
  at::Tensor sample;  ///< the latents before `step` (unscaled)
  std::string sampler;
  models::sampler_memory memory;  ///< as guided_run's
  std::int64_t steps = 0;
  bool batched = false;  ///< asyncdiff: the output stacks both branches, guided with `guidance` before the step
  double guidance = 1;
  bool branches = false;   ///< a split-branch run (the branch split; its predictions guided)
  std::string prediction;  ///< own_latents: the entry under which this stage hands its prediction on (none: "")

  /// Every stage steps its own copy of the latents (`sample`, the sampler).
  bool own_latents() const { return stages_step_own_latents(branches, stride); }
};

/// What a worker needs to start an image.
struct image_setup {
  models::branch_conditioning conditioning;  ///< its guidance branch (cfg, hybrid) or both stacked (asyncdiff)
  models::branch_conditioning window;        ///< fill and pipeline steps (hybrid's `cond` window); undefined: the same
};

}  // namespace hybridiff::actors
