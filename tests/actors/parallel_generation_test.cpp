// Parallel generation through the actors (driver, tau controller, workers) on the tiny fixtures, float32 CPU.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>
#include <torch/torch.h>

#include <caf/all.hpp>

#include "actors/hybridiff.hpp"
#include "actors/image_service.hpp"
#include "actors/messages.hpp"
#include "actors/worker.hpp"
#include "models/errors.hpp"
#include "runtime/stage_worker.hpp"
#include "schedule/asyncdiff_plan.hpp"
#include "test_support.hpp"

namespace hybridiff {
namespace {

constexpr double same_computation_tolerance = 1e-5;  // relative: the same arithmetic, batch 1 vs batch 2 kernels

std::shared_ptr<models::diffusion_pipeline> tiny(const std::string& name) {
  static std::map<std::string, std::shared_ptr<models::diffusion_pipeline>> loaded;
  auto& pipeline = loaded[name];
  if (!pipeline) pipeline = models::load_pipeline(test::fixtures_dir() / name, {});
  return pipeline;
}

using test::tiny_request;

class ParallelGeneration : public ::testing::Test {
 protected:
  caf::actor_system_config config_;
  caf::actor_system system_{config_};

  parallel_result run(const std::string& model, const parallel_options& options, int steps = 8) {
    std::vector<std::shared_ptr<models::diffusion_pipeline>> replicas(options.workers, tiny(model));
    return generate_parallel(system_, replicas, tiny_request(steps), options);
  }
};

TEST_F(ParallelGeneration, CfgEqualsNone) {
  for (const char* model : {"tiny-sdxl", "tiny-sd3"}) {
    auto sequential = run(model, {});
    parallel_options cfg;
    cfg.mode = parallel_mode::cfg;
    cfg.workers = 2;
    auto parallel = run(model, cfg);
    EXPECT_LT(test::relative_error(parallel.latents, sequential.latents), same_computation_tolerance) << model;
    ASSERT_EQ(parallel.trace.size(), 8u);
    for (const auto& row : parallel.trace) {
      EXPECT_EQ(row.mode, "cfg");
      EXPECT_TRUE(row.metric.has_value());
      EXPECT_GT(row.worker_ms[0], 0);
      EXPECT_GT(row.worker_ms[1], 0);
    }
  }
}

TEST_F(ParallelGeneration, SeparateReplicasPerWorkerGiveTheSameResult) {
  // Each worker with a replica of its own (as on separate GPUs) computes what shared replicas compute.
  parallel_options hybrid;
  hybrid.mode = parallel_mode::hybrid;
  hybrid.workers = hybrid.model_n = 2;
  hybrid.tau1 = 2;
  hybrid.tau2 = 5;
  auto shared = run("tiny-sdxl", hybrid);
  std::vector<std::shared_ptr<models::diffusion_pipeline>> own = {
      models::load_pipeline(test::fixtures_dir() / "tiny-sdxl", {}), models::load_pipeline(test::fixtures_dir() / "tiny-sdxl", {})};
  auto separate = generate_parallel(system_, own, tiny_request(8), hybrid);
  EXPECT_TRUE(torch::equal(separate.latents, shared.latents));
}

TEST_F(ParallelGeneration, AsyncDiffWithWholeWarmupEqualsNone) {
  // warm-up = steps: CFG steps, then a last fill step whose guided output is the full model's: no stale activation.
  auto sequential = run("tiny-sdxl", {});
  parallel_options asyncdiff;
  asyncdiff.mode = parallel_mode::asyncdiff;
  asyncdiff.workers = 2;
  asyncdiff.warmup = 8;
  auto parallel = run("tiny-sdxl", asyncdiff);
  EXPECT_EQ(parallel.trace.back().mode, "fill");
  EXPECT_LT(test::relative_error(parallel.latents, sequential.latents), same_computation_tolerance);
}

// Compositions written out by hand from the model's module-level forward (module_runner), independent of the
// runtime's workers, caches and messages.
using module_map = std::map<std::string, models::activation>;

struct lambda_runner : models::module_runner {
  std::function<models::activation(const std::string&, const std::function<models::activation()>&)> body;
  models::activation run(const std::string& m, const std::function<models::activation()>& compute) override {
    return body(m, compute);
  }
};

// A full forward pass that records every module's output into `record`.
at::Tensor record_all(models::diffusion_pipeline& pipeline, const at::Tensor& x, const at::Tensor& t,
                      const models::branch_conditioning& c, module_map& record) {
  record.clear();
  lambda_runner runner;
  runner.body = [&](const std::string& m, const std::function<models::activation()>& compute) { return record[m] = compute(); };
  return pipeline.predict(x, t, c, &runner);
}

// A stale-activation forward pass: the modules of `owned` compute on whatever reaches them (their outputs go to
// `fresh`); every other module returns its output of the previous round, `previous`.
at::Tensor stale(models::diffusion_pipeline& pipeline, const at::Tensor& x, const at::Tensor& t,
                 const models::branch_conditioning& c, const std::vector<std::string>& owned, const module_map& previous,
                 module_map& fresh) {
  lambda_runner runner;
  runner.body = [&](const std::string& m, const std::function<models::activation()>& compute) {
    if (std::find(owned.begin(), owned.end(), m) != owned.end()) return fresh[m] = compute();
    return previous.at(m);
  };
  return pipeline.predict(x, t, c, &runner);
}

// What every hand composition starts from: the request's plan, the prompt's conditioning, the sampler with its
// timesteps and the initial latents (32 × 32 pixels).
struct hand_start {
  models::generation_plan plan;
  models::prompt_conditioning cond;
  std::unique_ptr<models::sampler> sampler;
  at::Tensor latents;
};

hand_start start_by_hand(models::diffusion_pipeline& pipeline, const models::generation_request& request) {
  hand_start start;
  start.plan = pipeline.plan(request);
  start.cond = pipeline.encode_prompt(request, start.plan);
  start.sampler = pipeline.make_sampler(request.sampler);
  start.sampler->set_timesteps(start.plan.steps);
  start.latents = models::initial_latents(request, pipeline.latent_shape(32, 32), start.sampler->init_noise_sigma(), {});
  return start;
}

// Hybrid on 2 workers: CFG steps, a fill step that records every module (on each worker's branch), then pipeline
// steps where worker 1 (conditional, owns the outer shell) runs its modules and takes worker 0's from worker 0's
// previous step, and worker 0 (unconditional, owns the core) likewise. With `time_shift`, pipeline steps feed the
// model the previous step's timestep.
// `phases`: one letter per step, c (CFG), F (fill) or p (pipeline); several windows may follow each other.
at::Tensor hybrid_by_hand(models::diffusion_pipeline& pipeline, const models::generation_request& request,
                          const std::string& phases, bool time_shift = false) {
  torch::NoGradGuard no_grad;
  auto [plan, cond, sampler, latents] = start_by_hand(pipeline, request);
  const auto split = schedule::make_plan(schedule::denoiser_family::sdxl_unet, 2, 1);
  const models::branch_conditioning* branch[2] = {&cond.negative, &cond.positive};
  module_map previous;  // every module's output by its owner, last step
  for (int i = 0; i < plan.steps; ++i) {
    auto x = sampler->scale_model_input(latents, i);
    auto t = sampler->timesteps()[i];
    at::Tensor prediction;
    if (phases.at(i) == 'c') {
      prediction = models::guide(pipeline.predict(x, t, cond.negative), pipeline.predict(x, t, cond.positive), plan.guidance);
    } else if (phases.at(i) == 'F') {
      module_map records[2];
      at::Tensor out[2];
      for (int w = 0; w < 2; ++w) out[w] = record_all(pipeline, x, t, *branch[w], records[w]);
      previous.clear();
      for (int w = 0; w < 2; ++w)
        for (const auto& m : split.components[w].modules) previous[m] = records[w].at(m);  // the owner's record
      prediction = models::guide(out[0], out[1], plan.guidance);
    } else {
      if (time_shift) t = sampler->timesteps()[i - 1];
      module_map fresh;
      stale(pipeline, x, t, *branch[0], split.components[0].modules, previous, fresh);
      prediction = stale(pipeline, x, t, *branch[1], split.components[1].modules, previous, fresh);  // the shell's output; unguided
      previous = fresh;
    }
    latents = sampler->step(prediction, i, latents);
  }
  return latents;
}

// One window [tau1, tau2] (fill at tau1).
at::Tensor hybrid_by_hand(models::diffusion_pipeline& pipeline, const models::generation_request& request, int tau1,
                          int tau2, bool time_shift = false) {
  std::string phases(static_cast<std::size_t>(pipeline.plan(request).steps), 'c');
  phases[tau1] = 'F';
  for (int i = tau1 + 1; i <= tau2; ++i) phases[i] = 'p';
  return hybrid_by_hand(pipeline, request, phases, time_shift);
}

TEST_F(ParallelGeneration, HybridWithFixedTausEqualsTheHandComposition) {
  parallel_options hybrid;
  hybrid.mode = parallel_mode::hybrid;
  hybrid.workers = 2;
  hybrid.model_n = 2;
  hybrid.tau1 = 2;
  hybrid.tau2 = 5;
  auto result = run("tiny-sdxl", hybrid);
  std::string modes;
  for (const auto& row : result.trace) modes += row.mode.substr(0, 1);
  EXPECT_EQ(modes, "ccfpppcc");
  auto expected = hybrid_by_hand(*tiny("tiny-sdxl"), tiny_request(8), 2, 5);
  EXPECT_LT(test::relative_error(result.latents, expected), same_computation_tolerance);
  // and the window really changes the result (stale activations, no guidance)
  EXPECT_GT(test::relative_error(result.latents, run("tiny-sdxl", {}).latents), 1e-3);

  // The CFG steps before and after the window run as guided runs (the policy promises them), the window's pipeline
  // steps as a window run. DPM++ 2M steps on its history: the runs that start mid-image (the window's at step 3,
  // the CFG steps' at 7) take the driver's sampler memory with them. Without it they miss the composition by hand
  // by 2.7e-4.
  auto dpm_request = tiny_request(12);
  dpm_request.sampler = "dpm++2m";
  auto dpm_window = hybrid;
  dpm_window.tau1 = 2;
  dpm_window.tau2 = 6;
  const std::vector<std::shared_ptr<models::diffusion_pipeline>> replicas(2, tiny("tiny-sdxl"));
  auto dpm = generate_parallel(system_, replicas, dpm_request, dpm_window);
  EXPECT_LT(test::relative_error(dpm.latents, hybrid_by_hand(*tiny("tiny-sdxl"), dpm_request, 2, 6)),
            same_computation_tolerance);

  hybrid.time_shift = true;
  auto shifted = run("tiny-sdxl", hybrid);
  EXPECT_LT(test::relative_error(shifted.latents, hybrid_by_hand(*tiny("tiny-sdxl"), tiny_request(8), 2, 5, true)),
            same_computation_tolerance);
  EXPECT_GT(test::relative_error(shifted.latents, result.latents), 1e-6);
}

// A user's policy: a window of k steps at each listed step (registered once for the whole test program).
class windows_at : public schedule::schedule_policy {
 public:
  windows_at(std::vector<int> begins, int k) : begins_(std::move(begins)), k_(k) {}
  schedule::phase phase_of(int step) const override {
    for (int begin : begins_) {
      if (step == begin) return schedule::phase::fill;
      if (step > begin && step < begin + k_) return schedule::phase::pipeline;
    }
    return schedule::phase::cfg;
  }
  void end_step(const schedule::step_observation& finished) override { EXPECT_GT(finished.step_ms, 0); }

