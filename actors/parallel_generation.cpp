// The driver of a parallel generation (a blocking actor on the caller's thread), its options and its trace.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <iomanip>
#include <numeric>
#include <optional>
#include <stdexcept>

#include <spdlog/spdlog.h>
#include <torch/torch.h>
#ifdef HYBRIDIFF_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

#include "actors/hybridiff.hpp"
#include "actors/cluster.hpp"
#include "actors/messages.hpp"
#include "actors/supervisor.hpp"
#include "actors/tau_controller.hpp"
#include "actors/worker.hpp"
#include "models/errors.hpp"
#include "schedule/asyncdiff_plan.hpp"

namespace hybridiff {
namespace {

using actors::image_setup_ptr;
using actors::step_reply_ptr;
using actors::step_request;

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

// One read-back per step (both means at once): the driver needs the value before it can plan the next step.
double relative_mae_of(const at::Tensor& cond, const at::Tensor& uncond) {
  auto means = torch::stack({(cond - uncond).abs().mean(), uncond.abs().mean()}).to(torch::kCPU, torch::kDouble);
  return schedule::relative_mae(means[0].item<double>(), means[1].item<double>());
}

}  // namespace

parallel_mode parse_parallel_mode(const std::string& name) {
  if (name == "none") return parallel_mode::none;
  if (name == "cfg") return parallel_mode::cfg;
  if (name == "asyncdiff") return parallel_mode::asyncdiff;
  if (name == "hybrid") return parallel_mode::hybrid;
  throw std::invalid_argument("--parallel '" + name + "': use none, cfg, asyncdiff or hybrid");
}

std::string to_string(parallel_mode mode) {
  switch (mode) {
    case parallel_mode::none: return "none";
    case parallel_mode::cfg: return "cfg";
    case parallel_mode::asyncdiff: return "asyncdiff";
    case parallel_mode::hybrid: return "hybrid";
  }
  return "?";
}

pp_conditioning parse_pp_conditioning(const std::string& name) {
  if (name == "fixed") return pp_conditioning::fixed;
  if (name == "reference") return pp_conditioning::reference;
  if (name == "cond") return pp_conditioning::cond;
  throw std::invalid_argument("--pp-conditioning '" + name + "': use fixed, reference or cond");
}

namespace {

schedule::schedule_settings schedule_of(const parallel_options& options, int steps) {
  schedule::schedule_settings settings;
  settings.steps = steps;
  settings.tau = options.tau;
  settings.warmup = options.warmup;
  switch (options.mode) {
    case parallel_mode::none:
    case parallel_mode::cfg: settings.policy = schedule::tau_policy::never; break;
    case parallel_mode::asyncdiff: settings.policy = schedule::tau_policy::always; break;
    case parallel_mode::hybrid:
      settings.policy = options.tau1 || options.tau2 ? schedule::tau_policy::fixed : schedule::tau_policy::slope;
      settings.tau1 = options.tau1;
      settings.tau2 = options.tau2;
      break;
  }
  return settings;
}

}  // namespace

void apply_worker_defaults(parallel_options& options, std::optional<int> workers, std::optional<int> model_n,
                           std::optional<int> branch_stages) {
  switch (options.mode) {
    case parallel_mode::none: options.workers = 1; break;
    case parallel_mode::cfg: options.workers = 2; break;
    case parallel_mode::asyncdiff:
      options.model_n = model_n.value_or(2);
      options.workers = options.model_n + options.stride - 1;
      break;
    case parallel_mode::hybrid: options.workers = 2; break;
  }
  if (workers) options.workers = *workers;
  if (options.mode == parallel_mode::hybrid) options.model_n = model_n.value_or(options.workers - options.stride + 1);
  // With 4 workers, CFG steps split each guidance branch over 2 workers unless told otherwise.
  const bool branch_split = options.mode == parallel_mode::cfg || options.mode == parallel_mode::hybrid;
  options.branch_stages = branch_stages.value_or(branch_split && options.workers == 4 ? 2 : 1);
}

namespace {

// The checks that do not depend on the request.
void validate_structure(const parallel_options& options) {
  auto reject = [](const std::string& message) { throw std::invalid_argument(message); };
  const auto workers = std::to_string(options.workers);
  if (options.stride != 1 && options.stride != 2) reject("--stride " + std::to_string(options.stride) + " must be 1 or 2");
  if (options.step_timeout.count() <= 0) reject("the step timeout must be positive");
  const bool pipelined = options.mode == parallel_mode::asyncdiff || options.mode == parallel_mode::hybrid;
  if (options.stride != 1 && !pipelined)
    reject("--stride " + std::to_string(options.stride) + " applies to asyncdiff and hybrid only");
  switch (options.mode) {
    case parallel_mode::none:
      if (options.workers != 1) reject("--parallel none runs on 1 worker, not " + workers);
      break;
    case parallel_mode::cfg:
      if (options.workers != 2 && options.workers != 4)
        reject("--parallel cfg needs --workers 2 (one per guidance branch) or 4 (two per branch), not " + workers);
      if (options.branch_stages != options.workers / 2)
        reject("--parallel cfg with --workers " + workers + " splits each branch over " +
               std::to_string(options.workers / 2) + " workers: --branch-stages must be " +
               std::to_string(options.workers / 2));
      break;
    case parallel_mode::asyncdiff:
      if (options.workers != options.model_n + options.stride - 1)
        reject("--workers " + workers + " does not fit --model_n " + std::to_string(options.model_n) + " --stride " +
               std::to_string(options.stride) + ": AsyncDiff needs n + stride − 1 = " +
               std::to_string(options.model_n + options.stride - 1) + " workers");
      if (options.branch_stages != 1)
        reject("--parallel asyncdiff batches both branches in every component: --branch-stages must be 1");
      break;
    case parallel_mode::hybrid:
      if (options.workers != 2 && options.workers != 4)
        reject("--parallel hybrid needs --workers 2 or 4 (half per guidance branch), not " + workers);
      if (options.model_n + options.stride - 1 != options.workers)
        reject("--parallel hybrid with --workers " + workers + " needs --model_n + --stride − 1 = " + workers +
               " (2: n 2; 4: n 4, or n 3 with stride 2), not n " + std::to_string(options.model_n) + " stride " +
               std::to_string(options.stride));
      if (options.branch_stages != 1 && options.branch_stages != options.workers / 2)
        reject("--branch-stages " + std::to_string(options.branch_stages) + " with --workers " + workers +
               ": use 1 (one worker per branch in CFG steps) or " + std::to_string(options.workers / 2));
      break;
  }
  if (options.branch_stages > 1 && options.warmup < 1)
    reject("--warmup " + std::to_string(options.warmup) + " must be at least 1 (a split branch starts with a full step)");
}

}  // namespace

void validate(const parallel_options& options, int steps) {
  validate_structure(options);
  schedule::validate(schedule_of(options, steps));
}

namespace {

// One request of a step, to one worker.
struct targeted {
  int worker;
  std::shared_ptr<step_request> work;
};

}  // namespace

// The actors and replicas that outlive one image: workers (with their stage_worker state) and the supervisor.
struct parallel_session::state {
  caf::actor_system& system;
  caf::scoped_actor self;
  parallel_options options;
  std::vector<std::shared_ptr<models::diffusion_pipeline>> replicas;
  std::vector<actors::worker_actor> workers;
  actors::supervisor_actor supervisor;
  int n = 2;              // components of the window split (the stride-2 extra worker is worker n)
  int output_worker = 1;  // the worker whose output is the window's prediction
  bool exchange_blocks = true;
  // Per worker, the other workers' modules its component computes on in window and branch steps: only these of
  // the last step's outputs travel to it.
  std::vector<std::set<std::string>> window_inputs, branch_inputs;
  std::optional<int> lost;  // a worker lost in an earlier image
  std::unique_ptr<runtime::graphed_denoiser> graphed;  // mode none with CUDA graphs

