// Process placement from flags, torchrun's and SLURM's environments.
#include "runtime/bootstrap.hpp"

#include <gtest/gtest.h>

#include <map>

#include "models/errors.hpp"

namespace hybridiff::runtime {
namespace {

environment fake(std::map<std::string, std::string> values) {
  return [values](const std::string& name) -> std::optional<std::string> {
    auto found = values.find(name);
    return found == values.end() ? std::nullopt : std::optional<std::string>(found->second);
  };
}

TEST(Bootstrap, NothingSetIsASingleProcess) {
  auto placement = discover_placement(fake({}));
  EXPECT_EQ(placement.rank, 0);
  EXPECT_EQ(placement.world_size, 1);
  EXPECT_EQ(placement.source, "single process");
}

TEST(Bootstrap, TorchrunEnvironment) {
  auto placement = discover_placement(fake({{"RANK", "3"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "1"},
                                            {"MASTER_ADDR", "10.0.0.7"}, {"MASTER_PORT", "29511"}}));
  EXPECT_EQ(placement.rank, 3);
  EXPECT_EQ(placement.world_size, 4);
  EXPECT_EQ(placement.local_rank, 1);
  EXPECT_EQ(placement.master_addr, "10.0.0.7");
  EXPECT_EQ(placement.master_port, 29511);
  EXPECT_EQ(placement.source, "torchrun");
}

TEST(Bootstrap, SlurmEnvironmentTakesTheFirstNodeAsMaster) {
  auto placement = discover_placement(fake({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "8"}, {"SLURM_LOCALID", "1"},
                                            {"SLURM_JOB_NODELIST", "gpu[03-04,07],login1"}}));
  EXPECT_EQ(placement.rank, 5);
  EXPECT_EQ(placement.world_size, 8);
  EXPECT_EQ(placement.local_rank, 1);
  EXPECT_EQ(placement.master_addr, "gpu03");
  EXPECT_EQ(placement.master_port, 29500);
  EXPECT_EQ(placement.source, "slurm");
}

TEST(Bootstrap, FlagsOverrideTheEnvironment) {
  placement_flags flags;
  flags.rank = 1;
  flags.master_port = 4000;
  auto placement = discover_placement(fake({{"RANK", "0"}, {"WORLD_SIZE", "2"}}), flags);
  EXPECT_EQ(placement.rank, 1);
  EXPECT_EQ(placement.world_size, 2);
  EXPECT_EQ(placement.master_port, 4000);
  EXPECT_EQ(placement.source, "flags");
}

TEST(Bootstrap, FirstSlurmHost) {
  EXPECT_EQ(first_slurm_host("node01"), "node01");
  EXPECT_EQ(first_slurm_host("node[01-04,07],gpu3"), "node01");
  EXPECT_EQ(first_slurm_host("a1,b2"), "a1");
  EXPECT_EQ(first_slurm_host("gpu-a[3]"), "gpu-a3");
  EXPECT_EQ(first_slurm_host("rack[2-3]-ib"), "rack2-ib");
  for (const char* bad : {"", "[1-2]", "node[", "node[x]", "node]"}) EXPECT_THROW(first_slurm_host(bad), error) << bad;
}

TEST(Bootstrap, BadValuesNameTheVariable) {
  auto message = [](std::map<std::string, std::string> values) {
    try {
      discover_placement(fake(std::move(values)));
    } catch (const error& failure) {
      return std::string(failure.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message({{"RANK", "two"}, {"WORLD_SIZE", "4"}}).find("RANK='two' is not an integer"), std::string::npos);
  EXPECT_NE(message({{"RANK", "4"}, {"WORLD_SIZE", "4"}}).find("rank 4 is outside [0, 4) (from torchrun)"),
            std::string::npos);
  EXPECT_NE(message({{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"MASTER_PORT", "70000"}}).find("master port 70000"),
            std::string::npos);
  EXPECT_NE(message({{"SLURM_PROCID", "0"}, {"SLURM_NODELIST", "n[1-"}}).find("SLURM node list 'n[1-' is malformed"),
            std::string::npos);
}

}  // namespace
}  // namespace hybridiff::runtime
