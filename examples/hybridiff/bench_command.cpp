#include <algorithm>
#include <chrono>
#include <iostream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "cli.hpp"
#include "processes.hpp"
#include "models/config.hpp"
#include "models/errors.hpp"
#include "models/state_dict.hpp"

#include "actors/hybridiff.hpp"
#include "models/pipeline.hpp"
#include "models/random_pipeline.hpp"
#include "models/sd3_transformer.hpp"
#include "models/unet.hpp"
#include "runtime/kernel_profile.hpp"

#ifdef HYBRIDIFF_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace hybridiff::cli {
namespace {

std::vector<std::int64_t> parse_list(const std::string& text, const std::string& flag) {
  std::vector<std::int64_t> values;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) {
    try {
      std::size_t used = 0;
      auto value = std::stoll(item, &used);
      if (used != item.size() || value < 1) throw std::invalid_argument(item);
      values.push_back(value);
    } catch (const std::exception&) {
      throw usage_error(flag + " '" + text + "': expected positive integers separated by commas");
    }
  }
  if (values.empty()) throw usage_error(flag + " is empty");
  return values;
}

double percentile(std::vector<double> samples, double fraction) {
  std::sort(samples.begin(), samples.end());
  const double position = fraction * static_cast<double>(samples.size() - 1);
  const auto low = static_cast<std::size_t>(position);
  const auto high = std::min(low + 1, samples.size() - 1);
  return samples[low] + (position - static_cast<double>(low)) * (samples[high] - samples[low]);
}

void synchronize(const c10::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index() < 0 ? -1 : device.index());
}

// A kernel profile of `steps` steps as JSON: GPU milliseconds per step in total, by kernel class (with its share)
// and for the 15 longest kernels.
nlohmann::json kernel_report(const std::vector<runtime::kernel_total>& kernels, std::int64_t steps) {
  const auto per_step = [steps](double ms) { return ms / static_cast<double>(steps); };
  double total = 0;
  std::map<std::string, double> by_class;
  for (const auto& kernel : kernels) {
    total += kernel.total_ms;
    by_class[runtime::kernel_class(kernel.name)] += kernel.total_ms;
  }
  nlohmann::json report = {{"steps", steps}, {"gpu_ms_per_step", per_step(total)}};
  for (const auto& [kernel_class, ms] : by_class)
    report["classes"][kernel_class] = {{"ms_per_step", per_step(ms)}, {"share", ms / total}};
  for (std::size_t i = 0; i < std::min<std::size_t>(15, kernels.size()); ++i)
    report["top_kernels"].push_back({{"name", kernels[i].name.substr(0, 160)},
                                     {"class", runtime::kernel_class(kernels[i].name)},
                                     {"calls_per_step", static_cast<double>(kernels[i].calls) / static_cast<double>(steps)},
                                     {"ms_per_step", per_step(kernels[i].total_ms)}});
  return report;
}

// One --run: its flags parsed as generate's parallel flags.
struct bench_run {
  std::string label;
  parallel_options options;
  std::string devices;
};

bench_run parse_run(const std::string& text) {
  po::options_description flags;
  // clang-format off
  flags.add_options()
      ("mode", po::value<std::string>()->required())
      ("workers", po::value<int>())
      ("model_n", po::value<int>())
      ("stride", po::value<int>()->default_value(1))
      ("branch-stages", po::value<int>())
      ("devices", po::value<std::string>()->default_value(""))
      ("pipeline-warmup", po::value<int>()->default_value(1))
      ("tau1", po::value<int>())
      ("tau2", po::value<int>())
      ("cuda-graphs", po::bool_switch());
  // clang-format on
  po::positional_options_description mode;
  mode.add("mode", 1);
  po::variables_map values;
  try {
    po::store(po::command_line_parser(po::split_unix(text)).options(flags).positional(mode).run(), values);
    po::notify(values);
  } catch (const po::error& bad) {
    throw usage_error("--run \"" + text + "\": " + bad.what());
  }
  bench_run run{text, {}, values["devices"].as<std::string>()};
  auto& options = run.options;
  try {
    options.mode = parse_parallel_mode(values["mode"].as<std::string>());
  } catch (const std::invalid_argument& bad) {
    throw usage_error("--run \"" + text + "\": " + bad.what());
  }
  auto optional_int = [&](const char* name) {
    return values.count(name) ? std::optional<int>(values[name].as<int>()) : std::nullopt;
  };
  options.stride = values["stride"].as<int>();
  apply_worker_defaults(options, optional_int("workers"), optional_int("model_n"), optional_int("branch-stages"));
  options.warmup = values["pipeline-warmup"].as<int>();
  options.tau1 = optional_int("tau1");
  options.tau2 = optional_int("tau2");
  options.cuda_graphs = values["cuda-graphs"].as<bool>();
  return run;
}

