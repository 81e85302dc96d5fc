// Composing a parallel generation from C++ with hybridiff's public API (actors/hybridiff.hpp):
// load a diffusers folder once, give each worker a replica, run the Hybridiff schedule, read the trace.
//
//   build/compose_pipeline ../shared/fixtures/tiny-sdxl "a red fox" fox.png
#include <iostream>

#include <caf/all.hpp>

#include "actors/hybridiff.hpp"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: compose_pipeline MODEL_DIR PROMPT OUTPUT.png\n";
    return 2;
  }
  try {
    // One replica per worker: both workers sit on the CPU here, so they share one.
    std::shared_ptr<hybridiff::models::diffusion_pipeline> pipeline = hybridiff::models::load_pipeline(argv[1], {});
    hybridiff::models::generation_request request;
    request.prompt = argv[2];
    request.steps = 20;
    request.guidance = 5.0;
    request.height = request.width = 32;  // the tiny fixture's size; drop these for a real SDXL folder

    hybridiff::parallel_options options;
    options.mode = hybridiff::parallel_mode::hybrid;
    options.workers = 2;
    options.model_n = 2;
    options.tau = {6, 4e-4, 4, 10};  // slope window 6, threshold 4e-4, k 4, fallback 10 (20 steps)

    caf::actor_system_config config;
    caf::actor_system system{config};
    auto result = hybridiff::generate_parallel(system, {pipeline, pipeline}, request, options);
    for (const auto& step : result.trace)
      std::cout << step.step << " " << step.mode << (step.metric ? " rel-MAE " + std::to_string(*step.metric) : "")
                << "\n";
    std::cout << "tau1 " << result.tau1.value_or(-1) << ", tau2 " << result.tau2.value_or(-1) << "\n";
    hybridiff::models::save_png(argv[3], pipeline->decode(result.latents));
  } catch (const std::exception& failure) {
    std::cerr << "compose_pipeline: " << failure.what() << "\n";
    return 1;
  }
  return 0;
}
