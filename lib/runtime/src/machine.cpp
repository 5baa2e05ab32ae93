#include "img2vm/runtime/machine.hpp"

#include <arpa/inet.h>
#include <sys/random.h>

#include <algorithm>
#include <cerrno>
#include <ctime>
#include <nlohmann/json.hpp>
#include <sstream>

#include "img2vm/base/ascii.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/guestabi/cmdline.hpp"
#include "img2vm/guestabi/error.hpp"
#include "img2vm/guestabi/overrides_disk.hpp"
#include "img2vm/runtime/rootfs.hpp"
#include "img2vm/runtime/vmm.hpp"
#include "img2vm/vm/disk_view.hpp"
#include "img2vm/vm/net_slirp.hpp"

namespace img2vm::runtime {

namespace fs = std::filesystem;

namespace {

constexpr size_t kEntropyBytes = 32;

std::string random_bytes(size_t n) {
  std::string b(n, '\0');
  size_t got = 0;
  while (got < n) {
    ssize_t r = ::getrandom(b.data() + got, n - got, 0);
    if (r < 0 && errno != EINTR) throw_errno("getrandom");
    if (r > 0) got += static_cast<size_t>(r);
  }
  return b;
}

// A MAC of the VM's own (qemu's locally administered 52:54:00 prefix and three random bytes): VMs
// on one host, and VMs resumed from one snapshot, are told apart by it.
std::array<uint8_t, 6> fresh_mac() {
  std::string r = random_bytes(3);
  return {0x52, 0x54, 0x00, uint8_t(r[0]), uint8_t(r[1]), uint8_t(r[2])};
}

int64_t realtime_ns() {
  struct timespec ts {};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

unsigned parse_port_number(const std::string& what, const std::string& text) {
  if (text.empty() || text.size() > 5 || text.find_first_not_of("0123456789") != std::string::npos)
    throw Error(ErrorKind::kInvalidArgument, what + ": \"" + text + "\" is not a port number");
  unsigned v = static_cast<unsigned>(std::stoul(text));
  if (v < 1 || v > 65535)
    throw Error(ErrorKind::kInvalidArgument, what + ": port " + text + " is not in 1-65535");
  return v;
}

}  // namespace

std::vector<std::string> tap_guest_dns(const std::string& resolv_conf) {
  std::vector<std::string> out;
  std::istringstream in(resolv_conf);
  for (std::string line; std::getline(in, line);) {
    std::istringstream words(line);
    std::string key, addr;
    words >> key >> addr;
    if (key != "nameserver") continue;
    in_addr a{};
    if (::inet_pton(AF_INET, addr.c_str(), &a) != 1) continue;  // IPv6 (the guest has none) or junk
    if ((ntohl(a.s_addr) >> 24) == 127) continue;
    if (std::find(out.begin(), out.end(), addr) == out.end()) out.push_back(addr);
  }
  if (out.empty()) out = {"8.8.8.8", "8.8.4.4"};
  return out;
}

std::vector<std::string> parse_exposed_ports(const std::vector<std::string>& specs,
                                             const std::string& what) {
  std::vector<std::string> out;
  for (const auto& spec : specs) {
    std::string ports = spec, proto = "tcp";
    if (auto slash = spec.find('/'); slash != std::string::npos) {
      ports = spec.substr(0, slash);
      proto = ascii_lower(spec.substr(slash + 1));
    }
    if (proto != "tcp" && proto != "udp")
      throw Error(ErrorKind::kInvalidArgument,
                  what + " " + spec + ": protocol \"" + proto + "\" is not tcp or udp");
    unsigned lo = 0, hi = 0;
    if (auto dash = ports.find('-'); dash != std::string::npos) {
      lo = parse_port_number(what + " " + spec, ports.substr(0, dash));
      hi = parse_port_number(what + " " + spec, ports.substr(dash + 1));
      if (hi < lo)
        throw Error(ErrorKind::kInvalidArgument,
                    what + " " + spec + ": the range ends before it starts");
    } else {
      lo = hi = parse_port_number(what + " " + spec, ports);
    }
    for (unsigned p = lo; p <= hi; ++p) {
      std::string s = std::to_string(p) + "/" + proto;
      if (std::find(out.begin(), out.end(), s) == out.end()) out.push_back(s);
    }
  }
  return out;
}

std::vector<std::string> exposed_ports(const std::string& image_config_json,
                                       const std::vector<std::string>& expose) {
  std::vector<std::string> specs;
  auto config = nlohmann::json::parse(image_config_json, nullptr, false);
  if (config.is_object() && config.contains("config") && config["config"].is_object()) {
    const auto& c = config["config"];
    if (c.contains("ExposedPorts") && c["ExposedPorts"].is_object())
      for (const auto& [k, v] : c["ExposedPorts"].items()) specs.push_back(k);
  }
  std::vector<std::string> ports = parse_exposed_ports(specs, "the image's ExposedPorts");
  for (const auto& p : parse_exposed_ports(expose, "--expose"))
    if (std::find(ports.begin(), ports.end(), p) == ports.end()) ports.push_back(p);
  return ports;
}

namespace {

// The exposed ports not yet published (same guest port and protocol), on free host ports.
void add_exposed(std::vector<vm::PortForward>& forwards, const MachineOptions& o) {
  for (const auto& p : exposed_ports(o.image_config_json, o.expose)) {
    vm::PortForward f;
    f.guest_port = static_cast<uint16_t>(std::stoul(p.substr(0, p.find('/'))));
    f.protocol =
        p.substr(p.find('/') + 1) == "udp" ? vm::PortProtocol::kUdp : vm::PortProtocol::kTcp;
    bool taken = std::any_of(forwards.begin(), forwards.end(), [&](const vm::PortForward& x) {
      return x.guest_port == f.guest_port && x.protocol == f.protocol;
    });
    if (!taken) forwards.push_back(f);
  }
}

void check(const MachineOptions& o) {
  auto bad = [](const std::string& why) {
    return Error(ErrorKind::kInvalidArgument, "machine: " + why);
  };
  if (o.kernel.empty()) throw bad("no kernel given");
  if (o.rootfs.empty() == !o.root_dir)
    throw bad(o.root_dir ? "a root filesystem and a root directory given"
                         : "no root filesystem given");
  if (o.root_dir && !o.keep.empty()) throw bad("a root directory is not copied (keep)");
  if (o.cpus < 1 || o.cpus > 64) throw bad("cpus must be between 1 and 64");
  if (o.memory_mib < 32) throw bad("memory must be at least 32 MiB");
  if (o.network == NetworkMode::kNone && (!o.publish.empty() || o.publish_all))
    throw bad("published ports need a network (the network is none)");
  if ((o.network == NetworkMode::kNetns) == o.netns.empty())
    throw bad(o.netns.empty() ? "the netns network needs the network namespace's path"
                              : "a network namespace path is for the netns network only");
  if (o.network == NetworkMode::kNetns && (!o.publish.empty() || o.publish_all))
    throw bad("published ports are the container engine's in a network namespace it made");
  if (o.overrides.working_dir &&
      (o.overrides.working_dir->empty() || (*o.overrides.working_dir)[0] != '/'))
    throw bad("the working directory must be an absolute path");
}

// The root disk: a private copy-on-write view of `rootfs`, or a read-write copy at `keep`.
vm::DiskConfig root_disk(const MachineOptions& o) {
  vm::DiskConfig d;
  d.id = "img2vm-root";
  if (!o.keep.empty()) {
    vm::clone_file(o.rootfs, o.keep);
    d.path = fs::absolute(o.keep);
    d.mode = vm::DiskMode::kReadWrite;
  } else {
    d.path = o.rootfs;
    d.mode = vm::DiskMode::kCopyOnWrite;
  }
  return d;
}

// The host directory of a volume mount: the volume, created and filled from the image on first
// use, held (shared lock) by the machine until it is destroyed.
fs::path lease_volume(PreparedMachine& p, const MachineOptions& o, const Mount& m) {
  VolumeStore vs(o.volumes_dir.empty() ? VolumeStore::default_dir() : o.volumes_dir);
  // With a root directory there is no image to copy from: the volume starts empty.
  p.volumes.push_back(vs.use(m.volume, o.rootfs, m.target, !m.nocopy && !o.rootfs.empty()));
  return p.volumes.back().volume.mountpoint;
}

// A virtiofsd for `vo` and its virtio-fs device `tag`, or both deferred (defer_shares).
void add_share(PreparedMachine& p, const MachineOptions& o, std::string tag,
               const VirtiofsdOptions& vo) {
  if (o.defer_shares) {
    p.deferred_shares.push_back({std::move(tag), vo});
    return;
  }
  p.shares.push_back(Virtiofsd::start(vo));
  p.config.fs.push_back(vm::FsConfig{std::move(tag), {}, p.shares.back().socket_fd()});
}

// The root directory: its virtiofsd (after the mounts'), the initramfs holding the init, and
// its config for the init. Returns what the command line names it by.
guestabi::RootShare add_root_dir(PreparedMachine& p, const MachineOptions& o) {
  const RootDirectory& r = *o.root_dir;
  check_root_command(r, p.overrides);
  p.overrides.image = r.config.value_or(guestabi::RuntimeConfig{});
  p.initramfs = sealed_memfd("img2vm-initramfs",
                             init_initramfs(o.init.empty() ? find_init_binary() : o.init));
  p.config.initrd = "/proc/self/fd/" + std::to_string(p.initramfs.get());
  VirtiofsdOptions vo;
  vo.source = r.path;
  vo.read_only = r.read_only;
  vo.program = o.virtiofsd;
  guestabi::RootShare share{"img2vm-root", r.read_only};
  add_share(p, o, share.tag, vo);
  return share;
}

// The mounts, parents before children (docker's order): a virtiofsd and a virtio-fs device per
// bind mount and volume, and what the guest init mounts (a file's content with it).
void add_mounts(PreparedMachine& p, const MachineOptions& o) {
  std::vector<Mount> ms = o.mounts;
  for (const auto& m : p.overrides.mounts) {
    Mount t;
    t.type = Mount::Type::kTmpfs;
    t.target = m.target;
    ms.push_back(std::move(t));
  }
  check_mounts(ms);
  ms.resize(o.mounts.size());
  auto depth = [](const Mount& m) { return std::count(m.target.begin(), m.target.end(), '/'); };
  std::stable_sort(ms.begin(), ms.end(),
                   [&](const Mount& a, const Mount& b) { return depth(a) < depth(b); });
  for (const Mount& m : ms) {
    guestabi::MountSpec s;
    s.target = m.target;
    s.readonly = m.read_only;
    if (m.type == Mount::Type::kTmpfs) {
      s.type = guestabi::MountSpec::Type::kTmpfs;
      s.size = m.size;
      s.mode = m.mode;
    } else if (m.type == Mount::Type::kFile) {
      s.type = guestabi::MountSpec::Type::kFile;
      s.content = m.content;
      s.mode = m.mode;
      s.uid = m.uid;
      s.gid = m.gid;
    } else {
      VirtiofsdOptions vo;
      vo.source = m.type == Mount::Type::kVolume ? lease_volume(p, o, m) : m.source;
      vo.read_only = m.read_only;
      vo.program = o.virtiofsd;
      s.type = guestabi::MountSpec::Type::kVirtiofs;
      s.tag = "img2vm-fs" + std::to_string(p.shares.size() + p.deferred_shares.size());
      add_share(p, o, s.tag, vo);
    }
    p.overrides.mounts.push_back(std::move(s));
  }
}

}  // namespace

std::string snapshot_unsupported(const MachineOptions& o) {
  if (o.root_dir) return "a root directory (virtio-fs)";
  if (o.network == NetworkMode::kNetns) return "an engine's network namespace";
  if (!o.mounts.empty()) return "mounts (virtio-fs)";
  if (!o.disks.empty()) return "extra disks";
  if (!o.keep.empty()) return "a kept root filesystem (read-write)";
  if (o.hugepages) return "huge pages";
  if (!o.overrides.mounts.empty()) return "mounts";
  return {};
}

PreparedMachine build_machine(MachineOptions o) {
  check(o);
  if (!o.snapshot.empty()) o.snapshot_layout = true;
  if (o.snapshot_layout)
    if (std::string why = snapshot_unsupported(o); !why.empty())
      throw Error(ErrorKind::kUnsupported, "machine: a snapshot cannot hold " + why + " yet");
  PreparedMachine p;
  vm::MachineConfig& mc = p.config;
  guestabi::RunOverrides& ov = p.overrides;
  ov = std::move(o.overrides);
  add_mounts(p, o);
  std::optional<guestabi::RootShare> share;
  if (o.root_dir) share = add_root_dir(p, o);
  mc.memory_mib = o.memory_mib;
  mc.vcpus = o.cpus;
  mc.hugepages = o.hugepages;
  mc.timeout = o.timeout;

  std::vector<vm::PortForward> forwards = o.publish;
  if (o.publish_all) add_exposed(forwards, o);
  p.ports_chosen = std::any_of(forwards.begin(), forwards.end(),
                               [](const vm::PortForward& f) { return f.host_port == 0; });

  if (o.network == NetworkMode::kUser) {
    // docker's default bridge, rootless: the guest is 10.0.2.15/24 behind 10.0.2.2, with DNS at
    // 10.0.2.3 (vm/net_slirp.hpp); the MTU comes from the device (VIRTIO_NET_F_MTU).
    guestabi::NetConfig n;
    n.interface = "eth0";
    n.address = std::string(vm::usernet::kGuest);
    n.prefix = vm::usernet::kPrefixLength;
    n.gateway = std::string(vm::usernet::kGateway);
    mc.net.emplace();
    mc.net->mac = fresh_mac();
    n.mac = guestabi::format_mac(mc.net->mac);
    ov.net = n;
    if (ov.dns.empty()) ov.dns = {std::string(vm::usernet::kDns)};
    mc.net->user.outbound = o.outbound;
    mc.net->user.host_loopback = o.host_loopback;
    mc.net->user.forwards = forwards;
  } else if (o.network == NetworkMode::kTap) {
    // A device of the VM's own on the host, its host side set up now (CAP_NET_ADMIN) and undone
    // when `tap` goes; the guest gets the address chosen for it.
    vm::TapNetConfig tc;
    tc.name = o.tap_name;
    tc.outbound = o.outbound;
    tc.forwards = forwards;
    mc.net.emplace();
    mc.net->mac = fresh_mac();
    tc.guest_mac = mc.net->mac;
    p.tap = std::make_shared<vm::TapBackend>(tc, mc.net->mtu);
    mc.net->tap = vm::TapFdConfig{p.tap->device_fd(), p.tap->published()};
    const vm::TapNetInfo& ti = p.tap->info();
    guestabi::NetConfig n;
    n.interface = "eth0";
    n.address = ti.guest_ip;
    n.prefix = ti.prefix_length;
    n.gateway = ti.host_ip;
    n.mac = guestabi::format_mac(mc.net->mac);
    ov.net = n;
    if (ov.dns.empty()) {
      std::string resolv;
      try {
        resolv = read_file("/etc/resolv.conf");
      } catch (const Error&) {  // no resolv.conf: docker's fallback resolvers
      }
      ov.dns = tap_guest_dns(resolv);
    }
  } else if (o.network == NetworkMode::kNetns) {
    // A container engine's namespace: the guest takes its interface's place (vm/net_netns.hpp),
    // with its MAC, so that the engine's bridge and the neighbours' ARP caches stay right.
    p.netns = std::make_shared<vm::NetnsTap>(o.netns);
    const vm::NetnsLink& l = p.netns->info();
    mc.net.emplace();
    mc.net->mac = l.mac;
    mc.net->mtu = static_cast<uint16_t>(std::min(l.mtu, 65520u));  // virtio-net's most
    mc.net->tap = vm::TapFdConfig{p.netns->device_fd(), {}};
    guestabi::NetConfig n;
    n.interface = "eth0";
    n.address = l.address;
    n.prefix = l.prefix_length;
    n.gateway = l.gateway;
    n.mtu = mc.net->mtu;
    for (const vm::NetnsAddress& a : l.addresses6)
      n.addresses6.push_back({a.address, a.prefix_length});
    for (const vm::NetnsRoute& r : l.routes)
      n.routes.push_back({r.destination, r.prefix_length, r.gateway});
    ov.net = n;
  }

  if (!o.root_dir) mc.disks.push_back(root_disk(o));
  for (const ExtraDisk& e : o.disks) {
    vm::DiskConfig d;
    d.path = fs::absolute(e.path);
    d.mode = e.read_only ? vm::DiskMode::kReadOnly : vm::DiskMode::kReadWrite;
    mc.disks.push_back(d);
  }

  // Fresh for every VM, a resumed snapshot's too: the guest's RNG is reseeded with this, and its
  // clock set (a snapshot's clock stopped when it was taken).
  ov.entropy = random_bytes(kEntropyBytes);
  ov.realtime_ns = realtime_ns();
  // The overrides: inline when short, else on a raw block device after the other disks. In the
  // snapshot layout always on a disk of the largest size, the same for every run: the command
  // line and the guest's view of the disk's size are part of the snapshot.
  std::string param;
  try {
    param = guestabi::run_overrides_kernel_param(ov);
    if (param.size() > kInlineOverridesMax || o.snapshot_layout) {
      if (mc.disks.size() >= 26) throw Error(ErrorKind::kLimit, "too many disks");
      p.overrides_disk = sealed_memfd("img2vm-overrides", guestabi::encode_overrides_disk(ov),
                                      o.snapshot_layout ? guestabi::kMaxOverridesDisk : 0);
      vm::DiskConfig d;
      d.path = "/proc/self/fd/" + std::to_string(p.overrides_disk.get());
      d.mode = vm::DiskMode::kReadOnly;
      d.id = "img2vm-overrides";
      param =
          guestabi::run_overrides_disk_param(std::string("/dev/vd") + char('a' + mc.disks.size()));
      mc.disks.push_back(d);
    }
  } catch (const guestabi::Error& e) {
    throw Error(ErrorKind::kInvalidArgument, std::string("run: ") + e.what());
  }
  mc.kernel = o.kernel;
  if (o.snapshot_layout) param += " " + guestabi::snapshot_param();
  mc.cmdline = share ? guestabi::directory_cmdline(o.verbose_boot, *share, param)
                     : guestabi::image_cmdline(o.verbose_boot, param);
  mc.restore_from = o.snapshot;
  // The snapshot layout always has the vsock device, so that attached runs and -d runs resume
  // the same snapshots: without a host side here; a detached VM's monitor gives it its socket
  // (detached.cpp, the same CID).
  if (o.snapshot_layout) mc.vsock = vm::VsockConfig{kDetachedGuestCid, {}};
  mc.console_out_fd = o.console_out_fd;
  mc.console_err_fd = o.console_err_fd;
  mc.console_in_fd = o.console_in_fd;
  mc.console_input = vm::ConsoleInput::kAtWorkloadExec;
  return p;
}

}  // namespace img2vm::runtime
