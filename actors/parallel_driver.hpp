#pragma once
// The actors layer's internals behind parallel_session (actors/hybridiff.hpp): the state a session keeps across
// images, and the driver that runs one image on it. Not part of the public API.

#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <caf/all.hpp>

#include "actors/hybridiff.hpp"
#include "actors/protocol.hpp"
#include "runtime/stage_worker.hpp"

namespace hybridiff::actors {

/// The schedule the tau controller runs for `options` and a request of `steps` steps.
schedule::schedule_settings schedule_of(const parallel_options& options, int steps);

// What a worker computes in pipelined steps (the arguments of its assign message).
struct worker_assignment {
  module_names window, window_handed_on, branch, branch_handed_on;
  bool cuda_graphs = false;
};

// The actors and replicas that outlive one image: workers (with their stage_worker state) and the supervisor.
struct session_state {
  caf::actor_system& system;
  caf::scoped_actor self;
  parallel_options options;
  std::vector<std::shared_ptr<models::diffusion_pipeline>> replicas;  // the local workers' (workers 0 .. size − 1)
  std::shared_ptr<models::diffusion_pipeline> lead;  // encodes the prompts and starts the latents (a local replica)
  std::vector<worker_actor> workers;
  std::vector<worker_assignment> assignments;  // per worker
  // The remote workers also serve other sessions between this one's images (an image service's groups): their
  // assignments are sent again before every image.
  bool shared_remote_workers = false;
  supervisor_actor supervisor;
  int n = 2;              // components of the window split (the stride-2 extra worker is worker n)
  int output_worker = 1;  // the worker whose output is the window's prediction
  bool exchange_blocks = true;
  // Per worker, the other workers' modules its component computes on in window and branch steps: only these of
  // the last step's outputs travel to it.
  std::vector<std::set<std::string>> window_inputs, branch_inputs;
  std::optional<int> lost;                             // a worker lost in an earlier image
  std::unique_ptr<runtime::graphed_denoiser> graphed;  // mode none with CUDA graphs

  session_state(caf::actor_system& actor_system, std::shared_ptr<models::diffusion_pipeline> lead_replica,
                std::vector<std::shared_ptr<models::diffusion_pipeline>> pipelines, parallel_options settings)
      : system(actor_system),
        self(actor_system),
        options(std::move(settings)),
        replicas(std::move(pipelines)),
        lead(std::move(lead_replica)) {}
  ~session_state() {
    if (supervisor) caf::anon_send_exit(supervisor, caf::exit_reason::user_shutdown);
    // Only the local workers: remote ones (proxies) belong to their cluster_host and serve its later sessions.
    for (std::size_t w = 0; w < replicas.size() && w < workers.size(); ++w)
      caf::anon_send_exit(workers[w], caf::exit_reason::user_shutdown);
  }
  const worker_actor& worker(int w) const { return workers[w]; }
  /// Sends worker w its assignment; throws hybridiff::error naming the worker.
  void assign(int w);
};

/// Runs one image of `request` (settled as `plan`) on the session's workers: the driver owns latents, sampler and
/// conditioning and asks the workers for what the tau controller's current phase needs.
parallel_result drive_image(session_state& session, const models::generation_request& request,
                            const models::generation_plan& plan, const models::step_observer& observe);

}  // namespace hybridiff::actors
