// docker's -v/--volume, --mount and --tmpfs syntax as the facade parses it (mounts.hpp), every
// form and every error, and how build_machine turns tmpfs mounts into the guest's overrides.
#include "img2vm/runtime/mounts.hpp"

#include <gtest/gtest.h>

#include "img2vm/base/error.hpp"
#include "img2vm/runtime/machine.hpp"

namespace img2vm::runtime {
namespace {

Mount bind(std::string source, std::string target, bool ro = false) {
  Mount m;
  m.source = std::move(source);
  m.target = std::move(target);
  m.read_only = ro;
  return m;
}

Mount tmpfs(std::string target, uint64_t size = 0, uint32_t mode = 0, bool ro = false) {
  Mount m;
  m.type = Mount::Type::kTmpfs;
  m.target = std::move(target);
  m.size = size;
  m.mode = mode;
  m.read_only = ro;
  return m;
}

Mount volume(std::string name, std::string target, bool ro = false, bool nocopy = false) {
  Mount m;
  m.type = Mount::Type::kVolume;
  m.volume = std::move(name);
  m.target = std::move(target);
  m.read_only = ro;
  m.nocopy = nocopy;
  return m;
}

// The message of the Error `f` throws (kInvalidArgument), or a failure.
template <class F>
std::string error_of(F f) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return "";
}

TEST(Volume, HostGuestAndMode) {
  EXPECT_EQ(parse_volume("/srv/data:/data"), bind("/srv/data", "/data"));
  EXPECT_EQ(parse_volume("/srv/data:/data:ro"), bind("/srv/data", "/data", true));
  EXPECT_EQ(parse_volume("/srv/data:/data:rw"), bind("/srv/data", "/data"));
  // Normalised both sides, as docker's filepath.Clean.
  EXPECT_EQ(parse_volume("/srv//data/:/a/./b/../c/"), bind("/srv/data", "/a/c"));
  // ./ and ../ paths from the current directory.
  EXPECT_EQ(parse_volume("./x:/x").source, std::filesystem::current_path() / "x");
}

TEST(Volume, NamedAndAnonymous) {
  EXPECT_EQ(parse_volume("data:/data"), volume("data", "/data"));
  EXPECT_EQ(parse_volume("my.vol_1-x:/var/lib/x/:ro"), volume("my.vol_1-x", "/var/lib/x", true));
  EXPECT_EQ(parse_volume("data:/data:nocopy,ro"), volume("data", "/data", true, true));
  EXPECT_EQ(parse_volume("/var/cache"), volume("", "/var/cache"));
  EXPECT_EQ(parse_volume("/var//cache/"), volume("", "/var/cache"));
}

TEST(Volume, Errors) {
  const std::string bad_name =
      "-v x y:/data: \"x y\" includes invalid characters for a local volume name, only "
      "\"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed (2 to 255 bytes). If you intended to pass a "
      "host directory, use absolute path";
  EXPECT_EQ(error_of([] { parse_volume("x y:/data"); }), bad_name);
  EXPECT_NE(error_of([] { parse_volume("_data:/data"); }).find("invalid characters"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_volume("d:/data"); }).find("invalid characters"),
            std::string::npos);
  EXPECT_NE(
      error_of([] { parse_volume(std::string(256, 'a') + ":/data"); }).find("invalid characters"),
      std::string::npos);
  EXPECT_NE(error_of([] { parse_volume("data"); }).find("mount path must be absolute"),
            std::string::npos);
  EXPECT_EQ(error_of([] { parse_volume("/srv:/data:nocopy"); }),
            "-v /srv:/data:nocopy: unsupported option 'nocopy' (ro or rw)");
  EXPECT_EQ(error_of([] { parse_volume("/srv:data"); }),
            "-v /srv:data: invalid mount path: 'data' mount path must be absolute");
  EXPECT_EQ(error_of([] { parse_volume("/srv:/"); }),
            "-v /srv:/: invalid specification: destination can't be '/'");
  EXPECT_EQ(error_of([] { parse_volume("/srv:/a/..:ro"); }),
            "-v /srv:/a/..:ro: invalid specification: destination can't be '/'");
  EXPECT_EQ(error_of([] { parse_volume("/srv:/data:z"); }),
            "-v /srv:/data:z: unsupported option 'z' (ro or rw)");
  EXPECT_NE(error_of([] { parse_volume("/srv:/data:ro:x"); }).find("invalid volume specification"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_volume(":/data"); }).find("invalid characters"), std::string::npos);
}

