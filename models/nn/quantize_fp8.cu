#include <algorithm>

#include <cuda_fp8.h>

#include "models/nn/cuda_elements.cuh"
#include "models/nn/cuda_kernels.hpp"

namespace hybridiff::models::cuda_kernels {
namespace {

constexpr int threads = 256;
// 16-byte vectors each thread loads before it uses any: enough loads in flight to stream at the memory's bandwidth
// (one at a time, the max pass ran at under half of it on an H100).
constexpr int unroll = 4;
constexpr std::int64_t chunk = static_cast<std::int64_t>(threads) * unroll;  // vectors per block and iteration
constexpr float e4m3_max = 448.f;

// The activation applied before quantizing, as float32 (what ATen's fp16 kernels compute in).
__device__ float gelu_tanh(float x) {
  return 0.5f * x * (1.f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}
__device__ float gelu_erf(float x) { return 0.5f * x * (1.f + erff(x * 0.7071067811865476f)); }

// f(x) for the activation f (geglu: x · gelu(gate), the gate element at the same place as x's).
template <typename T>
__device__ float activated(fp8_activation activation, T x, T gate) {
  const float value = element<T>::load(x);
  switch (activation) {
    case fp8_activation::gelu_tanh: return gelu_tanh(value);
    case fp8_activation::geglu: return value * gelu_erf(element<T>::load(gate));
    default: return value;
  }
}

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

// Calls visit(index in the segment, V activated values) for every whole vector of segment blockIdx.y this block
// takes (chunks blockIdx.x, blockIdx.x + gridDim.x, ...: `unroll` independent loads per thread first), then
// visit_tail(index, value) for the elements after the last whole vector.
template <typename T, typename Visit, typename VisitTail>
__device__ void for_each_value(const quantize_fp8_args& args, fp8_activation activation, Visit visit,
                               VisitTail visit_tail) {
  constexpr int V = element<T>::vector;
  const std::int64_t s = blockIdx.y;
  const T* x = static_cast<const T*>(args.x) + s * args.segment_stride;
  const T* gate = args.gate ? static_cast<const T*>(args.gate) + s * args.segment_stride : nullptr;
  const std::int64_t vectors = args.count / V;
  for (std::int64_t c = blockIdx.x; c * chunk < vectors; c += gridDim.x) {
    pack<T> values[unroll], gates[unroll] = {};  // no gate: zeros, never read
#pragma unroll
    for (int u = 0; u < unroll; ++u) {
      const std::int64_t v = c * chunk + u * threads + threadIdx.x;
      if (v < vectors) {
        values[u] = reinterpret_cast<const pack<T>*>(x)[v];
        if (gate) gates[u] = reinterpret_cast<const pack<T>*>(gate)[v];
      }
    }
#pragma unroll
    for (int u = 0; u < unroll; ++u) {
      const std::int64_t v = c * chunk + u * threads + threadIdx.x;
      if (v >= vectors) continue;
      float out[V];
#pragma unroll
      for (int i = 0; i < V; ++i) out[i] = activated(activation, values[u].values[i], gates[u].values[i]);
      visit(v * V, out);
    }
  }
  if (blockIdx.x != 0) return;
  for (std::int64_t e = vectors * V + threadIdx.x; e < args.count; e += threads)
    visit_tail(e, activated(activation, x[e], gate ? gate[e] : x[e]));
}

// state[1 + b] ← max |f(x)| over what block b (blockIdx.y · gridDim.x + blockIdx.x) took: per-block partial maxima,
// which need no zeroing before (a memset node per quantization less) and no atomics. fmaxf passes over NaNs: a NaN
// input stays NaN in the quantized tensor (and in the GEMM's output), as in fp16, without making every other element
// NaN through the scale.
template <typename T>
__global__ void absolute_max(quantize_fp8_args args, fp8_activation activation) {
  constexpr int V = element<T>::vector;
  float largest = 0.f;
  for_each_value<T>(
      args, activation,
      [&](std::int64_t, const float(&values)[V]) {
#pragma unroll
        for (int i = 0; i < V; ++i) largest = fmaxf(largest, fabsf(values[i]));
      },
      [&](std::int64_t, float value) { largest = fmaxf(largest, fabsf(value)); });
  const float block = block_max(largest);
  if (threadIdx.x == 0) args.state[1 + blockIdx.y * gridDim.x + blockIdx.x] = block;
}

__device__ unsigned char to_e4m3(float value) {
  return static_cast<unsigned char>(__nv_cvt_float_to_fp8(value, __NV_SATFINITE, __NV_E4M3));
}

// q ← f(x) · 448 / max|f(x)| in e4m3 (saturating), and state[0] ← max|f(x)| / 448, the scale that multiplies q
// back. q is [segments, count], contiguous.
template <typename T>
__global__ void scale_to_e4m3(quantize_fp8_args args, fp8_activation activation) {
  constexpr int V = element<T>::vector;
  // Every block reduces the max pass's partial maxima (a few hundred floats, from L2) itself.
  __shared__ float reduced;
  float partial = 0.f;
  for (unsigned int b = threadIdx.x; b < gridDim.x * gridDim.y; b += threads)
    partial = fmaxf(partial, args.state[1 + b]);
  partial = block_max(partial);
  if (threadIdx.x == 0) reduced = partial;
  __syncthreads();
  const float largest = fmaxf(reduced, 1e-30f);  // an all-zero tensor quantizes to zeros
  const float inverse = e4m3_max / largest;
  if (blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0) args.state[0] = largest / e4m3_max;
  unsigned char* q = static_cast<unsigned char*>(args.q) + static_cast<std::int64_t>(blockIdx.y) * args.count;
  struct alignas(V) bytes {
    unsigned char b[V];
  };
  for_each_value<T>(
      args, activation,
      [&](std::int64_t e, const float(&values)[V]) {
        bytes out;
#pragma unroll
        for (int i = 0; i < V; ++i) out.b[i] = to_e4m3(values[i] * inverse);
        *reinterpret_cast<bytes*>(q + e) = out;
      },
      [&](std::int64_t e, float value) { q[e] = to_e4m3(value * inverse); });
}

}  // namespace

namespace {

// The launch's blocks: enough to fill the device a few times over, each striding over its run's other chunks.
dim3 blocks_of(const quantize_fp8_args& args, element_type type) {
  const std::int64_t chunks = (args.count / vector_of(type) + chunk - 1) / chunk;
  return {static_cast<unsigned int>(
              std::max<std::int64_t>(1, std::min<std::int64_t>(chunks, 8 * args.multiprocessors / args.segments + 1))),
          static_cast<unsigned int>(args.segments)};
}

}  // namespace

std::int64_t quantize_fp8_state_floats(const quantize_fp8_args& args, element_type type) {
  const auto blocks = blocks_of(args, type);
  return 1 + static_cast<std::int64_t>(blocks.x) * blocks.y;
}

cudaError_t quantize_fp8_e4m3(const quantize_fp8_args& args, element_type type, fp8_activation activation,
                              cudaStream_t stream) {
  if (args.count <= 0 || args.segments <= 0 || args.segments > max_fp8_runs) return cudaErrorInvalidValue;
  if ((activation == fp8_activation::geglu) != (args.gate != nullptr)) return cudaErrorInvalidValue;
  const auto blocks = blocks_of(args, type);
  return dispatch(type, [&](auto zero) -> cudaError_t {
    using T = decltype(zero);
    absolute_max<T><<<blocks, threads, 0, stream>>>(args, activation);
    if (auto status = cudaGetLastError(); status != cudaSuccess) return status;
    scale_to_e4m3<T><<<blocks, threads, 0, stream>>>(args, activation);
    return cudaGetLastError();
  });
}

}  // namespace hybridiff::models::cuda_kernels
