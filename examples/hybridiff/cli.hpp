#pragma once

#include <optional>
#include <string>
#include <vector>

#include <boost/program_options.hpp>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

namespace hybridiff::cli {

namespace po = boost::program_options;

/// A subcommand's command line: its own options plus the common ones (--help, --config FILE, --log-level).
struct command_line {
  std::string name;        ///< "info", "generate", ...
  std::string usage;       ///< "hybridiff info [options] DIR"
  std::string summary;     ///< one paragraph shown by --help
  po::options_description options{"Options"};
  po::positional_options_description positional;
};

/// Parses `args` (the words after the subcommand) against `line`. Values given on the command line win over
/// those in the `--config` INI file (keys are the long option names, e.g. `steps = 20`). Prints help and returns
/// nullopt for --help; throws `usage_error` (exit code 2 in main) for a bad command line; sets the log level.
std::optional<po::variables_map> parse(command_line& line, const std::vector<std::string>& args);

/// Thrown for a malformed command line: main prints it with the usage hint and exits 2.
struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// --device: cpu, cuda or cuda:N (a usage error when no such GPU is visible).
c10::Device parse_device(const std::string& text);
/// --devices: one device per worker, comma-separated ("cuda:0,cuda:1"); empty: every worker on `fallback`.
std::vector<c10::Device> parse_device_list(const std::string& text, int workers, const c10::Device& fallback);
/// --dtype: fp32, fp16, bf16 or fp8. fp8 is float8 e4m3 linear layers in the denoiser (load_options::fp8) and
/// fp16 for everything else on CUDA, float32 on the CPU (whose fp16 kernels are slow or missing).
struct precision {
  at::ScalarType dtype = at::kFloat;
  bool fp8 = false;
};
precision parse_dtype(const std::string& text, const c10::Device& device);
/// The text of --dtype's choices, for option descriptions.
inline constexpr const char* dtype_choices =
    "fp32, fp16, bf16 or fp8 (float8 e4m3 linear layers in the denoiser, "
    "fp16 elsewhere; float32 elsewhere on the CPU)";
/// --cudnn-benchmark: cuDNN times its convolution algorithms for each input shape at the first call and keeps the
/// fastest (ATen's benchmark mode, process-wide). A usage error on a device other than CUDA.
void use_cudnn_benchmark(bool on, const c10::Device& device);
/// While it lives, SIGINT and SIGTERM ask the command to stop (`requested()`) instead of ending the process; the
/// previous handlers come back when it is destroyed. One at a time.
class stop_signals {
 public:
  stop_signals();
  ~stop_signals();
  stop_signals(const stop_signals&) = delete;
  stop_signals& operator=(const stop_signals&) = delete;
  bool requested() const;

 private:
  void (*previous_int_)(int);
  void (*previous_term_)(int);
};

/// --cuda-graphs: a usage error on a device other than CUDA.
void check_cuda_graphs(bool on, const c10::Device& device);
inline constexpr const char* cudnn_benchmark_help =
    "cuDNN benchmark mode: time the convolution algorithms of each input shape at its first call and keep the "
    "fastest (that call is slower); CUDA only";

int run_info(const std::vector<std::string>& args);
int run_generate(const std::vector<std::string>& args);
int run_bench(const std::vector<std::string>& args);
int run_schedule(const std::vector<std::string>& args);
int run_launch(const std::vector<std::string>& args);
int run_metrics(const std::vector<std::string>& args);
int run_coco(const std::vector<std::string>& args);
int run_serve(const std::vector<std::string>& args);

}  // namespace hybridiff::cli
