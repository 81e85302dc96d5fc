#pragma once
// Shared building blocks of the diffusers/transformers modules. Every `register_module` name equals the
// checkpoint key segment it stands for, so a module's `named_parameters()` are the checkpoint's keys.

#include <functional>
#include <string>

#include <torch/torch.h>

namespace hybridiff::models {

/// Scaled dot-product attention over [B, heads, L, head_dim] tensors through LibTorch's fused kernels.
at::Tensor attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value, bool causal = false);

/// Splits [B, L, heads·d] into [B, heads, L, d].
at::Tensor split_heads(const at::Tensor& x, std::int64_t heads);
/// Joins [B, heads, L, d] into [B, L, heads·d].
at::Tensor merge_heads(const at::Tensor& x);

/// The activation named in a config ("silu", "gelu", "quick_gelu", "gelu_new"/"gelu_pytorch_tanh"); throws for
/// other names, naming `source`.
at::Tensor activate(const at::Tensor& x, const std::string& name, const std::string& source);

/// torch::nn::Linear's parameters and initialisation (`weight` [out, in], `bias` [out]) with ATen's `at::linear` as
/// the forward. LibTorch's C++ `F::linear` computes a batched input [B, L, in] as a matmul plus a separate
/// broadcasting bias add; `at::linear` (what PyTorch's nn.Linear calls) flattens it into one addmm, whose bias
/// cuBLASLt adds in the GEMM's epilogue — one kernel and one pass over the output less per layer (`bench --profile`
/// shows the difference as strided add kernels).
///
/// Quantized (`quantize_to_fp8`), `weight` holds float8 e4m3 values and the buffer `weight_scale` (float32 [1]) the
/// per-tensor scale that multiplies them back; the forward then quantizes its input per tensor at run time and runs
/// one scaled GEMM (cuBLASLt's FP8 GEMM through `at::_scaled_mm` on CUDA) whose result comes out in the input's dtype,
/// the bias (kept in its dtype) added in the same call.
class LinearImpl : public torch::nn::LinearImpl {
 public:
  using torch::nn::LinearImpl::LinearImpl;
  at::Tensor forward(const at::Tensor& input) const;
  /// Whether the weight is float8 (after quantize_to_fp8).
  bool fp8() const { return weight_scale.defined(); }
  /// Replaces `weight` by its float8 e4m3 values with scale max|weight| / 448, in place (the name stays). Both sides
  /// must be multiples of 16 (the scaled GEMM's rule); throws otherwise.
  void quantize_to_fp8();

  at::Tensor weight_scale;  // float32 [1] once quantized
};
TORCH_MODULE(Linear);

/// Rows `first` .. `first + count` of layer(x): x [..., in] -> [..., count], as if the layer's weight and bias were
/// narrowed to those rows (a GEGLU's value and gate halves as two GEMMs).
at::Tensor linear_part(const Linear& layer, const at::Tensor& x, std::int64_t first, std::int64_t count);

/// A tensor quantized per tensor to float8 e4m3: `data`·`scale` ≈ the original.
struct fp8_tensor {
  at::Tensor data;   // float8 e4m3; quantize_fp8's: [rows, D], contiguous
  at::Tensor scale;  // float32 [1] = max|x| / 448, on x's device
};
/// x [..., D] quantized per tensor, saturating at ±448: on CUDA one max pass and one scaling pass of our kernels
/// (models/nn/quantize_fp8.cu), elsewhere ATen ops. The last input quantized on the calling thread is remembered
/// while it is unchanged (the same tensor, no in-place write since, the same CUDA stream and graph capture or none):
/// the projections that read one input (q, k and v; a GEGLU's halves) quantize it once.
fp8_tensor quantize_fp8(const at::Tensor& x);

/// The means the tau controller's rel-MAE is made of: mean|cond − uncond| and mean|uncond|.
struct guidance_means {
  double mean_abs_difference = 0, mean_abs_uncond = 0;
};
/// A CFG step's guided prediction uncond + guidance·(cond − uncond), and its means once read.
struct measured_guidance {
  at::Tensor guided;
  /// Waits for the means and returns them. On CUDA they are copied to pinned host memory behind the guidance
  /// kernels, so the caller can queue more work (the sampler step) before this wait; it waits for that copy only.
  std::function<guidance_means()> means;
  /// Whether means() waits for the device (the CUDA kernels' copy); false where the means are already on the host.
  bool means_on_device = false;
};
/// On CUDA two kernels of ours and one copy of the means (models/nn/guide_measure.cu), with ATen's roundings: the
/// guided tensor equals ATen's three ops' and the means ATen's, rounded to the predictions' dtype as ATen's mean
/// rounds them. On the CPU one pass over float32 copies (double sums) and ATen's guidance. Elsewhere ATen's ops.
measured_guidance guide_and_measure(const at::Tensor& uncond, const at::Tensor& cond, double guidance);

