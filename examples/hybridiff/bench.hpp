#pragma once
// The two halves of `hybridiff bench`: per-step denoiser timing (bench_steps.cpp) and whole generations per
// schedule (bench_runs.cpp). bench_command.cpp parses the command line and picks one.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "models/io/lora.hpp"

namespace hybridiff::cli {

/// Waits for `device`'s queued work (a no-op on the CPU): what a timing around GPU work must do before reading
/// the clock.
void synchronize(const c10::Device& device);

/// The q-quantile (0 <= fraction <= 1) of `samples`, linearly interpolated; `samples` must not be empty.
double percentile(std::vector<double> samples, double fraction);

/// What the runs generate with: a diffusers folder (text encoders, denoiser, VAE: end-to-end times), or a
/// denoiser config and a scheduler config (random weights, random conditioning, no VAE: denoising times).
struct bench_model {
  std::filesystem::path folder;
  std::string variant;                   ///< the folder's weight-file variant (empty: plain files, or its only variant)
  std::vector<models::lora_spec> loras;  ///< merged at load
  std::filesystem::path config_from;     ///< a single-file checkpoint's configs and tokenizers
  std::filesystem::path denoiser_config, scheduler_config;

  bool whole() const { return !folder.empty(); }
  std::string name() const { return (whole() ? folder : denoiser_config).string(); }
};

/// The common settings of the whole-generation runs.
struct bench_run_settings {
  std::int64_t steps = 50, size = 1024, warmup = 1;  ///< warmup: untimed images per run
  c10::Device device = c10::Device(c10::kCPU);
  precision dtype{at::kHalf, false};
  std::string dtype_text;
};

/// Times whole generations for each run (`texts`: "MODE [schedule flags]" as generate spells them): `warmup`
/// untimed images, then one timed, each run in a parallel session of its own over replicas shared by all runs
/// (one per device). Under `hybridiff launch` (WORLD_SIZE N > 1) rank 0 times the runs: a run of N workers puts
/// one on each process (the others serve theirs), a run of 1 worker stays on rank 0; the other ranks return
/// nothing. Every run is checked before any model is built (usage errors naming the run).
std::optional<nlohmann::json> bench_runs(const std::vector<std::string>& texts, const bench_model& model,
                                         const bench_run_settings& settings, const po::variables_map& values);

/// Times loading `model` onto `device` in `dtype` (all components, as generate's rank 0 loads them), `iters` times
/// without its LoRAs and, when it has some, `iters` times with them (alternating): JSON with each load's seconds, the
/// medians, and the median difference as the LoRA merge's cost.
nlohmann::json bench_load(const bench_model& model, const c10::Device& device, const precision& dtype,
                          std::int64_t iters);

/// Per-step timing of the denoiser that `values["model-config"]` describes (random weights): JSON with the
/// median, p10 and p90 step latency per batch size, optionally CUDA graphs and a kernel profile.
nlohmann::json bench_steps(const po::variables_map& values, const std::vector<std::int64_t>& batches);

}  // namespace hybridiff::cli