  state(caf::actor_system& actor_system, std::vector<std::shared_ptr<models::diffusion_pipeline>> pipelines,
        parallel_options settings)
      : system(actor_system), self(actor_system), options(std::move(settings)), replicas(std::move(pipelines)) {}
  ~state() {
    if (supervisor) caf::anon_send_exit(supervisor, caf::exit_reason::user_shutdown);
    // Only the local workers: remote ones (proxies) belong to their cluster_host and serve its later sessions.
    for (std::size_t w = 0; w < replicas.size() && w < workers.size(); ++w)
      caf::anon_send_exit(workers[w], caf::exit_reason::user_shutdown);
  }
  const actors::worker_actor& worker(int w) const { return workers[w]; }
};

namespace {

// The driver of one parallel image: owns latents, sampler and conditioning, runs the step loop and asks the
// workers for what the tau controller's current phase needs. Workers w < W/2 hold the unconditional branch (cfg,
// hybrid); asyncdiff batches both branches in every worker.
class parallel_driver {
 public:
  parallel_driver(parallel_session::state& session, const models::generation_request& request,
                  const models::generation_plan& plan)
      : session_(session), system_(session.system), self_(session.self), options_(session.options), plan_(plan),
        world_(options_.workers), asyncdiff_(options_.mode == parallel_mode::asyncdiff) {
    auto& lead = *session.replicas.front();
    const auto conditioning = lead.encode_prompt(request, plan);
    const auto stacked = models::branch_conditioning::stack(conditioning.negative, conditioning.positive);
    both_branches_ = std::make_shared<const models::branch_conditioning>(stacked);
    // Every worker starts the image as a CFG branch with empty caches and this image's conditioning.
    // asyncdiff: both branches stacked on every worker; cfg and hybrid: workers w < W/2 the unconditional branch.
    const auto window = options_.conditioning == pp_conditioning::cond && !asyncdiff_ ? conditioning.positive
                                                                                      : models::branch_conditioning{};
    auto setup_of = [&](const models::branch_conditioning& branch) {
      return std::make_shared<const actors::image_setup>(actors::image_setup{branch, window});
    };
    const image_setup_ptr both = setup_of(stacked), uncond = setup_of(conditioning.negative),
                          cond = setup_of(conditioning.positive);
    finish_pending_work(stacked.context);
    for (int w = 0; w < world_; ++w)
      self_->request(session.worker(w), options_.step_timeout, actors::prepare_atom::value,
                     asyncdiff_ ? both : w < world_ / 2 ? uncond : cond)
          .receive([](bool) {},
                   [&](caf::error& problem) { throw error("worker " + std::to_string(w) + ": " + actors::describe_error(system_, problem)); });
    controller_.actor =
        actors::spawn_tau_controller(system_, schedule_of(options_, static_cast<int>(plan.steps)), session.workers);

    sampler_ = lead.make_sampler(request.sampler);
    sampler_->set_timesteps(plan.steps);
    latents_ = models::initial_latents(request, lead.latent_shape(plan.height, plan.width), sampler_->init_noise_sigma(),
                                       lead.placement());
    timesteps_ = sampler_->timesteps().to(latents_.device());  // once: a copy per step would synchronise the host
  }

