// A snapshot's state file is read back from disk, where anything may have happened to it: the
// parser must never crash, what it accepts must come back the same when written again, and
// the VMM's own devices must take or refuse any saved state without harm.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "i8042.hpp"
#include "img2vm/base/error.hpp"
#include "snapshot_file.hpp"
#include "uart.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace img2vm::vm;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  try {
    SnapshotState st = SnapshotState::parse(in);
    SnapshotWriter w;
    for (const auto& e : st.entries()) w.add(e.section, e.instance, e.payload);
    SnapshotState again = SnapshotState::parse(w.serialize());
    auto a = st.entries(), b = again.entries();
    if (a.size() != b.size()) __builtin_trap();
    for (size_t i = 0; i < a.size(); ++i)
      if (a[i].section != b[i].section || a[i].instance != b[i].instance ||
          !std::equal(a[i].payload.begin(), a[i].payload.end(), b[i].payload.begin(),
                      b[i].payload.end()))
        __builtin_trap();
    try {
      (void)st.get_struct<SnapshotMachine>(Section::kMachine, 0);
      (void)st.get_array<SnapshotMsr>(Section::kMsrs, 0, 1024);
    } catch (const img2vm::Error&) {
    }
    try {
      Uart8250 uart([](uint8_t) {}, [](bool) {});
      uart.load(st.get_struct<Uart8250::State>(Section::kUart, 0));
      for (uint16_t r = 0; r < 8; ++r) (void)uart.read(r);
    } catch (const img2vm::Error&) {
    }
    try {
      I8042 kbd;
      kbd.load(st.get_struct<I8042::State>(Section::kI8042, 0));
      for (int i = 0; i < 20; ++i) (void)kbd.read(0x60);
    } catch (const img2vm::Error&) {
    }
  } catch (const img2vm::Error&) {
  }
  return 0;
}
