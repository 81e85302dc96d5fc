#include "runtime/cuda_graph.hpp"

#include <sstream>

#include <torch/torch.h>
#ifdef HYBRIDIFF_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "models/errors.hpp"

namespace hybridiff::runtime {

namespace {

at::Tensor copy_of(const at::Tensor& tensor) { return tensor.defined() ? tensor.clone() : tensor; }

void copy_into(at::Tensor& target, const at::Tensor& source) {
  if (target.defined()) target.copy_(source, /*non_blocking=*/true);
}

}  // namespace

// What a captured forward pass reads: copies of the first call's inputs, refilled before every replay.
struct captured_inputs {
  at::Tensor latents, timestep;
  models::branch_conditioning cond;

  captured_inputs(const at::Tensor& first_latents, const at::Tensor& first_timestep,
                  const models::branch_conditioning& first_cond)
      : latents(first_latents.clone()), timestep(first_timestep.clone()),
        cond{copy_of(first_cond.context), copy_of(first_cond.pooled), copy_of(first_cond.time_ids)} {}
  void refill(const at::Tensor& new_latents, const at::Tensor& new_timestep, const models::branch_conditioning& new_cond) {
    copy_into(latents, new_latents);
    copy_into(timestep, new_timestep);
    copy_into(cond.context, new_cond.context);
    copy_into(cond.pooled, new_cond.pooled);
    copy_into(cond.time_ids, new_cond.time_ids);
  }
};

#ifdef HYBRIDIFF_WITH_CUDA
struct graphed_denoiser::graph : captured_inputs {
  using captured_inputs::captured_inputs;
  at::cuda::CUDAGraph replay;
  at::Tensor output;
};
struct graphed_stage::graph : captured_inputs {
  using captured_inputs::captured_inputs;
  at::cuda::CUDAGraph replay;
  at::Tensor output;
  std::map<std::string, models::activation> reused;    // the values of the modules not owned (inputs)
  std::map<std::string, models::activation> computed;  // the owned modules' outputs, in the graph's memory
};
#else
struct graphed_denoiser::graph {};
struct graphed_stage::graph {};
#endif

graphed_denoiser::graphed_denoiser(models::diffusion_pipeline& pipeline) : pipeline_(pipeline) {}
graphed_denoiser::~graphed_denoiser() = default;
graphed_stage::graphed_stage(models::diffusion_pipeline& pipeline) : pipeline_(pipeline) {}
graphed_stage::~graphed_stage() = default;

namespace {

void describe(std::ostream& key, const at::Tensor& tensor) {
  if (!tensor.defined()) {
    key << "-;";
    return;
  }
  key << tensor.sizes() << c10::toString(tensor.scalar_type()) << tensor.device() << ";";
}

std::string key_of(const at::Tensor& latents, const at::Tensor& timestep, const models::branch_conditioning& cond) {
  std::ostringstream key;
  for (const auto* tensor : {&latents, &timestep, &cond.context, &cond.pooled, &cond.time_ids}) describe(key, *tensor);
  return key.str();
}

models::activation copy_of(const models::activation& value) {
  models::activation copy;
  for (const auto& tensor : value) copy.push_back(copy_of(tensor));
  return copy;
}

#ifdef HYBRIDIFF_WITH_CUDA
// Runs `forward(false)` three times on a side stream (warm-up: the allocator's, cuDNN's and SDPA's choices), then
// captures `forward(true)` into `replay` (thread-local capture: other threads' GPU work goes on). The side stream
// waits for the current one's work (the inputs) and the current one for the capture.
void warm_up_and_capture(at::cuda::CUDAGraph& replay, c10::DeviceIndex device,
                         const std::function<void(bool capturing)>& forward, const std::string& what) {
  auto current = c10::cuda::getCurrentCUDAStream(device);
  auto side = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device);
  at::cuda::CUDAEvent inputs_ready;
  inputs_ready.record(current);
  inputs_ready.block(side);
  bool capturing = false;
  try {
    c10::cuda::CUDAStreamGuard on_side(side);
    for (int i = 0; i < 3; ++i) forward(false);
    side.synchronize();
    replay.capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
    capturing = true;
    forward(true);
    capturing = false;
    replay.capture_end();
  } catch (const std::exception& failure) {
    if (capturing) {
      try {
        replay.capture_end();  // leaves the side stream usable; the graph is discarded
      } catch (const std::exception&) {
      }
    }
    const auto* torch_failure = dynamic_cast<const c10::Error*>(&failure);
    throw error("capturing " + what + " in a CUDA graph failed: " +
                (torch_failure ? torch_failure->what_without_backtrace() : failure.what()));
  }
  at::cuda::CUDAEvent captured;
  captured.record(side);
  captured.block(current);
}

// The graph stored under `key`, made (and captured) by `make` at the first call; nothing is stored when that throws.
template <class Graph, class Make>
Graph& graph_for(std::map<std::string, std::unique_ptr<Graph>>& graphs, const std::string& key, const Make& make) {
  if (auto found = graphs.find(key); found != graphs.end()) return *found->second;
  return *graphs.emplace(key, make()).first->second;
}

// A stale-activation step inside a graph: owned modules compute (their outputs kept), every other module returns
// the graph's buffer for it, which the first warm-up run fills from `reuse`.
class buffered_runner : public models::module_runner {
 public:
  buffered_runner(const std::set<std::string>& owned, const graphed_stage::reuse_function& reuse,
                  std::map<std::string, models::activation>& reused, std::map<std::string, models::activation>& computed,
                  bool capturing)
      : owned_(owned), reuse_(reuse), reused_(reused), computed_(computed), capturing_(capturing) {}
  models::activation run(const std::string& module, const std::function<models::activation()>& compute) override {
    if (owned_.count(module)) return computed_[module] = compute();
    if (auto found = reused_.find(module); found != reused_.end()) return found->second;
    if (capturing_)
      throw error("module '" + module + "' was reused while capturing but not in the warm-up runs before");
    return reused_[module] = copy_of(reuse_(module));
  }

