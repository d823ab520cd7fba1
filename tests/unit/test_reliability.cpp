// Reliability helpers: the non-finite scan, the reliability options (--stall-warn,
// --stall-abort, --nan-policy) and the stall clock's description callback.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "mpsl/cli/parse.hpp"
#include "mpsl/comm/watchdog.hpp"
#include "mpsl/core/error.hpp"
#include "mpsl/core/finite.hpp"

namespace {

TEST(Finite, FindsTheFirstNanOrInfinityAnywhere) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> v(10000, 1.5f);
  EXPECT_EQ(mpsl::first_non_finite(v.data(), static_cast<int64_t>(v.size())), -1);
  EXPECT_EQ(mpsl::first_non_finite(v.data(), 0), -1);
  // Around the 4096-element chunk boundary, at both ends, and several at once.
  for (int64_t at : {0L, 1L, 4095L, 4096L, 4097L, 8191L, 9999L}) {
    for (float bad : {nan, inf, -inf, -nan}) {
      std::vector<float> w = v;
      w[at] = bad;
      EXPECT_EQ(mpsl::first_non_finite(w.data(), static_cast<int64_t>(w.size())), at) << at;
      w[9999] = nan;
      EXPECT_EQ(mpsl::first_non_finite(w.data(), static_cast<int64_t>(w.size())), at) << at;
    }
  }
  // Largest finite values, denormals and zeros are finite.
  std::vector<float> edge = {std::numeric_limits<float>::max(), -std::numeric_limits<float>::max(),
                             std::numeric_limits<float>::denorm_min(), 0.0f, -0.0f};
  EXPECT_TRUE(mpsl::all_finite(edge.data(), static_cast<int64_t>(edge.size())));
}

mpsl::cli::TrainOptions train_options(std::vector<std::string> extra) {
  std::vector<std::string> args = {"train", "--model", "fmnist-cnn", "--synthetic"};
  args.insert(args.end(), extra.begin(), extra.end());
  return mpsl::cli::parse_args(args).train;
}

TEST(ReliabilityOptions, DefaultsAndDurations) {
  const auto d = train_options({});
  EXPECT_EQ(d.stall_warn_seconds, 60);
  EXPECT_EQ(d.stall_abort_seconds, 0);
  EXPECT_EQ(d.nan_policy, "abort");
  EXPECT_EQ(train_options({"--stall-warn", "90s"}).stall_warn_seconds, 90);
  EXPECT_EQ(train_options({"--stall-warn", "off"}).stall_warn_seconds, 0);
  EXPECT_EQ(train_options({"--stall-abort", "2m"}).stall_abort_seconds, 120);
  EXPECT_EQ(train_options({"--stall-abort", "1.5h"}).stall_abort_seconds, 5400);
  EXPECT_EQ(train_options({"--stall-abort", "0.5"}).stall_abort_seconds, 0.5);
  EXPECT_EQ(train_options({"--nan-policy", "skip"}).nan_policy, "skip");
}

TEST(ReliabilityOptions, BadValuesNameTheOption) {
  for (std::vector<std::string> bad : {std::vector<std::string>{"--stall-warn", "soon"},
                                       {"--stall-warn", "-5"},
                                       {"--stall-abort", "10x"},
                                       {"--stall-abort", ""},
                                       {"--nan-policy", "ignore"}}) {
    try {
      train_options(bad);
      ADD_FAILURE() << "no InputError for " << bad[0] << " " << bad[1];
    } catch (const mpsl::InputError& e) {
      EXPECT_NE(std::string(e.what()).find(bad[0]), std::string::npos) << e.what();
    }
  }
}

TEST(StallClock, DescribesOnlyWhenAReportIsDue) {
  mpsl::comm::set_stall_settings({60, 0});
  int calls = 0;
  {
    mpsl::comm::StallClock clock([&] {
      ++calls;
      return std::string("nothing");
    });
    for (int i = 0; i < 1000; ++i) clock.check();  // a short wait: no description built
    EXPECT_LT(clock.seconds(), 0.25);
  }
  EXPECT_EQ(calls, 0);
  EXPECT_EQ(mpsl::comm::describe_rank(-1), "all ranks");
  mpsl::comm::set_role_map({"owner rank, owners {0}", "stage 1/1, units 1-7"}, 0);
  EXPECT_EQ(mpsl::comm::describe_rank(1), "rank 1 (stage 1/1, units 1-7)");
  EXPECT_EQ(mpsl::comm::describe_rank(5), "rank 5");
}

}  // namespace
