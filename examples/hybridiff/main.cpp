// hybridiff: the command-line front end. Each subcommand lives in its own file and parses its own options.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include <c10/util/Exception.h>
#include <spdlog/spdlog.h>

#include "actors/cluster.hpp"
#include "cli.hpp"
#include "models/errors.hpp"

namespace {

struct subcommand {
  const char* name;
  const char* summary;
  int (*run)(const std::vector<std::string>& args);
};

const subcommand subcommands[] = {
    {"info", "list a diffusers folder's components: class, dtypes, exact parameter counts", hybridiff::cli::run_info},
    {"generate", "generate an image from a prompt (the built-in model, or an SDXL or SD3 diffusers folder)",
     hybridiff::cli::run_generate},
    {"coco", "generate one image per prompt of a captions file (COCO JSON or lines); resumable",
     hybridiff::cli::run_coco},
    {"schedule", "schedule tools: 'schedule simulate' replays the tau detection on a metric file",
     hybridiff::cli::run_schedule},
    {"bench", "time denoiser steps (a config, random weights) or whole generations per schedule (JSON)",
     hybridiff::cli::run_bench},
    {"serve", "serve images over HTTP (OpenAI's Images API, jobs, metrics) from one warm pool of workers",
     hybridiff::cli::run_serve},
    {"launch", "start N local processes of a subcommand with the torchrun-style environment",
     hybridiff::cli::run_launch},
    {"metrics", "image quality: classifier accuracy and feature FID, PSNR / LPIPS / FID against a reference",
     hybridiff::cli::run_metrics},
};

void print_overview(std::ostream& out) {
  out << "Usage: hybridiff <subcommand> [options]\n\n"
         "hybridiff generates images with SDXL and SD3 and spreads one image's denoising over several GPUs.\n\n"
         "Subcommands:\n";
  for (const auto& command : subcommands) out << "  " << command.name << std::string(12 - std::strlen(command.name), ' ') << command.summary << "\n";
  out << "\n'hybridiff <subcommand> --help' describes each one.\n";
}

// The exit code, or, when an actor system was left shutting down (actors::process_run), the end of the process
// here: static destructors would run beside its stuck thread.
int finish(int code) {
  if (!hybridiff::actors::actor_system_abandoned()) return code;
  spdlog::default_logger()->flush();
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
  std::_Exit(code);
}

int run(int argc, char** argv) {
  if (argc < 2) {
    print_overview(std::cerr);
    return 2;
  }
  const std::string name = argv[1];
  if (name == "--help" || name == "-h" || name == "help") {
    print_overview(std::cout);
    return 0;
  }
  for (const auto& command : subcommands) {
    if (name != command.name) continue;
    try {
      return command.run(std::vector<std::string>(argv + 2, argv + argc));
    } catch (const hybridiff::cli::usage_error& bad) {
      std::cerr << "hybridiff " << name << ": " << bad.what() << "\n(see 'hybridiff " << name << " --help')\n";
      return 2;
    } catch (const c10::Error& failure) {
      std::cerr << "hybridiff " << name << ": error: " << failure.what_without_backtrace() << "\n";
      return 1;
    } catch (const std::exception& failure) {
      std::cerr << "hybridiff " << name << ": error: " << failure.what() << "\n";
      return 1;
    }
  }
  std::cerr << "hybridiff: unknown subcommand '" << name << "'\n\n";
  print_overview(std::cerr);
  return 2;
}

}  // namespace

int main(int argc, char** argv) { return finish(run(argc, argv)); }