 private:
  const std::set<std::string>& owned_;
  const graphed_stage::reuse_function& reuse_;
  std::map<std::string, models::activation>& reused_;
  std::map<std::string, models::activation>& computed_;
  bool capturing_;
};
#endif

}  // namespace

at::Tensor graphed_denoiser::predict(const at::Tensor& latents, const at::Tensor& timestep,
                                     const models::branch_conditioning& cond) {
#ifdef HYBRIDIFF_WITH_CUDA
  if (!latents.is_cuda()) throw error("CUDA graphs need a CUDA device; the latents are on " + latents.device().str());
  torch::NoGradGuard no_grad;
  auto& g = graph_for(graphs_, key_of(latents, timestep, cond), [&] {
    auto made = std::make_unique<graph>(latents, timestep, cond);
    warm_up_and_capture(made->replay, latents.device().index(), [&](bool) {
      made->output = pipeline_.predict(made->latents, made->timestep, made->cond);
    }, "the denoiser's forward pass");
    return made;
  });
  g.refill(latents, timestep, cond);
  g.replay.replay();
  return g.output.clone();
#else
  throw error("CUDA graphs: this build has no CUDA");
#endif
}

at::Tensor graphed_stage::step(const at::Tensor& latents, const at::Tensor& timestep,
                               const models::branch_conditioning& cond, const std::set<std::string>& owned,
                               const reuse_function& reuse, const std::set<std::string>& kept,
                               std::map<std::string, models::activation>& computed) {
#ifdef HYBRIDIFF_WITH_CUDA
  if (!latents.is_cuda()) throw error("CUDA graphs need a CUDA device; the latents are on " + latents.device().str());
  torch::NoGradGuard no_grad;
  std::string key = key_of(latents, timestep, cond);
  for (const auto& module : owned) key += module + ",";
  auto& g = graph_for(graphs_, key, [&] {
    auto made = std::make_unique<graph>(latents, timestep, cond);
    warm_up_and_capture(made->replay, latents.device().index(), [&](bool capturing) {
      buffered_runner runner(owned, reuse, made->reused, made->computed, capturing);
      made->output = pipeline_.predict(made->latents, made->timestep, made->cond, &runner);
    }, "a stale-activation step");
    return made;
  });
  g.refill(latents, timestep, cond);
  for (auto& [module, buffers] : g.reused) {
    const auto value = reuse(module);
    if (value.size() != buffers.size())
      throw error("CUDA graph of a stale-activation step: module '" + module + "' now gives " +
                  std::to_string(value.size()) + " tensor(s), the graph was captured with " +
                  std::to_string(buffers.size()));
    for (std::size_t i = 0; i < buffers.size(); ++i) {
      if (buffers[i].defined() != value[i].defined() || (buffers[i].defined() && buffers[i].sizes() != value[i].sizes()))
        throw error("CUDA graph of a stale-activation step: module '" + module + "' output " + std::to_string(i) +
                    " changed shape since the capture");
      copy_into(buffers[i], value[i]);
    }
  }
  g.replay.replay();
  computed.clear();
  for (const auto& [module, value] : g.computed)
    if (kept.count(module)) computed.emplace(module, copy_of(value));
  return g.output.clone();
#else
  throw error("CUDA graphs: this build has no CUDA");
#endif
}

}  // namespace hybridiff::runtime
