// run --rootfs DIR as the facade sees it: where the image config comes from (DIR/.img2vm, else a
// bundle umoci unpacked, else none), what it refuses in DIR, the command check, and the
// initramfs holding the init, read back with libarchive.
#include "img2vm/runtime/root_dir.hpp"

#include <archive.h>
#include <archive_entry.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <memory>

#include "image_builder.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/guestabi/cmdline.hpp"
#include "img2vm/guestabi/config.hpp"
#include "img2vm/runtime/machine.hpp"
#include "img2vm/runtime/mounts.hpp"
#include "process.hpp"

namespace img2vm::runtime {
namespace {

namespace fs = std::filesystem;
using Strings = std::vector<std::string>;
using namespace img2vm::testing;

template <typename F>
Error error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  return Error(ErrorKind::kInternal, "(no error)");
}

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

std::string own_config(const Strings& cmd) {
  guestabi::RuntimeConfig c;
  c.cmd = cmd;
  return guestabi::to_json(c);
}

std::string bundle_config(const std::string& root_path, const Strings& args) {
  std::string a;
  for (const auto& s : args) a += (a.empty() ? "\"" : ",\"") + s + "\"";
  return R"({"ociVersion":"1.0.2","root":{"path":")" + root_path + R"("},"process":{"args":[)" + a +
         R"(],"cwd":"/","user":{"uid":0,"gid":0}}})";
}

TEST(RootDirectory, ConfigPrecedence) {
  TempDir t("rootdir");
  fs::path root = t.path() / "rootfs";
  fs::create_directories(root / ".img2vm");
  // No config at all.
  auto none = open_root_directory(root, false);
  EXPECT_EQ(none.path, fs::canonical(root));
  EXPECT_FALSE(none.config);
  EXPECT_TRUE(none.config_file.empty());
  // A bundle config for another root is not ours; one for this root is (relative or absolute).
  write_file_atomic(t.path() / "config.json", bundle_config("elsewhere", {"other"}));
  EXPECT_FALSE(open_root_directory(root, false).config);
  for (const std::string& p :
       {std::string("rootfs"), (t.path() / "rootfs").string(), std::string("./rootfs/")}) {
    write_file_atomic(t.path() / "config.json", bundle_config(p, {"from-bundle"}));
    auto b = open_root_directory(root, true);
    ASSERT_TRUE(b.config) << p;
    EXPECT_EQ(b.config->cmd, Strings{"from-bundle"});
    EXPECT_EQ(b.config_file, fs::canonical(t.path()) / "config.json");
    EXPECT_TRUE(b.read_only);
  }
  // DIR/.img2vm/config.json comes first.
  write_file_atomic(root / ".img2vm/config.json", own_config({"from-dir"}));
  auto own = open_root_directory(root, false);
  ASSERT_TRUE(own.config);
  EXPECT_EQ(own.config->cmd, Strings{"from-dir"});
  EXPECT_EQ(own.config_file, fs::canonical(root) / ".img2vm/config.json");
  // Something else called config.json beside DIR is no bundle config.
  fs::remove(root / ".img2vm/config.json");
  write_file_atomic(t.path() / "config.json", R"({"auths":{}})");
  EXPECT_FALSE(open_root_directory(root, false).config);
}

TEST(RootDirectory, BadDirectoriesAndConfigsAreOneClearError) {
  TempDir t("rootdir");
  fs::path root = t.path() / "rootfs";
  fs::create_directories(root);
  Error missing = error_of([&] { open_root_directory(t.path() / "nope", false); });
  EXPECT_EQ(missing.kind(), ErrorKind::kNotFound);
  EXPECT_TRUE(has(missing.what(), "does not exist")) << missing.what();
  write_file_atomic(t.path() / "file", "x");
  Error file = error_of([&] { open_root_directory(t.path() / "file", false); });
  EXPECT_EQ(file.kind(), ErrorKind::kInvalidArgument);
  EXPECT_TRUE(has(file.what(), "is not a directory")) << file.what();

  fs::create_directories(root / ".img2vm");
  write_file_atomic(root / ".img2vm/config.json", R"({"schema":1,"cmd":"sh"})");
  Error bad = error_of([&] { open_root_directory(root, false); });
  EXPECT_EQ(bad.kind(), ErrorKind::kInvalidArgument);
  EXPECT_TRUE(has(bad.what(), ".img2vm/config.json") && has(bad.what(), "\"cmd\"")) << bad.what();

  // The tree may come from an untrusted image: no symlink is followed to a host file, and a FIFO
  // is not opened for reading (which would block).
  fs::remove(root / ".img2vm/config.json");
  write_file_atomic(t.path() / "host.json", own_config({"host-file"}));
  fs::create_symlink(t.path() / "host.json", root / ".img2vm/config.json");
  Error link = error_of([&] { open_root_directory(root, false); });
  EXPECT_TRUE(has(link.what(), "symbolic link")) << link.what();
  fs::remove(root / ".img2vm/config.json");
  ASSERT_EQ(::mkfifo((root / ".img2vm/config.json").c_str(), 0644), 0);
  Error fifo = error_of([&] { open_root_directory(root, false); });
  EXPECT_TRUE(has(fifo.what(), "not a regular file")) << fifo.what();
  fs::remove(root / ".img2vm/config.json");
  fs::remove(root / ".img2vm");
  fs::create_directory_symlink(t.path(), root / ".img2vm");
  write_file_atomic(t.path() / "config.json", own_config({"via-link"}));
  Error dirlink = error_of([&] { open_root_directory(root, false); });
  EXPECT_TRUE(has(dirlink.what(), ".img2vm")) << dirlink.what();
  fs::remove(root / ".img2vm");

  // The bundle's config: wrong types name the file and field; too large is refused.
  write_file_atomic(t.path() / "config.json",
                    R"({"ociVersion":"1","root":{"path":"rootfs"},"process":{"args":"sh"}})");
  Error oci = error_of([&] { open_root_directory(root, false); });
  EXPECT_TRUE(has(oci.what(), "config.json") && has(oci.what(), "\"args\"")) << oci.what();
  write_file_atomic(t.path() / "config.json",
                    bundle_config("rootfs", {std::string(guestabi::kMaxOciConfigJson, 'a')}));
  EXPECT_EQ(error_of([&] { open_root_directory(root, false); }).kind(), ErrorKind::kLimit);
}

TEST(RootDirectory, WithoutAConfigTheCommandLineMustGiveACommand) {
  RootDirectory r;
  r.path = "/srv/root";
  guestabi::RunOverrides o;
  Error e = error_of([&] { check_root_command(r, o); });
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
  EXPECT_TRUE(has(e.what(), "/srv/root has no image config")) << e.what();
  o.entrypoint = Strings{};
  EXPECT_EQ(error_of([&] { check_root_command(r, o); }).kind(), ErrorKind::kInvalidArgument);
  o.cmd = Strings{"true"};
  check_root_command(r, o);
  o = {};
  o.entrypoint = Strings{"/bin/sh"};
  check_root_command(r, o);
  r.config = guestabi::RuntimeConfig{};
  check_root_command(r, guestabi::RunOverrides{});  // the image's (even none: the init says so)
}

TEST(RootDirectory, InitramfsHoldsOnlyTheInit) {
  TempDir t("initramfs");
  std::string init_bytes;
  for (int i = 0; i < 100000; ++i) init_bytes += char(i * 7);
  write_file_atomic(t.path() / "init", init_bytes);
  const std::string cpio = init_initramfs(t.path() / "init");

  std::unique_ptr<archive, decltype(&archive_read_free)> a(archive_read_new(), &archive_read_free);
  archive_read_support_format_cpio(a.get());
  ASSERT_EQ(archive_read_open_memory(a.get(), cpio.data(), cpio.size()), ARCHIVE_OK);
  struct Seen {
    std::string path;
    mode_t type;
    mode_t perm;
    int64_t uid, gid;
    std::string data;
  };
  std::vector<Seen> seen;
  archive_entry* e = nullptr;
  while (archive_read_next_header(a.get(), &e) == ARCHIVE_OK) {
    Seen s{archive_entry_pathname(e), archive_entry_filetype(e), archive_entry_perm(e),
           archive_entry_uid(e),      archive_entry_gid(e),      {}};
    char buf[65536];
    for (la_ssize_t n; (n = archive_read_data(a.get(), buf, sizeof buf)) > 0;)
      s.data.append(buf, n);
    seen.push_back(std::move(s));
  }
  EXPECT_EQ(archive_format(a.get()), ARCHIVE_FORMAT_CPIO_SVR4_NOCRC);  // newc, as the kernel reads
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].path, ".img2vm");
  EXPECT_EQ(seen[0].type, mode_t(AE_IFDIR));
  EXPECT_EQ(seen[0].perm, 0755u);
  EXPECT_EQ(seen[1].path, ".img2vm/init");
  EXPECT_EQ(seen[1].type, mode_t(AE_IFREG));
  EXPECT_EQ(seen[1].perm, 0755u);
  EXPECT_EQ(seen[1].uid, 0);
  EXPECT_EQ(seen[1].gid, 0);
  EXPECT_TRUE(seen[1].data == init_bytes) << seen[1].data.size() << " bytes";
  EXPECT_THROW(init_initramfs(t.path() / "missing"), Error);
}

