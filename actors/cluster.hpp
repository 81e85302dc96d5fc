#pragma once
// One image over several processes. Rank 0 hosts the driver, the tau controller and the supervisor and publishes
// a registry with CAF's middleman on MASTER_PORT; every other rank connects (retrying until a deadline), registers
// the actor that hosts its worker, and opens a tensor link to rank 0 (runtime/tensor_link.hpp) with the offer it
// got back. On rank 0 each remote worker is represented by a proxy with the worker's interface: the driver cannot
// tell a remote worker from a local one. CAF messages carry control data and tensor descriptions; tensor data
// travels over the links (NCCL: sent before the message that announces it) or, with the cpu transport, in the
// message itself.

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "actors/protocol.hpp"
#include "runtime/bootstrap.hpp"
#include "runtime/tensor_link.hpp"

namespace hybridiff::models {
class diffusion_pipeline;
}

namespace hybridiff::runtime {
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, tensor_meta& x) {
  return f(caf::meta::type_name("tensor_meta"), x.name, x.dtype, x.shape, x.channels_last);
}
}  // namespace hybridiff::runtime

namespace hybridiff::actors {

/// What a CAF message carries of the tensors it announces: their descriptions and, with the cpu transport, their
/// bytes (what runtime::tensor_link::send returned; empty with NCCL, which carries the data itself).
struct tensor_parcel {
  std::vector<runtime::tensor_meta> metas;
  std::string bytes;
};
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, tensor_parcel& x) {
  return f(caf::meta::type_name("tensor_parcel"), x.metas, x.bytes);
}

using register_atom = caf::atom_constant<caf::atom("register")>;  ///< a rank's worker host reports to rank 0
using collect_atom = caf::atom_constant<caf::atom("collect")>;    ///< rank 0: wait until every rank registered
using missing_atom = caf::atom_constant<caf::atom("missing")>;    ///< rank 0: the ranks that have not registered
using call_atom = caf::atom_constant<caf::atom("call")>;          ///< a step request to a remote worker
using done_atom = caf::atom_constant<caf::atom("done")>;          ///< the run is over: a worker rank exits

/// Remote step kinds in call messages.
enum class remote_call : std::int32_t { predict = 0, fill = 1, stage = 2, next_cfg = 3, next_stage = 4 };

/// Fault injection for testing deployments: at its `after`-th step (rank 0) or step request (other ranks) a process
/// kills itself (SIGKILL: the OS closes its connections) or, with `freeze`, stops (SIGSTOP: its connections stay open
/// and silent, as across a network partition). `after` 0: never.
struct debug_fault {
  int after = 0;
  bool freeze = false;
  /// Raises the fault once `count` reaches `after`; `where` names the step in the warning logged first.
  void trigger_at(int count, const std::string& where) const;
};

struct cluster_options {
  runtime::transport_kind transport = runtime::transport_kind::cpu;
  c10::Device device = c10::kCPU;  ///< this process's worker device (where received tensors land)
  /// rank 0: how long every other rank has to register; other ranks: how long to keep trying to reach rank 0.
  std::chrono::milliseconds rendezvous_timeout{std::chrono::seconds(60)};
  /// every remote request and every tensor transfer; never infinite.
  std::chrono::milliseconds request_timeout{std::chrono::minutes(10)};
  /// How often connected processes exchange heartbeats, and how long a connection may stay silent before its peer
  /// is lost (its actors then send down messages, as when its process dies): a peer that vanishes without closing
  /// its connection (a pulled cable, a frozen host) is lost after connection_timeout to connection_timeout +
  /// heartbeat_interval.
  std::chrono::milliseconds heartbeat_interval{500};
  std::chrono::milliseconds connection_timeout{4000};
  /// How long the end of a process_run waits for its actor system to shut down (below; it takes well under a
  /// second when it does): less than `launch --grace`, so a rank ends with its own exit code before SIGKILL.
  std::chrono::milliseconds shutdown_grace{std::chrono::seconds(3)};
  debug_fault fault;
};

