#include "netns.hpp"

#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <exception>
#include <thread>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "process.hpp"

namespace img2vm::testing {

std::string enter_private_netns_dir() {
  if (::geteuid() != 0) return "not root";
  if (find_program("ip").empty()) return "no ip (iproute2)";
  if (::access("/dev/net/tun", R_OK | W_OK) != 0) return "no /dev/net/tun";
  auto failed = [](const char* what) { return std::string(what) + ": " + std::strerror(errno); };
  if (::unshare(CLONE_NEWNS | CLONE_NEWNET) != 0) return failed("unshare");
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0)
    return failed("making the mounts private");
  if (::mkdir("/run/netns", 0755) != 0 && errno != EEXIST) return failed("mkdir /run/netns");
  if (::mount("img2vm-test-netns", "/run/netns", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
              "mode=0755") != 0)
    return failed("mounting a tmpfs on /run/netns");
  CommandResult r = run_command({"ip", "link", "set", "lo", "up"});
  if (r.exit_code != 0) return "ip link set lo up: " + r.describe();
  return {};
}

void run_ip(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"ip"};
  argv.insert(argv.end(), args.begin(), args.end());
  CommandResult r = run_command(argv);
  if (r.exit_code != 0) {
    std::string line;
    for (const auto& a : argv) line += (line.empty() ? "" : " ") + a;
    throw Error(ErrorKind::kIo, line + ": " + r.describe());
  }
}

void make_engine_netns(const std::string& vm, const std::string& peer) {
  run_ip({"netns", "add", vm});
  run_ip({"netns", "add", peer});
  run_ip({"-n", vm, "link", "set", "lo", "up"});
  run_ip({"-n", peer, "link", "set", "lo", "up"});
  run_ip({"-n", vm, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0", "netns", peer});
  run_ip({"-n", vm, "link", "set", "eth0", "address", "02:42:0a:63:00:02", "mtu", "1400", "up"});
  run_ip({"-n", peer, "link", "set", "peer0", "address", "02:42:0a:63:00:01", "mtu", "1400", "up"});
  run_ip({"-n", vm, "addr", "add", "10.99.0.2/24", "dev", "eth0"});
  run_ip({"-n", peer, "addr", "add", "10.99.0.1/24", "dev", "peer0"});
  run_ip({"-n", vm, "route", "add", "default", "via", "10.99.0.1"});
  run_ip({"-n", vm, "route", "add", "192.168.77.0/24", "via", "10.99.0.1"});
}

void in_netns(const std::string& path, const std::function<void()>& f) {
  UniqueFd ns = open_file(path, O_RDONLY);
  std::exception_ptr failure;
  std::thread t([&] {
    try {
      if (::setns(ns.get(), CLONE_NEWNET) != 0) throw_errno("setns " + path);
      f();
    } catch (...) {
      failure = std::current_exception();
    }
  });
  t.join();
  if (failure) std::rethrow_exception(failure);
}

}  // namespace img2vm::testing
