#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "models/io/config.hpp"

namespace hybridiff::models {

/// A sampler's state carried from step to step, by name (tensors on the sample's device).
using sampler_memory = std::map<std::string, at::Tensor>;

/// A diffusion sampler with diffusers' scheduler semantics: `set_timesteps`, `scale_model_input`, `step`.
/// Steps are addressed by index into `timesteps()` (diffusers' `step_index`); `step` must be called in order
/// (DPM-Solver++ keeps the previous model output). Arithmetic follows diffusers: schedules from float32
/// `alphas_cumprod`, updates in float32.
class sampler {
 public:
  virtual ~sampler() = default;

  /// Builds the schedule for `steps` inference steps and resets the sampler's state.
  virtual void set_timesteps(std::int64_t steps) = 0;
  /// The model's timestep at each step: [steps], float32.
  const at::Tensor& timesteps() const { return timesteps_; }
  /// The noise level at each step and after the last: [steps + 1], float32 (empty for DDIM).
  const at::Tensor& sigmas() const { return sigmas_; }
  /// How much the unit-variance initial noise is scaled (diffusers' `init_noise_sigma`); 1 unless overridden.
  virtual double init_noise_sigma() const { return 1.0; }
  /// The denoiser's input at step `index`: the sample itself unless overridden (Euler scales it).
  virtual at::Tensor scale_model_input(const at::Tensor& sample, std::int64_t index) const;
  /// The sample after step `index`, given the (guided) model output at that step.
  virtual at::Tensor step(const at::Tensor& model_output, std::int64_t index, const at::Tensor& sample) = 0;
  /// "euler", "ddim", "dpm++2m" or "flow-euler".
  virtual std::string name() const = 0;
  /// What earlier steps left for the next (DPM++ 2M: the last data prediction), by name; empty for samplers whose
  /// step depends on its arguments only. A fresh copy given it with `recall` after `set_timesteps` steps on exactly
  /// as this one does: how a parallel run's workers take over the sampler mid-image.
  virtual sampler_memory memory() const { return {}; }
  /// Takes over another copy's `memory()`. Throws naming the entry this sampler does not keep.
  virtual void recall(const sampler_memory& memory);

 protected:
  void check_index(std::int64_t index) const;

  at::Tensor timesteps_, sigmas_;
};

/// The training noise schedule of a DDPM-family `scheduler_config.json` (linear or scaled_linear betas):
/// alphas_cumprod [num_train_timesteps] in float32, as diffusers builds it. Throws naming the file otherwise.
at::Tensor alphas_cumprod_of(const config& scheduler_config);

/// The sampler names `make_sampler` accepts.
std::vector<std::string> sampler_names();

/// Builds the sampler a `scheduler_config.json` describes, or, with `name` ("euler", "ddim", "dpm++2m",
/// "flow-euler"), that sampler configured from the same file as diffusers' `Scheduler.from_config` does.
/// Throws naming the config file for unsupported classes or settings.
std::unique_ptr<sampler> make_sampler(const config& scheduler_config, const std::string& name = "");

}  // namespace hybridiff::models
