#pragma once
// An image service over one pool of workers: a request queue (a CAF actor) with admission control, a placement
// policy that decides per request how many workers it gets, warm parallel sessions for every group of workers the
// policy may pick, and the records of the requests and the service's metrics. No HTTP here: the `serve` command
// (examples/hybridiff/serve_command.cpp) puts it behind an OpenAI-compatible HTTP API.

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "actors/hybridiff.hpp"

namespace hybridiff {

/// What a placement policy sees of the request at the head of the queue.
struct placement_view {
  int free_workers = 0;   ///< idle workers now
  int waiting = 0;        ///< requests waiting, this one included
  int running = 0;        ///< requests running now
  int total_workers = 0;  ///< the pool
  /// The recent demand: requests in the service (waiting and running) as arrivals saw them, averaged
  /// exponentially (weight 1/2 for the newest); 1 while requests come one at a time.
  double demand = 1;
  std::vector<int> sizes;  ///< the group sizes this request may run on, largest first (never empty)
  /// Measured: seconds per denoising step of earlier requests of this request's image size that ran alone (nothing
  /// else running beside them; not a group's first run), by group size, averaged exponentially (weight 1/4 for the
  /// newest). A group size not yet measured at this image size is absent.
  std::map<int, double> step_seconds;
};

/// Decides how many workers the request at the head of the queue gets: one of `view.sizes` (at most
/// `view.free_workers`: the service then takes a free group of that size, or the next smaller one), or 0 to wait
/// until workers finish. Called on the queue actor: it must not block.
class placement_policy {
 public:
  virtual ~placement_policy() = default;
  virtual std::string name() const = 0;
  virtual int workers_for(const placement_view& view) const = 0;
};

/// The built-in policies by name. "adaptive": the workers are shared among the requests of the recent demand, and
/// the idle ones among the waiting requests, so a service that gets one request at a time spreads each image over
/// every worker (lowest latency) and a loaded one runs requests side by side on smaller groups (highest
/// throughput). The measured step times refine this: a group size not yet measured at the request's image size is
/// tried once (the largest first); within the share, the smallest group within 5 % of the fastest runs it (workers
/// that share one device gain nothing from spreading an image); and a larger group that does over 5 % more steps
/// per worker-second than the share's (a split whose pipelined steps cost less than full ones) runs it, waiting
/// for its workers if need be. "all": every request on all workers (it waits for them). "one": every request on
/// one worker. Throws invalid_options for another name.
std::unique_ptr<placement_policy> make_placement_policy(const std::string& name);

struct service_options {
  /// The schedule of the group of all workers (mode, tau settings, CUDA graphs, ...); `workers` is the pool's
  /// size. Smaller groups run cfg on 2 workers (when the pool has 4) and none on 1.
  parallel_options parallel;
  std::size_t max_queue = 32;  ///< requests waiting beyond this many are refused (service_full)
  std::chrono::milliseconds request_timeout{std::chrono::minutes(10)};  ///< from submission to the last step
  int max_images = 8;                                                   ///< images per request (n)
};

enum class job_status { queued, running, succeeded, failed, cancelled };
std::string to_string(job_status status);

/// A snapshot of one request.
/// A LoRA a request runs with: its name (for the record) and the file and scale merged.
struct request_lora {
  std::string name;
  models::lora_spec spec;
};

struct job_record {
  std::string id;
  job_status status = job_status::queued;
  models::generation_request request;  ///< as submitted (image i uses seed + i)
  int images = 1;                      ///< n
  std::vector<request_lora> loras;     ///< merged into its group's replicas while it runs
  int images_done = 0;
  std::int64_t step = 0, steps = 0;  ///< progress of the image in work
  int workers = 0;                   ///< the placement decision (0 while queued)
  std::vector<int> worker_ids;       ///< the pool's workers it runs on (local ones first, then other ranks')
  std::string mode;                  ///< the group's parallel mode ("" while queued)
  std::vector<step_trace> trace;     ///< the last finished image's schedule trace
  std::optional<int> tau1, tau2;
  std::string error;                           ///< failed or cancelled: why
  bool workers_lost = false;                   ///< failed because a worker was lost (the service rebuilt the group)
  std::vector<std::vector<std::uint8_t>> png;  ///< succeeded: one PNG per image
  std::chrono::system_clock::time_point created;
  double queued_seconds = 0, run_seconds = 0;

  bool ended() const { return status != job_status::queued && status != job_status::running; }
};

/// The queue is full: try again later (HTTP 429 with Retry-After).
class service_full : public error {
 public:
  using error::error;
};
/// The service is draining (shutting down) and takes no new requests (HTTP 503).
class service_draining : public error {
 public:
  using error::error;
};

/// The service. Thread-safe: any thread may submit, look up, wait for and cancel requests.
class image_service {
 public:
  /// `replicas`: one pipeline per local worker of the pool (a worker uses its replica exclusively while it runs a
  /// request). With a `cluster` (rank 0 of a multi-process run, actors/cluster.hpp), the workers of the other ranks
  /// join the pool after the local ones; replica 0 then also encodes and decodes for the groups of remote workers,
  /// and a remote worker that is lost is never placed again. options.parallel.workers is the pool's size. Builds
  /// the warm sessions of every group; throws invalid_options when the schedule does not fit the pool.
  image_service(caf::actor_system& system, std::vector<std::shared_ptr<models::diffusion_pipeline>> replicas,
                service_options options, std::unique_ptr<placement_policy> policy,
                const actors::cluster_host* cluster = nullptr);
  ~image_service();
  image_service(const image_service&) = delete;
  image_service& operator=(const image_service&) = delete;

  /// Checks a request of `images` images and queues it; returns its id. Throws invalid_options naming what is
  /// wrong (prompt, size, steps, guidance, n), service_full or service_draining.
  /// `loras` are merged into the replicas of the workers it runs on, in place of the previous request's (the
  /// loaded weights restored exactly in between: models::diffusion_pipeline::use_loras), without reloading; a pool
  /// with workers in other processes refuses them (invalid_options naming loras).
  std::string submit(const models::generation_request& request, int images = 1, std::vector<request_lora> loras = {});
  /// The request's record; nullopt for an unknown id.
  std::optional<job_record> job(const std::string& id) const;
  /// Waits until the request has ended, at most `timeout`, and returns its record (nullopt: unknown id).
  std::optional<job_record> wait(const std::string& id, std::chrono::milliseconds timeout) const;
  /// Stops a queued request, or a running one at its next step boundary. False for an unknown or ended one.
  bool cancel(const std::string& id);
  /// Stops taking requests, cancels the queued ones and waits for the running ones to end. Idempotent.
  void drain();

  /// The metrics in Prometheus' text format: queue depth, requests by status, placements, image and step
  /// latency histograms, per-worker busy time.
  std::string metrics() const;
  int workers() const;
  const placement_policy& policy() const;
  /// The pool's lead pipeline (worker 0's replica): its class and defaults.
  const models::diffusion_pipeline& pipeline() const;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace hybridiff
