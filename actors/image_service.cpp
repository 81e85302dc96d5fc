// image_service: the request queue (a CAF actor), the runners that generate on warm sessions, the records and the
// metrics.
#include "actors/image_service.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <iomanip>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include <spdlog/spdlog.h>
#include <torch/torch.h>
#include <caf/all.hpp>

#include "actors/cluster.hpp"

namespace hybridiff {
namespace {

using steady = std::chrono::steady_clock;

double seconds_since(steady::time_point start) { return std::chrono::duration<double>(steady::now() - start).count(); }

// A request as the service keeps it: the record readers copy, the cancel flag the runner checks at every step.
struct job_state {
  mutable std::mutex mutex;
  mutable std::condition_variable changed;
  job_record record;
  std::atomic<bool> cancel_requested{false};
  std::vector<int> sizes;   // the group sizes it may run on, largest first
  std::int64_t pixels = 0;  // height × width: the key of its step-time measurements
  steady::time_point submitted, deadline;
};
using job_ptr = std::shared_ptr<job_state>;

struct queue_state {
  std::deque<job_ptr> waiting;
  std::vector<bool> busy;
  std::vector<bool> lost;  // workers of other processes that are gone: never placed again
  int running = 0;         // requests running
  double demand = 1.0;     // placement_view::demand
  // Seconds per step of requests that ran alone, by (pixels, group size): placement_view::step_seconds.
  std::map<std::pair<std::int64_t, int>, double> step_seconds;
  std::map<int, bool> alone;  // running groups: whether nothing else has run beside them so far
  std::map<int, int> runs;    // measurable runs so far, by group
  bool accepting = true;
  static inline const char* name = "hybridiff.service_queue";
};

// Thrown by a runner's step observer to leave a generation at a step boundary.
struct job_cancelled {};
struct job_timed_out {};

// A Prometheus histogram (cumulative buckets, sum, count).
struct histogram {
  std::vector<double> bounds;
  std::vector<std::uint64_t> counts;  // per bound, not cumulative; the last one is +Inf
  double sum = 0;
  std::uint64_t count = 0;

  explicit histogram(std::vector<double> upper_bounds)
      : bounds(std::move(upper_bounds)), counts(bounds.size() + 1, 0) {}
  void observe(double value) {
    const auto bucket = std::lower_bound(bounds.begin(), bounds.end(), value) - bounds.begin();
    ++counts[static_cast<std::size_t>(bucket)];
    sum += value;
    ++count;
  }
  void write(std::ostream& out, const std::string& name, const std::string& help) const {
    out << "# HELP " << name << " " << help << "\n# TYPE " << name << " histogram\n";
    std::uint64_t cumulative = 0;
    for (std::size_t b = 0; b < bounds.size(); ++b) {
      cumulative += counts[b];
      out << name << "_bucket{le=\"" << bounds[b] << "\"} " << cumulative << "\n";
    }
    out << name << "_bucket{le=\"+Inf\"} " << count << "\n" << name << "_sum " << sum << "\n";
    out << name << "_count " << count << "\n";
  }
};

using submit_atom = caf::atom_constant<caf::atom("submit")>;  // queue a job: accepted (0), full (1), draining (2)
// A group's run ended: its workers are free; its seconds per step (NaN when it did not succeed) at its pixels.
using finished_atom = caf::atom_constant<caf::atom("finished")>;
using dispatch_atom = caf::atom_constant<caf::atom("dispatch")>;  // look at the queue again (a cancel, a timeout)
using drain_atom = caf::atom_constant<caf::atom("drain")>;        // take no more jobs, cancel the queued ones

}  // namespace
}  // namespace hybridiff

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(hybridiff::job_ptr)

