#pragma once
// GroupNorm (optionally followed by SiLU) over channels-last activations on CUDA, as three kernels: per-chunk
// partial sums, the statistics (one small block per group and image), then normalize + affine (+ SiLU) in one pass.
// PyTorch's CUDA group_norm makes its input NCHW-contiguous first, so a channels-last UNet would pay two layout
// copies per norm; this keeps the layout and folds the SiLU pass of ResnetBlock2D into the norm. Plain C++ (no
// torch): the kernels are compiled by nvcc without the ATen headers.

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace hybridiff::models::cuda_kernels {

enum class element_type { float32, float16, bfloat16 };

struct group_norm_nhwc_shape {
  std::int64_t batch = 0, pixels = 0, channels = 0, groups = 0;  ///< x is [batch, pixels, channels] in memory
};

/// Elements per 16-byte vector: the kernels load whole vectors, so `channels` must be a multiple of it.
int group_norm_nhwc_vector(element_type type);

/// Whether the kernels take this shape (channels a multiple of the vector, groups dividing channels, at most 1024
/// vectors per pixel, at most 1024 groups); callers fall back to ATen otherwise.
bool group_norm_nhwc_supported(const group_norm_nhwc_shape& shape, element_type type);

/// Floats of the workspace that `group_norm_nhwc` needs (the per-chunk partial sums and the statistics).
std::size_t group_norm_nhwc_workspace(const group_norm_nhwc_shape& shape, element_type type);

/// y = (x - mean_g) / sqrt(var_g + eps) * gamma_c + beta_c over each image's groups of `channels / groups`
/// consecutive channels and all pixels, then y = y·sigmoid(y) when `silu`. x, y: [batch, pixels, channels] of
/// `type`, 16-byte aligned; gamma, beta: [channels] of `type` or null (1 and 0). Statistics in float32, each
/// group's sums shifted by its first element (keeps E[x²] - E[x]² accurate when a group's mean is large).
/// Enqueued on `stream`; returns the launch error, if any.
cudaError_t group_norm_nhwc(const void* x, const void* gamma, const void* beta, void* y, float* workspace,
                            const group_norm_nhwc_shape& shape, element_type type, float eps, bool silu,
                            cudaStream_t stream);

}  // namespace hybridiff::models::cuda_kernels
