#pragma once

#include <vector>

#include "actors/protocol.hpp"
#include "schedule/tau_controller.hpp"

namespace hybridiff::actors {

/// Spawns the tau controller: it owns a schedule::tau_controller and, when a decision moves the next step into or
/// out of the pipeline window, tells every worker to `become` a pipeline stage or a CFG branch before it answers
/// the driver — so the schedule emerges from the workers' behaviour changes.
tau_controller_actor spawn_tau_controller(caf::actor_system& system, schedule::schedule_settings settings,
                                          std::vector<worker_actor> workers);

}  // namespace hybridiff::actors
