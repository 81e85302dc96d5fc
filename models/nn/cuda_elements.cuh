#pragma once
// Device-side helpers shared by our CUDA kernels (nvcc only): float32 arithmetic on float, half and bfloat16
// elements, 16-byte vectors of them, and the dispatch from a runtime element_type to a kernel template.

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
