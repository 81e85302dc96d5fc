#pragma once
// The typed actor protocol of a parallel generation: atoms, message payload handles and actor interfaces.
// No LibTorch here (compile time): tensors ride in `step_request` / `step_reply`, defined in messages.hpp and
// shared by reference between actors of one process; they never cross a node through CAF.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "caf/all.hpp"

namespace hybridiff::actors {

struct step_request;
struct step_reply;
struct image_setup;
struct guided_run;
struct window_run;
using step_request_ptr = std::shared_ptr<const step_request>;
using step_reply_ptr = std::shared_ptr<const step_reply>;
using image_setup_ptr = std::shared_ptr<const image_setup>;
using guided_run_ptr = std::shared_ptr<const guided_run>;
using window_run_ptr = std::shared_ptr<const window_run>;

using predict_atom = caf::atom_constant<caf::atom("predict")>;    ///< a full forward pass (CFG branch)
using fill_atom = caf::atom_constant<caf::atom("fill")>;          ///< first window step: full pass, fill caches
using stage_atom = caf::atom_constant<caf::atom("stage")>;        ///< a pipeline step on stale activations
using reconfigure_atom = caf::atom_constant<caf::atom("reconfig")>;  ///< switch behaviour
using metric_atom = caf::atom_constant<caf::atom("metric")>;         ///< end of step: its rel-MAE and wall time
using phase_atom = caf::atom_constant<caf::atom("phase")>;        ///< which phase a step runs in
using lost_atom = caf::atom_constant<caf::atom("lost")>;          ///< is a worker's actor gone?
using grace_atom = caf::atom_constant<caf::atom("grace")>;        ///< the supervisor's wait for a down message ended
using assign_atom = caf::atom_constant<caf::atom("assign")>;      ///< a worker's components (module names)
using prepare_atom = caf::atom_constant<caf::atom("prepare")>;    ///< a new image: conditioning, CFG branch, no cache
using run_cfg_atom = caf::atom_constant<caf::atom("runcfg")>;     ///< a guided run's first step: latents, sampler
using next_cfg_atom = caf::atom_constant<caf::atom("nextcfg")>;   ///< a guided run: the prediction at a step
using peer_cfg_atom = caf::atom_constant<caf::atom("peercfg")>;   ///< a guided run: the other branch's prediction
using run_window_atom = caf::atom_constant<caf::atom("runwin")>;  ///< a window run's first step: inputs, hand-overs
using next_stage_atom = caf::atom_constant<caf::atom("nextstage")>;  ///< a window run: the stage's output at a step
using peer_stage_atom = caf::atom_constant<caf::atom("peerstage")>;  ///< a window run: another stage's hand-over

/// The text of a failed request: the message our actors put in the error's context, else CAF's rendering.
inline std::string describe_error(caf::actor_system& system, const caf::error& failure) {
  if (failure.context().match_elements<std::string>()) return failure.context().get_as<std::string>(0);
  return system.render(failure);
}

/// A worker's behaviour, switched with `become` when the tau controller says so.
enum class worker_role : std::int32_t { cfg_branch = 0, pipeline_stage = 1 };

using module_names = std::vector<std::string>;  ///< a component's modules, as in assign messages

/// A worker. `cfg_branch` answers predict (a full forward pass), and fill and stage with its branch component (a
/// guidance branch split as a pipeline over several workers); `pipeline_stage` answers fill and stage with its
/// window component. A request the current behaviour does not serve is answered with an error naming both.
/// reconfigure replies with the new role. assign sets the modules the worker owns in pipelined steps (window
/// split, branch split: owned modules, then those whose outputs it hands on) and whether full passes and stale steps
/// replay CUDA graphs; prepare starts an image: the image's conditioning, the cfg_branch behaviour, empty caches.
/// A guided run (`cfg_branch`, mode cfg): run_cfg hands the worker the latents and the sampler's settings at a step
/// and answers its branch's prediction there. From then on the two branches' workers exchange predictions
/// themselves: each peer_cfg brings the other branch's prediction of the step before, with which the worker guides,
/// steps its own copy of the latents and predicts the next step, which it sends to its peer (the run's other
/// worker, when the run names one) before anything else. next_cfg asks for the prediction at a step: answered at
/// once when it is computed, else as soon as it is. The driver only reads the predictions (for its own copy of the
/// latents, the tau controller and the result): it is not on the path from one worker to the other. Both sides
/// compute the same numbers: the same functions on the same values.
/// A window run (`pipeline_stage`, the pipeline steps a policy promises after a fill step) is the same
/// for the window: run_window hands each stage the run's first input and the fill step's activations, whom to hand
/// its outputs to and, for the output stage, the sampler; from then on each stage sends its owned outputs of every
/// step straight to the stages that compute on them (peer_stage; the output stage steps its own copy of the
/// latents and sends the next step's input with them) and computes a step as soon as every hand-over of it is in.
/// next_stage reads a stage's output at a step, as next_cfg does. A stage whose step fails tells the stages it hands
/// over to (an empty peer_stage, as for a lost producer), so that none waits for it.
/// A split-branch run (`cfg_branch`, 4 workers: each guidance branch a 2-stage pipeline; the CFG steps a policy
/// promises after the warm-up) is a window run in the branch split: every stage steps its own copy of the latents
/// with both branches' predictions of the step before, which each branch's output stage hands on with its outputs.
/// A stride-2 window run likewise: its steps are the compute rounds, and every stage steps its own copy twice per
/// round, on the extra worker's prediction and then the output stage's, which both hand on.
using worker_actor = caf::typed_actor<
    caf::replies_to<predict_atom, step_request_ptr>::with<step_reply_ptr>,
    caf::replies_to<fill_atom, step_request_ptr>::with<step_reply_ptr>,
    caf::replies_to<stage_atom, step_request_ptr>::with<step_reply_ptr>,
    caf::replies_to<reconfigure_atom, std::int32_t>::with<std::int32_t>,
    caf::replies_to<assign_atom, module_names, module_names, module_names, module_names, bool>::with<bool>,
    caf::replies_to<prepare_atom, image_setup_ptr>::with<bool>,
    caf::replies_to<run_cfg_atom, guided_run_ptr>::with<step_reply_ptr>,
    caf::replies_to<next_cfg_atom, step_request_ptr>::with<step_reply_ptr>,
    caf::reacts_to<peer_cfg_atom, step_request_ptr>,
    caf::replies_to<run_window_atom, window_run_ptr>::with<step_reply_ptr>,
    caf::replies_to<next_stage_atom, step_request_ptr>::with<step_reply_ptr>,
    caf::reacts_to<peer_stage_atom, step_request_ptr>>;

/// The tau controller's answer to the end of a step: the next step's phase (schedule::phase as a number), the
/// slope the detector computed (NaN when none), tau1, tau2 (−1 while undecided) and, when the next step is CFG,
/// the last step through which the policy promises CFG (−1 otherwise); when it is a fill step, the last step
/// through which the policy promises the window's pipeline steps (−1 otherwise).
struct step_decision {
  std::int32_t next_phase = 0;
  double slope = 0;
  std::int32_t tau1 = -1, tau2 = -1;
  std::int32_t cfg_through = -1;
  std::int32_t window_through = -1;
};
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, step_decision& x) {
  return f(caf::meta::type_name("step_decision"), x.next_phase, x.slope, x.tau1, x.tau2, x.cfg_through,
           x.window_through);
}

/// The tau controller: `phase` answers the decision for a step before any ran (its phase in next_phase, its CFG
/// promise); `metric` records the end of a step (step, rel-MAE, whether the step had one, its time) and answers
/// the decision for the next, after telling every worker to reconfigure when the next step enters or leaves the
/// pipeline window.
using tau_controller_actor =
    caf::typed_actor<caf::replies_to<phase_atom, std::int32_t>::with<step_decision>,
                     caf::replies_to<metric_atom, std::int32_t, double, bool, double>::with<step_decision>>;

/// The supervisor monitors every worker. `lost` answers whether a worker's actor is gone (a failed request is
/// followed closely by the down message: an undecided question waits a grace period for it). `grace` is its own
/// timer.
using supervisor_actor = caf::typed_actor<caf::replies_to<lost_atom, std::int32_t>::with<bool>,
                                          caf::reacts_to<grace_atom, std::int32_t>>;

}  // namespace hybridiff::actors

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(hybridiff::actors::step_request_ptr)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(hybridiff::actors::step_reply_ptr)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(hybridiff::actors::image_setup_ptr)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(hybridiff::actors::guided_run_ptr)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(hybridiff::actors::window_run_ptr)
