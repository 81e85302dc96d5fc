// parallel_options: the modes' names, the worker defaults, validation and the detector's defaults per model.
#include <stdexcept>

#include "actors/hybridiff.hpp"
#include "actors/parallel_driver.hpp"

namespace hybridiff {

parallel_mode parse_parallel_mode(const std::string& name) {
  if (name == "none") return parallel_mode::none;
  if (name == "cfg") return parallel_mode::cfg;
  if (name == "asyncdiff") return parallel_mode::asyncdiff;
  if (name == "hybrid") return parallel_mode::hybrid;
  throw invalid_options("--parallel '" + name + "': use none, cfg, asyncdiff or hybrid");
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
  throw invalid_options("--pp-conditioning '" + name + "': use fixed, reference or cond");
}

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

void validate(const parallel_options& options) {
  auto reject = [](const std::string& message) { throw invalid_options(message); };
  const auto workers = std::to_string(options.workers);
  if (options.stride != 1 && options.stride != 2)
    reject("--stride " + std::to_string(options.stride) + " must be 1 or 2");
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
  if (!options.policy.empty() && options.mode != parallel_mode::hybrid)
    reject("--policy applies to --parallel hybrid (" + to_string(options.mode) + " has a fixed schedule)");
  if (!options.policy.empty() && (options.tau1 || options.tau2))
    reject("--policy and --tau1/--tau2 exclude each other (a fixed window is --policy fixed:tau1=A,tau2=B)");
  if (options.branch_stages > 1 && options.warmup < 1)
    reject("--warmup " + std::to_string(options.warmup) +
           " must be at least 1 (a split branch starts with a full step)");
}

void validate(const parallel_options& options, int steps) {
  validate(options);
  try {
    schedule::validate(actors::schedule_of(options, steps));
  } catch (const std::invalid_argument& bad) {  // the schedule layer is standard C++ only
    throw invalid_options(bad.what());
  }
}

schedule::tau_settings default_tau_settings(const models::diffusion_pipeline& pipeline) {
  if (const auto own = pipeline.recommended_tau()) return {own->L_slope, own->eps_slope, own->k, own->tau_cap};
  return pipeline.family() == models::denoiser_family::transformer ? schedule::tau_settings::sd3()
                                                                   : schedule::tau_settings::sdxl();
}

namespace actors {

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
      settings.policy_spec = options.policy;
      break;
  }
  return settings;
}

}  // namespace actors
}  // namespace hybridiff
