// hybridiff launch: starts N local processes of this binary with the torchrun-style environment and forwards
// their exit status.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>

#include "cli.hpp"
#include "models/errors.hpp"

namespace hybridiff::cli {
namespace {

volatile sig_atomic_t forwarded_signal = 0;
void remember_signal(int signal_number) { forwarded_signal = signal_number; }

// Replaces every {rank}, {local_rank} and {world_size} in `word`.
std::string substitute(std::string word, int rank, int world_size) {
  const std::pair<std::string, std::string> fields[] = {
      {"{rank}", std::to_string(rank)}, {"{local_rank}", std::to_string(rank)}, {"{world_size}", std::to_string(world_size)}};
  for (const auto& [field, value] : fields)
    for (auto at = word.find(field); at != std::string::npos; at = word.find(field, at + value.size()))
      word.replace(at, field.size(), value);
  return word;
}

// The exit code a shell would report for a wait status.
int exit_code_of(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status); }

}  // namespace

int run_launch(const std::vector<std::string>& args) {
  // Everything after "--" is the command of every rank.
  std::vector<std::string> own(args.begin(), args.end()), command;
  for (std::size_t i = 0; i < args.size(); ++i)
    if (args[i] == "--") {
      own.assign(args.begin(), args.begin() + static_cast<std::ptrdiff_t>(i));
      command.assign(args.begin() + static_cast<std::ptrdiff_t>(i) + 1, args.end());
      break;
    }
  command_line line;
  line.name = "launch";
  line.usage = "hybridiff launch --nproc N [options] -- SUBCOMMAND [its options]";
  line.summary =
      "Starts N processes of this binary on this machine, each running SUBCOMMAND with the torchrun-style\n"
      "environment RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT. In the command,\n"
      "{rank}, {local_rank} and {world_size} are replaced per process (e.g. --device cuda:{local_rank} --output\n"
      "img_{rank}.png). The first process that fails stops the others (SIGTERM, then SIGKILL after --grace\n"
      "seconds) and its exit status is launch's; SIGINT and SIGTERM are forwarded to every process, and launch's\n"
      "status is then the first non-zero status of a process, or 0 when all exit 0 (serve drains and exits 0).";
  // clang-format off
  line.options.add_options()
      ("nproc", po::value<int>()->required()->value_name("N"), "processes to start (1 to 64)")
      ("master-addr", po::value<std::string>()->default_value("127.0.0.1")->value_name("ADDR"), "rendezvous address")
      ("master-port", po::value<int>()->default_value(29500)->value_name("PORT"), "rendezvous port")
      ("grace", po::value<double>()->default_value(10.0)->value_name("S"), "seconds between SIGTERM and SIGKILL");
  // clang-format on
  auto parsed = parse(line, own);
  if (!parsed) return 0;
  const auto& values = *parsed;
  const int nproc = values["nproc"].as<int>();
  const int port = values["master-port"].as<int>();
  const double grace = values["grace"].as<double>();
  if (nproc < 1 || nproc > 64) throw usage_error("--nproc " + std::to_string(nproc) + " must be in [1, 64]");
  if (port < 1 || port > 65535) throw usage_error("--master-port " + std::to_string(port) + " is outside [1, 65535]");
  if (!(grace >= 0)) throw usage_error("--grace must be >= 0");
  if (command.empty()) throw usage_error("give the command of every process after --, e.g. -- generate --prompt fox");
  if (command.front() == "launch") throw usage_error("launch cannot launch itself");

  char self[4096];
  const auto length = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (length <= 0) throw error(std::string("launch: cannot find this binary: ") + std::strerror(errno));
  self[length] = '\0';

  struct sigaction forward {};
  forward.sa_handler = remember_signal;  // no SA_RESTART: waitpid returns so the signal can be forwarded
  ::sigaction(SIGINT, &forward, nullptr);
  ::sigaction(SIGTERM, &forward, nullptr);

  // N processes on one machine each sizing their intra-op thread pool to all its cores oversubscribe it (OpenMP
  // threads spin against each other: a CPU step took 3.5 s instead of 150 ms in our measurements). Unless the user chose, each
  // process gets its share, as torchrun sets OMP_NUM_THREADS for its processes.
  std::string threads_per_process;
  if (nproc > 1 && std::getenv("OMP_NUM_THREADS") == nullptr) {
    threads_per_process = std::to_string(std::max(1u, std::thread::hardware_concurrency() / static_cast<unsigned>(nproc)));
    spdlog::info("launch: OMP_NUM_THREADS={} for each of {} processes ({} cores; set OMP_NUM_THREADS to choose)",
                 threads_per_process, nproc, std::thread::hardware_concurrency());
  }
  std::vector<pid_t> children(nproc, -1);
  auto stop_all = [&](int signal_number) {
    for (pid_t child : children)
      if (child > 0) ::kill(child, signal_number);
  };
  for (int rank = 0; rank < nproc; ++rank) {
    std::vector<std::string> words = {self};
    for (const auto& word : command) words.push_back(substitute(word, rank, nproc));
    const pid_t child = ::fork();
    if (child < 0) {
      stop_all(SIGKILL);
      throw error(std::string("launch: fork failed: ") + std::strerror(errno));
    }
    if (child == 0) {
      ::setenv("RANK", std::to_string(rank).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(rank).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      ::setenv("MASTER_ADDR", values["master-addr"].as<std::string>().c_str(), 1);
      ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      if (!threads_per_process.empty()) ::setenv("OMP_NUM_THREADS", threads_per_process.c_str(), 1);
      std::vector<char*> argv;
      for (auto& word : words) argv.push_back(word.data());
      argv.push_back(nullptr);
      ::execv(self, argv.data());
      std::cerr << "launch: rank " << rank << ": exec failed: " << std::strerror(errno) << "\n";
      ::_exit(127);
    }
    children[rank] = child;
  }

  int running = nproc, result = 0;
  bool stopping = false;
  std::chrono::steady_clock::time_point kill_at{};
  while (running > 0) {
    if (forwarded_signal != 0 && !stopping) {
      spdlog::warn("launch: forwarding signal {} to {} process(es)", static_cast<int>(forwarded_signal), running);
      stop_all(forwarded_signal);
      stopping = true;
      kill_at = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                       std::chrono::duration<double>(grace));
    }
    int status = 0;
    const pid_t done = ::waitpid(-1, &status, stopping ? WNOHANG : 0);
    if (done < 0) {
      if (errno == EINTR) continue;
      throw error(std::string("launch: waitpid failed: ") + std::strerror(errno));
    }
    if (done == 0) {  // stopping: poll until every process is gone or the grace period ends
      if (std::chrono::steady_clock::now() >= kill_at) stop_all(SIGKILL);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      continue;
    }
    int rank = 0;
    while (rank < nproc && children[rank] != done) ++rank;
    if (rank == nproc) continue;
    children[rank] = -1;
    --running;
    const int code = exit_code_of(status);
    if (code != 0 && stopping && result == 0) result = code;  // after a forwarded signal: the first failure
    if (code != 0 && !stopping) {
      std::cerr << "hybridiff launch: rank " << rank << " exited with status " << code << "; stopping the other "
                << running << " process(es)\n";
      result = code;
      stop_all(SIGTERM);
      stopping = true;
      kill_at = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                       std::chrono::duration<double>(grace));
    }
  }
  return result;
}

}  // namespace hybridiff::cli
