#pragma once
// Random weights under the key names docs/models.md documents for `hybridiff metrics`' networks (the Python packages'
// names), for tests that write them to a safetensors file and load it by path as a user would.

#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

namespace hybridiff::test {

using named_tensors = std::vector<std::pair<std::string, at::Tensor>>;

/// The lpips package's net='alex' keys: net.slice{1..5}.N.{weight,bias} and lin{0..4}.model.1.weight (seed 11).
named_tensors random_lpips_weights();
/// pytorch-fid's pt_inception-2015-12-05 keys (torchvision Inception3 names, no fc; seed 21), ≈ 87 MB in float32.
named_tensors random_inception_weights();

}  // namespace hybridiff::test
