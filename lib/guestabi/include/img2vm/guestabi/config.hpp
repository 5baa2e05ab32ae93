// The two JSON documents of the guest contract (docs/guest-abi.md §1, §3): the image's runtime
// configuration, which convert writes to kConfigPath and the init reads back, and the per-run
// overrides the runner hands the init. Bump kSchemaVersion on any incompatible change: a reader
// refuses any other version.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace img2vm::guestabi {

inline constexpr int kSchemaVersion = 1;
// The most of config.json the init reads; a larger one is refused.
inline constexpr std::size_t kMaxConfigJson = 16u << 20;

// The image's runtime configuration as the init reads it from kConfigPath.
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
// text). Missing fields stay empty; wrong types throw Error naming the field.
RuntimeConfig runtime_config_from_image_config(std::string_view image_config_json);

// The most of an OCI runtime-spec config.json (a bundle's) the runner reads.
inline constexpr std::size_t kMaxOciConfigJson = 4u << 20;

// What the runner takes from an OCI runtime-spec bundle config (runtime-spec config.md, as
// `umoci unpack` writes it): root.path (as written: relative to the bundle or absolute; empty
// when absent) and the process as an image config: process.args as Cmd (the spec does not keep
// Entrypoint apart), process.env, process.cwd, process.user.uid and gid as "UID:GID", hostname.
struct OciBundleConfig {
  std::string root_path;
  RuntimeConfig config;

  friend bool operator==(const OciBundleConfig&, const OciBundleConfig&) = default;
};
// nullopt when `json` is no runtime spec (not a JSON object with a string "ociVersion"); throws
// Error naming the field when a field it reads has the wrong type or is out of range, or the
// text is larger than kMaxOciConfigJson.
std::optional<OciBundleConfig> oci_bundle_config(std::string_view json);

// config.json's text (every field present, "schema" first).
std::string to_json(const RuntimeConfig& c);
// Throws Error naming the field at fault (or the schema version).
RuntimeConfig runtime_config_from_json(std::string_view json);

// An IPv6 address of the guest's interface, with its prefix length (0-128).
struct NetAddress6 {
  std::string address;  // e.g. fd00:1::2
  unsigned prefix = 64;

  friend bool operator==(const NetAddress6&, const NetAddress6&) = default;
};
// A route the init adds besides the default IPv4 one: to destination/prefix (IPv4 or IPv6, the
// network's own address: no host bits set), through `gateway` (the same family) or, without
// one, on the link. The default IPv6 route is destination "::" and prefix 0.
struct NetRoute {
  std::string destination;  // e.g. 10.1.0.0 or fd00:2::
  unsigned prefix = 0;      // 0-32 or 0-128
  std::string gateway;      // empty: on the link

  friend bool operator==(const NetRoute&, const NetRoute&) = default;
};
inline constexpr std::size_t kMaxNetAddresses6 = 16;
inline constexpr std::size_t kMaxNetRoutes = 64;

// The guest's network interface, configured by the init before the workload starts (the
// runner picks the addresses). IPv4 dotted quads; IPv6 in any form inet_pton(3) reads.
struct NetConfig {
  std::string interface = "eth0";
  std::string address;   // e.g. 10.0.2.15
  unsigned prefix = 24;  // netmask length, 0-32
  std::string gateway;   // default route via this address; empty: none
  unsigned mtu = 0;      // 0: the driver's default; else 68-65535
  // The interface's MAC, set before the link goes up ("52:54:00:ab:cd:ef", a unicast address);
  // empty: the device's. A VM resumed from a snapshot gets its own this way (its driver read
  // the snapshot's MAC from the device when it booted).
  std::string mac;
  // A dual-stack network's IPv6 addresses (at most kMaxNetAddresses6), and the routes besides
  // the default IPv4 one (at most kMaxNetRoutes): what a container engine's namespace had.
  std::vector<NetAddress6> addresses6{};
  std::vector<NetRoute> routes{};

  friend bool operator==(const NetConfig&, const NetConfig&) = default;
};

// "aa:bb:cc:dd:ee:ff" (hex digits in either case) as its six bytes; nullopt for anything else,
// and for a multicast address (the low bit of the first byte), which no NIC can take as its own.
std::optional<std::array<uint8_t, 6>> parse_unicast_mac(std::string_view text);
// The six bytes as "aa:bb:cc:dd:ee:ff".
std::string format_mac(const std::array<uint8_t, 6>& mac);

// A file system the init mounts before the workload starts: a host directory shared through
// virtio-fs (run -v / --mount type=bind, and named volumes), a tmpfs (--tmpfs, --mount
// type=tmpfs), or a file: a copy of a host file the runner read (an OCI bind mount of a regular
// file, such as the engine's /etc/hosts), which the init writes to a tmpfs of its own and
// bind-mounts over the target. Mounted in the order given, after the image's own file systems
// (/proc, /dev...), each target created (root-owned, 0755, parents too; an empty file for a
// file) when missing.
struct MountSpec {
  enum class Type { kVirtiofs, kTmpfs, kFile };
  Type type = Type::kVirtiofs;
  std::string tag;            // virtiofs: the device's tag (1-36 bytes); empty otherwise
  std::string target;         // absolute, normalised path in the guest; never "/"
  bool readonly = false;      // MS_RDONLY (for virtio-fs the host side refuses writes as well)
  uint64_t size = 0;          // tmpfs: bytes, 0 for the kernel's default (half of RAM)
  uint32_t mode = 0;          // tmpfs: permission bits, 0 for docker's 01777; file: its bits
  uint32_t uid = 0, gid = 0;  // file: its owner
  std::string content{};      // file: its bytes, at most kMaxFileMountBytes

