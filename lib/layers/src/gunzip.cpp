#include "gunzip.hpp"

#include <isa-l/crc.h>
#include <isa-l/igzip_lib.h>

#include <cstring>
#include <vector>

#include "img2vm/base/error.hpp"

namespace img2vm::layers {

namespace {

constexpr size_t kInBuf = 256 << 10;

// RFC 1952 header flags.
constexpr uint8_t kFhcrc = 0x02, kFextra = 0x04, kFname = 0x08, kFcomment = 0x10, kReserved = 0xe0;

std::string describe(int ret) {
  switch (ret) {
    case ISAL_INVALID_BLOCK:
      return "invalid deflate block";
    case ISAL_INVALID_SYMBOL:
      return "invalid deflate symbol";
    case ISAL_INVALID_LOOKBACK:
      return "back-reference before the start of the data";
    case ISAL_INCORRECT_CHECKSUM:
      return "the trailer's CRC-32 or length does not match the data";
    default:
      return "isa-l inflate error " + std::to_string(ret);
  }
}

// The member header, parsed here rather than by isa-l (whose header CRC check in 2.30 goes wrong
// when the header arrives in pieces). Fed any number of bytes at a time.
class HeaderParser {
 public:
  enum class Step { kMore, kDone };

  // Consumes header bytes from [p, p + n); returns how many were taken and whether it is complete.
  // Throws a plain message (the caller adds context) on a malformed header.
  std::pair<size_t, Step> feed(const uint8_t* p, size_t n) {
    size_t used = 0;
    while (used < n) {
      const uint8_t* s = p + used;
      const size_t avail = n - used;
      size_t take = 0;
      switch (part_) {
        case Part::kFixed:
        case Part::kXlen:
        case Part::kExtra:
        case Part::kHcrc: {
          take = std::min<size_t>(avail, want_ - have_);
          if (part_ == Part::kFixed || part_ == Part::kXlen || part_ == Part::kHcrc)
            std::memcpy(small_ + have_, s, take);
          break;
        }
        case Part::kName:
        case Part::kComment: {
          const void* z = std::memchr(s, 0, avail);
          take = z ? static_cast<size_t>(static_cast<const uint8_t*>(z) - s) + 1 : avail;
          if (!z) {
            crc_ = crc32_gzip_refl(crc_, s, take);
            used += take;
            continue;
          }
          have_ = want_ = 0;
          break;
        }
      }
      if (part_ != Part::kHcrc) crc_ = crc32_gzip_refl(crc_, s, take);
      used += take;
      have_ += take;
      if (have_ < want_) continue;
      if (next_part() == Step::kDone) return {used, Step::kDone};
    }
    return {used, Step::kMore};
  }

 private:
  enum class Part { kFixed, kXlen, kExtra, kName, kComment, kHcrc };

  // The current part is complete: checks it and moves to the next one present.
  Step next_part() {
    switch (part_) {
      case Part::kFixed:
        if (small_[0] != 0x1f || small_[1] != 0x8b) throw std::string("not gzip data (bad magic)");
        if (small_[2] != 8)
          throw "compression method " + std::to_string(small_[2]) + " is not deflate";
        flags_ = small_[3];
        if (flags_ & kReserved) throw std::string("reserved header flags are set");
        return after(Part::kFixed);
      case Part::kXlen:
        return start(Part::kExtra,
                     static_cast<size_t>(small_[0]) | (static_cast<size_t>(small_[1]) << 8));
      case Part::kExtra:
        return after(Part::kExtra);
      case Part::kName:
        return after(Part::kName);
      case Part::kComment:
        return after(Part::kComment);
      case Part::kHcrc: {
        const unsigned stored = small_[0] | (small_[1] << 8);
        if (stored != (crc_ & 0xffff))
          throw std::string("the header's CRC does not match the header");
        return Step::kDone;
      }
    }
    return Step::kDone;
  }
  // The part that follows `p`, given the flags.
  Step after(Part p) {
    if (p < Part::kXlen && (flags_ & kFextra)) return start(Part::kXlen, 2);
    if (p < Part::kName && (flags_ & kFname)) return start(Part::kName, 0);
    if (p < Part::kComment && (flags_ & kFcomment)) return start(Part::kComment, 0);
    if (p < Part::kHcrc && (flags_ & kFhcrc)) return start(Part::kHcrc, 2);
    return Step::kDone;
  }
  Step start(Part p, size_t want) {
    part_ = p;
    have_ = 0;
    want_ = want;
    // A zero-length extra field is complete at once.
    if (p == Part::kExtra && want == 0) return after(Part::kExtra);
    return Step::kMore;
  }

