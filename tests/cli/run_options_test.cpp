// img2vm run's option handling: docker's env-file and -e rules, durations, memory sizes,
// --disk, the overrides document and the kernel command line the init gets.
#include "run_options.hpp"

#include <gtest/gtest.h>

#include <map>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"

using namespace img2vm;
using namespace img2vm::cli;
using namespace std::chrono_literals;

namespace {

HostEnv fake_env(std::map<std::string, std::string> vars) {
  return [vars](const std::string& k) -> std::optional<std::string> {
    auto it = vars.find(k);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

}  // namespace

TEST(RunOptions, EnvFileFollowsDockersFormat) {
  TempDir d("envfile");
  auto f = d.path() / "env";
  write_file_atomic(f,
                    "# a comment\n"
                    "\n"
                    "A=1\n"
                    "  B=two words = and more  \n"
                    "FROM_HOST\n"
                    "UNSET_ON_HOST\n"
                    "EMPTY=\n"
                    "C=x\r\n");
  auto env = parse_env_file(f, fake_env({{"FROM_HOST", "h v"}}));
  std::vector<std::string> want = {"A=1", "B=two words = and more  ", "FROM_HOST=h v",
                                   "EMPTY=", "C=x"};
  EXPECT_EQ(env, want);
}

TEST(RunOptions, EnvFileErrorsNameFileAndLine) {
  TempDir d("envfile");
  auto f = d.path() / "env";
  write_file_atomic(f, "OK=1\nBAD KEY=2\n");
  try {
    parse_env_file(f, fake_env({}));
    FAIL() << "no error";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find(f.string()), std::string::npos) << m;
    EXPECT_NE(m.find("line 2"), std::string::npos) << m;
    EXPECT_NE(m.find("BAD KEY"), std::string::npos) << m;
  }
  EXPECT_THROW(parse_env_file(d.path() / "missing", fake_env({})), Error);
}

TEST(RunOptions, OverridesCarryOnlyWhatWasAsked) {
  RunRequest none;
  auto o = build_overrides(none, fake_env({}));
  EXPECT_EQ(o, guestabi::RunOverrides{});

  TempDir d("envfile");
  write_file_atomic(d.path() / "env", "K=from-file\nX=1\n");
  RunRequest r;
  r.cmd = {"sh", "-c", "exit 3"};
  r.env_files = {d.path() / "env"};
  r.env = {"K=from-flag", "HOSTVAR", "NOPE", "V=a b=c"};
  r.entrypoint = "";
  r.workdir = "/srv/app";
  r.user = "1000:1000";
  r.hostname = "box";
  r.tty = true;
  o = build_overrides(r, fake_env({{"HOSTVAR", "hv"}}));
  ASSERT_TRUE(o.cmd);
  EXPECT_EQ(*o.cmd, r.cmd);
  ASSERT_TRUE(o.entrypoint);
  EXPECT_TRUE(o.entrypoint->empty());  // --entrypoint "" resets the image's
  // --env-file first, then -e in order (the init applies them in order, last one wins).
  std::vector<std::string> env = {"K=from-file", "X=1", "K=from-flag", "HOSTVAR=hv", "V=a b=c"};
  EXPECT_EQ(o.env, env);
  EXPECT_EQ(o.working_dir, "/srv/app");
  EXPECT_EQ(o.user, "1000:1000");
  EXPECT_EQ(o.hostname, "box");
  EXPECT_TRUE(o.tty);
  EXPECT_FALSE(o.interactive);

  RunRequest ep;
  ep.entrypoint = "/bin/my tool";
  EXPECT_EQ(*build_overrides(ep, fake_env({})).entrypoint,
            std::vector<std::string>{"/bin/my tool"});

  RunRequest rel;
  rel.workdir = "relative";
  EXPECT_THROW(build_overrides(rel, fake_env({})), Error);
  RunRequest noname;
  noname.env = {"=x"};
  EXPECT_THROW(build_overrides(noname, fake_env({})), Error);
}

TEST(RunOptions, Durations) {
  EXPECT_EQ(parse_duration("--timeout", "10"), 10s);
  EXPECT_EQ(parse_duration("--timeout", "500ms"), 500ms);
  EXPECT_EQ(parse_duration("--timeout", "30s"), 30s);
  EXPECT_EQ(parse_duration("--timeout", "5m"), 300s);
  EXPECT_EQ(parse_duration("--timeout", "1h"), 3600s);
  EXPECT_EQ(parse_duration("--timeout", "1m30s"), 90s);
  EXPECT_EQ(parse_duration("--timeout", "0"), 0s);
  for (const char* bad : {"", "s", "10x", "-1", "1.5s", "ms10", "99999999999"})
    EXPECT_THROW(parse_duration("--timeout", bad), Error) << bad;
  try {
    parse_duration("--stop-timeout", "soon");
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--stop-timeout"), std::string::npos);
  }
}

TEST(RunOptions, MemorySizes) {
  EXPECT_EQ(parse_memory_mib("256"), 256u);
  EXPECT_EQ(parse_memory_mib("512M"), 512u);
  EXPECT_EQ(parse_memory_mib("512m"), 512u);
  EXPECT_EQ(parse_memory_mib("1G"), 1024u);
  EXPECT_EQ(parse_memory_mib("2g"), 2048u);
  for (const char* bad : {"", "16M", "1k", "1.5G", "lots", "1536K", "-5"})
    EXPECT_THROW(parse_memory_mib(bad), Error) << bad;
  EXPECT_EQ(parse_memory_mib("32768K"), 32u);
}

TEST(RunOptions, Disks) {
  auto d = parse_disk("/data/x.img");
  EXPECT_EQ(d.path, "/data/x.img");
  EXPECT_FALSE(d.read_only);
  d = parse_disk("/data/x.img:ro");
  EXPECT_EQ(d.path, "/data/x.img");
  EXPECT_TRUE(d.read_only);
  d = parse_disk("/data/x.img:rw");
  EXPECT_FALSE(d.read_only);
  d = parse_disk("/odd:name.img");  // a colon that is not a mode stays in the name
  EXPECT_EQ(d.path, "/odd:name.img");
  EXPECT_THROW(parse_disk(":ro"), Error);
}

TEST(RunOptions, Sizes) {
  EXPECT_EQ(parse_size("--size", "1048576"), 1048576u);
  EXPECT_EQ(parse_size("--size", "2G"), 2ull << 30);
  EXPECT_THROW(parse_size("--size", "2Q"), Error);
  EXPECT_THROW(parse_size("--size", "-1"), Error);
}

TEST(RunOptions, NetworkModes) {
  using Mode = NetworkChoice::Mode;
  EXPECT_EQ(parse_network("user"), NetworkChoice{});
  EXPECT_EQ(parse_network("bridge").mode, Mode::kUser);  // docker's name for its default
  EXPECT_EQ(parse_network("default").mode, Mode::kUser);
  EXPECT_EQ(parse_network("none").mode, Mode::kNone);
  NetworkChoice u = parse_network("user:outbound=off,host-loopback=on");
  EXPECT_EQ(u.mode, Mode::kUser);
  EXPECT_FALSE(u.outbound);
  EXPECT_TRUE(u.host_loopback);
  EXPECT_TRUE(parse_network("user:allow_host_loopback=true").host_loopback);
  EXPECT_TRUE(parse_network("user:host_loopback").host_loopback);  // a bare switch means on
  EXPECT_TRUE(parse_network("user:outbound=on").outbound);
  NetworkChoice t = parse_network("tap");
  EXPECT_EQ(t.mode, Mode::kTap);
  EXPECT_TRUE(t.tap_name.empty());
  EXPECT_EQ(parse_network("tap=img2vm-tap0").tap_name, "img2vm-tap0");
  EXPECT_TRUE(t.outbound);
  NetworkChoice t2 = parse_network("tap=vm1:outbound=off");
  EXPECT_EQ(t2.mode, Mode::kTap);
  EXPECT_EQ(t2.tap_name, "vm1");
  EXPECT_FALSE(t2.outbound);

  for (const char* bad :
       {"", "host", "container:abc", "wifi", "none:x=1", "tap=", "tap=sixteen-chars-xx", "tap=a b",
        "tap=a:b", "tap:host_loopback=on", "user:outbound=2", "user:speed=on", "user:,"}) {
    try {
      parse_network(bad);
      ADD_FAILURE() << "accepted --network " << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("--network"), std::string::npos) << e.what();
    }
  }
}

// --rootfs takes no image: a first word that names one is refused, a command is not.
TEST(RunOptions, ImagesAreToldApartFromCommands) {
  for (const char* image :
       {"oci:/tmp/layout", "oci:layout:tag", "docker-archive:x.tar", "busybox:1.36",
        "alpine@sha256:abc", "docker.io/library/busybox", "localhost/app", "registry:5000/app"})
    EXPECT_TRUE(looks_like_image(image)) << image;
  for (const char* command : {"sh", "/bin/sh", "./run.sh", "../x:y", "bin/app", "echo", ""})
    EXPECT_FALSE(looks_like_image(command)) << command;
}
