// The driver of one parallel image (a blocking actor on the caller's thread): the step loop.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <deque>
#include <numeric>
#include <optional>

#include <spdlog/spdlog.h>
#include <torch/torch.h>
#ifdef HYBRIDIFF_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

#include "actors/messages.hpp"
#include "actors/parallel_driver.hpp"
#include "actors/tau_controller.hpp"
#include "models/errors.hpp"
#include "models/nn/nn.hpp"

namespace hybridiff::actors {
namespace {

double milliseconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

// A worker's actor is gone (not merely a failed request).
struct worker_lost {
  int worker;
};

// Ends an actor however its owner leaves.
template <class Handle>
struct exit_on_scope_end {
  Handle actor;
  exit_on_scope_end() = default;
  exit_on_scope_end(const exit_on_scope_end&) = delete;
  exit_on_scope_end& operator=(const exit_on_scope_end&) = delete;
  ~exit_on_scope_end() {
    if (actor) caf::anon_send_exit(actor, caf::exit_reason::user_shutdown);
  }
};

// Waits for this thread's pending work on the device of `tensor`: tensors handed to workers must be complete, as
// workers compute on CUDA streams of their own (actors/worker.cpp).
void finish_pending_work(const at::Tensor& tensor) {
#ifdef HYBRIDIFF_WITH_CUDA
  if (tensor.defined() && tensor.is_cuda()) c10::cuda::getCurrentCUDAStream(tensor.device().index()).synchronize();
#else
  (void)tensor;
#endif
}

// One request of a step, to one worker.
struct targeted {
  int worker;
  std::shared_ptr<step_request> work;
};

// The driver of one parallel image: owns latents, sampler and conditioning, runs the step loop and asks the
// workers for what the tau controller's current phase needs. Workers w < W/2 hold the unconditional branch (cfg,
// hybrid); asyncdiff batches both branches in every worker.
class parallel_driver {
 public:
  parallel_driver(session_state& session, const models::generation_request& request,
                  const models::generation_plan& plan)
      : session_(session),
        system_(session.system),
        self_(session.self),
        options_(session.options),
        plan_(plan),
        world_(options_.workers),
        asyncdiff_(options_.mode == parallel_mode::asyncdiff),
        solo_(options_.mode == parallel_mode::none),
        sampler_name_(request.sampler) {
    auto& lead = *session.lead;
    // Workers of other processes that served another session since this one's last image compute other components.
    if (session.shared_remote_workers)
      for (int w = static_cast<int>(session.replicas.size()); w < world_; ++w) session.assign(w);
    const auto conditioning = lead.encode_prompt(request, plan);
    // Only a solo session (none on one remote worker) runs unguided requests: one branch, not stacked.
    const auto stacked = plan.classifier_free
                             ? models::branch_conditioning::stack(conditioning.negative, conditioning.positive)
                             : conditioning.positive;
    both_branches_ = std::make_shared<const models::branch_conditioning>(stacked);
    // Every worker starts the image as a CFG branch with empty caches and this image's conditioning.
    // asyncdiff: both branches stacked on every worker; cfg and hybrid: workers w < W/2 the unconditional branch.
    const auto window = options_.conditioning == pp_conditioning::cond && !asyncdiff_ ? conditioning.positive
                                                                                      : models::branch_conditioning{};
    auto setup_of = [&](const models::branch_conditioning& branch) {
      return std::make_shared<const image_setup>(image_setup{branch, window});
    };
    const image_setup_ptr both = setup_of(stacked), uncond = setup_of(conditioning.negative),
                          cond = setup_of(conditioning.positive);
    finish_pending_work(stacked.context);
    for (int w = 0; w < world_; ++w)
      self_
          ->request(session.worker(w), options_.step_timeout, prepare_atom::value,
                    asyncdiff_ || solo_ ? both
                    : w < world_ / 2    ? uncond
                                        : cond)
          .receive([](bool) {},
                   [&](caf::error& problem) {
                     throw error("worker " + std::to_string(w) + ": " + describe_error(system_, problem));
                   });
    if (!solo_)
      controller_.actor =
          spawn_tau_controller(system_, schedule_of(options_, static_cast<int>(plan.steps)), session.workers);

    sampler_ = lead.make_sampler(request.sampler);
    sampler_->set_timesteps(plan.steps);
    latents_ = models::initial_latents(request, lead.latent_shape(plan.height, plan.width),
                                       sampler_->init_noise_sigma(), lead.placement());
    timesteps_ = sampler_->timesteps().to(latents_.device());  // once: a copy per step would synchronise the host
  }

