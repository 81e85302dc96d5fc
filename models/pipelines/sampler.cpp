#include "models/pipelines/sampler.hpp"

#include <algorithm>
#include <cmath>

#include <torch/torch.h>

#include "models/errors.hpp"
#include "models/nn/nn.hpp"

namespace hybridiff::models {

at::Tensor alphas_cumprod_of(const config& values) {
  const auto steps = values.get<std::int64_t>("num_train_timesteps");
  const auto start = values.get<double>("beta_start"), end = values.get<double>("beta_end");
  const auto schedule = values.get<std::string>("beta_schedule");
  if (values.has("trained_betas")) values.reject("trained_betas", "is not supported");
  if (values.get<bool>("rescale_betas_zero_snr")) values.reject("rescale_betas_zero_snr", "is not supported");
  at::Tensor betas;
  if (schedule == "linear")
    betas = torch::linspace(start, end, steps, torch::kFloat32);
  else if (schedule == "scaled_linear")
    betas = torch::linspace(std::sqrt(start), std::sqrt(end), steps, torch::kFloat32).pow(2);
  else
    values.reject("beta_schedule", "'" + schedule + "' is not supported (linear, scaled_linear)");
  return torch::cumprod(1.0 - betas, 0);
}

namespace {

std::vector<double> as_doubles(const at::Tensor& tensor) {
  auto values = tensor.to(torch::kDouble).contiguous();
  return std::vector<double>(values.data_ptr<double>(), values.data_ptr<double>() + values.numel());
}

at::Tensor float_tensor(const std::vector<double>& values) {
  return torch::tensor(values, torch::kDouble).to(torch::kFloat32);
}

// np.interp(x, arange(len(table)), table)
double interpolate(double x, const std::vector<double>& table) {
  if (x <= 0) return table.front();
  if (x >= static_cast<double>(table.size() - 1)) return table.back();
  auto low = static_cast<std::size_t>(std::floor(x));
  double weight = x - static_cast<double>(low);
  return table[low] + weight * (table[low + 1] - table[low]);
}

// diffusers' _sigma_to_t: the (fractional) training timestep of a sigma, interpolated in log space.
double sigma_to_t(double sigma, const std::vector<double>& log_sigmas) {
  double log_sigma = std::log(std::max(sigma, 1e-10));
  std::size_t low = 0;
  for (std::size_t i = 0; i < log_sigmas.size(); ++i)
    if (log_sigma - log_sigmas[i] >= 0) low = i;
  low = std::min(low, log_sigmas.size() - 2);
  double w = std::clamp((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0.0, 1.0);
  return (1 - w) * static_cast<double>(low) + w * static_cast<double>(low + 1);
}

// Karras et al. (2022) noise levels between the schedule's extremes, rho = 7.
std::vector<double> karras_sigmas(double sigma_min, double sigma_max, std::int64_t steps) {
  const double rho = 7.0, min_inv = std::pow(sigma_min, 1 / rho), max_inv = std::pow(sigma_max, 1 / rho);
  std::vector<double> sigmas;
  for (std::int64_t i = 0; i < steps; ++i) {
    double ramp = steps == 1 ? 0.0 : static_cast<double>(i) / static_cast<double>(steps - 1);
    sigmas.push_back(std::pow(max_inv + ramp * (min_inv - max_inv), rho));
  }
  return sigmas;
}

// Timesteps of the DDPM-family samplers for `timestep_spacing` (diffusers' set_timesteps).
std::vector<double> spaced_timesteps(const config& values, std::int64_t steps, std::int64_t train_steps, bool dpm) {
  const auto spacing = values.get<std::string>("timestep_spacing");
  const auto offset = values.get<std::int64_t>("steps_offset");
  std::vector<double> timesteps;
  if (spacing == "linspace") {
    // DPM: linspace(0, T-1, steps+1) without its last point; others: linspace(0, T-1, steps)
    const auto points = dpm ? steps + 1 : steps;
    for (std::int64_t i = 0; i < points; ++i)
      timesteps.push_back(points == 1 ? 0.0 : static_cast<double>(train_steps - 1) * i / static_cast<double>(points - 1));
    std::reverse(timesteps.begin(), timesteps.end());
    if (dpm) timesteps.pop_back();
  } else if (spacing == "leading") {
    const auto ratio = dpm ? train_steps / (steps + 1) : train_steps / steps;
    for (std::int64_t i = dpm ? steps : steps - 1; i >= (dpm ? 1 : 0); --i)
      timesteps.push_back(static_cast<double>(i * ratio + offset));
  } else if (spacing == "trailing") {
    const double ratio = static_cast<double>(train_steps) / static_cast<double>(steps);
    for (double t = static_cast<double>(train_steps); t > 0; t -= ratio) timesteps.push_back(std::round(t) - 1);
  } else {
    values.reject("timestep_spacing", "'" + spacing + "' is not supported (linspace, leading, trailing)");
  }
  return timesteps;
}

// log(σ) of the training schedule, rounded to float32 as numpy computes it from the float32 array.
std::vector<double> log_sigmas_of(const std::vector<double>& schedule) {
  std::vector<double> logs;
  for (double sigma : schedule) logs.push_back(static_cast<float>(std::log(static_cast<float>(sigma))));
  return logs;
}

// The noise level after the last step: 0 ("zero") or the schedule's smallest ("sigma_min").
void append_final_sigma(const config& values, std::vector<double>& sigmas, const std::vector<double>& schedule) {
  const auto final_type = values.get<std::string>("final_sigmas_type");
  if (final_type == "zero")
    sigmas.push_back(0.0);
  else if (final_type == "sigma_min")
    sigmas.push_back(schedule.front());
  else
    values.reject("final_sigmas_type", "'" + final_type + "' is not supported (zero, sigma_min)");
}

void require_epsilon(const config& values) {
  if (values.get<std::string>("prediction_type") != "epsilon")
    values.reject("prediction_type", "'" + values.get<std::string>("prediction_type") + "' is not supported (epsilon)");
}

// Ref: diffusers/schedulers/scheduling_euler_discrete.py (s_churn = 0).
class euler_sampler : public sampler {
 public:
  explicit euler_sampler(config values) : values_(std::move(values)), alphas_cumprod_(alphas_cumprod_of(values_)) {
    require_epsilon(values_);
    if (values_.get<std::string>("interpolation_type") != "linear") values_.reject("interpolation_type", "is not supported (linear)");
    if (values_.get<bool>("use_exponential_sigmas") || values_.get<bool>("use_beta_sigmas"))
      values_.reject("use_exponential_sigmas", "and use_beta_sigmas are not supported");
    if (values_.get<std::string>("timestep_type") != "discrete") values_.reject("timestep_type", "is not supported (discrete)");
  }

  void set_timesteps(std::int64_t steps) override {
    const auto train_steps = alphas_cumprod_.size(0);
    auto timesteps = spaced_timesteps(values_, steps, train_steps, false);
    for (auto& t : timesteps) t = static_cast<float>(t);
    auto schedule = as_doubles(((1 - alphas_cumprod_) / alphas_cumprod_).pow(0.5));  // float32 values
    const auto log_sigmas = log_sigmas_of(schedule);
    std::vector<double> sigmas;
    for (double t : timesteps) sigmas.push_back(interpolate(t, schedule));
    if (values_.get<bool>("use_karras_sigmas")) {
      double sigma_min = values_.get_or<double>("sigma_min", sigmas.back());
      double sigma_max = values_.get_or<double>("sigma_max", sigmas.front());
      sigmas = karras_sigmas(sigma_min, sigma_max, steps);
      timesteps.clear();
      for (double sigma : sigmas) timesteps.push_back(sigma_to_t(sigma, log_sigmas));
    }
    append_final_sigma(values_, sigmas, schedule);
    sigmas_ = float_tensor(sigmas);
    timesteps_ = float_tensor(timesteps);
    sigma_values_ = as_doubles(sigmas_);
  }

  double init_noise_sigma() const override {
    double max_sigma = *std::max_element(sigma_values_.begin(), sigma_values_.end());
    auto spacing = values_.get<std::string>("timestep_spacing");
    return spacing == "linspace" || spacing == "trailing" ? max_sigma : std::sqrt(max_sigma * max_sigma + 1);
  }

  at::Tensor scale_model_input(const at::Tensor& sample, std::int64_t index) const override {
    check_index(index);
    float sigma = static_cast<float>(sigma_values_[index]);
    return sample / std::sqrt(sigma * sigma + 1.0f);
  }

  at::Tensor step(const at::Tensor& model_output, std::int64_t index, const at::Tensor& sample) override {
    check_index(index);
    // On CUDA one kernel with these ops' roundings: their seven launches took 0.17 ms of host time per step.
    if (auto next = euler_step_on_device(sample, model_output, static_cast<float>(sigma_values_[index]),
                                         static_cast<float>(sigma_values_[index + 1]));
        next.defined())
      return next;
    auto x = sample.to(torch::kFloat32);
    auto sigma = sigmas_[index], sigma_next = sigmas_[index + 1];  // float32 scalars, as diffusers
    auto denoised = x - sigma * model_output;
    auto derivative = (x - denoised) / sigma;
    return (x + derivative * (sigma_next - sigma)).to(model_output.scalar_type());
  }

  std::string name() const override { return "euler"; }

 private:
  config values_;
  at::Tensor alphas_cumprod_;
  std::vector<double> sigma_values_;
};

// Ref: diffusers/schedulers/scheduling_ddim.py (eta = 0).
class ddim_sampler : public sampler {
 public:
  explicit ddim_sampler(config values) : values_(std::move(values)), alphas_cumprod_(alphas_cumprod_of(values_)) {
    require_epsilon(values_);
    if (values_.get<bool>("thresholding")) values_.reject("thresholding", "is not supported");
    final_alpha_cumprod_ = values_.get<bool>("set_alpha_to_one") ? torch::tensor(1.0f) : alphas_cumprod_[0].clone();
  }

  void set_timesteps(std::int64_t steps) override {
    const auto train_steps = alphas_cumprod_.size(0);
    if (steps > train_steps) throw error("DDIM: " + std::to_string(steps) + " steps exceed num_train_timesteps");
    auto timesteps = spaced_timesteps(values_, steps, train_steps, false);
    for (auto& t : timesteps) t = std::round(t);
    timesteps_ = float_tensor(timesteps);
    sigmas_ = at::Tensor();
    stride_ = train_steps / steps;
    timestep_values_.assign(timesteps.begin(), timesteps.end());
  }

  at::Tensor step(const at::Tensor& model_output, std::int64_t index, const at::Tensor& sample) override {
    check_index(index);
    const auto t = static_cast<std::int64_t>(timestep_values_[index]);
    const auto previous = t - stride_;
    // float32 scalar tensors throughout, as diffusers: DDIM with clip_sample amplifies rounding differences.
    auto alpha = alphas_cumprod_[t];
    auto alpha_previous = previous >= 0 ? alphas_cumprod_[previous] : final_alpha_cumprod_;
    auto x0 = (sample - (1 - alpha).pow(0.5) * model_output) / alpha.pow(0.5);
    if (values_.get<bool>("clip_sample")) {
      const double range = values_.get<double>("clip_sample_range");
      x0 = x0.clamp(-range, range);
    }
    return alpha_previous.pow(0.5) * x0 + (1 - alpha_previous).pow(0.5) * model_output;
  }

  std::string name() const override { return "ddim"; }

 private:
  config values_;
  at::Tensor alphas_cumprod_;
  at::Tensor final_alpha_cumprod_;
  std::int64_t stride_ = 1;
  std::vector<double> timestep_values_;
};

// DPM-Solver++ (2M): multistep, second order, midpoint. Ref: diffusers/schedulers/scheduling_dpmsolver_multistep.py.
class dpm_sampler : public sampler {
 public:
  explicit dpm_sampler(config values) : values_(std::move(values)), alphas_cumprod_(alphas_cumprod_of(values_)) {
    require_epsilon(values_);
    if (values_.get<std::string>("algorithm_type") != "dpmsolver++")
      values_.reject("algorithm_type", "is not supported (dpmsolver++)");
    if (values_.get<std::int64_t>("solver_order") != 2) values_.reject("solver_order", "is not supported (2)");
    if (values_.get<std::string>("solver_type") != "midpoint") values_.reject("solver_type", "is not supported (midpoint)");
    if (values_.get<bool>("thresholding")) values_.reject("thresholding", "is not supported");
    for (const char* key : {"use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas"})
      if (values_.get_or<bool>(key, false)) values_.reject(key, "is not supported");
    if (values_.get_or<bool>("use_flow_sigmas", false)) values_.reject("use_flow_sigmas", "is not supported");
    if (values_.get<double>("lambda_min_clipped") != -std::numeric_limits<double>::infinity())
      values_.reject("lambda_min_clipped", "is not supported (-inf only)");
  }

  void set_timesteps(std::int64_t steps) override {
    const auto train_steps = alphas_cumprod_.size(0);
    auto timesteps = spaced_timesteps(values_, steps, train_steps, true);
    for (auto& t : timesteps) t = std::round(t);
    auto schedule = as_doubles(((1 - alphas_cumprod_) / alphas_cumprod_).pow(0.5));
    std::vector<double> sigmas;
    if (values_.get<bool>("use_karras_sigmas")) {
      const auto log_sigmas = log_sigmas_of(schedule);
      sigmas = karras_sigmas(schedule.front(), schedule.back(), steps);
      timesteps.clear();
      for (double sigma : sigmas) timesteps.push_back(std::round(sigma_to_t(sigma, log_sigmas)));
    } else {
      for (double t : timesteps) sigmas.push_back(interpolate(t, schedule));
    }
    append_final_sigma(values_, sigmas, schedule);
    sigmas_ = float_tensor(sigmas);
    timesteps_ = float_tensor(timesteps);
    previous_x0_ = at::Tensor();
  }

  at::Tensor step(const at::Tensor& model_output, std::int64_t index, const at::Tensor& sample) override {
    check_index(index);
    const auto steps = timesteps_.size(0);
    auto x = sample.to(torch::kFloat32);
    // alpha_t = 1/sqrt(σ²+1), sigma_t = σ·alpha_t, lambda = log(alpha_t) − log(sigma_t), all float32 as diffusers.
    auto alpha_sigma = [&](std::int64_t i) {
      auto sigma = sigmas_[i];
      auto alpha_t = 1 / (sigma * sigma + 1).pow(0.5);
      return std::make_pair(alpha_t, sigma * alpha_t);
    };
    auto [alpha_s0, sigma_s0] = alpha_sigma(index);
    auto [alpha_t, sigma_t] = alpha_sigma(index + 1);
    auto x0 = (x - sigma_s0 * model_output) / alpha_s0;  // the data prediction
    auto lambda_t = torch::log(alpha_t) - torch::log(sigma_t);
    auto lambda_s0 = torch::log(alpha_s0) - torch::log(sigma_s0);
    auto h = lambda_t - lambda_s0;
    const bool final_first_order =
        index == steps - 1 && (values_.get<bool>("euler_at_final") ||
                               (values_.get<bool>("lower_order_final") && steps < 15) ||
                               values_.get<std::string>("final_sigmas_type") == "zero");
    at::Tensor result;
    if (final_first_order || !previous_x0_.defined()) {  // first order: diffusers' first step, or its final one
      result = (sigma_t / sigma_s0) * x - (alpha_t * (torch::exp(-h) - 1.0)) * x0;
    } else {
      auto [alpha_s1, sigma_s1] = alpha_sigma(index - 1);
      auto lambda_s1 = torch::log(alpha_s1) - torch::log(sigma_s1);
      auto r0 = (lambda_s0 - lambda_s1) / h;
      auto d1 = (1.0 / r0) * (x0 - previous_x0_);
      result = (sigma_t / sigma_s0) * x - (alpha_t * (torch::exp(-h) - 1.0)) * x0 -
               0.5 * (alpha_t * (torch::exp(-h) - 1.0)) * d1;
    }
    previous_x0_ = x0;
    return result.to(model_output.scalar_type());
  }

  std::string name() const override { return "dpm++2m"; }

  sampler_memory memory() const override {
    if (!previous_x0_.defined()) return {};
    return {{"previous_x0", previous_x0_}};
  }

  void recall(const sampler_memory& memory) override {
    for (const auto& entry : memory)
      if (entry.first != "previous_x0") sampler::recall({entry});  // names what this sampler does not keep
    auto found = memory.find("previous_x0");
    previous_x0_ = found == memory.end() ? at::Tensor() : found->second;
  }

 private:
  config values_;
  at::Tensor alphas_cumprod_;
  at::Tensor previous_x0_;  // the last step's data prediction (none before the first step)
};

// Ref: diffusers/schedulers/scheduling_flow_match_euler_discrete.py (static shift, deterministic).
class flow_euler_sampler : public sampler {
 public:
  explicit flow_euler_sampler(config values) : values_(std::move(values)) {
    if (values_.get<bool>("use_dynamic_shifting")) values_.reject("use_dynamic_shifting", "is not supported");
    for (const char* key : {"use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas",
                            "stochastic_sampling"})
      if (values_.get<bool>(key)) values_.reject(key, "is not supported");
    if (values_.has("shift_terminal")) values_.reject("shift_terminal", "is not supported");
    shift_ = values_.get<double>("shift");
    train_steps_ = values_.get<std::int64_t>("num_train_timesteps");
  }

  void set_timesteps(std::int64_t steps) override {
    // The training sigmas in float32: shift·s / (1 + (shift − 1)·s) for s = t/T, t = T..1.
    auto shifted = [&](const at::Tensor& s) { return shift_ * s / (1 + (shift_ - 1) * s); };
    auto train = shifted(torch::linspace(1, static_cast<double>(train_steps_), train_steps_, torch::kFloat32).flip(0) /
                         static_cast<double>(train_steps_));
    const double sigma_max = train[0].item<float>(), sigma_min = train[-1].item<float>();
    std::vector<double> sigmas;
    const double t_max = sigma_max * static_cast<double>(train_steps_), t_min = sigma_min * static_cast<double>(train_steps_);
    for (std::int64_t i = 0; i < steps; ++i) {
      double t = steps == 1 ? t_max : t_max + (t_min - t_max) * static_cast<double>(i) / static_cast<double>(steps - 1);
      double s = t / static_cast<double>(train_steps_);
      sigmas.push_back(shift_ * s / (1 + (shift_ - 1) * s));  // diffusers shifts the schedule again here
    }
    auto sigma_tensor = float_tensor(sigmas);
    timesteps_ = sigma_tensor * static_cast<double>(train_steps_);
    sigmas_ = torch::cat({sigma_tensor, torch::zeros({1})});
  }

  at::Tensor step(const at::Tensor& model_output, std::int64_t index, const at::Tensor& sample) override {
    check_index(index);
    auto x = sample.to(torch::kFloat32);
    return (x + (sigmas_[index + 1] - sigmas_[index]) * model_output).to(model_output.scalar_type());
  }

  std::string name() const override { return "flow-euler"; }

 private:
  config values_;
  double shift_ = 1.0;
  std::int64_t train_steps_ = 1000;
};

}  // namespace

at::Tensor sampler::scale_model_input(const at::Tensor& sample, std::int64_t index) const {
  check_index(index);
  return sample;
}

void sampler::recall(const sampler_memory& memory) {
  if (!memory.empty())
    throw error("sampler " + name() + ": cannot take over '" + memory.begin()->first +
                "' (it keeps nothing of that name from step to step)");
}

void sampler::check_index(std::int64_t index) const {
  if (!timesteps_.defined()) throw error("sampler: set_timesteps was not called");
  if (index < 0 || index >= timesteps_.size(0))
    throw error("sampler: step index " + std::to_string(index) + " outside [0, " + std::to_string(timesteps_.size(0)) + ")");
}

std::vector<std::string> sampler_names() { return {"euler", "ddim", "dpm++2m", "flow-euler"}; }

std::unique_ptr<sampler> make_sampler(const config& scheduler_config, const std::string& name) {
  static const std::map<std::string, std::string> class_of = {{"euler", "EulerDiscreteScheduler"},
                                                              {"ddim", "DDIMScheduler"},
                                                              {"dpm++2m", "DPMSolverMultistepScheduler"},
                                                              {"flow-euler", "FlowMatchEulerDiscreteScheduler"}};
  std::string class_name = scheduler_config.get_or<std::string>("_class_name", "");
  if (!name.empty()) {
    auto found = class_of.find(name);
    if (found == class_of.end()) throw error("unknown sampler '" + name + "' (use euler, ddim, dpm++2m or flow-euler)");
    class_name = found->second;
  }
  if (class_name == "EulerDiscreteScheduler") return std::make_unique<euler_sampler>(as_class(scheduler_config, class_name));
  if (class_name == "DDIMScheduler") return std::make_unique<ddim_sampler>(as_class(scheduler_config, class_name));
  if (class_name == "DPMSolverMultistepScheduler") return std::make_unique<dpm_sampler>(as_class(scheduler_config, class_name));
  if (class_name == "FlowMatchEulerDiscreteScheduler")
    return std::make_unique<flow_euler_sampler>(as_class(scheduler_config, class_name));
  throw error(scheduler_config.source().string() + ": scheduler class '" + class_name +
              "' is not supported (EulerDiscreteScheduler, DDIMScheduler, DPMSolverMultistepScheduler, "
              "FlowMatchEulerDiscreteScheduler)");
}

}  // namespace hybridiff::models
