#include "models/nn/nn.hpp"

#include "models/errors.hpp"
#include "models/nn/fp8_activation.hpp"

#ifdef HYBRIDIFF_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>

#include "models/nn/cuda_kernels.hpp"
#endif

namespace hybridiff::models {

at::Tensor attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value, bool causal) {
  return at::scaled_dot_product_attention(query, key, value, /*attn_mask=*/{}, /*dropout_p=*/0.0, causal);
}

at::Tensor split_heads(const at::Tensor& x, std::int64_t heads) {
  auto batch = x.size(0), length = x.size(1);
  return x.view({batch, length, heads, x.size(2) / heads}).transpose(1, 2);
}

at::Tensor merge_heads(const at::Tensor& x) {
  auto batch = x.size(0), heads = x.size(1), length = x.size(2), dim = x.size(3);
  return x.transpose(1, 2).reshape({batch, length, heads * dim});
}

at::Tensor activate(const at::Tensor& x, const std::string& name, const std::string& source) {
  if (name == "silu" || name == "swish") return torch::silu(x);
  if (name == "gelu") return torch::gelu(x);
  if (name == "gelu_new" || name == "gelu_pytorch_tanh") return torch::gelu(x, "tanh");
  if (name == "quick_gelu") return x * torch::sigmoid(1.702 * x);
  if (name == "relu") return torch::relu(x);
  throw error(source + ": unsupported activation '" + name + "' (supported: silu, gelu, gelu_new, quick_gelu, relu)");
}

namespace {

thread_local bool skip_weight_init = false;

// The parameter `weight` of a module built on a 1 × 1 placeholder, given its real shape, uninitialised.
void allocate(at::Tensor& parameter, at::IntArrayRef shape) {
  torch::NoGradGuard no_grad;
  parameter.set_data(torch::empty(shape, parameter.options()));
}

}  // namespace

uninitialized_weights::uninitialized_weights() : earlier_(skip_weight_init) { skip_weight_init = true; }
uninitialized_weights::~uninitialized_weights() { skip_weight_init = earlier_; }

Linear linear(std::int64_t in, std::int64_t out, bool bias) {
  if (!skip_weight_init) return Linear(torch::nn::LinearOptions(in, out).bias(bias));
  Linear layer(torch::nn::LinearOptions(1, 1).bias(bias));
  allocate(layer->weight, {out, in});
  if (bias) allocate(layer->bias, {out});
  return layer;
}

torch::nn::Embedding embedding(std::int64_t count, std::int64_t dim) {
  if (!skip_weight_init) return torch::nn::Embedding(count, dim);
  torch::nn::Embedding table(1, 1);
  allocate(table->weight, {count, dim});
  return table;
}

namespace {

// out [R, out_features] ← rows [R, in] (float8, scale `scale`) times the float8 `weight` [out_features, in] (scale
// `weight_scale`; column-major as its transpose, which cuBLASLt's FP8 GEMM wants) plus `bias` (undefined: none), in
// out's dtype. Fast accumulation (cuBLASLt's FP8 mode on Hopper): its cost in quality is measured with the rest
// (docs/models.md).
void scaled_gemm_into(at::Tensor& out, const at::Tensor& rows, const at::Tensor& scale, const at::Tensor& weight,
                      const at::Tensor& weight_scale, const at::Tensor& bias) {
  at::_scaled_mm_out(out, rows, weight.t(), scale, weight_scale,
                     bias.defined() ? std::optional<at::Tensor>(bias) : std::nullopt, std::nullopt, out.scalar_type(),
                     /*use_fast_accum=*/rows.is_cuda());
}

}  // namespace

