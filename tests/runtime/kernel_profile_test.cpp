// The kernel classes of `bench --profile`, on kernel names recorded by PyTorch's profiler on an H200 (SDXL UNet and
// SD3-medium, fp16, torch 2.11 + CUDA 13: cuBLAS's nvjet GEMMs, cuDNN's flash SDPA and implicit-GEMM convolutions,
// ATen's elementwise, norm and copy kernels); and the profiler's error where it cannot record GPU kernels.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "models/errors.hpp"
#include "runtime/kernel_profile.hpp"

namespace hybridiff::runtime {
namespace {

TEST(KernelClass, NamesRecordedOnAnH200FallIntoTheirClasses) {
  const std::pair<const char*, const char*> cases[] = {
      {"cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x64_4x1x1_cga1x1x1_kernel0_0",
       "attention"},
      // cuDNN convolutions are implicit GEMMs: convolution wins over gemm.
      {"sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize128x192x64_warpgroupsize2x1x1_g1_execute_"
       "segment_k_off_kernel__5x_cudnn",
       "convolution"},
      {"nvjet_sm90_hsh_256x128_64x4_1x2_h_bz_coopA_TNT", "gemm"},
      {"nvjet_sm90_hsh_128x8_64x12_4x1_v_bz_bias_TNT", "gemm"},
      {"void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::Half, float, false>(int, float, "
       "c10::Half const*, c10::Half const*, c10::Half const*, float*, float*, c10::Half*)",
       "normalization"},
      {"void at::native::(anonymous namespace)::RowwiseMomentsCUDAKernel<c10::Half>(long, c10::Half, c10::Half const*, "
       "c10::Half*, c10::Half*)",
       "normalization"},
      {"void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<at::native::CUDAFunctor_add<c10::"
       "Half> >(at::TensorIteratorBase&, at::native::CUDAFunctor_add<c10::Half> const&)::{lambda(int)#1}>(int, "
       "at::native::gpu_kernel_impl_nocast<at::native::CUDAFunctor_add<c10::Half> >(at::TensorIteratorBase&, "
       "at::native::CUDAFunctor_add<c10::Half> const&)::{lambda(int)#1})",
       "elementwise"},
      {"void at::native::vectorized_elementwise_kernel<8, at::native::GeluCUDAKernelImpl(at::TensorIteratorBase&, "
       "at::native::GeluType)::{lambda()#1}::operator()() const::{lambda()#4}::operator()() const::{lambda(c10::Half)#1}, "
       "std::array<char*, 2ul> >(int, at::native::GeluCUDAKernelImpl(at::TensorIteratorBase&, at::native::GeluType)"
       "::{lambda()#1}::operator()() const::{lambda()#4}::operator()() const::{lambda(c10::Half)#1}, std::array<char*, 2ul>)",
       "elementwise"},
      {"void at::native::(anonymous namespace)::CatArrayBatchedCopy<at::native::(anonymous namespace)::OpaqueType<2u>, "
       "unsigned int, 4, 64, 64>(at::native::(anonymous namespace)::OpaqueType<2u>*, at::native::(anonymous namespace)::"
       "CatArrInputTensorMetadata<at::native::(anonymous namespace)::OpaqueType<2u>, unsigned int, 64, 64>, at::native::"
       "(anonymous namespace)::TensorSizeStride<unsigned int, 4u>, int, unsigned int)",
       "copy"},
      {"void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<at::native::direct_copy_kernel_"
       "cuda(at::TensorIteratorBase&)::{lambda()#3}::operator()() const::{lambda()#7}::operator()() const::{lambda(c10::"
       "Half)#1}>(at::TensorIteratorBase&, at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)::{lambda()#3}::"
       "operator()() const::{lambda()#7}::operator()() const::{lambda(c10::Half)#1} const&)::{lambda(int)#1}>(int, ...)",
       "copy"},
      {"Memset (Device)", "copy"},
      {"void cudnn::engines_precompiled::nchwToNhwcKernel<__half, __half, float, false, true, (cudnnKernelDataType_t)0>("
       "cudnn::engines_precompiled::nchw2nhwc_params_t<float>, __half const*, __half*)",
       "other"},
  };
  for (const auto& [name, expected] : cases) EXPECT_EQ(kernel_class(name), expected) << name;
}

TEST(KernelProfile, SaysWhyWithoutAGpu) {
  if (torch::cuda::is_available()) GTEST_SKIP() << "a CUDA device is present (tests/gpu profiles it)";
  bool ran = false;
  try {
    profile_kernels([&] { ran = true; });
    FAIL() << "profile_kernels ran without a CUDA device";
  } catch (const error& expected) {
    EXPECT_NE(std::string(expected.what()).find("no CUDA device"), std::string::npos) << expected.what();
  }
  EXPECT_FALSE(ran);
}

}  // namespace
}  // namespace hybridiff::runtime