  parallel_result run(const models::step_observer& observe) {
    parallel_result result;
    std::int32_t phase_number = 0;
    if (!solo_)
      self_->request(controller_.actor, options_.step_timeout, phase_atom::value, std::int32_t{0})
          .receive([&](const step_decision& decision) { phase_number = follow(decision); },
                   [&](caf::error& problem) { throw error("tau controller: " + describe_error(system_, problem)); });
    for (std::int64_t i = 0; i < plan_.steps; ++i) {
      step_trace row;
      row.step = static_cast<int>(i);
      row.worker_ms.assign(world_, 0.0);
      row.worker_overhead_ms.assign(world_, 0.0);
      const auto step_began = std::chrono::steady_clock::now();
      at::Tensor prediction;
      try {
        if (solo_) {
          row.mode = "cfg";
          prediction = batched_step(i, 0, row);
        } else if (survivor_) {
          row.mode = "cfg-degraded";
          prediction = batched_step(i, *survivor_, row);
        } else {
          const auto phase = static_cast<schedule::phase>(phase_number);
          row.mode = schedule::to_string(phase);
          switch (phase) {
            case schedule::phase::cfg: prediction = cfg_step(i, row); break;
            case schedule::phase::fill: prediction = fill_step(i, row); break;
            case schedule::phase::pipeline: prediction = pipeline_step(i, row); break;
          }
        }
      } catch (const worker_lost& gone) {
        take_over(i, gone.worker);
        --i;  // redo this step degraded
        continue;
      }
      row.step_ms = milliseconds_since(step_began);  // the workers' part
      // The controller (asked unless a survivor finishes the image) decides the next step's phase from this step's
      // rel-MAE. Where the metric is on the host already, it is asked before the sampler steps and decides
      // meanwhile; where it is still being copied from the device, the sampler step is queued first (the device
      // computes the guidance while the host queues the step), and the read then waits for the copy alone.
      using decision_handle = decltype(self_->request(controller_.actor, options_.step_timeout, metric_atom::value,
                                                      std::int32_t{}, double{}, bool{}, double{}));
      std::optional<decision_handle> answer;
      const auto ask_controller = [&] {
        if (pending_metric_) {
          const auto means = pending_metric_->means();
          pending_metric_.reset();
          row.metric = schedule::relative_mae(means.mean_abs_difference, means.mean_abs_uncond);
          spdlog::trace("step {}: metric read", i);
        }
        if (!survivor_ && !solo_)
          answer.emplace(self_->request(controller_.actor, options_.step_timeout, metric_atom::value,
                                        static_cast<std::int32_t>(i), row.metric.value_or(0.0), row.metric.has_value(),
                                        row.step_ms));
      };
      const bool metric_on_device = pending_metric_ && pending_metric_->means_on_device;
      if (!metric_on_device) ask_controller();
      latents_ = sampler_->step(prediction, i, latents_);
      spdlog::trace("step {}: sampler stepped", i);
      if (metric_on_device) ask_controller();
      if (answer) {
        step_decision decision;
        answer->receive(
            [&](const step_decision& d) { decision = d; },
            [&](caf::error& problem) { throw error("tau controller: " + describe_error(system_, problem)); });
        phase_number = follow(decision);
        if (!std::isnan(decision.slope)) row.slope = decision.slope;
        if (decision.tau1 >= 0) row.tau1 = result.tau1 = decision.tau1;
        if (decision.tau2 >= 0) row.tau2 = result.tau2 = decision.tau2;
      }
      spdlog::debug("step {} {} metric {}", i, row.mode, row.metric.value_or(-1));
      result.trace.push_back(std::move(row));
      if (observe) observe(i, plan_.steps, latents_);
    }
    result.latents = latents_;
    return result;
  }