  parallel_result run(const models::step_observer& observe) {
    parallel_result result;
    std::int32_t phase_number = 0;
    self_->request(controller_.actor, options_.step_timeout, actors::phase_atom::value, std::int32_t{0})
        .receive([&](std::int32_t p) { phase_number = p; },
                 [&](caf::error& problem) { throw error("tau controller: " + actors::describe_error(system_, problem)); });
    for (std::int64_t i = 0; i < plan_.steps; ++i) {
      step_trace row;
      row.step = static_cast<int>(i);
      row.worker_ms.assign(world_, 0.0);
      at::Tensor prediction;
      try {
        if (survivor_) {
          row.mode = "cfg-degraded";
          prediction = degraded_step(i, row);
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
      // The controller (asked unless a survivor finishes the image) decides while the sampler steps: its answer
      // is needed only for the next step.
      using decision_handle = decltype(self_->request(controller_.actor, options_.step_timeout,
                                                      actors::metric_atom::value, std::int32_t{}, double{}, bool{}));
      std::optional<decision_handle> answer;
      if (!survivor_)
        answer.emplace(self_->request(controller_.actor, options_.step_timeout, actors::metric_atom::value,
                                      static_cast<std::int32_t>(i), row.metric.value_or(0.0), row.metric.has_value()));
      latents_ = sampler_->step(prediction, i, latents_);
      spdlog::trace("step {}: sampler stepped", i);
      if (answer) {
        actors::step_decision decision;
        answer->receive(
            [&](const actors::step_decision& d) { decision = d; },
            [&](caf::error& problem) { throw error("tau controller: " + actors::describe_error(system_, problem)); });
        phase_number = decision.next_phase;
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
  parallel_session::state& session_;
  caf::actor_system& system_;
  caf::scoped_actor& self_;
  const parallel_options& options_;
  const models::generation_plan& plan_;
  const int world_;
  const bool asyncdiff_;
  exit_on_scope_end<actors::tau_controller_actor> controller_;
  std::shared_ptr<const models::branch_conditioning> both_branches_;
  std::unique_ptr<models::sampler> sampler_;
  at::Tensor latents_, timesteps_;

  int cfg_run_ = 0;            // steps since the current run of CFG steps began (split branches warm up)
  runtime::activation_cache branch_peers_[2];  // split branches: each branch's owned outputs of the last step
  std::shared_ptr<runtime::activation_cache> window_peers_;  // the window's owned outputs of the last step
  int window_begin_ = 0;       // the window's fill step
  at::Tensor held_;            // stride 2: the prediction computed ahead for the next step
  std::optional<int> survivor_;

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
  at::Tensor guided(at::Tensor uncond, at::Tensor cond, step_trace& row) const {
    row.metric = relative_mae_of(cond, uncond);
    spdlog::trace("step {}: metric read", row.step);
    return models::guide(uncond, cond, plan_.guidance);
  }

  // Whether a worker whose request failed has died (the supervisor waits a moment for the down message).
  bool has_died(int w) {
    bool lost = false;
    self_->request(session_.supervisor, options_.step_timeout, actors::lost_atom::value, static_cast<std::int32_t>(w))
        .receive([&](bool gone) { lost = gone; }, [&](caf::error&) { lost = false; });
    return lost;
  }

  // Sends each request to its worker at once, then collects the replies (the workers run in parallel) into `row`.
  // A worker whose actor is gone is reported as `worker_lost`; any other failure as hybridiff::error.
  template <class Atom>
  std::vector<step_reply_ptr> ask(Atom atom, const std::vector<targeted>& requests, step_trace& row) {
    std::vector<step_reply_ptr> replies(world_);
    using handle_type = decltype(self_->request(session_.worker(0), options_.step_timeout, atom, actors::step_request_ptr()));
    std::vector<std::pair<int, handle_type>> pending;
    finish_pending_work(latents_);
    spdlog::trace("step {}: {} request(s) out", requests.front().work->step, requests.size());
    // The highest workers first: they are the remote ones, whose requests take longest to reach their worker.
    for (auto request = requests.rbegin(); request != requests.rend(); ++request)
      pending.emplace_back(request->worker, self_->request(session_.worker(request->worker), options_.step_timeout,
                                                           atom, actors::step_request_ptr(request->work)));
    for (auto& [w, handle] : pending) {
      std::string failure;
      bool lost = false;
      handle.receive([&, w = w](const step_reply_ptr& reply) { replies[w] = reply; },
                     [&, w = w](caf::error& problem) {
                       const bool timed_out = problem == caf::sec::request_timeout;
                       lost = !timed_out && has_died(w);
                       failure = timed_out ? "worker " + std::to_string(w) + " did not answer within " +
                                                 std::to_string(options_.step_timeout.count()) + " ms"
                                           : actors::describe_error(system_, problem);
                     });
      if (lost) throw worker_lost{w};
      if (!failure.empty()) throw error("step " + std::to_string(requests.front().work->step) + ": " + failure);
    }
    for (const auto& reply : replies)
      if (reply) row.worker_ms[reply->worker] = reply->compute_ms;
    spdlog::trace("step {}: every reply in", requests.front().work->step);
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
  std::vector<targeted> window_requests(const std::vector<int>& workers, const std::shared_ptr<step_request>& work) const {
    std::vector<targeted> requests;
    for (int w : workers) requests.push_back({w, with_peers(work, *window_peers_, session_.window_inputs[w])});
    return requests;
  }
  std::vector<int> everyone() const {
    std::vector<int> all(world_);
    std::iota(all.begin(), all.end(), 0);
    return all;
  }

  // The owned outputs of `workers`' replies (window scope: SD3's reference conditioning exchanges no block).
  runtime::activation_cache merge_owned(const std::vector<step_reply_ptr>& replies, const std::vector<int>& workers,
                                        bool window) const {
    runtime::activation_cache merged;
    for (int w : workers) {
      if (!replies[w]) continue;
      for (const auto& [module, value] : replies[w]->owned)
        if (!window || session_.exchange_blocks || module.rfind("transformer_blocks.", 0) != 0) merged[module] = value;
    }
    return merged;
  }

  at::Tensor cfg_step(std::int64_t i, step_trace& row) {
    auto work = work_for(i, asyncdiff_);
    if (asyncdiff_) {  // warm-up: the whole batched model on one worker
      auto replies = ask(actors::predict_atom::value, to_each({0}, work), row);
      auto halves = output_of(replies, 0).chunk(2, 0);
      return guided(halves[0], halves[1], row);
    }
    const int cond_worker = world_ / 2;
    if (options_.branch_stages == 1) {
      auto replies = ask(actors::predict_atom::value, to_each({0, cond_worker}, work), row);
      return guided(output_of(replies, 0), output_of(replies, cond_worker), row);
    }
    // Each branch split over its two workers (0, 1: unconditional; 2, 3: conditional) as a 2-stage AsyncDiff
    // pipeline. The first `warmup` steps of a CFG run are full passes, recording the activations; the later ones
    // are stale-activation steps. Every worker runs the full passes (in parallel, as in the window's fill step):
    // a stale step visits modules of the other component whose outputs it does not use (SD3: the blocks before the
    // last one ahead of its own), which only the other worker would otherwise hold.
    if (cfg_run_++ < options_.warmup) {
      auto replies = ask(actors::fill_atom::value, to_each(everyone(), work), row);
      for (int b : {0, 1}) branch_peers_[b] = merge_owned(replies, {2 * b}, false);
      return guided(output_of(replies, 0), output_of(replies, cond_worker), row);
    }
    row.mode = "cfg-pipeline";
    std::vector<targeted> requests;
    for (int w = 0; w < world_; ++w) requests.push_back({w, with_peers(work, branch_peers_[w / 2], session_.branch_inputs[w])});
    auto replies = ask(actors::stage_atom::value, requests, row);
    for (int b : {0, 1}) branch_peers_[b] = merge_owned(replies, {2 * b, 2 * b + 1}, false);
    return guided(output_of(replies, 1), output_of(replies, 3), row);
  }

  at::Tensor fill_step(std::int64_t i, step_trace& row) {
    cfg_run_ = 0;  // the CFG run after the window starts over
    window_begin_ = static_cast<int>(i);
    auto replies = ask(actors::fill_atom::value, to_each(everyone(), work_for(i, asyncdiff_)), row);
    window_peers_ = std::make_shared<runtime::activation_cache>(merge_owned(replies, stage_workers(), true));
    const auto output = output_of(replies, session_.output_worker);
    if (asyncdiff_) return guided_batch(output);
    if (options_.conditioning == pp_conditioning::fixed) return models::guide(output_of(replies, 0), output, plan_.guidance);
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
    auto work = work_for(i, asyncdiff_);
    std::vector<step_reply_ptr> replies;
    at::Tensor output;
    if (options_.stride == 1) {
      work->timestep = timestep(i - shift);
      replies = ask(actors::stage_atom::value, window_requests(everyone(), work), row);
      output = output_of(replies, session_.output_worker);
    } else if ((i - window_begin_ - 1) % 2 == 0) {
      // Stride 2, a compute round: components 0 .. n−1 run on x_i at the next step's timestep (their output is
      // the next step's prediction); the extra worker runs the last component at this step's timestep.
      auto ahead = std::make_shared<step_request>(*work);
      ahead->timestep = timestep(i + 1 - shift);
      work->timestep = timestep(i - shift);
      auto requests = window_requests(stage_workers(), ahead);
      requests.push_back(window_requests({session_.n}, work).front());
      replies = ask(actors::stage_atom::value, requests, row);
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

  // Supervision: after a worker's actor died, a surviving worker finishes the image in sequential CFG (both
  // branches batched, the numerics of mode none) from the step that failed; the window is given up.
  at::Tensor degraded_step(std::int64_t i, step_trace& row) {
    auto work = work_for(i, true);
    work->conditioning = both_branches_;
    std::vector<step_reply_ptr> replies;
    try {
      replies = ask(actors::predict_atom::value, to_each({*survivor_}, work), row);
    } catch (const worker_lost& gone) {
      throw error("step " + std::to_string(i) + ": worker " + std::to_string(gone.worker) +
                  " was lost too; no worker is left to finish the image");
    }
    return guided_batch(output_of(replies, *survivor_));
  }

  void take_over(std::int64_t i, int lost) {
    session_.lost = lost;
    for (int w = 0; w < world_ && !survivor_; ++w)
      if (w != lost && !has_died(w)) survivor_ = w;
    if (!survivor_) throw error("step " + std::to_string(i) + ": every worker was lost");
    // The survivor may be a pipeline stage (a loss inside the window): it becomes a CFG branch again.
    self_->request(session_.worker(*survivor_), options_.step_timeout, actors::reconfigure_atom::value,
                   static_cast<std::int32_t>(actors::worker_role::cfg_branch))
        .receive([](std::int32_t) {},
                 [&](caf::error& problem) { throw error("step " + std::to_string(i) + ": " + actors::describe_error(system_, problem)); });
    spdlog::error("step {}: worker {} was lost; finishing the image on worker {} in sequential CFG", i, lost, *survivor_);
  }
};

}  // namespace

parallel_session::parallel_session(caf::actor_system& system,
                                   std::vector<std::shared_ptr<models::diffusion_pipeline>> replicas,
                                   const parallel_options& options, const actors::cluster_host* cluster)
    : state_(std::make_unique<state>(system, std::move(replicas), options)) {
  auto& session = *state_;
  const std::size_t remote = cluster ? cluster->workers().size() : 0;
  if (session.replicas.empty() || session.replicas.size() + remote != static_cast<std::size_t>(options.workers))
    throw error("parallel session: " + std::to_string(session.replicas.size()) + " local replica(s) and " +
                std::to_string(remote) + " remote worker(s) for " + std::to_string(options.workers) + " workers");
  try {
    validate_structure(options);
  } catch (const std::invalid_argument& bad) {
    throw error(bad.what());
  }
  if (options.mode == parallel_mode::none) {  // the sequential loop: no actors
    if (options.cuda_graphs) {
      if (!session.replicas.front()->placement().device.is_cuda())
        throw error("CUDA graphs need a CUDA device, not " + session.replicas.front()->placement().device.str());
      session.graphed = std::make_unique<runtime::graphed_denoiser>(*session.replicas.front());
    }
    return;
  }
  auto& lead = *session.replicas.front();
  const auto family = lead.transformer_blocks() > 0 ? schedule::denoiser_family::sd3_transformer
                                                    : schedule::denoiser_family::sdxl_unet;
  const int blocks = static_cast<int>(lead.transformer_blocks());
  const bool cfg = options.mode == parallel_mode::cfg;
  const auto window = schedule::make_plan(family, cfg ? 2 : options.model_n, cfg ? 1 : options.stride, blocks);
  const auto branch = schedule::make_plan(family, 2, 1, blocks);
  session.n = window.n;
  session.output_worker = window.output_component();
  session.exchange_blocks =
      !(family == schedule::denoiser_family::sd3_transformer && options.conditioning == pp_conditioning::reference);
  auto names = [](const schedule::component& c) { return std::vector<std::string>(c.modules.begin(), c.modules.end()); };
  auto set_of = [](const std::vector<std::string>& modules) { return std::set<std::string>(modules.begin(), modules.end()); };
  for (std::size_t w = 0; w < session.replicas.size(); ++w)
    session.workers.push_back(
        actors::spawn_worker(system, std::make_shared<runtime::stage_worker>(session.replicas[w], static_cast<int>(w))));
  if (cluster)
    for (const auto& proxy : cluster->workers()) session.workers.push_back(proxy);
  for (int w = 0; w < options.workers; ++w) {
    const int window_component = window.component_of(w), branch_component = w % 2;
    const bool split_branches = options.branch_stages == 2;
    session.window_inputs.push_back(set_of(window.inputs_of(window_component)));
    session.branch_inputs.push_back(split_branches ? set_of(branch.inputs_of(branch_component)) : std::set<std::string>{});
    session.self->request(session.worker(w), options.step_timeout, actors::assign_atom::value,
                          names(window.components[window_component]), window.read_by_others(window_component),
                          split_branches ? names(branch.components[branch_component]) : std::vector<std::string>{},
                          split_branches ? branch.read_by_others(branch_component) : std::vector<std::string>{},
                          options.cuda_graphs)
        .receive([](bool) {},
                 [&](caf::error& problem) { throw error("worker " + std::to_string(w) + ": " + actors::describe_error(system, problem)); });
  }
  session.supervisor = actors::spawn_supervisor(system, session.workers);
}

parallel_session::~parallel_session() = default;

const parallel_options& parallel_session::options() const { return state_->options; }

parallel_result parallel_session::generate(const models::generation_request& request,
                                           const models::step_observer& observe) {
  torch::NoGradGuard no_grad;
  auto& session = *state_;
  const auto& options = session.options;
  auto& lead = *session.replicas.front();
  const auto plan = lead.plan(request);
  try {
    validate(options, static_cast<int>(plan.steps));
  } catch (const std::invalid_argument& bad) {
    throw error(bad.what());
  }
  if (options.mode == parallel_mode::none) {
    // One worker, CFG batched: the sequential reference loop, traced like the others.
    parallel_result result;
    auto last = std::chrono::steady_clock::now();
    result.latents = models::generate_latents(lead, request, [&](std::int64_t i, std::int64_t steps, const at::Tensor& x) {
      auto now = std::chrono::steady_clock::now();
      result.trace.push_back({static_cast<int>(i), "cfg", {}, {}, {std::chrono::duration<double, std::milli>(now - last).count()}, {}, {}});
      last = now;
      if (observe) observe(i, steps, x);
    }, session.graphed ? models::denoise_function([&](const at::Tensor& x, const at::Tensor& t,
                                                      const models::branch_conditioning& c) {
      return session.graphed->predict(x, t, c);
    }) : models::denoise_function());
    return result;
  }
  if (!plan.classifier_free)
    throw error("--parallel " + to_string(options.mode) + " splits classifier-free guidance: it needs --guidance > 1");
  if (session.lost)
    throw error("worker " + std::to_string(*session.lost) +
                " was lost during an earlier image of this session; start a new session");
  parallel_driver driver(session, request, plan);
  return driver.run(observe);
}

parallel_result generate_parallel(caf::actor_system& system,
                                  const std::vector<std::shared_ptr<models::diffusion_pipeline>>& replicas,
                                  const models::generation_request& request, const parallel_options& options,
                                  const models::step_observer& observe) {
  if (replicas.size() != static_cast<std::size_t>(options.workers))
    throw error("generate_parallel: " + std::to_string(replicas.size()) + " replicas for " +
                std::to_string(options.workers) + " workers");
  parallel_session session(system, replicas, options);
  return session.generate(request, observe);
}

void write_trace_csv(const std::string& path, const std::vector<step_trace>& trace) {
  std::ofstream out(path);
  if (!out) throw error(path + ": cannot open for writing");
  const std::size_t workers = trace.empty() ? 0 : trace.front().worker_ms.size();
  out << "step,mode,rel_mae,slope";
  for (std::size_t w = 0; w < workers; ++w) out << ",worker" << w << "_ms";
  out << ",tau1,tau2\n" << std::setprecision(9);
  for (const auto& row : trace) {
    out << row.step << "," << row.mode << ",";
    if (row.metric) out << *row.metric;
    out << ",";
    if (row.slope) out << *row.slope;
    for (double ms : row.worker_ms) out << "," << ms;
    out << ",";
    if (row.tau1) out << *row.tau1;
    out << ",";
    if (row.tau2) out << *row.tau2;
    out << "\n";
  }
}

}  // namespace hybridiff
