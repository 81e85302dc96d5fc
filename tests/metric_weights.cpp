#include "metric_weights.hpp"

#include <cmath>

#include <torch/torch.h>

namespace hybridiff::test {

// The lpips package's keys for net='alex' (see docs/models.md): the trunk's convs at torchvision's indices in
// alexnet().features and the 1×1 linear layers.
named_tensors random_lpips_weights() {
  torch::manual_seed(11);
  named_tensors weights;
  struct conv {
    const char* key;
    std::int64_t in, out, kernel;
  };
  for (const auto& c : {conv{"net.slice1.0", 3, 64, 11}, conv{"net.slice2.3", 64, 192, 5}, conv{"net.slice3.6", 192, 384, 3},
                        conv{"net.slice4.8", 384, 256, 3}, conv{"net.slice5.10", 256, 256, 3}}) {
    const double he = std::sqrt(2.0 / static_cast<double>(c.in * c.kernel * c.kernel));
    weights.emplace_back(std::string(c.key) + ".weight", torch::randn({c.out, c.in, c.kernel, c.kernel}) * he);
    weights.emplace_back(std::string(c.key) + ".bias", torch::randn({c.out}) * 0.1);
  }
  const std::int64_t channels[5] = {64, 192, 384, 256, 256};
  for (int k = 0; k < 5; ++k)  // lpips' trained lins are non-negative
    weights.emplace_back("lin" + std::to_string(k) + ".model.1.weight", torch::rand({1, channels[k], 1, 1}) * 0.1);
  return weights;
}

// pt_inception-2015-12-05's keys (torchvision Inception3 names, no fc, no num_batches_tracked), random He-scaled
// convs and BatchNorm statistics near identity. Channel counts as torchvision's Inception3 / pytorch-fid.
named_tensors random_inception_weights() {
  torch::manual_seed(21);
  named_tensors weights;
  auto basic = [&](const std::string& name, std::int64_t in, std::int64_t out, std::int64_t kh, std::int64_t kw) {
    weights.emplace_back(name + ".conv.weight", torch::randn({out, in, kh, kw}) * std::sqrt(2.0 / static_cast<double>(in * kh * kw)));
    weights.emplace_back(name + ".bn.weight", 1 + 0.1 * torch::randn({out}));
    weights.emplace_back(name + ".bn.bias", 0.1 * torch::randn({out}));
    weights.emplace_back(name + ".bn.running_mean", 0.1 * torch::randn({out}));
    weights.emplace_back(name + ".bn.running_var", 1 + 0.1 * torch::rand({out}));
  };
  auto block_a = [&](const std::string& m, std::int64_t in, std::int64_t pool) {
    basic(m + ".branch1x1", in, 64, 1, 1);
    basic(m + ".branch5x5_1", in, 48, 1, 1);
    basic(m + ".branch5x5_2", 48, 64, 5, 5);
    basic(m + ".branch3x3dbl_1", in, 64, 1, 1);
    basic(m + ".branch3x3dbl_2", 64, 96, 3, 3);
    basic(m + ".branch3x3dbl_3", 96, 96, 3, 3);
    basic(m + ".branch_pool", in, pool, 1, 1);
  };
  auto block_c = [&](const std::string& m, std::int64_t c7) {
    basic(m + ".branch1x1", 768, 192, 1, 1);
    basic(m + ".branch7x7_1", 768, c7, 1, 1);
    basic(m + ".branch7x7_2", c7, c7, 1, 7);
    basic(m + ".branch7x7_3", c7, 192, 7, 1);
    basic(m + ".branch7x7dbl_1", 768, c7, 1, 1);
    basic(m + ".branch7x7dbl_2", c7, c7, 7, 1);
    basic(m + ".branch7x7dbl_3", c7, c7, 1, 7);
    basic(m + ".branch7x7dbl_4", c7, c7, 7, 1);
    basic(m + ".branch7x7dbl_5", c7, 192, 1, 7);
    basic(m + ".branch_pool", 768, 192, 1, 1);
  };
  auto block_e = [&](const std::string& m, std::int64_t in) {
    basic(m + ".branch1x1", in, 320, 1, 1);
    basic(m + ".branch3x3_1", in, 384, 1, 1);
    basic(m + ".branch3x3_2a", 384, 384, 1, 3);
    basic(m + ".branch3x3_2b", 384, 384, 3, 1);
    basic(m + ".branch3x3dbl_1", in, 448, 1, 1);
    basic(m + ".branch3x3dbl_2", 448, 384, 3, 3);
    basic(m + ".branch3x3dbl_3a", 384, 384, 1, 3);
    basic(m + ".branch3x3dbl_3b", 384, 384, 3, 1);
    basic(m + ".branch_pool", in, 192, 1, 1);
  };
  basic("Conv2d_1a_3x3", 3, 32, 3, 3);
  basic("Conv2d_2a_3x3", 32, 32, 3, 3);
  basic("Conv2d_2b_3x3", 32, 64, 3, 3);
  basic("Conv2d_3b_1x1", 64, 80, 1, 1);
  basic("Conv2d_4a_3x3", 80, 192, 3, 3);
  block_a("Mixed_5b", 192, 32);
  block_a("Mixed_5c", 256, 64);
  block_a("Mixed_5d", 288, 64);
  basic("Mixed_6a.branch3x3", 288, 384, 3, 3);
  basic("Mixed_6a.branch3x3dbl_1", 288, 64, 1, 1);
  basic("Mixed_6a.branch3x3dbl_2", 64, 96, 3, 3);
  basic("Mixed_6a.branch3x3dbl_3", 96, 96, 3, 3);
  block_c("Mixed_6b", 128);
  block_c("Mixed_6c", 160);
  block_c("Mixed_6d", 160);
  block_c("Mixed_6e", 192);
  basic("Mixed_7a.branch3x3_1", 768, 192, 1, 1);
  basic("Mixed_7a.branch3x3_2", 192, 320, 3, 3);
  basic("Mixed_7a.branch7x7x3_1", 768, 192, 1, 1);
  basic("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7);
  basic("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1);
  basic("Mixed_7a.branch7x7x3_4", 192, 192, 3, 3);
  block_e("Mixed_7b", 1280);
  block_e("Mixed_7c", 2048);
  return weights;
}

}  // namespace hybridiff::test
