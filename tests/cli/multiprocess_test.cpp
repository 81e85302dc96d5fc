// Several processes, one image: `hybridiff launch` and hand-started ranks over the CPU transport (loopback), as a
// user runs them. The reference is the same schedule with every worker in one process (itself checked against
// hand compositions in tests/actors).
#include <chrono>
#include <fstream>
#include <regex>
#include <thread>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "cli/run_binary.hpp"
#include "models/io/image_io.hpp"
#include "test_support.hpp"

namespace hybridiff {
namespace {

using test::quoted;
using test::run_hybridiff;
using test::free_port_pair;
using test::run_shell;

std::string model_folder(const std::string& name) { return quoted(test::fixtures_dir() / name); }

struct distributed_case {
  std::string model;
  std::string schedule;  // the --parallel value and its flags
  int processes;
};

std::ostream& operator<<(std::ostream& out, const distributed_case& c) {
  return out << c.model << " '" << c.schedule << "' on " << c.processes << " processes";
}

class MultiProcess : public ::testing::TestWithParam<distributed_case> {};

TEST_P(MultiProcess, GivesTheSameLatentsAsOneProcess) {
  const auto& c = GetParam();
  test::temp_dir dir;
  const auto request = "generate --model " + model_folder(c.model) +
                       " --prompt 'a red fox in the snow' --steps 12 --image_size 64 --seed 3 --parallel " + c.schedule;
  auto one = run_hybridiff(request + " --workers " + std::to_string(c.processes) + " --save-latents " +
                           quoted(dir / "one.safetensors") + " --output " + quoted(dir / "one.png"));
  ASSERT_EQ(one.exit_code, 0) << one.output;
  auto many = run_hybridiff("launch --nproc " + std::to_string(c.processes) + " --master-port " +
                            std::to_string(free_port_pair()) + " -- " + request + " --transport cpu --save-latents " +
                            quoted(dir / "many.safetensors") + " --output " + quoted(dir / "many.png"));
  ASSERT_EQ(many.exit_code, 0) << many.output;
  EXPECT_EQ(many.output.find("was lost"), std::string::npos) << many.output;  // the run's end is no loss
  EXPECT_NE(many.output.find(std::to_string(c.processes - 1) + " remote worker(s) joined over the cpu transport"),
            std::string::npos)
      << many.output;
  // launch gave each process its share of the cores, unless OMP_NUM_THREADS chose already.
  const char* chosen = std::getenv("OMP_NUM_THREADS");
  const auto share = chosen ? std::stoul(chosen) : std::max(1u, std::thread::hardware_concurrency() / static_cast<unsigned>(c.processes));
  EXPECT_NE(many.output.find(", " + std::to_string(share) + " CPU thread(s) per worker"), std::string::npos)
      << many.output;
  // The same arithmetic in the same order on the same CPU: 1e-5 relative (the contract between modes).
  EXPECT_LT(test::relative_error(models::load_named_tensor(dir / "many.safetensors", "latents"),
                                 models::load_named_tensor(dir / "one.safetensors", "latents")),
            1e-5);
}

INSTANTIATE_TEST_SUITE_P(
    Modes, MultiProcess,
    ::testing::Values(distributed_case{"tiny-sdxl", "cfg", 2}, distributed_case{"tiny-sdxl", "asyncdiff", 2},
                      distributed_case{"tiny-sdxl", "hybrid --tau1 4 --tau2 8", 2},
                      distributed_case{"tiny-sdxl", "hybrid --tau1 4 --tau2 8 --scheduler dpm++2m", 2},
                      distributed_case{"tiny-sdxl", "hybrid --L_slope 3 --tau_cap 5 --k 3", 2},
                      distributed_case{"tiny-sd3", "hybrid --tau1 4 --tau2 8", 2},
                      distributed_case{"tiny-sdxl", "cfg", 4},
                      distributed_case{"tiny-sdxl", "hybrid --tau1 4 --tau2 8", 4},
                      distributed_case{"tiny-sdxl", "asyncdiff --model_n 3 --stride 2", 4}));

TEST(MultiProcessSlurm, SlurmsVariablesAloneAreEnough) {
  // What srun sets for a 2-task step on one node (deploy/slurm): no RANK, WORLD_SIZE or MASTER_ADDR.
  test::temp_dir dir;
  const auto request = " generate --model " + model_folder("tiny-sdxl") +
                       " --prompt 'a red fox' --steps 8 --image_size 64 --parallel hybrid --tau1 2 --tau2 5 --output " +
                       quoted(dir / "x.png") + " --save-latents ";
  auto one = run_hybridiff(request + quoted(dir / "one.safetensors"));
  ASSERT_EQ(one.exit_code, 0) << one.output;
  const auto env = "SLURM_NTASKS=2 SLURM_JOB_NODELIST=localhost MASTER_PORT=" + std::to_string(free_port_pair());
  auto rank = [&](int r) {
    return env + " SLURM_PROCID=" + std::to_string(r) + " SLURM_LOCALID=" + std::to_string(r) + " timeout 120 " +
           test::hybridiff_binary() + request + quoted(dir / ("rank" + std::to_string(r) + ".safetensors"));
  };
  auto both = run_shell("(" + rank(1) + ") & " + rank(0) + "; status=$?; wait $!; exit $(( status | $? ))");
  ASSERT_EQ(both.exit_code, 0) << both.output;
  EXPECT_NE(both.output.find("rank 1 of 2 (slurm), rank 0 at localhost:"), std::string::npos) << both.output;
  EXPECT_LT(test::relative_error(models::load_named_tensor(dir / "rank0.safetensors", "latents"),
                                 models::load_named_tensor(dir / "one.safetensors", "latents")),
            1e-5);
}

TEST(MultiProcessSlurm, TheSbatchRecipeRunsOnALocalSlurmCluster) {
  // deploy/slurm/hybridiff.sbatch as a user submits it, on a real slurmctld with two slurmd (nodes n1, n2) on this
  // machine: 2 tasks on 2 nodes, the built-in model on CPUs.
  test::temp_dir dir;
  const auto deploy = std::filesystem::path(HYBRIDIFF_SOURCE_DIR) / "deploy/slurm";
  int ports = free_port_pair();  // slurmctld, n1's and n2's slurmd: three consecutive free ports
  for (int tries = 0; tries < 100; ++tries) {
    const int next = free_port_pair();
    if (next == ports + 2) break;
    ports = next;
  }
  const auto cluster = "SLURM_BASE_PORT=" + std::to_string(ports) + " " + quoted(deploy / "local-cluster.sh");
  auto started = run_shell("timeout 60 env " + cluster + " start " + quoted(dir / "cluster"));
  if (started.exit_code == 77) GTEST_SKIP() << started.output;
  struct stop_cluster {
    std::string command;
    ~stop_cluster() { run_shell(command); }
  } stop{cluster + " stop " + quoted(dir / "cluster")};
  ASSERT_EQ(started.exit_code, 0) << started.output;
  auto job = run_shell("cd " + quoted(dir.path()) + " && SLURM_CONF=" + quoted(dir / "cluster/slurm.conf") +
                       " HYBRIDIFF=" + test::hybridiff_binary() +
                       " PROMPT=sneaker DEVICE=cpu DTYPE=fp32 MASTER_PORT=" + std::to_string(free_port_pair()) +
                       " EXTRA_FLAGS='--seed 5 --save-latents " + (dir / "slurm.safetensors").string() +
                       "' timeout 120 sbatch --wait --time=2 --nodes=2 --ntasks-per-node=1 --cpus-per-task=1 "
                       "--output=job.log " +
                       quoted(deploy / "hybridiff.sbatch") + "; status=$?; cat job.log; exit $status");
  ASSERT_EQ(job.exit_code, 0) << job.output;
  EXPECT_TRUE(std::regex_search(job.output, std::regex("rank 1 of 2 \\(slurm\\), rank 0 at 127\\.0\\.0\\.1:[0-9]+")))
      << job.output;
  EXPECT_NE(job.output.find("1 remote worker(s) joined over the cpu transport"), std::string::npos) << job.output;
  auto one = run_hybridiff("generate --prompt sneaker --seed 5 --parallel hybrid --workers 2 --output " +
                           quoted(dir / "one.png") + " --save-latents " + quoted(dir / "one.safetensors"));
  ASSERT_EQ(one.exit_code, 0) << one.output;
  EXPECT_LT(test::relative_error(models::load_named_tensor(dir / "slurm.safetensors", "latents"),
                                 models::load_named_tensor(dir / "one.safetensors", "latents")),
            1e-5);
}

TEST(MultiProcessHosts, TwoNetworkNamespacesJoinedByAVethPair) {
  test::temp_dir dir;
  const auto request = " --model " + model_folder("tiny-sdxl") +
                       " --prompt 'a red fox' --steps 8 --image_size 64 --parallel hybrid --tau1 2 --tau2 5";
  auto hosts = run_shell(quoted(std::filesystem::path(HYBRIDIFF_TESTS_DIR) / "cli/two_hosts.sh") + " " +
                         test::hybridiff_binary() + " " + quoted(dir.path()) + request);
  if (hosts.exit_code == 77) GTEST_SKIP() << hosts.output;
  ASSERT_EQ(hosts.exit_code, 0) << hosts.output;
  EXPECT_TRUE(std::regex_search(hosts.output, std::regex("rank 1 of 2 \\(torchrun\\), rank 0 at 127\\.100\\.[0-9]+\\.1:29500")))
      << hosts.output;
  auto one = run_hybridiff("generate" + request + " --output " + quoted(dir / "one.png") + " --save-latents " +
                           quoted(dir / "one.safetensors"));
  ASSERT_EQ(one.exit_code, 0) << one.output;
  EXPECT_LT(test::relative_error(models::load_named_tensor(dir / "rank0.safetensors", "latents"),
                                 models::load_named_tensor(dir / "one.safetensors", "latents")),
            1e-5);
}

// The time of day of the log line holding `text` ([HH:MM:SS.mmm] prefix), in seconds.
double logged_at(const std::string& output, const std::string& text) {
  std::smatch match;
  std::regex line("\\[(\\d+):(\\d+):(\\d+\\.\\d+)\\] [^\\n]*" + text);
  if (!std::regex_search(output, match, line)) throw std::runtime_error("no log line with '" + text + "'");
  return std::stoi(match[1]) * 3600.0 + std::stoi(match[2]) * 60.0 + std::stod(match[3]);
}

TEST(MultiProcessHosts, ACutLinkIsNoticedWithinSecondsOnBothSides) {
  // The veth pair goes down mid-image: no packet passes and no connection closes, so only the missing heartbeats
  // tell the ranks (--connection-timeout, 4 s by default; the ranks' request timeout is 10 min).
  test::temp_dir dir;
  auto hosts = run_shell("CUT_AFTER='step 10: request in' " +
                         quoted(std::filesystem::path(HYBRIDIFF_TESTS_DIR) / "cli/two_hosts.sh") + " " +
                         test::hybridiff_binary() + " " + quoted(dir.path()) + " --model " + model_folder("tiny-sdxl") +
                         " --prompt fox --steps 30 --image_size 64 --parallel cfg --transport cpu --log-level trace");
  if (hosts.exit_code == 77) GTEST_SKIP() << hosts.output;
  ASSERT_NE(hosts.output.find("rank 0 exit 0, rank 1 exit 1"), std::string::npos) << hosts.output;
  EXPECT_NE(hosts.output.find("finishing the image on worker 0 in sequential CFG"), std::string::npos) << hosts.output;
  EXPECT_TRUE(std::regex_search(hosts.output, std::regex("rank 1: rank 0 at 127\\.100\\.[0-9]+\\.1:29500 was lost")))
      << hosts.output;
  const double cut = logged_at(hosts.output, "cut the link between the hosts");
  const double rank_zero_noticed = logged_at(hosts.output, "rank 1 was lost") - cut;
  const double rank_one_noticed = logged_at(hosts.output, "rank 0 at [0-9.:]+ was lost") - cut;
  std::cout << "noticed " << rank_zero_noticed << " s (rank 0), " << rank_one_noticed << " s (rank 1) after the cut\n";
  EXPECT_GT(rank_zero_noticed, 0.0) << hosts.output;
  EXPECT_LT(rank_zero_noticed, 10.0) << hosts.output;
  EXPECT_GT(rank_one_noticed, 0.0) << hosts.output;
  EXPECT_LT(rank_one_noticed, 10.0) << hosts.output;
}

// Two ranks started by hand (as a cluster's own launcher would), each under `timeout` so that a hang fails the
// test instead of blocking it. Returns the combined output of both; `extra0`/`extra1` are each rank's own flags.
// Rank `waited` runs in the foreground; `after` runs once it has exited, before waiting for the other rank (it may
// signal a rank's process: rankR.pid in `dir` holds the id of rank R's `timeout`, whose child is the rank).
// Rank r of `world` hand-started processes of one `generate` (tiny SDXL, 30 steps, --transport cpu), writing its
// log to DIR/rankR.log (ending "rank R exit STATUS") and its pid to DIR/rankR.pid.
struct hand_started_ranks {
  const test::temp_dir& dir;
  std::string env, common;