void linear_into(const at::Tensor& out, const at::Tensor& x, const Linear& layer) {
  const auto& weight = layer->weight;
  const auto& bias = layer->bias;
  TORCH_CHECK(x.dim() == 3 && out.dim() == 3 && out.size(0) == x.size(0) && out.size(1) == x.size(1) &&
                  x.size(2) == weight.size(1) && out.size(2) == weight.size(0),
              "linear_into: x ", x.sizes(), " and out ", out.sizes(), " do not fit a weight ", weight.sizes());
  if (layer->fp8()) {
    // x quantized once, then one scaled GEMM per image straight into its row block.
    const auto input = quantize_fp8(x);  // [B·M, in]
    const auto rows = x.size(1);
    for (std::int64_t image = 0; image < x.size(0); ++image) {
      auto block = out.select(0, image);  // [M, out], contiguous
      scaled_gemm_into(block, input.data.narrow(0, image * rows, rows), input.scale, weight, layer->weight_scale, bias);
    }
    return;
  }
  if (at::GradMode::is_enabled() && (x.requires_grad() || weight.requires_grad())) {
    out.copy_(at::linear(x, weight, bias));
    return;
  }
  const auto weight_t = weight.t();  // [in, out]
  for (std::int64_t image = 0; image < x.size(0); ++image) {
    auto rows = out.select(0, image);  // [M, out]
    if (bias.defined())
      at::addmm_out(rows, bias, x.select(0, image), weight_t);  // the bias in cuBLASLt's epilogue on CUDA
    else
      at::mm_out(rows, x.select(0, image), weight_t);
  }
}

at::Tensor linear_rows(const at::Tensor& x, const Linear& layer) {
  if (layer->fp8()) return layer->forward(x);  // contiguous [B, M, out]
  auto out = at::empty({x.size(0), x.size(1), layer->weight.size(0)}, x.options());
  linear_into(out, x, layer);
  return out;
}

at::Tensor linear_gelu_tanh(const Linear& layer, const at::Tensor& x) {
  if (!x.is_cuda() || !layer->bias.defined() || layer->fp8()) return torch::gelu(layer->forward(x), "tanh");
  auto rows = x.reshape({-1, x.size(-1)});  // [R, in]
  auto out = at::_addmm_activation(layer->bias, rows, layer->weight.t(), 1, 1, /*use_gelu=*/true);  // [R, out]
  auto sizes = x.sizes().vec();
  sizes.back() = out.size(1);
  return out.view(sizes);
}

torch::nn::Conv2d conv2d(std::int64_t in, std::int64_t out, std::int64_t kernel, std::int64_t stride,
                         std::int64_t padding) {
  if (!skip_weight_init)
    return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, kernel).stride(stride).padding(padding));
  torch::nn::Conv2d conv(torch::nn::Conv2dOptions(1, 1, kernel).stride(stride).padding(padding));
  allocate(conv->weight, {out, in, kernel, kernel});
  allocate(conv->bias, {out});
  return conv;
}

torch::nn::GroupNorm group_norm(std::int64_t groups, std::int64_t channels, double eps) {
  return torch::nn::GroupNorm(torch::nn::GroupNormOptions(groups, channels).eps(eps));
}

namespace {

#ifdef HYBRIDIFF_WITH_CUDA
std::optional<cuda_kernels::element_type> kernel_element_type(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return cuda_kernels::element_type::float32;
    case at::kHalf: return cuda_kernels::element_type::float16;
    case at::kBFloat16: return cuda_kernels::element_type::bfloat16;
    default: return std::nullopt;
  }
}

bool aligned_to_16_bytes(const at::Tensor& t) { return reinterpret_cast<std::uintptr_t>(t.data_ptr()) % 16 == 0; }

cudaStream_t current_stream(const at::Tensor& x) { return at::cuda::getCurrentCUDAStream(x.device().index()).stream(); }

int multiprocessors_of(const at::Tensor& x) {
  return at::cuda::getDeviceProperties(x.device().index())->multiProcessorCount;
}

void check_launch(cudaError_t status, const std::string& kernels) {
  if (status != cudaSuccess) throw error(kernels + " failed to launch: " + cudaGetErrorString(status));
}

