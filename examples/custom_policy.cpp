// A schedule policy of your own, from C++: register it by name, then choose it like a built-in one
// (parallel_options::policy, or `--policy` on the command line of a program that registers it). This one opens
// two pipeline windows of k steps, at steps `first` and `second`; the built-in slope detector opens one.
//
//   build/custom_policy "two-windows:first=12,second=30,k=5" sneaker.png
#include <iostream>
#include <limits>

#include <caf/all.hpp>

#include "actors/hybridiff.hpp"
#include "models/io/builtin.hpp"

namespace {

using hybridiff::schedule::phase;

class two_windows : public hybridiff::schedule::schedule_policy {
 public:
  two_windows(int first, int second, int k) : begins_{first, second}, k_(k) {}

  // Asked at the start of every step: a window is a fill step (every worker caches its activations), then
  // pipeline steps on the previous step's activations.
  phase phase_of(int step) const override {
    for (int begin : begins_) {
      if (step == begin) return phase::fill;
      if (step > begin && step < begin + k_) return phase::pipeline;
    }
    return phase::cfg;
  }
  // Told after every step (its phase, rel-MAE, wall time); this policy decided everything up front.
  void end_step(const hybridiff::schedule::step_observation&) override {}
  // Knowing every phase, it promises each CFG step's run up to the next window (to the end after the last): the
  // two guidance branches' workers then exchange predictions and step ahead without waiting for each decision.
  int cfg_certain_through(int step) const override {
    for (int begin : begins_)
      if (step < begin) return begin - 1;
    return std::numeric_limits<int>::max();
  }
  // And each window's pipeline steps at its fill step: the stages then hand activations to each other directly.
  int window_certain_through(int step) const override {
    for (int begin : begins_)
      if (step == begin && phase_of(begin + k_ - 1) == phase::pipeline) return begin + k_ - 1;
    return step;
  }

 private:
  int begins_[2];
  int k_;
};

void register_two_windows() {
  hybridiff::schedule::register_policy(
      "two-windows", "two windows of k steps, at first and second (first, second, k)",
      [](hybridiff::schedule::policy_parameters& parameters,
         const hybridiff::schedule::policy_context& context) -> std::unique_ptr<hybridiff::schedule::schedule_policy> {
        const int first = parameters.integer("first", context.steps / 4);
        const int second = parameters.integer("second", context.steps / 2);
        const int k = parameters.integer("k", context.k);
        if (k < 1 || first < 0 || second < first + k || second + k > context.steps)
          throw std::invalid_argument(
              "policy two-windows: need k >= 1 and 0 <= first, first + k <= second, second + k <= steps");
        return std::make_unique<two_windows>(first, second, k);
      });
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: custom_policy POLICY_SPEC OUTPUT.png   (e.g. \"two-windows:first=12,second=30,k=5\")\n";
    return 2;
  }
  try {
    register_two_windows();
    // The built-in class-conditional model on the CPU; its prompts are class names.
    std::shared_ptr<hybridiff::models::diffusion_pipeline> pipeline =
        hybridiff::models::load_pipeline(hybridiff::models::builtin_model_dir("fashion-diffusion"), {});
    hybridiff::models::generation_request request;
    request.prompt = "sneaker";

    hybridiff::parallel_options options;
    options.mode = hybridiff::parallel_mode::hybrid;
    options.workers = 2;
    options.tau = hybridiff::default_tau_settings(*pipeline);  // defaults for parameters the spec leaves out
    options.policy = argv[1];

    caf::actor_system_config config;
    caf::actor_system system{config};
    hybridiff::parallel_session session(system, {pipeline, pipeline}, options);
    auto result = session.generate(request);
    for (const auto& step : result.trace) std::cout << step.mode.front();
    std::cout << "\nfirst window: tau1 " << result.tau1.value_or(-1) << ", tau2 " << result.tau2.value_or(-1) << "\n";
    hybridiff::models::save_png(argv[2], pipeline->decode(result.latents));
  } catch (const std::exception& failure) {
    std::cerr << "custom_policy: " << failure.what() << "\n";
    return 1;
  }
  return 0;
}
