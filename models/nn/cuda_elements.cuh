#pragma once
// Device-side helpers shared by our CUDA kernels (nvcc only): float32 arithmetic on float, half and bfloat16
// elements, 16-byte vectors of them, and the dispatch from a runtime element_type to a kernel template.

#include <algorithm>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "models/nn/cuda_kernels.hpp"

namespace hybridiff::models::cuda_kernels {

template <typename T> struct element;
template <> struct element<float> {
  static constexpr int vector = 4;
  __device__ static float load(float v) { return v; }
  __device__ static float store(float v) { return v; }
};
template <> struct element<__half> {
  static constexpr int vector = 8;
  __device__ static float load(__half v) { return __half2float(v); }
  __device__ static __half store(float v) { return __float2half(v); }
};
template <> struct element<__nv_bfloat16> {
  static constexpr int vector = 8;
  __device__ static float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static __nv_bfloat16 store(float v) { return __float2bfloat16(v); }
};

// One 16-byte vector of T.
template <typename T> struct alignas(16) pack {
  T values[element<T>::vector];
};

// Elements per 16-byte vector.
inline int vector_of(element_type type) {
  return type == element_type::float32 ? element<float>::vector : element<__half>::vector;
}

// out[i] = op(a[i], b[i]) for every i < count, in a grid-stride loop of Threads-thread blocks (blockDim.x ==
// Threads) over 16-byte vectors (a, b and out 16-byte aligned); block 0 takes the elements after the last vector.
template <int Threads, typename T, typename Op>
__device__ void map_pairs(const T* a, const T* b, T* out, std::int64_t count, Op op) {
  constexpr int V = element<T>::vector;
  const std::int64_t vectors = count / V;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * Threads;
  for (std::int64_t v = blockIdx.x * static_cast<std::int64_t>(Threads) + threadIdx.x; v < vectors; v += stride) {
    const auto x = reinterpret_cast<const pack<T>*>(a)[v];
    const auto y = reinterpret_cast<const pack<T>*>(b)[v];
    pack<T> result;
#pragma unroll
    for (int i = 0; i < V; ++i) result.values[i] = op(x.values[i], y.values[i]);
    reinterpret_cast<pack<T>*>(out)[v] = result;
  }
  if (blockIdx.x == 0)
    for (std::int64_t i = vectors * V + threadIdx.x; i < count; i += Threads) out[i] = op(a[i], b[i]);
}

// The grid of map_pairs over `count` elements of `type`: a block per `threads` vectors, at most
// `per_multiprocessor` blocks a multiprocessor (the loop strides over the rest), at least one.
inline int blocks_for_vectors(std::int64_t count, element_type type, int threads, int multiprocessors,
                              int per_multiprocessor) {
  const std::int64_t vectors = (count + vector_of(type) - 1) / vector_of(type);
  return static_cast<int>(std::max<std::int64_t>(
      1, std::min<std::int64_t>((vectors + threads - 1) / threads, per_multiprocessor * multiprocessors)));
}

// launch(T{}) for the C++ type of `type`.
template <typename Launch>
cudaError_t dispatch(element_type type, Launch&& launch) {
  switch (type) {
    case element_type::float32: return launch(float{});
    case element_type::float16: return launch(__half{});
    case element_type::bfloat16: return launch(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace hybridiff::models::cuda_kernels