// Times whole generations (random weights) for each run: `warmup` untimed images, then one timed, each run in a
// parallel session of its own over replicas shared by all runs (one per device, the same weights).
// Under `hybridiff launch` (WORLD_SIZE N > 1) rank 0 times the runs: a run of N workers puts one on each process
// (the others serve theirs), a run of 1 worker stays on rank 0; the other ranks print nothing. Returns nothing on
// those ranks.
// What the runs generate with: a diffusers folder (`--model`: text encoders, denoiser, VAE — end-to-end times), or
// a denoiser config and a scheduler config (random weights, random conditioning, no VAE — denoising times).
struct bench_model {
  std::filesystem::path folder;
  std::filesystem::path denoiser_config, scheduler_config;

  bool whole() const { return !folder.empty(); }
  std::string name() const { return (whole() ? folder : denoiser_config).string(); }
  bool sd3() const {
    return whole() ? models::read_config(folder / "model_index.json").get_or<std::string>("_class_name", "") ==
                         "StableDiffusion3Pipeline"
                   : models::read_config(denoiser_config / "config.json").get_or<std::string>("_class_name", "") ==
                         "SD3Transformer2DModel";
  }
  // Rank r > 0 of a multi-process run loads the denoiser only: rank 0 encodes and decodes.
  std::shared_ptr<models::diffusion_pipeline> load(const models::load_options& placement, bool denoiser_only) const {
    if (whole())
      return models::load_pipeline(folder, placement,
                                   denoiser_only ? models::pipeline_parts::denoiser : models::pipeline_parts::everything);
    // Seed 0 on every process: the ranks of a multi-process run hold the same weights.
    return models::make_random_pipeline(denoiser_config, scheduler_config, placement, 0);
  }
};