namespace hybridiff {

std::string to_string(job_status status) {
  switch (status) {
    case job_status::queued: return "queued";
    case job_status::running: return "running";
    case job_status::succeeded: return "succeeded";
    case job_status::failed: return "failed";
    case job_status::cancelled: return "cancelled";
  }
  return "?";
}

namespace {

class adaptive_policy : public placement_policy {
 public:
  std::string name() const override { return "adaptive"; }
  // The pool shared among the recent demand, and the idle workers among the waiting requests: alone, a request
  // may take them all. The demand remembers concurrency: under load, the request that finds the service idle for a
  // moment still takes a share, instead of the whole pool that the next arrival would then wait for. Within the
  // share the measured step times decide, and a larger group that does more steps per worker-second than the share
  // (a split whose pipelined steps cost less than full ones) is worth waiting for.
  int workers_for(const placement_view& view) const override {
    if (view.free_workers == 0) return 0;
    const int by_demand =
        static_cast<int>(std::lround(static_cast<double>(view.total_workers) / std::max(1.0, view.demand)));
    const int share = std::max(1, std::min(view.free_workers / std::max(1, view.waiting), by_demand));
    std::vector<int> candidates;  // largest first
    for (int size : view.sizes)
      if (size <= share) candidates.push_back(size);
    if (candidates.empty()) return 0;
    // A size without a measurement runs once, so that the measurements can decide between the sizes.
    const auto measured = [&](int size) { return view.step_seconds.count(size) > 0; };
    for (int size : candidates)
      if (!measured(size)) return size;
    const auto seconds = [&](int size) { return view.step_seconds.at(size); };
    double fastest = seconds(candidates.front());
    for (int size : candidates) fastest = std::min(fastest, seconds(size));
    int choice = candidates.front();
    for (auto size = candidates.rbegin(); size != candidates.rend(); ++size)  // the smallest within 5 %
      if (seconds(*size) <= 1.05 * fastest) {
        choice = *size;
        break;
      }
    for (int size : view.sizes) {
      if (size <= choice || !measured(size)) continue;
      if (size * seconds(size) < 0.95 * choice * seconds(choice))
        return size <= view.free_workers ? size : (view.running > 0 ? 0 : choice);
    }
    return choice;
  }
};

class all_workers_policy : public placement_policy {
 public:
  std::string name() const override { return "all"; }
  int workers_for(const placement_view& view) const override {
    const int largest = view.sizes.front();
    return largest <= view.free_workers ? largest : 0;
  }
};

class one_worker_policy : public placement_policy {
 public:
  std::string name() const override { return "one"; }
  int workers_for(const placement_view& view) const override { return view.free_workers > 0 ? 1 : 0; }
};

}  // namespace

std::unique_ptr<placement_policy> make_placement_policy(const std::string& name) {
  if (name == "adaptive") return std::make_unique<adaptive_policy>();
  if (name == "all") return std::make_unique<all_workers_policy>();
  if (name == "one") return std::make_unique<one_worker_policy>();
  throw invalid_options("--placement '" + name + "': use adaptive, all or one");
}

struct image_service::impl {
  // Workers that run one request together, on a session kept warm across requests.
  struct group {
    std::vector<int> workers;
    parallel_options options;
    std::unique_ptr<parallel_session> session;
  };
  struct task {
    job_ptr job;
    int group;
  };

  caf::actor_system& system;
  std::vector<std::shared_ptr<models::diffusion_pipeline>> replicas;  // the local workers' (workers 0 .. size − 1)
  const actors::cluster_host* cluster;  // the workers of other processes follow the local ones (rank order)
  int remote_workers = 0;
  service_options options;
  std::unique_ptr<placement_policy> policy;
  std::vector<group> groups;
  caf::actor queue;

  // The records, by id; ended ones beyond `kept_records` are forgotten, oldest first.
  mutable std::mutex jobs_mutex;
  std::map<std::string, job_ptr> jobs;
  std::deque<std::string> ended_ids;
  static constexpr std::size_t kept_records = 1024;
  std::uint64_t next_id = 0;

  // The runners: one thread per worker, as at most that many groups run at once.
  std::mutex tasks_mutex;
  std::condition_variable tasks_changed;
  std::deque<task> tasks;
  int running = 0;
  bool stopping = false;
  std::vector<std::thread> runners;

  std::atomic<std::size_t> depth{0};
  std::atomic<bool> draining{false};

  mutable std::mutex metrics_mutex;
  std::map<std::string, std::uint64_t> requests_by_status;
  std::map<std::pair<int, std::string>, std::uint64_t> placements;  // (workers, mode)
  histogram image_seconds{{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300}};
  histogram step_seconds{{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}};
  std::vector<double> busy_seconds;
  std::atomic<int> workers_lost{0};

