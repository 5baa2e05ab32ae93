// Prefetcher: the stream read ahead on its own thread arrives whole and in order (the ring
// never hands out a chunk twice or overwrites one the reader holds), what the source throws
// arrives after the bytes before it, and a reader that stops early never hangs.
#include "prefetch.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <stdexcept>
#include <string>

using namespace img2vm::layers;

namespace {

// A deterministic stream of `size` bytes, handed out in pieces of varying length.
struct Source {
  explicit Source(size_t total) : size(total) {}
  size_t operator()(void* buf, size_t n) {
    size_t k = std::min({n, size - pos, 1 + (pos * 7919) % 70000});
    for (size_t i = 0; i < k; ++i) static_cast<char*>(buf)[i] = byte_at(pos + i);
    pos += k;
    return k;
  }
  static char byte_at(size_t i) { return static_cast<char>((i * 131) ^ (i >> 9)); }
  size_t size, pos = 0;
};

std::string drain(Prefetcher& p) {
  std::string out;
  for (std::string_view s = p.next(); !s.empty(); s = p.next()) out.append(s);
  return out;
}

TEST(Prefetcher, DeliversTheWholeStreamInOrder) {
  for (size_t size :
       {size_t{0}, size_t{1}, size_t{4096}, size_t{3} << 20, (size_t{5} << 20) + 17}) {
    for (size_t chunk : {size_t{1}, size_t{1000}, size_t{1} << 18}) {
      if (chunk == 1 && size > 4096) continue;
      Prefetcher p(Source(size), chunk, 3);
      std::string got = drain(p);
      ASSERT_EQ(got.size(), size) << "chunk " << chunk;
      for (size_t i = 0; i < size; ++i)
        ASSERT_EQ(got[i], Source::byte_at(i)) << "at " << i << " of " << size;
      EXPECT_TRUE(p.next().empty()) << "the end stays the end";
    }
  }
}

TEST(Prefetcher, AnErrorArrivesAfterTheBytesBeforeIt) {
  size_t produced = 0;
  Prefetcher p(
      [&](void* buf, size_t n) -> size_t {
        if (produced == 10000) throw std::runtime_error("blob damaged at 10000");
        size_t k = std::min<size_t>(n, std::min<size_t>(3000, 10000 - produced));
        std::memset(buf, 'x', k);
        produced += k;
        return k;
      },
      4096, 2);
  size_t got = 0;
  try {
    for (std::string_view s = p.next(); !s.empty(); s = p.next()) got += s.size();
    FAIL() << "the error was lost";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "blob damaged at 10000");
  }
  EXPECT_EQ(got, 10000u);
  EXPECT_THROW(p.next(), std::runtime_error) << "and stays";
}

TEST(Prefetcher, AReaderThatStopsEarlyStopsTheProducer) {
  // An endless source: the producer fills the ring and waits; destroying the Prefetcher with
  // the ring full (and a chunk still held) must stop it rather than hang.
  std::atomic<size_t> calls{0};
  {
    Prefetcher p(
        [&](void* buf, size_t n) {
          ++calls;
          std::memset(buf, 'y', n);
          return n;
        },
        1024, 2);
    EXPECT_EQ(p.next().size(), 1024u);
  }
  EXPECT_GE(calls.load(), 1u);
}

}  // namespace
