#include "unzstd.hpp"

#include <zstd.h>
#include <zstd_errors.h>

#include <vector>

#include "img2vm/base/error.hpp"

namespace img2vm::layers {

namespace {

struct FreeDctx {
  void operator()(ZSTD_DCtx* d) const { ZSTD_freeDCtx(d); }
};

}  // namespace

struct ZstdReader::State {
  ReadFn source;
  std::string what;
  std::unique_ptr<ZSTD_DCtx, FreeDctx> dctx{ZSTD_createDCtx()};
  std::vector<char> in = std::vector<char>(ZSTD_DStreamInSize());
  ZSTD_inBuffer ib{nullptr, 0, 0};
  bool source_done = false;
  bool in_frame = false;  // a frame has begun and is not complete yet
  bool ended = false;
  uint64_t in_total = 0;
  uint64_t out_total = 0;

  [[noreturn]] void corrupt(const std::string& why) const {
    throw Error(ErrorKind::kIntegrity, what + ": corrupt zstd stream: " + why +
                                           " (at compressed byte " +
                                           std::to_string(in_total - (ib.size - ib.pos)) + ")");
  }

  // Reads more input once the buffer is used up (source_done at the end of the source).
  void refill() {
    size_t got = source(in.data(), in.size());
    if (got == 0) source_done = true;
    in_total += got;
    ib = {in.data(), got, 0};
  }
};

ZstdReader::ZstdReader(ReadFn source, std::string what) : s_(std::make_unique<State>()) {
  s_->source = std::move(source);
  s_->what = std::move(what);
  if (!s_->dctx) throw Error(ErrorKind::kInternal, s_->what + ": ZSTD_createDCtx failed");
  size_t r = ZSTD_DCtx_setParameter(s_->dctx.get(), ZSTD_d_windowLogMax, kMaxWindowLog);
  if (ZSTD_isError(r))
    throw Error(ErrorKind::kInternal, s_->what + ": zstd: " + ZSTD_getErrorName(r));
}

ZstdReader::~ZstdReader() = default;

uint64_t ZstdReader::bytes_in() const { return s_->in_total - (s_->ib.size - s_->ib.pos); }
uint64_t ZstdReader::bytes_out() const { return s_->out_total; }

size_t ZstdReader::read(void* buf, size_t n) {
  State& s = *s_;
  if (n == 0 || s.ended) return 0;
  ZSTD_outBuffer out{buf, n, 0};
  for (;;) {
    if (s.ib.pos == s.ib.size && !s.source_done) s.refill();
    const bool at_end = s.ib.pos == s.ib.size && s.source_done;
    if (at_end && !s.in_frame) {
      if (s.in_total == 0) s.corrupt("empty input");
      s.ended = true;
      return 0;
    }
    const size_t in_before = s.ib.pos;
    size_t r = ZSTD_decompressStream(s.dctx.get(), &out, &s.ib);
    if (ZSTD_isError(r)) {
      if (ZSTD_getErrorCode(r) == ZSTD_error_frameParameter_windowTooLarge)
        s.corrupt("a frame needs a window larger than " +
                  std::to_string((1u << kMaxWindowLog) >> 20) +
                  " MiB (made with zstd --long?), more than img2vm decodes");
      s.corrupt(ZSTD_getErrorName(r));
    }
    if (r == 0)
      s.in_frame = false;  // a frame is complete and flushed; another may follow
    else if (s.ib.pos > in_before)
      s.in_frame = true;
    if (out.pos > 0) {
      s.out_total += out.pos;
      return out.pos;
    }
    if (at_end) s.corrupt("truncated: the input ended inside a zstd frame");
  }
}

}  // namespace img2vm::layers
