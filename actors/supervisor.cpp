#include "actors/supervisor.hpp"

#include <map>

#include <spdlog/spdlog.h>

namespace hybridiff::actors {
namespace {

struct supervisor_state {
  std::vector<caf::actor_addr> workers;
  std::vector<bool> down;
  std::map<std::int32_t, std::vector<caf::typed_response_promise<bool>>> waiting;  // worker -> open questions
  static inline const char* name = "hybridiff.supervisor";
};
using supervisor_pointer = supervisor_actor::stateful_pointer<supervisor_state>;

void answer_all(supervisor_pointer self, std::int32_t worker, bool lost) {
  auto found = self->state.waiting.find(worker);
  if (found == self->state.waiting.end()) return;
  for (auto& promise : found->second) promise.deliver(lost);
  self->state.waiting.erase(found);
}

supervisor_actor::behavior_type supervisor(supervisor_pointer self, std::vector<worker_actor> workers,
                                           std::chrono::milliseconds grace) {
  for (auto& worker : workers) {
    self->state.workers.push_back(worker.address());
    self->monitor(worker);
  }
  self->state.down.assign(workers.size(), false);
  self->set_down_handler([=](caf::down_msg& down) {
    auto& known = self->state.workers;
    for (std::size_t w = 0; w < known.size(); ++w) {
      if (down.source != known[w] || self->state.down[w]) continue;
      self->state.down[w] = true;
      // A worker shut down at the end of a request is not news; any other reason is a loss.
      if (down.reason != caf::exit_reason::user_shutdown)
        spdlog::warn("supervisor: worker {} is gone ({})", w, self->system().render(down.reason));
      answer_all(self, static_cast<std::int32_t>(w), true);
    }
  });
  return {
      [=](lost_atom, std::int32_t worker) -> caf::typed_response_promise<bool> {
        auto promise = self->make_response_promise<bool>();
        if (worker < 0 || static_cast<std::size_t>(worker) >= self->state.down.size()) {
          promise.deliver(caf::make_error(caf::sec::invalid_argument, "no worker " + std::to_string(worker)));
        } else if (self->state.down[worker]) {
          promise.deliver(true);
        } else {
          self->state.waiting[worker].push_back(promise);
          self->delayed_send(self, grace, grace_atom::value, worker);
        }
        return promise;
      },
      [=](grace_atom, std::int32_t worker) { answer_all(self, worker, false); },
  };
}

}  // namespace

supervisor_actor spawn_supervisor(caf::actor_system& system, std::vector<worker_actor> workers,
                                  std::chrono::milliseconds grace) {
  return system.spawn(supervisor, std::move(workers), grace);
}

}  // namespace hybridiff::actors