/// The NHWC kernels' result, or an undefined tensor when they do not take this input.
at::Tensor group_norm_nhwc(const torch::nn::GroupNormImpl& norm, const at::Tensor& x, bool then_silu) {
  if (!x.is_cuda() || x.dim() != 4 || !x.is_contiguous(at::MemoryFormat::ChannelsLast)) return {};
  const auto type = kernel_element_type(x.scalar_type());
  const auto& options = norm.options;
  const cuda_kernels::group_norm_nhwc_shape shape{x.size(0), x.size(2) * x.size(3), x.size(1), options.num_groups()};
  if (!type || !cuda_kernels::group_norm_nhwc_supported(shape, *type)) return {};
  const auto affine_ok = [&](const at::Tensor& p) {
    return !p.defined() || (p.scalar_type() == x.scalar_type() && p.device() == x.device() && p.is_contiguous());
  };
  if (!affine_ok(norm.weight) || !affine_ok(norm.bias)) return {};
  if (!aligned_to_16_bytes(x)) return {};
  TORCH_CHECK(x.size(1) == options.num_channels(), "GroupNorm: expected ", options.num_channels(),
              " channels, got input ", x.sizes());

  const c10::cuda::CUDAGuard guard(x.device());
  auto y = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  auto workspace = at::empty({static_cast<std::int64_t>(cuda_kernels::group_norm_nhwc_workspace(shape, *type))},
                             x.options().dtype(at::kFloat));
  check_launch(cuda_kernels::group_norm_nhwc(x.data_ptr(), norm.weight.defined() ? norm.weight.data_ptr() : nullptr,
                                             norm.bias.defined() ? norm.bias.data_ptr() : nullptr, y.data_ptr(),
                                             workspace.data_ptr<float>(), shape, *type,
                                             static_cast<float>(options.eps()), then_silu, current_stream(x)),
               "GroupNorm (NHWC kernels)");
  return y;
}

/// The LayerNorm + modulation kernel's {x + gate·y, modulated} (the first undefined without a gate), or nothing
/// when it does not take these operands: it needs CUDA, one dtype and device, x (and y) [B, L, D] contiguous, the
/// per-image vectors [B, D] with contiguous rows, all 16-byte aligned, and no autograd to record.
std::optional<std::pair<at::Tensor, at::Tensor>> fused_layer_norm_modulate(const at::Tensor& x, const at::Tensor& gate,
                                                                           const at::Tensor& y, const at::Tensor& shift,
                                                                           const at::Tensor& scale, double eps) {
  if (!x.is_cuda() || x.dim() != 3 || x.numel() == 0) return std::nullopt;
  const auto type = kernel_element_type(x.scalar_type());
  if (!type || !cuda_kernels::layer_norm_modulate_supported(x.size(2), *type)) return std::nullopt;
  const auto fits = [&](const at::Tensor& t) {
    return t.scalar_type() == x.scalar_type() && t.device() == x.device() && aligned_to_16_bytes(t) &&
           !(at::GradMode::is_enabled() && t.requires_grad());
  };
  const auto fits_rows = [&](const at::Tensor& t) { return fits(t) && t.sizes() == x.sizes() && t.is_contiguous(); };
  const auto fits_vector = [&](const at::Tensor& t) {
    return fits(t) && t.dim() == 2 && t.size(0) == x.size(0) && t.size(1) == x.size(2) && t.stride(1) == 1 &&
           t.stride(0) * static_cast<std::int64_t>(x.element_size()) % 16 == 0;
  };
  const bool residual = gate.defined();
  if (!fits_rows(x) || !fits_vector(shift) || !fits_vector(scale) ||
      (residual && (!fits_rows(y) || !fits_vector(gate))))
    return std::nullopt;

  const c10::cuda::CUDAGuard guard(x.device());
  auto out = at::empty_like(x), sum = residual ? at::empty_like(x) : at::Tensor();
  cuda_kernels::layer_norm_modulate_args args;
  args.x = x.data_ptr();
  if (residual) {
    args.gate = gate.data_ptr();
    args.gate_stride = gate.stride(0);
    args.y = y.data_ptr();
    args.sum = sum.data_ptr();
  }
  args.shift = shift.data_ptr();
  args.scale = scale.data_ptr();
  args.shift_stride = shift.stride(0);
  args.scale_stride = scale.stride(0);
  args.out = out.data_ptr();
  args.batch = x.size(0);
  args.tokens = x.size(1);
  args.channels = x.size(2);
  args.eps = static_cast<float>(eps);
  check_launch(cuda_kernels::layer_norm_modulate(args, *type, current_stream(x)), "LayerNorm + modulation kernel");
  return std::pair{sum, out};
}
#endif

}  // namespace

