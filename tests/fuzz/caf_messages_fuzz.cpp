// libFuzzer target: CAF's binary deserialiser with hybridiff's registered message types: a type-erased
// caf::message (what a remote node receives) and step_decision directly. The first byte picks which. A message
// that matches one of our protocol's signatures is handled as an actor would (its values read and printed);
// other messages are only deserialised. Two CAF 0.17.6 defects are contained here (reproducers in
// tests/fuzz/corpus/caf_messages/): to_string of a caf::duration with an out-of-range unit reads out of bounds, so
// actors must never print unexpected remote messages; and the deserialiser throws std::runtime_error ("invalid
// type found") for a config_value with a bad type tag instead of returning an error, so code that deserialises
// network bytes must catch it. Any other exception is a finding.
// With HYBRIDIFF_WRITE_SEEDS=DIR set, initialisation writes serialised examples there (the seed corpus).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <caf/all.hpp>

#include "actors/protocol.hpp"

namespace {

using hybridiff::actors::step_decision;

struct fuzz_system {
  caf::actor_system_config config;
  std::unique_ptr<caf::actor_system> system;
  fuzz_system() {
    config.add_message_type<step_decision>("hybridiff::step_decision");
    system = std::make_unique<caf::actor_system>(config);
  }
};

// Never destroyed: at exit, CAF's own statics may already be gone.
caf::actor_system& actor_system() {
  static auto* instance = new fuzz_system;
  return *instance->system;
}

template <class Value>
void write_seed(const std::string& dir, const std::string& name, char selector, const Value& value) {
  std::vector<char> bytes{selector};
  caf::binary_serializer sink{actor_system(), bytes};
  if (auto failure = sink(value)) std::abort();
  std::ofstream(dir + "/" + name, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = std::getenv("HYBRIDIFF_WRITE_SEEDS")) {
    step_decision decision{2, 3.5e-4, 13, 17};
    auto message = caf::make_message(hybridiff::actors::metric_atom::value, std::int32_t{12}, 0.25, true);
    write_seed(dir, "message_metric", 0, message);
    write_seed(dir, "message_decision", 0, caf::make_message(decision));
    write_seed(dir, "decision", 1, decision);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  caf::binary_deserializer source{actor_system(), reinterpret_cast<const char*>(data) + 1, size - 1};
  if (data[0] % 2 == 0) {
    caf::message message;
    try {
      if (source(message)) return 0;  // rejected: the contract for bad bytes
    } catch (const std::runtime_error&) {
      return 0;  // CAF's config_value loader (see above)
    }
    using namespace hybridiff::actors;
    if (message.match_elements<metric_atom, std::int32_t, double, bool>() || message.match_elements<step_decision>() ||
        message.match_elements<phase_atom, std::int32_t>() || message.match_elements<reconfigure_atom, std::int32_t>() ||
        message.match_elements<lost_atom, std::int32_t>())
      (void)caf::deep_to_string(message);
  } else {
    step_decision decision;
    (void)source(decision);
  }
  return 0;
}
