#pragma once

#include <functional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace hybridiff::models {

/// A module's output: one tensor, or a block's tuple (hidden state first, then its skip tensors).
using activation = std::vector<at::Tensor>;

/// Decides, module by module, whether a forward pass computes a module or reuses an activation it already has:
/// AsyncDiff's stale-activation mechanism. Module names are diffusers module paths ("down_blocks.2",
/// "up_blocks.0.resnets.1", "transformer_blocks.7", "norm_out", ...). A module's input is whatever reaches it;
/// a reused module ignores it.
class module_runner {
 public:
  virtual ~module_runner() = default;
  virtual activation run(const std::string& module, const std::function<activation()>& compute) = 0;
};

/// Runs `compute` through `runner`, or directly when there is none.
inline activation run_module(module_runner* runner, const std::string& module, const std::function<activation()>& compute) {
  return runner != nullptr ? runner->run(module, compute) : compute();
}

}  // namespace hybridiff::models
