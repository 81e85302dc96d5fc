// The service's placement policies: how many workers the request at the head of the queue gets.
#include <gtest/gtest.h>

#include "actors/image_service.hpp"

namespace hybridiff {
namespace {

placement_view view(int free, int waiting, double demand, std::vector<int> sizes, int total = 2, int running = 0) {
  placement_view v;
  v.free_workers = free;
  v.waiting = waiting;
  v.running = running;
  v.total_workers = total;
  v.demand = demand;
  v.sizes = std::move(sizes);
  return v;
}

TEST(PlacementPolicy, AdaptiveSpreadsALoneRequestAndSharesUnderLoad) {
  auto adaptive = make_placement_policy("adaptive");
  EXPECT_EQ(adaptive->name(), "adaptive");
  EXPECT_EQ(adaptive->workers_for(view(2, 1, 1.0, {2, 1})), 2);           // idle, one request at a time: all workers
  EXPECT_EQ(adaptive->workers_for(view(2, 2, 1.0, {2, 1})), 1);           // two waiting: one each
  EXPECT_EQ(adaptive->workers_for(view(2, 1, 2.0, {2, 1})), 1);           // recently two at a time: a share, not all
  EXPECT_EQ(adaptive->workers_for(view(2, 1, 1.2, {2, 1})), 2);           // the demand has settled back
  EXPECT_EQ(adaptive->workers_for(view(0, 1, 1.0, {2, 1})), 0);           // nobody idle: wait
  EXPECT_EQ(adaptive->workers_for(view(2, 1, 1.0, {1})), 1);              // a request that only one worker can run
  EXPECT_EQ(adaptive->workers_for(view(4, 1, 2.0, {4, 2, 1}, 4)), 2);     // 4 workers, demand 2: a CFG pair
  EXPECT_EQ(adaptive->workers_for(view(3, 1, 1.0, {4, 2, 1}, 4, 1)), 2);  // 3 idle: the largest group that fits
}

TEST(PlacementPolicy, AdaptiveGoesByTheMeasuredStepTimesWithinItsShare) {
  auto adaptive = make_placement_policy("adaptive");
  auto measured = [](std::map<int, double> seconds, int free = 2, int waiting = 1, double demand = 1.0) {
    auto v = view(free, waiting, demand, {2, 1});
    v.step_seconds = std::move(seconds);
    return v;
  };
  EXPECT_EQ(adaptive->workers_for(measured({{2, 0.05}})), 1);                 // one worker not yet measured: tried once
  EXPECT_EQ(adaptive->workers_for(measured({{1, 0.09}})), 2);                 // nor two
  EXPECT_EQ(adaptive->workers_for(measured({{2, 0.054}, {1, 0.090}})), 2);    // spreading is faster (a CPU pool)
  EXPECT_EQ(adaptive->workers_for(measured({{2, 0.0302}, {1, 0.0286}})), 1);  // it is not (two workers, one GPU)
  EXPECT_EQ(adaptive->workers_for(measured({{2, 0.0300}, {1, 0.0312}})), 1);  // within 5 %: the smaller group
  EXPECT_EQ(adaptive->workers_for(measured({{2, 0.0300}, {1, 0.0320}})), 2);  // beyond 5 %
  EXPECT_EQ(adaptive->workers_for(measured({{2, 0.05}, {1, 0.09}}, 2, 2)), 1);  // under load the share decides
  EXPECT_EQ(adaptive->workers_for(measured({{2, 0.05}, {1, 0.09}}, 0)), 0);     // nobody idle: wait
  // Beyond the share: two workers that do more steps per worker-second than one (2 × 0.019 < 0.95 × 0.043).
  EXPECT_EQ(adaptive->workers_for(measured({{2, 0.019}, {1, 0.043}}, 2, 2)), 2);
  auto one_free = measured({{2, 0.019}, {1, 0.043}}, 1, 1);
  one_free.running = 1;
  EXPECT_EQ(adaptive->workers_for(one_free), 0);                                  // worth waiting for the busy worker
  EXPECT_EQ(adaptive->workers_for(measured({{2, 0.021}, {1, 0.043}}, 2, 2)), 1);  // 0.042: not 5 % better
}

TEST(PlacementPolicy, FixedPoliciesIgnoreTheLoad) {
  auto all = make_placement_policy("all"), one = make_placement_policy("one");
  EXPECT_EQ(all->workers_for(view(2, 5, 4.0, {2, 1})), 2);
  EXPECT_EQ(all->workers_for(view(1, 1, 1.0, {2, 1})), 0);  // waits for every worker
  EXPECT_EQ(all->workers_for(view(1, 1, 1.0, {1})), 1);     // its largest group is one worker
  EXPECT_EQ(one->workers_for(view(2, 1, 1.0, {2, 1})), 1);
  EXPECT_EQ(one->workers_for(view(0, 1, 1.0, {2, 1})), 0);
}

TEST(PlacementPolicy, AnUnknownNameIsAnInvalidOption) {
  try {
    make_placement_policy("fastest");
    FAIL() << "no error";
  } catch (const invalid_options& bad) {
    EXPECT_NE(std::string(bad.what()).find("adaptive, all or one"), std::string::npos) << bad.what();
  }
}

}  // namespace
}  // namespace hybridiff
