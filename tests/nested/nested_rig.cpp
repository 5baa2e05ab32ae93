#include "nested_rig.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>

#include "img2vm/vm/kvm_detect.hpp"
#include "process.hpp"

namespace img2vm::testing {

namespace fs = std::filesystem;

const char* to_string(KvmRoute r) noexcept {
  return r == KvmRoute::kDirect ? "direct" : "nested (L1 under qemu TCG)";
}

KvmRoute kvm_route(bool tiny_guests_ok_on_pvm) {
  static std::once_flag once;
  static KvmRoute route = KvmRoute::kNested;
  std::call_once(once, [&] {
    std::string why;
    const char* inside = std::getenv("IMG2VM_NESTED_INSIDE");
    const char* forced = std::getenv("IMG2VM_KVM_ROUTE");
    auto info = vm::detect_kvm();
    if (inside && std::string(inside) == "1") {
      route = KvmRoute::kDirect;
      why = "inside the nested rig's L1 guest; its /dev/kvm: " + info.detail;
    } else if (forced && std::string(forced) == "direct") {
      route = KvmRoute::kDirect;
      why = "IMG2VM_KVM_ROUTE=direct";
    } else if (forced && std::string(forced) == "nested") {
      route = KvmRoute::kNested;
      why = "IMG2VM_KVM_ROUTE=nested";
    } else if (info.kind == vm::KvmKind::kHardware) {
      route = KvmRoute::kDirect;
      why = info.detail;
    } else if (info.kind == vm::KvmKind::kPvm && tiny_guests_ok_on_pvm &&
               std::getenv("IMG2VM_KVM_TESTS_ON_PVM")) {
      route = KvmRoute::kDirect;
      why = "PVM with IMG2VM_KVM_TESTS_ON_PVM set: " + info.detail;
    } else {
      route = KvmRoute::kNested;
      why = std::string("host KVM is ") + vm::to_string(info.kind) + " (" + info.detail + ")";
    }
    std::fprintf(stderr, "[kvm route] %s: %s\n", to_string(route), why.c_str());
  });
  return route;
}

std::string NestedResult::describe() const {
  std::string s = timed_out ? "timed out" : "exited with " + std::to_string(exit_code);
  s += "\n--- output ---\n" + output;
  if (!rig_stderr.empty())
    s += "\n--- rig ---\n" +
         rig_stderr.substr(rig_stderr.size() > 6000 ? rig_stderr.size() - 6000 : 0);
  return s;
}

NestedResult run_nested(const std::vector<std::string>& argv, const std::vector<fs::path>& files,
                        std::chrono::seconds timeout) {
  NestedOptions options;
  options.timeout = timeout;
  return run_nested(argv, files, options);
}

NestedResult run_nested(const std::vector<std::string>& argv, const std::vector<fs::path>& files,
                        const NestedOptions& options) {
  std::vector<std::string> cmd = {IMG2VM_NESTED_RIG, "run", "--timeout",
                                  std::to_string(options.timeout.count())};
  if (options.userland == NestedUserland::kDebian) {
    cmd.push_back("--userland");
    cmd.push_back("debian");
  }
  if (options.memory_mib > 0) {
    cmd.push_back("--memory");
    cmd.push_back(std::to_string(options.memory_mib));
  }
  for (const auto& f : files) {
    cmd.push_back("--file");
    cmd.push_back(f.string());
  }
  cmd.push_back("--");
  cmd.insert(cmd.end(), argv.begin(), argv.end());
  RunOptions opts;
  // The base build on first use, and boot; the Debian userland's build (a few minutes, bounded
  // by the test's own timeout) on its first use.
  opts.timeout = options.timeout + std::chrono::seconds(120);
  if (options.userland == NestedUserland::kDebian) opts.timeout += std::chrono::minutes(40);
  auto r = run_command(cmd, opts);
  NestedResult n;
  n.exit_code = r.exit_code;
  n.rig_stderr = r.err;
  n.timed_out = r.timed_out || r.exit_code == 202;
  // The script prints the output then "@@NESTED-END <rc>@@".
  std::string out = r.out;
  auto end = out.rfind("@@NESTED-END ");
  if (end != std::string::npos) out.resize(end);
  n.output = out;
  return n;
}

bool run_here_or_nested(const std::vector<fs::path>& files, bool tiny_guests) {
  if (kvm_route(tiny_guests) == KvmRoute::kDirect) return true;
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string filter = std::string(info->test_suite_name()) + "." + info->name();
  std::vector<fs::path> all = files;
  all.push_back(fs::read_symlink("/proc/self/exe"));
  auto r = run_nested({"env", "IMG2VM_NESTED_INSIDE=1", all.back().string(),
                       "--gtest_filter=" + filter, "--gtest_color=no"},
                      all);
  std::fprintf(stderr, "[kvm route] %s ran in L1:\n%s\n", filter.c_str(), r.output.c_str());
  EXPECT_EQ(r.exit_code, 0) << "the test failed inside L1: " << r.describe();
  if (r.exit_code == 0) {
    EXPECT_NE(r.output.find("[  PASSED  ] 1 test"), std::string::npos) << r.describe();
  }
  return false;
}

}  // namespace img2vm::testing
