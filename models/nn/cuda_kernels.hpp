#pragma once
// Our CUDA kernels, where ATen's would cost passes over the activations. Plain C++ (no torch): the kernels are
// compiled by nvcc without the ATen headers; models/nn/nn.cpp calls them on tensors they take and ATen otherwise.
//
// GroupNorm (optionally followed by SiLU) over channels-last activations (group_norm_nhwc.cu), as three kernels:
// per-chunk partial sums, the statistics (one small block per group and image), then normalize + affine (+ SiLU)
// in one pass. PyTorch's CUDA group_norm makes its input NCHW-contiguous first, so a channels-last UNet would pay
// two layout copies per norm; this keeps the layout and folds the SiLU pass of ResnetBlock2D into the norm.
//
// LayerNorm + adaLN modulation (layer_norm_modulate.cu), optionally after a gated residual: one pass where ATen
// takes a LayerNorm and an addcmul (and another addcmul before them for the residual).
//
// Per-tensor float8 (e4m3) quantization of a GEMM's input (quantize_fp8.cu): the absolute maximum, then one
// scaling pass, where ATen takes an abs, a max, a division and a cast, each a pass over the activations; the
// activation before a feed-forward's second GEMM (GELU, GEGLU) is applied inside both passes.

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "models/nn/fp8_activation.hpp"

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

/// The operands of `layer_norm_modulate`: rows of `channels` elements, `tokens` rows per image; every pointer
/// 16-byte aligned, per-image vectors ([batch, channels], rows `..._stride` elements apart) too.
struct layer_norm_modulate_args {
  const void* x = nullptr;     ///< [batch · tokens, channels]
  const void* gate = nullptr;  ///< per-image vectors, or null: no residual (then y and sum are unused)
  const void* y = nullptr;     ///< [batch · tokens, channels]
  void* sum = nullptr;         ///< out: x + gate·y, [batch · tokens, channels]
  const void* shift = nullptr;
  const void* scale = nullptr;  ///< per-image vectors
  void* out = nullptr;          ///< [batch · tokens, channels]
  std::int64_t gate_stride = 0, shift_stride = 0, scale_stride = 0;
  std::int64_t batch = 0, tokens = 0, channels = 0;
  float eps = 1e-6f;
};

/// Whether `layer_norm_modulate` takes rows of `channels` (a multiple of the 16-byte vector, at most 1024 vectors).
bool layer_norm_modulate_supported(std::int64_t channels, element_type type);

/// h = x + gate·y (rounded to the element type, as ATen's addcmul; h = x without a gate), then
/// out = (h - mean) / sqrt(var + eps) · (1 + scale) + shift over each row (biased variance, float32, two passes
/// over the row held in registers: one block per row). Enqueued on `stream`; returns the launch error, if any.
cudaError_t layer_norm_modulate(const layer_norm_modulate_args& args, element_type type, cudaStream_t stream);

/// The most runs `quantize_fp8_e4m3` takes.
constexpr std::int64_t max_fp8_runs = 64;

/// The input of `quantize_fp8_e4m3`: `segments` runs of `count` elements, run s at x + s · segment_stride elements
/// (a batch of row blocks that are not adjacent, e.g. one stream's rows of a joint [B, N + S, D] tensor), every run
/// 16-byte aligned. q receives [segments · count] bytes, contiguous.
struct quantize_fp8_args {
  const void* x = nullptr;
  const void* gate = nullptr;  ///< geglu only: laid out as x
  std::int64_t count = 0;
  std::int64_t segments = 1, segment_stride = 0;
  void* q = nullptr;
  float* state = nullptr;  ///< `quantize_fp8_state_floats` floats: state[0] ← the scale, then the partial maxima
  int multiprocessors = 1;
};

/// The floats `state` needs for `args` (its other fields as they will be passed).
std::int64_t quantize_fp8_state_floats(const quantize_fp8_args& args, element_type type);

/// q ← f(x) / scale as float8 e4m3 bytes (saturating at ±448) with scale = max|f(x)| / 448 over every run;
/// the GEMM reads the scale at state[0] on the device (no host synchronisation, so CUDA graphs capture it). Two
/// kernels (per-block maxima, then the scaling, each block reducing the maxima first), enqueued on `stream`;
/// returns the launch error, if any (cudaErrorInvalidValue for an empty input, more than `max_fp8_runs` runs, or a
/// gate given without geglu or missing with it).
cudaError_t quantize_fp8_e4m3(const quantize_fp8_args& args, element_type type, fp8_activation activation,
                              cudaStream_t stream);

/// The driver's end of a CFG step (guide_measure.cu): guided ← uncond + guidance·(cond − uncond) over `count`
/// elements of `type` (each 16-byte aligned), with the roundings of ATen's three ops in `type`, and the means of
/// |cond − uncond| and |uncond| as ATen's mean of a `type` tensor gives them, into workspace[0] and [1] (the rel-MAE
/// of the tau controller). Two kernels where ATen takes ten ops; per-block partial sums added in a fixed order, so a
/// run repeats its metric exactly. `workspace` holds `guide_and_measure_workspace` doubles.
std::int64_t guide_and_measure_workspace(std::int64_t count, element_type type, int multiprocessors);
cudaError_t guide_and_measure(const void* uncond, const void* cond, void* guided, std::int64_t count, float guidance,
                              element_type type, double* workspace, int multiprocessors, cudaStream_t stream);

/// The Euler (discrete) sampler's step over `count` elements of `type`, each array 16-byte aligned (euler_step.cu):
/// next ← x + (x − (x − σ·output))/σ · (σ_next − σ) with x = sample in float32 and the result rounded to `type`,
/// with the roundings of the seven ATen ops it replaces (diffusers' expression, kept for equal results).
cudaError_t euler_step(const void* sample, const void* output, void* next, std::int64_t count, float sigma,
                       float sigma_next, element_type type, int multiprocessors, cudaStream_t stream);

}  // namespace hybridiff::models::cuda_kernels
