// The driver of a parallel generation: owns latents, sampler and conditioning, runs the step loop, and asks the
// workers for what the tau controller's current phase needs. It runs as a blocking actor on the caller's thread.
#include <chrono>
#include <cmath>
#include <fstream>
#include <iomanip>
#include <stdexcept>

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "actors/hybridiff.hpp"
#include "actors/messages.hpp"
#include "actors/tau_controller.hpp"
#include "actors/worker.hpp"
#include "models/errors.hpp"
#include "schedule/asyncdiff_plan.hpp"

namespace hybridiff {
namespace {

using actors::step_reply_ptr;
using actors::step_request;

// A worker's actor is gone (not merely a failed request).
struct worker_lost {
  int worker;
};

// Ends every actor of the request however the driver leaves.
struct actor_guard {
  caf::scoped_actor& self;
  std::vector<actors::worker_actor> workers;
  actors::tau_controller_actor controller;
  ~actor_guard() {
    for (auto& worker : workers) self->send_exit(worker, caf::exit_reason::user_shutdown);
    if (controller) self->send_exit(controller, caf::exit_reason::user_shutdown);
  }
};

std::string describe(caf::actor_system& system, const caf::error& failure) {
  if (failure.context().match_elements<std::string>()) return failure.context().get_as<std::string>(0);
  return system.render(failure);
}

double relative_mae_of(const at::Tensor& cond, const at::Tensor& uncond) {
  auto difference = (cond - uncond).abs().mean().to(torch::kDouble);
  auto reference = uncond.abs().mean().to(torch::kDouble);
  return schedule::relative_mae(difference.item<double>(), reference.item<double>());
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

void apply_worker_defaults(parallel_options& options, std::optional<int> workers, std::optional<int> model_n) {
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
  if (options.mode == parallel_mode::hybrid) options.model_n = model_n.value_or(options.workers);
}

void validate(const parallel_options& options, int steps) {
  auto reject = [](const std::string& message) { throw std::invalid_argument(message); };
  if (options.stride != 1 && options.stride != 2) reject("--stride " + std::to_string(options.stride) + " must be 1 or 2");
  if (options.stride == 2)
    reject("--stride 2 is not implemented yet (the reference never runs it; stride 1 is); use --stride 1");
  if (options.step_timeout.count() <= 0) reject("the step timeout must be positive");
  switch (options.mode) {
    case parallel_mode::none:
      if (options.workers != 1) reject("--parallel none runs on 1 worker, not " + std::to_string(options.workers));
      break;
    case parallel_mode::cfg:
      if (options.workers != 2) reject("--parallel cfg needs --workers 2 (one per guidance branch), not " +
                                       std::to_string(options.workers));
      break;
    case parallel_mode::asyncdiff:
      if (options.workers != options.model_n + options.stride - 1)
        reject("--workers " + std::to_string(options.workers) + " does not fit --model_n " + std::to_string(options.model_n) +
               " --stride " + std::to_string(options.stride) + ": AsyncDiff needs n + stride − 1 = " +
               std::to_string(options.model_n + options.stride - 1) + " workers");
      break;
    case parallel_mode::hybrid:
      if (options.workers != 2 && options.workers != 4)
        reject("--parallel hybrid needs --workers 2 or 4 (half per guidance branch), not " + std::to_string(options.workers));
      if (options.model_n != options.workers)
        reject("--parallel hybrid with --workers " + std::to_string(options.workers) + " splits the model into " +
               std::to_string(options.workers) + " components: --model_n must equal --workers (stride 1)");
      break;
  }
  schedule::validate(schedule_of(options, steps));
}

parallel_result generate_parallel(caf::actor_system& system,
                                  const std::vector<std::shared_ptr<models::diffusion_pipeline>>& replicas,
                                  const models::generation_request& request, const parallel_options& options,
                                  const models::step_observer& observe) {
  torch::NoGradGuard no_grad;
  if (replicas.size() != static_cast<std::size_t>(options.workers))
    throw error("generate_parallel: " + std::to_string(replicas.size()) + " replicas for " +
                std::to_string(options.workers) + " workers");
  auto& lead = *replicas.front();
  const auto plan = lead.plan(request);
  try {
    validate(options, static_cast<int>(plan.steps));
  } catch (const std::invalid_argument& bad) {
    throw error(bad.what());
  }
  parallel_result result;
  if (options.mode == parallel_mode::none) {
    // One worker, CFG batched: the sequential reference loop, traced like the others.
    auto last = std::chrono::steady_clock::now();
    result.latents = models::generate_latents(lead, request, [&](std::int64_t i, std::int64_t steps, const at::Tensor& x) {
      auto now = std::chrono::steady_clock::now();
      result.trace.push_back({static_cast<int>(i), "cfg", {}, {}, {std::chrono::duration<double, std::milli>(now - last).count()}, {}, {}});
      last = now;
      if (observe) observe(i, steps, x);
    });
    return result;
  }
  if (!plan.classifier_free)
    throw error("--parallel " + to_string(options.mode) + " splits classifier-free guidance: it needs --guidance > 1");

  const int world = options.workers;
  const bool asyncdiff = options.mode == parallel_mode::asyncdiff;
  const auto conditioning = lead.encode_prompt(request, plan);
  const auto stacked = models::branch_conditioning::stack(conditioning.negative, conditioning.positive);
  const auto family = lead.transformer_blocks() > 0 ? schedule::denoiser_family::sd3_transformer
                                                    : schedule::denoiser_family::sdxl_unet;
  const auto split = schedule::make_plan(family, options.mode == parallel_mode::cfg ? 2 : options.model_n, options.stride,
                                         static_cast<int>(lead.transformer_blocks()));

  // Workers: branch w < W/2 is the unconditional one (hybrid, cfg); asyncdiff batches both branches everywhere.
  caf::scoped_actor self{system};
  actor_guard actors_alive{self, {}, {}};
  for (int w = 0; w < world; ++w) {
    auto stage = std::make_shared<runtime::stage_worker>(replicas[w], w);
    if (asyncdiff) {
      stage->set_conditioning(stacked);
    } else {
      stage->set_conditioning(w < world / 2 ? conditioning.negative : conditioning.positive);
      if (options.conditioning == pp_conditioning::cond) stage->set_window_conditioning(conditioning.positive);
    }
    const auto& modules = split.components[split.component_of(w)].modules;
    stage->set_component({modules.begin(), modules.end()});
    actors_alive.workers.push_back(actors::spawn_worker(system, stage));
  }
  const auto& workers = actors_alive.workers;
  actors_alive.controller = actors::spawn_tau_controller(system, schedule_of(options, static_cast<int>(plan.steps)), workers);
  const auto& controller = actors_alive.controller;
  const int output_worker = split.output_component();
  const int uncond_worker = 0, cond_worker = world / 2;
  const bool exchange_blocks = !(family == schedule::denoiser_family::sd3_transformer &&
                                 options.conditioning == pp_conditioning::reference);

  auto sampler = lead.make_sampler(request.sampler);
  sampler->set_timesteps(plan.steps);
  auto latents = models::initial_latents(request, lead.latent_shape(plan.height, plan.width), sampler->init_noise_sigma(),
                                         lead.placement());
  const auto& timesteps = sampler->timesteps();

  // The driver monitors its workers: a failed request whose worker then reports down is a lost worker.
  for (const auto& worker : workers) self->monitor(worker);
  std::vector<bool> reported_down(world, false);
  auto has_died = [&](int w) {
    bool waiting = true;  // the down message follows the failed reply closely; 0.5 s is ample in one process
    while (waiting && !reported_down[w])
      self->receive(
          [&](const caf::down_msg& down) {
            for (int other = 0; other < world; ++other)
              if (down.source == workers[other].address()) reported_down[other] = true;
          },
          caf::after(std::chrono::milliseconds(500)) >> [&] { waiting = false; });
    return static_cast<bool>(reported_down[w]);
  };

  // Sends `atom` with `work` to the given workers at once, then collects the replies (the workers run in parallel).
  // A worker whose actor is gone (it died) is reported as `worker_lost`; any other failure as hybridiff::error.
  auto ask = [&](auto atom, const std::vector<int>& targets, const std::shared_ptr<step_request>& work) {
    std::vector<step_reply_ptr> replies(world);
    int lost = -1;
    using handle_type = decltype(self->request(workers[0], options.step_timeout, atom, actors::step_request_ptr(work)));
    std::vector<std::pair<int, handle_type>> pending;
    for (int w : targets) pending.emplace_back(w, self->request(workers[w], options.step_timeout, atom, actors::step_request_ptr(work)));
    for (auto& [w, handle] : pending) {
      std::string failure;
      handle.receive([&, w = w](const step_reply_ptr& reply) { replies[w] = reply; },
                     [&, w = w](caf::error& problem) {
                       if (problem != caf::sec::request_timeout && has_died(w)) lost = w;
                       failure = problem == caf::sec::request_timeout
                                     ? "worker " + std::to_string(w) + " did not answer within " +
                                           std::to_string(options.step_timeout.count()) + " ms"
                                     : describe(system, problem);
                     });
      if (lost >= 0) throw worker_lost{lost};
      if (!failure.empty()) throw error("step " + std::to_string(work->step) + ": " + failure);
    }
    return replies;
  };
  std::int32_t phase_number = 0;
  self->request(controller, options.step_timeout, actors::phase_atom::value, std::int32_t{0})
      .receive([&](std::int32_t p) { phase_number = p; },
               [&](caf::error& problem) { throw error("tau controller: " + describe(system, problem)); });
  auto peers = std::make_shared<runtime::activation_cache>();
  auto merge_owned = [&](const std::vector<step_reply_ptr>& replies) {
    auto next = std::make_shared<runtime::activation_cache>();
    for (const auto& reply : replies) {
      if (!reply) continue;
      for (const auto& [module, value] : reply->owned)
        if (exchange_blocks || module.rfind("transformer_blocks.", 0) != 0) (*next)[module] = value;
    }
    return next;
  };
  const double guidance = plan.guidance;
  auto guided_batch = [&](const at::Tensor& both) {
    auto halves = both.chunk(2, 0);
    return models::guide(halves[0], halves[1], guidance);
  };

  // Supervision: when a worker's actor dies, the image continues on a surviving worker in sequential CFG (both
  // branches batched, the numerics of mode none) from the step that failed; the window is given up.
  std::optional<int> survivor;
  const auto both_branches = std::make_shared<const models::branch_conditioning>(stacked);

  for (std::int64_t i = 0; i < plan.steps; ++i) {
    if (survivor) {
      auto work = std::make_shared<step_request>();
      work->step = static_cast<std::int32_t>(i);
      auto model_input = sampler->scale_model_input(latents, i);
      work->latents = torch::cat({model_input, model_input}, 0);
      work->timestep = timesteps[i].to(latents.device());
      work->conditioning = both_branches;
      step_trace row;
      row.step = static_cast<int>(i);
      row.mode = "cfg-degraded";
      row.worker_ms.assign(world, 0.0);
      std::vector<step_reply_ptr> replies;
      try {
        replies = ask(actors::predict_atom::value, {*survivor}, work);
      } catch (const worker_lost& gone) {
        throw error("step " + std::to_string(i) + ": worker " + std::to_string(gone.worker) +
                    " was lost too; no worker is left to finish the image");
      }
      row.worker_ms[*survivor] = replies[*survivor]->compute_ms;
      latents = sampler->step(guided_batch(replies[*survivor]->prediction.to(latents.device())), i, latents);
      result.trace.push_back(std::move(row));
      if (observe) observe(i, plan.steps, latents);
      continue;
    }
    const auto phase = static_cast<schedule::phase>(phase_number);
    auto work = std::make_shared<step_request>();
    work->step = static_cast<std::int32_t>(i);
    auto model_input = sampler->scale_model_input(latents, i);
    work->latents = asyncdiff ? torch::cat({model_input, model_input}, 0) : model_input;
    work->timestep = timesteps[i].to(latents.device());
    step_trace row;
    row.step = static_cast<int>(i);
    row.mode = schedule::to_string(phase);
    row.worker_ms.assign(world, 0.0);
    at::Tensor prediction;
    std::vector<step_reply_ptr> replies;
    std::vector<int> everyone;
    for (int w = 0; w < world; ++w) everyone.push_back(w);
    try {
    switch (phase) {
      case schedule::phase::cfg: {
        at::Tensor uncond, cond;
        if (asyncdiff) {
          replies = ask(actors::predict_atom::value, {0}, work);
          auto halves = replies[0]->prediction.to(latents.device()).chunk(2, 0);
          uncond = halves[0];
          cond = halves[1];
        } else {
          replies = ask(actors::predict_atom::value, {uncond_worker, cond_worker}, work);
          uncond = replies[uncond_worker]->prediction.to(latents.device());
          cond = replies[cond_worker]->prediction.to(latents.device());
        }
        row.metric = relative_mae_of(cond, uncond);
        prediction = models::guide(uncond, cond, guidance);
        break;
      }
      case schedule::phase::fill: {
        replies = ask(actors::fill_atom::value, everyone, work);
        peers = merge_owned(replies);
        const auto output = replies[output_worker]->prediction.to(latents.device());
        if (asyncdiff)
          prediction = guided_batch(output);
        else if (options.conditioning == pp_conditioning::fixed)
          prediction = models::guide(replies[uncond_worker]->prediction.to(latents.device()), output, guidance);
        else
          prediction = output;  // the reference: the conditional branch, unguided
        break;
      }
      case schedule::phase::pipeline: {
        work->peers = peers;
        if (options.time_shift && i > 0) work->timestep = timesteps[i - 1].to(latents.device());
        replies = ask(actors::stage_atom::value, everyone, work);
        peers = merge_owned(replies);
        const auto output = replies[output_worker]->prediction.to(latents.device());
        prediction = asyncdiff ? guided_batch(output) : output;
        break;
      }
    }
    } catch (const worker_lost& gone) {
      for (int w = 0; w < world && !survivor; ++w)
        if (!reported_down[w]) survivor = w;
      if (!survivor) throw error("step " + std::to_string(i) + ": every worker was lost");
      // The survivor may be a pipeline stage (a loss inside the window): it becomes a CFG branch again.
      self->request(workers[*survivor], options.step_timeout, actors::reconfigure_atom::value,
                    static_cast<std::int32_t>(actors::worker_role::cfg_branch))
          .receive([](std::int32_t) {},
                   [&](caf::error& problem) { throw error("step " + std::to_string(i) + ": " + describe(system, problem)); });
      spdlog::error("step {}: worker {} was lost; finishing the image on worker {} in sequential CFG", i, gone.worker,
                    *survivor);
      --i;  // redo this step degraded
      continue;
    }
    for (const auto& reply : replies)
      if (reply) row.worker_ms[reply->worker] = reply->compute_ms;
    latents = sampler->step(prediction, i, latents);
    actors::step_decision decision;
    self->request(controller, options.step_timeout, actors::metric_atom::value, static_cast<std::int32_t>(i),
                  row.metric.value_or(0.0), row.metric.has_value())
        .receive([&](const actors::step_decision& d) { decision = d; },
                 [&](caf::error& problem) { throw error("tau controller: " + describe(system, problem)); });
    phase_number = decision.next_phase;
    if (!std::isnan(decision.slope)) row.slope = decision.slope;
    if (decision.tau1 >= 0) row.tau1 = result.tau1 = decision.tau1;
    if (decision.tau2 >= 0) row.tau2 = result.tau2 = decision.tau2;
    spdlog::debug("step {} {} metric {} workers {}", i, row.mode, row.metric.value_or(-1), row.worker_ms.size());
    result.trace.push_back(std::move(row));
    if (observe) observe(i, plan.steps, latents);
  }
  result.latents = latents;
  return result;
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
