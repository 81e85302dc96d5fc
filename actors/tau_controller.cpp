#include "actors/tau_controller.hpp"

#include <limits>

namespace hybridiff::actors {
namespace {

struct controller_state {
  std::unique_ptr<schedule::tau_controller> controller;
  std::vector<worker_actor> workers;
  worker_role configured = worker_role::cfg_branch;  // what every worker currently is
  static inline const char* name = "hybridiff.tau_controller";
};
using controller_pointer = tau_controller_actor::stateful_pointer<controller_state>;

worker_role role_of(schedule::phase p) {
  return p == schedule::phase::cfg ? worker_role::cfg_branch : worker_role::pipeline_stage;
}

// Tells every worker to become `role` unless it already is. The requests are enqueued before the caller answers the
// driver, so every worker switches before the next step's request reaches it.
void configure(controller_pointer self, worker_role role) {
  if (role == self->state.configured) return;
  self->state.configured = role;
  for (auto& worker : self->state.workers)
    self->request(worker, std::chrono::seconds(60), reconfigure_atom::value, static_cast<std::int32_t>(role))
        .then([](std::int32_t) {}, [](caf::error&) {});  // a dead worker fails the driver's next request instead
}

tau_controller_actor::behavior_type controller(controller_pointer self, schedule::schedule_settings settings,
                                               std::vector<worker_actor> workers) {
  self->state.controller = std::make_unique<schedule::tau_controller>(std::move(settings));
  self->state.workers = std::move(workers);
  // A policy that breaks the rules (a window without a fill step) fails the image with its message.
  auto refuse = [](const std::exception& problem) {
    return caf::make_error(caf::sec::runtime_error, std::string(problem.what()));
  };
  return {
      [=](phase_atom, std::int32_t step) -> caf::result<step_decision> {
        try {
          auto& controller = *self->state.controller;
          const auto p = controller.phase_of(step);
          configure(self, role_of(p));
          step_decision decision;
          decision.next_phase = static_cast<std::int32_t>(p);
          decision.slope = std::numeric_limits<double>::quiet_NaN();
          if (p == schedule::phase::cfg) decision.cfg_through = controller.promise_cfg(step);
          if (p == schedule::phase::fill) decision.window_through = controller.promise_window(step);
          return decision;
        } catch (const std::exception& problem) {
          return refuse(problem);
        }
      },
      [=](metric_atom, std::int32_t step, double metric, bool has_metric,
          double step_ms) -> caf::result<step_decision> {
        try {
          auto& controller = *self->state.controller;
          controller.end_step(step, has_metric ? std::optional<double>(metric) : std::nullopt, step_ms);
          const auto next = controller.phase_of(step + 1);
          configure(self, role_of(next));
          step_decision decision;
          decision.next_phase = static_cast<std::int32_t>(next);
          decision.slope = controller.last_slope().value_or(std::numeric_limits<double>::quiet_NaN());
          decision.tau1 = controller.tau1().value_or(-1);
          decision.tau2 = controller.tau2().value_or(-1);
          if (next == schedule::phase::cfg) decision.cfg_through = controller.promise_cfg(step + 1);
          if (next == schedule::phase::fill) decision.window_through = controller.promise_window(step + 1);
          return decision;
        } catch (const std::exception& problem) {
          return refuse(problem);
        }
      },
  };
}

}  // namespace

tau_controller_actor spawn_tau_controller(caf::actor_system& system, schedule::schedule_settings settings,
                                          std::vector<worker_actor> workers) {
  schedule::validate(settings);  // throws std::invalid_argument before any actor exists
  // Detached: the driver asks the controller once per step, and a scheduled actor waits for one of CAF's
  // work-stealing threads, which poll with sleeps when idle: a detached controller answers sooner.
  return system.spawn<caf::detached>(controller, std::move(settings), std::move(workers));
}

}  // namespace hybridiff::actors