TEST(MountFlag, Bind) {
  EXPECT_EQ(parse_mount("type=bind,source=/srv,target=/data"), bind("/srv", "/data"));
  EXPECT_EQ(parse_mount("type=bind,src=/srv,dst=/data,readonly"), bind("/srv", "/data", true));
  EXPECT_EQ(parse_mount("type=bind,src=/srv,destination=/data,ro=true"),
            bind("/srv", "/data", true));
  EXPECT_EQ(parse_mount("type=bind,src=/srv,target=/data,readonly=false"), bind("/srv", "/data"));
  EXPECT_EQ(parse_mount("Type=bind,Source=/srv,Target=/data,RO=1"), bind("/srv", "/data", true));
  EXPECT_EQ(parse_mount("type=bind,src=/srv,target=/data,consistency=cached"),
            bind("/srv", "/data"));
  // docker's CSV: a quoted field may hold a comma.
  EXPECT_EQ(parse_mount("type=bind,\"src=/a,b\",target=/data"), bind("/a,b", "/data"));
}

TEST(MountFlag, Volume) {
  EXPECT_EQ(parse_mount("type=volume,source=data,target=/data"), volume("data", "/data"));
  EXPECT_EQ(parse_mount("src=data,dst=/data,readonly,volume-nocopy"),
            volume("data", "/data", true, true));
  EXPECT_EQ(parse_mount("type=volume,target=/cache,volume-nocopy=false"), volume("", "/cache"));
  EXPECT_EQ(parse_mount("type=volume,target=/cache,volume-nocopy=true"),
            volume("", "/cache", false, true));
}

TEST(MountFlag, Tmpfs) {
  EXPECT_EQ(parse_mount("type=tmpfs,target=/scratch"), tmpfs("/scratch"));
  EXPECT_EQ(parse_mount("type=tmpfs,dst=/scratch,tmpfs-size=64m,tmpfs-mode=1770"),
            tmpfs("/scratch", 64u << 20, 01770));
  EXPECT_EQ(parse_mount("type=tmpfs,dst=/s,tmpfs-size=4096,readonly"), tmpfs("/s", 4096, 0, true));
}

TEST(MountFlag, Errors) {
  auto e = [](const std::string& spec) { return error_of([&] { parse_mount(spec); }); };
  EXPECT_EQ(e("type=bind,src=/srv,target=/d,colour=red"),
            "--mount type=bind,src=/srv,target=/d,colour=red: unexpected key 'colour' in "
            "'colour=red'");
  EXPECT_EQ(e("type=bind,src=/srv"), "--mount type=bind,src=/srv: target is required");
  EXPECT_EQ(e("type=bind,target=/d"),
            "--mount type=bind,target=/d: invalid mount config for type \"bind\": field Source "
            "must not be empty");
  EXPECT_NE(e("type=bind,src=srv,target=/d").find("mount path must be absolute"),
            std::string::npos);
  EXPECT_NE(e("type=tmpfs,src=/srv,target=/d").find("field Source must not be specified"),
            std::string::npos);
  EXPECT_NE(e("type=bind,src=/srv,target=/d,tmpfs-size=1m").find("TmpfsOptions"),
            std::string::npos);
  EXPECT_NE(e("src=/srv,target=/d").find("the source of a volume is a name, not a path"),
            std::string::npos);
  EXPECT_NE(e("type=volume,src=a:b,target=/d").find("invalid characters"), std::string::npos);
  EXPECT_NE(e("type=volume,src=v").find("target is required"), std::string::npos);
  EXPECT_NE(e("type=volume,src=v,target=/d,volume-driver=nfs").find("not supported"),
            std::string::npos);
  EXPECT_NE(e("type=volume,src=v,target=/d,volume-nocopy=maybe").find("invalid value"),
            std::string::npos);
  EXPECT_NE(e("type=bind,src=/s,target=/d,volume-nocopy").find("VolumeOptions"), std::string::npos);
  EXPECT_NE(e("type=volume,target=/d,tmpfs-size=1m").find("TmpfsOptions"), std::string::npos);
  EXPECT_NE(e("type=npipe,target=/d").find("mount type 'npipe' is not supported"),
            std::string::npos);
  EXPECT_NE(e("type=bind,src=/s,target=/d,readonly=maybe").find("invalid value for readonly"),
            std::string::npos);
  EXPECT_NE(e("type=bind,src=/s,target=/d,bind-propagation=rshared").find("not supported"),
            std::string::npos);
  EXPECT_NE(e("type=bind,src=/s,target").find("must be a key=value pair"), std::string::npos);
  EXPECT_NE(e("type=tmpfs,target=/d,tmpfs-size=lots").find("invalid size"), std::string::npos);
  EXPECT_NE(e("type=tmpfs,target=/d,tmpfs-size=0").find("is not in"), std::string::npos);
  EXPECT_NE(e("type=tmpfs,target=/d,tmpfs-mode=999").find("invalid mode"), std::string::npos);
  EXPECT_NE(e("type=tmpfs,target=/").find("destination can't be '/'"), std::string::npos);
  EXPECT_NE(e("type=bind,\"src=/s,target=/d").find("not closed"), std::string::npos);
}

