#include "actors/cluster.hpp"

#include <algorithm>
#include <atomic>
#include <csignal>
#include <functional>
#include <future>
#include <map>
#include <set>
#include <thread>

#include <caf/io/all.hpp>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "actors/messages.hpp"
#include "actors/worker.hpp"
#include "models/errors.hpp"
#include "runtime/stage_worker.hpp"

namespace hybridiff::actors {

using runtime::tensor_meta;

void configure_cluster(caf::actor_system_config& config, const cluster_options& options) {
  // One late heartbeat must not lose a peer: the timeout spans at least two intervals.
  if (options.heartbeat_interval.count() <= 0 || options.connection_timeout < 2 * options.heartbeat_interval)
    throw error("the connection timeout (" + std::to_string(options.connection_timeout.count()) +
                " ms) must be at least twice the heartbeat interval (" +
                std::to_string(options.heartbeat_interval.count()) + " ms), which must be positive");
  config.load<caf::io::middleman>();
  // A peer that stops answering without closing its connection (a network partition, a frozen host) is dropped
  // after connection_timeout without traffic — heartbeats keep healthy idle connections busy — and reported as
  // lost like a peer whose process died, instead of only when a request times out (minutes).
  config.set("middleman.heartbeat-interval", caf::timespan{options.heartbeat_interval});
  config.set("middleman.connection-timeout", caf::timespan{options.connection_timeout});
  config.add_message_type<tensor_parcel>("hybridiff::tensor_parcel");
}

void debug_fault::trigger_at(int count, const std::string& where) const {
  if (after <= 0 || count < after) return;
  spdlog::warn("--debug-{}-after {}: {} this process at {}", freeze ? "freeze" : "kill", after,
               freeze ? "stopping" : "killing", where);
  std::raise(freeze ? SIGSTOP : SIGKILL);
}

namespace {

// A message's tensors: the parcel that travels in the CAF message (their descriptions; the bytes too once the
// link's send gave them) and the tensors themselves, in the same order. Names: latents, timestep, prediction,
// conditioning.* and window.* (a branch_conditioning's fields), peer:MODULE:K and owned:MODULE:K (an activation
// cache's entries).
struct tensor_bundle {
  tensor_parcel parcel;
  std::vector<at::Tensor> tensors;

  void add(const std::string& name, const at::Tensor& tensor) {
    parcel.metas.push_back(runtime::describe_tensor(name, tensor));
    tensors.push_back(tensor);
  }
  void add(const std::string& prefix, const models::branch_conditioning& conditioning) {
    add(prefix + ".context", conditioning.context);
    add(prefix + ".pooled", conditioning.pooled);
    add(prefix + ".time_ids", conditioning.time_ids);
  }
  void add(const std::string& prefix, const models::sampler_memory& memory) {
    for (const auto& [name, tensor] : memory) add(prefix + "." + name, tensor);
  }
  void add(const std::string& prefix, const runtime::activation_cache& cache) {
    for (const auto& [module, value] : cache)
      for (std::size_t k = 0; k < value.size(); ++k) add(prefix + ":" + module + ":" + std::to_string(k), value[k]);
  }
};

// The inverse of tensor_bundle: the parcel's tensors, taken from `link`, by name.
class received_bundle {
 public:
  received_bundle(const tensor_parcel& parcel, runtime::tensor_link& link, const c10::Device& device) {
    auto tensors = link.receive(parcel.metas, parcel.bytes, device);
    for (std::size_t i = 0; i < parcel.metas.size(); ++i) by_name_.emplace(parcel.metas[i].name, std::move(tensors[i]));
  }
  bool has(const std::string& name) const { return by_name_.count(name) > 0; }
  at::Tensor get(const std::string& name) const {
    auto found = by_name_.find(name);
    if (found == by_name_.end()) throw error("remote message: no tensor '" + name + "'");
    return found->second;
  }
  models::branch_conditioning conditioning(const std::string& prefix) const {
    return {get(prefix + ".context"), get(prefix + ".pooled"), get(prefix + ".time_ids")};
  }
  models::sampler_memory memory(const std::string& prefix) const {
    models::sampler_memory memory;
    const auto start = prefix + ".";
    for (const auto& [name, tensor] : by_name_)
      if (name.rfind(start, 0) == 0) memory.emplace(name.substr(start.size()), tensor);
    return memory;
  }
  runtime::activation_cache cache(const std::string& prefix) const {
    runtime::activation_cache cache;
    const auto start = prefix + ":";
    for (const auto& [name, tensor] : by_name_) {
      if (name.rfind(start, 0) != 0) continue;
      const auto split = name.rfind(':');
      const auto module = name.substr(start.size(), split - start.size());
      const auto k = std::stoul(name.substr(split + 1));
      auto& value = cache[module];
      if (value.size() <= k) value.resize(k + 1);
      value[k] = tensor;
    }
    return cache;
  }

