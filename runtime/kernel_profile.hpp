#pragma once
// Where a denoiser step's GPU time goes: the CUDA kernels of a piece of work, recorded by PyTorch's Kineto
// profiler (CUPTI) and summed by kernel and by kernel class.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace hybridiff::runtime {

/// The class of a GPU kernel, from its (demangled) name: "attention" (flash / memory-efficient SDPA), "convolution"
/// (cuDNN), "gemm" (cuBLAS, cuBLASLt, CUTLASS), "normalization" (layer, group, RMS norm), "elementwise",
/// "reduction" (with softmax), "copy" (memcpy, memset, cat, layout changes) or "other".
std::string kernel_class(const std::string& kernel_name);

struct kernel_total {
  std::string name;
  std::int64_t calls = 0;
  double total_ms = 0;  ///< summed kernel durations
};

/// Every kernel (and memcpy/memset) that ran on a GPU while `work` ran, summed by name and sorted by time, longest
/// first. `work` must synchronise its device before returning. Throws hybridiff::error where the profiler cannot
/// record CUDA activity (a build or a machine without CUDA).
std::vector<kernel_total> profile_kernels(const std::function<void()>& work);

}  // namespace hybridiff::runtime
