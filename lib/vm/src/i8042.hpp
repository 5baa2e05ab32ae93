// The bit of an i8042 keyboard controller a Linux guest uses: the self-test and command-byte
// handshakes of its probe, and command 0xfe (pulse the reset line), which ends the VM as a
// reboot. No keyboard or mouse behind it.
#pragma once

#include <cstdint>
#include <deque>

namespace img2vm::vm {

class I8042 {
 public:
  // `port` is 0x60 or 0x64.
  uint8_t read(uint16_t port);
  // Returns true when the guest asked for a reset.
  bool write(uint16_t port, uint8_t value);

  // For a snapshot: the bytes waiting to be read (at most 16), the command byte, a pending command.
  struct State {
    uint8_t command_byte, pending, out_len, reserved;
    uint8_t out[16];
  };
  State save() const;
  void load(const State& s);  // throws Error for a state save() cannot give

 private:
  std::deque<uint8_t> out_;
  uint8_t command_byte_ = 0x45;  // keyboard interrupt on, system flag, translation
  uint8_t pending_ = 0;          // a command waiting for its data byte
};

}  // namespace img2vm::vm
