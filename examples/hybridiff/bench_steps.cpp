// bench --model-config: the latency of one denoiser step on random inputs (random weights), per batch size.
#include <chrono>
#include <map>

#include <torch/torch.h>
#ifdef HYBRIDIFF_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include "bench.hpp"
#include "models/errors.hpp"
#include "models/pipelines/random_pipeline.hpp"
#include "runtime/cuda_graph.hpp"
#include "runtime/kernel_profile.hpp"

namespace hybridiff::cli {
namespace {

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
    report["top_kernels"].push_back(
        {{"name", kernels[i].name.substr(0, 160)},
         {"class", runtime::kernel_class(kernels[i].name)},
         {"calls_per_step", static_cast<double>(kernels[i].calls) / static_cast<double>(steps)},
         {"ms_per_step", per_step(kernels[i].total_ms)}});
  return report;
}

// `branch` (batch 1) repeated to batch `batch`.
models::branch_conditioning repeated(const models::branch_conditioning& branch, std::int64_t batch) {
  auto repeat = [batch](const at::Tensor& tensor) {
    if (!tensor.defined()) return tensor;
    std::vector<std::int64_t> times(static_cast<std::size_t>(tensor.dim()), 1);
    times[0] = batch;
    return tensor.repeat(times);
  };
  return {repeat(branch.context), repeat(branch.pooled), repeat(branch.time_ids)};
}

}  // namespace

void synchronize(const c10::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index() < 0 ? -1 : device.index());
}

double percentile(std::vector<double> samples, double fraction) {
  std::sort(samples.begin(), samples.end());
  const double position = fraction * static_cast<double>(samples.size() - 1);
  const auto low = static_cast<std::size_t>(position);
  const auto high = std::min(low + 1, samples.size() - 1);
  return samples[low] + (position - static_cast<double>(low)) * (samples[high] - samples[low]);
}

