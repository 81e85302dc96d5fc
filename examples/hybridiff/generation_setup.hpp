#pragma once
// The one path from command-line flags to a parallel session, shared by generate, coco and bench: the model,
// sampling, device and schedule options, the replicas (one per device), the detector's defaults, and the run that
// starts the actors (and, under launch, the cluster) and hands a parallel session to the command.

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "actors/cluster.hpp"
#include "actors/hybridiff.hpp"
#include "cli.hpp"
#include "models/pipelines/pipeline.hpp"
#include "runtime/bootstrap.hpp"

namespace hybridiff::cli {

/// --model ... --dtype and the "Parallel schedule" group (with the process options). `--model` is optional: without
/// it the built-in model runs (models/builtin/fashion-diffusion) and --parallel defaults to hybrid.
std::vector<po::options_description> generation_options();

/// The "Parallel schedule" flags: --parallel, --workers, --devices, --model_n, --stride, --branch-stages, --warmup,
/// --time_shift, --cuda-graphs, the detector's --L_slope --eps_slope --k --tau_cap, --tau1 --tau2,
/// --pp-conditioning. generate and coco take them on their command line, bench inside each --run.
po::options_description schedule_options();

/// parallel_options from the schedule flags, for mode `mode`: the worker defaults of the mode, or `world` workers
/// (one per process of a multi-process run). The detector's settings stay at their defaults (they depend on the
/// model: tau_settings_from). Usage errors for bad names and for --cuda-graphs on a device other than CUDA.
parallel_options parallel_options_from(const po::variables_map& values, const std::string& mode,
                                       std::optional<int> world, const c10::Device& device);

/// The detector's settings for `pipeline` (default_tau_settings) with the flags --L_slope, --eps_slope, --k and
/// --tau_cap applied.
schedule::tau_settings tau_settings_from(const po::variables_map& values, const models::diffusion_pipeline& pipeline);

/// Model replicas of this process, one per device, each loaded at its first use; workers on one device share it.
class replica_pool {
 public:
  using loader = std::function<std::shared_ptr<models::diffusion_pipeline>(const c10::Device& device)>;
  explicit replica_pool(loader load);
  /// One replica per entry of `devices` (the same pointer for the same device).
  std::vector<std::shared_ptr<models::diffusion_pipeline>> on(const std::vector<c10::Device>& devices);

 private:
  loader load_;
  std::map<std::string, std::shared_ptr<models::diffusion_pipeline>> by_device_;
};

/// The settled options of a run, before anything is loaded.
struct generation_setup {
  runtime::process_placement process;
  bool distributed = false;
  std::filesystem::path model_dir;
  bool builtin_model = false;
  models::generation_request request;  ///< everything but the prompt
  models::load_options placement;
  parallel_options parallel;
  actors::cluster_options cluster;
  std::vector<c10::Device> devices;  ///< one per worker of this process
  po::variables_map values;
};
/// Reads and checks the options (usage errors for bad combinations); CPU workers of this process get their share
/// of the cores as intra-op threads (--threads-per-worker).
generation_setup settle_generation(const po::variables_map& values);
/// The --lora FILE[:SCALE] flags; a malformed one is a usage error.
std::vector<models::lora_spec> lora_specs_from(const po::variables_map& values);

/// Loads the replicas, settles the schedule against `probe` (the request's steps and size), starts the actor
/// system and, on rank 0 or in a single process, calls `body` with the session and worker 0's pipeline; other
/// ranks serve their worker until rank 0 finishes. Returns the seconds spent loading.
using session_body = std::function<void(parallel_session& session, models::diffusion_pipeline& pipeline)>;
double run_generation(generation_setup& setup, const models::generation_request& probe, const session_body& body);

/// "generating a 32x32 image in fp32 on cpu with 2 worker(s)": what a run does, for errors and logs.
std::string describe_run(const generation_setup& setup, const models::generation_plan& plan);

}  // namespace hybridiff::cli