/// The Euler sampler's step x + (x − (x − σ·output))/σ · (σ_next − σ), x = sample in float32, rounded to output's
/// dtype: on CUDA one kernel of ours (models/nn/euler_step.cu) equal bit for bit to ATen's seven ops. An undefined
/// tensor where it does not apply (not CUDA, dtypes differ, not contiguous or not 16-byte aligned): the caller
/// then runs ATen's ops.
at::Tensor euler_step_on_device(const at::Tensor& sample, const at::Tensor& output, float sigma, float sigma_next);

/// Quantizes (LinearImpl::quantize_to_fp8) the Linear layers of `module` that `select` takes by their name in
/// `module` (the checkpoint key prefix) and whose sides are multiples of 16; returns how many it quantized.
int quantize_linears_to_fp8(torch::nn::Module& module, const std::function<bool(const std::string&)>& select);

Linear linear(std::int64_t in, std::int64_t out, bool bias = true);

/// While one lives on this thread, linear(), conv2d() and embedding() allocate their weights without initialising
/// them: for modules a checkpoint is about to fill (load_state_dict demands every weight). LibTorch initialises
/// weights at construction, in float32 on the CPU: 10.4 GB written and drawn at random for SDXL's UNet, which
/// took most of a load's time. The modules' options then name a 1 × 1 placeholder (nothing reads them).
class uninitialized_weights {
 public:
  uninitialized_weights();
  ~uninitialized_weights();
  uninitialized_weights(const uninitialized_weights&) = delete;
  uninitialized_weights& operator=(const uninitialized_weights&) = delete;

 private:
  bool earlier_;
};

/// layer(x) written into `out` [B, M, out] from x [B, M, in]: one GEMM per image, each writing its image's rows
/// in place. For a row block of a bigger buffer (`buffer.narrow(1, first, M)` of a contiguous [B, L, out]) each
/// image's rows are contiguous but a batch's are not, and at::linear would compute into a temporary and copy it
/// (SD3 writes each stream's q, k, v into the joint [B, N + S, inner] buffers this way instead of a cat of them).
/// x's rows should be contiguous per image too (a row block of a contiguous tensor), else ATen copies them first.
/// With autograd recording (grad mode on and an input requiring grad) it computes at::linear and copies.
void linear_into(const at::Tensor& out, const at::Tensor& x, const Linear& layer);
/// layer(x) for x [B, M, in] whose rows are contiguous per image (a row block): [B, M, out], contiguous.
at::Tensor linear_rows(const at::Tensor& x, const Linear& layer);

/// gelu(layer(x), "tanh"), x [..., in] -> [..., out]. On CUDA one GEMM with the bias and the GELU in its cuBLASLt
/// epilogue (ATen's `_addmm_activation`, whose CUDA GELU is the tanh approximation) instead of a GEMM and a GELU pass
/// over the [..., out] activations; elsewhere the two ops (that function's CPU GELU is the exact one).
at::Tensor linear_gelu_tanh(const Linear& layer, const at::Tensor& x);

/// out(gelu_tanh(in(x))), SD3's feed-forward. With a float8 `out` the GELU is applied inside the quantization of
/// out's input: its 16-bit output is never stored (a write and a read of [..., hidden] less).
at::Tensor feed_forward_gelu_tanh(const Linear& in, const Linear& out, const at::Tensor& x);

/// out(value · gelu(gate)) with value and gate the halves of proj(x), SDXL's GEGLU feed-forward. The halves come
/// from two GEMMs over proj's rows: each output is contiguous, so the GELU and the product are vectorized in-place
/// kernels (the halves of one [B, L, 2·hidden] output are strided views: 5.5 ms per batch-2 step on an H100 for these
/// two ops). With a float8 `out`, value · gelu(gate) is computed inside the quantization of out's input instead.
at::Tensor geglu_feed_forward(const Linear& proj, const Linear& out, const at::Tensor& x);

torch::nn::Conv2d conv2d(std::int64_t in, std::int64_t out, std::int64_t kernel, std::int64_t stride = 1,
                         std::int64_t padding = 0);
