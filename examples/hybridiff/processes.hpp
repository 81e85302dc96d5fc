#pragma once
// The command-line side of multi-process runs, shared by generate and bench.

#include <chrono>

#include "actors/cluster.hpp"
#include "cli.hpp"
#include "runtime/bootstrap.hpp"

namespace hybridiff::cli {

/// --transport, --rendezvous-timeout, --debug-kill-after.
po::options_description process_options();

/// Those flags' values for this process's worker on `device`; every remote request ends after `request_timeout`.
actors::cluster_options cluster_options_from(const po::variables_map& values, const c10::Device& device,
                                             std::chrono::milliseconds request_timeout);

}  // namespace hybridiff::cli
