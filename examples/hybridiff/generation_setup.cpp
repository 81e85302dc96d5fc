#include "generation_setup.hpp"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <map>
#include <thread>

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "actors/cluster.hpp"
#include "models/errors.hpp"
#include "models/io/builtin.hpp"
#include "models/io/safetensors.hpp"
#include "models/io/single_file.hpp"
#include "processes.hpp"

namespace hybridiff::cli {

std::vector<po::options_description> generation_options() {
  po::options_description model("Model and sampling");
  // clang-format off
  model.add_options()
      ("model", po::value<std::string>()->value_name("DIR"),
       "diffusers pipeline folder (model_index.json); default: the built-in Fashion-MNIST model (prompts: its class "
       "names), run with --parallel hybrid; also a Hugging Face cache folder (models--ORG--NAME), ORG/NAME found in "
       "that cache, or a single-file SDXL, SD3 or SD3.5 checkpoint (FILE.safetensors in the layout of A1111/ComfyUI)")
      ("config-from", po::value<std::string>()->value_name("DIR"),
       "with a single-file --model: the diffusers folder whose configs, tokenizers and scheduler it uses (its "
       "weights are not read); default: the family's repository in the Hugging Face cache (SDXL base, SD3-medium, "
       "SD3.5 large or medium)")
      ("variant", po::value<std::string>()->value_name("NAME"),
       "load the weight files of this variant (fp16: diffusion_pytorch_model.fp16.safetensors); default: the plain "
       "files, or the only variant a folder has")
      ("lora", po::value<std::vector<std::string>>()->value_name("FILE[:SCALE]"),
       "merge a LoRA into the weights at load (repeatable; scale 1 by default): diffusers/PEFT or kohya safetensors, "
       "for the UNet or transformer and the text encoders; every worker gets it")
      ("negative-prompt", po::value<std::string>()->value_name("TEXT"),
       "what to steer away from (unset: SDXL's zero conditioning, SD3's \"\", the built-in model's null class)")
      ("steps", po::value<std::int64_t>()->value_name("N"), "denoising steps (default: SDXL 50, SD3 28, built-in 50)")
      ("num_inference_steps", po::value<std::int64_t>()->value_name("N"), "same as --steps")
      ("guidance", po::value<double>()->value_name("G"),
       "classifier-free guidance scale; <= 1 disables CFG (default: SDXL 5.0, SD3 7.0, built-in 4.0)")
      ("guidance_scale", po::value<double>()->value_name("G"), "same as --guidance")
      ("scheduler", po::value<std::string>()->value_name("NAME"),
       "euler, ddim, dpm++2m or flow-euler (default: the folder's scheduler)")
      ("height", po::value<std::int64_t>()->value_name("H"), "image height in pixels, a multiple of the VAE factor")
      ("width", po::value<std::int64_t>()->value_name("W"), "image width in pixels")
      ("image_size", po::value<std::int64_t>()->value_name("S"), "square images: sets --height and --width")
      ("seed", po::value<std::uint64_t>()->default_value(0)->value_name("S"),
       "seed of the initial noise (drawn on the CPU, as diffusers' torch.Generator('cpu'))")
      ("max-sequence-length", po::value<std::int64_t>()->default_value(256)->value_name("N"),
       "SD3: T5 tokens of the prompt (zeros of this length when the folder has no text_encoder_3)")
      ("device", po::value<std::string>()->default_value("cpu")->value_name("DEV"), "cpu, cuda or cuda:N")
      ("dtype", po::value<std::string>()->default_value("fp32")->value_name("T"), dtype_choices)
      ("progress", po::value<std::string>()->default_value("auto")->value_name("WHEN"),
       "progress bar on stderr: auto (when stderr is a terminal), always or never");
  // clang-format on
  auto parallel = schedule_options();
  parallel.add_options()("cudnn-benchmark", po::bool_switch(), cudnn_benchmark_help)(
      "threads-per-worker", po::value<int>()->value_name("N"),
      "CPU workers of this process: intra-op threads of each (default: the cores divided among the workers, so that "
      "workers computing side by side do not compete for cores; with OMP_NUM_THREADS set, that)");
  parallel.add(process_options());
  return {model, parallel};
}

po::options_description schedule_options() {
  // clang-format off
  po::options_description parallel("Parallel schedule (workers in this process, or one per process under launch; see docs/schedules.md)");
  parallel.add_options()
      ("parallel", po::value<std::string>()->value_name("MODE"),
       "none (1 worker, CFG batched), cfg (the guidance branches on separate workers), asyncdiff (AsyncDiff model "
       "parallelism after --warmup steps), hybrid (CFG parallel, AsyncDiff in [tau1, tau2], CFG parallel); default: "
       "hybrid for the built-in model, else none")
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
       "replay every full forward pass (CFG branches, batched steps) and every stale-activation step (pipeline "
       "steps) from a CUDA graph captured at its first use; needs a CUDA device (fill steps stay eager)")
      ("L_slope", po::value<int>()->value_name("L"), "hybrid: slope window (SDXL 12, SD3 15, built-in 8)")
      ("eps_slope", po::value<double>()->value_name("E"), "hybrid: slope threshold (SDXL 4e-4, SD3 5e-4, built-in 4e-4)")
      ("k", po::value<int>()->value_name("K"), "hybrid: window length after detection (5)")
      ("tau_cap", po::value<int>()->value_name("C"), "hybrid: fallback tau1 (SDXL 15, SD3 40, built-in 25)")
      ("tau1", po::value<int>()->value_name("A"), "hybrid: a fixed window [A, B] instead of detection (with --tau2)")
      ("tau2", po::value<int>()->value_name("B"), "hybrid: end of the fixed window")
      ("policy", po::value<std::string>()->value_name("SPEC"),
       "hybrid: the schedule policy by name and parameters instead of the flags above: slope:L=12,eps=4e-4,k=5,cap=15, "
       "fixed:tau1=A,tau2=B, never, always:warmup=W, or one registered from C++ (`hybridiff schedule policies` "
       "lists them); parameters left out take the model's defaults")
      ("pp-conditioning", po::value<std::string>()->default_value("fixed")->value_name("C"),
       "hybrid window: fixed (reference semantics, bugs repaired), reference (as the reference code), cond "
       "(every stage on the prompt)");
  // clang-format on
  return parallel;
}