// A bundle as umoci unpacks it from an image (umoci's config.json, not ours): its Entrypoint and
// Cmd, Env, WorkingDir and User are what the guest gets.
TEST(RootDirectory, UmociUnpackedBundle) {
  if (find_program("umoci").empty()) GTEST_SKIP() << "umoci not installed";
  TempDir t("rootdir-umoci");
  ImageSpec s;
  s.layers.push_back(
      layer({dir("bin"), dir("etc"), file("etc/passwd", "root:x:0:0::/:/bin/sh\n")}));
  s.config.entrypoint = {"/bin/sh", "-c"};
  s.config.cmd = {"echo hi"};
  s.config.env = {"PATH=/bin", "MODE=umoci"};
  s.config.working_dir = "/work";
  s.config.user = "7:8";
  write_oci_layout(t.path() / "layout", {{"latest", build_image(s)}});
  auto r =
      run_command({"umoci", "unpack", "--rootless", "--image",
                   (t.path() / "layout").string() + ":latest", (t.path() / "bundle").string()});
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  auto root = open_root_directory(t.path() / "bundle/rootfs", false);
  ASSERT_TRUE(root.config);
  EXPECT_EQ(root.config->cmd, (Strings{"/bin/sh", "-c", "echo hi"}));
  EXPECT_EQ(root.config->working_dir, "/work");
  EXPECT_EQ(root.config->user, "7:8");
  EXPECT_TRUE(std::find(root.config->env.begin(), root.config->env.end(), "MODE=umoci") !=
              root.config->env.end());
  EXPECT_FALSE(fs::exists(t.path() / "bundle/rootfs/.img2vm"));  // nothing written into DIR
}

