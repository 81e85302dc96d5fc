#pragma once
// CUDA graphs for a denoiser's full forward pass and for a worker's stale-activation steps: one launch per step
// instead of thousands (SDXL's UNet at batch 1 is bound by kernel launches, the more so with several worker threads
// launching at once).

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "models/pipelines/pipeline.hpp"

namespace hybridiff::runtime {

/// Replays `pipeline.predict` from CUDA graphs, one per input shape. The first call of a shape runs the forward
/// three times on a side stream (warm-up: allocator, cuDNN and SDPA choices), then captures it (thread-local
/// capture: other threads' GPU work is unaffected); every call copies its inputs into the captured ones, replays,
/// and returns a copy of the output. Inputs must be on the pipeline's CUDA device. Throws hybridiff::error on the
/// CPU or in a build without CUDA. Not thread-safe: one per worker.
class graphed_denoiser {
 public:
  explicit graphed_denoiser(models::diffusion_pipeline& pipeline);
  ~graphed_denoiser();
  graphed_denoiser(const graphed_denoiser&) = delete;
  graphed_denoiser& operator=(const graphed_denoiser&) = delete;

  at::Tensor predict(const at::Tensor& latents, const at::Tensor& timestep, const models::branch_conditioning& cond);
  std::size_t graphs() const { return graphs_.size(); }

 private:
  struct graph;
  models::diffusion_pipeline& pipeline_;
  std::map<std::string, std::unique_ptr<graph>> graphs_;  // by the inputs' shapes and dtypes
};

/// Replays stale-activation steps (AsyncDiff pipeline steps: `owned` modules compute, every other module returns a
/// value it is given) from CUDA graphs, one per input shape and owned set. The first call of a shape asks `reuse`
/// for each module it does not own, copies the values into buffers of its own and runs the step three times on a
/// side stream, then captures it reading those buffers; every call copies the inputs and `reuse`'s current values
/// into them, replays, and returns copies of the output and of the owned modules' outputs it is asked for (the
/// caller may hand them to other workers while the next step replays). The modules a step reuses, and their
/// shapes, must be the same on every call of a shape (they are: a model's control flow does not depend on values);
/// a different shape is an error naming the module. Throws hybridiff::error on the CPU or in a build without CUDA.
/// Not thread-safe: one per worker.
class graphed_stage {
 public:
  using reuse_function = std::function<models::activation(const std::string& module)>;
  explicit graphed_stage(models::diffusion_pipeline& pipeline);
  ~graphed_stage();
  graphed_stage(const graphed_stage&) = delete;
  graphed_stage& operator=(const graphed_stage&) = delete;

  /// The step's output; `computed` receives the outputs of the owned modules named in `kept`.
  at::Tensor step(const at::Tensor& latents, const at::Tensor& timestep, const models::branch_conditioning& cond,
                  const std::set<std::string>& owned, const reuse_function& reuse, const std::set<std::string>& kept,
                  std::map<std::string, models::activation>& computed);
  std::size_t graphs() const { return graphs_.size(); }

 private:
  struct graph;
  models::diffusion_pipeline& pipeline_;
  std::map<std::string, std::unique_ptr<graph>> graphs_;  // by the inputs' shapes and dtypes and the owned set
};

}  // namespace hybridiff::runtime
