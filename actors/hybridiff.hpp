#pragma once
// hybridiff's public C++ API, in one header: load a pipeline (models::load_pipeline), compose workers, a tau
// controller, a supervisor and a driver (CAF actors) over its replicas, run images with a schedule, save them
// (models::save_png). Every error is a hybridiff::error; impossible options are its subclass invalid_options.
// See examples/compose_pipeline.cpp.

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "caf/fwd.hpp"
#include "models/errors.hpp"
#include "models/io/image_io.hpp"
#include "models/pipelines/pipeline.hpp"
#include "schedule/tau_controller.hpp"

namespace hybridiff {

namespace actors {
class cluster_host;
struct session_state;
}

/// none: one worker, CFG batched. cfg: one worker per guidance branch. asyncdiff: AsyncDiff model parallelism
/// with CFG batched inside every component, after `warmup` steps. hybrid: CFG data parallelism, AsyncDiff in the
/// window [tau1, tau2] (detected online unless tau1/tau2 are given), CFG again.
enum class parallel_mode { none, cfg, asyncdiff, hybrid };
/// Throws invalid_options listing the modes.
parallel_mode parse_parallel_mode(const std::string& name);
std::string to_string(parallel_mode mode);

/// How the pipeline window of hybrid mode is conditioned.
///  fixed (default): each stage on its worker's branch, as the reference, with its bugs repaired: the tau_cap
///    fallback starts the window with a fill step (the reference crashes on SDXL), SD3 stages consume the previous
///    block group's output (the reference exchanges the wrong block and freezes it), and the fill step, which
///    computes both branches in full, is guided.
///  reference: the reference's window: the fill step's output is the conditional branch alone (guidance
///    dropped), SD3's boundary activations are never exchanged.
///  cond: every stage on the prompt's conditioning (the window's steps are unguided conditional predictions).
enum class pp_conditioning { fixed, reference, cond };
/// Throws invalid_options listing the choices.
pp_conditioning parse_pp_conditioning(const std::string& name);

struct parallel_options {
  parallel_mode mode = parallel_mode::none;
  int workers = 1;  ///< none: 1; cfg: 2 or 4; asyncdiff: model_n + stride − 1; hybrid: 2 or 4 (= model_n + stride − 1)
  int model_n = 2;       ///< AsyncDiff components of the window
  int stride = 1;        ///< 1, or 2: one compute round per two pipeline steps on one extra worker (AsyncDiff §3.2)
  /// Workers per guidance branch in CFG steps (cfg, hybrid): 1, or 2 with 4 workers: each branch runs as a
  /// 2-stage AsyncDiff pipeline on its two workers (stale activations, as in the window) instead of leaving two
  /// workers idle; its runs start with `warmup` full steps.
  int branch_stages = 1;
  /// asyncdiff: steps before the pipeline (the last one fills the caches); split branches: the full steps that
  /// start each CFG run.
  int warmup = 1;
  bool time_shift = false;  ///< pipeline steps (not the fill step) feed the model the previous step's timestep (AsyncDiff App. A)
  schedule::tau_settings tau = schedule::tau_settings::sdxl();
  std::optional<int> tau1, tau2;  ///< hybrid: a fixed window instead of detection
  /// hybrid: a registered schedule policy by spec instead of detection or tau1/tau2 ("slope:L=8,eps=1e-4",
  /// "fixed:tau1=10,tau2=20", or a user's own: schedule::register_policy); parameters it leaves out take `tau`.
  std::string policy;
  pp_conditioning conditioning = pp_conditioning::fixed;
  std::chrono::milliseconds step_timeout{std::chrono::minutes(10)};  ///< per worker request; never infinite
  /// Full forward passes (CFG branches, the batched steps of none and of asyncdiff's warm-up) and stale-activation
  /// steps (pipeline steps, split-branch CFG steps) replayed from CUDA graphs; needs CUDA devices. Fill steps (the
  /// first of each pipelined run) stay eager.
  bool cuda_graphs = false;
};

/// Sets `options.workers`, `options.model_n` and `options.branch_stages` from the mode (and `options.stride`) unless
/// given: none 1 worker, cfg 2, asyncdiff model_n (default 2) + stride − 1, hybrid 2 with model_n = workers −
/// stride + 1; branch_stages 2 for cfg and hybrid on 4 workers, else 1.
void apply_worker_defaults(parallel_options& options, std::optional<int> workers, std::optional<int> model_n,
                           std::optional<int> branch_stages = std::nullopt);

/// Checks the options against each other (world size vs n + stride − 1, stride, branch stages, ...); throws
/// invalid_options naming the flag.
void validate(const parallel_options& options);
/// validate(options), then the checks that need the request's step count (tau_cap + k < steps, L_slope < tau_cap, ...).
void validate(const parallel_options& options, int steps);

/// The tau detector's defaults for `pipeline`: the folder's own (the built-in model's model_index.json), else the
/// reference scripts' for its family (SDXL's for a UNet, SD3's for a transformer).
schedule::tau_settings default_tau_settings(const models::diffusion_pipeline& pipeline);

/// One row of the schedule trace.
struct step_trace {
  int step = 0;
  std::string mode;                 ///< cfg, cfg-pipeline (split branches), fill, pipeline or cfg-degraded
  std::optional<double> metric;     ///< rel-MAE of a CFG step
  std::optional<double> slope;      ///< the detector's slope after this step
  double step_ms = 0;               ///< the step's wall time on the driver, up to the sampler step
  std::vector<double> worker_ms;    ///< per worker compute time (0 when idle)
  /// per worker, request round trip minus compute: messages, tensor transfers, queueing (0 when idle)
  std::vector<double> worker_overhead_ms;
  std::optional<int> tau1, tau2;    ///< once decided
};

struct parallel_result {
  at::Tensor latents;  ///< final latents [1, C, h, w]
  std::vector<step_trace> trace;
  std::optional<int> tau1, tau2;
};

/// Worker actors (one per replica), their supervisor and their state, kept across images: the workers' threads and
/// their GPU state stay warm, and each image only spawns its tau controller and driver. `replicas` holds one
/// pipeline per worker (the same pointer may repeat: workers on one device may share a replica). Bad options
/// throw hybridiff::error here; request-dependent ones (steps vs tau_cap + k, ...) in `generate`. One image at a
/// time (not thread-safe). A worker lost during an image is survived for that image (see generate_parallel); later
/// images of the session then fail with an error: start a new session.
/// With a `cluster` (rank 0 of a multi-process run, actors/cluster.hpp), the workers of the other ranks follow the
/// local ones: replicas.size() + cluster->workers().size() must equal options.workers.
class parallel_session {
 public:
  parallel_session(caf::actor_system& system, std::vector<std::shared_ptr<models::diffusion_pipeline>> replicas,
                   const parallel_options& options, const actors::cluster_host* cluster = nullptr);
  /// A session over some workers of a multi-process pool (an image service's group): the workers of `local`
  /// (replicas of this process; may be empty), then those of `remote_ranks` (other ranks of `cluster`), in that
  /// order. `lead`, a replica of this process, encodes the prompts and starts the latents; with no local worker a
  /// `none` session runs its steps on its one remote worker. The remote workers may serve other sessions between
  /// this one's images: every image assigns their components anew.
  parallel_session(caf::actor_system& system, std::shared_ptr<models::diffusion_pipeline> lead,
                   std::vector<std::shared_ptr<models::diffusion_pipeline>> local, const actors::cluster_host& cluster,
                   const std::vector<int>& remote_ranks, const parallel_options& options);
  ~parallel_session();
  parallel_session(const parallel_session&) = delete;
  parallel_session& operator=(const parallel_session&) = delete;