 private:
  using reply_handle = decltype(std::declval<caf::scoped_actor&>()->request(std::declval<const worker_actor&>(),
                                                                            decltype(parallel_options::step_timeout){},
                                                                            predict_atom::value, step_request_ptr()));
  // A request on its way: its worker, its step and when it left (for the trace's round trip).
  struct pending_reply {
    int worker;
    std::int32_t step;
    reply_handle handle;
    std::chrono::steady_clock::time_point sent;
  };

  session_state& session_;
  caf::actor_system& system_;
  caf::scoped_actor& self_;
  const parallel_options& options_;
  const models::generation_plan& plan_;
  const int world_;
  const bool asyncdiff_;
  const bool solo_;                 // none on one remote worker: every step a batched full pass, no tau controller
  const std::string sampler_name_;  // the request's
  exit_on_scope_end<tau_controller_actor> controller_;
  std::shared_ptr<const models::branch_conditioning> both_branches_;
  std::unique_ptr<models::sampler> sampler_;
  at::Tensor latents_, timesteps_;

  int cfg_run_ = 0;  // steps since the current run of CFG steps began (split branches warm up)
  runtime::activation_cache branch_peers_[2];  // split branches: each branch's owned outputs of the last step
  std::shared_ptr<runtime::activation_cache> window_peers_;  // the window's owned outputs of the last step
  int window_begin_ = 0;                                     // the window's fill step
  at::Tensor held_;  // stride 2: the prediction computed ahead for the next step
  std::optional<models::measured_guidance> pending_metric_;  // set by guided(), its means read by the step loop
  std::optional<int> survivor_;
  std::deque<pending_reply> run_requests_;  // a guided or window run's unanswered requests, in the order sent
  std::int32_t guided_last_ = -1;           // the last step of the guided run in progress (or of the last one)
  std::int32_t window_last_ = -1;           // the last step of the window run in progress (or of the last one)
  std::int32_t cfg_through_ = -1;           // the controller's CFG promise for the current step
  std::int32_t window_through_ = -1;        // its promise of pipeline steps, made at the window's fill step

  // Takes the controller's promises from `decision` (a window's, made at its fill step, holds through the window)
  // and answers the next step's phase.
  std::int32_t follow(const step_decision& decision) {
    cfg_through_ = decision.cfg_through;
    if (decision.window_through >= 0) window_through_ = decision.window_through;
    return decision.next_phase;
  }

  at::Tensor timestep(std::int64_t index) const {
    index = std::clamp<std::int64_t>(index, 0, timesteps_.size(0) - 1);
    return timesteps_[index];
  }
  std::shared_ptr<step_request> work_for(std::int64_t i, bool batched) const {
    auto work = std::make_shared<step_request>();
    work->step = static_cast<std::int32_t>(i);
    auto model_input = sampler_->scale_model_input(latents_, i);
    work->latents = batched ? torch::cat({model_input, model_input}, 0) : model_input;
    work->timestep = timestep(i);
    return work;
  }
  at::Tensor output_of(const std::vector<step_reply_ptr>& replies, int worker) const {
    return replies[worker]->prediction.to(latents_.device());
  }
  at::Tensor guided_batch(const at::Tensor& both) const {
    auto halves = both.chunk(2, 0);
    return models::guide(halves[0], halves[1], plan_.guidance);
  }
  // The guided prediction; the step's rel-MAE, which the driver needs before it plans the next step, is read
  // from `pending_metric_` by the step loop.
  at::Tensor guided(const at::Tensor& uncond, const at::Tensor& cond) {
    pending_metric_ = models::guide_and_measure(uncond, cond, plan_.guidance);
    return pending_metric_->guided;
  }

  // Whether a worker whose request failed has died (the supervisor waits a moment for the down message).
  bool has_died(int w) {
    bool lost = false;
    self_->request(session_.supervisor, options_.step_timeout, lost_atom::value, static_cast<std::int32_t>(w))
        .receive([&](bool gone) { lost = gone; }, [&](caf::error&) { lost = false; });
    return lost;
  }

  template <class Atom, class Payload>
  pending_reply send(int w, std::int32_t step, Atom atom, Payload payload) {
    return {w, step, self_->request(session_.worker(w), options_.step_timeout, atom, std::move(payload)),
            std::chrono::steady_clock::now()};
  }

