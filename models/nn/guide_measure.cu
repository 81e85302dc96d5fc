#include "models/nn/cuda_elements.cuh"
#include "models/nn/cuda_kernels.hpp"

namespace hybridiff::models::cuda_kernels {
namespace {

constexpr int threads = 256;

// A float rounded to T and back: the rounding ATen's kernels apply to each op's output in T.
template <typename T>
__device__ float rounded(float value) {
  return element<T>::load(element<T>::store(value));
}

// The sum of `value` over the block, in thread 0 (blockDim.x == threads).
__device__ float block_sum(float value) {
  __shared__ float scratch[threads / 32];
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = value;
  __syncthreads();
  float result = 0.f;
  if (threadIdx.x == 0)
    for (int warp = 0; warp < threads / 32; ++warp) result += scratch[warp];
  __syncthreads();  // scratch is reused by the next call
  return result;
}

// One element: guided ← u + w·(c − u) with ATen's three roundings to T (the sub, the mul by the scalar in float,
// the add; the _rn intrinsics keep nvcc from contracting them into an FMA), and the two absolute values the metric
// sums: |round(c − u)| and |u|.
template <typename T>
__device__ T guide_one(T u, T c, float guidance, float& difference, float& base) {
  const float uf = element<T>::load(u);
  const float d = rounded<T>(__fsub_rn(element<T>::load(c), uf));
  const float e = rounded<T>(__fmul_rn(guidance, d));
  difference += fabsf(d);
  base += fabsf(uf);
  return element<T>::store(__fadd_rn(uf, e));
}

// Per block: its elements guided, and its partial sums into partials[2 · block], [2 · block + 1] (no atomics:
// the sums do not depend on the blocks' order, so a run repeats its metric exactly).
template <typename T>
__global__ void guide_and_sum(const T* uncond, const T* cond, T* guided, std::int64_t count, float guidance,
                              double* partials) {
  float difference = 0.f, base = 0.f;
  map_pairs<threads>(uncond, cond, guided, count,
                     [&](T u, T c) { return guide_one(u, c, guidance, difference, base); });
  difference = block_sum(difference);
  base = block_sum(base);
  if (threadIdx.x == 0) {
    partials[2 * blockIdx.x] = difference;
    partials[2 * blockIdx.x + 1] = base;
  }
}

// One block: the partial sums in a fixed order (double), then the means as ATen's mean of a T tensor gives them
// (the float sum times 1 / count, rounded to T) into means[0], means[1].
template <typename T>
__global__ void mean_of_partials(const double* partials, int blocks, std::int64_t count, double* means) {
  if (threadIdx.x != 0) return;
  double difference = 0, base = 0;
  for (int b = 0; b < blocks; ++b) {
    difference += partials[2 * b];
    base += partials[2 * b + 1];
  }
  const float factor = 1.f / static_cast<float>(count);
  means[0] = rounded<T>(static_cast<float>(difference) * factor);
  means[1] = rounded<T>(static_cast<float>(base) * factor);
}

int blocks_for(std::int64_t count, element_type type, int multiprocessors) {
  return blocks_for_vectors(count, type, threads, multiprocessors, 2);  // two blocks a multiprocessor
}

}  // namespace

std::int64_t guide_and_measure_workspace(std::int64_t count, element_type type, int multiprocessors) {
  return 2 * static_cast<std::int64_t>(blocks_for(count, type, multiprocessors)) + 2;
}

cudaError_t guide_and_measure(const void* uncond, const void* cond, void* guided, std::int64_t count, float guidance,
                              element_type type, double* workspace, int multiprocessors, cudaStream_t stream) {
  if (count <= 0) return cudaErrorInvalidValue;
  const int blocks = blocks_for(count, type, multiprocessors);
  return dispatch(type, [&](auto zero) -> cudaError_t {
    using T = decltype(zero);
    guide_and_sum<T><<<blocks, threads, 0, stream>>>(static_cast<const T*>(uncond), static_cast<const T*>(cond),
                                                     static_cast<T*>(guided), count, guidance, workspace + 2);
    if (auto status = cudaGetLastError(); status != cudaSuccess) return status;
    mean_of_partials<T><<<1, 32, 0, stream>>>(workspace + 2, blocks, count, workspace);
    return cudaGetLastError();
  });
}

}  // namespace hybridiff::models::cuda_kernels