parallel_options parallel_options_from(const po::variables_map& values, const std::string& mode,
                                       std::optional<int> world, const c10::Device& device) {
  parallel_options parallel;
  try {
    parallel.mode = parse_parallel_mode(mode);
    parallel.conditioning = parse_pp_conditioning(values["pp-conditioning"].as<std::string>());
  } catch (const invalid_options& bad) {
    throw usage_error(bad.what());
  }
  parallel.stride = values["stride"].as<int>();
  parallel.warmup = values["warmup"].as<int>();
  parallel.time_shift = values["time_shift"].as<bool>();
  parallel.cuda_graphs = values["cuda-graphs"].as<bool>();
  check_cuda_graphs(parallel.cuda_graphs, device);
  auto optional_int = [&](const char* name) {
    return values.count(name) ? std::optional<int>(values[name].as<int>()) : std::nullopt;
  };
  apply_worker_defaults(parallel, world ? world : optional_int("workers"), optional_int("model_n"),
                        optional_int("branch-stages"));
  parallel.tau1 = optional_int("tau1");
  parallel.tau2 = optional_int("tau2");
  if (values.count("policy")) parallel.policy = values["policy"].as<std::string>();
  return parallel;
}

schedule::tau_settings tau_settings_from(const po::variables_map& values, const models::diffusion_pipeline& pipeline) {
  auto tau = default_tau_settings(pipeline);
  if (values.count("L_slope")) tau.L_slope = values["L_slope"].as<int>();
  if (values.count("eps_slope")) tau.eps_slope = values["eps_slope"].as<double>();
  if (values.count("k")) tau.k = values["k"].as<int>();
  if (values.count("tau_cap")) tau.tau_cap = values["tau_cap"].as<int>();
  return tau;
}

replica_pool::replica_pool(loader load) : load_(std::move(load)) {}

std::vector<std::shared_ptr<models::diffusion_pipeline>> replica_pool::on(const std::vector<c10::Device>& devices) {
  std::vector<std::shared_ptr<models::diffusion_pipeline>> replicas;
  for (const auto& device : devices) {
    auto& replica = by_device_[device.str()];
    if (!replica) replica = load_(device);
    replicas.push_back(replica);
  }
  return replicas;
}

namespace {

// CPU workers of one process compute side by side: each gets --threads-per-worker intra-op threads, by default the
// cores divided among them (unless OMP_NUM_THREADS is set).
void share_cpu_cores(const generation_setup& setup) {
  const bool on_cpu = std::all_of(setup.devices.begin(), setup.devices.end(),
                                  [](const c10::Device& device) { return device.is_cpu(); });
  const auto& values = setup.values;
  if (!on_cpu) {
    if (values.count("threads-per-worker")) throw usage_error("--threads-per-worker is for CPU workers");
    return;
  }
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int workers = static_cast<int>(setup.devices.size());
  int threads = 0;
  if (values.count("threads-per-worker")) {
    threads = values["threads-per-worker"].as<int>();
    if (threads < 1) throw usage_error("--threads-per-worker must be at least 1");
  } else if (workers > 1 && !std::getenv("OMP_NUM_THREADS")) {
    threads = std::max(1, cores / workers);
  }
  // ATen hands the count on to each worker's thread at its first parallel operation.
  if (threads > 0) at::set_num_threads(threads);
  spdlog::debug("{} CPU thread(s) per worker, {} worker(s) in this process, {} core(s)", at::get_num_threads(), workers,
                cores);
}

}  // namespace

std::vector<models::lora_spec> lora_specs_from(const po::variables_map& values) {
  std::vector<models::lora_spec> loras;
  if (!values.count("lora")) return loras;
  for (const auto& text : values["lora"].as<std::vector<std::string>>()) {
    try {
      loras.push_back(models::parse_lora_spec(text));
    } catch (const std::invalid_argument& bad) {
      throw usage_error(bad.what());
    }
  }
  return loras;
}