  // The reply to `pending`, its times recorded in `row`. A worker whose actor is gone is reported as
  // `worker_lost`, as is one of the `suspects` whose output the reply waited for (a run's other workers); any other
  // failure as hybridiff::error.
  step_reply_ptr collect(pending_reply& pending, step_trace& row, const std::vector<int>& suspects = {}) {
    const int w = pending.worker;
    step_reply_ptr reply;
    std::string failure;
    std::optional<int> lost;
    pending.handle.receive([&](const step_reply_ptr& answer) { reply = answer; },
                           [&](caf::error& problem) {
                             const bool timed_out = problem == caf::sec::request_timeout;
                             if (!timed_out && has_died(w)) lost = w;
                             for (int suspect : suspects)
                               if (!timed_out && !lost && has_died(suspect)) lost = suspect;
                             failure = timed_out ? "worker " + std::to_string(w) + " did not answer within " +
                                                       std::to_string(options_.step_timeout.count()) + " ms"
                                                 : describe_error(system_, problem);
                           });
    if (lost) throw worker_lost{*lost};
    if (!failure.empty()) throw error("step " + std::to_string(pending.step) + ": " + failure);
    // An upper bound of the worker's overhead: replies are collected in order.
    row.worker_ms[w] = reply->compute_ms;
    row.worker_overhead_ms[w] = std::max(0.0, milliseconds_since(pending.sent) - reply->compute_ms);
    return reply;
  }

  // Sends each request to its worker at once, then collects the replies (the workers run in parallel) into `row`.
  template <class Atom>
  std::vector<step_reply_ptr> ask(Atom atom, const std::vector<targeted>& requests, step_trace& row) {
    std::vector<step_reply_ptr> replies(world_);
    std::vector<pending_reply> pending;
    finish_pending_work(latents_);
    const auto step = requests.front().work->step;
    spdlog::trace("step {}: {} request(s) out", step, requests.size());
    // The highest workers first: they are the remote ones, whose requests take longest to reach their worker.
    for (auto request = requests.rbegin(); request != requests.rend(); ++request)
      pending.push_back(send(request->worker, step, atom, step_request_ptr(request->work)));
    for (auto& p : pending) replies[p.worker] = collect(p, row);
    spdlog::trace("step {}: every reply in", step);
    return replies;
  }
  std::vector<targeted> to_each(const std::vector<int>& workers, const std::shared_ptr<step_request>& work) const {
    std::vector<targeted> requests;
    for (int w : workers) requests.push_back({w, work});
    return requests;
  }
  // A copy of `work` carrying the entries of `peers` that worker w's component computes on (`inputs`).
  static std::shared_ptr<step_request> with_peers(const std::shared_ptr<step_request>& work,
                                                  const runtime::activation_cache& peers,
                                                  const std::set<std::string>& inputs) {
    auto own = std::make_shared<step_request>(*work);
    auto needed = std::make_shared<runtime::activation_cache>();
    for (const auto& [module, value] : peers)
      if (inputs.count(module)) needed->emplace(module, value);
    own->peers = std::move(needed);
    return own;
  }
  std::vector<targeted> window_requests(const std::vector<int>& workers,
                                        const std::shared_ptr<step_request>& work) const {
    std::vector<targeted> requests;
    for (int w : workers) requests.push_back({w, with_peers(work, *window_peers_, session_.window_inputs[w])});
    return requests;
  }
  std::vector<int> everyone() const {
    std::vector<int> all(world_);
    std::iota(all.begin(), all.end(), 0);
    return all;
  }

  // Whether the window's stages exchange `module`'s output (SD3's reference conditioning exchanges no block).
  bool exchanged_in_window(const std::string& module) const {
    return session_.exchange_blocks || module.rfind("transformer_blocks.", 0) != 0;
  }

  // The owned outputs of `workers`' replies (window scope: see exchanged_in_window).
  runtime::activation_cache merge_owned(const std::vector<step_reply_ptr>& replies, const std::vector<int>& workers,
                                        bool window) const {
    runtime::activation_cache merged;
    for (int w : workers) {
      if (!replies[w]) continue;
      for (const auto& [module, value] : replies[w]->owned)
        if (!window || exchanged_in_window(module)) merged[module] = value;
    }
    return merged;
  }

