// The LayerNorm + adaLN modulation kernel behind models::layer_norm_modulate and
// models::gated_residual_layer_norm_modulate (SD3's blocks) against the same operations in float64 on the CPU.
// Labelled `gpu`; skipped without a CUDA device.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "models/nn/nn.hpp"
#include "test_support.hpp"

namespace hybridiff::models {
namespace {

constexpr double eps = 1e-6;

struct modulation_case {
  std::int64_t batch, tokens, channels;
  double mean = 0.0;  // added to every input value: the row's variance from the two-pass sums stays accurate
};

// The per-image vectors as SD3 has them: chunks (strided views) of one [B, 6·D] projection.
std::vector<at::Tensor> modulation_vectors(const modulation_case& c, const at::TensorOptions& options) {
  return (torch::randn({c.batch, 6 * c.channels}, options.dtype(at::kFloat)) * 0.5).to(options).chunk(6, 1);
}

// LN(h)·(1 + scale) + shift in float64 on the CPU.
at::Tensor reference_modulate(const at::Tensor& h, const at::Tensor& shift, const at::Tensor& scale) {
  auto x = h.to(torch::kCPU, torch::kDouble);
  auto normed = at::layer_norm(x, {x.size(-1)}, {}, {}, eps);
  return normed * (1 + scale.to(torch::kCPU, torch::kDouble).unsqueeze(1)) +
         shift.to(torch::kCPU, torch::kDouble).unsqueeze(1);
}

class LayerNormModulate : public ::testing::TestWithParam<at::ScalarType> {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  }
  // float32 statistics over up to 4096 elements; fp16/bf16 round the output once.
  double tolerance() const { return test::rounding_tolerance(GetParam()); }
  at::TensorOptions options() const { return at::TensorOptions(torch::kCUDA).dtype(GetParam()); }
  // x [B, L, D] of the case, drawn in float32 (the mean added there) and rounded to the dtype.
  at::Tensor rows(const modulation_case& c) const {
    return (torch::randn({c.batch, c.tokens, c.channels}, options().dtype(at::kFloat)) + c.mean).to(options());
  }
};

// SD3-medium's width, tiny-sd3's (64), widths that are not a multiple of 32 vectors (24 and 40 channels: the
// block is rounded up to whole warps), 4096 (1024 float32 vectors: the widest block), odd token counts, a large
// mean.
const std::vector<modulation_case> cases = {
    {2, 37, 1536}, {1, 333, 1536, 50.0}, {2, 5, 64}, {3, 7, 24}, {1, 9, 40, -20.0}, {1, 3, 4096}};

TEST_P(LayerNormModulate, MatchesFloat64) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(11);
  for (const auto& c : cases) {
    SCOPED_TRACE(::testing::Message() << c.batch << "×" << c.tokens << "×" << c.channels);
    auto x = rows(c);
    auto mod = modulation_vectors(c, options());
    auto out = layer_norm_modulate(x, mod[0], mod[1], eps);
    EXPECT_EQ(out.scalar_type(), GetParam());
    EXPECT_LT(test::relative_error(out, reference_modulate(x, mod[0], mod[1])), tolerance());
  }
}

TEST_P(LayerNormModulate, GatedResidualFirstMatchesFloat64) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(12);
  for (const auto& c : cases) {
    SCOPED_TRACE(::testing::Message() << c.batch << "×" << c.tokens << "×" << c.channels);
    auto x = rows(c);
    auto y = torch::randn({c.batch, c.tokens, c.channels}, options());
    auto mod = modulation_vectors(c, options());
    auto [sum, out] = gated_residual_layer_norm_modulate(x, mod[2], y, mod[3], mod[4], eps);
    // h = x + gate·y in float64, rounded to the element type as ATen's addcmul rounds it.
    auto h = (x.to(torch::kCPU, torch::kDouble) +
              mod[2].to(torch::kCPU, torch::kDouble).unsqueeze(1) * y.to(torch::kCPU, torch::kDouble))
                 .to(GetParam());
    EXPECT_LT(test::relative_error(sum, h), tolerance());
    EXPECT_LT(test::relative_error(out, reference_modulate(h, mod[3], mod[4])), tolerance());
  }
}

// What the kernel does not take goes through ATen with the same result: channels not a multiple of the vector,
// a non-contiguous x, a batch of per-image vectors misaligned (an odd element offset).
TEST_P(LayerNormModulate, OtherInputsGoThroughAten) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(13);
  auto odd = torch::randn({2, 5, 36}, options());
  auto odd_mod = modulation_vectors({2, 5, 36}, options());
  EXPECT_LT(test::relative_error(layer_norm_modulate(odd, odd_mod[0], odd_mod[1], eps),
                                 reference_modulate(odd, odd_mod[0], odd_mod[1])),
            tolerance());
  auto strided = torch::randn({2, 64, 6}, options()).transpose(1, 2);  // [2, 6, 64], not contiguous
  auto mod = modulation_vectors({2, 6, 64}, options());
  EXPECT_LT(test::relative_error(layer_norm_modulate(strided, mod[0], mod[1], eps),
                                 reference_modulate(strided, mod[0], mod[1])),
            tolerance());
  auto shifted = torch::randn({2, 6 * 64 + 1}, options()).narrow(1, 1, 64);  // rows 6·64+1 elements apart
  auto x = torch::randn({2, 6, 64}, options());
  EXPECT_LT(test::relative_error(layer_norm_modulate(x, shifted, mod[1], eps), reference_modulate(x, shifted, mod[1])),
            tolerance());
}

INSTANTIATE_TEST_SUITE_P(Dtypes, LayerNormModulate, ::testing::Values(at::kFloat, at::kHalf, at::kBFloat16));

}  // namespace
}  // namespace hybridiff::models
