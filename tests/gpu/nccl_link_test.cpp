// The NCCL transport between two GPUs of this machine: rank 0 and rank 1 of a two-process run, played by two
// threads of one process (NCCL refuses two ranks of one communicator on the same GPU, so this needs 2 GPUs).
#include <future>
#include <thread>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "models/errors.hpp"
#include "runtime/tensor_link.hpp"

namespace hybridiff::runtime {
namespace {

#ifdef HYBRIDIFF_WITH_CUDA
TEST(NcclLink, CarriesTensorsBetweenTwoGpusInOrder) {
  if (torch::cuda::device_count() < 2) GTEST_SKIP() << "needs 2 GPUs";
  process_placement rank0, rank1;
  rank0.world_size = rank1.world_size = 2;
  rank1.rank = 1;
  const c10::Device gpu0(c10::kCUDA, 0), gpu1(c10::kCUDA, 1);
  auto zero = make_link_factory(transport_kind::nccl, rank0, gpu0, std::chrono::seconds(60));
  auto one = make_link_factory(transport_kind::nccl, rank1, gpu1, std::chrono::seconds(60));
  const auto offer = zero->offer(1);
  // Opening is collective: both sides at once.
  auto other_side = std::async(std::launch::async, [&] { return one->open(0, offer); });
  auto zero_to_one = zero->open(1, offer);
  auto one_to_zero = other_side.get();

  torch::manual_seed(0);
  std::vector<at::Tensor> sent = {torch::randn({2, 4, 128, 128}, gpu0).to(torch::kHalf), at::Tensor(),
                                  torch::randn({1, 640, 64, 64}, gpu0), torch::randn({3, 5}, gpu0).t(),
                                  torch::randn({2, 320, 16, 16}, gpu0).contiguous(at::MemoryFormat::ChannelsLast)};
  std::vector<tensor_meta> metas;
  for (std::size_t i = 0; i < sent.size(); ++i) metas.push_back(describe_tensor("t" + std::to_string(i), sent[i]));
  const auto carried = zero_to_one->send(sent);
  EXPECT_TRUE(carried.empty());  // NCCL carries the data, the message only the descriptions
  auto received = one_to_zero->receive(metas, carried, gpu1);
  ASSERT_EQ(received.size(), sent.size());
  EXPECT_FALSE(received[1].defined());
  for (std::size_t i : {0u, 2u, 3u, 4u}) {
    EXPECT_EQ(received[i].device(), gpu1);
    EXPECT_TRUE(torch::equal(received[i].cpu(), sent[i].cpu())) << i;
  }
  EXPECT_TRUE(received[4].is_contiguous(at::MemoryFormat::ChannelsLast));
  // Back, and a receive that lands on the CPU.
  auto back = zero_to_one->receive({metas[2]}, one_to_zero->send({received[2] * 2}), c10::kCPU);
  EXPECT_TRUE(torch::equal(back[0], (sent[2] * 2).cpu()));
}

TEST(NcclLink, APeerThatNeverJoinsIsATimeout) {
  if (torch::cuda::device_count() < 1) GTEST_SKIP() << "needs a GPU";
  process_placement rank0;
  rank0.world_size = 2;
  auto zero = make_link_factory(transport_kind::nccl, rank0, c10::Device(c10::kCUDA, 0), std::chrono::seconds(2));
  EXPECT_THROW(zero->open(1, zero->offer(1)), error);
}
#endif

}  // namespace
}  // namespace hybridiff::runtime