  at::Tensor cfg_step(std::int64_t i, step_trace& row) {
    if (guided_last_ >= i || starts_guided_run(i)) return looped_cfg_step(i, row);
    auto work = work_for(i, asyncdiff_);
    if (asyncdiff_) {  // warm-up: the whole batched model on one worker
      auto replies = ask(predict_atom::value, to_each({0}, work), row);
      auto halves = output_of(replies, 0).chunk(2, 0);
      return guided(halves[0], halves[1]);
    }
    const int cond_worker = world_ / 2;
    if (options_.branch_stages == 1) {
      auto replies = ask(predict_atom::value, to_each({0, cond_worker}, work), row);
      return guided(output_of(replies, 0), output_of(replies, cond_worker));
    }
    // Each branch split over its two workers (0, 1: unconditional; 2, 3: conditional) as a 2-stage AsyncDiff
    // pipeline. The first `warmup` steps of a CFG run are full passes, recording the activations; the later ones
    // are stale-activation steps. Every worker runs the full passes (in parallel, as in the window's fill step):
    // a stale step visits modules of the other component whose outputs it does not use (SD3: the blocks before the
    // last one ahead of its own), which only the other worker would otherwise hold.
    if (cfg_run_++ < options_.warmup) {
      auto replies = ask(fill_atom::value, to_each(everyone(), work), row);
      for (int b : {0, 1}) branch_peers_[b] = merge_owned(replies, {2 * b}, false);
      return guided(output_of(replies, 0), output_of(replies, cond_worker));
    }
    row.mode = "cfg-pipeline";
    if (window_last_ >= i || cfg_through_ > i) {  // promised beyond this step: a split-branch run
      if (window_last_ < i) start_window_run(i, true);
      auto replies = read_run_step(i, row, 1);
      if (i == window_last_)  // the policy may go on with CFG steps it did not promise: requests then
        for (int b : {0, 1}) branch_peers_[b] = merge_owned(replies, {2 * b, 2 * b + 1}, false);
      return guided(output_of(replies, 1), output_of(replies, 3));
    }
    std::vector<targeted> requests;
    for (int w = 0; w < world_; ++w)
      requests.push_back({w, with_peers(work, branch_peers_[w / 2], session_.branch_inputs[w])});
    auto replies = ask(stage_atom::value, requests, row);
    for (int b : {0, 1}) branch_peers_[b] = merge_owned(replies, {2 * b, 2 * b + 1}, false);
    return guided(output_of(replies, 1), output_of(replies, 3));
  }

  // Whether CFG step i starts a guided run: each branch on one worker, and the policy promises CFG beyond this step
  // (mode cfg: the whole image).
  bool starts_guided_run(std::int64_t i) const {
    return options_.branch_stages == 1 && !asyncdiff_ && cfg_through_ > i;
  }

  // A guided run, over the CFG steps the policy promises: each branch's worker steps its own copy of the latents
  // and hands each of its predictions straight to the other branch's worker, which guides, steps and predicts the
  // next step with it. The driver reads both predictions of every step and guides and steps its own copy (for the
  // tau controller, the observer and the result) while the workers compute: it is not on the path between them.
  at::Tensor looped_cfg_step(std::int64_t i, step_trace& row) {
    const int workers[2] = {0, world_ / 2};  // the unconditional branch's worker, the conditional one's
    const auto step = static_cast<std::int32_t>(i);
    spdlog::trace("step {}: 2 request(s) out", step);
    if (guided_last_ < i) {  // the run starts: both workers get the latents and the sampler's settings
      guided_last_ = cfg_through_;
      finish_pending_work(latents_);
      for (int b : {1, 0}) {  // the conditional worker first: a remote one's request takes longest
        auto run = std::make_shared<guided_run>();
        run->step = step;
        run->sample = latents_;
        run->sampler = sampler_name_;
        run->memory = sampler_->memory();  // DPM++ 2M mid-image: the worker's copy steps on as the driver's
        run->steps = plan_.steps;
        run->guidance = plan_.guidance;
        run->conditional = b == 1;
        run->last = guided_last_;
        run->peer = session_.worker(workers[1 - b]);
        run_requests_.push_back(send(workers[b], step, run_cfg_atom::value, guided_run_ptr(run)));
      }
    }
    at::Tensor predictions[2];
    for (int b : {0, 1}) {
      auto pending = take_run_request(workers[b]);
      predictions[b] = collect(pending, row, {workers[1 - b]})->prediction;
      if (i == guided_last_) continue;
      auto next = std::make_shared<step_request>();  // asked now, answered once computed
      next->step = step + 1;
      run_requests_.push_back(send(workers[b], step + 1, next_cfg_atom::value, step_request_ptr(next)));
    }
    return guided(predictions[0].to(latents_.device()), predictions[1].to(latents_.device()));
  }

