// The pieces of a multi-process run that one process can check: every message that crosses processes survives
// CAF's binary serialisation (CAF 0.17 turns an unregistered type into an empty message across nodes), and the
// CPU tensor link carries tensors byte for byte inside the message and names what does not fit.
#include <chrono>
#include <optional>

#include <caf/all.hpp>
#include <caf/io/all.hpp>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "actors/cluster.hpp"
#include "models/errors.hpp"

namespace hybridiff::actors {
namespace {

using runtime::tensor_meta;

struct cluster_system {
  caf::actor_system_config config;
  std::unique_ptr<caf::actor_system> system;
  cluster_system() {
    configure_cluster(config);
    system = std::make_unique<caf::actor_system>(config);
  }
};

caf::message round_trip(caf::actor_system& system, const caf::message& message) {
  std::vector<char> bytes;
  caf::binary_serializer sink{system, bytes};
  if (auto failure = sink(message)) throw std::runtime_error(system.render(failure));
  caf::message copy;
  caf::binary_deserializer source{system, bytes};
  if (auto failure = source(copy)) throw std::runtime_error(system.render(failure));
  return copy;
}

bool same(const tensor_meta& a, const tensor_meta& b) {
  return a.name == b.name && a.dtype == b.dtype && a.shape == b.shape && a.channels_last == b.channels_last;
}

TEST(ClusterMessages, EveryMessageThatCrossesProcessesSurvivesSerialisation) {
  cluster_system cluster;
  auto& system = *cluster.system;
  tensor_parcel parcel;
  parcel.metas = {{"latents", static_cast<std::int32_t>(torch::kHalf), {2, 4, 128, 128}},
                  {"peer:down_blocks.1:0", static_cast<std::int32_t>(torch::kFloat), {1, 640, 64, 64}, true},
                  {"conditioning.pooled", -1, {}}};
  parcel.bytes = std::string("\0\x01\xff bytes", 9);  // any bytes, zeros included
  auto step = round_trip(system, caf::make_message(call_atom::value, std::int32_t{2}, std::int32_t{17}, parcel));
  ASSERT_TRUE((step.match_elements<call_atom, std::int32_t, std::int32_t, tensor_parcel>()));
  EXPECT_EQ(step.get_as<std::int32_t>(1), 2);
  EXPECT_EQ(step.get_as<std::int32_t>(2), 17);
  const auto& back = step.get_as<tensor_parcel>(3);
  ASSERT_EQ(back.metas.size(), parcel.metas.size());
  for (std::size_t i = 0; i < parcel.metas.size(); ++i)
    EXPECT_TRUE(same(back.metas[i], parcel.metas[i])) << parcel.metas[i].name;
  EXPECT_EQ(back.bytes, parcel.bytes);

  auto answer = round_trip(system, caf::make_message(std::int32_t{1}, 31.5, parcel));
  ASSERT_TRUE((answer.match_elements<std::int32_t, double, tensor_parcel>()));
  EXPECT_EQ(answer.get_as<double>(1), 31.5);

  auto prepare = round_trip(system, caf::make_message(prepare_atom::value, parcel));
  EXPECT_TRUE((prepare.match_elements<prepare_atom, tensor_parcel>()));

  const std::vector<std::string> window = {"down_blocks.0", "down_blocks.1"}, branch = {"mid_block"};
  auto assign = round_trip(system, caf::make_message(assign_atom::value, window, branch, true));
  ASSERT_TRUE((assign.match_elements<assign_atom, std::vector<std::string>, std::vector<std::string>, bool>()));
  EXPECT_TRUE(assign.get_as<bool>(3));
  EXPECT_EQ(assign.get_as<std::vector<std::string>>(1), window);
  EXPECT_EQ(assign.get_as<std::vector<std::string>>(2), branch);

  auto reconfigure = round_trip(system, caf::make_message(reconfigure_atom::value, std::int32_t{1}));
  EXPECT_TRUE((reconfigure.match_elements<reconfigure_atom, std::int32_t>()));

  const std::vector<char> offer = {1, 0, -3, 127};  // an ncclUniqueId's bytes, any value
  auto offered = round_trip(system, caf::make_message(offer));
  ASSERT_TRUE(offered.match_elements<std::vector<char>>());
  EXPECT_EQ(offered.get_as<std::vector<char>>(0), offer);

  auto someone = system.spawn([] { return caf::behavior{[](int) {}}; });
  auto registration =
      round_trip(system, caf::make_message(register_atom::value, std::int32_t{3}, std::string("cpu"), someone));
  ASSERT_TRUE((registration.match_elements<register_atom, std::int32_t, std::string, caf::actor>()));
  EXPECT_EQ(registration.get_as<caf::actor>(3), someone);
  caf::anon_send_exit(someone, caf::exit_reason::user_shutdown);

  EXPECT_TRUE(round_trip(system, caf::make_message(done_atom::value)).match_elements<done_atom>());
  // What registration prevents: a type CAF does not know (rank 0's local missing-ranks answer, which never leaves
  // its process) arrives as something else.
  auto unregistered = round_trip(system, caf::make_message(std::vector<std::int32_t>{1, 2}));
  EXPECT_FALSE(unregistered.match_elements<std::vector<std::int32_t>>());
}

// The two ends of a cpu link, as rank 0 and rank 1 open them.
struct cpu_link_pair {
  std::unique_ptr<runtime::link_factory> zero, one;
  std::unique_ptr<runtime::tensor_link> zero_to_one, one_to_zero;
  cpu_link_pair() {
    runtime::process_placement rank0, rank1;
    rank0.world_size = rank1.world_size = 2;
    rank1.rank = 1;
    zero = runtime::make_link_factory(runtime::transport_kind::cpu, rank0, c10::kCPU, std::chrono::seconds(10));
    one = runtime::make_link_factory(runtime::transport_kind::cpu, rank1, c10::kCPU, std::chrono::seconds(10));
    const auto offer = zero->offer(1);
    zero_to_one = zero->open(1, offer);
    one_to_zero = one->open(0, offer);
  }
};

TEST(CpuTensorLink, CarriesTensorsByteForByteInTheMessage) {
  cpu_link_pair pair;
  torch::manual_seed(0);
  std::vector<at::Tensor> sent = {torch::randn({2, 4, 8, 8}), at::Tensor(), torch::randn({3}).to(torch::kHalf),
                                  torch::arange(5, torch::kLong), torch::randn({4, 6}).t(),  // not contiguous
                                  torch::randn({2, 16, 3, 5}).contiguous(at::MemoryFormat::ChannelsLast)};
  tensor_parcel parcel;
  for (std::size_t i = 0; i < sent.size(); ++i)
    parcel.metas.push_back(runtime::describe_tensor("t" + std::to_string(i), sent[i]));
  parcel.bytes = pair.zero_to_one->send(sent);
  // What CAF delivers to the other process: the message serialised and read back.
  cluster_system cluster;
  const auto delivered = round_trip(*cluster.system, caf::make_message(parcel)).get_as<tensor_parcel>(0);
  auto received = pair.one_to_zero->receive(delivered.metas, delivered.bytes, c10::kCPU);
  ASSERT_EQ(received.size(), sent.size());
  EXPECT_FALSE(received[1].defined());
  for (std::size_t i : {0u, 2u, 3u, 4u, 5u}) {
    EXPECT_EQ(received[i].scalar_type(), sent[i].scalar_type()) << i;
    EXPECT_TRUE(torch::equal(received[i], sent[i])) << i;
  }
  // A channels-last tensor travels and arrives in its own layout (a channels-last UNet's activations).
  EXPECT_TRUE(parcel.metas[5].channels_last);
  EXPECT_FALSE(parcel.metas[0].channels_last);
  EXPECT_TRUE(received[5].is_contiguous(at::MemoryFormat::ChannelsLast));
  EXPECT_TRUE(received[0].is_contiguous());
  // The other direction; nothing defined travels as no bytes.
  const auto two = runtime::describe_tensor("two", torch::ones({2}));
  auto back = pair.zero_to_one->receive({two}, pair.one_to_zero->send({torch::full({2}, 2.0)}), c10::kCPU);
  EXPECT_TRUE(torch::equal(back[0], torch::full({2}, 2.0)));
  EXPECT_TRUE(pair.one_to_zero->send({at::Tensor()}).empty());
}

TEST(CpuTensorLink, BytesThatDoNotFitTheDescriptionsAreAnErrorNamingThem) {
  cpu_link_pair pair;
  const auto bytes = pair.zero_to_one->send({torch::ones({3})});
  try {
    pair.one_to_zero->receive({runtime::describe_tensor("latents", torch::ones({4}))}, bytes, c10::kCPU);
    FAIL() << "no error";
  } catch (const error& problem) {
    EXPECT_NE(std::string(problem.what())
                  .find("cpu link to rank 0: tensor 'latents' arrived with 12 bytes, their descriptions need 16"),
              std::string::npos)
        << problem.what();
  }
}

TEST(CpuTensorLink, MoreBytesThanACafMessageCarriesAreAnError) {
  cpu_link_pair pair;
  const auto four_gib = torch::empty({std::int64_t{1} << 32}, torch::kUInt8);  // never written: no memory is touched
  try {
    pair.zero_to_one->send({four_gib});
    FAIL() << "no error";
  } catch (const error& problem) {
    EXPECT_NE(std::string(problem.what())
                  .find("cpu link to rank 1: 4294967296 bytes in one message, more than a CAF message can carry"),
              std::string::npos)
        << problem.what();
    EXPECT_NE(std::string(problem.what()).find("use the nccl transport"), std::string::npos) << problem.what();
  }
}

// CAF's spawn leaves the spawning thread holding the system's logger, and the system's destructor waits for the
// logger's end: a process_run whose caller spawned actors (and asked them through a scoped actor) still ends at once.
// Without its end dropping the caller's reference, the destructor, on a thread of its own, waits out the grace.
TEST(ProcessRun, EndsAtOnceAfterItsCallerSpawnedActors) {
  cluster_options options;
  options.shutdown_grace = std::chrono::seconds(20);
  std::optional<process_run> run;
  run.emplace(runtime::process_placement{}, options);
  {
    auto doubler = run->system().spawn([]() -> caf::behavior { return {[](int x) { return 2 * x; }}; });
    auto detached = run->system().spawn<caf::detached>([]() -> caf::behavior { return {[](int x) { return x; }}; });
    caf::scoped_actor self{run->system()};
    int answer = 0;
    self->request(doubler, std::chrono::seconds(10), 21).receive([&](int x) { answer = x; }, [](caf::error&) {});
    EXPECT_EQ(answer, 42);
    self->send_exit(doubler, caf::exit_reason::user_shutdown);
    self->send_exit(detached, caf::exit_reason::user_shutdown);
  }
  const auto ending_began = std::chrono::steady_clock::now();
  run.reset();
  const auto ending_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - ending_began).count();
  EXPECT_LT(ending_ms, 10000);
}

// CAF 0.17.6's actor system can wait forever at its end for the thread of a detached actor that has quit. Here a
// handle kept to such an actor makes the system's destructor wait the same way: the process_run's end goes on after
// its grace period, says so, and the system finishes on its own thread once the handle is dropped.
TEST(ProcessRun, AnActorSystemThatDoesNotShutDownIsLeftBehind) {
  cluster_options options;
  options.shutdown_grace = std::chrono::milliseconds(300);
  caf::actor kept;
  const auto started = std::chrono::steady_clock::now();
  {
    process_run run(runtime::process_placement{}, options);
    kept = run.system().spawn<caf::detached>([]() -> caf::behavior { return {[](int x) { return x; }}; });
    caf::anon_send_exit(kept, caf::exit_reason::user_shutdown);
  }
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(30));
  EXPECT_TRUE(actor_system_abandoned());
  kept = nullptr;
}

TEST(Transport, NamesAreCheckedAgainstTheDevice) {
  EXPECT_EQ(runtime::parse_transport("auto", c10::kCPU), runtime::transport_kind::cpu);
  EXPECT_EQ(runtime::parse_transport("cpu", c10::kCPU), runtime::transport_kind::cpu);
  EXPECT_THROW(runtime::parse_transport("nccl", c10::kCPU), error);
  EXPECT_THROW(runtime::parse_transport("tcp", c10::kCPU), error);
}

}  // namespace
}  // namespace hybridiff::actors
