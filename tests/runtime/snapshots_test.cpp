// The snapshot store (snapshots.hpp) on a temporary directory, without KVM: keys, commit, find,
// list, remove and prune, what a half-written or edited snapshot looks like to them; and the
// machine a run in the snapshot layout gets (build_machine): the command line, the overrides
// disk of a fixed size with fresh entropy and time, the refusal of what a snapshot cannot hold.
#include "img2vm/runtime/snapshots.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <map>
#include <nlohmann/json.hpp>

#include "img2vm/base/digest.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/guestabi/cmdline.hpp"
#include "img2vm/guestabi/overrides_disk.hpp"
#include "img2vm/runtime/mounts.hpp"

namespace img2vm::runtime {
namespace {

namespace fs = std::filesystem;

class Snapshots : public ::testing::Test {
 protected:
  TempDir tmp{"img2vm-snapshots-test"};
  SnapshotStore ss{tmp.path() / "snapshots"};
  fs::path kernel = tmp.path() / "vmlinux";
  fs::path rootfs = tmp.path() / "rootfs" / "0123abcd.ext4";

  void SetUp() override {
    write_file_atomic(kernel, "a kernel");
    fs::create_directories(rootfs.parent_path());
    write_file_atomic(rootfs, std::string(4096, 'r'));
  }
  SnapshotInputs inputs(uint64_t mib = 256, unsigned cpus = 1) const {
    return SnapshotInputs{kernel, rootfs, mib, cpus, "demo/hello:latest", {}};
  }
  // A snapshot as Machine::save_snapshot leaves it (its files' content is not looked at here).
  SnapshotInfo store(const SnapshotInputs& in) const {
    fs::path t = ss.begin();
    write_file_atomic(t / "memory", std::string(8192, 'm'));
    write_file_atomic(t / "state", "IMG2VMSN");
    return ss.commit(t, in);
  }
};

TEST_F(Snapshots, KeysFollowEveryInput) {
  const std::string k = snapshot_key(inputs());
  EXPECT_EQ(k.size(), 32u);
  EXPECT_EQ(k, snapshot_key(inputs()));
  SnapshotInputs named = inputs();
  named.image = "another/name:tag";  // the same rootfs under another name: the same snapshot
  EXPECT_EQ(snapshot_key(named), k);
  EXPECT_NE(snapshot_key(inputs(512)), k);
  EXPECT_NE(snapshot_key(inputs(256, 2)), k);
  SnapshotInputs net = inputs();
  net.network = NetworkMode::kUser;  // a NIC in the machine
  EXPECT_NE(snapshot_key(net), k);
  write_file_atomic(kernel, "another kernel");
  EXPECT_NE(snapshot_key(inputs()), k);
  write_file_atomic(kernel, "a kernel");
  SnapshotInputs other = inputs();
  other.rootfs = rootfs.parent_path() / "4567cdef.ext4";
  write_file_atomic(other.rootfs, std::string(4096, 'r'));
  EXPECT_NE(snapshot_key(other), k);
}

// A kernel's digest is remembered by the file's identity: an unchanged old file is not hashed
// again (a planted wrong digest under its identity is what comes back, so the entry is used);
// a file rewritten since, or one changed in the last seconds, is hashed.
TEST_F(Snapshots, KernelDigestsAreRememberedForUnchangedFilesOnly) {
  const fs::path old_file = "/usr/bin/env";  // installed long ago: its change time is old
  ASSERT_TRUE(fs::exists(old_file));
  fs::create_directories(ss.dir());
  const std::string real = sha256_file(old_file).str();
  EXPECT_EQ(ss.kernel_digest(old_file), real);
  std::vector<fs::path> entries;
  for (const auto& e : fs::directory_iterator(ss.dir() / ".kernel-digests"))
    entries.push_back(e.path());
  ASSERT_EQ(entries.size(), 1u);
  std::string text = read_file(entries[0]);
  ASSERT_TRUE(text.ends_with(real + "\n")) << text;
  const std::string planted = "sha256:" + std::string(64, 'a');
  write_file_atomic(entries[0], text.substr(0, text.size() - real.size() - 1) + planted + "\n");
  EXPECT_EQ(ss.kernel_digest(old_file), planted);
  write_file_atomic(entries[0], "damaged");
  EXPECT_EQ(ss.kernel_digest(old_file), real);

  // A kernel rewritten since it was hashed is hashed again (whether its first digest was
  // remembered depends on how long ago SetUp wrote it: not asserted).
  EXPECT_EQ(ss.kernel_digest(kernel), "sha256:" + Digest::sha256_of("a kernel").hex());
  write_file_atomic(kernel, "a kernel, rebuilt");
  EXPECT_EQ(ss.kernel_digest(kernel), "sha256:" + Digest::sha256_of("a kernel, rebuilt").hex());
  EXPECT_TRUE(ss.list().empty());  // the cache is not a snapshot
  EXPECT_TRUE(ss.prune(true).removed.empty());
  EXPECT_TRUE(fs::exists(entries[0]));
}

TEST_F(Snapshots, CommitFindListRemove) {
  EXPECT_TRUE(ss.list().empty());  // no directory yet: nothing, no error
  EXPECT_FALSE(fs::exists(ss.dir()));
  SnapshotInfo a = store(inputs());
  EXPECT_EQ(a.key, snapshot_key(inputs()));
  EXPECT_EQ(a.dir, ss.dir() / a.key);
  EXPECT_EQ(a.image, "demo/hello:latest");
  EXPECT_EQ(a.rootfs, "0123abcd.ext4");
  EXPECT_EQ(a.memory_mib, 256u);
  EXPECT_EQ(a.cpus, 1u);
  EXPECT_EQ(a.kernel_digest, "sha256:" + Digest::sha256_of("a kernel").hex());
  EXPECT_GT(a.bytes, 0u);
  EXPECT_EQ(a.network, "none");
  EXPECT_TRUE(snapshot_mismatch(a, inputs()).empty());
  SnapshotInputs net = inputs();
  net.network = NetworkMode::kUser;
  EXPECT_EQ(snapshot_mismatch(a, net), "it was taken with network none, this run has user");
  ASSERT_TRUE(ss.find(a.key));
  EXPECT_FALSE(ss.find("../" + a.key));
  EXPECT_FALSE(ss.find(a.key.substr(1)));
  SnapshotInfo b = store(inputs(512));
  EXPECT_EQ(ss.list().size(), 2u);
  // Stored again: replaced, not doubled.
  store(inputs());
  EXPECT_EQ(ss.list().size(), 2u);

  {
    // 17 snapshots: two of them share a first hex digit, a prefix that names neither.
    std::map<char, std::string> first;
    std::string prefix;
    for (uint64_t mib = 1024; prefix.empty(); mib += 64) {
      std::string k = store(inputs(mib)).key;
      if (!first.emplace(k[0], k).second) prefix = k.substr(0, 1);
    }
    try {
      ss.remove(prefix);
      ADD_FAILURE() << "an ambiguous prefix removed a snapshot";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find(" is ambiguous: "), std::string::npos) << e.what();
    }
    for (const auto& sn : ss.list())
      if (sn.memory_mib >= 1024) ss.remove(sn.key);
  }
  EXPECT_EQ(ss.remove(a.key.substr(0, 12)).key, a.key);  // a unique prefix
  EXPECT_FALSE(ss.find(a.key));
  try {
    ss.remove(a.key);
    ADD_FAILURE() << "removed twice";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
  }
  try {
    ss.remove("");
    ADD_FAILURE() << "an empty key removed something";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
  }
  EXPECT_TRUE(ss.find(b.key));
}

// What a run resumes (choose_snapshot, as img2vm run uses it): the snapshot of its kernel,
// rootfs, memory, vCPUs and network; none for a run whose devices a snapshot cannot hold (said
// in `skipped`); one taken with another kernel is named in `mismatched`, a snapshot of another
// shape (memory) in neither.
TEST_F(Snapshots, ARunChoosesTheSnapshotThatFitsIt) {
  MachineOptions mo;
  mo.kernel = kernel;
  mo.rootfs = rootfs;
  mo.memory_mib = 256;
  mo.cpus = 1;
  mo.network = NetworkMode::kNone;  // as inputs()'s
  SnapshotChoice none = choose_snapshot(ss, mo, "demo/hello:latest");
  EXPECT_FALSE(none.snapshot);
  EXPECT_TRUE(none.skipped.empty());
  EXPECT_TRUE(none.mismatched.empty());
  EXPECT_FALSE(fs::exists(ss.dir())) << "a store without snapshots is left alone";

  store(inputs(512));
  EXPECT_FALSE(choose_snapshot(ss, mo, "demo/hello:latest").snapshot);
  const SnapshotInfo a = store(inputs());
  SnapshotChoice c = choose_snapshot(ss, mo, "demo/hello:latest");
  ASSERT_TRUE(c.snapshot);
  EXPECT_EQ(c.snapshot->key, a.key);
  EXPECT_EQ(c.snapshot->dir, a.dir);
  EXPECT_TRUE(c.skipped.empty());
  EXPECT_TRUE(c.mismatched.empty());
  mo.cpus = 2;
  EXPECT_FALSE(choose_snapshot(ss, mo, "demo/hello:latest").snapshot);
  mo.cpus = 1;
  mo.network = NetworkMode::kUser;  // a NIC: another key
  EXPECT_FALSE(choose_snapshot(ss, mo, "demo/hello:latest").snapshot);
  mo.network = NetworkMode::kNone;

  Mount m;
  m.type = Mount::Type::kTmpfs;
  m.target = "/scratch";
  mo.mounts.push_back(m);
  c = choose_snapshot(ss, mo, "demo/hello:latest");
  EXPECT_FALSE(c.snapshot);
  EXPECT_EQ(c.skipped, "snapshot " + a.key + " not used: this run has mounts (virtio-fs)");
  mo.mounts.clear();

  write_file_atomic(kernel, "a rebuilt kernel");
  c = choose_snapshot(ss, mo, "demo/hello:latest");
  EXPECT_FALSE(c.snapshot);
  ASSERT_EQ(c.mismatched.size(), 2u);  // both shapes of this rootfs: another kernel
  for (const std::string& line : c.mismatched)
    EXPECT_NE(line.find(" of this image not used: it was taken with kernel sha256:"),
              std::string::npos)
        << line;
  mo.rootfs = rootfs.parent_path() / "4567cdef.ext4";  // another image's: none of its snapshots
  write_file_atomic(mo.rootfs, std::string(4096, 'r'));
  EXPECT_TRUE(choose_snapshot(ss, mo, "other").mismatched.empty());
}

TEST_F(Snapshots, HalfWrittenOrEditedSnapshotsAreNotFound) {
  SnapshotInfo a = store(inputs());
  // A create interrupted before commit: a temporary directory, never listed.
  fs::path t = ss.begin();
  write_file_atomic(t / "memory", "m");
  EXPECT_EQ(ss.list().size(), 1u);
  // A key directory without its state (a disk that lost it): not whole, not found.
  fs::remove(a.dir / "state");
  EXPECT_FALSE(ss.find(a.key));
  store(inputs());
  // snapshot.json edited to claim another kernel: the key still finds it, the check does not.
  auto j = nlohmann::json::parse(read_file(a.dir / "snapshot.json"));
  j["kernel_digest"] = "sha256:" + std::string(64, '0');
  write_file_atomic(a.dir / "snapshot.json", j.dump());
  auto edited = ss.find(a.key);
  ASSERT_TRUE(edited);
  EXPECT_NE(snapshot_mismatch(*edited, inputs()).find("taken with kernel sha256:000"),
            std::string::npos)
      << snapshot_mismatch(*edited, inputs());
  // A directory renamed to another key: its snapshot.json names its own.
  SnapshotInputs other = inputs(1024);
  fs::rename(a.dir, ss.dir() / snapshot_key(other));
  EXPECT_FALSE(ss.find(snapshot_key(other)));
}

TEST_F(Snapshots, PruneDropsSnapshotsWhoseRootfsLeftAndLeftovers) {
  SnapshotInfo a = store(inputs());
  SnapshotInfo b = store(inputs(512));
  fs::path t = ss.begin();
  auto r = ss.prune(false);
  EXPECT_TRUE(r.removed.empty());
  EXPECT_FALSE(fs::exists(t));  // the interrupted create's directory
  EXPECT_EQ(ss.list().size(), 2u);
  fs::remove(rootfs);  // pruned from the rootfs cache: the snapshots cannot be resumed
  r = ss.prune(false);
  EXPECT_EQ(r.removed.size(), 2u);
  EXPECT_GT(r.bytes, 0u);
  EXPECT_TRUE(ss.list().empty());
  write_file_atomic(rootfs, std::string(4096, 'r'));
  store(inputs());
  EXPECT_EQ(ss.prune(true).removed, std::vector<std::string>{a.key});
  (void)b;
}

// The snapshot layout: the init stops at its point, the overrides always on a disk of the
// largest size (the same for every run), fresh entropy and time in them.
TEST_F(Snapshots, TheSnapshotLayoutsMachine) {
  auto prepare = [&](bool layout) {
    MachineOptions mo;
    mo.kernel = kernel;
    mo.rootfs = rootfs;
    mo.network = NetworkMode::kNone;
    mo.snapshot_layout = layout;
    mo.overrides.cmd = std::vector<std::string>{"echo", "hi"};
    return build_machine(std::move(mo));
  };
  PreparedMachine cold = prepare(false);
  EXPECT_EQ(cold.config.cmdline.find(guestabi::kSnapshotParam), std::string::npos);
  EXPECT_EQ(cold.config.disks.size(), 1u);  // short overrides: inline
  EXPECT_FALSE(cold.config.vsock);
  PreparedMachine p = prepare(true);
  // The vsock device in every machine of the layout (attached runs' without a host side), so
  // that -d runs, whose monitor gives it a socket, resume the same snapshots.
  ASSERT_TRUE(p.config.vsock);
  EXPECT_EQ(p.config.vsock->guest_cid, kDetachedGuestCid);
  EXPECT_TRUE(p.config.vsock->uds_path.empty());
  EXPECT_NE(p.config.cmdline.find(std::string(guestabi::kSnapshotParam) + "=1"), std::string::npos)
      << p.config.cmdline;
  ASSERT_EQ(p.config.disks.size(), 2u);
  EXPECT_EQ(p.config.disks[1].mode, vm::DiskMode::kReadOnly);
  EXPECT_NE(p.config.cmdline.find("/dev/vdb"), std::string::npos) << p.config.cmdline;
  struct stat st {};
  ASSERT_EQ(::fstat(p.overrides_disk.get(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), guestabi::kMaxOverridesDisk);
  std::string bytes(4096, '\0');
  ASSERT_EQ(::pread(p.overrides_disk.get(), bytes.data(), bytes.size(), 0), 4096);
  guestabi::RunOverrides ov = guestabi::decode_overrides_disk(bytes);
  EXPECT_EQ(ov.entropy.size(), 32u);
  ASSERT_TRUE(ov.realtime_ns);
  EXPECT_GT(*ov.realtime_ns, int64_t{1767225600} * 1000000000);  // after 2026-01-01
  PreparedMachine q = prepare(true);
  std::string again(4096, '\0');
  ASSERT_EQ(::pread(q.overrides_disk.get(), again.data(), again.size(), 0), 4096);
  EXPECT_NE(guestabi::decode_overrides_disk(again).entropy, ov.entropy);  // fresh per VM

  // The user network fits, with a MAC of each run's own that the init sets (the restored
  // driver read the snapshot's from the device).
  auto with_net = [&] {
    MachineOptions mo;
    mo.kernel = kernel;
    mo.rootfs = rootfs;
    mo.snapshot_layout = true;  // the default network: user
    return build_machine(std::move(mo));
  };
  PreparedMachine n1 = with_net(), n2 = with_net();
  ASSERT_TRUE(n1.config.net && n2.config.net);
  ASSERT_TRUE(n1.overrides.net && n2.overrides.net);
  EXPECT_EQ(n1.overrides.net->mac, guestabi::format_mac(n1.config.net->mac));
  EXPECT_TRUE(n1.overrides.net->mac.starts_with("52:54:00:")) << n1.overrides.net->mac;
  EXPECT_NE(n1.config.net->mac, n2.config.net->mac);  // 1 in 16.7 million to fail by chance

  // What a snapshot cannot hold yet is refused, naming it (before the namespace is looked at).
  MachineOptions netns;
  netns.kernel = kernel;
  netns.rootfs = rootfs;
  netns.network = NetworkMode::kNetns;
  netns.netns = "/run/netns/img2vm-test-none";
  netns.snapshot_layout = true;
  try {
    build_machine(std::move(netns));
    ADD_FAILURE() << "a snapshot layout with an engine's network namespace";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_STREQ(e.what(), "machine: a snapshot cannot hold an engine's network namespace yet");
  }
  MachineOptions tap;  // a tap network can (built as root only: not here)
  tap.network = NetworkMode::kTap;
  EXPECT_EQ(snapshot_unsupported(tap), "");
  MachineOptions resume;
  resume.kernel = kernel;
  resume.rootfs = rootfs;
  resume.network = NetworkMode::kNone;
  resume.snapshot = ss.dir() / "k";
  PreparedMachine r = build_machine(std::move(resume));
  EXPECT_EQ(r.config.restore_from, ss.dir() / "k");
  EXPECT_NE(r.config.cmdline.find(guestabi::kSnapshotParam), std::string::npos);
}

}  // namespace
}  // namespace img2vm::runtime
