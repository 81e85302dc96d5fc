#pragma once
// Plain C++ (no torch, no CUDA): the nvcc-compiled kernels and the builds without CUDA name it alike.

namespace hybridiff::models {

/// What a float8 quantization applies to its input first, so that the activation's output is never stored in
/// 16 bits: gelu_tanh(x) (SD3's feed-forward), geglu: x · gelu(gate) (erf GELU; SDXL's GEGLU, its value and gate
/// halves as two tensors of one layout).
enum class fp8_activation { none, gelu_tanh, geglu };

}  // namespace hybridiff::models