 private:
  std::vector<int> begins_;
  int k_;
};

void register_windows_at() {
  static const bool registered = [] {
    schedule::register_policy("test-windows", "windows of k steps at a and b",
                              [](schedule::policy_parameters& parameters,
                                 const schedule::policy_context&) -> std::unique_ptr<schedule::schedule_policy> {
                                const int a = parameters.integer("a", 2), b = parameters.integer("b", 8),
                                          k = parameters.integer("k", 3);
                                return std::make_unique<windows_at>(std::vector<int>{a, b}, k);
                              });
    return true;
  }();
  (void)registered;
}

TEST_F(ParallelGeneration, AUserPolicyRunsTwoWindowsInTheActors) {
  register_windows_at();
  parallel_options hybrid;
  hybrid.mode = parallel_mode::hybrid;
  hybrid.workers = 2;
  hybrid.policy = "test-windows:a=2,b=8,k=3";
  auto result = run("tiny-sdxl", hybrid, 12);
  std::string modes;
  for (const auto& row : result.trace) modes += row.mode.substr(0, 1);
  EXPECT_EQ(modes, "ccfppcccfppc");
  EXPECT_EQ(result.tau1, 2);  // the first window, as the controller observed it
  EXPECT_EQ(result.tau2, 4);
  for (const auto& row : result.trace) {
    EXPECT_GT(row.step_ms, 0);
    for (double ms : row.worker_overhead_ms) EXPECT_GE(ms, 0);
  }
  EXPECT_LT(test::relative_error(result.latents, hybrid_by_hand(*tiny("tiny-sdxl"), tiny_request(12), "ccFppcccFppc")),
            same_computation_tolerance);
  // The built-in fixed policy by spec is the --tau1/--tau2 schedule.
  hybrid.policy = "fixed:tau1=2,tau2=5";
  auto fixed = run("tiny-sdxl", hybrid);
  EXPECT_LT(test::relative_error(fixed.latents, hybrid_by_hand(*tiny("tiny-sdxl"), tiny_request(8), 2, 5)),
            same_computation_tolerance);
  hybrid.policy = "test-windows:a=2,c=1";
  try {
    run("tiny-sdxl", hybrid);
    ADD_FAILURE() << "no error";
  } catch (const error& bad) {
    EXPECT_NE(std::string(bad.what()).find("policy test-windows: unknown parameter 'c' (it takes a, b, k)"),
              std::string::npos)
        << bad.what();
  }
}

TEST_F(ParallelGeneration, FourWorkersAndSd3Run) {
  parallel_options hybrid;
  hybrid.mode = parallel_mode::hybrid;
  hybrid.workers = 4;
  hybrid.model_n = 4;
  hybrid.tau1 = 2;
  hybrid.tau2 = 4;
  auto result = run("tiny-sdxl", hybrid);
  EXPECT_TRUE(torch::isfinite(result.latents).all().item<bool>());
  ASSERT_EQ(result.trace[3].worker_ms.size(), 4u);
  for (double ms : result.trace[3].worker_ms) EXPECT_GT(ms, 0);  // every worker runs its stage
  EXPECT_EQ(result.trace[0].worker_ms[1], 0);  // CFG steps use one worker per branch, no duplicated work
  hybrid.workers = hybrid.model_n = 2;
  auto sd3 = run("tiny-sd3", hybrid);
  EXPECT_TRUE(torch::isfinite(sd3.latents).all().item<bool>());
  hybrid.conditioning = pp_conditioning::reference;
  auto sd3_reference = run("tiny-sd3", hybrid);
  EXPECT_GT(test::relative_error(sd3_reference.latents, sd3.latents), 1e-6);  // the frozen boundary differs
}

// cfg on 4 workers: each branch a 2-stage pipeline on its two workers after `warmup` full steps.
at::Tensor split_branches_by_hand(models::diffusion_pipeline& pipeline, const models::generation_request& request,
                                  int warmup) {
  torch::NoGradGuard no_grad;
  auto [plan, cond, sampler, latents] = start_by_hand(pipeline, request);
  const auto split = runtime::split_plan(pipeline, 2, 1);
  const models::branch_conditioning* branch[2] = {&cond.negative, &cond.positive};
  module_map previous[2];  // per branch
  for (int i = 0; i < plan.steps; ++i) {
    auto x = sampler->scale_model_input(latents, i);
    auto t = sampler->timesteps()[i];
    at::Tensor out[2];
    for (int b = 0; b < 2; ++b) {
      if (i < warmup) {
        out[b] = record_all(pipeline, x, t, *branch[b], previous[b]);
      } else {
        module_map fresh;
        stale(pipeline, x, t, *branch[b], split.components[0].modules, previous[b], fresh);
        out[b] = stale(pipeline, x, t, *branch[b], split.components[1].modules, previous[b], fresh);
        previous[b] = fresh;
      }
    }
    latents = sampler->step(models::guide(out[0], out[1], plan.guidance), i, latents);
  }
  return latents;
}

TEST_F(ParallelGeneration, FourWorkerCfgSplitsEachBranchAsATwoStagePipeline) {
  parallel_options cfg;
  cfg.mode = parallel_mode::cfg;
  apply_worker_defaults(cfg, 4, std::nullopt);
  ASSERT_EQ(cfg.branch_stages, 2);
  cfg.warmup = 2;
  auto result = run("tiny-sdxl", cfg);
  std::string modes;
  for (const auto& row : result.trace) modes += row.mode == "cfg-pipeline" ? "p" : row.mode.substr(0, 1);
  EXPECT_EQ(modes, "ccpppppp");
  for (double ms : result.trace[0].worker_ms) EXPECT_GT(ms, 0);  // warm-up: each branch whole on both its workers
  for (double ms : result.trace[2].worker_ms) EXPECT_GT(ms, 0);  // then all four compute their component
  EXPECT_LT(test::relative_error(result.latents, split_branches_by_hand(*tiny("tiny-sdxl"), tiny_request(8), 2)),
            same_computation_tolerance);
  EXPECT_GT(test::relative_error(result.latents, run("tiny-sdxl", {}).latents), 1e-4);  // stale, not exact CFG
  // The steps after the warm-up run as a split-branch run, every stage stepping its own copy of the latents; with
  // DPM++ 2M it starts from the driver's sampler memory.
  auto dpm_request = tiny_request(8);
  dpm_request.sampler = "dpm++2m";
  const std::vector<std::shared_ptr<models::diffusion_pipeline>> replicas(4, tiny("tiny-sdxl"));
  EXPECT_LT(test::relative_error(generate_parallel(system_, replicas, dpm_request, cfg).latents,
                                 split_branches_by_hand(*tiny("tiny-sdxl"), dpm_request, 2)),
            same_computation_tolerance);

  cfg.warmup = 8;  // all steps whole: exact CFG
  EXPECT_LT(test::relative_error(run("tiny-sdxl", cfg).latents, run("tiny-sdxl", {}).latents), same_computation_tolerance);

  // hybrid on 4 workers: split branches, the 4-stage window, split branches again (which restart with a full step)
  parallel_options hybrid;
  hybrid.mode = parallel_mode::hybrid;
  apply_worker_defaults(hybrid, 4, std::nullopt);
  hybrid.tau1 = 3;
  hybrid.tau2 = 5;
  auto mixed = run("tiny-sdxl", hybrid, 9);
  modes.clear();
  for (const auto& row : mixed.trace) modes += row.mode == "cfg-pipeline" ? "P" : row.mode.substr(0, 1);
  EXPECT_EQ(modes, "cPPfppcPP");
  EXPECT_TRUE(torch::isfinite(mixed.latents).all().item<bool>());
}

// SD3 with 4 blocks, 2 per component: the second component's stale step visits block 0, whose output it does
// not use and is not sent (only block 1's is). tiny-sd3 has 2 blocks, so the test builds a deeper one from its
// config with random weights.
TEST_F(ParallelGeneration, FourWorkerCfgSplitsADeeperSd3) {
  const auto deeper = test::deeper_tiny_sd3(4, {});
  ASSERT_EQ(deeper->transformer_blocks(), 4);
  parallel_options cfg;
  cfg.mode = parallel_mode::cfg;
  apply_worker_defaults(cfg, 4, std::nullopt);
  std::vector<std::shared_ptr<models::diffusion_pipeline>> replicas(4, deeper);
  auto result = generate_parallel(system_, replicas, tiny_request(4), cfg);
  EXPECT_EQ(result.trace[1].mode, "cfg-pipeline");
  EXPECT_LT(test::relative_error(result.latents, split_branches_by_hand(*deeper, tiny_request(4), cfg.warmup)),
            same_computation_tolerance);
}

// AsyncDiff with stride 2 (n = 2, 3 workers, both branches batched): after the warm-up, a compute round every
// other step: components 0, 1 run on x_i at t_{i+1} (the shell's output is step i+1's prediction), the extra
// worker runs the shell on x_i at t_i (step i's prediction); between rounds nobody computes.
at::Tensor stride_two_by_hand(models::diffusion_pipeline& pipeline, const models::generation_request& request, int warmup) {
  torch::NoGradGuard no_grad;
  auto [plan, cond, sampler, latents] = start_by_hand(pipeline, request);
  const auto both = models::branch_conditioning::stack(cond.negative, cond.positive);
  const auto split = schedule::make_plan(schedule::denoiser_family::sdxl_unet, 2, 2);
  const auto& timesteps = sampler->timesteps();
  module_map previous;
  at::Tensor ahead;
  for (int i = 0; i < plan.steps; ++i) {
    auto x = sampler->scale_model_input(latents, i);
    x = torch::cat({x, x}, 0);
    at::Tensor prediction;
    if (i < warmup) {
      prediction = record_all(pipeline, x, timesteps[i], both, previous);
    } else if ((i - warmup) % 2 == 0) {
      const auto next_t = timesteps[std::min<int>(i + 1, plan.steps - 1)];
      module_map fresh, extra;
      stale(pipeline, x, next_t, both, split.components[0].modules, previous, fresh);
      ahead = stale(pipeline, x, next_t, both, split.components[1].modules, previous, fresh);
      prediction = stale(pipeline, x, timesteps[i], both, split.components[1].modules, previous, extra);
      previous = fresh;
    } else {
      prediction = ahead;
    }
    auto halves = prediction.chunk(2, 0);
    latents = sampler->step(models::guide(halves[0], halves[1], plan.guidance), i, latents);
  }
  return latents;
}

TEST_F(ParallelGeneration, StrideTwoComputesEveryOtherStepOnOneMoreWorker) {
  parallel_options asyncdiff;
  asyncdiff.mode = parallel_mode::asyncdiff;
  asyncdiff.stride = 2;
  apply_worker_defaults(asyncdiff, std::nullopt, 2);
  ASSERT_EQ(asyncdiff.workers, 3);
  asyncdiff.warmup = 2;
  auto result = run("tiny-sdxl", asyncdiff, 9);
  EXPECT_LT(test::relative_error(result.latents, stride_two_by_hand(*tiny("tiny-sdxl"), tiny_request(9), 2)),
            same_computation_tolerance);
  for (int i = 2; i < 9; ++i) {
    const auto& ms = result.trace[i].worker_ms;
    if ((i - 2) % 2 == 0)
      for (double each : ms) EXPECT_GT(each, 0) << i;
    else
      for (double each : ms) EXPECT_EQ(each, 0) << i;
  }
  // hybrid on 4 workers with n = 3, stride 2 (the reference's other 4-worker configuration)
  parallel_options hybrid;
  hybrid.mode = parallel_mode::hybrid;
  hybrid.stride = 2;
  apply_worker_defaults(hybrid, 4, std::nullopt);
  ASSERT_EQ(hybrid.model_n, 3);
  hybrid.tau1 = 2;
  hybrid.tau2 = 6;
  auto mixed = run("tiny-sdxl", hybrid, 9);
  EXPECT_TRUE(torch::isfinite(mixed.latents).all().item<bool>());
  EXPECT_GT(mixed.trace[3].worker_ms[3], 0);
  EXPECT_EQ(mixed.trace[4].worker_ms[3], 0);
}

TEST_F(ParallelGeneration, SlopeDetectionMatchesTheSimulatorOnTheSameMetrics) {
  parallel_options hybrid;
  hybrid.mode = parallel_mode::hybrid;
  hybrid.workers = 2;
  hybrid.tau = {3, 1.0, 2, 6};  // small L, tau_cap for 12 steps; a loose eps detects at the first slope >= 0
  auto result = run("tiny-sdxl", hybrid, 12);
  std::vector<double> metrics;
  for (const auto& row : result.trace) metrics.push_back(row.metric.value_or(0.0));
  schedule::schedule_settings settings{schedule::tau_policy::slope, hybrid.tau, 12, {}, {}, 1};
  auto simulated = schedule::simulate(settings, metrics);
  EXPECT_EQ(result.tau1, simulated.tau1);
  EXPECT_EQ(result.tau2, simulated.tau2);
  for (std::size_t i = 0; i < result.trace.size(); ++i)
    EXPECT_EQ(result.trace[i].mode, schedule::to_string(simulated.phases[i])) << i;
}

TEST_F(ParallelGeneration, ASessionKeepsItsWorkersAcrossImages) {
  // Each image of a session equals the same image generated alone, whatever the workers did before (asyncdiff
  // ends its images as pipeline stages with full caches).
  for (auto mode : {parallel_mode::hybrid, parallel_mode::asyncdiff}) {
    parallel_options options;
    options.mode = mode;
    apply_worker_defaults(options, std::nullopt, std::nullopt);
    options.tau1 = 2;
    options.tau2 = 5;
    options.warmup = 3;
    parallel_session session(system_, {tiny("tiny-sdxl"), tiny("tiny-sdxl")}, options);
    auto other = tiny_request(8);
    other.seed = 4;
    other.prompt = "a red fox";
    auto first = session.generate(tiny_request(8));
    auto second = session.generate(other);
    auto again = session.generate(tiny_request(8));
    EXPECT_TRUE(torch::equal(first.latents, again.latents)) << to_string(mode);
    EXPECT_FALSE(torch::equal(second.latents, first.latents)) << to_string(mode);
    EXPECT_TRUE(torch::equal(first.latents, run("tiny-sdxl", options).latents)) << to_string(mode);
  }
}

// Delegates to a real pipeline but throws from its `throw_at`-th denoiser call.
class failing_pipeline : public models::diffusion_pipeline {
 public:
  /// `stall`: instead of throwing, the call takes that long (a hung device).
  failing_pipeline(std::shared_ptr<models::diffusion_pipeline> inner, int throw_at,
                   std::chrono::milliseconds stall = std::chrono::milliseconds(0))
      : inner_(std::move(inner)), throw_at_(throw_at), stall_(stall) {}
  std::string class_name() const override { return inner_->class_name(); }
  models::generation_plan plan(const models::generation_request& r) const override { return inner_->plan(r); }
  models::prompt_conditioning encode_prompt(const models::generation_request& r, const models::generation_plan& p) override {
    return inner_->encode_prompt(r, p);
  }
  at::Tensor predict(const at::Tensor& x, const at::Tensor& t, const models::branch_conditioning& c,
                     models::module_runner* runner) override {
    if (++calls_ == throw_at_) {
      if (die_) throw worker_death{};  // not a std::exception: escapes the worker's handler, the actor dies
      if (stall_.count() == 0) throw std::runtime_error("simulated device failure");
      std::this_thread::sleep_for(stall_);
    }
    return inner_->predict(x, t, c, runner);
  }
  models::denoiser_family family() const override { return inner_->family(); }
  std::int64_t transformer_blocks() const override { return inner_->transformer_blocks(); }
  std::unique_ptr<models::sampler> make_sampler(const std::string& n) const override { return inner_->make_sampler(n); }
  at::Tensor decode(const at::Tensor& l) override { return inner_->decode(l); }
  std::vector<std::int64_t> latent_shape(std::int64_t h, std::int64_t w) const override { return inner_->latent_shape(h, w); }
  torch::nn::Module& denoiser() override { return inner_->denoiser(); }