  // The run's oldest unanswered request to worker w (taken out: collecting it consumes it).
  pending_reply take_run_request(int w) {
    auto found = std::find_if(run_requests_.begin(), run_requests_.end(),
                              [w](const pending_reply& pending) { return pending.worker == w; });
    auto pending = std::move(*found);
    run_requests_.erase(found);
    return pending;
  }

  at::Tensor fill_step(std::int64_t i, step_trace& row) {
    cfg_run_ = 0;  // the CFG run after the window starts over
    window_begin_ = static_cast<int>(i);
    auto replies = ask(fill_atom::value, to_each(everyone(), work_for(i, asyncdiff_)), row);
    window_peers_ = std::make_shared<runtime::activation_cache>(merge_owned(replies, stage_workers(), true));
    const auto output = output_of(replies, session_.output_worker);
    if (asyncdiff_) return guided_batch(output);
    if (options_.conditioning == pp_conditioning::fixed)
      return models::guide(output_of(replies, 0), output, plan_.guidance);
    return output;  // the reference: the conditional branch, unguided
  }

  // Workers 0 .. n−1 (not the stride-2 extra worker, whose outputs duplicate worker n−1's modules).
  std::vector<int> stage_workers() const {
    std::vector<int> stages(session_.n);
    std::iota(stages.begin(), stages.end(), 0);
    return stages;
  }

  at::Tensor pipeline_step(std::int64_t i, step_trace& row) {
    const int shift = options_.time_shift ? 1 : 0;  // AsyncDiff App. A: the previous step's timestep
    if (window_last_ >= i || starts_window_run(i)) return looped_pipeline_step(i, row);
    auto work = work_for(i, asyncdiff_);
    std::vector<step_reply_ptr> replies;
    at::Tensor output;
    if (options_.stride == 1) {
      work->timestep = timestep(i - shift);
      replies = ask(stage_atom::value, window_requests(everyone(), work), row);
      output = output_of(replies, session_.output_worker);
    } else if (compute_round(i)) {
      // Stride 2, a compute round: components 0 .. n−1 run on x_i at the next step's timestep (their output is
      // the next step's prediction); the extra worker runs the last component at this step's timestep.
      auto ahead = std::make_shared<step_request>(*work);
      ahead->timestep = timestep(i + 1 - shift);
      work->timestep = timestep(i - shift);
      auto requests = window_requests(stage_workers(), ahead);
      requests.push_back(window_requests({session_.n}, work).front());
      replies = ask(stage_atom::value, requests, row);
      output = output_of(replies, session_.n);
      held_ = output_of(replies, session_.output_worker);
    } else {
      output = held_;  // stride 2, the step between rounds: computed ahead, nobody computes
    }
    if (!replies.empty())
      window_peers_ = std::make_shared<runtime::activation_cache>(merge_owned(replies, stage_workers(), true));
    spdlog::trace("step {}: activations kept", i);
    return asyncdiff_ ? guided_batch(output) : output;
  }

  // Stride 2: whether pipeline step i is a compute round (else the step between two, computed ahead).
  bool compute_round(std::int64_t i) const { return (i - window_begin_ - 1) % 2 == 0; }

  // Whether pipeline step i starts a window run: the policy promises pipeline steps beyond this one (stride 2: a
  // round beyond this one).
  bool starts_window_run(std::int64_t i) const {
    return options_.stride == 1 ? window_through_ > i : compute_round(i) && window_through_ >= i + 2;
  }