nlohmann::json bench_steps(const po::variables_map& values, const std::vector<std::int64_t>& batches) {
  const std::filesystem::path config_dir = values["model-config"].as<std::string>();
  const auto size = values["size"].as<std::int64_t>();
  const auto warmup = values["warmup"].as<std::int64_t>();
  const auto iters = values["iters"].as<std::int64_t>();
  const auto device = parse_device(values["device"].as<std::string>());
  const bool graphs = values["cuda-graphs"].as<bool>();
  const auto profiled_steps = values.count("profile") ? values["profile"].as<std::int64_t>() : 0;
  const auto dtype_text = values["dtype"].as<std::string>();
  const auto precision = parse_dtype(dtype_text, device);
  torch::NoGradGuard no_grad;
  // The denoiser as the loaders place it (a CUDA UNet channels-last unless --nchw), random weights and
  // conditioning of the real encoders' shapes; no scheduler: single denoiser calls are timed.
  models::load_options placement;
  placement.device = device;
  placement.dtype = precision.dtype;
  placement.fp8 = precision.fp8;
  const bool channels_last = !values["nchw"].as<bool>();
  auto pipeline = models::make_random_pipeline(config_dir, {}, placement, 0, channels_last);
  // fp8: the same random weights (same seed) unquantized are the baseline, timed in the same run.
  std::unique_ptr<models::random_pipeline> baseline;
  if (precision.fp8) {
    auto unquantized = placement;
    unquantized.fp8 = false;
    baseline = models::make_random_pipeline(config_dir, {}, unquantized, 0, channels_last);
  }
  const auto class_name = pipeline->class_name().substr(std::string("random ").size());
  const auto timestep = torch::tensor(500.0f, torch::TensorOptions().device(device));
  const auto branch = pipeline->encode_prompt({}, {1, size, size, 5.0, true}).positive;

  std::int64_t parameters = 0;
  for (const auto& parameter : pipeline->denoiser().parameters()) parameters += parameter.numel();
  nlohmann::json report = {{"model", class_name},
                           {"config", config_dir.string()},
                           {"size", size},
                           {"cuda_graphs", graphs},
                           {"device", device.str()},
                           {"dtype", dtype_text},
                           {"warmup", warmup},
                           {"iters", iters},
                           {"parameters", parameters},
                           {"cudnn_benchmark", at::globalContext().benchmarkCuDNN()}};
  if (pipeline->family() == models::denoiser_family::unet) report["channels_last"] = pipeline->channels_last();
#ifdef HYBRIDIFF_WITH_CUDA
  const c10::DeviceIndex gpu = device.index() < 0 ? 0 : device.index();
  if (device.is_cuda()) {
    report["gpu"] = at::cuda::getDeviceProperties(gpu)->name;
    c10::cuda::CUDACachingAllocator::resetPeakStats(gpu);
  }
#endif
  // Per-step milliseconds of `timed` after `warmup` untimed calls, and its kernel profile when asked for.
  auto time_steps = [&](models::random_pipeline& denoiser, const at::Tensor& sample,
                        const models::branch_conditioning& cond, std::optional<nlohmann::json>* profile) {
    std::unique_ptr<runtime::graphed_denoiser> graphed;
    if (graphs) graphed = std::make_unique<runtime::graphed_denoiser>(denoiser);
    auto eager = [&] { return denoiser.predict(sample, timestep, cond); };
    for (std::int64_t i = 0; i < warmup; ++i) eager();
    std::function<at::Tensor()> timed = eager;
    if (graphed) {  // the first call captures the graph (after warm-up runs of its own), the timed ones replay
      graphed->predict(sample, timestep, cond);
      timed = [&] { return graphed->predict(sample, timestep, cond); };
    }
    synchronize(device);
    std::vector<double> milliseconds;
    at::Tensor output;
    for (std::int64_t i = 0; i < iters; ++i) {
      auto start = std::chrono::steady_clock::now();
      output = timed();
      synchronize(device);
      milliseconds.push_back(
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
    }
    if (profile != nullptr && profiled_steps > 0)
      *profile = kernel_report(runtime::profile_kernels([&] {
                                 for (std::int64_t i = 0; i < profiled_steps; ++i) timed();
                                 synchronize(device);
                               }),
                               profiled_steps);
    return std::pair{milliseconds, output.to(at::kFloat)};
  };
  auto summary = [](std::vector<double> milliseconds) {
    return nlohmann::json{{"step_ms_median", percentile(milliseconds, 0.5)},
                          {"step_ms_p10", percentile(milliseconds, 0.1)},
                          {"step_ms_p90", percentile(milliseconds, 0.9)}};
  };
  for (auto batch : batches) {
    nlohmann::json row = {{"batch", batch}};
    models::with_memory_context(
        "timing " + class_name + " at batch " + std::to_string(batch) + ", " + std::to_string(size) + "x" +
            std::to_string(size) + " in " + dtype_text + " on " + device.str(),
        [&] {
          auto shape = pipeline->latent_shape(size, size);
          shape[0] = batch;
          const auto sample = torch::randn(shape, torch::TensorOptions().device(device).dtype(precision.dtype));
          const auto cond = repeated(branch, batch);
          std::optional<nlohmann::json> profile;
          const auto [milliseconds, output] = time_steps(*pipeline, sample, cond, &profile);
          row.update(summary(milliseconds));
          if (profile) row["profile"] = *profile;
          if (baseline) {
            // The unquantized model on the same input: its time, and how far the float8 prediction is from its.
            const auto [baseline_ms, reference] = time_steps(*baseline, sample, cond, nullptr);
            row["baseline"] = summary(baseline_ms);
            row["baseline"]["dtype"] = c10::toString(precision.dtype);
            row["speedup"] = percentile(baseline_ms, 0.5) / percentile(milliseconds, 0.5);
            row["relative_l2_error"] = ((output - reference).norm() / reference.norm()).item<double>();
          }
        });
    report["batches"].push_back(row);
  }
#ifdef HYBRIDIFF_WITH_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(gpu);
    report["peak_memory_mib"] =
        static_cast<double>(
            stats.allocated_bytes[static_cast<std::size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak) /
        (1024.0 * 1024.0);
  }
#endif
  return report;
}

}  // namespace hybridiff::cli
