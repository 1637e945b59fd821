// The same-host byte copy: plain below the streaming threshold, streaming stores at and above
// it. Every alignment of source and destination and every tail length must copy exactly, and
// nothing outside the destination range may change.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "src/core/stream_copy.hpp"
#include "transport/bulk_copy.hpp"

namespace {

using namespace moecomm;

TEST(BulkCopy, ExactAtEveryAlignmentAndTail) {
  const size_t threshold = streamCopyThreshold();
  ASSERT_GT(threshold, 0u) << "the default threshold streams from 2 MiB";
  std::mt19937 rng(21);
  std::vector<uint8_t> src(threshold + 4096);
  for (uint8_t& b : src) b = static_cast<uint8_t>(rng());
  std::vector<uint8_t> dst(threshold + 4096);
  for (size_t bytes : {size_t{0}, size_t{1}, size_t{63}, threshold - 1, threshold, threshold + 1,
                       threshold + 17, threshold + 64, threshold + 1000}) {
    for (size_t src_off : {0, 1, 8, 15}) {
      for (size_t dst_off : {0, 3, 16, 31}) {
        if (src_off + bytes > src.size() || dst_off + bytes + 16 > dst.size()) continue;
        std::fill(dst.begin(), dst.end(), 0xA5);
        bulkCopy(dst.data() + dst_off, src.data() + src_off, bytes);
        for (size_t i = 0; i < dst_off; ++i) ASSERT_EQ(dst[i], 0xA5) << "before, byte " << i;
        ASSERT_TRUE(std::equal(src.begin() + static_cast<long>(src_off),
                               src.begin() + static_cast<long>(src_off + bytes),
                               dst.begin() + static_cast<long>(dst_off)))
            << bytes << " bytes, src +" << src_off << ", dst +" << dst_off;
        for (size_t i = dst_off + bytes; i < dst.size(); ++i) {
          ASSERT_EQ(dst[i], 0xA5) << "after, byte " << i << " of a " << bytes << "-byte copy";
        }
      }
    }
  }
}

// The streaming copy behind dispatch's streamed outputs: the same exactness for row-sized copies.
TEST(BulkCopy, StreamedRowsAreExact) {
  std::mt19937 rng(23);
  std::vector<uint8_t> src(9000), dst(9100);
  for (uint8_t& b : src) b = static_cast<uint8_t>(rng());
  for (int64_t bytes : {0, 1, 15, 64, 100, 4096, 8191}) {
    for (size_t dst_off : {0, 8, 16, 33}) {
      std::fill(dst.begin(), dst.end(), 0x5A);
      streamCopy(dst.data() + dst_off, src.data() + 3, static_cast<size_t>(bytes));
      streamFence();
      ASSERT_TRUE(std::equal(src.begin() + 3, src.begin() + 3 + bytes,
                             dst.begin() + static_cast<long>(dst_off)))
          << bytes << " bytes at +" << dst_off;
      for (size_t i = dst_off + static_cast<size_t>(bytes); i < dst.size(); ++i) {
        ASSERT_EQ(dst[i], 0x5A) << "after, byte " << i;
      }
      for (size_t i = 0; i < dst_off; ++i) ASSERT_EQ(dst[i], 0x5A) << "before, byte " << i;
    }
  }
}

}  // namespace
