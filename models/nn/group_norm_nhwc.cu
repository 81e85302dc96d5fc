#include <algorithm>

#include "models/nn/cuda_elements.cuh"
#include "models/nn/cuda_kernels.hpp"

namespace hybridiff::models::cuda_kernels {
namespace {

// Blocks are (channels / vector) threads wide, one vector of consecutive channels each, and `rows` pixels tall;
// a block walks the pixels of one chunk of one image. Enough chunks to give the GPU ~512 blocks. (A first version
// merged every image's partial sums in each normalizing block: at batch 1, 512 chunks, that cost more than the
// normalizing itself.)
constexpr int max_threads = 512;
constexpr std::int64_t target_blocks = 512;

struct launch_plan {
  int threads_x = 0, rows = 0;
  std::int64_t chunks = 0, pixels_per_chunk = 0;
};

launch_plan plan_for(const group_norm_nhwc_shape& shape, int vector) {
  launch_plan plan;
  plan.threads_x = static_cast<int>(shape.channels / vector);
  plan.rows = std::max(1, max_threads / plan.threads_x);
  const auto wanted = std::max<std::int64_t>(1, (target_blocks + shape.batch - 1) / shape.batch);
  // At least 4 pixels per thread: a block's fixed costs (its shared sums, its partial sums' write) stay small.
  const auto most = std::max<std::int64_t>(1, (shape.pixels + 4 * plan.rows - 1) / (4 * plan.rows));
  const auto chunks = std::min(wanted, most);
  plan.pixels_per_chunk = (shape.pixels + chunks - 1) / chunks;
  plan.chunks = (shape.pixels + plan.pixels_per_chunk - 1) / plan.pixels_per_chunk;
  return plan;
}

// The value each group's sums are taken relative to: its first element in this image.
template <typename T>
__device__ float group_shift(const T* image, int group, int channels_per_group) {
  return element<T>::load(image[group * channels_per_group]);
}

// partial [batch, chunks, groups, 2]: Σ(x - shift) and Σ(x - shift)² over the chunk's pixels (fp32 per thread
// over its pixels, then per block in shared memory).
template <typename T>
__global__ void group_norm_partial_sums(const T* __restrict__ x, float* __restrict__ partial, std::int64_t pixels,
                                        int channels, int groups, std::int64_t pixels_per_chunk) {
  constexpr int V = element<T>::vector;
  extern __shared__ float sums[];  // [2 · groups]
  const int image = blockIdx.y, chunk = blockIdx.x, chunks = gridDim.x;
  const int thread = threadIdx.y * blockDim.x + threadIdx.x, threads = blockDim.x * blockDim.y;
  const int channels_per_group = channels / groups;
  const int first_channel = threadIdx.x * V;
  const T* image_x = x + static_cast<std::int64_t>(image) * pixels * channels;
  for (int i = thread; i < 2 * groups; i += threads) sums[i] = 0.f;

  float shift[V], sum[V], square[V];
#pragma unroll
  for (int v = 0; v < V; ++v) {
    shift[v] = group_shift(image_x, (first_channel + v) / channels_per_group, channels_per_group);
    sum[v] = square[v] = 0.f;
  }
  const auto begin = chunk * pixels_per_chunk, end = min(pixels, begin + pixels_per_chunk);
  for (auto p = begin + threadIdx.y; p < end; p += blockDim.y) {
    const auto loaded = *reinterpret_cast<const pack<T>*>(image_x + p * channels + first_channel);
#pragma unroll
    for (int v = 0; v < V; ++v) {
      const float d = element<T>::load(loaded.values[v]) - shift[v];
      sum[v] += d;
      square[v] += d * d;
    }
  }
  __syncthreads();  // sums[] zeroed
  // Runs of this thread's channels in one group are added once.
  int group = first_channel / channels_per_group;
  float run_sum = 0.f, run_square = 0.f;
#pragma unroll
  for (int v = 0; v < V; ++v) {
    const int g = (first_channel + v) / channels_per_group;
    if (g != group) {
      atomicAdd(&sums[group], run_sum);
      atomicAdd(&sums[groups + group], run_square);
      run_sum = run_square = 0.f;
      group = g;
    }
    run_sum += sum[v];
    run_square += square[v];
  }
  atomicAdd(&sums[group], run_sum);
  atomicAdd(&sums[groups + group], run_square);
  __syncthreads();
  float* out = partial + (static_cast<std::int64_t>(image) * chunks + chunk) * groups * 2;
  for (int g = thread; g < groups; g += threads) {
    out[2 * g] = sums[g];
    out[2 * g + 1] = sums[groups + g];
  }
}

// stats [batch, groups, 2]: each group's mean and 1/σ from its partial sums; one block per (group, image).
template <typename T>
__global__ void group_norm_statistics(const T* __restrict__ x, const float* __restrict__ partial,
                                      float* __restrict__ stats, std::int64_t pixels, int channels, int groups,
                                      int chunks, float eps) {
  __shared__ float warp_sums[2][32];
  const int group = blockIdx.x, image = blockIdx.y;
  const float* image_partial = partial + static_cast<std::int64_t>(image) * chunks * groups * 2;
  float sum = 0.f, square = 0.f;
  for (int k = threadIdx.x; k < chunks; k += blockDim.x) {
    sum += image_partial[(static_cast<std::int64_t>(k) * groups + group) * 2];
    square += image_partial[(static_cast<std::int64_t>(k) * groups + group) * 2 + 1];
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    sum += __shfl_down_sync(0xffffffffu, sum, offset);
    square += __shfl_down_sync(0xffffffffu, square, offset);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = (blockDim.x + 31) / 32;
  if (lane == 0) {
    warp_sums[0][warp] = sum;
    warp_sums[1][warp] = square;
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  sum = square = 0.f;
  for (int w = 0; w < warps; ++w) {
    sum += warp_sums[0][w];
    square += warp_sums[1][w];
  }
  const int channels_per_group = channels / groups;
  const float count = static_cast<float>(pixels) * channels_per_group;
  const float mean_shifted = sum / count;
  const float variance = fmaxf(square / count - mean_shifted * mean_shifted, 0.f);
  const T* image_x = x + static_cast<std::int64_t>(image) * pixels * channels;
  float* out = stats + (static_cast<std::int64_t>(image) * groups + group) * 2;
  out[0] = mean_shifted + group_shift(image_x, group, channels_per_group);
  out[1] = rsqrtf(variance + eps);
}

template <typename T>
__global__ void group_norm_apply(const T* __restrict__ x, const float* __restrict__ stats,
                                 const T* __restrict__ gamma, const T* __restrict__ beta, T* __restrict__ y,
                                 std::int64_t pixels, int channels, int groups, std::int64_t pixels_per_chunk,
                                 bool silu) {
  constexpr int V = element<T>::vector;
  const int image = blockIdx.y, chunk = blockIdx.x;
  const int channels_per_group = channels / groups;
  const std::int64_t image_offset = static_cast<std::int64_t>(image) * pixels * channels;
  const float* image_stats = stats + static_cast<std::int64_t>(image) * groups * 2;
  const int first_channel = threadIdx.x * V;
  float scale[V], offset[V];
#pragma unroll
  for (int v = 0; v < V; ++v) {
    const int c = first_channel + v, g = c / channels_per_group;
    const float weight = gamma != nullptr ? element<T>::load(gamma[c]) : 1.f;
    const float bias = beta != nullptr ? element<T>::load(beta[c]) : 0.f;
    scale[v] = image_stats[2 * g + 1] * weight;
    offset[v] = bias - image_stats[2 * g] * scale[v];
  }
  const auto begin = chunk * pixels_per_chunk, end = min(pixels, begin + pixels_per_chunk);
  for (auto p = begin + threadIdx.y; p < end; p += blockDim.y) {
    const auto index = image_offset + p * channels + first_channel;
    const auto loaded = *reinterpret_cast<const pack<T>*>(x + index);
    pack<T> result;
#pragma unroll
    for (int v = 0; v < V; ++v) {
      float value = element<T>::load(loaded.values[v]) * scale[v] + offset[v];
      if (silu) value = value / (1.f + __expf(-value));
      result.values[v] = element<T>::store(value);
    }
    *reinterpret_cast<pack<T>*>(y + index) = result;
  }
}

template <typename T>
cudaError_t launch(const void* x, const void* gamma, const void* beta, void* y, float* workspace,
                   const group_norm_nhwc_shape& shape, float eps, bool silu, cudaStream_t stream) {
  const auto plan = plan_for(shape, element<T>::vector);
  const dim3 grid(static_cast<unsigned>(plan.chunks), static_cast<unsigned>(shape.batch));
  const dim3 block(static_cast<unsigned>(plan.threads_x), static_cast<unsigned>(plan.rows));
  const auto shared = static_cast<std::size_t>(2 * shape.groups) * sizeof(float);
  const int channels = static_cast<int>(shape.channels), groups = static_cast<int>(shape.groups);
  const auto* input = static_cast<const T*>(x);
  float* partial = workspace;
  float* stats = workspace + shape.batch * plan.chunks * shape.groups * 2;
  group_norm_partial_sums<T><<<grid, block, shared, stream>>>(input, partial, shape.pixels, channels, groups,
                                                               plan.pixels_per_chunk);
  if (const auto error = cudaGetLastError(); error != cudaSuccess) return error;
  const dim3 statistics_grid(static_cast<unsigned>(shape.groups), static_cast<unsigned>(shape.batch));
  group_norm_statistics<T><<<statistics_grid, 128, 0, stream>>>(input, partial, stats, shape.pixels, channels, groups,
                                                                static_cast<int>(plan.chunks), eps);
  if (const auto error = cudaGetLastError(); error != cudaSuccess) return error;
  group_norm_apply<T><<<grid, block, 0, stream>>>(input, stats, static_cast<const T*>(gamma),
                                                  static_cast<const T*>(beta), static_cast<T*>(y), shape.pixels,
                                                  channels, groups, plan.pixels_per_chunk, silu);
  return cudaGetLastError();
}

}  // namespace

int group_norm_nhwc_vector(element_type type) { return vector_of(type); }

bool group_norm_nhwc_supported(const group_norm_nhwc_shape& shape, element_type type) {
  const int vector = group_norm_nhwc_vector(type);
  return shape.batch > 0 && shape.batch <= 65535 && shape.pixels > 0 && shape.groups > 0 && shape.groups <= 1024 &&
         shape.channels % vector == 0 && shape.channels % shape.groups == 0 && shape.channels / vector <= 1024;
}

std::size_t group_norm_nhwc_workspace(const group_norm_nhwc_shape& shape, element_type type) {
  const auto plan = plan_for(shape, group_norm_nhwc_vector(type));
  return static_cast<std::size_t>(shape.batch * (plan.chunks + 1) * shape.groups * 2);  // partial sums, then stats
}

cudaError_t group_norm_nhwc(const void* x, const void* gamma, const void* beta, void* y, float* workspace,
                            const group_norm_nhwc_shape& shape, element_type type, float eps, bool silu,
                            cudaStream_t stream) {
  return dispatch(type, [&](auto tag) {
    return launch<decltype(tag)>(x, gamma, beta, y, workspace, shape, eps, silu, stream);
  });
}

}  // namespace hybridiff::models::cuda_kernels
