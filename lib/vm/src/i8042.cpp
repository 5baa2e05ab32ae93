#include "i8042.hpp"

#include <algorithm>

#include "img2vm/base/error.hpp"

namespace img2vm::vm {

uint8_t I8042::read(uint16_t port) {
  if (port == 0x64) return uint8_t(0x04 | (out_.empty() ? 0 : 0x01));  // system flag | OBF
  if (out_.empty()) return 0;
  uint8_t v = out_.front();
  out_.pop_front();
  return v;
}

bool I8042::write(uint16_t port, uint8_t value) {
  if (port == 0x64) {
    pending_ = 0;
    switch (value) {
      case 0xfe:
        return true;  // pulse reset
      case 0x20:
        out_.push_back(command_byte_);
        break;  // read command byte
      case 0x60:
      case 0xd1:
      case 0xd2:
      case 0xd3:
      case 0xd4:
        pending_ = value;
        break;
      case 0xaa:
        out_.push_back(0x55);
        break;  // controller self-test passed
      case 0xab:
        out_.push_back(0x00);
        break;  // keyboard interface test passed
      default:
        break;
    }
    if (out_.size() > 16) out_.pop_front();
    return false;
  }
  if (pending_ == 0x60) command_byte_ = value;
  if (pending_ == 0xd1 && !(value & 1)) {  // output port write clearing the reset line
    pending_ = 0;
    return true;
  }
  pending_ = 0;
  return false;
}

I8042::State I8042::save() const {
  State s{};
  s.command_byte = command_byte_;
  s.pending = pending_;
  s.out_len = uint8_t(out_.size());
  std::copy(out_.begin(), out_.end(), s.out);
  return s;
}

void I8042::load(const State& s) {
  if (s.out_len > sizeof s.out)
    throw Error(ErrorKind::kIntegrity, "snapshot: the i8042's saved queue is too long");
  command_byte_ = s.command_byte;
  pending_ = s.pending;
  out_.assign(s.out, s.out + s.out_len);
}

}  // namespace img2vm::vm
