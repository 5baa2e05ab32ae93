#include "img2vm/init/fresh_inputs.hpp"

#include <fcntl.h>
#include <linux/random.h>
#include <sys/ioctl.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <ctime>

#include "img2vm/guestabi/config.hpp"
#include "img2vm/init/sys.hpp"

namespace img2vm::init {

namespace {

// struct rand_pool_info with room for the bytes (its buf is a flexible array).
struct EntropyInput {
  int entropy_count;  // bits credited
  int buf_size;       // bytes
  uint32_t buf[guestabi::kMaxEntropyBytes / sizeof(uint32_t)];
};
static_assert(offsetof(EntropyInput, buf) == offsetof(rand_pool_info, buf));

}  // namespace

void add_entropy(std::string_view bytes) {
  EntropyInput in{};
  const std::size_t n = std::min(bytes.size(), sizeof in.buf);
  std::memcpy(in.buf, bytes.data(), n);
  in.buf_size = static_cast<int>(n);
  in.entropy_count = static_cast<int>(n * 8);
  UniqueFd fd(::open("/dev/urandom", O_RDONLY | O_CLOEXEC));
  if (!fd) throw_errno("adding entropy: opening /dev/urandom");
  if (::ioctl(fd.get(), RNDADDENTROPY, &in) != 0) throw_errno("adding entropy: RNDADDENTROPY");
  if (::ioctl(fd.get(), RNDRESEEDCRNG) != 0) throw_errno("adding entropy: RNDRESEEDCRNG");
}

bool set_realtime(int64_t ns) {
  timespec now{};
  if (::clock_gettime(CLOCK_REALTIME, &now) == 0 &&
      int64_t{now.tv_sec} * 1'000'000'000 + now.tv_nsec >= ns)
    return false;  // a cold boot's clock, read at boot from the host: later than `ns` already
  const timespec ts{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
  if (::clock_settime(CLOCK_REALTIME, &ts) != 0) throw_errno("setting the clock");
  return true;
}

}  // namespace img2vm::init