  hand_started_ranks(const test::temp_dir& dir, int world, const std::string& schedule)
      : dir(dir),
        env("WORLD_SIZE=" + std::to_string(world) +
            " MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(free_port_pair())),
        common("generate --model " + model_folder("tiny-sdxl") +
               " --prompt fox --steps 30 --image_size 64 --parallel " + schedule + " --transport cpu --trace " +
               quoted(dir / "trace.csv") + " --output " + quoted(dir / "out.png")) {}

  std::string rank(int r, const std::string& extra) const {
    const auto file = [&](const std::string& suffix) { return quoted(dir / ("rank" + std::to_string(r) + suffix)); };
    return "(" + env + " RANK=" + std::to_string(r) + " timeout 120 " + test::hybridiff_binary() + " " + common + " " +
           extra + " > " + file(".log") + " 2>&1 & echo $! > " + file(".pid") + "; wait $!; echo \"rank " +
           std::to_string(r) + " exit $?\" >> " + file(".log") + ")";
  }
  std::string log(int r) const { return quoted(dir / ("rank" + std::to_string(r) + ".log")); }
};

test::run_result run_two_ranks(const test::temp_dir& dir, const std::string& extra0, const std::string& extra1,
                               const std::string& after = ":", int waited = 0, const std::string& schedule = "cfg") {
  const hand_started_ranks ranks(dir, 2, schedule);
  const int other = 1 - waited;
  return run_shell(ranks.rank(other, other == 0 ? extra0 : extra1) + " & " +
                   ranks.rank(waited, waited == 0 ? extra0 : extra1) + "; " + after + "; wait; cat " + ranks.log(0) +
                   " " + ranks.log(1));
}

// The mode of every step in the trace written by hand-started ranks, space-separated.
std::string traced_modes(const test::temp_dir& dir) {
  std::ifstream trace(dir / "trace.csv");
  std::string row, modes;
  std::getline(trace, row);
  while (std::getline(trace, row))
    modes += row.substr(row.find(',') + 1, row.find(',', row.find(',') + 1) - row.find(',') - 1) + " ";
  return modes;
}

TEST(MultiProcessFaults, AKilledWorkerRankIsReportedAndRankZeroFinishesDegraded) {
  test::temp_dir dir;
  auto result = run_two_ranks(dir, "", "--debug-kill-after 5");
  EXPECT_NE(result.output.find("rank 1 exit 137"), std::string::npos) << result.output;  // SIGKILL
  EXPECT_NE(result.output.find("rank 0 exit 0"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("finishing the image on worker 0 in sequential CFG"), std::string::npos) << result.output;
  // Rank 0 noticed within 10 s of the kill (the connection closed: no request timeout involved).
  EXPECT_LT(logged_at(result.output, "rank 1 was lost") - logged_at(result.output, "killing this process"), 10.0)
      << result.output;
  // The first steps on both ranks, then rank 0 alone from the step that failed on. Rank 1's fifth call asks for
  // step 4's prediction (run_cfg at step 0, next_cfg from then on); the driver sends it once rank 1's answer for
  // step 3 is in, so the kill comes after that answer: from step 4 on, rank 0 is alone.
  std::string degraded_from_4;
  for (int step = 0; step < 30; ++step) degraded_from_4 += step < 4 ? "cfg " : "cfg-degraded ";
  EXPECT_EQ(traced_modes(dir), degraded_from_4);
}

TEST(MultiProcessFaults, AStageRankKilledInAWindowRunLeavesRankZeroToFinishDegraded) {
  // Hybrid with its window at steps 2-20: rank 1's calls are run_cfg (step 0), next_cfg (1), fill (2), run_window
  // (3) and next_stage (4), which kills it. Rank 0's stage computes step 4 on the outputs rank 1 handed over with
  // its step 3, then waits for rank 1's step 4: the lost rank fails it (rank 0's stand-in is gone), and rank 0
  // finishes alone from step 4 instead of waiting for a request timeout.
  test::temp_dir dir;
  auto result = run_two_ranks(dir, "", "--debug-kill-after 5", ":", 0, "hybrid --tau1 2 --tau2 20");
  EXPECT_NE(result.output.find("rank 1 exit 137"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("rank 0 exit 0"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("step 4: worker 1 was lost; finishing the image on worker 0 in sequential CFG"),
            std::string::npos)
      << result.output;
  std::string degraded_from_4 = "cfg cfg fill pipeline ";
  for (int step = 4; step < 30; ++step) degraded_from_4 += "cfg-degraded ";
  EXPECT_EQ(traced_modes(dir), degraded_from_4);
}

TEST(MultiProcessFaults, AStageRankKilledInASplitBranchRunLeavesRankZeroToFinishDegraded) {
  // cfg on 4 processes: each branch a 2-stage pipeline, its steps after the warm-up one split-branch run. Rank 2,
  // the conditional branch's first stage, is killed at its fourth call (fill at step 0, run_window at 1, next_stage
  // for 2, then for 3). The stages that compute on it fail their step and tell the stages that compute on them,
  // within rank 0's process and over the links, so nobody waits for a hand-over that will not come: rank 0
  // finishes alone from step 3, and the other ranks end normally.
  test::temp_dir dir;
  const hand_started_ranks ranks(dir, 4, "cfg");
  auto result = run_shell(ranks.rank(3, "") + " & " + ranks.rank(2, "--debug-kill-after 4") + " & " +
                          ranks.rank(1, "") + " & " + ranks.rank(0, "") + "; wait; cat " + ranks.log(0) + " " +
                          ranks.log(1) + " " + ranks.log(2) + " " + ranks.log(3));
  EXPECT_NE(result.output.find("rank 2 exit 137"), std::string::npos) << result.output;
  for (int r : {0, 1, 3})
    EXPECT_NE(result.output.find("rank " + std::to_string(r) + " exit 0"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("step 3: worker 2 was lost; finishing the image on worker 0 in sequential CFG"),
            std::string::npos)
      << result.output;
  std::string degraded_from_3 = "cfg cfg-pipeline cfg-pipeline ";
  for (int step = 3; step < 30; ++step) degraded_from_3 += "cfg-degraded ";
  EXPECT_EQ(traced_modes(dir), degraded_from_3);
}

TEST(MultiProcessFaults, AFrozenWorkerRankIsLostThroughHeartbeatsAndRankZeroFinishesDegraded) {
  // SIGSTOP leaves rank 1's connections open and silent, as a network partition or a hung host does: no connection
  // closes, so only the missing heartbeats tell rank 0 (--connection-timeout, 4 s by default), not a request
  // timeout (10 min, past the ranks' own 120 s limit).
  test::temp_dir dir;
  auto result = run_two_ranks(dir, "", "--debug-freeze-after 5", "pkill -KILL -P $(cat " + quoted(dir / "rank1.pid") + ")");
  EXPECT_NE(result.output.find("rank 0 exit 0"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("rank 1 exit 137"), std::string::npos) << result.output;  // the test's SIGKILL
  EXPECT_NE(result.output.find("finishing the image on worker 0 in sequential CFG"), std::string::npos) << result.output;
  const double noticed = logged_at(result.output, "rank 1 was lost") - logged_at(result.output, "stopping this process");
  EXPECT_GT(noticed, 3.0) << result.output;  // the connection stayed open: this was the heartbeat timeout
  EXPECT_LT(noticed, 10.0) << result.output;
}

TEST(MultiProcessFaults, AWorkerRankWhoseRankZeroFreezesExitsNamingIt) {
  test::temp_dir dir;
  auto result =
      run_two_ranks(dir, "--debug-freeze-after 5", "", "pkill -KILL -P $(cat " + quoted(dir / "rank0.pid") + ")",
                    /*waited=*/1);
  EXPECT_NE(result.output.find("rank 1 exit 1"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("rank 0 exit 137"), std::string::npos) << result.output;  // the test's SIGKILL
  EXPECT_TRUE(std::regex_search(result.output, std::regex("rank 1: rank 0 at 127.0.0.1:[0-9]+ was lost")))
      << result.output;
  const double noticed = logged_at(result.output, "rank 0 at 127.0.0.1:[0-9]+ was lost") -
                         logged_at(result.output, "stopping this process");
  EXPECT_GT(noticed, 3.0) << result.output;
  EXPECT_LT(noticed, 10.0) << result.output;
}

TEST(MultiProcessFaults, AKilledRankZeroEndsTheOtherRanks) {
  test::temp_dir dir;
  const auto started = std::chrono::steady_clock::now();
  auto result = run_two_ranks(dir, "--debug-kill-after 5", "");
  EXPECT_NE(result.output.find("rank 0 exit 137"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("rank 1 exit 1"), std::string::npos) << result.output;
  EXPECT_TRUE(std::regex_search(result.output, std::regex("rank 1: rank 0 at 127.0.0.1:[0-9]+ was lost")))
      << result.output;
  // Not a request timeout (10 min) nor the test's own (120 s): rank 1 saw the connection close.
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(60)) << result.output;
}

TEST(MultiProcessFaults, ARankThatNeverArrivesIsNamed) {
  const auto env = "WORLD_SIZE=3 MASTER_PORT=" + std::to_string(free_port_pair());
  const auto request = " " + test::hybridiff_binary() + " generate --model " + model_folder("tiny-sdxl") +
                       " --prompt fox --steps 4 --image_size 32 --parallel asyncdiff --model_n 3 --transport cpu "
                       "--rendezvous-timeout 2 --output /dev/null";
  auto lonely = run_shell(env + " RANK=0 timeout 60" + request);
  EXPECT_EQ(lonely.exit_code, 1) << lonely.output;
  EXPECT_TRUE(std::regex_search(lonely.output, std::regex("rank\\(s\\) 1, 2 did not register within 2 s \\(WORLD_SIZE 3")))
      << lonely.output;
  auto orphan = run_shell(env + " RANK=2 timeout 60" + request);
  EXPECT_EQ(orphan.exit_code, 1) << orphan.output;
  EXPECT_TRUE(std::regex_search(orphan.output, std::regex("rank 2: rank 0 at 127.0.0.1:[0-9]+ did not answer within 2 s")))
      << orphan.output;
}

TEST(MultiProcessFaults, ProcessFlagsThatCannotWorkAreUsageErrors) {
  const auto request = " " + test::hybridiff_binary() + " generate --model " + model_folder("tiny-sdxl") +
                       " --prompt fox --steps 4 --image_size 32 --output /dev/null";
  auto none = run_shell("WORLD_SIZE=2 RANK=0" + request);
  EXPECT_EQ(none.exit_code, 2) << none.output;
  EXPECT_NE(none.output.find("--parallel none runs in one process"), std::string::npos) << none.output;
  auto three = run_shell("WORLD_SIZE=3 RANK=0" + request + " --parallel cfg");
  EXPECT_EQ(three.exit_code, 2) << three.output;
  EXPECT_NE(three.output.find("(WORLD_SIZE 3: one worker per process)"), std::string::npos) << three.output;
  auto devices = run_shell("WORLD_SIZE=2 RANK=1" + request + " --parallel cfg --devices cpu,cpu");
  EXPECT_EQ(devices.exit_code, 2) << devices.output;
  EXPECT_NE(devices.output.find("every process runs one worker on its --device"), std::string::npos) << devices.output;
  auto transport = run_shell("WORLD_SIZE=2 RANK=1" + request + " --parallel cfg --transport carrier-pigeon");
  EXPECT_EQ(transport.exit_code, 2) << transport.output;
  EXPECT_NE(transport.output.find("--transport 'carrier-pigeon': use auto, cpu or nccl"), std::string::npos)
      << transport.output;
  auto heartbeats =
      run_shell("WORLD_SIZE=2 RANK=1" + request + " --parallel cfg --heartbeat-interval 2 --connection-timeout 3");
  EXPECT_EQ(heartbeats.exit_code, 2) << heartbeats.output;
  EXPECT_NE(heartbeats.output.find("--connection-timeout must be at least twice --heartbeat-interval"),
            std::string::npos)
      << heartbeats.output;
  auto faults = run_shell("WORLD_SIZE=2 RANK=1" + request + " --parallel cfg --debug-kill-after 3 --debug-freeze-after 3");
  EXPECT_EQ(faults.exit_code, 2) << faults.output;
  EXPECT_NE(faults.output.find("--debug-kill-after and --debug-freeze-after exclude each other"), std::string::npos)
      << faults.output;
}

}  // namespace
}  // namespace hybridiff