TEST(TmpfsFlag, PathAndOptions) {
  EXPECT_EQ(parse_tmpfs("/run"), tmpfs("/run"));
  EXPECT_EQ(parse_tmpfs("/run:size=1g,mode=700"), tmpfs("/run", 1ull << 30, 0700));
  EXPECT_EQ(parse_tmpfs("/run/:ro,size=65536k"), tmpfs("/run", 64u << 20, 0, true));
  EXPECT_EQ(parse_tmpfs("/run:ro,rw"), tmpfs("/run"));
  auto e = [](const std::string& spec) { return error_of([&] { parse_tmpfs(spec); }); };
  EXPECT_EQ(e("/run:noexec"),
            "--tmpfs /run:noexec: option 'noexec' is not supported (size=, mode=, ro, rw)");
  EXPECT_NE(e("run").find("mount path must be absolute"), std::string::npos);
  EXPECT_NE(e("/").find("destination can't be '/'"), std::string::npos);
  EXPECT_NE(e("/run:size=2p").find("invalid size"), std::string::npos);
  EXPECT_NE(e("/run:size=99999999t").find("is not in"), std::string::npos);
  EXPECT_NE(e("/run:mode=8").find("invalid mode"), std::string::npos);
}

TEST(Mounts, DuplicatesAndCount) {
  check_mounts({bind("/a", "/data"), tmpfs("/tmp")});
  EXPECT_EQ(error_of([] {
              check_mounts({bind("/a", "/data"), tmpfs("/data")});
            }),
            "Duplicate mount point: /data");
  std::vector<Mount> many;
  for (int i = 0; i < 65; ++i) many.push_back(tmpfs("/t" + std::to_string(i)));
  EXPECT_NE(error_of([&] { check_mounts(many); }).find("too many mounts"), std::string::npos);
}

// tmpfs mounts need no host side: build_machine puts them in the overrides, parents first.
TEST(Mounts, TmpfsReachTheOverridesParentsFirst) {
  MachineOptions mo;
  mo.kernel = "/nonexistent/vmlinux";
  mo.rootfs = "/nonexistent/rootfs.ext4";
  mo.network = NetworkMode::kNone;
  mo.mounts = {tmpfs("/a/b/c", 4096), tmpfs("/a", 0, 0700), tmpfs("/x/y", 0, 0, true)};
  PreparedMachine pm = build_machine(std::move(mo));
  ASSERT_EQ(pm.overrides.mounts.size(), 3u);
  EXPECT_EQ(pm.overrides.mounts[0].target, "/a");
  EXPECT_EQ(pm.overrides.mounts[0].mode, 0700u);
  EXPECT_EQ(pm.overrides.mounts[1].target, "/x/y");
  EXPECT_TRUE(pm.overrides.mounts[1].readonly);
  EXPECT_EQ(pm.overrides.mounts[2].target, "/a/b/c");
  EXPECT_EQ(pm.overrides.mounts[2].size, 4096u);
  for (const auto& m : pm.overrides.mounts) EXPECT_EQ(m.type, guestabi::MountSpec::Type::kTmpfs);
  EXPECT_TRUE(pm.config.fs.empty());
  EXPECT_TRUE(pm.shares.empty());
  // A target the caller's own overrides already mount is a duplicate too.
  MachineOptions dup;
  dup.kernel = "/k";
  dup.rootfs = "/r";
  dup.network = NetworkMode::kNone;
  dup.overrides.mounts.push_back({guestabi::MountSpec::Type::kTmpfs, "", "/a"});
  dup.mounts = {tmpfs("/a")};
  EXPECT_EQ(error_of([&] { build_machine(std::move(dup)); }), "Duplicate mount point: /a");
}

}  // namespace
}  // namespace img2vm::runtime
