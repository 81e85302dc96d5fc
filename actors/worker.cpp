#include "actors/worker.hpp"

#include <chrono>
#include <deque>
#include <map>
#include <optional>
#include <set>

#include <c10/util/Exception.h>
#ifdef HYBRIDIFF_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "actors/messages.hpp"
#include "models/nn/nn.hpp"

namespace hybridiff::actors {
namespace {

// The answers of a run (guided or window) to the driver's reads: the workers compute ahead of the driver.
struct run_answers {
  // Answers computed before a read asked for them, oldest first.
  std::deque<std::pair<std::int32_t, caf::expected<step_reply_ptr>>> unread;
  // The read that came before its step was computed.
  std::optional<std::pair<std::int32_t, caf::typed_response_promise<step_reply_ptr>>> waiting;
  bool ended = false;  // a step failed or a peer was lost: nothing more is computed

  // The answer of step `step`: to the read waiting for it, else kept until one asks.
  void settle(std::int32_t step, caf::expected<step_reply_ptr> reply) {
    if (!reply) ended = true;
    if (waiting && waiting->first == step) {
      if (reply)
        waiting->second.deliver(*reply);
      else
        waiting->second.deliver(reply.error());
      waiting.reset();
    } else {
      unread.emplace_back(step, std::move(reply));
    }
  }
  // The run ends: a read still waiting gets `why`.
  void end(const std::string& why) {
    if (waiting) waiting->second.deliver(caf::make_error(caf::sec::runtime_error, why));
    waiting.reset();
  }
};

// A guided run in progress (run_cfg, then peer_cfg and next_cfg): the worker's copy of the latents and of the
// sampler, and the predictions on their way to the driver.
struct guided_loop {
  std::unique_ptr<models::sampler> sampler;
  at::Tensor sample;          // the latents before `step`, on the worker's device
  at::Tensor timesteps;       // the sampler's, on the worker's device (read per step without a host copy)
  at::Tensor own_prediction;  // this branch's prediction at `step`
  std::int32_t step = 0;
  std::int32_t last = 0;  // the run's last step
  double guidance = 1;
  bool conditional = true;  // which branch own_prediction is
  worker_actor peer;        // gets this branch's predictions (none: whoever started the run forwards them)
  run_answers answers;
};

// A window run in progress (run_window, then peer_stage and next_stage): the hand-overs of the steps not yet
// computed and, on the output stage, its copy of the latents and of the sampler.
// What has come for one step of a window run from the stages it computes on.
struct hand_over {
  at::Tensor latents;
  runtime::activation_cache peers;
  std::size_t count = 0;  // producers heard from
};

struct window_loop {
  std::int32_t first = 0, step = 0, last = 0;                 // the run's first step, the last computed, its last
  std::int32_t stride = 1;                                    // 2: the steps are a stride-2 window's rounds
  runtime::split_scope scope = runtime::split_scope::window;  // branch: a split-branch run
  at::Tensor timesteps;                                       // one per step of the run, on the worker's device
  std::vector<std::pair<worker_actor, std::set<std::string>>> hand_on;
  std::vector<worker_actor> producers;        // watched: a lost one fails the step that waits for it
  std::size_t hand_overs = 0;                 // per step
  std::map<std::int32_t, hand_over> arrived;  // by step, after `step`
  bool output = false;
  bool branches = false;
  bool own_latents = false;                  // every stage steps its copy of the latents (branches, stride 2)
  std::string prediction;                    // own_latents: the entry of this stage's prediction ("": none)
  std::unique_ptr<models::sampler> sampler;  // the output stage's (own_latents: every stage's)
  at::Tensor sample;                         // its latents before the next step
  bool batched = false;
  double guidance = 1;
  run_answers answers;
};

struct worker_state {
  std::shared_ptr<runtime::stage_worker> worker;
  std::optional<guided_loop> loop;    // while a guided run lasts
  std::optional<window_loop> window;  // while a window run lasts
  // Hand-overs that came before this stage's run_window (another stage started and computed first), by step.
  std::map<std::int32_t, hand_over> early;
  // The peer's first prediction of a guided run that came before this worker's run_cfg (the peer's came first).
  step_request_ptr early_peer;
#ifdef HYBRIDIFF_WITH_CUDA
  std::optional<c10::cuda::CUDAStream> stream;  // on a CUDA device: the worker's own
#endif
  static inline const char* name = "hybridiff.worker";
};
using worker_pointer = worker_actor::stateful_pointer<worker_state>;

// A worker computes on a CUDA stream of its own: on the device's default stream its step would hold back what the
// process's other actors enqueue there after it (rank 0's link transfers to the other ranks start once that stream
// reaches them: they would wait for worker 0's whole step). A request's tensors are ready when it arrives (the
// driver and the links synchronise before handing them over); `finish` waits for the worker's work, so that its
// outputs are ready when the reply leaves. Not on the device: the device-wide synchronisation would fail another
// worker's CUDA-graph capture on the same device ("operation not permitted when stream is capturing").
class on_own_stream {
 public:
  explicit on_own_stream(worker_state& state) {
#ifdef HYBRIDIFF_WITH_CUDA
    const auto& device = state.worker->pipeline().placement().device;
    if (device.is_cuda()) {
      if (!state.stream) state.stream = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device.index());
      guard_.emplace(*state.stream);
    }
#else
    (void)state;
#endif
  }
  void finish() {
#ifdef HYBRIDIFF_WITH_CUDA
    if (guard_) guard_->current_stream().synchronize();
#endif
  }