namespace {

constexpr double e4m3_max = 448.0;

// Where a quantization ran: the current CUDA stream and the graph capture it is recording into (0: none; the CPU:
// both 0). A remembered quantization is only reused where it ran: another stream would read it unordered, and
// another capture's graph (or eager code after a capture) would read memory that only that graph's replays write.
struct quantization_site {
  std::int64_t stream = 0;
  unsigned long long capture = 0;
  bool operator==(const quantization_site& other) const { return stream == other.stream && capture == other.capture; }
};

quantization_site site_of(const at::Tensor& x) {
  quantization_site site;
#ifdef HYBRIDIFF_WITH_CUDA
  if (x.is_cuda()) {
    const auto stream = at::cuda::getCurrentCUDAStream(x.device().index());
    site.stream = stream.id();
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    unsigned long long id = 0;
    if (cudaStreamGetCaptureInfo(stream.stream(), &status, &id) == cudaSuccess &&
        status == cudaStreamCaptureStatusActive)
      site.capture = id;
  }
#else
  (void)x;
#endif
  return site;
}

// The last input quantize_fp8 quantized on this thread. The source is held weakly (its activations are freed as
// usual); the quantized copy strongly.
struct remembered_quantization {
  std::optional<c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>> source;
  std::uint32_t version = 0;
  quantization_site site;
  fp8_tensor quantized;
};
thread_local remembered_quantization last_quantized;

// `values` / scale as float8 e4m3 (same shape) with scale max|values| / 448 (float32 [1]): ATen's ops.
fp8_tensor quantize_with_aten(const at::Tensor& values) {
  auto scale = (values.abs().amax().to(at::kFloat).clamp_min(1e-30) / e4m3_max).reshape({1});
  return {(values.to(at::kFloat) / scale).clamp(-e4m3_max, e4m3_max).to(at::kFloat8_e4m3fn), scale};
}

// f(x) by ATen ops, in x's dtype (the unfused path).
at::Tensor apply(fp8_activation activation, const at::Tensor& x, const at::Tensor& gate) {
  switch (activation) {
    case fp8_activation::gelu_tanh: return at::gelu(x, "tanh");
    case fp8_activation::geglu: return x * at::gelu(gate);
    default: return x;
  }
}

#ifdef HYBRIDIFF_WITH_CUDA
// Whether x's leading dimension indexes runs our quantization kernels take in place: contiguous, 16-byte aligned
// blocks (a narrow of a joint [B, N + S, D] tensor: B runs), at most max_fp8_runs of them.
bool quantizable_runs(const at::Tensor& x) {
  if (x.dim() < 2 || x.size(0) > cuda_kernels::max_fp8_runs || !x.select(0, 0).is_contiguous()) return false;
  const auto run = x.select(0, 0).numel(), bytes = static_cast<std::int64_t>(x.element_size());
  return x.stride(0) >= run && (x.stride(0) * bytes) % 16 == 0 && (run * bytes) % 16 == 0 && aligned_to_16_bytes(x);
}

// Our kernels' quantization of f(x) [..., D] into [R, D] rows, or nothing where they do not take x: a 16-bit or
// float32 CUDA tensor, contiguous or in runs (quantizable_runs; otherwise a contiguous copy is quantized), and a gate
// of x's layout.
std::optional<fp8_tensor> quantize_with_kernels(const at::Tensor& input, fp8_activation activation,
                                                const at::Tensor& input_gate) {
  const auto type = input.is_cuda() ? kernel_element_type(input.scalar_type()) : std::nullopt;
  if (!type || input.dim() < 1) return std::nullopt;
  const bool in_place = input.is_contiguous() || quantizable_runs(input);
  const auto x = in_place ? input : input.contiguous();
  const auto gate = in_place || !input_gate.defined() ? input_gate : input_gate.contiguous();
  if (!aligned_to_16_bytes(x) ||
      (gate.defined() && (gate.sizes() != x.sizes() || gate.strides() != x.strides() ||
                          gate.scalar_type() != x.scalar_type() || !aligned_to_16_bytes(gate))))
    return std::nullopt;
  const bool one_run = x.is_contiguous();
  const auto segments = one_run ? 1 : x.size(0);
  const auto stride = one_run ? x.numel() : x.stride(0);

  const c10::cuda::CUDAGuard guard(x.device());
  fp8_tensor result;
  result.data = at::empty({x.numel() / x.size(-1), x.size(-1)}, x.options().dtype(at::kFloat8_e4m3fn));
  cuda_kernels::quantize_fp8_args args;
  args.x = x.data_ptr();
  args.gate = gate.defined() ? gate.data_ptr() : nullptr;
  args.count = x.numel() / segments;
  args.segments = segments;
  args.segment_stride = stride;
  args.q = result.data.data_ptr();
  args.multiprocessors = multiprocessors_of(x);
  auto state = at::empty({cuda_kernels::quantize_fp8_state_floats(args, *type)}, x.options().dtype(at::kFloat));
  args.state = state.data_ptr<float>();
  check_launch(cuda_kernels::quantize_fp8_e4m3(args, *type, activation, current_stream(x)),
               "float8 quantization kernels");
  result.scale = state.narrow(0, 0, 1);
  return result;
}
#endif

// f(x) [..., D] quantized per tensor into [R, D] rows: our kernels on CUDA, else ATen ops.
fp8_tensor quantize_activated(const at::Tensor& x, fp8_activation activation, const at::Tensor& gate) {
  TORCH_CHECK(x.dim() >= 1 && x.numel() > 0, "quantize_fp8: an empty input ", x.sizes());
#ifdef HYBRIDIFF_WITH_CUDA
  if (auto quantized = quantize_with_kernels(x, activation, gate)) return *quantized;
#endif
  return quantize_with_aten(apply(activation, x, gate).reshape({-1, x.size(-1)}));
}

}  // namespace