  parallel_result generate(const models::generation_request& request, const models::step_observer& observe = nullptr);
  const parallel_options& options() const;

 private:
  void start(const actors::cluster_host* cluster, const std::vector<int>& remote_ranks);
  std::unique_ptr<actors::session_state> state_;
};

/// Generates one image's latents with `options.workers` worker actors, a tau controller, a supervisor and a driver
/// (a parallel_session for one image). Errors — bad options, a worker that throws or does not answer within step_timeout — end the request
/// with a hybridiff::error naming the worker and the step; nothing hangs. A worker whose actor dies is not an error:
/// the driver (told by the supervisor, which monitors the workers) finishes the image on a surviving worker in
/// sequential CFG (both branches batched: mode none's numerics) from the failed step on; the trace marks those
/// steps `cfg-degraded`.
parallel_result generate_parallel(caf::actor_system& system,
                                  const std::vector<std::shared_ptr<models::diffusion_pipeline>>& replicas,
                                  const models::generation_request& request, const parallel_options& options,
                                  const models::step_observer& observe = nullptr);

/// Writes the trace as CSV: step,mode,rel_mae,slope,step_ms,worker0_ms,...,worker0_overhead_ms,...,tau1,tau2 and,
/// when `model` is given (the pipeline class that ran), a model column.
void write_trace_csv(const std::string& path, const std::vector<step_trace>& trace, const std::string& model = "");
/// Reads a trace written by write_trace_csv (older traces without step_ms, overhead or model columns too); `model`
/// receives the model column (empty when absent). Throws hybridiff::error naming the file, the line and the column
/// of anything that does not fit.
std::vector<step_trace> read_trace_csv(const std::string& path, std::string* model = nullptr);

}  // namespace hybridiff
