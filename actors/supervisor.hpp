#pragma once

#include <chrono>
#include <vector>

#include "actors/protocol.hpp"

namespace hybridiff::actors {

/// Spawns the supervisor of `workers` (indexed as the driver indexes them). It logs every worker it loses, with
/// the reason, and answers `lost` questions, waiting up to `grace` for a down message that has not arrived yet.
supervisor_actor spawn_supervisor(caf::actor_system& system, std::vector<worker_actor> workers,
                                  std::chrono::milliseconds grace = std::chrono::milliseconds(500));

}  // namespace hybridiff::actors
