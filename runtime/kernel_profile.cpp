#include "runtime/kernel_profile.hpp"

#include <algorithm>
#include <array>
#include <map>
#include <set>
#include <utility>

#include <torch/csrc/autograd/profiler_kineto.h>
#include <torch/torch.h>

#include "models/errors.hpp"

namespace hybridiff::runtime {

std::string kernel_class(const std::string& kernel_name) {
  std::string name = kernel_name;
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
  // First match wins: cuDNN's convolutions are implicit GEMMs ("xmma_fprop_implicit_gemm"), so convolution is
  // tested before gemm; attention kernels contain GEMM tiles too.
  static const std::array<std::pair<const char*, std::vector<const char*>>, 7> rules{{
      {"attention", {"flash", "fmha", "attention", "sdpa", "mem_eff"}},
      {"convolution", {"conv", "fprop", "dgrad", "wgrad", "winograd"}},
      {"gemm", {"gemm", "cutlass", "cublas", "nvjet", "xmma", "matmul"}},
      {"normalization", {"norm", "moments"}},  // group norm: RowwiseMoments + ComputeFusedParams kernels
      {"reduction", {"reduce", "softmax"}},
      {"copy", {"memcpy", "memset", "copy", "cat", "transpose", "permute", "index"}},
      {"elementwise", {"elementwise", "vectorized", "unrolled", "silu", "gelu", "pointwise"}},
  }};
  for (const auto& [kernel_class, patterns] : rules)
    for (const char* pattern : patterns)
      if (name.find(pattern) != std::string::npos) return kernel_class;
  return "other";
}

std::vector<kernel_total> profile_kernels(const std::function<void()>& work) {
  namespace profiler = torch::autograd::profiler;
  using torch::profiler::impl::ActivityType;
  using torch::profiler::impl::ProfilerConfig;
  using torch::profiler::impl::ProfilerState;
  if (!torch::cuda::is_available()) throw error("kernel profile: no CUDA device (the profiler records GPU kernels)");
  const ProfilerConfig config(ProfilerState::KINETO);
  const std::set<ActivityType> activities{ActivityType::CPU, ActivityType::CUDA};
  profiler::prepareProfiler(config, activities);
  profiler::enableProfiler(config, activities);
  try {
    work();
  } catch (...) {
    profiler::disableProfiler();
    throw;
  }
  const auto result = profiler::disableProfiler();
  std::map<std::string, kernel_total> by_name;
  for (const auto& event : result->events()) {
    if (event.deviceType() != c10::DeviceType::CUDA) continue;  // CPU-side ops and runtime calls
    auto& total = by_name[event.name()];
    total.name = event.name();
    total.calls += 1;
    total.total_ms += static_cast<double>(event.durationNs()) / 1e6;
  }
  if (by_name.empty())
    throw error("kernel profile: the profiler recorded no GPU kernel (is CUPTI available to LibTorch here?)");
  std::vector<kernel_total> kernels;
  for (auto& [name, total] : by_name) kernels.push_back(std::move(total));
  std::sort(kernels.begin(), kernels.end(), [](const auto& a, const auto& b) { return a.total_ms > b.total_ms; });
  return kernels;
}

}  // namespace hybridiff::runtime
