// Where convert puts the guest's files in the root filesystem and the init finds them
// (docs/guest-abi.md §1).
#pragma once

#include <string_view>

namespace img2vm::guestabi {

inline constexpr std::string_view kReservedDir = "/.img2vm";             // owned by img2vm, 0755
inline constexpr std::string_view kInitPath = "/.img2vm/init";           // the init, PID 1
inline constexpr std::string_view kConfigPath = "/.img2vm/config.json";  // to_json(RuntimeConfig)

}  // namespace img2vm::guestabi