  Part part_ = Part::kFixed;
  size_t want_ = 10, have_ = 0;
  uint8_t small_[10] = {};
  uint8_t flags_ = 0;
  uint32_t crc_ = 0;
};

}  // namespace

struct GzipReader::State {
  ReadFn source;
  std::string what;
  inflate_state z;  // large (tens of KiB): lives on the heap with State
  std::vector<uint8_t> in = std::vector<uint8_t>(kInBuf);
  enum class Phase { kHeader, kBody, kEnded } phase = Phase::kHeader;
  HeaderParser header;
  bool source_done = false;
  uint64_t in_total = 0;
  uint64_t out_total = 0;
  unsigned members = 1;

  [[noreturn]] void corrupt(const std::string& why) const {
    throw Error(ErrorKind::kIntegrity, what + ": corrupt gzip stream: " + why +
                                           " (at compressed byte " +
                                           std::to_string(in_total - z.avail_in) + ")");
  }

  // Reads more input behind what is left; false at the end of the source.
  bool refill() {
    if (source_done) return false;
    size_t keep = z.avail_in;
    if (keep && z.next_in != in.data()) std::memmove(in.data(), z.next_in, keep);
    size_t got = source(in.data() + keep, in.size() - keep);
    if (got == 0) source_done = true;
    in_total += got;
    z.next_in = in.data();
    z.avail_in = static_cast<uint32_t>(keep + got);
    return got > 0;
  }

  void parse_header() {
    std::pair<size_t, HeaderParser::Step> r;
    try {
      r = header.feed(z.next_in, z.avail_in);
    } catch (const std::string& why) {
      corrupt(why);
    }
    z.next_in += r.first;
    z.avail_in -= static_cast<uint32_t>(r.first);
    if (r.second == HeaderParser::Step::kDone) {
      uint8_t* next = z.next_in;
      uint32_t avail = z.avail_in;
      isal_inflate_init(&z);
      z.crc_flag = ISAL_GZIP_NO_HDR_VER;  // raw deflate, then the trailer checked against it
      z.next_in = next;
      z.avail_in = avail;
      phase = Phase::kBody;
    }
  }

  // After a member's trailer: another member if one follows, else the end of the stream.
  void after_member() {
    while (z.avail_in < 2 && refill()) {
    }
    if (z.avail_in >= 2 && z.next_in[0] == 0x1f && z.next_in[1] == 0x8b) {
      header = HeaderParser();
      phase = Phase::kHeader;
      ++members;
    } else {
      phase = Phase::kEnded;
    }
  }
};

GzipReader::GzipReader(ReadFn source, std::string what) : s_(std::make_unique<State>()) {
  s_->source = std::move(source);
  s_->what = std::move(what);
  isal_inflate_init(&s_->z);
  s_->z.next_in = s_->in.data();
  s_->z.avail_in = 0;
}

GzipReader::~GzipReader() = default;

uint64_t GzipReader::bytes_in() const { return s_->in_total - s_->z.avail_in; }
uint64_t GzipReader::bytes_out() const { return s_->out_total; }
unsigned GzipReader::members() const { return s_->members; }

size_t GzipReader::read(void* buf, size_t n) {
  State& s = *s_;
  if (n == 0) return 0;
  if (n > (1u << 30)) n = 1u << 30;  // isa-l counts in 32 bits
  for (;;) {
    switch (s.phase) {
      case State::Phase::kEnded:
        return 0;
      case State::Phase::kHeader:
        if (s.z.avail_in == 0 && !s.refill())
          s.corrupt(s.in_total == 0 ? "empty input"
                                    : "truncated: the input ended inside a gzip header");
        s.parse_header();
        continue;
      case State::Phase::kBody:
        break;
    }
    if (s.z.block_state == ISAL_BLOCK_FINISH) {
      s.after_member();
      continue;
    }
    if (s.z.avail_in == 0 && !s.refill())
      s.corrupt("truncated: the input ended inside a gzip member");
    const uint32_t in_before = s.z.avail_in;
    s.z.next_out = static_cast<uint8_t*>(buf);
    s.z.avail_out = static_cast<uint32_t>(n);
    int ret = isal_inflate(&s.z);
    if (ret != ISAL_DECOMP_OK) s.corrupt(describe(ret));
    size_t produced = n - s.z.avail_out;
    s.out_total += produced;
    if (produced) return produced;
    if (s.z.block_state != ISAL_BLOCK_FINISH && s.z.avail_in != 0 && s.z.avail_in == in_before) {
      // Nothing taken and nothing made: isa-l wants more bytes behind the ones it has.
      if (in_before == s.in.size()) s.corrupt("no progress with a full input buffer");
      if (!s.refill()) s.corrupt("truncated: the input ended inside a gzip member");
    }
  }
}

}  // namespace img2vm::layers
