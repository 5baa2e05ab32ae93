// The image's runtime configuration as convert writes it to /.img2vm/config.json inside the
// rootfs and the guest init reads it back. See docs/guest-abi.md; bump kSchemaVersion on any
// incompatible change.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace img2vm::rootfs {

inline constexpr int kSchemaVersion = 1;
inline constexpr std::string_view kReservedDir = "/.img2vm";
inline constexpr std::string_view kConfigPath = "/.img2vm/config.json";
inline constexpr std::string_view kInitPath = "/.img2vm/init";

struct RuntimeConfig {
  std::vector<std::string> entrypoint;
  std::vector<std::string> cmd;
  std::vector<std::string> env;  // "KEY=VALUE", in image order
  std::string working_dir;       // empty: "/"
  std::string user;              // empty: root; else name, uid, uid:gid, name:group
  std::string stop_signal;       // empty: SIGTERM
  std::string hostname;          // empty: chosen at run time
  std::map<std::string, std::string> labels;

  friend bool operator==(const RuntimeConfig&, const RuntimeConfig&) = default;
};

// From the "config" object of an OCI/Docker image configuration blob (the whole blob's JSON
// text). Missing fields stay empty; wrong types are an Error naming the field.
RuntimeConfig runtime_config_from_image_config(std::string_view image_config_json);

std::string to_json(const RuntimeConfig& c);
// Throws Error(kInvalidArgument) naming the field at fault.
RuntimeConfig runtime_config_from_json(std::string_view json);

}  // namespace img2vm::rootfs
