#pragma once
// Runs the hybridiff binary as a user runs it (a child process through the shell).
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <stdexcept>
#include <string>

namespace hybridiff::test {

struct run_result {
  int exit_code;  ///< the exit status, or 128 + the signal that ended the process
  std::string output;
};

/// Runs `command` with /bin/sh, capturing stdout and stderr.
inline run_result run_shell(const std::string& command) {
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) throw std::runtime_error("popen failed");
  std::string output;
  char buffer[4096];
  while (std::size_t read = std::fread(buffer, 1, sizeof(buffer), pipe)) output.append(buffer, read);
  int status = ::pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), output};
}

inline std::string quoted(const std::filesystem::path& path) { return "'" + path.string() + "'"; }

/// The hybridiff binary under test, quoted for the shell.
inline std::string hybridiff_binary() { return quoted(HYBRIDIFF_BINARY); }

/// Runs the hybridiff binary with `arguments` (already shell-quoted).
inline run_result run_hybridiff(const std::string& arguments) { return run_shell(hybridiff_binary() + " " + arguments); }

}  // namespace hybridiff::test
