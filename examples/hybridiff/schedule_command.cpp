#include <fstream>
#include <iostream>

#include "cli.hpp"
#include "models/errors.hpp"
#include "schedule/tau_controller.hpp"

namespace hybridiff::cli {

int run_schedule(const std::vector<std::string>& args) {
  if (args.empty() || args.front() != "simulate") {
    if (!args.empty() && (args.front() == "--help" || args.front() == "-h")) {
      std::cout << "Usage: hybridiff schedule simulate [options]\n\n"
                   "  simulate    the phase of every step for a metric file (see 'hybridiff schedule simulate --help')\n";
      return 0;
    }
    throw usage_error(args.empty() ? "missing action (use: hybridiff schedule simulate ...)"
                                   : "unknown action '" + args.front() + "' (use: simulate)");
  }
  command_line line;
  line.name = "schedule simulate";
  line.usage = "hybridiff schedule simulate --metric-file F --steps T [options]";
  line.summary =
      "What-if tool for the Hybridiff schedule, no model needed. Reads one rel-MAE value per line (step 0 first;\n"
      "values of pipeline-window steps are ignored, missing lines count as absent metrics) and prints CSV\n"
      "'step,mode' (mode: cfg, fill or pipeline) followed by a line 'tau1=A tau2=B'. The tau policy is the\n"
      "reference's slope detector: tau1 = the first step i >= L_slope with 0 <= (M[i+1-L] - M[i]) / L < eps_slope,\n"
      "else tau_cap (at step tau_cap - 1); tau2 = tau1 + k; a decision at the end of step i acts from step i + 1.";
  // clang-format off
  line.options.add_options()
      ("metric-file", po::value<std::string>()->required()->value_name("F"), "one metric value per line")
      ("steps", po::value<int>()->required()->value_name("T"), "denoising steps")
      ("L_slope", po::value<int>()->default_value(12)->value_name("L"), "slope window (SDXL 12, SD3 15)")
      ("eps_slope", po::value<double>()->default_value(4e-4)->value_name("E"), "slope threshold (SDXL 4e-4, SD3 5e-4)")
      ("k", po::value<int>()->default_value(5)->value_name("K"), "pipeline window length after detection")
      ("tau_cap", po::value<int>()->default_value(15)->value_name("C"), "fallback tau1 (SDXL 15, SD3 40)");
  // clang-format on
  auto parsed = parse(line, std::vector<std::string>(args.begin() + 1, args.end()));
  if (!parsed) return 0;
  const auto& values = *parsed;
  schedule::schedule_settings settings;
  settings.steps = values["steps"].as<int>();
  settings.tau = {values["L_slope"].as<int>(), values["eps_slope"].as<double>(), values["k"].as<int>(),
                  values["tau_cap"].as<int>()};
  try {
    schedule::validate(settings);
  } catch (const std::invalid_argument& bad) {
    throw usage_error(bad.what());
  }
  const auto path = values["metric-file"].as<std::string>();
  std::ifstream file(path);
  if (!file) throw error(path + ": cannot open");
  std::vector<double> metrics;
  std::string text;
  for (int line_number = 1; std::getline(file, text); ++line_number) {
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      std::size_t used = 0;
      metrics.push_back(std::stod(text, &used));
      if (text.find_first_not_of(" \t\r", used) != std::string::npos) throw std::invalid_argument(text);
    } catch (const std::exception&) {
      throw error(path + ":" + std::to_string(line_number) + ": '" + text + "' is not a number");
    }
  }
  const auto run = schedule::simulate(settings, metrics);
  std::cout << "step,mode\n";
  for (int i = 0; i < settings.steps; ++i) std::cout << i << "," << schedule::to_string(run.phases[i]) << "\n";
  std::cout << "tau1=" << (run.tau1 ? std::to_string(*run.tau1) : "none") << " tau2="
            << (run.tau2 ? std::to_string(*run.tau2) : "none") << "\n";
  return 0;
}

}  // namespace hybridiff::cli