  impl(caf::actor_system& actor_system, std::vector<std::shared_ptr<models::diffusion_pipeline>> pool,
       const actors::cluster_host* remote, service_options settings, std::unique_ptr<placement_policy> placement)
      : system(actor_system),
        replicas(std::move(pool)),
        cluster(remote),
        remote_workers(remote ? static_cast<int>(remote->workers().size()) : 0),
        options(std::move(settings)),
        policy(std::move(placement)) {
    const int pool_size = options.parallel.workers;
    if (replicas.empty() || static_cast<int>(replicas.size()) + remote_workers != pool_size)
      throw invalid_options("image service: " + std::to_string(replicas.size()) + " local replica(s) and " +
                            std::to_string(remote_workers) + " remote worker(s) for " + std::to_string(pool_size) +
                            " workers");
    validate(options.parallel);
    if (!policy) throw invalid_options("image service: no placement policy");
    busy_seconds.assign(static_cast<std::size_t>(pool_size), 0.0);
    auto add_group = [&](std::vector<int> workers, parallel_options group_options) {
      auto session = session_of(workers, group_options);
      groups.push_back({std::move(workers), std::move(group_options), std::move(session)});
    };
    std::vector<int> everyone(static_cast<std::size_t>(pool_size));
    for (int w = 0; w < pool_size; ++w) everyone[static_cast<std::size_t>(w)] = w;
    if (pool_size > 1) add_group(everyone, options.parallel);
    if (pool_size == 4) {  // two CFG pairs
      auto pair = options.parallel;
      pair.mode = parallel_mode::cfg;
      apply_worker_defaults(pair, 2, std::nullopt, 1);
      add_group({0, 1}, pair);
      add_group({2, 3}, pair);
    }
    auto single = options.parallel;
    single.mode = parallel_mode::none;
    apply_worker_defaults(single, 1, std::nullopt, 1);
    single.stride = 1;
    for (int w = 0; w < pool_size; ++w) add_group({w}, single);
  }

  bool is_local(int worker) const { return worker < static_cast<int>(replicas.size()); }
  // The replica that encodes a group's prompts and decodes its images: its first worker's, or worker 0's when that
  // worker is remote (rank 0's replica serves every group of remote workers).
  const std::shared_ptr<models::diffusion_pipeline>& lead_of(const std::vector<int>& workers) const {
    return replicas[is_local(workers.front()) ? static_cast<std::size_t>(workers.front()) : 0];
  }

  // A session over `workers`: local replicas, then remote workers (worker index − local count + 1 is their rank).
  std::unique_ptr<parallel_session> session_of(const std::vector<int>& workers, const parallel_options& group_options) {
    std::vector<std::shared_ptr<models::diffusion_pipeline>> local;
    std::vector<int> ranks;
    for (int w : workers)
      if (is_local(w))
        local.push_back(replicas[static_cast<std::size_t>(w)]);
      else
        ranks.push_back(w - static_cast<int>(replicas.size()) + 1);
    if (!cluster) return std::make_unique<parallel_session>(system, local, group_options);
    return std::make_unique<parallel_session>(system, lead_of(workers), std::move(local), *cluster, ranks,
                                              group_options);
  }

  // -- the queue actor's work ---------------------------------------------------------------------------------

  // A free group of the largest allowed size no larger than `size`, or -1. (Lost workers stay busy.)
  int free_group(const std::vector<bool>& busy, int size, const std::vector<int>& allowed) const {
    for (int candidate : allowed) {
      if (candidate > size) continue;
      for (std::size_t g = 0; g < groups.size(); ++g) {
        const auto& workers = groups[g].workers;
        if (static_cast<int>(workers.size()) != candidate) continue;
        if (std::none_of(workers.begin(), workers.end(), [&](int w) { return busy[static_cast<std::size_t>(w)]; }))
          return static_cast<int>(g);
      }
    }
    return -1;
  }
  // The sizes of `allowed` of which a group has no lost worker (largest first, as `allowed`): a request can still
  // run on them once workers are free, and a policy waiting for a lost worker would wait forever.
  std::vector<int> runnable_sizes(const std::vector<bool>& lost, const std::vector<int>& allowed) const {
    std::vector<int> sizes;
    for (int size : allowed)
      if (std::any_of(groups.begin(), groups.end(), [&](const group& candidate) {
            return static_cast<int>(candidate.workers.size()) == size &&
                   std::none_of(candidate.workers.begin(), candidate.workers.end(),
                                [&](int w) { return lost[static_cast<std::size_t>(w)]; });
          }))
        sizes.push_back(size);
    return sizes;
  }

