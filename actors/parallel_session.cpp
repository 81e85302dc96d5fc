// parallel_session: the workers and their supervisor kept across images; each image runs a driver on them.
#include <chrono>

#include <torch/torch.h>

#include "actors/cluster.hpp"
#include "actors/parallel_driver.hpp"
#include "actors/supervisor.hpp"
#include "actors/worker.hpp"
#include "models/errors.hpp"

namespace hybridiff {

namespace actors {
void session_state::assign(int w) {
  const auto& a = assignments[static_cast<std::size_t>(w)];
  self->request(worker(w), options.step_timeout, assign_atom::value, a.window, a.window_handed_on, a.branch,
                a.branch_handed_on, a.cuda_graphs)
      .receive([](bool) {},
               [&](caf::error& problem) {
                 throw error("worker " + std::to_string(w) + ": " + describe_error(system, problem));
               });
}
}  // namespace actors

namespace {
void check_worker_count(std::size_t local, std::size_t remote, const parallel_options& options) {
  if (local + remote != static_cast<std::size_t>(options.workers))
    throw error("parallel session: " + std::to_string(local) + " local replica(s) and " + std::to_string(remote) +
                " remote worker(s) for " + std::to_string(options.workers) + " workers");
}
}  // namespace

parallel_session::parallel_session(caf::actor_system& system,
                                   std::vector<std::shared_ptr<models::diffusion_pipeline>> replicas,
                                   const parallel_options& options, const actors::cluster_host* cluster) {
  if (replicas.empty()) throw error("parallel session: no local replica");
  std::vector<int> ranks;
  if (cluster)
    for (std::size_t r = 1; r <= cluster->workers().size(); ++r) ranks.push_back(static_cast<int>(r));
  check_worker_count(replicas.size(), ranks.size(), options);
  auto lead = replicas.front();
  state_ = std::make_unique<actors::session_state>(system, std::move(lead), std::move(replicas), options);
  start(cluster, ranks);
}

parallel_session::parallel_session(caf::actor_system& system, std::shared_ptr<models::diffusion_pipeline> lead,
                                   std::vector<std::shared_ptr<models::diffusion_pipeline>> local,
                                   const actors::cluster_host& cluster, const std::vector<int>& remote_ranks,
                                   const parallel_options& options) {
  if (!lead) throw error("parallel session: no lead replica");
  check_worker_count(local.size(), remote_ranks.size(), options);
  for (int rank : remote_ranks)
    if (rank < 1 || rank > static_cast<int>(cluster.workers().size()))
      throw error("parallel session: no rank " + std::to_string(rank) + " among the cluster's " +
                  std::to_string(cluster.workers().size()) + " remote worker(s)");
  state_ = std::make_unique<actors::session_state>(system, std::move(lead), std::move(local), options);
  state_->shared_remote_workers = !remote_ranks.empty();
  start(&cluster, remote_ranks);
}

void parallel_session::start(const actors::cluster_host* cluster, const std::vector<int>& remote_ranks) {
  auto& session = *state_;
  const auto& options = session.options;
  auto& system = session.system;
  validate(options);
  if (options.mode == parallel_mode::none && !session.replicas.empty()) {  // the sequential loop: no actors
    if (options.cuda_graphs) {
      if (!session.replicas.front()->placement().device.is_cuda())
        throw error("CUDA graphs need a CUDA device, not " + session.replicas.front()->placement().device.str());
      session.graphed = std::make_unique<runtime::graphed_denoiser>(*session.replicas.front());
    }
    return;
  }
  auto& lead = *session.lead;
  const bool cfg = options.mode == parallel_mode::cfg;
  const bool solo = options.mode == parallel_mode::none;  // one remote worker: full batched passes only
  const auto window = runtime::split_plan(lead, cfg || solo ? 2 : options.model_n, cfg || solo ? 1 : options.stride);
  const auto branch = runtime::split_plan(lead, 2, 1);
  session.n = window.n;
  session.output_worker = window.output_component();
  session.exchange_blocks =
      !(lead.family() == models::denoiser_family::transformer && options.conditioning == pp_conditioning::reference);
  auto names = [](const schedule::component& c) {
    return std::vector<std::string>(c.modules.begin(), c.modules.end());
  };
  auto set_of = [](const std::vector<std::string>& modules) {
    return std::set<std::string>(modules.begin(), modules.end());
  };
  for (std::size_t w = 0; w < session.replicas.size(); ++w)
    session.workers.push_back(actors::spawn_worker(
        system, std::make_shared<runtime::stage_worker>(session.replicas[w], static_cast<int>(w))));
  for (int rank : remote_ranks) session.workers.push_back(cluster->workers()[static_cast<std::size_t>(rank - 1)]);
  for (int w = 0; w < options.workers; ++w) {
    const int window_component = window.component_of(w), branch_component = w % 2;
    const bool split_branches = options.branch_stages == 2;
    session.window_inputs.push_back(set_of(window.inputs_of(window_component)));
    session.branch_inputs.push_back(split_branches ? set_of(branch.inputs_of(branch_component))
                                                   : std::set<std::string>{});
    session.assignments.push_back(
        {names(window.components[window_component]), window.read_by_others(window_component),
         split_branches ? names(branch.components[branch_component]) : std::vector<std::string>{},
         split_branches ? branch.read_by_others(branch_component) : std::vector<std::string>{}, options.cuda_graphs});
    session.assign(w);
  }
  session.supervisor = actors::spawn_supervisor(system, session.workers);
}

parallel_session::~parallel_session() = default;

const parallel_options& parallel_session::options() const { return state_->options; }

parallel_result parallel_session::generate(const models::generation_request& request,
                                           const models::step_observer& observe) {
  torch::NoGradGuard no_grad;
  auto& session = *state_;
  const auto& options = session.options;
  auto& lead = *session.lead;
  const auto plan = lead.plan(request);
  validate(options, static_cast<int>(plan.steps));
  if (options.mode == parallel_mode::none && !session.replicas.empty()) {
    // One worker, CFG batched: the sequential reference loop, traced like the others.
    parallel_result result;
    auto last = std::chrono::steady_clock::now();
    result.latents = models::generate_latents(
        lead, request,
        [&](std::int64_t i, std::int64_t steps, const at::Tensor& x) {
          auto now = std::chrono::steady_clock::now();
          // The one worker is the driver: all of the step is its compute, none of it messaging.
          step_trace row;
          row.step = static_cast<int>(i);
          row.mode = "cfg";
          row.step_ms = std::chrono::duration<double, std::milli>(now - last).count();
          row.worker_ms = {row.step_ms};
          row.worker_overhead_ms = {0.0};
          result.trace.push_back(std::move(row));
          last = now;
          if (observe) observe(i, steps, x);
        },
        session.graphed ? models::denoise_function(
                              [&](const at::Tensor& x, const at::Tensor& t, const models::branch_conditioning& c) {
                                return session.graphed->predict(x, t, c);
                              })
                        : models::denoise_function());
    return result;
  }
  if (!plan.classifier_free && options.mode != parallel_mode::none)
    throw error("--parallel " + to_string(options.mode) + " splits classifier-free guidance: it needs --guidance > 1");
  if (session.lost)
    throw error("worker " + std::to_string(*session.lost) +
                " was lost during an earlier image of this session; start a new session");
  return actors::drive_image(session, request, plan, observe);
}

parallel_result generate_parallel(caf::actor_system& system,
                                  const std::vector<std::shared_ptr<models::diffusion_pipeline>>& replicas,
                                  const models::generation_request& request, const parallel_options& options,
                                  const models::step_observer& observe) {
  if (replicas.size() != static_cast<std::size_t>(options.workers))
    throw error("generate_parallel: " + std::to_string(replicas.size()) + " replicas for " +
                std::to_string(options.workers) + " workers");
  parallel_session session(system, replicas, options);
  return session.generate(request, observe);
}

}  // namespace hybridiff
