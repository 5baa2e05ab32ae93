// build_machine with NetworkMode::kNetns on a namespace made as a container engine makes it
// (harness/netns.hpp), no VM: what the VMM is given (the tap's descriptor, the veth's MAC and
// MTU), what the guest init reads back from the kernel command line (address, prefix, gateway,
// MTU), and what a detached start passes to the monitor. Root (namespaces of the test's own);
// skipped otherwise.
#include "netns.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <optional>

#include "img2vm/base/error.hpp"
#include "img2vm/guestabi/cmdline.hpp"
#include "img2vm/runtime/machine.hpp"
#include "img2vm/runtime/vmm.hpp"
#include "img2vm/runtime/vms.hpp"
#include "img2vm/vm/machine_json.hpp"
#include "process.hpp"

namespace img2vm::runtime {
namespace {

using img2vm::testing::enter_private_netns_dir;
using img2vm::testing::make_engine_netns;

class RuntimeNetns : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::string why = enter_private_netns_dir(); !why.empty())
      GTEST_SKIP() << why << " (the netns tests need root for their own namespaces)";
    make_engine_netns("vm", "peer");
  }

  static MachineOptions options() {
    MachineOptions mo;
    mo.kernel = "/nonexistent/vmlinux";
    mo.rootfs = "/nonexistent/rootfs.ext4";
    mo.network = NetworkMode::kNetns;
    mo.netns = "/run/netns/vm";
    return mo;
  }
};

TEST_F(RuntimeNetns, TheGuestTakesTheVethsAddressMacAndMtu) {
  MachineOptions mo = options();
  mo.overrides.dns = {"10.99.0.53"};  // the bundle's, as the OCI runtime reads them
  std::optional<PreparedMachine> pm;
  pm.emplace(build_machine(std::move(mo)));
  ASSERT_TRUE(pm->netns);
  ASSERT_TRUE(pm->config.net);
  const vm::NicConfig& nic = *pm->config.net;
  EXPECT_EQ(nic.mac, (std::array<uint8_t, 6>{0x02, 0x42, 0x0a, 0x63, 0x00, 0x02}));
  EXPECT_EQ(nic.mtu, 1400);
  ASSERT_TRUE(nic.tap);
  EXPECT_EQ(nic.tap->fd, pm->netns->device_fd());
  EXPECT_TRUE(nic.tap->published.empty());
  EXPECT_FALSE(pm->tap);

  // What the init configures eth0 with, decoded from the command line as the init does it.
  // With the namespace's other route (harness/netns.cpp's 192.168.77.0/24).
  guestabi::NetConfig want{"eth0", "10.99.0.2", 24, "10.99.0.1", 1400, ""};
  want.routes = {{"192.168.77.0", 24, "10.99.0.1"}};
  EXPECT_EQ(pm->overrides.net, want);
  auto param = guestabi::kernel_param(pm->config.cmdline, guestabi::kRunParam);
  ASSERT_TRUE(param) << pm->config.cmdline;
  guestabi::RunOverrides seen = guestabi::decode_inline_run_param(*param);
  EXPECT_EQ(seen.net, want);
  EXPECT_EQ(seen.dns, (std::vector<std::string>{"10.99.0.53"}));

  // img2vm-vmm's spec names the descriptor; a detached start keeps it open for the monitor.
  auto spec = nlohmann::json::parse(vm::machine_config_to_json(pm->config));
  EXPECT_EQ(spec["net"]["tap"]["fd"], pm->netns->device_fd());
  DetachedOptions d = detached_options(*pm);
  EXPECT_NE(std::find(d.pass_fds.begin(), d.pass_fds.end(), pm->netns->device_fd()),
            d.pass_fds.end());

  // Nothing else holds the tap: letting the machine go gives the namespace back.
  pm.reset();
  img2vm::testing::CommandResult r =
      img2vm::testing::run_command({"ip", "-n", "vm", "-4", "-o", "addr", "show"});
  EXPECT_NE(r.out.find("inet 10.99.0.2/24"), std::string::npos) << r.describe();
}

TEST_F(RuntimeNetns, ANamespaceThatCannotBeUsedFailsTheBuild) {
  MachineOptions mo = options();
  mo.netns = "/run/netns/nosuch";
  try {
    build_machine(std::move(mo));
    FAIL() << "built a machine on a missing namespace";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "network namespace /run/netns/nosuch: No such file or directory");
  }
}

// img2vm's own tap network is undone with this process: a detached VM still refuses it.
TEST_F(RuntimeNetns, ADetachedVmStillRefusesImg2vmsOwnTapNetwork) {
  PreparedMachine pm;
  pm.tap = std::make_shared<vm::TapBackend>(vm::TapNetConfig{}, 1500);
  pm.config.net.emplace();
  pm.config.net->tap = vm::TapFdConfig{pm.tap->device_fd(), {}};
  try {
    detached_options(pm);
    FAIL() << "a detached VM took img2vm's tap network";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_EQ(std::string(e.what()), "a detached VM cannot use img2vm's tap network yet");
  }
}

// A detached VM's monitor restores the namespace through img2vm-netns (so that img2vm-vmm does
// not load libnl): nothing is undone while the VMM holds the tap, the veth's address and routes
// come back once it is gone, and a state that is not one is the helper's own error line.
TEST_F(RuntimeNetns, TheMonitorsHelperRestoresTheNamespaceOnceTheTapIsGone) {
  using std::chrono::seconds;
  auto addr = [] {
    return img2vm::testing::run_command(
               {"ip", "-n", "vm", "-4", "-o", "addr", "show", "dev", "eth0"})
        .out;
  };
  std::optional<PreparedMachine> pm;
  pm.emplace(build_machine(options()));
  ASSERT_TRUE(pm->netns);
  const DetachedOptions d = detached_options(*pm);
  ASSERT_FALSE(d.netns_restore.empty());
  // The VMM's descriptor, standing in: the tap outlives the machine.
  UniqueFd vmm(::fcntl(pm->netns->device_fd(), F_DUPFD_CLOEXEC, 0));
  ASSERT_TRUE(vmm);
  pm.reset();
  EXPECT_EQ(addr(), "");
  EXPECT_EQ(restore_netns_in_child(d.netns_restore, seconds(30)), "");
  EXPECT_EQ(addr(), "");

  vmm.reset();
  EXPECT_EQ(restore_netns_in_child(d.netns_restore, seconds(30)), "");
  EXPECT_NE(addr().find("inet 10.99.0.2/24"), std::string::npos) << addr();
  const std::string routes =
      img2vm::testing::run_command({"ip", "-n", "vm", "-4", "route", "show"}).out;
  EXPECT_NE(routes.find("default via 10.99.0.1 dev eth0"), std::string::npos) << routes;

  const std::string err = restore_netns_in_child("{", seconds(30));
  EXPECT_EQ(err.rfind("img2vm-netns: ", 0), 0u) << err;
  EXPECT_EQ(err.find('\n'), std::string::npos) << err;
}

}  // namespace
}  // namespace img2vm::runtime