/// Loads CAF's middleman with `options`' heartbeats and registers every type that crosses processes. Call on the
/// configuration of every process of a multi-process run (CAF 0.17 turns unregistered types into empty messages
/// across nodes). Throws hybridiff::error unless 0 < 2 × heartbeat_interval <= connection_timeout.
void configure_cluster(caf::actor_system_config& config, const cluster_options& options = {});

/// Rank 0's side: publishes the registry on placement.master_port, waits for ranks 1 .. world_size − 1, opens a
/// link to each and spawns one proxy worker per rank. Throws hybridiff::error when the port cannot be opened or a
/// rank does not register within rendezvous_timeout (naming the missing ranks). The destructor tells every rank
/// that the run is over.
class cluster_host {
 public:
  cluster_host(caf::actor_system& system, const runtime::process_placement& placement, const cluster_options& options);
  ~cluster_host();
  cluster_host(const cluster_host&) = delete;
  cluster_host& operator=(const cluster_host&) = delete;

  /// The proxies of the workers of ranks 1 .. world_size − 1, in rank order.
  const std::vector<worker_actor>& workers() const { return proxies_; }
  std::uint16_t port() const { return port_; }

 private:
  caf::actor_system& system_;
  std::unique_ptr<runtime::link_factory> links_;
  caf::actor registry_;
  std::vector<caf::actor> hosts_;
  std::vector<worker_actor> proxies_;
  std::uint16_t port_ = 0;
};

/// A worker rank's side: connects to rank 0 (retrying until rendezvous_timeout), registers, opens its link and
/// serves its worker (on `replica`) until rank 0 says the run is over. Throws hybridiff::error when rank 0 cannot
/// be reached, refuses the registration, or is lost.
void serve_worker(caf::actor_system& system, const runtime::process_placement& placement,
                  std::shared_ptr<models::diffusion_pipeline> replica, const cluster_options& options);

/// This process's part of a run, alone or as one rank of several: its actor system (configured with
/// configure_cluster when placement.world_size > 1) and, on rank 0 of several, the cluster host, started with it
/// (so constructing one on rank 0 waits for every other rank). On another rank, `serves_rank_zero()` is true and the
/// caller hands `serve` its replica.
///
/// Its end never hangs: CAF 0.17.6's actor_system destructor can wait forever for the thread of a detached actor
/// that has quit, until the actor's last reference goes (seen about once in a dozen two-process CPU runs, stuck in
/// `await_detached_threads`; CAF fixed a race there after 0.17). The system is destroyed on a thread of its own; when
/// that takes longer than `shutdown_grace`, the process goes on without it, logs a warning, and
/// `actor_system_abandoned()` turns true: the program should then end with std::_Exit (static destructors would run
/// beside the stuck thread). The calling thread's reference to the system's logger (CAF's spawn sets one, and the
/// destructor waits for the logger's end) is dropped first: actors spawned by the caller do not hold the end up.
class process_run {
 public:
  process_run(const runtime::process_placement& placement, const cluster_options& options);
  ~process_run();
  process_run(const process_run&) = delete;
  process_run& operator=(const process_run&) = delete;

  bool serves_rank_zero() const { return placement_.world_size > 1 && placement_.rank != 0; }
  /// serve_worker with this process's system, placement and options.
  void serve(std::shared_ptr<models::diffusion_pipeline> replica);
  caf::actor_system& system() { return *system_; }
  /// Rank 0 of several processes: the host of the other ranks' workers; otherwise null.
  cluster_host* cluster() { return cluster_.get(); }

 private:
  runtime::process_placement placement_;
  cluster_options options_;
  // On the heap: a system whose shutdown hangs is left to its thread, with the configuration it refers to.
  std::unique_ptr<caf::actor_system_config> config_;
  std::unique_ptr<caf::actor_system> system_;
  std::unique_ptr<cluster_host> cluster_;
};

/// Whether a process_run of this process left its actor system shutting down (see process_run).
bool actor_system_abandoned();

}  // namespace hybridiff::actors
