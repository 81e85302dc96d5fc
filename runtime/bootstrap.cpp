#include "runtime/bootstrap.hpp"

#include <cstdlib>

#include "models/errors.hpp"

namespace hybridiff::runtime {
namespace {

int parse_int(const std::string& text, const std::string& name) {
  std::size_t used = 0;
  long value = 0;
  try {
    value = std::stol(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size() || value < -1000000000 || value > 1000000000)
    throw error(name + "='" + text + "' is not an integer");
  return static_cast<int>(value);
}

}  // namespace

environment process_environment() {
  return [](const std::string& name) -> std::optional<std::string> {
    const char* value = std::getenv(name.c_str());
    return value != nullptr ? std::optional<std::string>(value) : std::nullopt;
  };
}

std::string first_slurm_host(const std::string& nodelist) {
  // The first entry ends at the first comma outside brackets.
  std::size_t end = 0;
  int depth = 0;
  for (; end < nodelist.size(); ++end) {
    if (nodelist[end] == '[') ++depth;
    if (nodelist[end] == ']') --depth;
    if (depth < 0 || (nodelist[end] == ',' && depth == 0)) break;
  }
  const auto entry = nodelist.substr(0, end);
  if (entry.empty() || depth < 0) throw error("SLURM node list '" + nodelist + "' is malformed");
  const auto open = entry.find('[');
  if (open == std::string::npos) return entry;
  const auto close = entry.find(']', open);
  if (open == 0 || close == std::string::npos) throw error("SLURM node list '" + nodelist + "' is malformed");
  // The first number of the range list keeps its zero padding: "node[01-04]" -> "node01".
  const auto ranges = entry.substr(open + 1, close - open - 1);
  const auto first = ranges.substr(0, ranges.find_first_of(",-"));
  if (first.empty() || first.find_first_not_of("0123456789") != std::string::npos)
    throw error("SLURM node list '" + nodelist + "' is malformed");
  return entry.substr(0, open) + first + entry.substr(close + 1);
}

process_placement discover_placement(const environment& env, const placement_flags& flags) {
  process_placement placement;
  auto number = [&](const std::string& name) -> std::optional<int> {
    if (auto value = env(name)) return parse_int(*value, name);
    return std::nullopt;
  };
  if (env("RANK") || env("WORLD_SIZE")) {
    placement.source = "torchrun";
    placement.rank = number("RANK").value_or(0);
    placement.world_size = number("WORLD_SIZE").value_or(1);
    placement.local_rank = number("LOCAL_RANK").value_or(placement.rank);
    placement.master_addr = env("MASTER_ADDR").value_or(placement.master_addr);
    placement.master_port = number("MASTER_PORT").value_or(placement.master_port);
  } else if (env("SLURM_PROCID")) {
    placement.source = "slurm";
    placement.rank = *number("SLURM_PROCID");
    placement.world_size = number("SLURM_NTASKS").value_or(1);
    placement.local_rank = number("SLURM_LOCALID").value_or(0);
    if (auto nodes = env("SLURM_JOB_NODELIST") ? env("SLURM_JOB_NODELIST") : env("SLURM_NODELIST"))
      placement.master_addr = first_slurm_host(*nodes);
    placement.master_addr = env("MASTER_ADDR").value_or(placement.master_addr);
    placement.master_port = number("MASTER_PORT").value_or(placement.master_port);
  }
  const bool flagged = flags.rank || flags.world_size || flags.local_rank || flags.master_addr || flags.master_port;
  if (flagged) placement.source = "flags";
  placement.rank = flags.rank.value_or(placement.rank);
  placement.world_size = flags.world_size.value_or(placement.world_size);
  placement.local_rank = flags.local_rank.value_or(placement.local_rank);
  placement.master_addr = flags.master_addr.value_or(placement.master_addr);
  placement.master_port = flags.master_port.value_or(placement.master_port);

  const auto where = " (from " + placement.source + ")";
  if (placement.world_size < 1) throw error("world size " + std::to_string(placement.world_size) + " must be >= 1" + where);
  if (placement.rank < 0 || placement.rank >= placement.world_size)
    throw error("rank " + std::to_string(placement.rank) + " is outside [0, " + std::to_string(placement.world_size) +
                ")" + where);
  if (placement.local_rank < 0) throw error("local rank " + std::to_string(placement.local_rank) + " is negative" + where);
  if (placement.master_port < 1 || placement.master_port > 65535)
    throw error("master port " + std::to_string(placement.master_port) + " is outside [1, 65535]" + where);
  if (placement.master_addr.empty()) throw error("the master address is empty" + where);
  return placement;
}

}  // namespace hybridiff::runtime