torch::nn::GroupNorm group_norm(std::int64_t groups, std::int64_t channels, double eps);
torch::nn::Embedding embedding(std::int64_t count, std::int64_t dim);
/// `norm`(x), then SiLU when `then_silu`: x [B, C, H, W] -> same. A CUDA tensor stored channels-last (fp32, fp16
/// or bf16 like the norm's parameters; C a multiple of 8 and at most 8192, in fp32 of 4 and at most 4096) goes
/// through our NHWC kernels (models/nn/group_norm_nhwc.cu) and stays channels-last, the SiLU folded into the
/// normalizing pass; anything else through ATen's group_norm, whose CUDA kernel makes its input and output NCHW.
at::Tensor apply_group_norm(const torch::nn::GroupNorm& norm, const at::Tensor& x, bool then_silu = false);
/// Stores every 4-D parameter of `module` (its conv weights) channels-last, in place (names and values stay): cuDNN
/// then runs channels-last inputs without converting weights or activations. CUDA parameters only, else
/// hybridiff::error naming `owner`.
void store_channels_last(torch::nn::Module& module, const std::string& owner);
torch::nn::LayerNorm layer_norm(std::int64_t dim, double eps, bool affine = true);
/// adaLN modulation after a LayerNorm without affine parameters: LN(x)·(1 + scale) + shift, x [B, L, D], shift and
/// scale [B, D]. On CUDA (x contiguous, D a multiple of the 16-byte vector and at most 1024 of them) one kernel of
/// ours (models/nn/layer_norm_modulate.cu; taken only when no autograd is recording); elsewhere ATen's layer_norm and
/// one addcmul.
at::Tensor layer_norm_modulate(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale, double eps);
/// The gated residual h = x + gate·y (y [B, L, D], gate [B, D]) and layer_norm_modulate(h, shift, scale, eps):
/// {h, modulated}. One kernel on CUDA where layer_norm_modulate takes x (and y is contiguous).
std::pair<at::Tensor, at::Tensor> gated_residual_layer_norm_modulate(const at::Tensor& x, const at::Tensor& gate,
                                                                      const at::Tensor& y, const at::Tensor& shift,
                                                                      const at::Tensor& scale, double eps);

/// diffusers' `ResnetBlock2D` (time_scale_shift "default"): GroupNorm, SiLU, conv, + projected time embedding,
/// GroupNorm, SiLU, conv, 1x1 shortcut when the channel count changes; output = (x + h) / output_scale_factor.
/// Ref: diffusers/models/resnet.py ResnetBlock2D.
class ResnetBlock2DImpl : public torch::nn::Module {
 public:
  /// `temb_channels` 0: no time embedding (the VAE's blocks).
  ResnetBlock2DImpl(std::int64_t in_channels, std::int64_t out_channels, std::int64_t temb_channels, std::int64_t groups,
                    double eps, double output_scale_factor = 1.0);
  /// x [B, in, H, W], temb [B, temb_channels] or undefined -> [B, out, H, W]
  at::Tensor forward(const at::Tensor& x, const at::Tensor& temb = {});

  torch::nn::GroupNorm norm1{nullptr}, norm2{nullptr};
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr}, conv_shortcut{nullptr};
  Linear time_emb_proj{nullptr};

 private:
  double output_scale_factor_;
};
TORCH_MODULE(ResnetBlock2D);

/// diffusers' `Downsample2D` with a conv: stride 2, `padding` 1 (UNet) or 0 with a (0,1,0,1) pad first (VAE).
class Downsample2DImpl : public torch::nn::Module {
 public:
  Downsample2DImpl(std::int64_t channels, std::int64_t padding);
  at::Tensor forward(const at::Tensor& x);  // [B, C, H, W] -> [B, C, H/2, W/2]
  torch::nn::Conv2d conv{nullptr};

 private:
  std::int64_t padding_;
};
TORCH_MODULE(Downsample2D);

/// diffusers' `Upsample2D` with a conv: nearest-neighbour upsampling (to `size`, or ×2), then a 3×3 conv.
class Upsample2DImpl : public torch::nn::Module {
 public:
  explicit Upsample2DImpl(std::int64_t channels);
  at::Tensor forward(const at::Tensor& x, c10::IntArrayRef size = {});  // [B, C, H, W] -> [B, C, 2H, 2W]
  torch::nn::Conv2d conv{nullptr};
};
TORCH_MODULE(Upsample2D);

/// diffusers' `Attention` with the 2.0 processor: to_q/to_k/to_v, SDPA, to_out.0. With `group_norm_groups` > 0 it
/// is the VAE's spatial self-attention (GroupNorm first, [B, C, H, W] in and out, residual added).
/// Ref: diffusers/models/attention_processor.py Attention, AttnProcessor2_0.
class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(std::int64_t query_dim, std::int64_t context_dim, std::int64_t heads, std::int64_t head_dim,
                bool qkv_bias, std::int64_t group_norm_groups = 0, double group_norm_eps = 1e-6);
  /// x [B, L, query_dim], context [B, S, context_dim] (undefined: self-attention) -> [B, L, query_dim];
  /// or, with a group norm, x [B, C, H, W] -> [B, C, H, W].
  at::Tensor forward(const at::Tensor& x, const at::Tensor& context = {});

  torch::nn::GroupNorm group_norm{nullptr};
  Linear to_q{nullptr}, to_k{nullptr}, to_v{nullptr};
  torch::nn::ModuleList to_out{nullptr};

 private:
  std::int64_t heads_;
};
TORCH_MODULE(Attention);

}  // namespace hybridiff::models