 private:
  std::shared_ptr<models::diffusion_pipeline> inner_;
  int throw_at_;
  std::chrono::milliseconds stall_;
  int calls_ = 0;

 public:
  struct worker_death {};
  bool die_ = false;
};

// A worker's guided run (mode cfg): run_cfg predicts at its step on the latents it is handed; each peer_cfg (the
// other branch's prediction) makes it guide, step its own sampler (DPM++ 2M: its second-order history included) and
// predict the next step, which next_cfg reads whether it comes before (the worker waits) or after the peer_cfg.
// Each answer must be what the pipeline computes on latents stepped by hand, for the worker of either branch;
// messages out of order, or in the wrong behaviour, get errors that say so.
TEST_F(ParallelGeneration, AGuidedRunStepsTheWorkersOwnLatentsAsTheDriverWould) {
  torch::NoGradGuard no_grad;
  auto pipeline = tiny("tiny-sdxl");
  auto request = tiny_request(4);
  request.sampler = "dpm++2m";
  const auto start = start_by_hand(*pipeline, request);
  caf::scoped_actor self{system_};
  const auto timeout = std::chrono::seconds(60);
  for (const bool conditional : {true, false}) {
    SCOPED_TRACE(conditional ? "conditional branch" : "unconditional branch");
    auto sampler = pipeline->make_sampler(request.sampler);
    sampler->set_timesteps(start.plan.steps);
    auto latents = start.latents;
    const auto& own = conditional ? start.cond.positive : start.cond.negative;
    const auto& other = conditional ? start.cond.negative : start.cond.positive;

    auto worker = actors::spawn_worker(system_, std::make_shared<runtime::stage_worker>(pipeline, 1));
    auto setup = std::make_shared<const actors::image_setup>(actors::image_setup{own, {}});
    self->request(worker, timeout, actors::prepare_atom::value, actors::image_setup_ptr(setup))
        .receive([](bool) {}, [&](caf::error& e) { ADD_FAILURE() << system_.render(e); });
    auto answer_of = [&](auto& handle) {
      at::Tensor prediction;
      std::string failure;
      handle.receive([&](const actors::step_reply_ptr& reply) { prediction = reply->prediction; },
                     [&](caf::error& e) { failure = actors::describe_error(system_, e); });
      return std::make_pair(prediction, failure);
    };
    auto next_cfg = [&](std::int64_t step) {
      auto next = std::make_shared<actors::step_request>();
      next->step = static_cast<std::int32_t>(step);
      return self->request(worker, timeout, actors::next_cfg_atom::value, actors::step_request_ptr(next));
    };
    auto peer_cfg = [&](std::int64_t step, const at::Tensor& other_branch) {
      auto exchange = std::make_shared<actors::step_request>();
      exchange->step = static_cast<std::int32_t>(step);
      exchange->other_branch = other_branch;
      self->send(worker, actors::peer_cfg_atom::value, actors::step_request_ptr(exchange));
    };

    auto run = std::make_shared<actors::guided_run>();
    run->sample = latents;
    run->sampler = request.sampler;
    run->steps = start.plan.steps;
    run->last = static_cast<std::int32_t>(start.plan.steps - 1);
    run->guidance = start.plan.guidance;
    run->conditional = conditional;
    auto started = self->request(worker, timeout, actors::run_cfg_atom::value, actors::guided_run_ptr(run));
    auto [prediction, failure] = answer_of(started);
    at::Tensor first_other_branch, second_prediction;  // the other branch's prediction of step 0; this one's of 1
    for (std::int64_t i = 0; i < start.plan.steps; ++i) {
      ASSERT_EQ(failure, "") << "step " << i;
      if (i == 1) second_prediction = prediction;
      const auto x = sampler->scale_model_input(latents, i);
      const auto t = sampler->timesteps()[i];
      const auto expected = pipeline->predict(x, t, own), other_branch = pipeline->predict(x, t, other);
      EXPECT_LT(test::relative_error(prediction, expected), same_computation_tolerance) << "step " << i;
      const auto guided = conditional ? models::guide(other_branch, expected, start.plan.guidance)
                                      : models::guide(expected, other_branch, start.plan.guidance);
      latents = sampler->step(guided, i, latents);
      if (i == 0) first_other_branch = other_branch;
      if (i + 1 == start.plan.steps) break;
      if (i % 2 == 0) {  // asked first: the worker waits for the other branch's prediction
        auto asked = next_cfg(i + 1);
        peer_cfg(i + 1, other_branch);
        std::tie(prediction, failure) = answer_of(asked);
      } else {  // computed first: the answer waits for the question
        peer_cfg(i + 1, other_branch);
        auto asked = next_cfg(i + 1);
        std::tie(prediction, failure) = answer_of(asked);
      }
    }

    auto stray = next_cfg(7);
    EXPECT_EQ(answer_of(stray).second, "worker 1 got next_cfg for step 7 after step 3");
    // The peer's first prediction of a run may come before this worker's run_cfg (the peer's run started and
    // computed first): it is kept for the run, which steps on it as if it came after.
    peer_cfg(1, first_other_branch);
    auto restarted = self->request(worker, timeout, actors::run_cfg_atom::value, actors::guided_run_ptr(run));
    EXPECT_EQ(answer_of(restarted).second, "");
    auto early = next_cfg(1);
    const auto [early_prediction, early_failure] = answer_of(early);
    ASSERT_EQ(early_failure, "");
    EXPECT_LT(test::relative_error(early_prediction, second_prediction), same_computation_tolerance);
    // Within a run, a prediction for the wrong step fails the run.
    peer_cfg(4, prediction);
    auto after_stray = next_cfg(2);
    EXPECT_EQ(answer_of(after_stray).second, "worker 1 got the other branch's prediction of step 3 at step 1");
    self->request(worker, timeout, actors::reconfigure_atom::value,
                  static_cast<std::int32_t>(actors::worker_role::pipeline_stage))
        .receive([](std::int32_t) {}, [&](caf::error& e) { ADD_FAILURE() << system_.render(e); });
    auto refused = self->request(worker, timeout, actors::run_cfg_atom::value, actors::guided_run_ptr(run));
    EXPECT_EQ(answer_of(refused).second, "worker 1 got a run_cfg request in its pipeline_stage behaviour");
    caf::anon_send_exit(worker, caf::exit_reason::user_shutdown);
  }
}

// A guided run's peer is lost while the worker waits for its prediction: the waiting next_cfg fails, naming the
// loss, instead of waiting forever (the driver then finishes the image on the survivor).
TEST_F(ParallelGeneration, AGuidedRunWhosePeerIsLostFailsTheWaitingStep) {
  torch::NoGradGuard no_grad;
  auto pipeline = tiny("tiny-sdxl");
  const auto start = start_by_hand(*pipeline, tiny_request(4));
  caf::scoped_actor self{system_};
  const auto timeout = std::chrono::seconds(60);
  auto worker = actors::spawn_worker(system_, std::make_shared<runtime::stage_worker>(pipeline, 1));
  auto peer = actors::spawn_worker(system_, std::make_shared<runtime::stage_worker>(pipeline, 2));
  auto setup = std::make_shared<const actors::image_setup>(actors::image_setup{start.cond.positive, {}});
  self->request(worker, timeout, actors::prepare_atom::value, actors::image_setup_ptr(setup))
      .receive([](bool) {}, [&](caf::error& e) { ADD_FAILURE() << system_.render(e); });
  auto run = std::make_shared<actors::guided_run>();
  run->sample = start.latents;
  run->steps = start.plan.steps;
  run->last = static_cast<std::int32_t>(start.plan.steps - 1);
  run->guidance = start.plan.guidance;
  run->peer = peer;
  self->request(worker, timeout, actors::run_cfg_atom::value, actors::guided_run_ptr(run))
      .receive([](const actors::step_reply_ptr&) {}, [&](caf::error& e) { ADD_FAILURE() << system_.render(e); });
  auto next = std::make_shared<actors::step_request>();
  next->step = 1;
  auto waiting = self->request(worker, timeout, actors::next_cfg_atom::value, actors::step_request_ptr(next));
  caf::anon_send_exit(peer, caf::exit_reason::user_shutdown);
  std::string failure;
  waiting.receive([](const actors::step_reply_ptr&) { ADD_FAILURE() << "step 1 cannot be computed"; },
                  [&](caf::error& e) { failure = actors::describe_error(system_, e); });
  EXPECT_NE(failure.find("worker 1: the other branch's worker was lost"), std::string::npos) << failure;
  caf::anon_send_exit(worker, caf::exit_reason::user_shutdown);
}

TEST_F(ParallelGeneration, AWorkerThatThrowsEndsTheRequestWithAClearError) {
  parallel_options cfg;
  cfg.mode = parallel_mode::cfg;
  cfg.workers = 2;
  std::vector<std::shared_ptr<models::diffusion_pipeline>> replicas = {tiny("tiny-sdxl"),
                                                                       std::make_shared<failing_pipeline>(tiny("tiny-sdxl"), 3)};
  try {
    generate_parallel(system_, replicas, tiny_request(8), cfg);
    FAIL() << "a failing worker must fail the request";
  } catch (const error& failure) {
    std::string message = failure.what();
    EXPECT_NE(message.find("step 2"), std::string::npos) << message;
    EXPECT_NE(message.find("worker 1"), std::string::npos) << message;
    EXPECT_NE(message.find("simulated device failure"), std::string::npos) << message;
  }
}

TEST_F(ParallelGeneration, ALostWorkerLeavesTheImageToASurvivorInSequentialCfg) {
  // Worker 1's actor dies at its third call (step 2): from step 2 on, worker 0 runs both branches batched, which
  // is the sequential computation: the image equals mode none's.
  parallel_options cfg;
  cfg.mode = parallel_mode::cfg;
  cfg.workers = 2;
  auto dying = std::make_shared<failing_pipeline>(tiny("tiny-sdxl"), 3);
  dying->die_ = true;
  auto result = generate_parallel(system_, {tiny("tiny-sdxl"), dying}, tiny_request(8), cfg);
  ASSERT_EQ(result.trace.size(), 8u);
  EXPECT_EQ(result.trace[1].mode, "cfg");
  EXPECT_EQ(result.trace[2].mode, "cfg-degraded");
  EXPECT_EQ(result.trace[7].mode, "cfg-degraded");
  EXPECT_LT(test::relative_error(result.latents, run("tiny-sdxl", {}).latents), same_computation_tolerance);

  // A loss inside a hybrid window: the survivor leaves its pipeline-stage behaviour and finishes the image.
  parallel_options hybrid;
  hybrid.mode = parallel_mode::hybrid;
  hybrid.workers = hybrid.model_n = 2;
  hybrid.tau1 = 2;
  hybrid.tau2 = 5;
  auto dies_in_window = std::make_shared<failing_pipeline>(tiny("tiny-sdxl"), 4);  // calls: steps 0, 1, 2 (fill), 3
  dies_in_window->die_ = true;
  auto survived = generate_parallel(system_, {tiny("tiny-sdxl"), dies_in_window}, tiny_request(8), hybrid);
  EXPECT_EQ(survived.trace[2].mode, "fill");
  EXPECT_EQ(survived.trace[3].mode, "cfg-degraded");
  EXPECT_TRUE(torch::isfinite(survived.latents).all().item<bool>());

  // A loss inside a split-branch run (4 workers): worker 2, the conditional branch's first stage, dies at step 3
  // (calls: steps 0 (warm-up), 1, 2, 3). The stages that wait for it fail their step and tell theirs, so nobody
  // waits for a hand-over that will not come; the survivor finishes the image from step 3.
  parallel_options split;
  split.mode = parallel_mode::cfg;
  apply_worker_defaults(split, 4, std::nullopt);
  split.step_timeout = std::chrono::seconds(30);  // a stage left waiting would fail the image instead of hanging
  auto dies_in_run = std::make_shared<failing_pipeline>(tiny("tiny-sdxl"), 4);
  dies_in_run->die_ = true;
  auto finished = generate_parallel(system_, {tiny("tiny-sdxl"), tiny("tiny-sdxl"), dies_in_run, tiny("tiny-sdxl")},
                                    tiny_request(8), split);
  EXPECT_EQ(finished.trace[2].mode, "cfg-pipeline");
  EXPECT_EQ(finished.trace[3].mode, "cfg-degraded");
  EXPECT_TRUE(torch::isfinite(finished.latents).all().item<bool>());

  // A session that lost a worker refuses later images with a clear error.
  auto dies_early = std::make_shared<failing_pipeline>(tiny("tiny-sdxl"), 2);
  dies_early->die_ = true;
  parallel_session session(system_, {tiny("tiny-sdxl"), dies_early}, cfg);
  EXPECT_EQ(session.generate(tiny_request(8)).trace[1].mode, "cfg-degraded");
  try {
    session.generate(tiny_request(8));
    FAIL() << "a session without its workers must refuse";
  } catch (const error& failure) {
    EXPECT_NE(std::string(failure.what()).find("worker 1 was lost during an earlier image"), std::string::npos)
        << failure.what();
  }
}

TEST_F(ParallelGeneration, AServiceThatLosesAWorkerFinishesTheRequestDegradedAndKeepsServing) {
  // A pool of 2 (every request on both, CFG split): worker 1's actor dies at its third call, mid-request. The
  // request finishes on worker 0 (its trace says so), the service starts the group's session anew, and the next
  // request runs on both workers again.
  service_options options;
  options.parallel.mode = parallel_mode::cfg;
  options.parallel.workers = 2;
  auto dying = std::make_shared<failing_pipeline>(tiny("tiny-sdxl"), 3);
  dying->die_ = true;
  image_service service(system_, {tiny("tiny-sdxl"), dying}, options, make_placement_policy("all"));
  const auto first = service.wait(service.submit(tiny_request(6)), std::chrono::minutes(2));
  ASSERT_TRUE(first && first->ended());
  EXPECT_EQ(first->status, job_status::succeeded) << first->error;
  ASSERT_EQ(first->trace.size(), 6u);
  EXPECT_EQ(first->trace[1].mode, "cfg");
  EXPECT_EQ(first->trace[2].mode, "cfg-degraded");
  EXPECT_EQ(first->png.size(), 1u);

  const auto second = service.wait(service.submit(tiny_request(6)), std::chrono::minutes(2));
  ASSERT_TRUE(second && second->ended());
  EXPECT_EQ(second->status, job_status::succeeded) << second->error;
  EXPECT_EQ(second->workers, 2);
  for (const auto& row : second->trace) EXPECT_EQ(row.mode, "cfg");
  EXPECT_NE(service.metrics().find("hybridiff_requests_total{status=\"succeeded\"} 2"), std::string::npos)
      << service.metrics();
}

TEST_F(ParallelGeneration, AWorkerThatStallsTimesOutWithAClearError) {
  parallel_options cfg;
  cfg.mode = parallel_mode::cfg;
  cfg.workers = 2;
  cfg.step_timeout = std::chrono::milliseconds(300);
  std::vector<std::shared_ptr<models::diffusion_pipeline>> replicas = {
      tiny("tiny-sdxl"), std::make_shared<failing_pipeline>(tiny("tiny-sdxl"), 2, std::chrono::milliseconds(1500))};
  const auto started = std::chrono::steady_clock::now();
  try {
    generate_parallel(system_, replicas, tiny_request(8), cfg);
    FAIL() << "a stalled worker must fail the request";
  } catch (const error& failure) {
    EXPECT_NE(std::string(failure.what()).find("worker 1 did not answer within 300 ms"), std::string::npos) << failure.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(10));  // no hang
}

TEST_F(ParallelGeneration, ImpossibleOptionsAreRejectedBeforeAnyWork) {
  auto expect_rejected = [&](parallel_options options, const std::string& fragment, int steps = 8) {
    std::vector<std::shared_ptr<models::diffusion_pipeline>> replicas(options.workers, tiny("tiny-sdxl"));
    try {
      generate_parallel(system_, replicas, tiny_request(steps), options);
      FAIL() << fragment;
    } catch (const error& failure) {
      EXPECT_NE(std::string(failure.what()).find(fragment), std::string::npos) << failure.what();
    }
  };
  parallel_options o;
  o.mode = parallel_mode::asyncdiff;
  o.workers = 3;
  o.model_n = 2;
  expect_rejected(o, "n + stride − 1 = 2");
  o = {};
  o.mode = parallel_mode::hybrid;
  o.workers = 3;
  o.model_n = 3;
  expect_rejected(o, "--workers 2 or 4");
  o.workers = o.model_n = 2;
  expect_rejected(o, "--tau_cap + --k", 8);  // SDXL defaults: tau_cap 15 + k 5 >= 8 steps
  o.tau = {12, 4e-4, 5, 12};
  expect_rejected(o, "--L_slope 12 must be less than --tau_cap 12", 30);
  o = {};
  o.mode = parallel_mode::hybrid;
  o.workers = 4;
  o.model_n = 4;
  o.stride = 2;
  expect_rejected(o, "needs --model_n + --stride − 1 = 4");
  o = {};
  o.mode = parallel_mode::cfg;
  o.workers = 2;
  o.stride = 2;
  expect_rejected(o, "--stride 2 applies to asyncdiff and hybrid only");
  o.stride = 1;
  o.workers = 4;
  o.branch_stages = 1;
  expect_rejected(o, "--branch-stages must be 2");
  o = {};
  o.mode = parallel_mode::cfg;
  o.workers = 2;
  auto request = tiny_request(4);
  request.guidance = 1.0;
  std::vector<std::shared_ptr<models::diffusion_pipeline>> replicas(2, tiny("tiny-sdxl"));
  EXPECT_THROW(generate_parallel(system_, replicas, request, o), error);
}

}  // namespace
}  // namespace hybridiff