// The facade's composition: no root disk, the initramfs as the initrd, the command line naming
// the root share, a virtiofsd serving DIR, and the directory's config in the overrides (a
// virtiofsd that cannot start here, without root, skips).
TEST(RootDirectory, BuildMachineBootsTheDirectoryFromAnInitramfs) {
  constexpr const char* kVirtiofsd = "/usr/lib/qemu/virtiofsd";
  if (::access(kVirtiofsd, X_OK) != 0) GTEST_SKIP() << kVirtiofsd << " not installed";
  if (::geteuid() != 0) GTEST_SKIP() << "virtiofsd's sandbox here needs root";
  TempDir t("rootdir-machine");
  fs::create_directories(t.path() / "rootfs/.img2vm");
  write_file_atomic(t.path() / "rootfs/.img2vm/config.json", own_config({"from-dir"}));
  write_file_atomic(t.path() / "init", "not really an init");
  MachineOptions mo;
  mo.kernel = "/nonexistent/vmlinux";  // not opened by build_machine
  mo.root_dir = open_root_directory(t.path() / "rootfs", true);
  mo.init = t.path() / "init";
  mo.network = NetworkMode::kNone;
  mo.disks.push_back({t.path() / "init", true});
  PreparedMachine p = build_machine(mo);
  ASSERT_EQ(p.config.disks.size(), 1u);  // only the extra disk: /dev/vda
  EXPECT_EQ(p.config.disks[0].path, fs::absolute(t.path() / "init"));
  ASSERT_TRUE(p.initramfs);
  EXPECT_EQ(p.config.initrd, "/proc/self/fd/" + std::to_string(p.initramfs.get()));
  EXPECT_TRUE(read_file(p.config.initrd) == init_initramfs(t.path() / "init"));
  auto root = guestabi::kernel_param(p.config.cmdline, guestabi::kRootParam);
  ASSERT_TRUE(root) << p.config.cmdline;
  EXPECT_EQ(guestabi::parse_root_share(*root), (guestabi::RootShare{"img2vm-root", true}));
  EXPECT_EQ(guestabi::kernel_param(p.config.cmdline, "root"), std::nullopt) << p.config.cmdline;
  ASSERT_EQ(p.shares.size(), 1u);
  EXPECT_EQ(p.shares[0].source(), fs::canonical(t.path() / "rootfs"));
  ASSERT_EQ(p.config.fs.size(), 1u);
  EXPECT_EQ(p.config.fs[0].tag, "img2vm-root");
  ASSERT_TRUE(p.overrides.image);
  EXPECT_EQ(p.overrides.image->cmd, Strings{"from-dir"});
  EXPECT_FALSE(fs::exists(t.path() / "rootfs/.img2vm/init"));  // nothing written into DIR

  // A volume with a root directory: no image to fill it from, so it is made empty and served.
  MachineOptions vo;
  vo.kernel = "/nonexistent/vmlinux";
  vo.root_dir = open_root_directory(t.path() / "rootfs", false);
  vo.init = t.path() / "init";
  vo.network = NetworkMode::kNone;
  vo.volumes_dir = t.path() / "volumes";
  vo.mounts.push_back(parse_volume("cache:/etc"));
  PreparedMachine pv = build_machine(vo);
  ASSERT_EQ(pv.volumes.size(), 1u);
  EXPECT_FALSE(pv.volumes[0].copied);
  EXPECT_TRUE(fs::is_empty(t.path() / "volumes/cache/_data"));
  ASSERT_EQ(pv.shares.size(), 2u);  // the volume's, then the root's
  EXPECT_EQ(pv.shares[0].source(), fs::canonical(t.path() / "volumes/cache/_data"));

  // No config and no command: refused before anything starts.
  fs::remove_all(t.path() / "rootfs/.img2vm");
  MachineOptions bare;
  bare.kernel = "/nonexistent/vmlinux";
  bare.root_dir = open_root_directory(t.path() / "rootfs", false);
  bare.init = t.path() / "init";
  EXPECT_EQ(error_of([&] { build_machine(bare); }).kind(), ErrorKind::kInvalidArgument);
  bare.rootfs = t.path() / "init";
  bare.overrides.cmd = Strings{"true"};
  EXPECT_TRUE(has(error_of([&] { build_machine(bare); }).what(), "a root directory given"));
}

}  // namespace
}  // namespace img2vm::runtime
