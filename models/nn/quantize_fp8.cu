#include <algorithm>

#include <cuda_fp8.h>

#include "models/nn/cuda_elements.cuh"
#include "models/nn/cuda_kernels.hpp"

namespace hybridiff::models::cuda_kernels {
namespace {

constexpr int threads = 256;
constexpr float e4m3_max = 448.f;

// max(|value|) over the block, in thread 0 (blockDim.x == threads).
__device__ float block_max(float value) {
  __shared__ float scratch[threads / 32];
  for (int offset = 16; offset > 0; offset /= 2) value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = value;
  __syncthreads();
  float result = 0.f;
  if (threadIdx.x == 0)
    for (int warp = 0; warp < threads / 32; ++warp) result = fmaxf(result, scratch[warp]);
  return result;
}

// state[1] (zeroed before) ← max |x|. Non-negative floats order as their bits do, so atomicMax on the bits is a
// float max. fmaxf passes over NaNs: a NaN input stays NaN in the quantized tensor (and in the GEMM's output), as in
// fp16, without making every other element NaN through the scale.
template <typename T>
__global__ void absolute_max(const T* x, std::int64_t count, unsigned int* state) {
  constexpr int V = element<T>::vector;
  const std::int64_t vectors = count / V;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * threads;
  float largest = 0.f;
  for (std::int64_t v = blockIdx.x * static_cast<std::int64_t>(threads) + threadIdx.x; v < vectors; v += stride) {
    const auto values = reinterpret_cast<const pack<T>*>(x)[v];
#pragma unroll
    for (int i = 0; i < V; ++i) largest = fmaxf(largest, fabsf(element<T>::load(values.values[i])));
  }
  for (std::int64_t i = vectors * V + blockIdx.x * static_cast<std::int64_t>(threads) + threadIdx.x; i < count;
       i += stride)
    largest = fmaxf(largest, fabsf(element<T>::load(x[i])));
  const float block = block_max(largest);
  if (threadIdx.x == 0) atomicMax(state + 1, __float_as_uint(block));
}

__device__ unsigned char to_e4m3(float value) {
  return static_cast<unsigned char>(__nv_cvt_float_to_fp8(value, __NV_SATFINITE, __NV_E4M3));
}

// q ← x · 448 / max|x| in e4m3 (saturating), and state[0] ← max|x| / 448, the scale that multiplies q back.
template <typename T>
__global__ void scale_to_e4m3(const T* x, std::int64_t count, unsigned char* q, float* state) {
  constexpr int V = element<T>::vector;
  const float largest = fmaxf(state[1], 1e-30f);  // an all-zero tensor quantizes to zeros
  const float inverse = e4m3_max / largest;
  if (blockIdx.x == 0 && threadIdx.x == 0) state[0] = largest / e4m3_max;
  const std::int64_t vectors = count / V;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * threads;
  for (std::int64_t v = blockIdx.x * static_cast<std::int64_t>(threads) + threadIdx.x; v < vectors; v += stride) {
    const auto values = reinterpret_cast<const pack<T>*>(x)[v];
    struct alignas(V) bytes {
      unsigned char b[V];
    } out;
#pragma unroll
    for (int i = 0; i < V; ++i) out.b[i] = to_e4m3(element<T>::load(values.values[i]) * inverse);
    reinterpret_cast<bytes*>(q)[v] = out;
  }
  for (std::int64_t i = vectors * V + blockIdx.x * static_cast<std::int64_t>(threads) + threadIdx.x; i < count;
       i += stride)
    q[i] = to_e4m3(element<T>::load(x[i]) * inverse);
}

}  // namespace

cudaError_t quantize_fp8_e4m3(const void* x, std::int64_t count, element_type type, void* q, float* state,
                              int multiprocessors, cudaStream_t stream) {
  if (count <= 0) return cudaErrorInvalidValue;
  if (auto status = cudaMemsetAsync(state + 1, 0, sizeof(float), stream); status != cudaSuccess) return status;
  return dispatch(type, [&](auto zero) -> cudaError_t {
    using T = decltype(zero);
    const std::int64_t vectors = (count + element<T>::vector - 1) / element<T>::vector;
    // Enough blocks to fill the device a few times over; each thread strides over the rest.
    const auto blocks = static_cast<unsigned int>(
        std::max<std::int64_t>(1, std::min<std::int64_t>((vectors + threads - 1) / threads, 4 * multiprocessors)));
    absolute_max<T>
        <<<blocks, threads, 0, stream>>>(static_cast<const T*>(x), count, reinterpret_cast<unsigned int*>(state));
    if (auto status = cudaGetLastError(); status != cudaSuccess) return status;
    scale_to_e4m3<T>
        <<<blocks, threads, 0, stream>>>(static_cast<const T*>(x), count, static_cast<unsigned char*>(q), state);
    return cudaGetLastError();
  });
}

}  // namespace hybridiff::models::cuda_kernels
