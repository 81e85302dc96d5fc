#include <chrono>
#include <csignal>
#include <iostream>
#include <map>
#include <sstream>

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <caf/all.hpp>

#include "actors/cluster.hpp"
#include "actors/hybridiff.hpp"
#include "cli.hpp"
#include "processes.hpp"
#include "models/errors.hpp"
#include "models/image_io.hpp"
#include "models/pipeline.hpp"
#include "models/safetensors.hpp"
#include "runtime/bootstrap.hpp"

namespace hybridiff::cli {

int run_generate(const std::vector<std::string>& args) {
  command_line line;
  line.name = "generate";
  line.usage = "hybridiff generate --model DIR --prompt TEXT [options]";
  line.summary =
      "Generates one image from a text prompt with a diffusers folder (StableDiffusionXLPipeline or\n"
      "StableDiffusion3Pipeline). Unset options take the folder's defaults, as diffusers: the denoiser's\n"
      "sample_size times the VAE factor (1024 for SDXL-base and SD3-medium), SDXL 50 steps and guidance 5.0, SD3 28\n"
      "steps and guidance 7.0, the folder's scheduler. The reference scripts'\n"
      "spellings --num_inference_steps, --guidance_scale and --image_size are accepted.";
  // clang-format off
  line.options.add_options()
      ("model", po::value<std::string>()->required()->value_name("DIR"), "diffusers pipeline folder (model_index.json)")
      ("prompt", po::value<std::string>()->required()->value_name("TEXT"), "what to draw")
      ("negative-prompt", po::value<std::string>()->value_name("TEXT"),
       "what to steer away from (unset: SDXL's zero conditioning, SD3's \"\", as diffusers)")
      ("steps", po::value<std::int64_t>()->value_name("N"), "denoising steps (default: SDXL 50, SD3 28)")
      ("num_inference_steps", po::value<std::int64_t>()->value_name("N"), "same as --steps")
      ("guidance", po::value<double>()->value_name("G"), "classifier-free guidance scale; <= 1 disables CFG (default: SDXL 5.0, SD3 7.0)")
      ("guidance_scale", po::value<double>()->value_name("G"), "same as --guidance")
      ("scheduler", po::value<std::string>()->value_name("NAME"),
       "euler, ddim, dpm++2m or flow-euler (default: the folder's scheduler)")
      ("height", po::value<std::int64_t>()->value_name("H"), "image height in pixels, a multiple of the VAE factor")
      ("width", po::value<std::int64_t>()->value_name("W"), "image width in pixels")
      ("image_size", po::value<std::int64_t>()->value_name("S"), "square images: sets --height and --width")
      ("seed", po::value<std::uint64_t>()->default_value(0)->value_name("S"),
       "seed of the initial noise (drawn on the CPU, as diffusers' torch.Generator('cpu'))")
      ("latents-in", po::value<std::string>()->value_name("FILE"),
       "safetensors file with a tensor 'latents' [1,C,h,w]: the initial noise, unscaled (diffusers' latents=)")
      ("save-latents", po::value<std::string>()->value_name("FILE"),
       "write the final latents (before VAE decoding) as tensor 'latents'")
      ("max-sequence-length", po::value<std::int64_t>()->default_value(256)->value_name("N"),
       "SD3: T5 tokens of the prompt (zeros of this length when the folder has no text_encoder_3)")
      ("output", po::value<std::string>()->default_value("hybridiff.png")->value_name("PNG"), "where to write the image")
      ("device", po::value<std::string>()->default_value("cpu")->value_name("DEV"), "cpu, cuda or cuda:N")
      ("dtype", po::value<std::string>()->default_value("fp32")->value_name("T"), "fp32, fp16 or bf16");
  po::options_description parallel("Parallel schedule (workers in this process, or one per process under launch; see README 'Schedules')");
  parallel.add_options()
      ("parallel", po::value<std::string>()->default_value("none")->value_name("MODE"),
       "none (1 worker, CFG batched), cfg (the guidance branches on separate workers), asyncdiff (AsyncDiff model "
       "parallelism after --warmup steps), hybrid (CFG parallel, AsyncDiff in [tau1, tau2], CFG parallel)")
      ("workers", po::value<int>()->value_name("N"),
       "workers (default: none 1, cfg 2, asyncdiff model_n + stride - 1, hybrid 2; cfg and hybrid take 2 or 4; "
       "under launch: WORLD_SIZE)")
      ("devices", po::value<std::string>()->value_name("LIST"),
       "one device per worker, e.g. cuda:0,cuda:1 (a model replica per device); default: all workers on --device, "
       "sharing one replica")
      ("model_n", po::value<int>()->value_name("N"),
       "AsyncDiff components (default: asyncdiff 2, hybrid --workers - --stride + 1)")
      ("stride", po::value<int>()->default_value(1)->value_name("S"),
       "AsyncDiff stride: 1, or 2 (one compute round per two pipeline steps; one more worker: n + 1)")
      ("branch-stages", po::value<int>()->value_name("N"),
       "cfg/hybrid with 4 workers: 2 (default) splits each guidance branch over two workers as a 2-stage pipeline "
       "in CFG steps (stale activations); 1 runs each branch whole on one worker and leaves two idle (exact CFG)")
      ("warmup", po::value<int>()->default_value(1)->value_name("W"),
       "asyncdiff: steps before the pipeline (the last fills the caches); split branches: full steps that start "
       "each CFG run")
      ("time_shift", po::bool_switch(), "pipeline steps feed the model the previous step's timestep")
      ("cuda-graphs", po::bool_switch(),
       "replay every full forward pass (CFG branches, batched steps) from a CUDA graph captured at its first use; "
       "needs a CUDA device (fill and pipeline steps stay eager)")
      ("L_slope", po::value<int>()->value_name("L"), "hybrid: slope window (SDXL 12, SD3 15)")
      ("eps_slope", po::value<double>()->value_name("E"), "hybrid: slope threshold (SDXL 4e-4, SD3 5e-4)")
      ("k", po::value<int>()->value_name("K"), "hybrid: window length after detection (5)")
      ("tau_cap", po::value<int>()->value_name("C"), "hybrid: fallback tau1 (SDXL 15, SD3 40)")
      ("tau1", po::value<int>()->value_name("A"), "hybrid: a fixed window [A, B] instead of detection (with --tau2)")
      ("tau2", po::value<int>()->value_name("B"), "hybrid: end of the fixed window")
      ("pp-conditioning", po::value<std::string>()->default_value("fixed")->value_name("C"),
       "hybrid window: fixed (reference semantics, bugs repaired), reference (as the reference code), cond "
       "(every stage on the prompt)")
      ("trace", po::value<std::string>()->value_name("FILE.csv"),
       "write one row per step: step, mode, rel-MAE, slope, per-worker compute ms, tau1/tau2 when decided");
  line.options.add(parallel).add(process_options());
  // clang-format on
  auto parsed = parse(line, args);
  if (!parsed) return 0;
  const auto& values = *parsed;
  // Started by `hybridiff launch`, torchrun or SLURM: one worker per process, rank 0 drives.
  const auto process = runtime::discover_placement(runtime::process_environment());
  const bool distributed = process.world_size > 1;
  if (distributed) {
    spdlog::info("rank {} of {} ({}), rank 0 at {}:{}", process.rank, process.world_size, process.source,
                 process.master_addr, process.master_port);
    const auto world = std::to_string(process.world_size);
    if (values["parallel"].as<std::string>() == "none")
      throw usage_error("--parallel none runs in one process; this one was started as rank " +
                        std::to_string(process.rank) + " of WORLD_SIZE " + world + " (pick cfg, asyncdiff or hybrid)");
    if (values.count("devices"))
      throw usage_error("--devices places several workers in one process; with WORLD_SIZE " + world +
                        " every process runs one worker on its --device (e.g. --device cuda:{local_rank})");
    if (values.count("workers") && values["workers"].as<int>() != process.world_size)
      throw usage_error("--workers " + std::to_string(values["workers"].as<int>()) + " with WORLD_SIZE " + world +
                        ": every process runs one worker");
  }
  auto pick = [&](const char* name, const char* alias) -> const po::variable_value* {
    if (values.count(name) && values.count(alias)) throw usage_error(std::string("give --") + name + " or --" + alias + ", not both");
    if (values.count(name)) return &values[name];
    if (values.count(alias)) return &values[alias];
    return nullptr;
  };

  models::generation_request request;
  request.prompt = values["prompt"].as<std::string>();
  if (values.count("negative-prompt")) request.negative_prompt = values["negative-prompt"].as<std::string>();
  if (auto* steps = pick("steps", "num_inference_steps")) request.steps = steps->as<std::int64_t>();
  if (auto* guidance = pick("guidance", "guidance_scale")) request.guidance = guidance->as<double>();
  if (values.count("image_size")) {
    if (values.count("height") || values.count("width")) throw usage_error("give --image_size or --height/--width, not both");
    request.height = request.width = values["image_size"].as<std::int64_t>();
  }
  if (values.count("height")) request.height = values["height"].as<std::int64_t>();
  if (values.count("width")) request.width = values["width"].as<std::int64_t>();
  if (values.count("scheduler")) {
    request.sampler = values["scheduler"].as<std::string>();
    auto names = models::sampler_names();
    if (std::find(names.begin(), names.end(), request.sampler) == names.end())
      throw usage_error("--scheduler '" + request.sampler + "': use euler, ddim, dpm++2m or flow-euler");
  }
  request.seed = values["seed"].as<std::uint64_t>();
  request.max_sequence_length = values["max-sequence-length"].as<std::int64_t>();
  if (values.count("latents-in"))
    request.initial_latents = models::load_named_tensor(values["latents-in"].as<std::string>(), "latents");

  models::load_options placement;
  placement.device = parse_device(values["device"].as<std::string>());
  placement.dtype = parse_dtype(values["dtype"].as<std::string>());
  const auto output = values["output"].as<std::string>();

  parallel_options parallel_settings;
  try {
    parallel_settings.mode = parse_parallel_mode(values["parallel"].as<std::string>());
    parallel_settings.conditioning = parse_pp_conditioning(values["pp-conditioning"].as<std::string>());
  } catch (const std::invalid_argument& bad) {
    throw usage_error(bad.what());
  }
  parallel_settings.stride = values["stride"].as<int>();
  parallel_settings.warmup = values["warmup"].as<int>();
  parallel_settings.time_shift = values["time_shift"].as<bool>();
  parallel_settings.cuda_graphs = values["cuda-graphs"].as<bool>();
  if (parallel_settings.cuda_graphs && !placement.device.is_cuda())
    throw usage_error("--cuda-graphs needs a CUDA --device, not " + placement.device.str());
  auto optional_int = [&](const char* name) {
    return values.count(name) ? std::optional<int>(values[name].as<int>()) : std::nullopt;
  };
  apply_worker_defaults(parallel_settings, distributed ? std::optional<int>(process.world_size) : optional_int("workers"),
                        optional_int("model_n"), optional_int("branch-stages"));
  const auto cluster_settings = cluster_options_from(values, placement.device, parallel_settings.step_timeout);
  if (values.count("tau1")) parallel_settings.tau1 = values["tau1"].as<int>();
  if (values.count("tau2")) parallel_settings.tau2 = values["tau2"].as<int>();

  // One device per worker of this process; workers on the same device share a replica.
  const auto devices = parse_device_list(values.count("devices") ? values["devices"].as<std::string>() : "",
                                         distributed ? 1 : parallel_settings.workers, placement.device);
  auto started = std::chrono::steady_clock::now();
  std::map<std::string, std::shared_ptr<models::diffusion_pipeline>> by_device;
  std::vector<std::shared_ptr<models::diffusion_pipeline>> replicas;
  for (const auto& device : devices) {
    auto& replica = by_device[device.str()];
    // A worker rank needs the denoiser only: rank 0 encodes the prompt and decodes the image.
    const auto parts = distributed && process.rank != 0 ? models::pipeline_parts::denoiser : models::pipeline_parts::everything;
    if (!replica) replica = models::load_pipeline(values["model"].as<std::string>(), {device, placement.dtype, ""}, parts);
    replicas.push_back(replica);
  }
  const auto& pipeline = replicas.front();  // worker 0's replica encodes the prompt and decodes the image
  auto loaded = std::chrono::steady_clock::now();
  // The detector's defaults are the reference scripts' for the model family.
  parallel_settings.tau = pipeline->transformer_blocks() > 0 ? schedule::tau_settings::sd3() : schedule::tau_settings::sdxl();
  if (values.count("L_slope")) parallel_settings.tau.L_slope = values["L_slope"].as<int>();
  if (values.count("eps_slope")) parallel_settings.tau.eps_slope = values["eps_slope"].as<double>();
  if (values.count("k")) parallel_settings.tau.k = values["k"].as<int>();
  if (values.count("tau_cap")) parallel_settings.tau.tau_cap = values["tau_cap"].as<int>();
  const auto settled = pipeline->plan(request);  // steps and size after the model's defaults
  try {
    validate(parallel_settings, static_cast<int>(settled.steps));
  } catch (const std::invalid_argument& bad) {
    throw usage_error(std::string(bad.what()) +
                      (distributed ? " (WORLD_SIZE " + std::to_string(process.world_size) + ": one worker per process)" : ""));
  }
  caf::actor_system_config actor_config;
  if (distributed) actors::configure_cluster(actor_config);
  caf::actor_system actor_system{actor_config};
  if (distributed && process.rank != 0) {
    actors::serve_worker(actor_system, process, pipeline, cluster_settings);
    spdlog::info("rank {}: rank 0 finished the run", process.rank);
    return 0;
  }
  std::unique_ptr<actors::cluster_host> cluster;
  if (distributed) cluster = std::make_unique<actors::cluster_host>(actor_system, process, cluster_settings);
  const std::string where = values.count("devices") ? values["devices"].as<std::string>() : placement.device.str();
  const auto what = "generating a " + std::to_string(settled.height) + "x" + std::to_string(settled.width) +
                    " image in " + values["dtype"].as<std::string>() + " on " + where + " with " +
                    std::to_string(parallel_settings.workers) + " worker(s)";
  parallel_result result;
  at::Tensor image;
  models::with_memory_context(what, [&] {
    parallel_session session(actor_system, replicas, parallel_settings, cluster.get());
    result = session.generate(request, [&](std::int64_t index, std::int64_t steps, const at::Tensor&) {
      spdlog::debug("step {}/{}", index + 1, steps);
      if (cluster_settings.kill_after > 0 && index + 1 >= cluster_settings.kill_after) {
        spdlog::warn("--debug-kill-after {}: killing this process after step {}", cluster_settings.kill_after, index);
        std::raise(SIGKILL);
      }
    });
    image = pipeline->decode(result.latents);
  });
  const auto& latents = result.latents;
  if (values.count("trace")) write_trace_csv(values["trace"].as<std::string>(), result.trace);
  if (result.tau1) spdlog::info("pipeline window: tau1 = {}, tau2 = {}", *result.tau1, result.tau2.value_or(-1));
  if (values.count("save-latents"))
    models::save_safetensors(values["save-latents"].as<std::string>(), {{"latents", latents.to(torch::kFloat32)}});
  models::save_png(output, image);
  auto finished = std::chrono::steady_clock::now();
  auto seconds = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
  spdlog::info("wrote {} (load {:.2f} s, generate {:.2f} s)", output, seconds(started, loaded), seconds(loaded, finished));
  return 0;
}

}  // namespace hybridiff::cli