generation_setup settle_generation(const po::variables_map& values) {
  generation_setup setup;
  setup.values = values;
  // Started by `hybridiff launch`, torchrun or SLURM: one worker per process, rank 0 drives.
  setup.process = runtime::discover_placement(runtime::process_environment());
  setup.distributed = setup.process.world_size > 1;
  setup.builtin_model = !values.count("model");
  setup.model_dir = setup.builtin_model ? models::builtin_model_dir("fashion-diffusion")
                                        : std::filesystem::path(values["model"].as<std::string>());
  const auto mode = values.count("parallel") ? values["parallel"].as<std::string>() : (setup.builtin_model ? "hybrid" : "none");
  const auto& process = setup.process;
  if (setup.distributed) {
    spdlog::info("rank {} of {} ({}), rank 0 at {}:{}", process.rank, process.world_size, process.source,
                 process.master_addr, process.master_port);
    const auto world = std::to_string(process.world_size);
    if (mode == "none")
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
  auto& request = setup.request;
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

  setup.placement.device = parse_device(values["device"].as<std::string>());
  const auto precision = parse_dtype(values["dtype"].as<std::string>(), setup.placement.device);
  setup.placement.dtype = precision.dtype;
  setup.placement.fp8 = precision.fp8;
  if (values.count("variant")) setup.placement.variant = values["variant"].as<std::string>();
  const bool single_file = !setup.builtin_model && models::is_single_file(setup.model_dir);
  if (values.count("config-from")) {
    if (!single_file) throw usage_error("--config-from gives the configs of a single-file --model FILE.safetensors");
    setup.placement.config_from = values["config-from"].as<std::string>();
  }
  if (values.count("variant") && single_file)
    throw usage_error("--variant picks a folder's weight files; a single-file --model holds its weights itself");
  setup.placement.loras = lora_specs_from(values);
  use_cudnn_benchmark(values["cudnn-benchmark"].as<bool>(), setup.placement.device);
  auto& parallel = setup.parallel;
  parallel = parallel_options_from(values, mode, setup.distributed ? std::optional<int>(process.world_size) : std::nullopt,
                                   setup.placement.device);
  setup.cluster = cluster_options_from(values, setup.placement.device, parallel.step_timeout);
  // One device per worker of this process; workers on the same device share a replica.
  setup.devices = parse_device_list(values.count("devices") ? values["devices"].as<std::string>() : "",
                                    setup.distributed ? 1 : parallel.workers, setup.placement.device);
  share_cpu_cores(setup);
  return setup;
}

std::string describe_run(const generation_setup& setup, const models::generation_plan& plan) {
  const std::string where = setup.values.count("devices") ? setup.values["devices"].as<std::string>() : setup.placement.device.str();
  auto text = "generating a " + std::to_string(plan.height) + "x" + std::to_string(plan.width) + " image in " +
              setup.values["dtype"].as<std::string>() + " on " + where + " with " + std::to_string(setup.parallel.workers) +
              " worker(s)";
  if (!setup.placement.device.is_cuda())
    text += ", " + std::to_string(at::get_num_threads()) + " CPU thread(s) per worker";
  return text;
}

double run_generation(generation_setup& setup, const models::generation_request& probe, const session_body& body) {
  const auto& process = setup.process;
  const auto started = std::chrono::steady_clock::now();
  // A worker rank needs the denoiser only: rank 0 encodes the prompt and decodes the image.
  const auto parts = setup.distributed && process.rank != 0 ? models::pipeline_parts::denoiser : models::pipeline_parts::everything;
  replica_pool pool([&](const c10::Device& device) {
    auto placement = setup.placement;
    placement.device = device;
    return models::load_pipeline(setup.model_dir, placement, parts);
  });
  const auto replicas = pool.on(setup.devices);
  auto& pipeline = *replicas.front();  // worker 0's replica encodes the prompt and decodes the image
  const double load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  setup.parallel.tau = tau_settings_from(setup.values, pipeline);
  const auto settled = pipeline.plan(probe);  // steps and size after the model's defaults
  try {
    validate(setup.parallel, static_cast<int>(settled.steps));
  } catch (const invalid_options& bad) {
    throw usage_error(std::string(bad.what()) +
                      (setup.distributed ? " (WORLD_SIZE " + std::to_string(process.world_size) + ": one worker per process)" : ""));
  }
  actors::process_run this_process(process, setup.cluster);
  if (this_process.serves_rank_zero()) {
    this_process.serve(replicas.front());
    spdlog::info("rank {}: rank 0 finished the run", process.rank);
    return load_seconds;
  }
  const auto what = describe_run(setup, settled);
  spdlog::info("{}: {} steps, guidance {}", what, settled.steps, settled.guidance);
  models::with_memory_context(what, [&] {
    parallel_session session(this_process.system(), replicas, setup.parallel, this_process.cluster());
    body(session, pipeline);
  });
  return load_seconds;
}

}  // namespace hybridiff::cli
