#include <algorithm>

#include "models/nn/cuda_elements.cuh"
#include "models/nn/cuda_kernels.hpp"

namespace hybridiff::models::cuda_kernels {
namespace {

constexpr int threads = 256;

// One element of the Euler step with ATen's roundings (the _rn intrinsics keep nvcc from contracting to FMAs):
// x = float(sample); denoised = x − round_T(σ·output); derivative = (x − denoised)·(1/σ) (ATen divides by a host
// scalar as a product with its reciprocal); next = round_T(x + derivative·Δσ).
template <typename T>
__device__ T euler_one(T sample, T output, float sigma, float inverse_sigma, float sigma_step) {
  const float x = element<T>::load(sample);
  const float scaled = element<T>::load(element<T>::store(__fmul_rn(element<T>::load(output), sigma)));
  const float denoised = __fsub_rn(x, scaled);
  const float derivative = __fmul_rn(__fsub_rn(x, denoised), inverse_sigma);
  return element<T>::store(__fadd_rn(x, __fmul_rn(derivative, sigma_step)));
}

template <typename T>
__global__ void euler_step_kernel(const T* sample, const T* output, T* next, std::int64_t count, float sigma,
                                  float inverse_sigma, float sigma_step) {
  constexpr int V = element<T>::vector;
  const std::int64_t vectors = count / V;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * threads;
  for (std::int64_t v = blockIdx.x * static_cast<std::int64_t>(threads) + threadIdx.x; v < vectors; v += stride) {
    const auto s = reinterpret_cast<const pack<T>*>(sample)[v];
    const auto o = reinterpret_cast<const pack<T>*>(output)[v];
    pack<T> out;
#pragma unroll
    for (int i = 0; i < V; ++i) out.values[i] = euler_one(s.values[i], o.values[i], sigma, inverse_sigma, sigma_step);
    reinterpret_cast<pack<T>*>(next)[v] = out;
  }
  if (blockIdx.x == 0)
    for (std::int64_t i = vectors * V + threadIdx.x; i < count; i += threads)
      next[i] = euler_one(sample[i], output[i], sigma, inverse_sigma, sigma_step);
}

}  // namespace

cudaError_t euler_step(const void* sample, const void* output, void* next, std::int64_t count, float sigma,
                       float sigma_next, element_type type, int multiprocessors, cudaStream_t stream) {
  if (count <= 0) return cudaErrorInvalidValue;
  const std::int64_t vectors = (count + vector_of(type) - 1) / vector_of(type);
  const int blocks = static_cast<int>(
      std::max<std::int64_t>(1, std::min<std::int64_t>((vectors + threads - 1) / threads, 4 * multiprocessors)));
  // Host-side float arithmetic, as ATen computes the reciprocal of a host scalar divisor and σ_next − σ.
  const float inverse_sigma = 1.0f / sigma, sigma_step = sigma_next - sigma;
  return dispatch(type, [&](auto zero) -> cudaError_t {
    using T = decltype(zero);
    euler_step_kernel<T><<<blocks, threads, 0, stream>>>(static_cast<const T*>(sample), static_cast<const T*>(output),
                                                         static_cast<T*>(next), count, sigma, inverse_sigma,
                                                         sigma_step);
    return cudaGetLastError();
  });
}

}  // namespace hybridiff::models::cuda_kernels