  // A window run, over the pipeline steps the policy promises: each stage hands its outputs of every step straight
  // to the stages that compute on them, and the output stage steps its own copy of the latents and hands the next
  // input on with them (stride 2: every stage steps its own copy on the round's two predictions, which the extra
  // worker and the output stage hand on); a stage computes a step as soon as all of its hand-overs are in. The
  // driver reads every stage's answer of each step and steps its own copy (for the observer and the result): it is
  // not on the path from one stage to the next.
  at::Tensor looped_pipeline_step(std::int64_t i, step_trace& row) {
    if (window_last_ < i) start_window_run(i, false);
    at::Tensor output;
    if (options_.stride == 1) {
      output = output_of(read_run_step(i, row, 1), session_.output_worker);
    } else if (compute_round(i)) {
      const auto replies = read_run_step(i, row, 2);
      output = output_of(replies, session_.n);
      held_ = output_of(replies, session_.output_worker);
    } else {
      output = held_;
    }
    return asyncdiff_ ? guided_batch(output) : output;
  }

  // Every stage's answer at step i of the window or split-branch run in progress; asks for its next step's, `stride`
  // steps on.
  std::vector<step_reply_ptr> read_run_step(std::int64_t i, step_trace& row, int stride) {
    const auto step = static_cast<std::int32_t>(i);
    spdlog::trace("step {}: {} request(s) out", step, world_);
    std::vector<step_reply_ptr> replies(world_);
    for (int w = 0; w < world_; ++w) {
      std::vector<int> others;
      for (int other = 0; other < world_; ++other)
        if (other != w) others.push_back(other);
      auto pending = take_run_request(w);
      replies[w] = collect(pending, row, others);
      if (i == window_last_) continue;
      auto next = std::make_shared<step_request>();  // asked now, answered once computed
      next->step = step + stride;
      run_requests_.push_back(send(w, next->step, next_stage_atom::value, step_request_ptr(next)));
    }
    return replies;
  }

  // Hands every stage the run's first step (the activations of the step before that it computes on), whom it hands
  // its outputs to, and the output stage the sampler. `branches`: a split-branch run over the promised CFG steps.
  // Where every stage steps its own latents (split branches, stride 2) every stage gets the sampler, and the stages
  // whose outputs are predictions hand them to every other stage: each branch's output stage (1, 3); a stride-2
  // round's extra worker (n: the round's first step) and output stage (its second).
  void start_window_run(std::int64_t i, bool branches) {
    const int stride = branches ? 1 : options_.stride;
    const bool own_latents = stages_step_own_latents(branches, stride);
    window_last_ = branches ? cfg_through_ : static_cast<std::int32_t>(i + (window_through_ - i) / stride * stride);
    spdlog::debug("step {}: a {} run through step {}", i, branches ? "split-branch" : "window", window_last_);
    const int shift = options_.time_shift && !branches ? 1 : 0;  // as pipeline_step; CFG steps take their own
    auto timesteps_of = [&](int w) {  // stride 2: components 0 .. n−1 compute the round's second step
      const int ahead = stride == 2 && w != session_.n ? 1 : 0;
      std::vector<at::Tensor> timesteps;
      for (std::int64_t s = i; s <= window_last_; s += stride) timesteps.push_back(timestep(s + ahead - shift));
      return torch::stack(timesteps);
    };
    auto prediction_of = [&](int w) -> std::string {
      if (branches) return w % 2 == 1 ? branch_prediction(w / 2 == 1) : "";
      if (stride == 2)
        return w == session_.n ? round_prediction(false) : w == session_.output_worker ? round_prediction(true) : "";
      return "";
    };
    const auto work = work_for(i, asyncdiff_);
    // Stage p hands stage c the outputs of p that c computes on (not across branches; none from the stride-2 extra
    // worker, whose outputs duplicate worker n−1's modules) and its prediction, if it hands one on; a stride-1
    // window's output stage hands every stage the next input.
    const auto& inputs = branches ? session_.branch_inputs : session_.window_inputs;
    auto outputs_to = [&](int p, int c) {
      module_names modules;
      const bool across = (branches && p / 2 != c / 2) || (stride == 2 && p == session_.n);
      const auto& handed_on =
          branches ? session_.assignments[p].branch_handed_on : session_.assignments[p].window_handed_on;
      if (!across)
        for (const auto& module : handed_on)
          if (inputs[c].count(module) && (branches || exchanged_in_window(module))) modules.push_back(module);
      if (!prediction_of(p).empty()) modules.push_back(prediction_of(p));
      return modules;
    };
    std::vector<std::vector<std::pair<worker_actor, module_names>>> hand_on(world_);
    std::vector<std::vector<worker_actor>> producers(world_);
    for (int p = 0; p < world_; ++p)
      for (int c = 0; c < world_; ++c) {
        if (c == p) continue;
        auto modules = outputs_to(p, c);
        if (modules.empty() && (own_latents || p != session_.output_worker)) continue;
        hand_on[p].emplace_back(session_.worker(c), std::move(modules));
        producers[c].push_back(session_.worker(p));
      }
    finish_pending_work(latents_);
    for (int w = world_ - 1; w >= 0; --w) {
      auto run = std::make_shared<window_run>();
      run->step = static_cast<std::int32_t>(i);
      run->last = window_last_;
      run->stride = stride;
      run->latents = work->latents;
      run->timesteps = timesteps_of(w);
      run->peers = with_peers(work, branches ? branch_peers_[w / 2] : *window_peers_, inputs[w])->peers;
      run->hand_on = std::move(hand_on[w]);
      run->hand_overs = static_cast<std::int32_t>(producers[w].size());
      run->producers = std::move(producers[w]);
      run->output = !own_latents && w == session_.output_worker;
      run->branches = branches;
      run->prediction = prediction_of(w);
      if (run->output || own_latents) {
        run->sample = latents_;
        run->memory = sampler_->memory();
      }
      run->sampler = sampler_name_;
      run->steps = plan_.steps;
      run->batched = asyncdiff_;
      run->guidance = plan_.guidance;
      run_requests_.push_back(send(w, run->step, run_window_atom::value, window_run_ptr(run)));
    }
  }

