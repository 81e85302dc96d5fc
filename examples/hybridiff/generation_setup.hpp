#pragma once
// What `generate` and `coco` share: the model, sampling, device and schedule options, and the run that loads the
// replicas, starts the actors (and, under launch, the cluster) and hands a parallel session to the command.

#include <filesystem>
#include <functional>
#include <memory>
#include <vector>

#include "actors/cluster.hpp"
#include "actors/hybridiff.hpp"
#include "cli.hpp"
#include "models/pipeline.hpp"
#include "runtime/bootstrap.hpp"

namespace hybridiff::cli {

/// --model ... --dtype and the "Parallel schedule" group (with the process options). `--model` is optional: without
/// it the built-in model runs (models/builtin/fashion-diffusion) and --parallel defaults to hybrid.
std::vector<po::options_description> generation_options();

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
/// Reads and checks the options (usage errors for bad combinations).
generation_setup settle_generation(const po::variables_map& values);

/// Loads the replicas, settles the schedule against `probe` (the request's steps and size), starts the actor
/// system and, on rank 0 or in a single process, calls `body` with the session and worker 0's pipeline; other
/// ranks serve their worker until rank 0 finishes. Returns the seconds spent loading.
using session_body = std::function<void(parallel_session& session, models::diffusion_pipeline& pipeline)>;
double run_generation(generation_setup& setup, const models::generation_request& probe, const session_body& body);

/// "generating a 32x32 image in fp32 on cpu with 2 worker(s)": what a run does, for errors and logs.
std::string describe_run(const generation_setup& setup, const models::generation_plan& plan);

}  // namespace hybridiff::cli