  friend bool operator==(const MountSpec&, const MountSpec&) = default;
};
inline constexpr std::size_t kMaxMounts = 64;
// A file mount's content, and all file mounts' together (they travel in the overrides).
inline constexpr std::size_t kMaxFileMountBytes = 1u << 20;
inline constexpr std::size_t kMaxFileMountsBytes = 4u << 20;
inline constexpr std::size_t kMaxFsTag = 36;  // virtio-fs: the tag field of the device's config

// A virtio-fs tag the init can mount and the kernel command line can carry: 1 to kMaxFsTag
// bytes, no blank, control character, comma or double quote (which the kernel's command line
// parser takes as quoting).
bool valid_fs_tag(std::string_view tag);

// Per-run overrides: the docker run options that change what runs. Absent optionals leave the
// image's value alone.
// A resource limit for the workload (OCI process.rlimits): its name as setrlimit(2)'s
// constants are spelt ("RLIMIT_NOFILE"), soft and hard (RLIM_INFINITY: UINT64_MAX).
struct Rlimit {
  std::string type;
  uint64_t soft = 0, hard = 0;
  friend bool operator==(const Rlimit&, const Rlimit&) = default;
};
inline constexpr std::size_t kMaxRlimits = 16;        // one per resource Linux has
inline constexpr std::size_t kMaxExtraGroups = 1024;  // additional gids of the workload
// RunOverrides::entropy: the host's random bytes for the guest's RNG, when present.
inline constexpr std::size_t kMinEntropyBytes = 16;
inline constexpr std::size_t kMaxEntropyBytes = 512;
// RunOverrides::realtime_ns: from 2000-01-01 to 2200-01-01 (UTC), nanoseconds since the epoch.
inline constexpr int64_t kMinRealtimeNs = 946'684'800'000'000'000;
inline constexpr int64_t kMaxRealtimeNs = 7'258'118'400'000'000'000;
// setrlimit(2)'s resource number for `type` ("RLIMIT_NOFILE", ...); nullopt for other names.
std::optional<int> rlimit_resource(std::string_view type);

struct RunOverrides {
  std::optional<std::vector<std::string>> entrypoint;  // --entrypoint: also clears the image Cmd
  std::optional<std::vector<std::string>> cmd;         // trailing `run IMAGE ARGS...`
  std::vector<std::string> env;                        // -e KEY=VALUE, applied in order
  std::optional<std::string> working_dir;              // -w (absolute)
  std::optional<std::string> user;                     // -u
  std::optional<std::string> hostname;                 // -h
  std::vector<std::string> dns;                        // nameservers for a generated resolv.conf
  bool tty = false;          // -t: the workload gets the console as its tty
  bool interactive = false;  // -i: stdin is the console (else /dev/null)
  // Detached runs: signals and stop requests come through the exec agent (vsock), so the init
  // does not poll the SIGNAL port (it still does with tty or interactive, whose resizes and
  // end of input only the port carries, and when the agent is not running).
  bool agent_signals = false;
  // OCI create/start: the workload's process is created (forked, signals reset) but waits for
  // the exec agent's "start" request before it execs; the init then marks kMarkWorkloadCreated
  // once the agent runs. Needs the agent (vsock).
  bool wait_for_start = false;
  std::optional<NetConfig> net;   // absent: loopback only
  std::vector<MountSpec> mounts;  // at most kMaxMounts, distinct targets; files bounded above
  // OCI process fields (img2vm-oci): gids added to the user's groups, limits set for the
  // workload after the init's own defaults, and PR_SET_NO_NEW_PRIVS before its exec.
  std::vector<uint32_t> extra_groups;  // at most kMaxExtraGroups
  std::vector<Rlimit> rlimits;         // at most kMaxRlimits, known types, soft <= hard
  bool no_new_privileges = false;
  // The image config itself, used instead of the root's kConfigPath: a root that is a host
  // directory (run --rootfs) gets its config from the runner, never from the directory.
  std::optional<RuntimeConfig> image;
  // Fresh for every run, applied first by the init, cold boots and snapshot restores alike
  // (docs/guest-abi.md §3): random bytes the guest's RNG takes in and credits (empty: none;
  // else kMinEntropyBytes to kMaxEntropyBytes), and the host's CLOCK_REALTIME when it wrote
  // these overrides, which becomes the guest's (kMinRealtimeNs to kMaxRealtimeNs).
  std::string entropy{};
  std::optional<int64_t> realtime_ns{};

  friend bool operator==(const RunOverrides&, const RunOverrides&) = default;
};

// Compact JSON holding only the fields that are set. Throws Error when a string is not UTF-8,
// a file mount's content is over kMaxFileMountBytes (all of them over kMaxFileMountsBytes), or
// entropy or realtime_ns is out of its bounds.
std::string to_json(const RunOverrides& o);
// Throws Error naming the field at fault (or the schema version).
RunOverrides run_overrides_from_json(std::string_view json);

// RFC 4648 section 5 alphabet, without padding; decoding accepts padding and throws Error on
// anything else.
std::string base64url_encode(std::string_view bytes);
// The bytes of base64url `text`; throws Error on a character outside the alphabet.
std::string base64url_decode(std::string_view text);

}  // namespace img2vm::guestabi
