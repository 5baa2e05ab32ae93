#pragma once

#include <string_view>

namespace img2vm {
// The project's version, e.g. "0.1.0".
std::string_view version() noexcept;
}  // namespace img2vm
