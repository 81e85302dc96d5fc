#include <algorithm>
#include <chrono>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "cli.hpp"
#include "models/config.hpp"
#include "models/errors.hpp"
#include "models/state_dict.hpp"
#include "models/unet.hpp"

#ifdef HYBRIDIFF_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
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

}  // namespace

int run_bench(const std::vector<std::string>& args) {
  command_line line;
  line.name = "bench";
  line.usage = "hybridiff bench --model-config DIR [options]";
  line.summary =
      "Times denoiser steps of a model built from a config folder with random weights (speed does not depend on\n"
      "the weights' values), e.g. ../shared/fixtures/configs/sdxl-unet. Prints JSON: per batch size the median,\n"
      "p10 and p90 of the per-step latency in milliseconds over --iters steps after --warmup steps.";
  // clang-format off
  line.options.add_options()
      ("model-config", po::value<std::string>()->required()->value_name("DIR"), "folder with the denoiser's config.json")
      ("size", po::value<std::int64_t>()->default_value(1024)->value_name("PX"), "image side in pixels (latents: /8)")
      ("batch", po::value<std::string>()->default_value("1,2")->value_name("LIST"), "batch sizes, e.g. 1,2")
      ("warmup", po::value<std::int64_t>()->default_value(3)->value_name("N"), "untimed steps first")
      ("iters", po::value<std::int64_t>()->default_value(20)->value_name("N"), "timed steps (>= 1)")
      ("device", po::value<std::string>()->default_value("cuda")->value_name("DEV"), "cpu, cuda or cuda:N")
      ("dtype", po::value<std::string>()->default_value("fp16")->value_name("T"), "fp32, fp16 or bf16");
  // clang-format on
  auto parsed = parse(line, args);
  if (!parsed) return 0;
  const auto& values = *parsed;
  const auto batches = parse_list(values["batch"].as<std::string>(), "--batch");
  const auto size = values["size"].as<std::int64_t>();
  const auto warmup = values["warmup"].as<std::int64_t>();
  const auto iters = values["iters"].as<std::int64_t>();
  if (size < 8 || size % 8 != 0) throw usage_error("--size must be a positive multiple of 8");
  if (iters < 1 || warmup < 0) throw usage_error("--iters must be >= 1 and --warmup >= 0");
  const auto device_text = values["device"].as<std::string>();
  c10::Device device(c10::kCPU);
  try {
    device = c10::Device(device_text);
  } catch (const c10::Error&) {
    throw usage_error("--device '" + device_text + "': use cpu, cuda or cuda:N");
  }
  if (device.is_cuda() && !torch::cuda::is_available()) throw usage_error("--device " + device_text + ": no CUDA device");
  const auto dtype_text = values["dtype"].as<std::string>();
  at::ScalarType dtype = dtype_text == "fp32" ? at::kFloat : dtype_text == "fp16" ? at::kHalf
                                             : dtype_text == "bf16" ? at::kBFloat16 : at::kByte;
  if (dtype == at::kByte) throw usage_error("--dtype '" + dtype_text + "': use fp32, fp16 or bf16");

  const std::filesystem::path config_dir = values["model-config"].as<std::string>();
  auto config = models::read_config(config_dir / "config.json");
  const auto class_name = config.get_or<std::string>("_class_name", "");
  if (class_name != "UNet2DConditionModel")
    throw error((config_dir / "config.json").string() + ": bench supports UNet2DConditionModel, not '" + class_name + "'");

  torch::NoGradGuard no_grad;
  models::UNet2DConditionModel unet(models::unet_config::from(config));
  models::place_module(*unet, {device, dtype, ""});
  unet->eval();
  const auto& unet_config = unet->config();
  const auto latent = size / 8;

  nlohmann::json report = {{"model", class_name},
                           {"config", config_dir.string()},
                           {"size", size},
                           {"device", device.str()},
                           {"dtype", dtype_text},
                           {"warmup", warmup},
                           {"iters", iters},
                           {"parameters", 0}};
  std::int64_t parameters = 0;
  for (const auto& parameter : unet->parameters()) parameters += parameter.numel();
  report["parameters"] = parameters;
#ifdef HYBRIDIFF_WITH_CUDA
  const c10::DeviceIndex gpu = device.index() < 0 ? 0 : device.index();
  if (device.is_cuda()) {
    report["gpu"] = at::cuda::getDeviceProperties(gpu)->name;
    c10::cuda::CUDACachingAllocator::resetPeakStats(gpu);
  }
#endif
  for (auto batch : batches) {
    auto options = torch::TensorOptions().device(device).dtype(dtype);
    auto sample = torch::randn({batch, unet_config.in_channels, latent, latent}, options);
    auto timestep = torch::tensor(500.0f, torch::TensorOptions().device(device));
    models::UNet2DConditionModelImpl::conditioning cond;
    cond.context = torch::randn({batch, 77, unet_config.cross_attention_dim.back()}, options);
    if (unet_config.text_time) {
      cond.text_embeds = torch::randn(
          {batch, unet_config.projection_class_embeddings_input_dim - 6 * unet_config.addition_time_embed_dim}, options);
      cond.time_ids = torch::tensor({1024.f, 1024.f, 0.f, 0.f, 1024.f, 1024.f}, options).repeat({batch, 1});
    }
    for (std::int64_t i = 0; i < warmup; ++i) unet->forward(sample, timestep, cond);
    synchronize(device);
    std::vector<double> milliseconds;
    for (std::int64_t i = 0; i < iters; ++i) {
      auto start = std::chrono::steady_clock::now();
      unet->forward(sample, timestep, cond);
      synchronize(device);
      milliseconds.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
    }
    report["batches"].push_back({{"batch", batch},
                                 {"step_ms_median", percentile(milliseconds, 0.5)},
                                 {"step_ms_p10", percentile(milliseconds, 0.1)},
                                 {"step_ms_p90", percentile(milliseconds, 0.9)}});
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