fp8_tensor quantize_fp8(const at::Tensor& x) {
  const auto site = site_of(x);
  auto& last = last_quantized;
  if (last.source && last.source->lock().get() == x.unsafeGetTensorImpl() && last.version == x._version() &&
      last.site == site)
    return last.quantized;
  auto result = quantize_activated(x, fp8_activation::none, {});
  last.source.emplace(x.getIntrusivePtr());
  last.version = x._version();
  last.site = site;
  last.quantized = result;
  return result;
}

namespace {

// scaled_gemm_into for `input` ([R, in], the quantization of an x [..., in] with `sizes`): [..., out] in `dtype`.
at::Tensor scaled_linear(const fp8_tensor& input, c10::IntArrayRef sizes, at::ScalarType dtype,
                         const at::Tensor& weight, const at::Tensor& weight_scale, const at::Tensor& bias) {
  TORCH_CHECK(input.data.size(1) == weight.size(1), "a float8 linear layer of weight ", weight.sizes(), " got input ",
              sizes);
  auto out = at::empty({input.data.size(0), weight.size(0)}, input.data.options().dtype(dtype));
  scaled_gemm_into(out, input.data, input.scale, weight, weight_scale, bias);
  auto out_sizes = sizes.vec();
  out_sizes.back() = weight.size(0);
  return out.view(out_sizes);
}

at::Tensor scaled_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& weight_scale,
                         const at::Tensor& bias) {
  return scaled_linear(quantize_fp8(x), x.sizes(), x.scalar_type(), weight, weight_scale, bias);
}

}  // namespace

at::Tensor LinearImpl::forward(const at::Tensor& input) const {
  if (fp8()) return scaled_linear(input, weight, weight_scale, bias);
  return at::linear(input, weight, bias);
}

void LinearImpl::quantize_to_fp8() {
  if (fp8()) return;
  if (weight.size(0) % 16 != 0 || weight.size(1) % 16 != 0)
    throw error("a linear layer of weight [" + std::to_string(weight.size(0)) + ", " + std::to_string(weight.size(1)) +
                "] cannot be float8: the scaled GEMM needs sides that are multiples of 16");
  torch::NoGradGuard no_grad;
  auto quantized = quantize_with_aten(weight);
  weight.set_requires_grad(false);
  weight.set_data(quantized.data);
  weight_scale = register_buffer("weight_scale", quantized.scale);
}

at::Tensor linear_part(const Linear& layer, const at::Tensor& x, std::int64_t first, std::int64_t count) {
  const auto bias = layer->bias.defined() ? layer->bias.narrow(0, first, count) : at::Tensor();
  const auto weight = layer->weight.narrow(0, first, count);
  if (layer->fp8()) return scaled_linear(x, weight, layer->weight_scale, bias);
  return at::linear(x, weight, bias);
}

at::Tensor feed_forward_gelu_tanh(const Linear& in, const Linear& out, const at::Tensor& x) {
  if (!out->fp8()) return out->forward(linear_gelu_tanh(in, x));
  const auto hidden = in->forward(x);  // [..., hidden], before the GELU
  return scaled_linear(quantize_activated(hidden, fp8_activation::gelu_tanh, {}), hidden.sizes(), hidden.scalar_type(),
                       out->weight, out->weight_scale, out->bias);
}