std::optional<nlohmann::json> bench_runs(const std::vector<std::string>& texts, const bench_model& model,
                                         std::int64_t steps, std::int64_t size, std::int64_t warmup,
                                         const c10::Device& device, at::ScalarType dtype,
                                         const std::string& dtype_text, const po::variables_map& values) {
  const auto process = runtime::discover_placement(runtime::process_environment());
  const bool distributed = process.world_size > 1;
  std::vector<bench_run> runs;
  // Every run is checked before any work (the tau defaults follow the model family, as in generate).
  const bool sd3 = model.sd3();
  for (const auto& text : texts) {
    runs.push_back(parse_run(text));
    auto& options = runs.back().options;
    if (sd3) options.tau = schedule::tau_settings::sd3();
    try {
      validate(options, static_cast<int>(steps));
    } catch (const std::invalid_argument& bad) {
      throw usage_error("--run \"" + text + "\": " + bad.what());
    }
    if (distributed && options.workers != 1 && options.workers != process.world_size)
      throw usage_error("--run \"" + text + "\" has " + std::to_string(options.workers) + " workers: with WORLD_SIZE " +
                        std::to_string(process.world_size) + " a run uses 1 worker (rank 0) or " +
                        std::to_string(process.world_size) + " (one per process)");
    if (options.cuda_graphs && !device.is_cuda())
      throw usage_error("--run \"" + text + "\": --cuda-graphs needs a CUDA --device");
    if (distributed && !runs.back().devices.empty())
      throw usage_error("--run \"" + text + "\": --devices places workers in one process; with WORLD_SIZE " +
                        std::to_string(process.world_size) + " each process uses its --device");
  }
  const auto cluster_settings = cluster_options_from(values, device, parallel_options{}.step_timeout);
  std::map<std::string, std::shared_ptr<models::diffusion_pipeline>> by_device;
  auto replica_on = [&](const c10::Device& worker_device) {
    auto& replica = by_device[worker_device.str()];
    if (!replica) replica = model.load({worker_device, dtype, ""}, distributed && process.rank != 0);
    return replica;
  };
  models::generation_request request;
  request.prompt = "a photograph of an astronaut riding a horse";  // read only by a whole pipeline's tokenizers
  request.steps = steps;
  request.height = request.width = size;
  actors::process_run this_process(process, cluster_settings);
  if (this_process.serves_rank_zero()) {
    this_process.serve(replica_on(device));
    return std::nullopt;
  }
  nlohmann::json report = {{"config", model.name()}, {"size", size}, {"dtype", dtype_text}, {"steps", steps},
                           {"cudnn_benchmark", at::globalContext().benchmarkCuDNN()}, {"runs", nlohmann::json::array()}};
  std::optional<double> baseline_ms;
  for (auto& run : runs) {
    auto& options = run.options;
    const bool spread = distributed && options.workers == process.world_size;  // one worker per process
    const auto devices = parse_device_list(run.devices, spread ? 1 : options.workers, device);
    std::vector<std::shared_ptr<models::diffusion_pipeline>> replicas;
    std::vector<std::string> device_names;
    for (const auto& worker_device : devices) {
      replicas.push_back(replica_on(worker_device));
      device_names.push_back(worker_device.str());
    }
    report["model"] = replicas.front()->class_name();
    parallel_session session(this_process.system(), replicas, options, spread ? this_process.cluster() : nullptr);
    nlohmann::json entry = {{"run", run.label},           {"mode", to_string(options.mode)}, {"workers", options.workers},
                            {"model_n", options.model_n}, {"stride", options.stride},        {"branch_stages", options.branch_stages},
                            {"devices", device_names},    {"processes", spread ? process.world_size : 1}};
    if (spread) entry["transport"] = runtime::to_string(cluster_settings.transport);
    for (std::int64_t round = 0; round <= warmup; ++round) {  // the first `warmup` images are not reported
      std::vector<double> step_ms;
      auto last = std::chrono::steady_clock::now();
      const auto begin = last;
      parallel_result result;
      models::with_memory_context("running --run \"" + run.label + "\" at " + std::to_string(size) + "x" +
                                      std::to_string(size) + " in " + dtype_text,
                                  [&] {
                                    result = session.generate(request, [&](std::int64_t, std::int64_t,
                                                                           const at::Tensor& latents) {
                                      synchronize(latents.device());
                                      auto now = std::chrono::steady_clock::now();
                                      step_ms.push_back(std::chrono::duration<double, std::milli>(now - last).count());
                                      last = now;
                                    });
                                  });
      const double denoised_ms = std::chrono::duration<double, std::milli>(last - begin).count();
      double total = denoised_ms;
      if (model.whole()) {  // the VAE decode on rank 0's replica, as generate does it (image on the CPU)
        replicas.front()->decode(result.latents);
        total = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - begin).count();
      }
      if (round < warmup) continue;
      entry["generation_ms"] = denoised_ms;
      if (model.whole()) {
        entry["decode_ms"] = total - denoised_ms;
        entry["end_to_end_ms"] = total;
      }
      if (!baseline_ms) baseline_ms = total;
      entry["speedup_vs_first_run"] = *baseline_ms / total;
      std::map<std::string, std::vector<double>> wall, busiest;
      for (std::size_t i = 0; i < result.trace.size(); ++i) {
        const auto& row = result.trace[i];
        wall[row.mode].push_back(step_ms[i]);
        busiest[row.mode].push_back(*std::max_element(row.worker_ms.begin(), row.worker_ms.end()));
      }
      for (const auto& [phase, samples] : wall)
        entry["phases"][phase] = {{"steps", samples.size()},
                                  {"step_ms_median", percentile(samples, 0.5)},
                                  {"step_ms_p10", percentile(samples, 0.1)},
                                  {"step_ms_p90", percentile(samples, 0.9)},
                                  {"busiest_worker_ms_median", percentile(busiest[phase], 0.5)}};
      if (result.tau1) entry["tau1"] = *result.tau1;
      if (result.tau2) entry["tau2"] = *result.tau2;
    }
    report["runs"].push_back(entry);
  }
  return report;
}

}  // namespace

