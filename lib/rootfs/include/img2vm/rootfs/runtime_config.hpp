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

// Per-run overrides, given by the runner to the guest init (docs/guest-abi.md): the docker
// run options that change what runs. Absent optionals leave the image's value alone.
inline constexpr std::string_view kRunParam = "img2vm.run";  // kernel command line key

// The guest's network interface, configured by the init before the workload starts (the
// runner picks the addresses; docs/guest-abi.md). IPv4 dotted quads.
struct NetConfig {
  std::string interface = "eth0";
  std::string address;   // e.g. 10.0.2.15
  unsigned prefix = 24;  // netmask length, 0-32
  std::string gateway;   // default route via this address; empty: none
  unsigned mtu = 0;      // 0: the driver's default; else 68-65535

  friend bool operator==(const NetConfig&, const NetConfig&) = default;
};

struct RunOverrides {
  std::optional<std::vector<std::string>> entrypoint;  // --entrypoint: also clears the image Cmd
  std::optional<std::vector<std::string>> cmd;         // trailing `run IMAGE ARGS...`
  std::vector<std::string> env;                        // -e KEY=VALUE, applied in order
  std::optional<std::string> working_dir;              // -w (absolute)
  std::optional<std::string> user;                     // -u
  std::optional<std::string> hostname;                 // -h
  std::vector<std::string> dns;                        // nameservers for a generated resolv.conf
  bool tty = false;                                    // -t: the workload gets the console as its tty
  bool interactive = false;                            // -i: stdin is the console (else /dev/null)
  std::optional<NetConfig> net;                        // absent: loopback only

  friend bool operator==(const RunOverrides&, const RunOverrides&) = default;
};

std::string to_json(const RunOverrides& o);
// Throws Error(kInvalidArgument) naming the field at fault.
RunOverrides run_overrides_from_json(std::string_view json);

// RFC 4648 section 5 alphabet, without padding; decoding accepts padding and throws
// Error(kInvalidArgument) on anything else.
std::string base64url_encode(std::string_view bytes);
std::string base64url_decode(std::string_view text);

// "img2vm.run=<base64url of to_json(o)>", for the kernel command line. The kernel limits the
// whole command line to 2048 bytes on x86: a runner whose overrides do not fit passes
// "img2vm.run=blk:/dev/vdX" instead and attaches a raw block device holding the JSON text,
// padded with NUL bytes.
std::string run_overrides_kernel_param(const RunOverrides& o);

}  // namespace img2vm::rootfs