at::Tensor geglu_feed_forward(const Linear& proj, const Linear& out, const at::Tensor& x) {
  const auto half = proj->weight.size(0) / 2;
  auto value = linear_part(proj, x, 0, half);  // [..., hidden]
  auto gate = linear_part(proj, x, half, half);
  if (!out->fp8()) return out->forward(value.mul_(at::gelu_(gate)));
  return scaled_linear(quantize_activated(value, fp8_activation::geglu, gate), value.sizes(), value.scalar_type(),
                       out->weight, out->weight_scale, out->bias);
}

measured_guidance guide_and_measure(const at::Tensor& uncond, const at::Tensor& cond, double guidance) {
  TORCH_CHECK(
      uncond.sizes() == cond.sizes() && uncond.scalar_type() == cond.scalar_type() && uncond.device() == cond.device(),
      "the branches' predictions differ: ", uncond.sizes(), " ", uncond.scalar_type(), " on ", uncond.device(), " and ",
      cond.sizes(), " ", cond.scalar_type(), " on ", cond.device());
  measured_guidance result;
#ifdef HYBRIDIFF_WITH_CUDA
  const auto type = uncond.is_cuda() ? kernel_element_type(uncond.scalar_type()) : std::nullopt;
  if (type && uncond.numel() > 0 && uncond.is_contiguous() && cond.is_contiguous() && aligned_to_16_bytes(uncond) &&
      aligned_to_16_bytes(cond)) {
    const c10::cuda::CUDAGuard guard(uncond.device());
    const int multiprocessors = multiprocessors_of(uncond);
    result.guided = at::empty_like(uncond);
    auto workspace = at::empty({cuda_kernels::guide_and_measure_workspace(uncond.numel(), *type, multiprocessors)},
                               uncond.options().dtype(at::kDouble));
    check_launch(cuda_kernels::guide_and_measure(uncond.data_ptr(), cond.data_ptr(), result.guided.data_ptr(),
                                                 uncond.numel(), static_cast<float>(guidance), *type,
                                                 workspace.data_ptr<double>(), multiprocessors, current_stream(uncond)),
                 "guidance kernels");
    // Pinned, so that the copy is queued on the stream instead of waiting for it; the event marks its end.
    auto host = at::empty({2}, at::TensorOptions(at::kDouble).pinned_memory(true));
    host.copy_(workspace.narrow(0, 0, 2), /*non_blocking=*/true);
    auto copied = std::make_shared<at::cuda::CUDAEvent>();
    copied->record(at::cuda::getCurrentCUDAStream(uncond.device().index()));
    result.means = [host, copied] {
      copied->synchronize();
      const double* values = host.data_ptr<double>();
      return guidance_means{values[0], values[1]};
    };
    result.means_on_device = true;
    return result;
  }
#endif
  if (uncond.is_cpu()) {
    // One pass (float32 values, double sums): eight ATen ops took 0.2 ms of a CPU step's 0.36 ms of overhead at 32².
    const auto c = cond.to(at::kFloat).contiguous(), u = uncond.to(at::kFloat).contiguous();
    const float* conditional = c.data_ptr<float>();
    const float* unconditional = u.data_ptr<float>();
    double difference = 0, base = 0;
    for (std::int64_t i = 0; i < c.numel(); ++i) {
      difference += std::abs(static_cast<double>(conditional[i]) - unconditional[i]);
      base += std::abs(static_cast<double>(unconditional[i]));
    }
    const auto count = static_cast<double>(std::max<std::int64_t>(1, c.numel()));
    const guidance_means means{difference / count, base / count};
    result.means = [means] { return means; };
  } else {
    const auto read = at::stack({(cond - uncond).abs().mean(), uncond.abs().mean()}).to(at::kCPU, at::kDouble);
    const guidance_means means{read[0].item<double>(), read[1].item<double>()};
    result.means = [means] { return means; };
  }
  result.guided = uncond + guidance * (cond - uncond);
  return result;
}

