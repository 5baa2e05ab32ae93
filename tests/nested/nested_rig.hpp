// Running test code where /dev/kvm can run our guests. On a host with hardware KVM that is
// the host itself; elsewhere (no /dev/kvm, or PVM) it is an L1 guest under qemu TCG started by
// tests/nested/nested-rig.sh, which gets /dev/kvm from the Debian cloud kernel's kvm-amd.
#pragma once

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

namespace img2vm::testing {

enum class KvmRoute {
  kDirect,  // this process can use /dev/kvm (hardware KVM, or inside L1 already)
  kNested,  // run through nested-rig.sh in an L1 guest
};

// Decides once per process and prints the decision (and why) to stderr:
//  - IMG2VM_NESTED_INSIDE=1 (set by the rig inside L1): direct
//  - IMG2VM_KVM_ROUTE=direct|nested forces a route
//  - detect_kvm() says hardware: direct; PVM: direct only when `tiny_guests_ok_on_pvm` and
//    IMG2VM_KVM_TESTS_ON_PVM=1, else nested; none/other: nested.
KvmRoute kvm_route(bool tiny_guests_ok_on_pvm = false);
const char* to_string(KvmRoute r) noexcept;

struct NestedResult {
  int exit_code = -1;      // the command's status inside L1; 200-203 rig failures (see the script)
  std::string output;      // what the command printed (stdout and stderr merged)
  std::string rig_stderr;  // the rig's own messages (and L1's console on failures)
  bool timed_out = false;
  std::string describe() const;
};

// What L1 runs on (nested-rig.sh run --userland).
enum class NestedUserland {
  kBusybox,  // busybox in an initramfs (the default)
  kDebian,   // Debian 12 with podman, crun, conmon, containerd, CNI plugins, nftables, skopeo ...
             // built once with mmdebstrap and cached (a few minutes the first time)
};

struct NestedOptions {
  std::chrono::seconds timeout{300};  // of L1 as a whole (the rig's --timeout)
  NestedUserland userland = NestedUserland::kBusybox;
  int memory_mib = 0;  // 0: the rig's default (2048)
};

// Runs argv inside L1 with `files` copied in at the same absolute paths (shared libraries of
// dynamic executables included; over the Debian userland, only those it lacks). argv[0] must
// be one of `files` or a program of the userland (a busybox applet in the default one).
NestedResult run_nested(const std::vector<std::string>& argv,
                        const std::vector<std::filesystem::path>& files,
                        const NestedOptions& options);
NestedResult run_nested(const std::vector<std::string>& argv,
                        const std::vector<std::filesystem::path>& files,
                        std::chrono::seconds timeout = std::chrono::seconds(300));

// For a gtest body that needs KVM: returns true when the body should run in this process.
// Otherwise runs this same test (--gtest_filter=Suite.Name) inside L1 with `files` and
// this executable, records the outcome as a gtest failure if it failed, and returns false.
bool run_here_or_nested(const std::vector<std::filesystem::path>& files, bool tiny_guests = true);

}  // namespace img2vm::testing
