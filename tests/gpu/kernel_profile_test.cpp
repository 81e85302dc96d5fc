// The kernel profiler of `bench --profile` on the GPU: a half-precision matrix product and a layer norm are
// recorded as GEMM and normalization kernels, their calls counted per kernel. Skipped without CUDA.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "runtime/kernel_profile.hpp"

namespace hybridiff::runtime {
namespace {

TEST(KernelProfileGpu, RecordsAndClassifiesTheKernelsOfTheWork) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const auto options = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kHalf);
  auto a = torch::randn({1024, 1024}, options), b = torch::randn({1024, 1024}, options);
  torch::mm(a, b);  // cuBLAS handles and heuristics outside the profile
  torch::cuda::synchronize();
  const auto kernels = profile_kernels([&] {
    for (int i = 0; i < 3; ++i) torch::layer_norm(torch::mm(a, b), {1024});
    torch::cuda::synchronize();
  });
  std::map<std::string, std::int64_t> calls;
  for (const auto& kernel : kernels) {
    EXPECT_GT(kernel.total_ms, 0.0) << kernel.name;
    calls[kernel_class(kernel.name)] += kernel.calls;
  }
  EXPECT_EQ(calls["gemm"], 3);
  EXPECT_EQ(calls["normalization"], 3);
  for (std::size_t i = 1; i < kernels.size(); ++i) EXPECT_GE(kernels[i - 1].total_ms, kernels[i].total_ms);
}

}  // namespace
}  // namespace hybridiff::runtime