int run_bench(const std::vector<std::string>& args) {
  command_line line;
  line.name = "bench";
  line.usage = "hybridiff bench --model-config DIR [options]\n       hybridiff bench --model DIR --run FLAGS [--run FLAGS ...] [options]";
  line.summary =
      "Times denoiser steps of a model built from a config folder with random weights (speed does not depend on\n"
      "the weights' values), e.g. ../shared/fixtures/configs/sdxl-unet. Prints JSON: per batch size the median,\n"
      "p10 and p90 of the per-step latency in milliseconds over --iters steps after --warmup steps. With --run:\n"
      "the time of whole generations and per-phase step times, for each run: denoising with --model-config, end to\n"
      "end (text encoding, denoising, VAE decoding) with --model, a diffusers folder (bench/random_model.py writes\n"
      "full-size ones with random weights).";
  // clang-format off
  line.options.add_options()
      ("model-config", po::value<std::string>()->value_name("DIR"), "folder with the denoiser's config.json")
      ("model", po::value<std::string>()->value_name("DIR"), "--run: a diffusers folder (instead of --model-config and "
       "--scheduler-config): times text encoding, denoising and VAE decoding")
      ("size", po::value<std::int64_t>()->default_value(1024)->value_name("PX"), "image side in pixels (latents: /8)")
      ("batch", po::value<std::string>()->default_value("1,2")->value_name("LIST"), "batch sizes, e.g. 1,2")
      ("warmup", po::value<std::int64_t>()->default_value(3)->value_name("N"),
       "untimed steps first (with --run: untimed whole generations per run)")
      ("iters", po::value<std::int64_t>()->default_value(20)->value_name("N"), "timed steps (>= 1)")
      ("device", po::value<std::string>()->default_value("cuda")->value_name("DEV"), "cpu, cuda or cuda:N")
      ("dtype", po::value<std::string>()->default_value("fp16")->value_name("T"), "fp32, fp16 or bf16")
      ("run", po::value<std::vector<std::string>>()->composing()->value_name("FLAGS"),
       "time whole generations of one schedule instead (repeatable; the first run is the baseline of the ratios): "
       "\"MODE [--workers N] [--model_n N] [--stride S] [--branch-stages N] [--devices LIST] [--pipeline-warmup W] "
       "[--tau1 A --tau2 B] [--cuda-graphs]\" with MODE none, cfg, asyncdiff or hybrid and generate's meanings; "
       "with --model-config it needs --scheduler-config")
      ("cuda-graphs", po::bool_switch(), "per-step timing: replay the denoiser from a CUDA graph (captured after the "
       "warm-up steps)")
      ("cudnn-benchmark", po::bool_switch(), cudnn_benchmark_help)
      ("nchw", po::bool_switch(), "per-step timing of a UNet on CUDA: keep its activations and conv weights in the "
       "standard NCHW layout (generate runs them channels-last), to compare the two")
      ("profile", po::value<std::int64_t>()->implicit_value(10)->value_name("N"), "per-step timing: then profile N "
       "more steps (default 10) with PyTorch's profiler and report the GPU time per step by kernel class (gemm, "
       "attention, convolution, normalization, elementwise, reduction, copy, other) and the top kernels")
      ("scheduler-config", po::value<std::string>()->value_name("DIR"), "folder with scheduler_config.json (--run)")
      ("steps", po::value<std::int64_t>()->default_value(50)->value_name("N"), "--run: denoising steps");
  // clang-format on
  line.options.add(process_options());
  auto parsed = parse(line, args);
  if (!parsed) return 0;
  const auto& values = *parsed;
  if (values.count("model") == values.count("model-config"))
    throw usage_error("give one of --model-config DIR (random weights) and --model DIR (a diffusers folder)");
  if (values.count("model") && !values.count("run")) throw usage_error("--model times whole generations: add --run");
  const auto batches = parse_list(values["batch"].as<std::string>(), "--batch");
  const auto size = values["size"].as<std::int64_t>();
  const auto warmup = values["warmup"].as<std::int64_t>();
  const auto iters = values["iters"].as<std::int64_t>();
  if (size < 8 || size % 8 != 0) throw usage_error("--size must be a positive multiple of 8");
  if (iters < 1 || warmup < 0) throw usage_error("--iters must be >= 1 and --warmup >= 0");
  const auto device = parse_device(values["device"].as<std::string>());
  const bool graphs = values["cuda-graphs"].as<bool>();
  if (graphs && !device.is_cuda()) throw usage_error("--cuda-graphs needs a CUDA --device");
  use_cudnn_benchmark(values["cudnn-benchmark"].as<bool>(), device);
  const auto profiled_steps = values.count("profile") ? values["profile"].as<std::int64_t>() : 0;
  if (values.count("profile") && (profiled_steps < 1 || !device.is_cuda() || values.count("run")))
    throw usage_error("--profile N needs N >= 1, a CUDA --device and per-step timing (no --run)");
  const auto dtype_text = values["dtype"].as<std::string>();
  const auto dtype = parse_dtype(dtype_text);

  if (values["nchw"].as<bool>() && values.count("run"))
    throw usage_error("--nchw is for per-step timing (generations with --run always run a CUDA UNet channels-last)");
  if (values.count("run")) {
    bench_model model;
    if (values.count("model")) {
      model.folder = values["model"].as<std::string>();
      if (values.count("scheduler-config")) throw usage_error("--model brings its scheduler: drop --scheduler-config");
    } else {
      if (!values.count("scheduler-config")) throw usage_error("--run with --model-config needs --scheduler-config DIR");
      model.denoiser_config = values["model-config"].as<std::string>();
      model.scheduler_config = values["scheduler-config"].as<std::string>();
    }
    auto report = bench_runs(values["run"].as<std::vector<std::string>>(), model, values["steps"].as<std::int64_t>(),
                             size, warmup, device, dtype, dtype_text, values);
    if (report) std::cout << report->dump(2) << std::endl;
    return 0;
  }
  const std::filesystem::path config_dir = values["model-config"].as<std::string>();
  auto config = models::read_config(config_dir / "config.json");
  const auto class_name = config.get_or<std::string>("_class_name", "");
  torch::NoGradGuard no_grad;
  const auto options = torch::TensorOptions().device(device).dtype(dtype);
  const models::load_options placement{device, dtype, ""};
  const auto latent = size / 8;
  // One denoiser call on random inputs of batch B, for the config's class (random weights, torch's default init).
  std::function<void(std::int64_t)> prepare;
  std::function<void()> step;
  std::function<void()> placed;  // what generate's loaders do once the weights are on the device
  const bool channels_last = class_name == "UNet2DConditionModel" && device.is_cuda() && !values["nchw"].as<bool>();
  std::shared_ptr<torch::nn::Module> module;
  at::Tensor sample, timestep = torch::tensor(500.0f, torch::TensorOptions().device(device));
  if (class_name == "UNet2DConditionModel") {
    models::UNet2DConditionModel unet(models::unet_config::from(config));
    module = unet.ptr();
    auto cond = std::make_shared<models::UNet2DConditionModelImpl::conditioning>();
    prepare = [&sample, &options, latent, unet, cond](std::int64_t batch) {
      const auto& c = unet->config();
      sample = torch::randn({batch, c.in_channels, latent, latent}, options);
      cond->context = torch::randn({batch, 77, c.cross_attention_dim.back()}, options);
      if (c.text_time) {
        cond->text_embeds = torch::randn({batch, c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim}, options);
        cond->time_ids = torch::tensor({1024.f, 1024.f, 0.f, 0.f, 1024.f, 1024.f}, options).repeat({batch, 1});
      }
    };
    step = [&sample, &timestep, unet, cond]() mutable { unet->forward(sample, timestep, *cond); };
    placed = [unet, channels_last]() mutable {
      if (channels_last) unet->use_channels_last();
    };
  } else if (class_name == "SD3Transformer2DModel") {
    models::SD3Transformer2DModel transformer(models::sd3_transformer_config::from(config));
    module = transformer.ptr();
    auto context = std::make_shared<at::Tensor>(), pooled = std::make_shared<at::Tensor>();
    prepare = [&sample, &options, latent, transformer, context, pooled](std::int64_t batch) {
      const auto& c = transformer->config();
      sample = torch::randn({batch, c.in_channels, latent, latent}, options);
      *context = torch::randn({batch, 77 + 256, c.joint_attention_dim}, options);  // CLIP 77 + T5 256 tokens
      *pooled = torch::randn({batch, c.pooled_projection_dim}, options);
    };
    step = [&sample, &timestep, transformer, context, pooled]() mutable { transformer->forward(sample, timestep, *context, *pooled); };
  } else {
    throw error((config_dir / "config.json").string() + ": bench supports UNet2DConditionModel and SD3Transformer2DModel, not '" +
                class_name + "'");
  }
  models::place_module(*module, placement);
  if (placed) placed();
  module->eval();

  std::int64_t parameters = 0;
  for (const auto& parameter : module->parameters()) parameters += parameter.numel();
  nlohmann::json report = {{"model", class_name}, {"config", config_dir.string()}, {"size", size}, {"cuda_graphs", graphs},
                           {"device", device.str()}, {"dtype", dtype_text},  {"warmup", warmup},
                           {"iters", iters},         {"parameters", parameters},
                           {"cudnn_benchmark", at::globalContext().benchmarkCuDNN()}};
  if (class_name == "UNet2DConditionModel") report["channels_last"] = channels_last;
#ifdef HYBRIDIFF_WITH_CUDA
  const c10::DeviceIndex gpu = device.index() < 0 ? 0 : device.index();
  if (device.is_cuda()) {
    report["gpu"] = at::cuda::getDeviceProperties(gpu)->name;
    c10::cuda::CUDACachingAllocator::resetPeakStats(gpu);
  }
#endif
  for (auto batch : batches) {
    std::vector<double> milliseconds;
    std::optional<nlohmann::json> profile;
    models::with_memory_context(
        "timing " + class_name + " at batch " + std::to_string(batch) + ", " + std::to_string(size) + "x" +
            std::to_string(size) + " in " + dtype_text + " on " + device.str(),
        [&] {
          prepare(batch);
          for (std::int64_t i = 0; i < warmup; ++i) step();
          synchronize(device);
          auto timed = step;
#ifdef HYBRIDIFF_WITH_CUDA
          std::shared_ptr<at::cuda::CUDAGraph> graph;
          if (graphs) {  // one capture on a side stream (the warm-up ran eagerly), then replays
            graph = std::make_shared<at::cuda::CUDAGraph>();
            auto side = c10::cuda::getStreamFromPool(false, device.index() < 0 ? 0 : device.index());
            {
              c10::cuda::CUDAStreamGuard on_side(side);
              graph->capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
              step();
              graph->capture_end();
            }
            side.synchronize();
            timed = [graph] { graph->replay(); };
          }
#endif
          for (std::int64_t i = 0; i < iters; ++i) {
            auto start = std::chrono::steady_clock::now();
            timed();
            synchronize(device);
            milliseconds.push_back(
                std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
          }
          if (profiled_steps > 0)
            profile = kernel_report(runtime::profile_kernels([&] {
                                      for (std::int64_t i = 0; i < profiled_steps; ++i) timed();
                                      synchronize(device);
                                    }),
                                    profiled_steps);
        });
    report["batches"].push_back({{"batch", batch},
                                 {"step_ms_median", percentile(milliseconds, 0.5)},
                                 {"step_ms_p10", percentile(milliseconds, 0.1)},
                                 {"step_ms_p90", percentile(milliseconds, 0.9)}});
    if (profile) report["batches"].back()["profile"] = *profile;
  }
#ifdef HYBRIDIFF_WITH_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(gpu);
    report["peak_memory_mib"] =
        static_cast<double>(stats.allocated_bytes[static_cast<std::size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak) /
        (1024.0 * 1024.0);
  }
#endif
  std::cout << report.dump(2) << std::endl;
  return 0;
}

}  // namespace hybridiff::cli
