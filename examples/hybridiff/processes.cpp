#include "processes.hpp"

#include <algorithm>
#include <cmath>

#include "models/errors.hpp"

namespace hybridiff::cli {

po::options_description process_options() {
  po::options_description processes(
      "Several processes (started by `hybridiff launch`, torchrun or SLURM: RANK, WORLD_SIZE, MASTER_ADDR,\n"
      "MASTER_PORT; see deploy/). One worker per process on its --device; rank 0 runs the schedule, the other\n"
      "ranks serve their worker until rank 0 is done");
  // clang-format off
  processes.add_options()
      ("transport", po::value<std::string>()->default_value("auto")->value_name("T"),
       "how tensors travel between processes: nccl (GPUs), cpu (inside the CAF messages, no other port), or auto "
       "(nccl on a CUDA --device)")
      ("rendezvous-timeout", po::value<double>()->default_value(60)->value_name("S"),
       "rank 0: seconds for every other rank to register; other ranks: seconds to keep trying to reach rank 0")
      ("heartbeat-interval", po::value<double>()->default_value(0.5)->value_name("S"),
       "seconds between the heartbeats that connected processes exchange")
      ("connection-timeout", po::value<double>()->default_value(4)->value_name("S"),
       "seconds a connection may stay silent (no heartbeat, no message) before its peer is lost: a rank that "
       "vanishes without closing its connection (pulled cable, frozen host) is noticed after S to S + the "
       "heartbeat interval; at least twice --heartbeat-interval")
      ("debug-kill-after", po::value<int>()->value_name("N"),
       "fault injection, for testing deployments: this process kills itself (SIGKILL) at its N-th step (rank 0) "
       "or N-th step request (other ranks)")
      ("debug-freeze-after", po::value<int>()->value_name("N"),
       "fault injection: this process stops (SIGSTOP) there instead, its connections open but silent as across a "
       "network partition; the other ranks lose it after --connection-timeout");
  // clang-format on
  return processes;
}

actors::cluster_options cluster_options_from(const po::variables_map& values, const c10::Device& device,
                                             std::chrono::milliseconds request_timeout) {
  actors::cluster_options options;
  options.device = device;
  const auto duration = [&](const char* flag) {
    const double seconds = values[flag].as<double>();
    if (!(seconds > 0) || seconds > 1e6) throw usage_error(std::string("--") + flag + " must be in (0, 1e6] seconds");
    return std::chrono::milliseconds(std::max<std::int64_t>(1, std::llround(1000 * seconds)));
  };
  options.rendezvous_timeout = duration("rendezvous-timeout");
  options.heartbeat_interval = duration("heartbeat-interval");
  options.connection_timeout = duration("connection-timeout");
  if (options.connection_timeout < 2 * options.heartbeat_interval)
    throw usage_error(
        "--connection-timeout must be at least twice --heartbeat-interval (one late heartbeat must "
        "not lose a peer)");
  options.request_timeout = request_timeout;
  for (const char* flag : {"debug-kill-after", "debug-freeze-after"}) {
    if (!values.count(flag)) continue;
    if (options.fault.after > 0) throw usage_error("--debug-kill-after and --debug-freeze-after exclude each other");
    options.fault.after = values[flag].as<int>();
    options.fault.freeze = std::string(flag) == "debug-freeze-after";
    if (options.fault.after < 1) throw usage_error(std::string("--") + flag + " must be at least 1");
  }
  try {
    options.transport = runtime::parse_transport(values["transport"].as<std::string>(), device);
  } catch (const error& bad) {
    throw usage_error(bad.what());
  }
  return options;
}

}  // namespace hybridiff::cli