  void dispatch(queue_state& state) {
    auto& waiting = state.waiting;
    auto& busy = state.busy;
    // Cancelled and timed-out requests leave the queue wherever they stand.
    for (auto it = waiting.begin(); it != waiting.end();) {
      const auto& job = *it;
      if (job->cancel_requested) {
        end_job(job, job_status::cancelled, "cancelled while queued");
      } else if (steady::now() > job->deadline) {
        end_job(job, job_status::failed, "timed out while queued (request timeout " + timeout_text() + ")");
      } else if (runnable_sizes(state.lost, job->sizes).empty()) {
        {
          std::lock_guard lock(job->mutex);
          job->record.workers_lost = true;
        }
        end_job(job, job_status::failed, "every group of workers that could run it lost a worker");
      } else {
        ++it;
        continue;
      }
      it = waiting.erase(it);
    }
    while (!waiting.empty()) {
      const auto& job = waiting.front();
      placement_view view;
      view.free_workers = static_cast<int>(std::count(busy.begin(), busy.end(), false));
      view.waiting = static_cast<int>(waiting.size());
      view.running = state.running;
      view.demand = state.demand;
      view.total_workers = static_cast<int>(std::count(state.lost.begin(), state.lost.end(), false));
      view.sizes = runnable_sizes(state.lost, job->sizes);
      for (const auto& [key, seconds] : state.step_seconds)
        if (key.first == job->pixels) view.step_seconds[key.second] = seconds;
      const int size = policy->workers_for(view);
      if (size <= 0) break;
      const int g = free_group(busy, size, view.sizes);
      if (g < 0) break;
      for (int w : groups[static_cast<std::size_t>(g)].workers) busy[static_cast<std::size_t>(w)] = true;
      for (auto& [other, alone] : state.alone) alone = false;
      state.alone[g] = state.running == 0;
      {
        std::lock_guard lock(tasks_mutex);
        tasks.push_back({job, g});
        ++running;
      }
      tasks_changed.notify_one();
      ++state.running;
      waiting.pop_front();
    }
    depth = waiting.size();
  }

  std::string timeout_text() const { return std::to_string(options.request_timeout.count() / 1000.0) + " s"; }

  // -- records ------------------------------------------------------------------------------------------------

  void end_job(const job_ptr& job, job_status status, const std::string& why) {
    {  // counted before anyone can see the job ended: a client that got its answer finds it in the metrics
      std::lock_guard lock(metrics_mutex);
      ++requests_by_status[to_string(status)];
    }
    {
      std::lock_guard lock(job->mutex);
      auto& record = job->record;
      record.status = status;
      record.error = why;
      if (record.workers == 0)
        record.queued_seconds = seconds_since(job->submitted);
      else
        record.run_seconds = seconds_since(job->submitted) - record.queued_seconds;
    }
    job->changed.notify_all();
    std::lock_guard lock(jobs_mutex);
    ended_ids.push_back(job->record.id);
    while (ended_ids.size() > kept_records) {
      jobs.erase(ended_ids.front());
      ended_ids.pop_front();
    }
  }

  // -- the runners --------------------------------------------------------------------------------------------

  void runner_loop() {
    for (;;) {
      task next;
      {
        std::unique_lock lock(tasks_mutex);
        tasks_changed.wait(lock, [&] { return stopping || !tasks.empty(); });
        if (tasks.empty()) return;  // stopping, nothing left
        next = std::move(tasks.front());
        tasks.pop_front();
      }
      const double seconds_per_step = run(next);
      {
        std::lock_guard lock(tasks_mutex);
        --running;
      }
      tasks_changed.notify_all();
      caf::anon_send(queue, finished_atom::value, static_cast<std::int32_t>(next.group), seconds_per_step,
                     next.job->pixels);
    }
  }

