#include "img2vm/base/version.hpp"

namespace img2vm {
std::string_view version() noexcept { return IMG2VM_VERSION; }
}  // namespace img2vm
