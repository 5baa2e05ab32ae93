// What the guest contract's functions throw: input (JSON, a kernel parameter, an overrides disk)
// that does not follow the contract. The message is one line naming the document and the field;
// host callers wrap it in img2vm::Error with their context, the init reports it as it is.
#pragma once

#include <stdexcept>
#include <string>

namespace img2vm::guestabi {

// What the guest contract's parsers throw: one line naming the bad field or value.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace img2vm::guestabi