at::Tensor euler_step_on_device(const at::Tensor& sample, const at::Tensor& output, float sigma, float sigma_next) {
#ifdef HYBRIDIFF_WITH_CUDA
  const auto type = output.is_cuda() ? kernel_element_type(output.scalar_type()) : std::nullopt;
  if (!type || sample.scalar_type() != output.scalar_type() || sample.sizes() != output.sizes() ||
      sample.device() != output.device() || output.numel() == 0 || !sample.is_contiguous() || !output.is_contiguous() ||
      !aligned_to_16_bytes(sample) || !aligned_to_16_bytes(output))
    return {};
  const c10::cuda::CUDAGuard guard(output.device());
  const int multiprocessors = multiprocessors_of(output);
  auto next = at::empty_like(output);
  check_launch(cuda_kernels::euler_step(sample.data_ptr(), output.data_ptr(), next.data_ptr(), output.numel(), sigma,
                                        sigma_next, *type, multiprocessors, current_stream(output)),
               "Euler step kernel");
  return next;
#else
  (void)sample, (void)output, (void)sigma, (void)sigma_next;
  return {};
#endif
}

int quantize_linears_to_fp8(torch::nn::Module& module, const std::function<bool(const std::string&)>& select) {
  int quantized = 0;
  for (const auto& item : module.named_modules()) {
    auto* layer = dynamic_cast<LinearImpl*>(item.value().get());
    if (layer == nullptr || layer->fp8() || !select(item.key())) continue;
    if (layer->weight.size(0) % 16 != 0 || layer->weight.size(1) % 16 != 0) continue;
    layer->quantize_to_fp8();
    ++quantized;
  }
  return quantized;
}

at::Tensor apply_group_norm(const torch::nn::GroupNorm& norm, const at::Tensor& x, bool then_silu) {
#ifdef HYBRIDIFF_WITH_CUDA
  if (auto y = group_norm_nhwc(*norm, x, then_silu); y.defined()) return y;
#endif
  auto y = norm.ptr()->forward(x);
  return then_silu ? at::silu_(y) : y;
}

at::Tensor layer_norm_modulate(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale, double eps) {
#ifdef HYBRIDIFF_WITH_CUDA
  if (auto fused = fused_layer_norm_modulate(x, {}, {}, shift, scale, eps)) return fused->second;
#endif
  auto normed = at::layer_norm(x, {x.size(-1)}, {}, {}, eps);
  return at::addcmul(shift.unsqueeze(1), normed, 1 + scale.unsqueeze(1));
}

std::pair<at::Tensor, at::Tensor> gated_residual_layer_norm_modulate(const at::Tensor& x, const at::Tensor& gate,
                                                                      const at::Tensor& y, const at::Tensor& shift,
                                                                      const at::Tensor& scale, double eps) {
#ifdef HYBRIDIFF_WITH_CUDA
  if (auto fused = fused_layer_norm_modulate(x, gate, y, shift, scale, eps)) return *fused;
#endif
  auto sum = at::addcmul(x, gate.unsqueeze(1), y);
  return {sum, layer_norm_modulate(sum, shift, scale, eps)};
}

void store_channels_last(torch::nn::Module& module, const std::string& owner) {
  torch::NoGradGuard no_grad;
  for (auto& parameter : module.parameters()) {
    if (parameter.dim() != 4) continue;
    if (!parameter.is_cuda())
      throw error(owner + ": channels-last is for CUDA weights (these are on " + parameter.device().str() + ")");
    parameter.set_data(parameter.contiguous(at::MemoryFormat::ChannelsLast));
  }
}

torch::nn::LayerNorm layer_norm(std::int64_t dim, double eps, bool affine) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim}).eps(eps).elementwise_affine(affine));
}

ResnetBlock2DImpl::ResnetBlock2DImpl(std::int64_t in_channels, std::int64_t out_channels, std::int64_t temb_channels,
                                     std::int64_t groups, double eps, double output_scale_factor)
    : output_scale_factor_(output_scale_factor) {
  norm1 = register_module("norm1", group_norm(groups, in_channels, eps));
  conv1 = register_module("conv1", conv2d(in_channels, out_channels, 3, 1, 1));
  if (temb_channels > 0) time_emb_proj = register_module("time_emb_proj", linear(temb_channels, out_channels));
  norm2 = register_module("norm2", group_norm(groups, out_channels, eps));
  conv2 = register_module("conv2", conv2d(out_channels, out_channels, 3, 1, 1));
  if (in_channels != out_channels) conv_shortcut = register_module("conv_shortcut", conv2d(in_channels, out_channels, 1));
}

