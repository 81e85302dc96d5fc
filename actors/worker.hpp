#pragma once

#include <memory>

#include "actors/protocol.hpp"

namespace hybridiff::runtime {
class stage_worker;
}

namespace hybridiff::actors {

/// Spawns a detached worker actor (its own thread: a GPU worker blocks while it computes) around `worker`,
/// starting in the `cfg_branch` behaviour. Exceptions inside a request become an error reply naming the worker.
worker_actor spawn_worker(caf::actor_system& system, std::shared_ptr<runtime::stage_worker> worker);

}  // namespace hybridiff::actors
