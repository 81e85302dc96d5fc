// bench --run: whole generations per schedule, through the same flags, replicas and detector defaults as generate.
#include <algorithm>
#include <chrono>
#include <map>

#include <torch/torch.h>

#include "actors/cluster.hpp"
#include "actors/hybridiff.hpp"
#include "bench.hpp"
#include "generation_setup.hpp"
#include "models/pipelines/random_pipeline.hpp"
#include "processes.hpp"

namespace hybridiff::cli {
namespace {

// One --run: "MODE [flags]", its flags parsed as generate's schedule flags.
struct bench_run {
  std::string label;
  po::variables_map values;
  parallel_options options;
};

bench_run parse_run(const std::string& text, const c10::Device& device) {
  const auto flags = schedule_options();
  po::positional_options_description mode;
  mode.add("parallel", 1);
  bench_run run{text, {}, {}};
  try {
    po::store(po::command_line_parser(po::split_unix(text)).options(flags).positional(mode).run(), run.values);
    po::notify(run.values);
    if (!run.values.count("parallel")) throw usage_error("give the mode first: none, cfg, asyncdiff or hybrid");
    run.options = parallel_options_from(run.values, run.values["parallel"].as<std::string>(), std::nullopt, device);
    validate(run.options);  // what does not depend on the model; the rest once it is loaded
  } catch (const po::error& bad) {
    throw usage_error("--run \"" + text + "\": " + bad.what());
  } catch (const usage_error& bad) {
    throw usage_error("--run \"" + text + "\": " + bad.what());
  } catch (const invalid_options& bad) {
    throw usage_error("--run \"" + text + "\": " + bad.what());
  }
  return run;
}

}  // namespace

nlohmann::json bench_load(const bench_model& model, const c10::Device& device, const precision& dtype,
                          std::int64_t iters) {
  auto time_load = [&](const std::vector<models::lora_spec>& loras) {
    models::load_options options{device, dtype.dtype, "", model.variant, loras, model.config_from};
    options.fp8 = dtype.fp8;
    const auto start = std::chrono::steady_clock::now();
    auto pipeline = models::load_pipeline(model.folder, options);
    synchronize(device);
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    return took.count();
  };
  std::vector<double> plain, with_loras;
  for (std::int64_t i = 0; i < iters; ++i) {
    plain.push_back(time_load({}));
    if (!model.loras.empty()) with_loras.push_back(time_load(model.loras));
  }
  nlohmann::json report = {{"model", model.folder.string()},
                           {"device", device.str()},
                           {"dtype", c10::toString(dtype.dtype)},
                           {"fp8", dtype.fp8},
                           {"load_s", plain},
                           {"median_load_s", percentile(plain, 0.5)}};
  if (!with_loras.empty()) {
    report["loras"] = nlohmann::json::array();
    for (const auto& lora : model.loras) report["loras"].push_back(lora.file.string());
    report["load_with_loras_s"] = with_loras;
    report["median_load_with_loras_s"] = percentile(with_loras, 0.5);
    report["median_merge_s"] = percentile(with_loras, 0.5) - percentile(plain, 0.5);
  }
  return report;
}

std::optional<nlohmann::json> bench_runs(const std::vector<std::string>& texts, const bench_model& model,
                                         const bench_run_settings& settings, const po::variables_map& values) {
  const auto process = runtime::discover_placement(runtime::process_environment());
  const bool distributed = process.world_size > 1;
  const auto& device = settings.device;
  std::vector<bench_run> runs;
  for (const auto& text : texts) {
    runs.push_back(parse_run(text, device));
    const auto& run = runs.back();
    if (distributed && run.options.workers != 1 && run.options.workers != process.world_size)
      throw usage_error("--run \"" + text + "\" has " + std::to_string(run.options.workers) +
                        " workers: with WORLD_SIZE " + std::to_string(process.world_size) +
                        " a run uses 1 worker (rank 0) or " + std::to_string(process.world_size) +
                        " (one per process)");
    if (distributed && run.values.count("devices"))
      throw usage_error("--run \"" + text + "\": --devices places workers in one process; with WORLD_SIZE " +
                        std::to_string(process.world_size) + " each process uses its --device");
  }
  const auto cluster_settings = cluster_options_from(values, device, parallel_options{}.step_timeout);
  // Rank r > 0 of a multi-process run loads the denoiser only: rank 0 encodes and decodes. Random weights are
  // seeded alike on every process, so that the ranks hold the same weights.
  const bool denoiser_only = distributed && process.rank != 0;
  replica_pool pool([&](const c10::Device& worker_device) -> std::shared_ptr<models::diffusion_pipeline> {
    models::load_options placement{worker_device, settings.dtype.dtype, "",
                                   model.variant, model.loras,          model.config_from};
    placement.fp8 = settings.dtype.fp8;
    if (model.whole())
      return models::load_pipeline(
          model.folder, placement,
          denoiser_only ? models::pipeline_parts::denoiser : models::pipeline_parts::everything);
    return models::make_random_pipeline(model.denoiser_config, model.scheduler_config, placement, 0);
  });
  models::generation_request request;
  request.prompt = "a photograph of an astronaut riding a horse";  // read only by a whole pipeline's tokenizers
  request.steps = settings.steps;
  request.height = request.width = settings.size;
  actors::process_run this_process(process, cluster_settings);
  if (this_process.serves_rank_zero()) {
    this_process.serve(pool.on({device}).front());
    return std::nullopt;
  }
  const auto size_text = std::to_string(settings.size) + "x" + std::to_string(settings.size);
  nlohmann::json report = {{"config", model.name()},
                           {"size", settings.size},
                           {"dtype", settings.dtype_text},
                           {"steps", settings.steps},
                           {"cudnn_benchmark", at::globalContext().benchmarkCuDNN()},
                           {"runs", nlohmann::json::array()}};
  std::optional<double> baseline_ms;
  for (auto& run : runs) {
    auto& options = run.options;
    const bool spread = distributed && options.workers == process.world_size;  // one worker per process
    const auto devices = parse_device_list(run.values.count("devices") ? run.values["devices"].as<std::string>() : "",
                                           spread ? 1 : options.workers, device);
    const auto replicas = pool.on(devices);
    options.tau = tau_settings_from(run.values, *replicas.front());
    try {
      validate(options, static_cast<int>(settings.steps));
    } catch (const invalid_options& bad) {
      throw usage_error("--run \"" + run.label + "\": " + bad.what());
    }
    std::vector<std::string> device_names;
    for (const auto& worker_device : devices) device_names.push_back(worker_device.str());
    report["model"] = replicas.front()->class_name();
    parallel_session session(this_process.system(), replicas, options, spread ? this_process.cluster() : nullptr);
    nlohmann::json entry = {{"run", run.label},           {"mode", to_string(options.mode)},
                            {"workers", options.workers}, {"model_n", options.model_n},
                            {"stride", options.stride},   {"branch_stages", options.branch_stages},
                            {"devices", device_names},    {"processes", spread ? process.world_size : 1}};
    if (spread) entry["transport"] = runtime::to_string(cluster_settings.transport);
    for (std::int64_t round = 0; round <= settings.warmup; ++round) {  // the first `warmup` images are not reported
      std::vector<double> step_ms;
      auto last = std::chrono::steady_clock::now();
      const auto begin = last;
      parallel_result result;
      models::with_memory_context(
          "running --run \"" + run.label + "\" at " + size_text + " in " + settings.dtype_text, [&] {
            result = session.generate(request, [&](std::int64_t, std::int64_t, const at::Tensor& latents) {
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
      if (round < settings.warmup) continue;
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

}  // namespace hybridiff::cli