at::Tensor ResnetBlock2DImpl::forward(const at::Tensor& x, const at::Tensor& temb) {
  auto h = conv1(apply_group_norm(norm1, x, true));  // [B, out, H, W]
  if (time_emb_proj && temb.defined()) h = h + time_emb_proj(torch::silu(temb)).unsqueeze(-1).unsqueeze(-1);
  h = conv2(apply_group_norm(norm2, h, true));
  auto shortcut = conv_shortcut ? conv_shortcut(x) : x;
  return output_scale_factor_ == 1.0 ? shortcut + h : (shortcut + h) / output_scale_factor_;
}

Downsample2DImpl::Downsample2DImpl(std::int64_t channels, std::int64_t padding) : padding_(padding) {
  conv = register_module("conv", conv2d(channels, channels, 3, 2, padding));
}

at::Tensor Downsample2DImpl::forward(const at::Tensor& x) {
  if (padding_ == 0) return conv(torch::constant_pad_nd(x, {0, 1, 0, 1}, 0));
  return conv(x);
}

Upsample2DImpl::Upsample2DImpl(std::int64_t channels) {
  conv = register_module("conv", conv2d(channels, channels, 3, 1, 1));
}

at::Tensor Upsample2DImpl::forward(const at::Tensor& x, c10::IntArrayRef size) {
  namespace F = torch::nn::functional;
  auto options = F::InterpolateFuncOptions().mode(torch::kNearest);
  if (size.empty())
    options.scale_factor(std::vector<double>{2.0, 2.0});
  else
    options.size(size.vec());
  // Nearest upsampling has no bf16 kernel on some builds; diffusers upcasts the same way.
  auto input = x.scalar_type() == at::kBFloat16 ? x.to(at::kFloat) : x;
  auto up = F::interpolate(input, options).to(x.scalar_type());
  return conv(up);
}

AttentionImpl::AttentionImpl(std::int64_t query_dim, std::int64_t context_dim, std::int64_t heads,
                             std::int64_t head_dim, bool qkv_bias, std::int64_t group_norm_groups,
                             double group_norm_eps)
    : heads_(heads) {
  const auto inner = heads * head_dim;
  if (group_norm_groups > 0) group_norm = register_module("group_norm", models::group_norm(group_norm_groups, query_dim, group_norm_eps));
  to_q = register_module("to_q", linear(query_dim, inner, qkv_bias));
  to_k = register_module("to_k", linear(context_dim, inner, qkv_bias));
  to_v = register_module("to_v", linear(context_dim, inner, qkv_bias));
  to_out = register_module("to_out", torch::nn::ModuleList(linear(inner, query_dim, true)));
}

at::Tensor AttentionImpl::forward(const at::Tensor& x, const at::Tensor& context) {
  if (group_norm) {
    // Spatial self-attention: [B, C, H, W] -> [B, HW, C] tokens, residual added back.
    auto batch = x.size(0), channels = x.size(1), height = x.size(2), width = x.size(3);
    // Contiguous once: at::linear computes a transposed view as a copy, a matmul and a separate bias add (a
    // channels-last x needs no copy: its [B, H, W, C] memory is the tokens).
    auto tokens = apply_group_norm(group_norm, x).permute({0, 2, 3, 1}).reshape({batch, height * width, channels});
    auto q = split_heads(to_q(tokens), heads_), k = split_heads(to_k(tokens), heads_), v = split_heads(to_v(tokens), heads_);
    auto out = to_out[0]->as<Linear>()->forward(merge_heads(attention(q, k, v)));  // [B, HW, C]
    // x first: the sum takes x's layout, so the permuted view needs no copy of its own.
    return x + out.view({batch, height, width, channels}).permute({0, 3, 1, 2});
  }
  const auto& source = context.defined() ? context : x;
  auto q = split_heads(to_q(x), heads_), k = split_heads(to_k(source), heads_), v = split_heads(to_v(source), heads_);
  return to_out[0]->as<Linear>()->forward(merge_heads(attention(q, k, v)));  // [B, L, query_dim]
}

}  // namespace hybridiff::models
