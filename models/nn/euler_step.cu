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
  map_pairs<threads>(sample, output, next, count,
                     [=](T s, T o) { return euler_one(s, o, sigma, inverse_sigma, sigma_step); });
}

}  // namespace

cudaError_t euler_step(const void* sample, const void* output, void* next, std::int64_t count, float sigma,
                       float sigma_next, element_type type, int multiprocessors, cudaStream_t stream) {
  if (count <= 0) return cudaErrorInvalidValue;
  const int blocks = blocks_for_vectors(count, type, threads, multiprocessors, 4);
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