 private:
  std::map<std::string, at::Tensor> by_name_;
};

caf::error failure(const std::string& what) { return caf::make_error(caf::sec::runtime_error, what); }

// ---------------------------------------------------------------------------------------------------------------
// Rank 0: the registry (published) and one proxy per remote worker.

struct registry_state {
  int world_size = 1;
  std::string transport;
  runtime::link_factory* links = nullptr;
  std::map<int, std::pair<caf::actor, std::vector<char>>> registered;  // rank -> (host, offer)
  std::vector<caf::response_promise> collectors;
  static inline const char* name = "hybridiff.registry";
};

bool complete(const registry_state& state) { return static_cast<int>(state.registered.size()) == state.world_size - 1; }

void deliver_if_complete(caf::stateful_actor<registry_state>* self) {
  auto& state = self->state;
  if (!complete(state)) return;
  std::vector<caf::actor> hosts;
  std::vector<std::vector<char>> offers;
  for (auto& [rank, entry] : state.registered) {
    hosts.push_back(entry.first);
    offers.push_back(entry.second);
  }
  for (auto& promise : state.collectors) promise.deliver(hosts, offers);
  state.collectors.clear();
}

caf::behavior registry(caf::stateful_actor<registry_state>* self, int world_size, std::string transport,
                       runtime::link_factory* links) {
  self->state.world_size = world_size;
  self->state.transport = std::move(transport);
  self->state.links = links;
  self->set_default_handler(caf::drop);  // never print what a stranger sends (reference CAF 0.17.6 defects)
  return {
      [=](register_atom, std::int32_t rank, const std::string& transport,
          const caf::actor& host) -> caf::result<std::vector<char>> {
        auto& state = self->state;
        if (rank < 1 || rank >= state.world_size)
          return failure("rank " + std::to_string(rank) + " is outside [1, " + std::to_string(state.world_size) +
                         ") (rank 0 runs with WORLD_SIZE " + std::to_string(state.world_size) + ")");
        if (state.registered.count(rank)) return failure("rank " + std::to_string(rank) + " registered twice");
        if (transport != state.transport)
          return failure("rank " + std::to_string(rank) + " uses the " + transport + " transport, rank 0 the " +
                         state.transport + " transport");
        if (!host) return failure("rank " + std::to_string(rank) + " registered no worker");
        std::vector<char> offer;
        try {
          offer = state.links->offer(rank);
        } catch (const std::exception& problem) {
          return failure(problem.what());
        }
        state.registered[rank] = {host, offer};
        spdlog::info("rank {} registered ({} of {})", rank, state.registered.size(), state.world_size - 1);
        deliver_if_complete(self);
        return offer;
      },
      [=](collect_atom) {
        auto promise = self->make_response_promise();
        self->state.collectors.push_back(promise);
        deliver_if_complete(self);
        return promise;
      },
      [=](missing_atom) {
        std::vector<std::int32_t> missing;
        for (int rank = 1; rank < self->state.world_size; ++rank)
          if (!self->state.registered.count(rank)) missing.push_back(rank);
        return missing;
      },
  };
}

struct proxy_state {
  int rank = 0;
  caf::actor host;
  std::shared_ptr<runtime::tensor_link> link;
  c10::Device device = c10::kCPU;
  std::chrono::milliseconds timeout{0};
  // Open calls: CAF 0.17 drops an undelivered promise silently, so a lost rank must fail them by hand.
  std::map<std::uint64_t, std::function<void(caf::error)>> open_calls;
  std::uint64_t next_call = 0;
  // A guided run of the remote worker: its peer (the other branch's worker) gets its predictions from here, and
  // the remote worker gets the peer's through here (peer_cfg).
  worker_actor guided_peer;
  std::int32_t guided_last = 0;  // the run's last step
  // A window run of the remote stage: the stages it hands over to get its outputs from here (with the next input
  // when it is the output stage), and its producers are watched here (a lost one is passed on).
  std::vector<std::pair<worker_actor, std::set<std::string>>> window_hand_on;
  std::vector<worker_actor> window_producers;
  std::int32_t window_last = -1;   // the run's last step (−1: no window run)
  std::int32_t window_stride = 1;  // from one of its steps to the next
  static inline const char* name = "hybridiff.remote_worker";
};
using proxy_pointer = worker_actor::stateful_pointer<proxy_state>;

std::string rank_prefix(proxy_pointer self) { return "rank " + std::to_string(self->state.rank) + ": "; }

// Every call still waiting for the remote worker fails with `why` (CAF would drop their promises silently).
void fail_open_calls(proxy_pointer self, const std::string& why) {
  for (auto& [id, fail] : self->state.open_calls) fail(failure(rank_prefix(self) + why));
  self->state.open_calls.clear();
}

// Sends `call` to the remote worker; `read` turns the remote answer into this actor's answer, `failed` hears that it
// failed (`nothing` for most calls). `then`, not `await`:
// while a call is out the proxy must still see the down message of a lost rank (the worker host answers its calls
// one at a time, in order, so answers cannot overtake each other).
template <class... Remote>
struct remote_answer {};  // the types of the remote worker's answer

constexpr auto nothing = [] {};

template <class Answer, class... Remote, class Read, class Failed, class... Ts>
caf::typed_response_promise<Answer> call_remote(proxy_pointer self, remote_answer<Remote...>, Read read, Failed failed,
                                                Ts... call) {
  auto promise = self->make_response_promise<Answer>();
  const auto id = self->state.next_call++;
  self->state.open_calls.emplace(id, [promise](caf::error problem) mutable { promise.deliver(std::move(problem)); });
  auto settle = [=](auto deliver) {
    if (self->state.open_calls.erase(id) == 0) return;  // failed already: the rank was lost
    deliver();
  };
  self->request(self->state.host, self->state.timeout, std::move(call)...)
      .then(
          [=](const Remote&... answer) mutable {
            settle([&] {
              try {
                promise.deliver(read(answer...));
              } catch (const std::exception& problem) {
                promise.deliver(failure(rank_prefix(self) + problem.what()));
              }
            });
          },
          [=](caf::error& problem) mutable {
            settle([&] {
              failed();
              promise.deliver(failure(rank_prefix(self) + describe_error(self->system(), problem)));
            });
          });
  return promise;
}

// call_remote with `bundle`'s tensors: sent over the link, then `call` with the bundle's parcel as its last element.
template <class Answer, class... Remote, class Read, class Failed, class... Ts>
caf::typed_response_promise<Answer> call_remote_with(proxy_pointer self, tensor_bundle bundle,
                                                     remote_answer<Remote...> answer, Read read, Failed failed,
                                                     Ts... call) {
  try {
    bundle.parcel.bytes = self->state.link->send(bundle.tensors);
    spdlog::trace("rank {}: {} tensor(s) sent", self->state.rank, bundle.tensors.size());
  } catch (const std::exception& problem) {
    auto promise = self->make_response_promise<Answer>();
    promise.deliver(failure(rank_prefix(self) + problem.what()));
    return promise;
  }
  return call_remote<Answer>(self, answer, read, failed, call..., std::move(bundle.parcel));
}

// The end of the remote worker's guided run (its last step answered, or another call): its peer is let go.
void end_guided_run(proxy_pointer self) {
  if (self->state.guided_peer) self->demonitor(self->state.guided_peer.address());
  self->state.guided_peer = nullptr;
}

// The end of the remote stage's window run: its producers are let go.
void end_window_run(proxy_pointer self) {
  for (auto& producer : self->state.window_producers) self->demonitor(producer.address());
  self->state.window_producers.clear();
  self->state.window_hand_on.clear();
  self->state.window_last = -1;
}

// A window run's answer at `step` from the remote stage: its outputs (and the next input) to the stages that compute
// on them, before the driver.
void hand_on_window(proxy_pointer self, std::int32_t step, const step_reply& reply) {
  auto& state = self->state;
  if (step >= state.window_last) {
    end_window_run(self);
    return;
  }
  for (const auto& [stage, modules] : state.window_hand_on)
    self->send(stage, peer_stage_atom::value, make_hand_over(step + state.window_stride, reply, modules));
}

// The remote stage's window-run step after `step` failed: the stages it hands over to hear it as from a lost
// producer (an empty hand-over), and the run ends here.
void stage_failed(proxy_pointer self, std::int32_t step) {
  hand_on_loss(self, self->state.window_hand_on, step + self->state.window_stride);
  end_window_run(self);
}

// A guided run's prediction at `step` from the remote worker, to its peer (before the driver: the peer's next step
// waits for it).
void hand_to_peer(proxy_pointer self, std::int32_t step, const at::Tensor& prediction) {
  auto& state = self->state;
  if (!state.guided_peer) return;
  if (step >= state.guided_last) {
    end_guided_run(self);
    return;
  }
  auto exchange = std::make_shared<step_request>();
  exchange->step = step + 1;
  exchange->other_branch = prediction;
  self->send(state.guided_peer, peer_cfg_atom::value, step_request_ptr(std::move(exchange)));
}

// Which run's answer a call reads: its outputs are handed on from here.
enum class run_kind { none, guided, window };

// Sends `bundle` and `call` to the remote worker; the remote answer (compute time, the reply's tensors) becomes a
// step_reply, whose prediction also goes to the peer when it is a guided run's, and whose outputs go to the stages
// that compute on them when it is a window run's.
template <class... Ts>
caf::typed_response_promise<step_reply_ptr> forward_call(proxy_pointer self, const tensor_bundle& bundle,
                                                         std::int32_t step, run_kind run, Ts... call) {
  auto read = [self, step, run](double compute_ms, const tensor_parcel& parcel) {
    spdlog::trace("step {}: rank {} answered", step, self->state.rank);
    received_bundle received(parcel, *self->state.link, self->state.device);
    spdlog::trace("step {}: rank {}'s {} tensor(s) in", step, self->state.rank, parcel.metas.size());
    auto reply = std::make_shared<step_reply>();
    reply->compute_ms = compute_ms;
    reply->prediction = received.get("prediction");
    reply->owned = received.cache("owned");
    if (received.has("next_input")) reply->next_input = received.get("next_input");
    if (run == run_kind::guided) hand_to_peer(self, step, reply->prediction);
    if (run == run_kind::window) hand_on_window(self, step, *reply);
    return step_reply_ptr(std::move(reply));
  };
  // A window run's step that failed there: the stages that wait for the remote stage's hand-overs hear it.
  auto failed = [self, step, run] {
    if (run == run_kind::window) stage_failed(self, step);
  };
  return call_remote_with<step_reply_ptr>(self, bundle, remote_answer<double, tensor_parcel>{}, read, failed, call...);
}

// A step: its tensors travel over the link.
caf::typed_response_promise<step_reply_ptr> forward_step(proxy_pointer self, remote_call kind,
                                                         const step_request_ptr& request) {
  tensor_bundle bundle;
  if (request->latents.defined()) bundle.add("latents", request->latents);  // not in next_cfg
  if (request->timestep.defined()) bundle.add("timestep", request->timestep);
  if (request->conditioning) bundle.add("conditioning", *request->conditioning);
  if (request->peers) bundle.add("peer", *request->peers);
  const auto run = kind == remote_call::next_cfg     ? run_kind::guided
                   : kind == remote_call::next_stage ? run_kind::window
                                                     : run_kind::none;
  if (run != run_kind::guided) end_guided_run(self);
  if (run != run_kind::window) end_window_run(self);
  return forward_call(self, bundle, request->step, run, call_atom::value, static_cast<std::int32_t>(kind),
                      request->step);
}

// A guided run's start: the latents travel over the link, the sampler's settings in the message. The run's peer
// stays here: the remote worker's predictions reach it from this proxy.
caf::typed_response_promise<step_reply_ptr> forward_run(proxy_pointer self, const guided_run_ptr& run) {
  end_guided_run(self);
  self->state.guided_peer = run->peer;
  self->state.guided_last = run->last;
  if (run->peer) self->monitor(run->peer);
  tensor_bundle bundle;
  bundle.add("sample", run->sample);
  bundle.add("memory", run->memory);
  return forward_call(self, bundle, run->step, run_kind::guided, run_cfg_atom::value, run->step, run->last,
                      run->sampler, run->steps, run->guidance, run->conditional);
}

// A window run's start: the inputs travel over the link, the settings in the message. Whom the remote stage hands
// over to and whom it waits for stay here: its outputs reach the other stages from this proxy, and this proxy
// watches its producers.
caf::typed_response_promise<step_reply_ptr> forward_window_run(proxy_pointer self, const window_run_ptr& run) {
  end_guided_run(self);
  end_window_run(self);
  auto& state = self->state;
  for (const auto& [stage, modules] : run->hand_on)
    state.window_hand_on.emplace_back(stage, std::set<std::string>(modules.begin(), modules.end()));
  state.window_producers = run->producers;
  state.window_last = run->last;
  state.window_stride = run->stride;
  for (auto& producer : state.window_producers) self->monitor(producer);
  tensor_bundle bundle;
  bundle.add("latents", run->latents);
  bundle.add("timesteps", run->timesteps);
  if (run->peers) bundle.add("peer", *run->peers);
  if (run->sample.defined()) bundle.add("sample", run->sample);
  bundle.add("memory", run->memory);
  return forward_call(self, bundle, run->step, run_kind::window, run_window_atom::value, run->step, run->last,
                      run->stride, run->hand_overs, run->output, run->sampler, run->steps, run->batched, run->guidance,
                      run->branches, run->prediction);
}

// Another stage's hand-over for the remote stage's window run, over the link (no answer). A lost hand-over (a
// producer lost or failed) fails the remote stage's waiting step.
void forward_hand_over(proxy_pointer self, const step_request_ptr& exchange) {
  tensor_bundle bundle;
  if (exchange->latents.defined()) bundle.add("latents", exchange->latents);
  if (exchange->peers) bundle.add("peer", *exchange->peers);
  try {
    bundle.parcel.bytes = self->state.link->send(bundle.tensors);
  } catch (const std::exception& problem) {  // the link is broken: so are the calls that wait on it
    fail_open_calls(self, problem.what());
    return;
  }
  caf::anon_send(self->state.host, peer_stage_atom::value, exchange->step, is_lost(*exchange),
                 std::move(bundle.parcel));
}

// The peer's prediction for the remote worker's guided run, over the link (no answer: the remote worker's next_cfg
// answers). An undefined prediction says the peer was lost.
void forward_peer_prediction(proxy_pointer self, const step_request_ptr& exchange) {
  tensor_bundle bundle;
  if (exchange->other_branch.defined()) bundle.add("other_branch", exchange->other_branch);
  try {
    bundle.parcel.bytes = self->state.link->send(bundle.tensors);
  } catch (const std::exception& problem) {  // the link is broken: so are the calls that wait on it
    fail_open_calls(self, problem.what());
    return;
  }
  // Anonymous: a typed actor cannot send to the untyped host. One path (this actor, rank R's connection) keeps it
  // in order with the calls, and so with their transfers on the link.
  caf::anon_send(self->state.host, peer_cfg_atom::value, exchange->step, std::move(bundle.parcel));
}

template <class Answer>
Answer same(const Answer& answer) {
  return answer;
}

worker_actor::behavior_type proxy(proxy_pointer self, int rank, caf::actor host,
                                  std::shared_ptr<runtime::tensor_link> link, c10::Device device,
                                  std::chrono::milliseconds timeout) {
  self->state.rank = rank;
  self->state.host = host;
  self->state.link = std::move(link);
  self->state.device = device;
  self->state.timeout = timeout;
  // The remote process is gone: so is this worker (the supervisor, which monitors the proxy, reports the loss).
  self->monitor(host);
  self->set_down_handler([=](caf::down_msg& down) {
    if (down.source != self->state.host.address()) {  // a run's peer or producer: the remote worker must not wait
      auto& producers = self->state.window_producers;
      const auto lost_producer = std::find_if(producers.begin(), producers.end(),
                                              [&](const worker_actor& p) { return down.source == p.address(); });
      if (lost_producer != producers.end()) {
        spdlog::warn("rank {}: a stage its worker computes on was lost ({})", self->state.rank,
                     self->system().render(down.reason));
        // Only the producers are let go: the remote stage's answers still on their way are handed on as they come
        // (the stages that read them may be computing a step the loss does not touch).
        for (auto& producer : producers) self->demonitor(producer.address());
        producers.clear();
        forward_hand_over(self, lost_hand_over(self->state.window_last));
        return;
      }
      if (!self->state.guided_peer || down.source != self->state.guided_peer.address()) return;
      spdlog::warn("rank {}: the other branch's worker was lost ({})", self->state.rank,
                   self->system().render(down.reason));
      end_guided_run(self);
      auto lost = std::make_shared<step_request>();  // no prediction: lost
      forward_peer_prediction(self, lost);
      return;
    }
    if (!down.reason || down.reason == caf::exit_reason::normal) {  // the run is over and the rank left
      self->quit();
      return;
    }
    const auto why = self->system().render(down.reason);
    spdlog::error("rank {} was lost ({})", self->state.rank, why);
    fail_open_calls(self, "lost (" + why + ")");
    self->quit(down.reason);
  });
  return {
      [=](predict_atom, const step_request_ptr& request) { return forward_step(self, remote_call::predict, request); },
      [=](fill_atom, const step_request_ptr& request) { return forward_step(self, remote_call::fill, request); },
      [=](stage_atom, const step_request_ptr& request) { return forward_step(self, remote_call::stage, request); },
      [=](run_cfg_atom, const guided_run_ptr& run) { return forward_run(self, run); },
      [=](next_cfg_atom, const step_request_ptr& request) {
        return forward_step(self, remote_call::next_cfg, request);
      },
      [=](peer_cfg_atom, const step_request_ptr& exchange) { forward_peer_prediction(self, exchange); },
      [=](run_window_atom, const window_run_ptr& run) { return forward_window_run(self, run); },
      [=](next_stage_atom, const step_request_ptr& request) {
        return forward_step(self, remote_call::next_stage, request);
      },
      [=](peer_stage_atom, const step_request_ptr& exchange) { forward_hand_over(self, exchange); },
      [=](reconfigure_atom, std::int32_t role) {
        end_guided_run(self);
        end_window_run(self);
        return call_remote<std::int32_t>(self, remote_answer<std::int32_t>{}, same<std::int32_t>, nothing,
                                         reconfigure_atom::value, role);
      },
      [=](assign_atom, const module_names& window, const module_names& window_handed_on, const module_names& branch,
          const module_names& branch_handed_on, bool cuda_graphs) {
        return call_remote<bool>(self, remote_answer<bool>{}, same<bool>, nothing, assign_atom::value, window,
                                 window_handed_on, branch, branch_handed_on, cuda_graphs);
      },
      [=](prepare_atom, const image_setup_ptr& setup) {
        end_guided_run(self);
        end_window_run(self);
        tensor_bundle bundle;
        bundle.add("conditioning", setup->conditioning);
        bundle.add("window", setup->window);
        return call_remote_with<bool>(self, bundle, remote_answer<bool>{}, same<bool>, nothing, prepare_atom::value);
      },
  };
}

// ---------------------------------------------------------------------------------------------------------------
// A worker rank: the host actor receives rank 0's calls, takes their tensors from the link and asks the local
// worker actor.

using pending_link = std::shared_future<std::shared_ptr<runtime::tensor_link>>;

struct host_state {
  worker_actor worker;
  pending_link link;  // opened after the registration (rank 0 needs this actor's handle to make the offer)
  c10::Device device = c10::kCPU;
  std::chrono::milliseconds timeout{0};
  debug_fault fault;
  int calls = 0;
  static inline const char* name = "hybridiff.worker_host";
};
using host_pointer = caf::stateful_actor<host_state>*;

// Asks the local worker and answers with its answer (or its error).
template <class Answer, class... Ts>
caf::response_promise relay(host_pointer self, Ts... message) {
  auto promise = self->make_response_promise();
  self->request(self->state.worker, self->state.timeout, message...)
      .await([=](Answer answer) mutable { promise.deliver(answer); },
             [=](caf::error& problem) mutable { promise.deliver(problem); });
  return promise;
}

// An answer of `problem` to the current request.
caf::response_promise failed(host_pointer self, const std::string& problem) {
  auto promise = self->make_response_promise();
  promise.deliver(failure(problem));
  return promise;
}

// Asks the local worker for a step and answers rank 0 with the compute time and the reply's descriptions, its
// tensors sent over the link first (or with the worker's error). `then`, not `await`: a guided run's next_cfg is
// answered only once the peer's prediction, a later message, has come through this actor. The link's transfers
// stay in the order of the messages: each answer's tensors leave with its message.
template <class... Ts>
caf::response_promise relay_step(host_pointer self, std::int32_t step, Ts... message) {
  auto promise = self->make_response_promise();
  self->request(self->state.worker, self->state.timeout, message...)
      .then(
          [=](const step_reply_ptr& reply) mutable {
            try {
              tensor_bundle bundle;
              bundle.add("prediction", reply->prediction);
              bundle.add("owned", reply->owned);
              if (reply->next_input.defined()) bundle.add("next_input", reply->next_input);
              bundle.parcel.bytes = self->state.link.get()->send(bundle.tensors);
              promise.deliver(reply->compute_ms, std::move(bundle.parcel));
              spdlog::trace("step {}: reply and {} tensor(s) out", step, bundle.tensors.size());
            } catch (const std::exception& problem) {
              promise.deliver(failure(problem.what()));
            }
          },
          [=](caf::error& problem) mutable { promise.deliver(problem); });
  return promise;
}

caf::behavior worker_host(host_pointer self, caf::actor rank_zero, worker_actor worker, pending_link link,
                          c10::Device device, std::chrono::milliseconds timeout, debug_fault fault) {
  self->state = {worker, std::move(link), device, timeout, fault, 0};
  self->link_to(worker);  // the worker ends with its host
  self->monitor(rank_zero);  // rank 0 lost (its process gone, the connection closed): this rank ends
  self->set_default_handler(caf::drop);
  self->set_down_handler([=](caf::down_msg& down) {
    self->quit(down.reason ? down.reason : caf::make_error(caf::exit_reason::remote_link_unreachable));
  });
  return {
      [=](call_atom, std::int32_t kind, std::int32_t step, const tensor_parcel& parcel) -> caf::response_promise {
        self->state.fault.trigger_at(++self->state.calls, "step " + std::to_string(step));
        auto request = std::make_shared<step_request>();
        spdlog::trace("step {}: request in", step);
        try {
          received_bundle received(parcel, *self->state.link.get(), self->state.device);
          spdlog::trace("step {}: {} tensor(s) in", step, parcel.metas.size());
          request->step = step;
          if (received.has("latents")) request->latents = received.get("latents");
          if (received.has("timestep")) request->timestep = received.get("timestep");
          if (received.has("conditioning.context"))
            request->conditioning = std::make_shared<const models::branch_conditioning>(received.conditioning("conditioning"));
          request->peers = std::make_shared<const runtime::activation_cache>(received.cache("peer"));
        } catch (const std::exception& problem) {
          return failed(self, problem.what());
        }
        const step_request_ptr work = request;
        switch (static_cast<remote_call>(kind)) {
          case remote_call::predict: return relay_step(self, step, predict_atom::value, work);
          case remote_call::fill: return relay_step(self, step, fill_atom::value, work);
          case remote_call::stage: return relay_step(self, step, stage_atom::value, work);
          case remote_call::next_cfg: return relay_step(self, step, next_cfg_atom::value, work);
          case remote_call::next_stage: return relay_step(self, step, next_stage_atom::value, work);
        }
        return failed(self, "unknown remote call kind " + std::to_string(kind));
      },
      [=](run_cfg_atom, std::int32_t step, std::int32_t last, const std::string& sampler, std::int64_t steps,
          double guidance, bool conditional, const tensor_parcel& parcel) -> caf::response_promise {
        self->state.fault.trigger_at(++self->state.calls, "step " + std::to_string(step));
        auto run = std::make_shared<guided_run>();
        try {
          received_bundle received(parcel, *self->state.link.get(), self->state.device);
          run->sample = received.get("sample");
          run->memory = received.memory("memory");
        } catch (const std::exception& problem) {
          return failed(self, problem.what());
        }
        run->step = step;
        run->last = last;
        run->sampler = sampler;
        run->steps = steps;
        run->guidance = guidance;
        run->conditional = conditional;
        return relay_step(self, step, run_cfg_atom::value, guided_run_ptr(run));
      },
      [=](run_window_atom, std::int32_t step, std::int32_t last, std::int32_t stride, std::int32_t hand_overs,
          bool output, const std::string& sampler, std::int64_t steps, bool batched, double guidance, bool branches,
          const std::string& prediction, const tensor_parcel& parcel) -> caf::response_promise {
        self->state.fault.trigger_at(++self->state.calls, "step " + std::to_string(step));
        auto run = std::make_shared<window_run>();
        try {
          received_bundle received(parcel, *self->state.link.get(), self->state.device);
          run->latents = received.get("latents");
          run->timesteps = received.get("timesteps");
          run->peers = std::make_shared<const runtime::activation_cache>(received.cache("peer"));
          if (received.has("sample")) run->sample = received.get("sample");
          run->memory = received.memory("memory");
        } catch (const std::exception& problem) {
          return failed(self, problem.what());
        }
        run->step = step;
        run->last = last;
        run->stride = stride;
        run->hand_overs = hand_overs;  // its producers' hand-overs come through rank 0's stand-in, as its own go
        run->output = output;
        run->sampler = sampler;
        run->steps = steps;
        run->batched = batched;
        run->guidance = guidance;
        run->branches = branches;
        run->prediction = prediction;
        return relay_step(self, step, run_window_atom::value, window_run_ptr(run));
      },
      [=](peer_stage_atom, std::int32_t step, bool lost, const tensor_parcel& parcel) {
        auto exchange = std::make_shared<step_request>();
        exchange->step = step;
        try {
          received_bundle received(parcel, *self->state.link.get(), self->state.device);
          if (!lost) {
            if (received.has("latents")) exchange->latents = received.get("latents");
            exchange->peers = std::make_shared<const runtime::activation_cache>(received.cache("peer"));
          }
        } catch (const std::exception& problem) {  // no request to answer: the rank ends, rank 0 hears why
          spdlog::error("step {}: a stage's hand-over: {}", step, problem.what());
          self->quit(failure(problem.what()));
          return;
        }
        self->send(self->state.worker, peer_stage_atom::value, step_request_ptr(std::move(exchange)));
      },
      [=](peer_cfg_atom, std::int32_t step, const tensor_parcel& parcel) {
        auto exchange = std::make_shared<step_request>();
        exchange->step = step;
        try {
          received_bundle received(parcel, *self->state.link.get(), self->state.device);
          if (received.has("other_branch")) exchange->other_branch = received.get("other_branch");
        } catch (const std::exception& problem) {  // no request to answer: the rank ends, rank 0 hears why
          spdlog::error("step {}: the other branch's prediction: {}", step, problem.what());
          self->quit(failure(problem.what()));
          return;
        }
        self->send(self->state.worker, peer_cfg_atom::value, step_request_ptr(std::move(exchange)));
      },
      [=](prepare_atom, const tensor_parcel& parcel) {
        auto setup = std::make_shared<image_setup>();
        try {
          received_bundle received(parcel, *self->state.link.get(), self->state.device);
          setup->conditioning = received.conditioning("conditioning");
          setup->window = received.conditioning("window");
        } catch (const std::exception& problem) {
          return failed(self, problem.what());
        }
        return relay<bool>(self, prepare_atom::value, image_setup_ptr(setup));
      },
      [=](reconfigure_atom, std::int32_t role) { return relay<std::int32_t>(self, reconfigure_atom::value, role); },
      [=](assign_atom, const module_names& window, const module_names& window_handed_on, const module_names& branch,
          const module_names& branch_handed_on, bool cuda_graphs) {
        return relay<bool>(self, assign_atom::value, window, window_handed_on, branch, branch_handed_on, cuda_graphs);
      },
      [=](done_atom) {
        self->quit();
        return true;
      },
  };
}

std::string seconds(std::chrono::milliseconds duration) { return fmt::format("{:g} s", duration.count() / 1000.0); }

}  // namespace

cluster_host::cluster_host(caf::actor_system& system, const runtime::process_placement& placement,
                           const cluster_options& options)
    : system_(system) {
  if (placement.rank != 0) throw error("cluster_host runs on rank 0, not rank " + std::to_string(placement.rank));
  links_ = runtime::make_link_factory(options.transport, placement, options.device, options.request_timeout);
  registry_ = system.spawn(registry, placement.world_size, runtime::to_string(options.transport), links_.get());
  auto published = system.middleman().publish(registry_, static_cast<std::uint16_t>(placement.master_port),
                                              nullptr, /*reuse=*/true);
  if (!published) {
    caf::anon_send_exit(registry_, caf::exit_reason::user_shutdown);
    throw error("rank 0 cannot listen on port " + std::to_string(placement.master_port) + " (MASTER_PORT): " +
                system.render(published.error()));
  }
  port_ = *published;
  spdlog::info("rank 0 waits for {} rank(s) on port {}", placement.world_size - 1, port_);
  caf::scoped_actor self{system};
  std::vector<std::vector<char>> offers;
  self->request(registry_, options.rendezvous_timeout, collect_atom::value)
      .receive([&](std::vector<caf::actor>& hosts, std::vector<std::vector<char>>& offered) {
                 hosts_ = std::move(hosts);
                 offers = std::move(offered);
               },
               [&](caf::error&) {});
  if (static_cast<int>(hosts_.size()) != placement.world_size - 1) {
    std::string missing;
    self->request(registry_, std::chrono::seconds(5), missing_atom::value)
        .receive([&](const std::vector<std::int32_t>& ranks) {
                   for (auto rank : ranks) missing += (missing.empty() ? "" : ", ") + std::to_string(rank);
                 },
                 [&](caf::error&) { missing = "?"; });
    caf::anon_send_exit(registry_, caf::exit_reason::user_shutdown);
    throw error("rank(s) " + missing + " did not register within " + seconds(options.rendezvous_timeout) +
                " (WORLD_SIZE " + std::to_string(placement.world_size) + "; rank 0 listens on port " +
                std::to_string(port_) + ")");
  }
  for (int rank = 1; rank < placement.world_size; ++rank) {
    std::shared_ptr<runtime::tensor_link> link = links_->open(rank, offers[rank - 1]);
    proxies_.push_back(system.spawn<caf::detached>(proxy, rank, hosts_[rank - 1], link, options.device,
                                                   options.request_timeout));
  }
  spdlog::info("{} remote worker(s) joined over the {} transport", proxies_.size(), runtime::to_string(options.transport));
}

cluster_host::~cluster_host() {
  // Every rank hears that the run is over before this process goes (a rank that is gone does not answer).
  // All at once, so that a lost rank (which never answers) costs one timeout in all.
  caf::scoped_actor self{system_};
  using handle = decltype(self->request(hosts_.front(), std::chrono::seconds(2), done_atom::value));
  std::vector<handle> farewells;
  for (auto& host : hosts_) farewells.push_back(self->request(host, std::chrono::seconds(2), done_atom::value));
  for (auto& farewell : farewells) farewell.receive([](bool) {}, [](caf::error&) {});
  for (auto& proxy : proxies_) caf::anon_send_exit(proxy, caf::exit_reason::user_shutdown);
  caf::anon_send_exit(registry_, caf::exit_reason::user_shutdown);
  system_.middleman().unpublish(registry_, port_);
}

namespace {
caf::actor_system_config& configured(caf::actor_system_config& config, bool cluster, const cluster_options& options) {
  if (cluster) configure_cluster(config, options);
  return config;
}

std::atomic<bool> abandoned_system{false};

}  // namespace

process_run::process_run(const runtime::process_placement& placement, const cluster_options& options)
    : placement_(placement), options_(options), config_(std::make_unique<caf::actor_system_config>()) {
  system_ = std::make_unique<caf::actor_system>(configured(*config_, placement.world_size > 1, options));
  if (placement.world_size > 1 && placement.rank == 0)
    cluster_ = std::make_unique<cluster_host>(*system_, placement_, options_);
}

process_run::~process_run() {
  cluster_.reset();
  // Every thread that spawned an actor holds the system's logger (a thread-local reference CAF sets in spawn), and
  // the system's destructor waits until the logger is gone. The destructor drops the reference of the thread it
  // runs on; it runs on another thread here, so this one drops its own first.
  caf::logger::set_current_actor_system(nullptr);
  // The system's destructor on a thread of its own, waited for `shutdown_grace`.
  auto finished = std::make_shared<std::promise<void>>();
  auto done = finished->get_future();
  std::thread shutdown([system = std::move(system_), config = std::move(config_), finished]() mutable {
    system.reset();
    config.reset();
    finished->set_value();
  });
  if (done.wait_for(options_.shutdown_grace) == std::future_status::ready) {
    shutdown.join();
    return;
  }
  shutdown.detach();
  abandoned_system = true;
  spdlog::warn(
      "the actor system did not shut down within {} (a detached actor's thread waits in CAF 0.17.6's "
      "shutdown); this process ends without it",
      seconds(options_.shutdown_grace));
}

bool actor_system_abandoned() { return abandoned_system; }

void process_run::serve(std::shared_ptr<models::diffusion_pipeline> replica) {
  serve_worker(*system_, placement_, std::move(replica), options_);
}

void serve_worker(caf::actor_system& system, const runtime::process_placement& placement,
                  std::shared_ptr<models::diffusion_pipeline> replica, const cluster_options& options) {
  const auto rank_zero = placement.master_addr + ":" + std::to_string(placement.master_port);
  const auto deadline = std::chrono::steady_clock::now() + options.rendezvous_timeout;
  caf::actor registry;
  while (true) {
    auto found = system.middleman().remote_actor(placement.master_addr, static_cast<std::uint16_t>(placement.master_port));
    if (found) {
      registry = *found;
      break;
    }
    if (std::chrono::steady_clock::now() > deadline)
      throw error("rank " + std::to_string(placement.rank) + ": rank 0 at " + rank_zero + " did not answer within " +
                  seconds(options.rendezvous_timeout) + " (" + system.render(found.error()) + ")");
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  auto links = runtime::make_link_factory(options.transport, placement, options.device, options.request_timeout);
  auto worker = spawn_worker(system, std::make_shared<runtime::stage_worker>(std::move(replica), placement.rank));
  std::promise<std::shared_ptr<runtime::tensor_link>> opened;
  auto host = system.spawn<caf::detached>(worker_host, registry, worker, opened.get_future().share(), options.device,
                                          options.request_timeout, options.fault);
  caf::scoped_actor self{system};
  self->monitor(host);
  auto stop = [&](const std::string& why) {
    opened.set_exception(std::make_exception_ptr(error(why)));
    caf::anon_send_exit(host, caf::exit_reason::user_shutdown);
    return error("rank " + std::to_string(placement.rank) + ": " + why);
  };
  std::vector<char> offer;
  std::string refused;
  self->request(registry, options.rendezvous_timeout, register_atom::value, static_cast<std::int32_t>(placement.rank),
                runtime::to_string(options.transport), host)
      .receive([&](std::vector<char>& given) { offer = std::move(given); },
               [&](caf::error& problem) { refused = describe_error(system, problem); });
  if (!refused.empty()) throw stop("rank 0 at " + rank_zero + " refused the registration: " + refused);
  try {
    opened.set_value(links->open(0, offer));
  } catch (const std::exception& problem) {
    throw stop(problem.what());
  }
  spdlog::info("rank {} serves its worker to rank 0 at {} over the {} transport", placement.rank, rank_zero,
               runtime::to_string(options.transport));
  // Rank 0 is watched here as well as by the host: the host may be blocked in a transfer (an NCCL receive from a
  // frozen rank 0 waits out the request timeout), and then it cannot take its own down message.
  self->monitor(registry);
  caf::error reason;
  bool rank_zero_ended = false;
  self->receive([&](caf::down_msg& down) {
    reason = down.reason;
    rank_zero_ended = down.source == registry.address();
  });
  if (rank_zero_ended) {
    // After a finished run the host has ended too, but its down message may come second; an unblocked host ends at
    // once on rank 0's loss. Only a blocked host stays silent.
    self->receive([&](caf::down_msg& down) { reason = down.reason; },
                  caf::after(std::chrono::seconds(1)) >>
                      [&] {
                        if (!reason) reason = caf::make_error(caf::exit_reason::remote_link_unreachable);
                      });
  }
  if (reason && reason != caf::exit_reason::normal) {
    caf::anon_send_exit(host, caf::exit_reason::user_shutdown);  // taken once a blocked transfer gives up
    // Logged as well as thrown: the log line carries the time the loss was noticed.
    const auto lost = "rank 0 at " + rank_zero + " was lost (" + system.render(reason) + ")";
    spdlog::error("{}", lost);
    throw error("rank " + std::to_string(placement.rank) + ": " + lost);
  }
}

}  // namespace hybridiff::actors