  // Runs a request; returns its seconds per denoising step (NaN unless it succeeded).
  double run(const task& work) {
    auto& group = groups[static_cast<std::size_t>(work.group)];
    const auto& job = work.job;
    models::generation_request request;
    int images = 1;
    std::vector<models::lora_spec> loras;
    {
      std::lock_guard lock(job->mutex);
      auto& record = job->record;
      record.status = job_status::running;
      record.workers = static_cast<int>(group.workers.size());
      record.worker_ids = group.workers;
      record.mode = to_string(group.options.mode);
      record.queued_seconds = seconds_since(job->submitted);
      request = record.request;
      images = record.images;
      for (const auto& lora : record.loras) loras.push_back(lora.spec);
    }
    job->changed.notify_all();
    {
      std::lock_guard lock(metrics_mutex);
      ++placements[{static_cast<int>(group.workers.size()), to_string(group.options.mode)}];
    }
    bool rebuild = false;
    double step_total = 0;
    std::size_t step_count = 0;
    double seconds_per_step = std::nan("");
    try {
      // The group's workers use their replicas alone while this runs: swapping their LoRAs touches no other request.
      for (int w : group.workers)
        if (is_local(w)) replicas[static_cast<std::size_t>(w)]->use_loras(loras);
      for (int image = 0; image < images; ++image) {
        auto one = request;
        one.seed = request.seed + static_cast<std::uint64_t>(image);
        const auto started = steady::now();
        auto last = started;
        std::vector<double> step_wall;
        auto observe = [&](std::int64_t index, std::int64_t steps, const at::Tensor&) {
          const auto now = steady::now();
          step_wall.push_back(std::chrono::duration<double>(now - last).count());
          last = now;
          {
            std::lock_guard lock(job->mutex);
            job->record.step = index + 1;
            job->record.steps = steps;
          }
          if (job->cancel_requested) throw job_cancelled{};
          if (now > job->deadline) throw job_timed_out{};
        };
        auto result = group.session->generate(one, observe);
        const auto png = models::encode_png(lead_of(group.workers)->decode(result.latents));
        const bool degraded = std::any_of(result.trace.begin(), result.trace.end(),
                                          [](const step_trace& row) { return row.mode == "cfg-degraded"; });
        rebuild = rebuild || degraded;
        {
          std::lock_guard lock(metrics_mutex);
          image_seconds.observe(seconds_since(started));
          for (double seconds : step_wall) {
            step_seconds.observe(seconds);
            step_total += seconds;
          }
          step_count += step_wall.size();
          for (const auto& row : result.trace)
            for (std::size_t w = 0; w < row.worker_ms.size() && w < group.workers.size(); ++w)
              busy_seconds[static_cast<std::size_t>(group.workers[w])] += row.worker_ms[w] / 1000.0;
        }
        std::lock_guard lock(job->mutex);
        auto& record = job->record;
        record.png.push_back(png);
        record.images_done = image + 1;
        record.trace = std::move(result.trace);
        record.tau1 = result.tau1;
        record.tau2 = result.tau2;
      }
      if (step_count > 0 && !rebuild) seconds_per_step = step_total / static_cast<double>(step_count);
      end_job(job, job_status::succeeded, "");
    } catch (const job_cancelled&) {
      end_job(job, job_status::cancelled, "cancelled at a step boundary");
    } catch (const job_timed_out&) {
      end_job(job, job_status::failed, "timed out (request timeout " + timeout_text() + ")");
    } catch (const std::exception& failure) {
      const std::string what = failure.what();
      const bool lost = what.find("was lost") != std::string::npos;
      rebuild = rebuild || lost;
      {
        std::lock_guard lock(job->mutex);
        job->record.workers_lost = lost;
      }
      spdlog::error("request {}: {}", job->record.id, what);
      end_job(job, job_status::failed, what);
    }
    // A session that lost a worker serves no further image: a fresh one over the same replicas takes its place.
    if (rebuild) {
      try {
        group.session = session_of(group.workers, group.options);
        spdlog::warn("workers {}: a worker was lost; their session was started anew", describe(group.workers));
      } catch (const std::exception& failure) {
        spdlog::error("workers {}: cannot start their session anew: {}", describe(group.workers), failure.what());
      }
    }
    return seconds_per_step;
  }

