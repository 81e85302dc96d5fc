// hybridiff bench: its command line; the work is in bench_steps.cpp (per-step timing) and bench_runs.cpp (--run).
#include <iostream>
#include <sstream>

#include <spdlog/spdlog.h>

#include "bench.hpp"
#include "generation_setup.hpp"
#include "processes.hpp"
#include "schedule_lab.hpp"

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

// --model with its --variant, --lora and --config-from.
bench_model whole_model(const po::variables_map& values) {
  bench_model model;
  model.folder = values["model"].as<std::string>();
  if (values.count("variant")) model.variant = values["variant"].as<std::string>();
  model.loras = lora_specs_from(values);
  if (values.count("config-from")) model.config_from = values["config-from"].as<std::string>();
  return model;
}

}  // namespace

int run_bench(const std::vector<std::string>& args) {
  command_line line;
  line.name = "bench";
  line.usage =
      "hybridiff bench --model-config DIR [options]\n       hybridiff bench --model DIR --run FLAGS [--run FLAGS ...] "
      "[options]\n       hybridiff bench --model DIR|FILE --load [--lora FILE] [options]";
  line.summary =
      "Times denoiser steps of a model built from a config folder with random weights (speed does not depend on\n"
      "the weights' values), e.g. the unet/ folder of an SDXL folder. Prints JSON: per batch size the median,\n"
      "p10 and p90 of the per-step latency in milliseconds over --iters steps after --warmup steps; with --dtype\n"
      "fp8 also the same weights unquantized (fp16 on CUDA) on the same inputs as the baseline, the speedup and\n"
      "the relative L2 distance of the two predictions. With --run:\n"
      "the time of whole generations and per-phase step times, for each run: denoising with --model-config, end to\n"
      "end (text encoding, denoising, VAE decoding) with --model, a diffusers folder (bench/random_model.py writes\n"
      "full-size ones with random weights).";
  // clang-format off
  line.options.add_options()
      ("model-config", po::value<std::string>()->value_name("DIR"), "folder with the denoiser's config.json")
      ("model", po::value<std::string>()->value_name("DIR"), "--run: a diffusers folder (instead of --model-config and "
       "--scheduler-config): times text encoding, denoising and VAE decoding (also a Hugging Face cache folder, "
       "ORG/NAME in that cache, or a single-file SDXL/SD3 .safetensors)")
      ("config-from", po::value<std::string>()->value_name("DIR"),
       "with a single-file --model: the diffusers folder of its configs and tokenizers")
      ("variant", po::value<std::string>()->value_name("NAME"), "with --model: the weight files' variant (fp16)")
      ("lora", po::value<std::vector<std::string>>()->value_name("FILE[:SCALE]"),
       "with --model: merge a LoRA at load (repeatable)")
      ("size", po::value<std::int64_t>()->default_value(1024)->value_name("PX"), "image side in pixels (latents: /8)")
      ("batch", po::value<std::string>()->default_value("1,2")->value_name("LIST"), "batch sizes, e.g. 1,2")
      ("warmup", po::value<std::int64_t>()->default_value(3)->value_name("N"),
       "untimed steps first (with --run: untimed whole generations per run)")
      ("iters", po::value<std::int64_t>()->default_value(20)->value_name("N"), "timed steps (>= 1)")
      ("device", po::value<std::string>()->default_value("cuda")->value_name("DEV"), "cpu, cuda or cuda:N")
      ("dtype", po::value<std::string>()->default_value("fp16")->value_name("T"), dtype_choices)
      ("run", po::value<std::vector<std::string>>()->composing()->value_name("FLAGS"),
       "time whole generations of one schedule instead (repeatable; the first run is the baseline of the ratios): "
       "\"MODE [schedule flags]\" with MODE none, cfg, asyncdiff or hybrid and generate's \"Parallel schedule\" "
       "flags (e.g. \"hybrid --workers 4 --cuda-graphs\", \"asyncdiff --model_n 3 --stride 2 --warmup 5 --devices "
       "cuda:0,cuda:1,cuda:2,cuda:3\"); with --model-config it needs --scheduler-config")
      ("cuda-graphs", po::bool_switch(), "per-step timing: replay the denoiser from a CUDA graph (captured after the "
       "warm-up steps)")
      ("cudnn-benchmark", po::bool_switch(), cudnn_benchmark_help)
      ("nchw", po::bool_switch(), "per-step timing of a UNet on CUDA: keep its activations and conv weights in the "
       "standard NCHW layout (generate runs them channels-last), to compare the two")
      ("profile", po::value<std::int64_t>()->implicit_value(10)->value_name("N"), "per-step timing: then profile N "
       "more steps (default 10) with PyTorch's profiler and report the GPU time per step by kernel class (gemm, "
       "attention, convolution, normalization, elementwise, reduction, copy, other) and the top kernels")
      ("scheduler-config", po::value<std::string>()->value_name("DIR"), "folder with scheduler_config.json (--run)")
      ("steps", po::value<std::int64_t>()->default_value(50)->value_name("N"), "--run: denoising steps")
      ("load", po::bool_switch(), "time loading --model (a folder or a single file) and merging its --lora files "
       "instead: --iters loads each without and with the LoRAs")
      ("cost-profile", po::value<std::string>()->value_name("FILE"),
       "--run: also write the median step time of every mode on every worker count the runs measured as a cost "
       "profile for `hybridiff schedule simulate/sweep --cost` (include a \"none\" run: the sequential baseline)");
  // clang-format on
  line.options.add(process_options());
  auto parsed = parse(line, args);
  if (!parsed) return 0;
  const auto& values = *parsed;
  if (values.count("model") == values.count("model-config"))
    throw usage_error("give one of --model-config DIR (random weights) and --model DIR (a diffusers folder)");
  const bool load = values["load"].as<bool>();
  if (load && (!values.count("model") || values.count("run")))
    throw usage_error("--load times loading a --model (without --run)");
  if (values.count("model") && !values.count("run") && !load)
    throw usage_error("--model times whole generations (add --run) or loading (add --load)");
  if ((values.count("variant") || values.count("lora") || values.count("config-from")) && !values.count("model"))
    throw usage_error("--variant, --lora and --config-from apply to --model");
  if (values.count("cost-profile") && !values.count("run")) throw usage_error("--cost-profile needs --run");
  const auto batches = parse_list(values["batch"].as<std::string>(), "--batch");
  const auto size = values["size"].as<std::int64_t>();
  const auto warmup = values["warmup"].as<std::int64_t>();
  const auto iters = values["iters"].as<std::int64_t>();
  if (size < 8 || size % 8 != 0) throw usage_error("--size must be a positive multiple of 8");
  if (iters < 1 || warmup < 0) throw usage_error("--iters must be >= 1 and --warmup >= 0");
  const auto device = parse_device(values["device"].as<std::string>());
  check_cuda_graphs(values["cuda-graphs"].as<bool>(), device);
  use_cudnn_benchmark(values["cudnn-benchmark"].as<bool>(), device);
  const auto profiled_steps = values.count("profile") ? values["profile"].as<std::int64_t>() : 0;
  if (values.count("profile") && (profiled_steps < 1 || !device.is_cuda() || values.count("run")))
    throw usage_error("--profile N needs N >= 1, a CUDA --device and per-step timing (no --run)");
  const auto dtype_text = values["dtype"].as<std::string>();
  const auto dtype = parse_dtype(dtype_text, device);

  if (load) {
    std::cout << bench_load(whole_model(values), device, dtype, iters).dump(2) << std::endl;
    return 0;
  }
  if (values["nchw"].as<bool>() && values.count("run"))
    throw usage_error("--nchw is for per-step timing (generations with --run always run a CUDA UNet channels-last)");
  if (values.count("run")) {
    bench_model model;
    if (values.count("model")) {
      model = whole_model(values);
      if (values.count("scheduler-config")) throw usage_error("--model brings its scheduler: drop --scheduler-config");
    } else {
      if (!values.count("scheduler-config")) throw usage_error("--run with --model-config needs --scheduler-config DIR");
      model.denoiser_config = values["model-config"].as<std::string>();
      model.scheduler_config = values["scheduler-config"].as<std::string>();
    }
    const bench_run_settings settings{values["steps"].as<std::int64_t>(), size, warmup, device, dtype, dtype_text};
    auto report = bench_runs(values["run"].as<std::vector<std::string>>(), model, settings, values);
    if (report) {
      std::cout << report->dump(2) << std::endl;
      if (values.count("cost-profile")) {
        const auto path = values["cost-profile"].as<std::string>();
        write_cost_profile(path, cost_profile_of_runs(*report));
        spdlog::info("wrote the cost profile {}", path);
      }
    }
    return 0;
  }
  std::cout << bench_steps(values, batches).dump(2) << std::endl;
  return 0;
}

}  // namespace hybridiff::cli