  // A full pass of both branches batched on `worker` (the numerics of mode none): every step of a solo session,
  // and the steps a survivor computes after a worker's actor died (supervision: it finishes the image in
  // sequential CFG from the step that failed; the window is given up).
  at::Tensor batched_step(std::int64_t i, int worker, step_trace& row) {
    auto work = work_for(i, plan_.classifier_free);
    work->conditioning = both_branches_;
    std::vector<step_reply_ptr> replies;
    try {
      replies = ask(predict_atom::value, to_each({worker}, work), row);
    } catch (const worker_lost& gone) {
      throw error("step " + std::to_string(i) + ": worker " + std::to_string(gone.worker) + " was lost" +
                  (solo_ ? "" : " too") + "; no worker is left to finish the image");
    }
    return plan_.classifier_free ? guided_batch(output_of(replies, worker)) : output_of(replies, worker);
  }

  void take_over(std::int64_t i, int lost) {
    session_.lost = lost;
    // A guided or window run ends: its requests are answered (or fail) before the survivor's first.
    for (auto& pending : run_requests_) pending.handle.receive([](const step_reply_ptr&) {}, [](caf::error&) {});
    run_requests_.clear();
    guided_last_ = window_last_ = -1;
    for (int w = 0; w < world_ && !survivor_; ++w)
      if (w != lost && !has_died(w)) survivor_ = w;
    if (!survivor_) throw error("step " + std::to_string(i) + ": every worker was lost");
    // The survivor may be a pipeline stage (a loss inside the window): it becomes a CFG branch again.
    self_
        ->request(session_.worker(*survivor_), options_.step_timeout, reconfigure_atom::value,
                  static_cast<std::int32_t>(worker_role::cfg_branch))
        .receive([](std::int32_t) {},
                 [&](caf::error& problem) {
                   throw error("step " + std::to_string(i) + ": " + describe_error(system_, problem));
                 });
    spdlog::error("step {}: worker {} was lost; finishing the image on worker {} in sequential CFG", i, lost,
                  *survivor_);
  }
};

}  // namespace

parallel_result drive_image(session_state& session, const models::generation_request& request,
                            const models::generation_plan& plan, const models::step_observer& observe) {
  parallel_driver driver(session, request, plan);
  return driver.run(observe);
}

}  // namespace hybridiff::actors
