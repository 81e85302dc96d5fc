#pragma once
// What one denoising step computes under the Hybridiff schedule. Standard library only.

#include <cstdint>

namespace hybridiff::schedule {

/// What a step computes.
enum class phase : std::uint8_t {
  cfg,       ///< classifier-free-guidance data parallel: each branch's full prediction, guided
  fill,      ///< first step of a pipeline window: every worker runs its whole branch and caches its activations
  pipeline,  ///< stale-activation step: each worker runs its component on the previous step's activations
};
const char* to_string(phase p);

}  // namespace hybridiff::schedule
