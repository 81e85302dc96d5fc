#include "cli.hpp"

#include <atomic>
#include <csignal>
#include <fstream>
#include <iostream>
#include <sstream>

#include "models/errors.hpp"
#include "runtime/logging.hpp"

#include <ATen/Context.h>
#include <torch/cuda.h>

namespace hybridiff::cli {

std::optional<po::variables_map> parse(command_line& line, const std::vector<std::string>& args) {
  po::options_description common("Common options");
  common.add_options()("help,h", "print this help and exit")(
      "config", po::value<std::string>()->value_name("FILE"),
      "read options from an INI file (key = value, keys are long option names); the command line wins")(
      "log-level", po::value<std::string>()->default_value("info")->value_name("LEVEL"),
      "trace, debug, info, warn, error, critical or off");
  po::options_description all;
  all.add(line.options).add(common);

  po::variables_map values;
  try {
    po::store(po::command_line_parser(args).options(all).positional(line.positional).run(), values);
    if (values.count("help")) {
      std::cout << "Usage: " << line.usage << "\n\n" << line.summary << "\n\n" << all << "\n";
      return std::nullopt;
    }
    if (values.count("config")) {
      const auto path = values["config"].as<std::string>();
      std::ifstream file(path);
      if (!file) throw usage_error("--config: cannot open '" + path + "'");
      po::store(po::parse_config_file(file, all, /*allow_unregistered=*/false), values);
    }
    po::notify(values);
  } catch (const po::error& bad) {
    throw usage_error(bad.what());
  }
  try {
    runtime::configure_logging(values["log-level"].as<std::string>());
  } catch (const error& bad) {
    throw usage_error(bad.what());
  }
  return values;
}

c10::Device parse_device(const std::string& text) {
  if (text == "cpu") return c10::kCPU;
  if (text == "cuda" || text.rfind("cuda:", 0) == 0) {
    const auto gpus = static_cast<int>(torch::cuda::device_count());
    if (!torch::cuda::is_available() || gpus == 0)
      throw usage_error("--device " + text + ": no CUDA device is available (torch sees " + std::to_string(gpus) + " GPUs)");
    c10::Device device(c10::kCPU);
    try {
      device = c10::Device(text);
    } catch (const c10::Error&) {
      throw usage_error("--device '" + text + "': use cpu, cuda or cuda:N");
    }
    if (device.has_index() && device.index() >= gpus)
      throw usage_error("--device " + text + ": only " + std::to_string(gpus) + " GPUs are visible");
    return device;
  }
  throw usage_error("--device '" + text + "': use cpu, cuda or cuda:N");
}

std::vector<c10::Device> parse_device_list(const std::string& text, int workers, const c10::Device& fallback) {
  if (text.empty()) return std::vector<c10::Device>(workers, fallback);
  std::vector<c10::Device> devices;
  std::stringstream list(text);
  std::string item;
  while (std::getline(list, item, ',')) devices.push_back(parse_device(item));
  if (static_cast<int>(devices.size()) != workers)
    throw usage_error("--devices lists " + std::to_string(devices.size()) + " devices for " + std::to_string(workers) +
                      " workers");
  return devices;
}

precision parse_dtype(const std::string& text, const c10::Device& device) {
  if (text == "fp32") return {at::kFloat, false};
  if (text == "fp16") return {at::kHalf, false};
  if (text == "bf16") return {at::kBFloat16, false};
  if (text == "fp8") return {device.is_cuda() ? at::kHalf : at::kFloat, true};
  throw usage_error("--dtype '" + text + "': use fp32, fp16, bf16 or fp8");
}

void use_cudnn_benchmark(bool on, const c10::Device& device) {
  if (!on) return;
  if (!device.is_cuda()) throw usage_error("--cudnn-benchmark needs a CUDA --device, not " + device.str());
  at::globalContext().setBenchmarkCuDNN(true);
}

namespace {
std::atomic<bool> stop_asked{false};
extern "C" void ask_to_stop(int) { stop_asked = true; }
}  // namespace

stop_signals::stop_signals()
    : previous_int_((stop_asked = false, std::signal(SIGINT, ask_to_stop))),
      previous_term_(std::signal(SIGTERM, ask_to_stop)) {}

stop_signals::~stop_signals() {
  std::signal(SIGINT, previous_int_);
  std::signal(SIGTERM, previous_term_);
}

bool stop_signals::requested() const { return stop_asked; }

void check_cuda_graphs(bool on, const c10::Device& device) {
  if (on && !device.is_cuda()) throw usage_error("--cuda-graphs needs a CUDA --device, not " + device.str());
}

}  // namespace hybridiff::cli