 private:
#ifdef HYBRIDIFF_WITH_CUDA
  std::optional<c10::cuda::CUDAStreamGuard> guard_;
#endif
};

std::string worker_name(worker_pointer self) { return "worker " + std::to_string(self->state.worker->rank()); }

// Runs `compute` (for step `step`) and packs its result; any exception becomes an error reply (the request never
// hangs). The trace line gives the step: bench/trace_hops.py reads the workers' times per step from it.
template <class Compute>
caf::expected<step_reply_ptr> answer(worker_pointer self, const char* what, std::int32_t step, Compute compute) {
  auto& worker = *self->state.worker;
  try {
    auto started = std::chrono::steady_clock::now();
    on_own_stream stream(self->state);
    auto reply = std::make_shared<step_reply>();
    reply->prediction = compute(worker, *reply);
    stream.finish();  // compute time includes the wait for the device: per-worker times in the trace are real
    reply->compute_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
    spdlog::trace("step {}: worker {} {} computed in {:.3f} ms", step, worker.rank(), what, reply->compute_ms);
    return step_reply_ptr(std::move(reply));
  } catch (const c10::Error& failure) {
    return caf::make_error(caf::sec::runtime_error,
                           worker_name(self) + " (" + what + "): " + failure.what_without_backtrace());
  } catch (const std::exception& failure) {
    return caf::make_error(caf::sec::runtime_error, worker_name(self) + " (" + what + "): " + failure.what());
  }
}

// Ends the guided run in progress: a next_cfg still waiting gets `why`.
void end_guided_run(worker_pointer self, const std::string& why) {
  auto& loop = self->state.loop;
  if (!loop) return;
  loop->answers.end(why);
  if (loop->peer) self->demonitor(loop->peer.address());
  loop.reset();
}

// Ends the window run in progress: a next_stage still waiting gets `why`.
void end_window_run(worker_pointer self, const std::string& why) {
  auto& window = self->state.window;
  if (!window) return;
  window->answers.end(why);
  for (auto& producer : window->producers) self->demonitor(producer.address());
  window.reset();
}

// A read of a run's answer at step `asked` (next_cfg, next_stage): answered now if it is computed, else as soon as
// it is. `computed`: the run's last computed step; `last`: its last step; `stride`: from one of its steps to the next.
caf::result<step_reply_ptr> read_answer(worker_pointer self, run_answers& answers, const char* what, std::int32_t asked,
                                        std::int32_t computed, std::int32_t last, std::int32_t stride = 1) {
  auto refuse = [&](const std::string& when) -> caf::result<step_reply_ptr> {
    return caf::make_error(caf::sec::runtime_error,
                           worker_name(self) + " got " + what + " for step " + std::to_string(asked) + " " + when);
  };
  if (!answers.unread.empty()) {
    if (answers.unread.front().first != asked)
      return refuse("while step " + std::to_string(answers.unread.front().first) + "'s answer is unread");
    auto reply = std::move(answers.unread.front().second);
    answers.unread.pop_front();
    return reply;
  }
  if (asked != computed + stride || asked > last || answers.waiting || answers.ended)
    return refuse("after step " + std::to_string(computed));
  auto promise = self->make_response_promise<step_reply_ptr>();
  answers.waiting.emplace(asked, promise);
  return promise;
}

caf::error wrong_behaviour(worker_pointer self, const char* request, const char* behaviour) {
  return caf::make_error(caf::sec::unexpected_message,
                         worker_name(self) + " got a " + request + " request in its " + behaviour + " behaviour");
}

worker_actor::behavior_type pipeline_stage(worker_pointer self);
worker_actor::behavior_type cfg_branch(worker_pointer self);

caf::result<bool> assign(worker_pointer self, const module_names& window, const module_names& window_handed_on,
                         const module_names& branch, const module_names& branch_handed_on, bool cuda_graphs) {
  auto& worker = *self->state.worker;
  worker.set_component(runtime::split_scope::window, {window.begin(), window.end()},
                       {window_handed_on.begin(), window_handed_on.end()});
  worker.set_component(runtime::split_scope::branch, {branch.begin(), branch.end()},
                       {branch_handed_on.begin(), branch_handed_on.end()});
  try {
    worker.use_cuda_graphs(cuda_graphs);
  } catch (const std::exception& failure) {
    return caf::make_error(caf::sec::runtime_error, failure.what());
  }
  return true;
}

caf::result<bool> prepare(worker_pointer self, const image_setup_ptr& setup) {
  auto& worker = *self->state.worker;
  try {
    on_own_stream stream(self->state);
    worker.clear_cache();
    worker.set_conditioning(setup->conditioning);
    worker.set_window_conditioning(setup->window);
    stream.finish();
  } catch (const std::exception& failure) {
    return caf::make_error(caf::sec::runtime_error, worker_name(self) + " (prepare): " + failure.what());
  }
  end_guided_run(self, worker_name(self) + ": a new image began");
  end_window_run(self, worker_name(self) + ": a new image began");
  self->state.early.clear();
  self->state.early_peer = nullptr;
  self->become(cfg_branch(self));
  return true;
}

// fill and stage requests in `scope`: the first step of a pipelined run, and a stale-activation step.
caf::result<step_reply_ptr> fill(worker_pointer self, const step_request_ptr& request, runtime::split_scope scope) {
  return answer(self, "fill", request->step, [&](runtime::stage_worker& worker, step_reply& reply) {
    auto out = worker.fill(request->latents, request->timestep, scope);
    reply.owned = worker.owned_outputs(scope);
    return out;
  });
}
caf::result<step_reply_ptr> stage(worker_pointer self, const step_request_ptr& request, runtime::split_scope scope) {
  return answer(self, "stage", request->step, [&](runtime::stage_worker& worker, step_reply& reply) {
    static const runtime::activation_cache none;
    auto out = worker.pipeline_step(request->latents, request->timestep, request->peers ? *request->peers : none, scope);
    reply.owned = worker.owned_outputs(scope);
    return out;
  });
}

// A run's sampler memory (the driver's device) on the worker's device.
models::sampler_memory on_device(const models::sampler_memory& memory, const c10::Device& device) {
  models::sampler_memory moved;
  for (const auto& [name, tensor] : memory) moved.emplace(name, tensor.to(device));
  return moved;
}

// The loop's prediction at its step, with the worker's own conditioning (what predict computes on the driver's
// scaled latents).
at::Tensor predict_at_loop_step(runtime::stage_worker& worker, guided_loop& loop) {
  const auto input = loop.sampler->scale_model_input(loop.sample, loop.step);
  loop.own_prediction = worker.predict(input, loop.timesteps[loop.step]);
  return loop.own_prediction;
}

// Sends the loop's prediction at its step (complete: `answer` waited for the device) to the peer, if the run has
// one and a step follows: the other branch's next step waits for it, so it goes before the driver's answer.
void hand_to_peer(worker_pointer self, const guided_loop& loop) {
  if (!loop.peer || loop.step >= loop.last) return;
  auto exchange = std::make_shared<step_request>();
  exchange->step = loop.step + 1;
  exchange->other_branch = loop.own_prediction;
  self->send(loop.peer, peer_cfg_atom::value, step_request_ptr(std::move(exchange)));
}

caf::result<step_reply_ptr> run_cfg(worker_pointer self, const guided_run_ptr& run) {
  end_guided_run(self, worker_name(self) + ": a new guided run began");
  guided_loop loop;
  auto reply = answer(self, "run_cfg", run->step, [&](runtime::stage_worker& worker, step_reply&) {
    if (run->step < 0 || run->step > run->last || run->last >= run->steps)
      throw std::invalid_argument("a guided run cannot run steps " + std::to_string(run->step) + " to " +
                                  std::to_string(run->last) + " of " + std::to_string(run->steps));
    const auto device = worker.pipeline().placement().device;
    loop.sampler = worker.pipeline().make_sampler(run->sampler);
    loop.sampler->set_timesteps(run->steps);
    loop.sampler->recall(on_device(run->memory, device));
    loop.timesteps = loop.sampler->timesteps().to(device);
    loop.sample = run->sample.to(device);
    loop.step = run->step;
    loop.last = run->last;
    loop.guidance = run->guidance;
    loop.conditional = run->conditional;
    loop.peer = run->peer;
    return predict_at_loop_step(worker, loop);
  });
  if (reply) {
    hand_to_peer(self, loop);
    if (loop.peer) self->monitor(loop.peer);  // a lost peer ends the run: nothing waits for it forever
    self->state.loop = std::move(loop);
    // The peer's prediction of this step that came first: taken once this answer is out.
    auto early = std::exchange(self->state.early_peer, nullptr);
    if (early && early->step == run->step + 1)
      self->send(caf::actor_cast<worker_actor>(self), peer_cfg_atom::value, early);
  }
  return reply;
}

// The other branch's prediction of the loop's step: guides with it as the driver does (the same function, so the
// same numbers), steps the latents, and predicts the next step.
void peer_cfg(worker_pointer self, const step_request_ptr& exchange) {
  auto& loop = self->state.loop;
  if ((!loop || loop->step >= loop->last) && exchange->other_branch.defined()) {  // before this worker's run_cfg
    self->state.early_peer = exchange;                                            // kept for it (a new image drops it)
    return;
  }
  if (!loop || loop->answers.ended) {  // after the run failed: nobody waits for this step
    spdlog::debug("{}: the other branch's prediction of step {} came outside a guided run", worker_name(self),
                  exchange->step - 1);
    return;
  }
  if (!exchange->other_branch.defined()) {  // a remote worker's stand-in says the peer was lost
    loop->answers.settle(loop->step + 1, caf::make_error(caf::sec::runtime_error,
                                                         worker_name(self) + ": the other branch's worker was lost"));
    return;
  }
  if (exchange->step != loop->step + 1 || exchange->step > loop->last) {
    loop->answers.settle(
        loop->step + 1,
        caf::make_error(caf::sec::runtime_error, worker_name(self) + " got the other branch's prediction of step " +
                                                     std::to_string(exchange->step - 1) + " at step " +
                                                     std::to_string(loop->step)));
    return;
  }
  auto reply = answer(self, "next_cfg", exchange->step, [&](runtime::stage_worker& worker, step_reply&) {
    const auto other = exchange->other_branch.to(loop->own_prediction.device());
    const auto& own = loop->own_prediction;
    const auto& uncond = loop->conditional ? other : own;
    const auto& cond = loop->conditional ? own : other;
    const auto guided = models::guide_and_measure(uncond, cond, loop->guidance).guided;
    loop->sample = loop->sampler->step(guided, loop->step, loop->sample);
    ++loop->step;
    return predict_at_loop_step(worker, *loop);
  });
  if (reply) hand_to_peer(self, *loop);
  loop->answers.settle(exchange->step, std::move(reply));
}

// The prediction at a step of the guided run: answered now if it is computed, else as soon as it is.
caf::result<step_reply_ptr> next_cfg(worker_pointer self, const step_request_ptr& request) {
  auto& loop = self->state.loop;
  if (!loop)
    return caf::make_error(caf::sec::runtime_error, worker_name(self) + " got next_cfg for step " +
                                                        std::to_string(request->step) + " outside a guided run");
  return read_answer(self, loop->answers, "next_cfg", request->step, loop->step, loop->last);
}

// Settles the window run's answer at `step`. A failed step ends the run here, and the stages that wait for this
// one's hand-overs hear it as from a lost producer (an empty hand-over): none of them waits for it forever.
void settle_window(worker_pointer self, std::int32_t step, caf::expected<step_reply_ptr> reply) {
  auto& window = *self->state.window;
  const bool ends = !reply && !window.answers.ended;
  window.answers.settle(step, std::move(reply));
  if (ends) hand_on_loss(self, window.hand_on, step + window.stride);
}

// The input at `step` of a run whose stages step their own latents: the predictions of the run's step before
// (taken out of `peers`: this stage's own kept here, the others handed on) step the stage's copy of the latents as
// the driver steps its own (the same functions, so the same numbers). Split branches: guided, one step; stride 2:
// the round's two steps in turn, each guided first when both branches are stacked.
at::Tensor own_latents_input(window_loop& window, std::int32_t step, runtime::activation_cache& peers) {
  auto take = [&](const std::string& entry) {
    auto found = peers.find(entry);
    if (found == peers.end() || found->second.empty())
      throw std::logic_error("no " + entry + " for step " + std::to_string(step));
    auto prediction = found->second.front().to(window.sample.device());
    peers.erase(found);
    return prediction;
  };
  if (window.branches) {
    const auto uncond = take(branch_prediction(false)), cond = take(branch_prediction(true));
    const auto guided = models::guide_and_measure(uncond, cond, window.guidance).guided;
    window.sample = window.sampler->step(guided, step - 1, window.sample);
    return window.sampler->scale_model_input(window.sample, step);
  }
  for (const bool second : {false, true}) {
    auto prediction = take(round_prediction(second));
    if (window.batched) {
      const auto halves = prediction.chunk(2, 0);
      prediction = models::guide(halves[0], halves[1], window.guidance);
    }
    window.sample = window.sampler->step(prediction, step - 2 + (second ? 1 : 0), window.sample);
  }
  const auto input = window.sampler->scale_model_input(window.sample, step);
  return window.batched ? torch::cat({input, input}, 0) : input;
}

// Computes the window run's next step (its hand-overs are all in), answers it, hands its outputs on: the output
// stage also steps its latents and hands the next step's input on. Repeats while the next step's hand-overs are in
// (they may have come before this stage finished the step before).
void advance_window(worker_pointer self) {
  auto& window = *self->state.window;
  while (!window.answers.ended && window.step < window.last) {
    const auto step = window.step + window.stride;
    auto found = window.arrived.find(step);
    if (found == window.arrived.end() || found->second.count < window.hand_overs ||
        (!window.own_latents && !found->second.latents.defined()))
      return;
    auto inputs = std::move(found->second);
    window.arrived.erase(found);
    auto reply = answer(self, "stage", step, [&](runtime::stage_worker& worker, step_reply& reply) {
      if (window.own_latents && step > window.first) inputs.latents = own_latents_input(window, step, inputs.peers);
      const auto timestep = window.timesteps[(step - window.first) / window.stride];
      auto out = worker.pipeline_step(inputs.latents, timestep, inputs.peers, window.scope);
      if (window.output && step < window.last) {  // the driver's step, on this stage's copy
        auto prediction = out;
        if (window.batched) {
          auto halves = out.chunk(2, 0);
          prediction = models::guide(halves[0], halves[1], window.guidance);
        }
        window.sample = window.sampler->step(prediction, step, window.sample);
        auto next_input = window.sampler->scale_model_input(window.sample, step + 1);
        reply.next_input = window.batched ? torch::cat({next_input, next_input}, 0) : next_input;
      }
      // Handed on with the answer too: a remote stage's stand-in hands them to the stages in rank 0's process. A
      // split-branch run's last outputs go to the driver: its CFG steps may go on as requests.
      if (step < window.last || window.branches) reply.owned = worker.owned_outputs(window.scope);
      return out;
    });
    window.step = step;
    if (reply && step < window.last) {
      const auto& done = **reply;
      const auto next = step + window.stride;
      for (const auto& [stage, modules] : window.hand_on)
        self->send(stage, peer_stage_atom::value, make_hand_over(next, done, modules));
      if (!window.prediction.empty())
        window.arrived[next].peers[window.prediction] = {done.prediction};
      else if (window.output)
        window.arrived[next].latents = done.next_input;
    }
    settle_window(self, step, std::move(reply));
  }
}

caf::result<step_reply_ptr> run_window(worker_pointer self, const window_run_ptr& run) {
  end_window_run(self, worker_name(self) + ": a new window run began");
  if (run->step < 1 || run->step > run->last || run->last >= run->steps || run->stride < 1 ||
      (run->last - run->step) % run->stride != 0 || run->timesteps.numel() != (run->last - run->step) / run->stride + 1)
    return caf::make_error(caf::sec::runtime_error, worker_name(self) + ": a window run cannot run steps " +
                                                        std::to_string(run->step) + " to " + std::to_string(run->last) +
                                                        " of " + std::to_string(run->steps) + " on " +
                                                        std::to_string(run->timesteps.numel()) + " timesteps");
  window_loop window;
  auto& worker = *self->state.worker;
  const auto device = worker.pipeline().placement().device;
  window.first = run->step;
  window.step = run->step - run->stride;
  window.last = run->last;
  window.stride = run->stride;
  window.timesteps = run->timesteps.to(device);
  for (const auto& [stage, modules] : run->hand_on)
    window.hand_on.emplace_back(stage, std::set<std::string>(modules.begin(), modules.end()));
  window.producers = run->producers;
  window.hand_overs = static_cast<std::size_t>(run->hand_overs);
  window.output = run->output;
  window.branches = run->branches;
  window.own_latents = run->own_latents();
  window.prediction = run->prediction;
  window.scope = run->branches ? runtime::split_scope::branch : runtime::split_scope::window;
  window.batched = run->batched;
  window.guidance = run->guidance;
  try {
    if (window.output || window.own_latents) {
      window.sampler = worker.pipeline().make_sampler(run->sampler);
      window.sampler->set_timesteps(run->steps);
      window.sampler->recall(on_device(run->memory, device));
      window.sample = run->sample.to(device);
    }
  } catch (const std::exception& failure) {
    return caf::make_error(caf::sec::runtime_error, worker_name(self) + " (run_window): " + failure.what());
  }
  for (auto& [step, arrived] : self->state.early)  // the other stages' hand-overs that came before the run
    if (step > run->step && step <= run->last) window.arrived[step] = std::move(arrived);
  self->state.early.clear();
  auto& first = window.arrived[run->step];  // the first step's inputs came with the run
  first.latents = run->latents;
  if (run->peers) first.peers = *run->peers;
  first.count = window.hand_overs;
  for (auto& producer : window.producers) self->monitor(producer);  // a lost one ends the run: nothing waits forever
  self->state.window = std::move(window);
  auto promise = self->make_response_promise<step_reply_ptr>();
  self->state.window->answers.waiting.emplace(run->step, promise);
  advance_window(self);
  return promise;
}

void add_hand_over(hand_over& into, const step_request& exchange) {
  if (exchange.latents.defined()) into.latents = exchange.latents;
  if (exchange.peers)
    for (const auto& [module, value] : *exchange.peers) into.peers[module] = value;
  ++into.count;
}

// Another stage's hand-over of a step of the window run (its outputs; from the output stage also the input).
void peer_stage(worker_pointer self, const step_request_ptr& exchange) {
  auto& window = self->state.window;
  const bool lost = is_lost(*exchange);
  if (!window || window->step >= window->last) {  // before this stage's run_window: kept for it (a new image drops it)
    if (!lost) add_hand_over(self->state.early[exchange->step], *exchange);
    return;
  }
  if (window->answers.ended) {  // after the run failed: nobody waits for it
    spdlog::debug("{}: a stage's hand-over for step {} came after the window run failed", worker_name(self),
                  exchange->step);
    return;
  }
  if (lost) {
    settle_window(self, window->step + window->stride,
                  caf::make_error(caf::sec::runtime_error, worker_name(self) + ": a stage it computes on was lost"));
    return;
  }
  if (exchange->step <= window->step || exchange->step > window->last) {
    settle_window(self, window->step + window->stride,
                  caf::make_error(caf::sec::runtime_error, worker_name(self) + " got a hand-over for step " +
                                                               std::to_string(exchange->step) + " after step " +
                                                               std::to_string(window->step)));
    return;
  }
  add_hand_over(window->arrived[exchange->step], *exchange);
  advance_window(self);
}

// A stage's output at a step of the window run: answered now if it is computed, else as soon as it is.
caf::result<step_reply_ptr> next_stage(worker_pointer self, const step_request_ptr& request) {
  auto& window = self->state.window;
  if (!window)
    return caf::make_error(caf::sec::runtime_error, worker_name(self) + " got next_stage for step " +
                                                        std::to_string(request->step) + " outside a window run");
  return read_answer(self, window->answers, "next_stage", request->step, window->step, window->last, window->stride);
}

// A CFG branch: full forward passes with the worker's branch conditioning, or its branch component when the
// branch is split over several workers.
worker_actor::behavior_type cfg_branch(worker_pointer self) {
  return {
      [=](predict_atom, const step_request_ptr& request) {
        return answer(self, "predict", request->step, [&](runtime::stage_worker& worker, step_reply&) {
          return worker.predict(request->latents, request->timestep, request->conditioning.get());
        });
      },
      [=](fill_atom, const step_request_ptr& request) { return fill(self, request, runtime::split_scope::branch); },
      [=](stage_atom, const step_request_ptr& request) { return stage(self, request, runtime::split_scope::branch); },
      [=](reconfigure_atom, std::int32_t role) {
        if (role == static_cast<std::int32_t>(worker_role::pipeline_stage)) {
          end_guided_run(self, worker_name(self) + " left its guided run for the pipeline window");
          end_window_run(self, worker_name(self) + " left its split-branch run for the pipeline window");
          self->become(pipeline_stage(self));
        }
        return role;
      },
      [=](assign_atom, const module_names& window, const module_names& window_handed_on, const module_names& branch,
          const module_names& branch_handed_on,
          bool cuda_graphs) { return assign(self, window, window_handed_on, branch, branch_handed_on, cuda_graphs); },
      [=](prepare_atom, const image_setup_ptr& setup) { return prepare(self, setup); },
      [=](run_cfg_atom, const guided_run_ptr& run) { return run_cfg(self, run); },
      [=](next_cfg_atom, const step_request_ptr& request) { return next_cfg(self, request); },
      [=](peer_cfg_atom, const step_request_ptr& exchange) { peer_cfg(self, exchange); },
      [=](run_window_atom, const window_run_ptr& run) -> caf::result<step_reply_ptr> {
        if (!run->branches) return wrong_behaviour(self, "run_window", "cfg_branch");
        return run_window(self, run);
      },
      [=](next_stage_atom, const step_request_ptr& request) { return next_stage(self, request); },
      [=](peer_stage_atom, const step_request_ptr& exchange) { peer_stage(self, exchange); },  // kept for a run
  };
}

// A pipeline stage: fills its caches at the window's first step, then runs its component on stale activations.
worker_actor::behavior_type pipeline_stage(worker_pointer self) {
  return {
      [=](predict_atom, const step_request_ptr&) -> caf::result<step_reply_ptr> {
        return wrong_behaviour(self, "predict", "pipeline_stage");
      },
      [=](fill_atom, const step_request_ptr& request) { return fill(self, request, runtime::split_scope::window); },
      [=](stage_atom, const step_request_ptr& request) { return stage(self, request, runtime::split_scope::window); },
      [=](reconfigure_atom, std::int32_t role) {
        if (role == static_cast<std::int32_t>(worker_role::cfg_branch)) {
          end_window_run(self, worker_name(self) + " left its window run for CFG steps");
          self->state.worker->clear_cache();
          self->become(cfg_branch(self));
        }
        return role;
      },
      [=](assign_atom, const module_names& window, const module_names& window_handed_on, const module_names& branch,
          const module_names& branch_handed_on,
          bool cuda_graphs) { return assign(self, window, window_handed_on, branch, branch_handed_on, cuda_graphs); },
      [=](prepare_atom, const image_setup_ptr& setup) { return prepare(self, setup); },
      [=](run_cfg_atom, const guided_run_ptr&) -> caf::result<step_reply_ptr> {
        return wrong_behaviour(self, "run_cfg", "pipeline_stage");
      },
      [=](next_cfg_atom, const step_request_ptr&) -> caf::result<step_reply_ptr> {
        return wrong_behaviour(self, "next_cfg", "pipeline_stage");
      },
      [=](peer_cfg_atom, const step_request_ptr& exchange) { peer_cfg(self, exchange); },  // ended: dropped
      [=](run_window_atom, const window_run_ptr& run) -> caf::result<step_reply_ptr> {
        if (run->branches) return wrong_behaviour(self, "split-branch run_window", "pipeline_stage");
        return run_window(self, run);
      },
      [=](next_stage_atom, const step_request_ptr& request) { return next_stage(self, request); },
      [=](peer_stage_atom, const step_request_ptr& exchange) { peer_stage(self, exchange); },
  };
}

worker_actor::behavior_type start_worker(worker_pointer self, std::shared_ptr<runtime::stage_worker> worker) {
  self->state.worker = std::move(worker);
  // A step whose exception escapes the handlers ends the worker: the reads waiting on its runs hear it first (CAF
  // would drop their promises silently, and the driver would wait for them until its timeout).
  self->set_exception_handler([=](std::exception_ptr&) -> caf::error {
    const auto why = worker_name(self) + " ended: a step failed beyond its handler";
    end_guided_run(self, why);
    end_window_run(self, why);
    return caf::make_error(caf::sec::runtime_error, why);
  });
  // The peer of a guided run or a producer of a window run is lost: the step that waits for it fails, naming it.
  self->set_down_handler([=](caf::down_msg& down) {
    const auto lost = " (" + self->system().render(down.reason) + ")";
    auto& loop = self->state.loop;
    if (loop && !loop->answers.ended && down.source == loop->peer.address())
      loop->answers.settle(
          loop->step + 1,
          caf::make_error(caf::sec::runtime_error, worker_name(self) + ": the other branch's worker was lost" + lost));
    auto& window = self->state.window;
    if (!window || window->answers.ended || window->step >= window->last) return;
    for (const auto& producer : window->producers)
      if (down.source == producer.address())
        settle_window(
            self, window->step + window->stride,
            caf::make_error(caf::sec::runtime_error, worker_name(self) + ": a stage it computes on was lost" + lost));
  });
  return cfg_branch(self);
}

}  // namespace

worker_actor spawn_worker(caf::actor_system& system, std::shared_ptr<runtime::stage_worker> worker) {
  return system.spawn<caf::detached>(start_worker, std::move(worker));
}

}  // namespace hybridiff::actors