  // The request queue: admission (bounded, refused while draining), placement, and the free workers. Runs no model:
  // it hands work to the runners and hears back when a group is free again.
  static caf::behavior queue_behavior(caf::stateful_actor<queue_state>* self, impl* service, std::size_t limit) {
    const auto pool = static_cast<std::size_t>(service->options.parallel.workers);
    self->state.busy.assign(pool, false);
    self->state.lost.assign(pool, false);
    // A worker of another process that is gone (its process died, its connection went silent) is never placed
    // again: the service goes on with the others.
    if (service->cluster) {
      for (const auto& proxy : service->cluster->workers()) self->monitor(proxy);
      self->set_down_handler([=](caf::down_msg& down) {
        const auto& proxies = service->cluster->workers();
        for (std::size_t r = 0; r < proxies.size(); ++r) {
          if (proxies[r].address() != down.source) continue;
          const auto w = service->replicas.size() + r;
          if (self->state.lost[w]) return;
          self->state.lost[w] = self->state.busy[w] = true;
          const int left = static_cast<int>(std::count(self->state.lost.begin(), self->state.lost.end(), false));
          ++service->workers_lost;
          spdlog::error("worker {} (rank {}) was lost ({}); serving on with {} worker(s)", w, r + 1,
                        self->system().render(down.reason), left);
        }
        service->dispatch(self->state);
      });
    }
    return {
        [=](submit_atom, const job_ptr& job) -> std::int32_t {
          auto& state = self->state;
          if (!state.accepting) return 2;
          if (state.waiting.size() >= limit) return 1;
          state.waiting.push_back(job);
          const double in_service = static_cast<double>(state.waiting.size()) + state.running;
          state.demand = 0.5 * in_service + 0.5 * state.demand;
          service->dispatch(state);
          return 0;
        },
        [=](finished_atom, std::int32_t group, double seconds_per_step, std::int64_t pixels) {
          auto& state = self->state;
          const auto& workers = service->groups[static_cast<std::size_t>(group)].workers;
          for (int w : workers) state.busy[static_cast<std::size_t>(w)] = state.lost[static_cast<std::size_t>(w)];
          // Only a run that had the pool to itself measures its group size: beside others it shares the devices.
          // Nor does a group's first run, which pays first-use costs (allocations, CUDA graph captures).
          if (state.alone[group] && std::isfinite(seconds_per_step) && ++state.runs[group] > 1) {
            const std::pair<std::int64_t, int> key{pixels, static_cast<int>(workers.size())};
            auto known = state.step_seconds.find(key);
            if (known == state.step_seconds.end())
              state.step_seconds.emplace(key, seconds_per_step);
            else
              known->second = 0.25 * seconds_per_step + 0.75 * known->second;
          }
          state.alone.erase(group);
          --state.running;
          service->dispatch(self->state);
        },
        [=](dispatch_atom) { service->dispatch(self->state); },
        [=](drain_atom) -> std::int32_t {
          auto& state = self->state;
          state.accepting = false;
          const auto cancelled = static_cast<std::int32_t>(state.waiting.size());
          for (const auto& job : state.waiting)
            service->end_job(job, job_status::cancelled, "the service is shutting down");
          state.waiting.clear();
          service->depth = 0;
          return cancelled;
        },
    };
  }

