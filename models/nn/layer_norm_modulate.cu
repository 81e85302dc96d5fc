#include "models/nn/cuda_elements.cuh"
#include "models/nn/cuda_kernels.hpp"

namespace hybridiff::models::cuda_kernels {
namespace {

constexpr int max_vectors = 1024;  // one thread per vector of a row, one block per row

// The sum of `value` over the block (blockDim.x a multiple of 32), for every thread; `scratch` [32] may be reused
// by the next call.
__device__ float block_sum(float value, float* scratch) {
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  __syncthreads();  // the previous call's readers are done with scratch
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = value;
  __syncthreads();
  float total = 0.f;
  for (int warp = 0; warp < static_cast<int>(blockDim.x / 32); ++warp) total += scratch[warp];
  return total;
}

template <typename T>
__device__ pack<T> load_pack(const void* base, std::int64_t offset) {
  return *reinterpret_cast<const pack<T>*>(static_cast<const T*>(base) + offset);
}

template <typename T>
__global__ void layer_norm_modulate_rows(layer_norm_modulate_args args) {
  constexpr int V = element<T>::vector;
  __shared__ float scratch[32];
  const std::int64_t row = blockIdx.x, image = row / args.tokens;
  const int first = threadIdx.x * V;
  const bool active = first < args.channels;  // the block is rounded up to whole warps
  const std::int64_t offset = row * args.channels + first;
  float h[V];
  float sum = 0.f;
  if (active) {
    const auto x = load_pack<T>(args.x, offset);
    if (args.gate != nullptr) {
      const auto y = load_pack<T>(args.y, offset);
      const auto gate = load_pack<T>(args.gate, image * args.gate_stride + first);
      pack<T> residual;
#pragma unroll
      for (int v = 0; v < V; ++v) {
        residual.values[v] = element<T>::store(element<T>::load(x.values[v]) +
                                               element<T>::load(gate.values[v]) * element<T>::load(y.values[v]));
        h[v] = element<T>::load(residual.values[v]);
      }
      *reinterpret_cast<pack<T>*>(static_cast<T*>(args.sum) + offset) = residual;
    } else {
#pragma unroll
      for (int v = 0; v < V; ++v) h[v] = element<T>::load(x.values[v]);
    }
#pragma unroll
    for (int v = 0; v < V; ++v) sum += h[v];
  }
  const float count = static_cast<float>(args.channels);
  const float mean = block_sum(sum, scratch) / count;
  float square = 0.f;
  if (active) {
#pragma unroll
    for (int v = 0; v < V; ++v) square += (h[v] - mean) * (h[v] - mean);
  }
  const float inverse_deviation = rsqrtf(block_sum(square, scratch) / count + args.eps);
  if (!active) return;
  const auto shift = load_pack<T>(args.shift, image * args.shift_stride + first);
  const auto scale = load_pack<T>(args.scale, image * args.scale_stride + first);
  pack<T> out;
#pragma unroll
  for (int v = 0; v < V; ++v)
    out.values[v] = element<T>::store((h[v] - mean) * inverse_deviation * (1.f + element<T>::load(scale.values[v])) +
                                      element<T>::load(shift.values[v]));
  *reinterpret_cast<pack<T>*>(static_cast<T*>(args.out) + offset) = out;
}

}  // namespace

bool layer_norm_modulate_supported(std::int64_t channels, element_type type) {
  const int vector = vector_of(type);
  return channels > 0 && channels % vector == 0 && channels / vector <= max_vectors;
}

cudaError_t layer_norm_modulate(const layer_norm_modulate_args& args, element_type type, cudaStream_t stream) {
  if (!layer_norm_modulate_supported(args.channels, type) || args.batch <= 0 || args.tokens <= 0)
    return cudaErrorInvalidValue;
  const auto vectors = args.channels / vector_of(type);
  const auto threads = static_cast<unsigned>((vectors + 31) / 32 * 32);
  const auto rows = static_cast<unsigned>(args.batch * args.tokens);
  return dispatch(type, [&](auto tag) {
    layer_norm_modulate_rows<decltype(tag)><<<rows, threads, 0, stream>>>(args);
    return cudaGetLastError();
  });
}

}  // namespace hybridiff::models::cuda_kernels
