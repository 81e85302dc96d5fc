#pragma once
// Where a process sits in a multi-process run: rank, world size, local rank and the rendezvous address, from
// flags, torchrun's environment or SLURM's. Standard library only.

#include <functional>
#include <optional>
#include <string>

namespace hybridiff::runtime {

struct process_placement {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string source = "single process";  ///< "flags", "torchrun", "slurm" or "single process"
};

/// Values given on the command line; each one overrides the environment's.
struct placement_flags {
  std::optional<int> rank, world_size, local_rank, master_port;
  std::optional<std::string> master_addr;
};

/// Reads an environment variable (nullopt when unset); tests pass their own.
using environment = std::function<std::optional<std::string>(const std::string& name)>;
environment process_environment();

/// The placement of this process. Sources, first match wins for each value: the flags; torchrun's variables
/// (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), used when RANK or WORLD_SIZE is set; SLURM's
/// (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, the first host of SLURM_JOB_NODELIST or SLURM_NODELIST, with
/// MASTER_PORT or 29500), used when SLURM_PROCID is set; else a single process (rank 0 of 1). Throws
/// hybridiff::error naming the variable or flag for a malformed value, and for rank outside [0, world_size),
/// a negative local rank or a port outside [1, 65535].
process_placement discover_placement(const environment& env, const placement_flags& flags = {});

/// The first host of a SLURM node list: "node[01-04,07],gpu3" -> "node01", "a1,b2" -> "a1", "gpu-a[3]" -> "gpu-a3".
/// Throws hybridiff::error for an empty or malformed list.
std::string first_slurm_host(const std::string& nodelist);

}  // namespace hybridiff::runtime
