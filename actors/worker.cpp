#include "actors/worker.hpp"

#include <chrono>

#include <c10/util/Exception.h>
#ifdef HYBRIDIFF_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif
#include <torch/torch.h>

#include "actors/messages.hpp"

namespace hybridiff::actors {
namespace {

struct worker_state {
  std::shared_ptr<runtime::stage_worker> worker;
  static inline const char* name = "hybridiff.worker";
};
using worker_pointer = worker_actor::stateful_pointer<worker_state>;

// Runs `compute` and packs its result; any exception becomes an error reply (the request never hangs).
template <class Compute>
caf::result<step_reply_ptr> answer(worker_pointer self, const char* what, Compute compute) {
  auto& worker = *self->state.worker;
  try {
    auto started = std::chrono::steady_clock::now();
    auto reply = std::make_shared<step_reply>();
    reply->worker = worker.rank();
    reply->prediction = compute(worker, *reply);
    // Compute time includes the wait for the device, so that per-worker times in the trace are real. The worker's
    // stream, not the device: another worker of this process may be capturing a CUDA graph on the same device,
    // and a device-wide synchronisation then fails both ("operation not permitted when stream is capturing").
    if (reply->prediction.is_cuda()) c10::cuda::getCurrentCUDAStream(reply->prediction.device().index()).synchronize();
    reply->compute_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
    return step_reply_ptr(std::move(reply));
  } catch (const c10::Error& failure) {
    return caf::make_error(caf::sec::runtime_error, "worker " + std::to_string(worker.rank()) + " (" + what +
                                                        "): " + failure.what_without_backtrace());
  } catch (const std::exception& failure) {
    return caf::make_error(caf::sec::runtime_error,
                           "worker " + std::to_string(worker.rank()) + " (" + what + "): " + failure.what());
  }
}

caf::error wrong_behaviour(worker_pointer self, const char* request, const char* behaviour) {
  return caf::make_error(caf::sec::unexpected_message, "worker " + std::to_string(self->state.worker->rank()) +
                                                           " got a " + request + " request in its " + behaviour +
                                                           " behaviour");
}

worker_actor::behavior_type pipeline_stage(worker_pointer self);
worker_actor::behavior_type cfg_branch(worker_pointer self);

caf::result<bool> assign(worker_pointer self, const std::vector<std::string>& window,
                         const std::vector<std::string>& branch, bool cuda_graphs) {
  auto& worker = *self->state.worker;
  worker.set_component(runtime::split_scope::window, {window.begin(), window.end()});
  worker.set_component(runtime::split_scope::branch, {branch.begin(), branch.end()});
  try {
    worker.use_cuda_graphs(cuda_graphs);
  } catch (const std::exception& failure) {
    return caf::make_error(caf::sec::runtime_error, failure.what());
  }
  return true;
}

caf::result<bool> prepare(worker_pointer self, const image_setup_ptr& setup) {
  auto& worker = *self->state.worker;
  try {
    worker.clear_cache();
    worker.set_conditioning(setup->conditioning);
    worker.set_window_conditioning(setup->window);
  } catch (const std::exception& failure) {
    return caf::make_error(caf::sec::runtime_error,
                           "worker " + std::to_string(worker.rank()) + " (prepare): " + failure.what());
  }
  self->become(cfg_branch(self));
  return true;
}

// fill and stage requests in `scope`: the first step of a pipelined run, and a stale-activation step.
caf::result<step_reply_ptr> fill(worker_pointer self, const step_request_ptr& request, runtime::split_scope scope) {
  return answer(self, "fill", [&](runtime::stage_worker& worker, step_reply& reply) {
    auto out = worker.fill(request->latents, request->timestep, scope);
    reply.owned = worker.owned_outputs(scope);
    return out;
  });
}
caf::result<step_reply_ptr> stage(worker_pointer self, const step_request_ptr& request, runtime::split_scope scope) {
  return answer(self, "stage", [&](runtime::stage_worker& worker, step_reply& reply) {
    static const runtime::activation_cache none;
    auto out = worker.pipeline_step(request->latents, request->timestep, request->peers ? *request->peers : none, scope);
    reply.owned = worker.owned_outputs(scope);
    return out;
  });
}

// A CFG branch: full forward passes with the worker's branch conditioning, or its branch component when the
// branch is split over several workers.
worker_actor::behavior_type cfg_branch(worker_pointer self) {
  return {
      [=](predict_atom, const step_request_ptr& request) {
        return answer(self, "predict", [&](runtime::stage_worker& worker, step_reply&) {
          return worker.predict(request->latents, request->timestep, request->conditioning.get());
        });
      },
      [=](fill_atom, const step_request_ptr& request) { return fill(self, request, runtime::split_scope::branch); },
      [=](stage_atom, const step_request_ptr& request) { return stage(self, request, runtime::split_scope::branch); },
      [=](reconfigure_atom, std::int32_t role) {
        if (role == static_cast<std::int32_t>(worker_role::pipeline_stage)) self->become(pipeline_stage(self));
        return role;
      },
      [=](assign_atom, const std::vector<std::string>& window, const std::vector<std::string>& branch,
          bool cuda_graphs) { return assign(self, window, branch, cuda_graphs); },
      [=](prepare_atom, const image_setup_ptr& setup) { return prepare(self, setup); },
  };
}

// A pipeline stage: fills its caches at the window's first step, then runs its component on stale activations.
worker_actor::behavior_type pipeline_stage(worker_pointer self) {
  return {
      [=](predict_atom, const step_request_ptr&) -> caf::result<step_reply_ptr> {
        return wrong_behaviour(self, "predict", "pipeline_stage");
      },
      [=](fill_atom, const step_request_ptr& request) { return fill(self, request, runtime::split_scope::window); },
      [=](stage_atom, const step_request_ptr& request) { return stage(self, request, runtime::split_scope::window); },
      [=](reconfigure_atom, std::int32_t role) {
        if (role == static_cast<std::int32_t>(worker_role::cfg_branch)) {
          self->state.worker->clear_cache();
          self->become(cfg_branch(self));
        }
        return role;
      },
      [=](assign_atom, const std::vector<std::string>& window, const std::vector<std::string>& branch,
          bool cuda_graphs) { return assign(self, window, branch, cuda_graphs); },
      [=](prepare_atom, const image_setup_ptr& setup) { return prepare(self, setup); },
  };
}

worker_actor::behavior_type start_worker(worker_pointer self, std::shared_ptr<runtime::stage_worker> worker) {
  self->state.worker = std::move(worker);
  return cfg_branch(self);
}

}  // namespace

worker_actor spawn_worker(caf::actor_system& system, std::shared_ptr<runtime::stage_worker> worker) {
  return system.spawn<caf::detached>(start_worker, std::move(worker));
}

}  // namespace hybridiff::actors
