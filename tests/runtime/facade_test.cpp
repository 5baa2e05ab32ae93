// The facade as an embedder uses it: an image pushed by skopeo to a real docker-registry is
// pulled into a temporary store, converted into the rootfs cache (then found there) and to a
// path, and a machine is built from it with docker-style overrides; the guest's overrides are
// read back from the kernel command line or the overrides disk. Errors are img2vm::Error.
#include <gtest/gtest.h>

#include <map>
#include <mutex>
#include <nlohmann/json.hpp>

#include "common.hpp"
#include "img2vm/guestabi/cmdline.hpp"
#include "img2vm/guestabi/config.hpp"
#include "img2vm/guestabi/overrides_disk.hpp"
#include "img2vm/runtime/runtime.hpp"
#include "img2vm/vm/machine_json.hpp"
#include "process.hpp"

using namespace img2vm;
using namespace img2vm::testing;
namespace fs = std::filesystem;

namespace {

// The run overrides the guest init receives: from img2vm.run= on the command line, or from
// the overrides disk it names.
guestabi::RunOverrides guest_overrides(const vm::MachineConfig& mc) {
  const std::string key = std::string(guestabi::kRunParam) + "=";
  size_t at = mc.cmdline.find(key);
  EXPECT_NE(at, std::string::npos) << mc.cmdline;
  std::string value = mc.cmdline.substr(at + key.size());
  value = value.substr(0, value.find(' '));
  if (value.rfind("blk:/dev/vd", 0) == 0) {
    size_t index = size_t(value.back() - 'a');
    EXPECT_LT(index, mc.disks.size());
    std::string bytes = read_file(mc.disks.at(index).path);
    EXPECT_EQ(bytes.size() % 512, 0u);
    return guestabi::decode_overrides_disk(bytes);
  }
  return guestabi::decode_inline_run_param(value);
}

struct Recorder {
  std::mutex mu;
  std::map<std::string, std::pair<uint64_t, uint64_t>> last;  // phase -> (done, total)
  std::vector<std::string> notes;
  void hook(runtime::Hooks& h) {
    h.progress = [this](std::string_view phase, uint64_t done, uint64_t total) {
      std::lock_guard lk(mu);
      last[std::string(phase)] = {done, total};
    };
    h.note = [this](std::string_view line) {
      std::lock_guard lk(mu);
      notes.emplace_back(line);
    };
  }
};

TEST(RuntimeFacade, PullConvertAndBuildAMachineAsAnEmbedderWould) {
  Registry reg;
  BuiltImage img = build_image(three_layer_spec());
  push(reg, img, "rt/app:v1");
  const std::string ref = reg.host() + "/rt/app:v1";
  TempDir home("rt-home");
  registry::Store store(home.path());

  // Resolve: not in the store, so it is pulled (said through the note hook, not printed).
  Recorder rec;
  runtime::ImageOptions io = image_options();
  rec.hook(io.hooks);
  auto src = runtime::resolve_image(store, ref, io);
  EXPECT_EQ(src->manifest_digest(), img.manifest.digest);
  ASSERT_EQ(rec.notes.size(), 1u);
  EXPECT_EQ(rec.notes[0], ref + " is not in the store; pulling it");
  ASSERT_TRUE(rec.last.count("pull"));
  EXPECT_GT(rec.last["pull"].second, uint64_t(3) << 20);
  EXPECT_EQ(rec.last["pull"].first, rec.last["pull"].second);
  // Resolved again: from the store, no pull.
  rec.notes.clear();
  EXPECT_EQ(runtime::resolve_image(store, ref, io)->manifest_digest(), img.manifest.digest);
  EXPECT_TRUE(rec.notes.empty());

  // Convert into the cache, then find it there.
  runtime::RootfsOptions ro;
  rec.hook(ro.hooks);
  runtime::RootfsResult c1 = runtime::convert_to_cache(store, *src, ro);
  EXPECT_FALSE(c1.cached);
  EXPECT_EQ(c1.path.parent_path(), home.path() / "rootfs");
  EXPECT_EQ(c1.convert.layers, 3u);
  EXPECT_EQ(rec.last["layers"], std::make_pair(uint64_t(3), uint64_t(3)));
  runtime::RootfsResult c2 = runtime::convert_to_cache(store, *src, ro);
  EXPECT_TRUE(c2.cached);
  EXPECT_EQ(c2.path, c1.path);
  // Another size is another entry.
  runtime::RootfsOptions bigger = ro;
  bigger.extra_space = 64ull << 20;
  runtime::RootfsResult c3 = runtime::convert_to_cache(store, *src, bigger);
  EXPECT_FALSE(c3.cached);
  EXPECT_NE(c3.path, c1.path);
  // The init's digest is remembered by the file's identity (an old file here: /usr/bin/env in the
  // init's place), so that a run does not hash it again; the key takes the remembered digest.
  runtime::RootfsOptions env_init = ro;
  env_init.init_binary = "/usr/bin/env";
  runtime::convert_to_cache(store, *src, env_init);
  const fs::path digests = home.path() / "file-digests";
  const std::string env_digest = sha256_file("/usr/bin/env").str();
  std::vector<fs::path> entries;  // env's (the build's init may be remembered too)
  for (const auto& e : fs::directory_iterator(digests))
    if (read_file(e.path()).ends_with(" " + env_digest + "\n")) entries.push_back(e.path());
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(runtime::rootfs_cache_key(*src, "/usr/bin/env", env_init, digests).init_digest,
            env_digest);
  const std::string text = read_file(entries[0]), planted = "sha256:" + std::string(64, 'b');
  write_file_atomic(entries[0], text.substr(0, text.size() - 72) + planted + "\n");
  EXPECT_EQ(runtime::rootfs_cache_key(*src, "/usr/bin/env", env_init, digests).init_digest,
            planted);
  EXPECT_EQ(runtime::rootfs_cache(store).list().size(), 3u);  // c1, c3, env_init's

  // Convert to a path: the same bytes as the cached file (reproducible), a clean ext4 with
  // the init and the image's files.
  TempDir out("rt-out");
  runtime::RootfsResult p = runtime::convert_to_path(*src, out.path() / "app.ext4", ro);
  EXPECT_EQ(p.path, out.path() / "app.ext4");
  EXPECT_EQ(read_file(p.path), read_file(c1.path));
  CommandResult fsck = run_command({"e2fsck", "-fn", p.path.string()});
  EXPECT_EQ(fsck.exit_code, 0) << fsck.describe();
  CommandResult cat = run_command({"debugfs", "-R", "cat /etc/marker", p.path.string()});
  EXPECT_EQ(cat.out, "runtime\n") << cat.describe();
  CommandResult init = run_command({"debugfs", "-R", "stat /.img2vm/init", p.path.string()});
  EXPECT_NE(init.out.find("Mode:  0755"), std::string::npos) << init.describe();

  // Build the machine: docker-style overrides, ports (-p and -P with --expose), disks,
  // memory and vCPUs.
  TempDir files("rt-files");
  write_file_atomic(files.path() / "vmlinux", "not booted here");
  write_file_atomic(files.path() / "data.ext4", std::string(1 << 20, '\0'));
  runtime::MachineOptions mo;
  mo.kernel = files.path() / "vmlinux";
  mo.rootfs = c1.path;
  mo.overrides.entrypoint = std::vector<std::string>{};
  mo.overrides.cmd = std::vector<std::string>{"/bin/sh", "-c", "echo hi"};
  mo.overrides.env = {"MODE=test", "EMPTY="};
  mo.overrides.user = "1000:1000";
  mo.overrides.working_dir = "/srv";
  mo.overrides.hostname = "box";
  mo.memory_mib = 512;
  mo.cpus = 2;
  mo.disks = {{files.path() / "data.ext4", true}};
  mo.publish = vm::parse_port_forward("127.0.0.1:8080:80");
  mo.publish_all = true;
  mo.expose = {"9000-9001/udp"};
  mo.image_config_json = src->config_bytes();
  runtime::PreparedMachine pm = runtime::build_machine(mo);
  const vm::MachineConfig& mc = pm.config;
  EXPECT_EQ(mc.memory_mib, 512u);
  EXPECT_EQ(mc.vcpus, 2u);
  EXPECT_EQ(mc.kernel, files.path() / "vmlinux");
  ASSERT_EQ(mc.disks.size(), 2u);
  EXPECT_EQ(mc.disks[0].path, c1.path);
  EXPECT_EQ(mc.disks[0].mode, vm::DiskMode::kCopyOnWrite);
  EXPECT_EQ(mc.disks[1].path, files.path() / "data.ext4");
  EXPECT_EQ(mc.disks[1].mode, vm::DiskMode::kReadOnly);
  EXPECT_FALSE(pm.overrides_disk);
  // -p first; 80/tcp is published by it already; 53/udp and --expose's on free host ports.
  ASSERT_TRUE(mc.net);
  std::vector<std::string> ports;
  for (const auto& f : mc.net->user.forwards) ports.push_back(vm::to_string(f));
  std::vector<std::string> want;
  for (const char* s : {"127.0.0.1:8080:80/tcp", "53/udp", "9000/udp", "9001/udp"})
    want.push_back(vm::to_string(vm::parse_port_forward(s).at(0)));
  EXPECT_EQ(ports, want);
  EXPECT_TRUE(pm.ports_chosen);
  // What the guest receives: the overrides given, plus the user network and its DNS.
  guestabi::RunOverrides got = guest_overrides(mc);
  EXPECT_EQ(got, pm.overrides);
  EXPECT_EQ(got.cmd, mo.overrides.cmd);
  EXPECT_EQ(got.entrypoint, std::vector<std::string>{});
  EXPECT_EQ(got.env, mo.overrides.env);
  EXPECT_EQ(got.user, "1000:1000");
  EXPECT_EQ(got.working_dir, "/srv");
  EXPECT_EQ(got.hostname, "box");
  ASSERT_TRUE(got.net);
  EXPECT_EQ(got.net->address, "10.0.2.15");
  EXPECT_EQ(got.dns, std::vector<std::string>{"10.0.2.3"});
  // The spec img2vm-vmm takes has the same machine.
  auto spec = nlohmann::json::parse(runtime::vmm_spec(mc));
  vm::MachineConfig back = vm::machine_config_from_json(spec["machine"].dump());
  EXPECT_EQ(back.cmdline, mc.cmdline);
  EXPECT_EQ(back.memory_mib, 512u);
  EXPECT_EQ(back.disks.size(), 2u);

  // Overrides too long for the command line go on a read-only disk after the others; no
  // network: loopback only, no NIC.
  runtime::MachineOptions big = mo;
  big.overrides.env.push_back("LONG=" + std::string(3000, 'x'));
  big.network = runtime::NetworkMode::kNone;
  big.publish.clear();
  big.publish_all = false;
  big.keep = files.path() / "kept.ext4";
  runtime::PreparedMachine pb = runtime::build_machine(big);
  ASSERT_TRUE(pb.overrides_disk);
  ASSERT_EQ(pb.config.disks.size(), 3u);
  EXPECT_EQ(pb.config.disks[2].path, "/proc/self/fd/" + std::to_string(pb.overrides_disk.get()));
  EXPECT_EQ(pb.config.disks[2].mode, vm::DiskMode::kReadOnly);
  EXPECT_NE(pb.config.cmdline.find("img2vm.run=blk:/dev/vdc"), std::string::npos)
      << pb.config.cmdline;
  EXPECT_FALSE(pb.config.net);
  guestabi::RunOverrides long_got = guest_overrides(pb.config);
  EXPECT_EQ(long_got.env.back(), big.overrides.env.back());
  EXPECT_FALSE(long_got.net);
  // --keep: a read-write copy of the rootfs, which is left as it was.
  EXPECT_EQ(pb.config.disks[0].path, files.path() / "kept.ext4");
  EXPECT_EQ(pb.config.disks[0].mode, vm::DiskMode::kReadWrite);
  EXPECT_EQ(read_file(files.path() / "kept.ext4"), read_file(c1.path));
}

TEST(RuntimeFacade, ErrorsAreImg2vmErrorsAndTheProcessCarriesOn) {
  TempDir home("rt-home");
  registry::Store store(home.path());
  runtime::ImageOptions io = image_options();
  io.client.max_attempts = 1;
  // A malformed reference, an unreachable registry, an image the store lacks without pulling.
  EXPECT_EQ(error_of([&] { runtime::resolve_image(store, "Not/A:Ref:!", io); }).kind(),
            ErrorKind::kInvalidArgument);
  Error net = error_of([&] { runtime::resolve_image(store, "127.0.0.1:1/nothing:1", io); });
  EXPECT_EQ(net.kind(), ErrorKind::kNetwork) << net.what();
  runtime::ImageOptions no_pull = io;
  no_pull.pull_missing = false;
  EXPECT_EQ(
      error_of([&] { runtime::resolve_image(store, "127.0.0.1:1/nothing:1", no_pull); }).kind(),
      ErrorKind::kNotFound);
  EXPECT_TRUE(store.list().empty());

  // A convert into a directory that does not exist; an init that does not exist.
  ImageSpec spec;
  spec.layers.push_back(layer({file("a", "a\n")}));
  TempDir layout("rt-layout");
  write_oci_layout(layout.path(), {{"t", build_image(spec)}});
  auto src = runtime::resolve_image(store, "oci:" + layout.path().string() + ":t", io);
  Error io_err =
      error_of([&] { runtime::convert_to_path(*src, home.path() / "no" / "dir" / "x.ext4"); });
  EXPECT_EQ(io_err.kind(), ErrorKind::kNotFound) << io_err.what();
  EXPECT_NE(std::string(io_err.what()).find((home.path() / "no" / "dir").string()),
            std::string::npos)
      << io_err.what();
  runtime::RootfsOptions bad_init;
  bad_init.init_binary = home.path() / "no-init";
  EXPECT_EQ(error_of([&] { runtime::convert_to_cache(store, *src, bad_init); }).kind(),
            ErrorKind::kNotFound);
  EXPECT_TRUE(files_under(home.path() / "rootfs").empty());

  // Machines the options cannot make.
  runtime::MachineOptions mo;
  mo.kernel = "vmlinux";
  mo.rootfs = "root.ext4";
  mo.cpus = 0;
  EXPECT_EQ(error_of([&] { runtime::build_machine(mo); }).kind(), ErrorKind::kInvalidArgument);
  mo.cpus = 1;
  mo.network = runtime::NetworkMode::kNone;
  mo.publish = vm::parse_port_forward("8080:80");
  Error none = error_of([&] { runtime::build_machine(mo); });
  EXPECT_NE(std::string(none.what()).find("need a network"), std::string::npos) << none.what();
  mo.publish.clear();
  mo.overrides.working_dir = "relative";
  EXPECT_EQ(error_of([&] { runtime::build_machine(mo); }).kind(), ErrorKind::kInvalidArgument);
  mo.overrides.working_dir.reset();
  mo.publish_all = true;
  mo.network = runtime::NetworkMode::kUser;
  mo.image_config_json = R"({"config":{"ExposedPorts":{"99999/tcp":{}}}})";
  EXPECT_EQ(error_of([&] { runtime::build_machine(mo); }).kind(), ErrorKind::kInvalidArgument);
  // An explicit kernel that does not exist.
  EXPECT_EQ(error_of([&] { runtime::find_guest_kernel((home.path() / "nope").string()); }).kind(),
            ErrorKind::kNotFound);
}

}  // namespace