  static std::string describe(const std::vector<int>& workers) {
    std::string text;
    for (int w : workers) text += (text.empty() ? "" : ",") + std::to_string(w);
    return text;
  }
};

image_service::image_service(caf::actor_system& system,
                             std::vector<std::shared_ptr<models::diffusion_pipeline>> replicas, service_options options,
                             std::unique_ptr<placement_policy> policy, const actors::cluster_host* cluster)
    : impl_(std::make_unique<impl>(system, std::move(replicas), cluster, std::move(options), std::move(policy))) {
  auto& self = *impl_;
  self.queue = system.spawn(impl::queue_behavior, &self, self.options.max_queue);
  for (int w = 0; w < self.options.parallel.workers; ++w) self.runners.emplace_back([&self] { self.runner_loop(); });
}

image_service::~image_service() {
  drain();
  {
    std::lock_guard lock(impl_->tasks_mutex);
    impl_->stopping = true;
  }
  impl_->tasks_changed.notify_all();
  for (auto& runner : impl_->runners) runner.join();
  caf::anon_send_exit(impl_->queue, caf::exit_reason::user_shutdown);
}

std::string image_service::submit(const models::generation_request& request, int images,
                                  std::vector<request_lora> loras) {
  auto& self = *impl_;
  if (self.draining) throw service_draining("the service is shutting down and takes no new requests");
  if (!loras.empty() && self.remote_workers > 0)
    throw invalid_options("per-request LoRAs are not supported by a pool with workers in other processes", "loras");
  if (images < 1 || images > self.options.max_images)
    throw invalid_options(
        "n " + std::to_string(images) + " is outside [1, " + std::to_string(self.options.max_images) + "]", "n");
  const auto& lead = *self.replicas.front();
  try {
    lead.check_prompt(request);
  } catch (const error& bad) {
    throw invalid_options(bad.what(), "prompt");
  }
  models::generation_plan plan;
  try {
    plan = lead.plan(request);
  } catch (const error& bad) {
    // The plan names the flag it rejects (--steps, --height, --width); a request names the field.
    const std::string what = bad.what();
    throw invalid_options(what, what.rfind("--steps", 0) == 0 ? "steps" : "size");
  }
  auto job = std::make_shared<job_state>();
  // The group sizes whose schedule can run this request, largest first: a split of classifier-free guidance needs
  // guidance > 1, and a hybrid window must fit the step count.
  std::string refusal;
  for (const auto& group : self.groups) {
    const int size = static_cast<int>(group.workers.size());
    if (std::find(job->sizes.begin(), job->sizes.end(), size) != job->sizes.end()) continue;
    if (size > 1 && !plan.classifier_free) continue;
    try {
      validate(group.options, static_cast<int>(plan.steps));
      job->sizes.push_back(size);
    } catch (const invalid_options& bad) {
      if (refusal.empty()) refusal = bad.what();
    }
  }
  if (job->sizes.empty()) throw invalid_options(refusal, "steps");
  std::sort(job->sizes.rbegin(), job->sizes.rend());
  job->pixels = plan.height * plan.width;
  job->submitted = steady::now();
  job->deadline = job->submitted + self.options.request_timeout;
  auto& record = job->record;
  record.request = request;
  record.images = images;
  record.loras = std::move(loras);
  record.steps = plan.steps;
  record.created = std::chrono::system_clock::now();
  {
    std::lock_guard lock(self.jobs_mutex);
    std::ostringstream id;
    id << "img-" << std::hex << std::setw(8) << std::setfill('0') << ++self.next_id;
    record.id = id.str();
    self.jobs[record.id] = job;
  }
  caf::scoped_actor caller{self.system};
  std::int32_t answer = 2;
  caller->request(self.queue, std::chrono::seconds(30), submit_atom::value, job)
      .receive([&](std::int32_t code) { answer = code; },
               [&](caf::error& problem) {
                 throw error("image service: the queue did not answer: " + self.system.render(problem));
               });
  if (answer != 0) {
    {
      std::lock_guard lock(self.jobs_mutex);
      self.jobs.erase(record.id);
    }
    std::lock_guard lock(self.metrics_mutex);
    ++self.requests_by_status["rejected"];
    if (answer == 1)
      throw service_full("the queue is full (" + std::to_string(self.options.max_queue) + " requests waiting)");
    throw service_draining("the service is shutting down and takes no new requests");
  }
  return record.id;
}

std::optional<job_record> image_service::job(const std::string& id) const {
  job_ptr job;
  {
    std::lock_guard lock(impl_->jobs_mutex);
    auto found = impl_->jobs.find(id);
    if (found == impl_->jobs.end()) return std::nullopt;
    job = found->second;
  }
  std::lock_guard lock(job->mutex);
  return job->record;
}

std::optional<job_record> image_service::wait(const std::string& id, std::chrono::milliseconds timeout) const {
  job_ptr job;
  {
    std::lock_guard lock(impl_->jobs_mutex);
    auto found = impl_->jobs.find(id);
    if (found == impl_->jobs.end()) return std::nullopt;
    job = found->second;
  }
  std::unique_lock lock(job->mutex);
  job->changed.wait_for(lock, timeout, [&] { return job->record.ended(); });
  return job->record;
}

bool image_service::cancel(const std::string& id) {
  job_ptr job;
  {
    std::lock_guard lock(impl_->jobs_mutex);
    auto found = impl_->jobs.find(id);
    if (found == impl_->jobs.end()) return false;
    job = found->second;
  }
  {
    std::lock_guard lock(job->mutex);
    if (job->record.ended()) return false;
  }
  job->cancel_requested = true;
  caf::anon_send(impl_->queue, dispatch_atom::value);  // a queued request leaves the queue now
  return true;
}

void image_service::drain() {
  auto& self = *impl_;
  if (self.draining.exchange(true)) return;
  caf::scoped_actor caller{self.system};
  caller->request(self.queue, std::chrono::seconds(30), drain_atom::value)
      .receive(
          [](std::int32_t cancelled) {
            if (cancelled > 0) spdlog::info("drain: {} queued request(s) cancelled", cancelled);
          },
          [&](caf::error& problem) {
            spdlog::error("drain: the queue did not answer: {}", self.system.render(problem));
          });
  std::unique_lock lock(self.tasks_mutex);
  self.tasks_changed.wait(lock, [&] { return self.running == 0; });
}

std::string image_service::metrics() const {
  const auto& self = *impl_;
  std::ostringstream out;
  out << "# HELP hybridiff_workers Workers in the pool.\n# TYPE hybridiff_workers gauge\nhybridiff_workers "
      << self.options.parallel.workers << "\n";
  out << "# HELP hybridiff_workers_lost Workers of other processes lost while serving (never placed again).\n"
         "# TYPE hybridiff_workers_lost gauge\nhybridiff_workers_lost "
      << self.workers_lost.load() << "\n";
  out << "# HELP hybridiff_queue_depth Requests waiting for workers.\n# TYPE hybridiff_queue_depth gauge\n"
      << "hybridiff_queue_depth " << self.depth.load() << "\n";
  out << "# HELP hybridiff_placement_policy The placement policy.\n# TYPE hybridiff_placement_policy gauge\n"
      << "hybridiff_placement_policy{policy=\"" << self.policy->name() << "\"} 1\n";
  std::lock_guard lock(self.metrics_mutex);
  out << "# HELP hybridiff_requests_total Requests by outcome (rejected: refused at submission, queue full or "
         "draining).\n# TYPE hybridiff_requests_total counter\n";
  for (const char* status : {"succeeded", "failed", "cancelled", "rejected"}) {
    auto found = self.requests_by_status.find(status);
    out << "hybridiff_requests_total{status=\"" << status << "\"} "
        << (found == self.requests_by_status.end() ? 0 : found->second) << "\n";
  }
  out << "# HELP hybridiff_placements_total Requests started, by the workers the placement policy gave them and "
         "their group's mode.\n# TYPE hybridiff_placements_total counter\n";
  for (const auto& [key, count] : self.placements)
    out << "hybridiff_placements_total{workers=\"" << key.first << "\",mode=\"" << key.second << "\"} " << count
        << "\n";
  self.image_seconds.write(out, "hybridiff_image_seconds", "Time to generate one image (denoising and decoding).");
  self.step_seconds.write(out, "hybridiff_step_seconds", "Wall time of one denoising step.");
  out << "# HELP hybridiff_worker_busy_seconds_total Compute time of each worker.\n"
         "# TYPE hybridiff_worker_busy_seconds_total counter\n";
  for (std::size_t w = 0; w < self.busy_seconds.size(); ++w)
    out << "hybridiff_worker_busy_seconds_total{worker=\"" << w << "\"} " << self.busy_seconds[w] << "\n";
  return out.str();
}

int image_service::workers() const { return impl_->options.parallel.workers; }
const placement_policy& image_service::policy() const { return *impl_->policy; }
const models::diffusion_pipeline& image_service::pipeline() const { return *impl_->replicas.front(); }

}  // namespace hybridiff
