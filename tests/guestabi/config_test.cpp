// The guest contract's JSON documents: the runtime config (from an image config, round trip,
// errors naming the field and the schema version) and the run overrides, and base64url.
#include "img2vm/guestabi/config.hpp"

#include <gtest/gtest.h>
#include <sys/resource.h>

#include "img2vm/guestabi/error.hpp"

using namespace img2vm::guestabi;

namespace {

using Strings = std::vector<std::string>;

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(RuntimeConfig, FromImageConfig) {
  auto c = runtime_config_from_image_config(R"({
    "architecture": "amd64", "os": "linux",
    "config": {"Entrypoint": ["/bin/app", "--flag"], "Cmd": ["serve"],
               "Env": ["PATH=/usr/bin:/bin", "A=b=c d"], "WorkingDir": "/srv",
               "User": "app:staff", "StopSignal": "SIGQUIT", "Labels": {"k": "v"}},
    "rootfs": {"type": "layers", "diff_ids": []}})");
  EXPECT_EQ(c.entrypoint, (std::vector<std::string>{"/bin/app", "--flag"}));
  EXPECT_EQ(c.cmd, (std::vector<std::string>{"serve"}));
  EXPECT_EQ(c.env, (std::vector<std::string>{"PATH=/usr/bin:/bin", "A=b=c d"}));
  EXPECT_EQ(c.working_dir, "/srv");
  EXPECT_EQ(c.user, "app:staff");
  EXPECT_EQ(c.stop_signal, "SIGQUIT");
  EXPECT_EQ(c.labels.at("k"), "v");
}

TEST(RuntimeConfig, NullsAndMissingAreEmpty) {
  auto c = runtime_config_from_image_config(R"({"config": {"Entrypoint": null, "Cmd": ["sh"]}})");
  EXPECT_TRUE(c.entrypoint.empty());
  EXPECT_EQ(c.cmd.size(), 1u);
  EXPECT_EQ(runtime_config_from_image_config("{}"), RuntimeConfig{});
}

TEST(RuntimeConfig, RoundTrip) {
  RuntimeConfig c;
  c.entrypoint = {"/bin/sh", "-c"};
  c.cmd = {"echo \"hi\"; exit 3"};
  c.env = {"X=1", "EMPTY="};
  c.working_dir = "/w";
  c.user = "1000:1000";
  c.hostname = "box";
  c.labels = {{"a", "b"}};
  EXPECT_EQ(runtime_config_from_json(to_json(c)), c);
}

TEST(RuntimeConfig, BadInputNamesTheField) {
  auto expect_error = [](std::string_view json, std::string_view needle) {
    try {
      runtime_config_from_json(json);
      ADD_FAILURE() << "accepted " << json;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error("not json", "not valid JSON");
  expect_error("[]", "not a JSON object");
  expect_error(R"({"cmd": ["x"]})", "\"schema\"");
  expect_error(R"({"schema": 99})", "version 99");
  expect_error(R"({"schema": 1, "cmd": "x"})", "\"cmd\"");
  expect_error(R"({"schema": 1, "env": [1]})", "\"env\"");
  expect_error(R"({"schema": 1, "labels": {"a": 1}})", "\"labels\"");
  EXPECT_THROW(runtime_config_from_image_config(R"({"config": {"User": 0}})"), Error);
}

TEST(RunOverrides, JsonRoundTripAndAbsence) {
  RunOverrides o;
  o.entrypoint = Strings{};
  o.cmd = Strings{"sh", "-c", "echo \"a b\"; exit 3"};
  o.env = {"A=b=c d", "EMPTY="};
  o.working_dir = "/w";
  o.user = "app:staff";
  o.hostname = "box";
  o.dns = {"10.0.2.3"};
  o.tty = true;
  o.interactive = true;
  o.agent_signals = true;
  o.wait_for_start = true;
  EXPECT_EQ(run_overrides_from_json(to_json(o)), o);
  EXPECT_NE(to_json(o).find("\"agent_signals\":true"), std::string::npos) << to_json(o);
  EXPECT_NE(to_json(o).find("\"wait_for_start\":true"), std::string::npos) << to_json(o);
  EXPECT_EQ(run_overrides_from_json(R"({"schema":1})"), RunOverrides{});
  auto none = run_overrides_from_json(to_json(RunOverrides{}));
  EXPECT_FALSE(none.entrypoint.has_value());
  EXPECT_FALSE(none.cmd.has_value());
  EXPECT_FALSE(none.wait_for_start);
  // Only written when set.
  EXPECT_EQ(to_json(RunOverrides{}).find("wait_for_start"), std::string::npos);
  EXPECT_FALSE(run_overrides_from_json(R"({"schema":1,"wait_for_start":false})").wait_for_start);
  EXPECT_TRUE(run_overrides_from_json(R"({"schema":1,"wait_for_start":true})").wait_for_start);
}

TEST(RunOverrides, BadInputNamesTheField) {
  auto err = [](std::string_view json) { return error_of([&] { run_overrides_from_json(json); }); };
  EXPECT_NE(err(R"({"schema":1,"env":["NOEQUALS"]})").find("\"env\""), std::string::npos);
  EXPECT_NE(err(R"({"schema":1,"env":["=x"]})").find("\"env\""), std::string::npos);
  EXPECT_NE(err(R"({"schema":1,"tty":"yes"})").find("\"tty\""), std::string::npos);
  EXPECT_EQ(err(R"({"schema":1,"wait_for_start":1})"),
            "img2vm run overrides: field \"wait_for_start\" must be true or false");
  EXPECT_NE(err(R"({"schema":1,"wait_for_start":"true"})").find("\"wait_for_start\""),
            std::string::npos);
  EXPECT_NE(err(R"({"schema":1,"cmd":"sh"})").find("\"cmd\""), std::string::npos);
  EXPECT_NE(err(R"({"cmd":["sh"]})").find("\"schema\""), std::string::npos);
  EXPECT_NE(err(R"({"schema":2})").find("version 2"), std::string::npos);
  EXPECT_NE(err("[1]").find("not a JSON object"), std::string::npos);
}

// OCI process fields (img2vm-oci): extra groups, rlimits and noNewPrivileges, written only when
// set and checked when read.
TEST(RunOverrides, OciProcessFieldsRoundTripAndAreBounded) {
  RunOverrides o;
  o.extra_groups = {10, 20, 4294967295u};
  o.rlimits = {{"RLIMIT_NOFILE", 100, 200}, {"RLIMIT_CORE", 0, UINT64_MAX}};
  o.no_new_privileges = true;
  EXPECT_EQ(run_overrides_from_json(to_json(o)), o);
  const std::string none = to_json(RunOverrides{});
  for (const char* k : {"groups", "rlimits", "no_new_privileges"})
    EXPECT_EQ(none.find(k), std::string::npos) << k;
  EXPECT_EQ(rlimit_resource("RLIMIT_NOFILE"), RLIMIT_NOFILE);
  EXPECT_EQ(rlimit_resource("RLIMIT_STACK"), RLIMIT_STACK);
  EXPECT_FALSE(rlimit_resource("NOFILE"));
  EXPECT_FALSE(rlimit_resource("RLIMIT_NOPE"));

  auto err = [](std::string_view json) { return error_of([&] { run_overrides_from_json(json); }); };
  EXPECT_NE(err(R"({"schema":1,"groups":[-1]})").find("\"groups\""), std::string::npos);
  EXPECT_NE(err(R"({"schema":1,"groups":[4294967296]})").find("\"groups\""), std::string::npos);
  std::string many = R"({"schema":1,"groups":[)";
  for (int i = 0; i <= 1024; ++i) many += (i ? "," : "") + std::to_string(i);
  EXPECT_NE(err(many + "]}").find("at most 1024"), std::string::npos);
  EXPECT_NE(err(R"({"schema":1,"rlimits":[{"type":"RLIMIT_NOPE","soft":1,"hard":1}]})")
                .find("not a limit Linux has"),
            std::string::npos);
  EXPECT_NE(err(R"({"schema":1,"rlimits":[{"type":"RLIMIT_NOFILE","soft":2,"hard":1}]})")
                .find("soft is above hard"),
            std::string::npos);
  EXPECT_NE(err(R"({"schema":1,"rlimits":[{"type":"RLIMIT_NOFILE","soft":1,"hard":1},)"
                R"({"type":"RLIMIT_NOFILE","soft":1,"hard":1}]})")
                .find("twice"),
            std::string::npos);
  EXPECT_NE(err(R"({"schema":1,"rlimits":[{"type":"RLIMIT_NOFILE","soft":-1,"hard":1}]})")
                .find("rlimits.soft"),
            std::string::npos);
  EXPECT_NE(err(R"({"schema":1,"no_new_privileges":1})").find("no_new_privileges"),
            std::string::npos);
}

// Snapshots (issue #19): the RNG's entropy and the wall clock travel with every run's overrides;
// both are bounded when read and when written.
TEST(RunOverrides, EntropyAndRealtimeRoundTripWithinBounds) {
  RunOverrides o;
  o.entropy = std::string("\0\xff", 2) + std::string(30, '\x80');  // any bytes
  o.realtime_ns = 1'767'225'600'000'000'123;                       // 2026-01-01
  const std::string text = to_json(o);
  EXPECT_NE(text.find("\"entropy\":\"" + base64url_encode(o.entropy) + "\""), std::string::npos)
      << text;
  EXPECT_NE(text.find("\"realtime_ns\":1767225600000000123"), std::string::npos) << text;
  EXPECT_EQ(run_overrides_from_json(text), o);
  for (std::size_t n : {kMinEntropyBytes, kMaxEntropyBytes}) {
    o.entropy.assign(n, 'e');
    EXPECT_EQ(run_overrides_from_json(to_json(o)).entropy, o.entropy) << n;
  }
  for (int64_t ns : {kMinRealtimeNs, kMaxRealtimeNs}) {
    o.realtime_ns = ns;
    EXPECT_EQ(run_overrides_from_json(to_json(o)).realtime_ns, ns);
  }
  const std::string none = to_json(RunOverrides{});
  EXPECT_EQ(none.find("entropy"), std::string::npos) << none;
  EXPECT_EQ(none.find("realtime_ns"), std::string::npos) << none;
  EXPECT_EQ(run_overrides_from_json(R"({"schema":1,"entropy":null,"realtime_ns":null})"),
            RunOverrides{});

  // The encoder refuses what the decoder would.
  RunOverrides bad;
  bad.entropy.assign(kMinEntropyBytes - 1, 'e');
  EXPECT_NE(error_of([&] { to_json(bad); }).find("entropy of 15 bytes"), std::string::npos);
  bad.entropy.assign(kMaxEntropyBytes + 1, 'e');
  EXPECT_NE(error_of([&] { to_json(bad); }).find("entropy of 513 bytes"), std::string::npos);
  bad.entropy.clear();
  bad.realtime_ns = kMinRealtimeNs - 1;
  EXPECT_NE(error_of([&] { to_json(bad); }).find("realtime_ns"), std::string::npos);
  bad.realtime_ns = kMaxRealtimeNs + 1;
  EXPECT_NE(error_of([&] { to_json(bad); }).find("realtime_ns"), std::string::npos);
}

TEST(RunOverrides, BadEntropyAndRealtimeAreRefusedNamingTheField) {
  auto err = [](const std::string& json) {
    return error_of([&] { run_overrides_from_json(json); });
  };
  auto entropy = [&](const std::string& text) {
    return err(R"({"schema":1,"entropy":")" + text + "\"}");
  };
  const std::string bounds = "must be base64url of 16 to 512 bytes";
  EXPECT_EQ(entropy(base64url_encode(std::string(15, 'e'))),
            "img2vm run overrides: field \"entropy\" " + bounds + ", not 15");
  EXPECT_NE(entropy("").find(bounds + ", not 0"), std::string::npos);
  EXPECT_NE(entropy(base64url_encode(std::string(513, 'e'))).find(bounds), std::string::npos);
  // Refused by its length before it is decoded.
  EXPECT_NE(entropy(std::string(1 << 20, 'A')).find(bounds), std::string::npos);
  EXPECT_NE(entropy(std::string(24, '!')).find("invalid character"), std::string::npos);
  EXPECT_NE(err(R"({"schema":1,"entropy":[1,2]})").find("\"entropy\" must be a string"),
            std::string::npos);

  auto realtime = [&](const std::string& number) {
    return err(R"({"schema":1,"realtime_ns":)" + number + "}");
  };
  for (const char* n : {"-1", "0", "946684799999999999", "7258118400000000001",
                        "18446744073709551615", "1.7e18", "\"1767225600000000000\"", "true"})
    EXPECT_NE(realtime(n).find("field \"realtime_ns\" must be a whole number of nanoseconds"),
              std::string::npos)
        << n;
  EXPECT_EQ(run_overrides_from_json(R"({"schema":1,"realtime_ns":946684800000000000})").realtime_ns,
            kMinRealtimeNs);
}

TEST(RunOverrides, Base64Url) {
  EXPECT_EQ(base64url_encode(""), "");
  EXPECT_EQ(base64url_encode("f"), "Zg");
  EXPECT_EQ(base64url_encode("fo"), "Zm8");
  EXPECT_EQ(base64url_encode("foo"), "Zm9v");
  EXPECT_EQ(base64url_encode("\xfb\xff\xbf"), "-_-_");
  for (std::string s : {"", "a", "ab", "abc", "abcd", "\x00\xff\x10 =?"})
    EXPECT_EQ(base64url_decode(base64url_encode(s)), s);
  EXPECT_EQ(base64url_decode("Zm8="), "fo");
  EXPECT_NE(error_of([] { base64url_decode("Zm9v+"); }).find("base64url"), std::string::npos);
  EXPECT_NE(error_of([] { base64url_decode("Z"); }).find("truncated"), std::string::npos);
  EXPECT_NE(error_of([] { base64url_decode("Zh"); }).find("non-canonical"), std::string::npos);
}

TEST(RunOverrides, NetCarriesTheInterfaceAndRejectsBadValues) {
  RunOverrides o;
  o.net = NetConfig{"eth0", "10.0.2.15", 24, "10.0.2.2", 1500, ""};
  EXPECT_EQ(run_overrides_from_json(to_json(o)), o);
  o.net->gateway.clear();
  o.net->mtu = 0;
  EXPECT_EQ(run_overrides_from_json(to_json(o)), o);
  o.net->mac = "52:54:00:Ab:cd:0f";
  EXPECT_EQ(run_overrides_from_json(to_json(o)), o);
  auto bad = [](const std::string& net) {
    try {
      run_overrides_from_json(R"({"schema":1,"net":)" + net + "}");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_NE(bad(R"({"address":"10.0.2.300"})").find("net.address"), std::string::npos);
  EXPECT_NE(bad(R"({"prefix":24})").find("net.address"), std::string::npos);
  EXPECT_NE(bad(R"({"address":"10.0.2.15","prefix":33})").find("net.prefix"), std::string::npos);
  EXPECT_NE(bad(R"({"address":"10.0.2.15","mtu":20})").find("net.mtu"), std::string::npos);
  EXPECT_NE(bad(R"({"address":"10.0.2.15","gateway":"gw"})").find("net.gateway"),
            std::string::npos);
  EXPECT_NE(bad(R"({"address":"10.0.2.15","interface":"a/b"})").find("net.interface"),
            std::string::npos);
  EXPECT_NE(bad(R"("eth0")").find("net"), std::string::npos);
  for (const char* mac : {"01:00:5e:00:00:01", "52:54:00:12:34", "52:54:00:12:34:567",
                          "52-54-00-12-34-56", "52:54:00:12:34:5g", "ff:ff:ff:ff:ff:ff"})
    EXPECT_NE(bad(R"({"address":"10.0.2.15","mac":")" + std::string(mac) + "\"}").find("net.mac"),
              std::string::npos)
        << mac;
}

// A dual-stack namespace's IPv6 addresses and its other routes (img2vm-oci) travel with the
// interface; what the init could not set up, or sets up wrongly, is refused by both ends.
TEST(RunOverrides, NetCarriesIpv6AddressesAndRoutes) {
  RunOverrides o;
  o.net = NetConfig{"eth0", "10.88.0.5", 16, "10.88.0.1", 1500, ""};
  o.net->addresses6 = {{"fd00:88::5", 64}, {"2001:db8::5", 128}};
  o.net->routes = {{"192.168.77.0", 24, "10.88.0.1"},
                   {"169.254.1.1", 32, ""},
                   {"::", 0, "fe80::1"},
                   {"fd00:99::", 48, "fd00:88::1"}};
  EXPECT_EQ(run_overrides_from_json(to_json(o)), o);
  const std::string text = to_json(o);
  EXPECT_NE(text.find(R"("addresses6":[{"address":"fd00:88::5","prefix":64})"), std::string::npos)
      << text;
  EXPECT_NE(text.find(R"({"destination":"169.254.1.1","prefix":32})"), std::string::npos) << text;
  EXPECT_EQ(text.find("routes", text.find("routes") + 1), std::string::npos);  // no empty ones

  auto bad = [](const std::string& lists) {
    try {
      run_overrides_from_json(R"({"schema":1,"net":{"address":"10.88.0.5",)" + lists + "}}");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  auto has = [](const std::string& message, const std::string& part) {
    return message.find(part) != std::string::npos;
  };
  EXPECT_EQ(bad(R"("routes":[{"destination":"10.1.0.0","prefix":16}])"), "accepted");
  for (const char* a : {R"("10.0.0.1")", R"("ff02::1")", R"("::")", R"("fd00::1%eth0")", "5"})
    EXPECT_TRUE(has(bad(R"("addresses6":[{"address":)" + std::string(a) + "}]"), "addresses6"))
        << a;
  EXPECT_TRUE(has(bad(R"("addresses6":[{"address":"fd00::1","prefix":129}])"), "prefix"));
  EXPECT_TRUE(has(bad(R"("addresses6":{"address":"fd00::1"})"), "net.addresses6"));
  const std::string e = bad(R"("routes":[{"destination":"10.1.2.0","prefix":16}])");
  EXPECT_TRUE(has(e, "net.routes")) << e;
  EXPECT_TRUE(has(e, "10.1.2.0/16 has host bits set")) << e;
  EXPECT_TRUE(has(bad(R"("routes":[{"destination":"10.1.0.0","prefix":33}])"), "prefix over 32"));
  EXPECT_TRUE(has(bad(R"("routes":[{"destination":"fd00::","prefix":129}])"), "prefix"));
  EXPECT_TRUE(has(bad(R"("routes":[{"destination":"10.1.0.0","prefix":16,"gateway":"fd00::1"}])"),
                  "not a unicast address of its family"));
  EXPECT_TRUE(has(bad(R"("routes":[{"destination":"::","prefix":0,"gateway":"10.0.0.1"}])"),
                  "not a unicast address of its family"));
  EXPECT_TRUE(has(bad(R"("routes":[{"destination":"10.1.0.0","prefix":16,"gateway":"224.0.0.1"}])"),
                  "not a unicast address"));
  EXPECT_TRUE(has(bad(R"("routes":[{"destination":"default"}])"), "not an IP address"));
  EXPECT_TRUE(has(bad(R"("routes":[{"destination":7}])"), "must be a string"));
  EXPECT_TRUE(has(bad(R"("routes":"10.1.0.0/16")"), "net.routes"));

  // The bounds, on both ends.
  std::string many = R"("routes":[)";
  for (size_t i = 0; i <= kMaxNetRoutes; ++i)
    many += (i ? "," : "") + std::string(R"({"destination":"10.)") + std::to_string(i) +
            R"(.0.0","prefix":16})";
  EXPECT_TRUE(has(bad(many + "]"), "at most 64 routes"));
  o.net->routes.assign(kMaxNetRoutes + 1, NetRoute{"10.1.0.0", 16, ""});
  EXPECT_TRUE(has(error_of([&] { to_json(o); }), "net.routes"));
  o.net->routes.clear();
  o.net->addresses6.assign(kMaxNetAddresses6 + 1, NetAddress6{"fd00::1", 64});
  EXPECT_TRUE(has(error_of([&] { to_json(o); }), "net.addresses6"));
  o.net->addresses6 = {{"fd00::1", 200}};
  EXPECT_TRUE(has(error_of([&] { to_json(o); }), "prefix over 128"));
}

TEST(NetConfig, MacAddressesParseAndFormat) {
  auto m = parse_unicast_mac("52:54:00:AB:cd:ef");
  ASSERT_TRUE(m);
  EXPECT_EQ(*m, (std::array<uint8_t, 6>{0x52, 0x54, 0x00, 0xab, 0xcd, 0xef}));
  EXPECT_EQ(format_mac(*m), "52:54:00:ab:cd:ef");
  EXPECT_FALSE(parse_unicast_mac("03:54:00:ab:cd:ef"));  // multicast
  EXPECT_FALSE(parse_unicast_mac("52:54:00:ab:cd:ef:"));
  EXPECT_FALSE(parse_unicast_mac("52:54:00:ab:cd"));
  EXPECT_FALSE(parse_unicast_mac("52:54:00:ab:cd: f"));
  EXPECT_FALSE(parse_unicast_mac(""));
}

TEST(RunOverrides, MountsRoundTripAndBadOnesAreRefused) {
  RunOverrides o;
  o.mounts.push_back({MountSpec::Type::kVirtiofs, "img2vm-fs0", "/src", false, 0, 0});
  o.mounts.push_back({MountSpec::Type::kVirtiofs, "img2vm-fs1", "/data/ro", true, 0, 0});
  o.mounts.push_back({MountSpec::Type::kTmpfs, "", "/run/cache", false, 64u << 20, 0700});
  o.mounts.push_back({MountSpec::Type::kTmpfs, "", "/scratch", true, 0, 0});
  EXPECT_EQ(run_overrides_from_json(to_json(o)), o);
  EXPECT_EQ(run_overrides_from_json(to_json(RunOverrides{})).mounts.size(), 0u);
  auto bad = [](const std::string& mounts) {
    try {
      run_overrides_from_json(R"({"schema":1,"mounts":)" + mounts + "}");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_NE(bad(R"({"type":"tmpfs"})").find("mounts"), std::string::npos);
  EXPECT_NE(bad(R"([{"type":"nfs","target":"/a"}])").find("mounts.type"), std::string::npos);
  for (const char* target : {"/", "a", "/a/", "/a//b", "/a/./b", "/a/../b", "/..", ""})
    EXPECT_NE(
        bad(std::string(R"([{"type":"tmpfs","target":")") + target + "\"}]").find("mounts.target"),
        std::string::npos)
        << target;
  EXPECT_NE(bad(R"([{"type":"tmpfs","target":"/a"},{"type":"tmpfs","target":"/a"}])").find("twice"),
            std::string::npos);
  EXPECT_NE(bad(R"([{"type":"virtiofs","target":"/a"}])").find("mounts.tag"), std::string::npos);
  EXPECT_NE(bad(R"([{"type":"virtiofs","tag":"a,b","target":"/a"}])").find("mounts.tag"),
            std::string::npos);
  EXPECT_NE(bad(R"([{"type":"virtiofs","tag":")" + std::string(37, 't') + R"(","target":"/a"}])")
                .find("mounts.tag"),
            std::string::npos);
  EXPECT_NE(bad(R"([{"type":"tmpfs","tag":"x","target":"/a"}])").find("mounts.tag"),
            std::string::npos);
  EXPECT_NE(bad(R"([{"type":"tmpfs","target":"/a","mode":4096}])").find("mounts.mode"),
            std::string::npos);
  EXPECT_NE(bad(R"([{"type":"tmpfs","target":"/a","size":-1}])").find("mounts.size"),
            std::string::npos);
  EXPECT_NE(bad(R"([{"type":"virtiofs","tag":"t","target":"/a","size":1}])").find("size or mode"),
            std::string::npos);
  EXPECT_NE(bad(R"([{"type":"tmpfs","target":"/a","uid":0}])").find("not a file"),
            std::string::npos);
  EXPECT_NE(bad(R"([{"type":"tmpfs","target":"/a","owner":0}])").find("unknown field"),
            std::string::npos);
  std::string many = "[";
  for (size_t i = 0; i <= kMaxMounts; ++i)
    many +=
        std::string(i ? "," : "") + R"({"type":"tmpfs","target":"/m)" + std::to_string(i) + "\"}";
  EXPECT_NE(bad(many + "]").find("more than"), std::string::npos);
}

// A bind mount of a host file (OCI): its bytes, any of them, travel base64url in the JSON; the
// decoder bounds each file and all of them before and after decoding.
TEST(RunOverrides, FileMountsCarryContentModeAndOwnerWithinBounds) {
  RunOverrides o;
  MountSpec hosts;
  hosts.type = MountSpec::Type::kFile;
  hosts.target = "/etc/hosts";
  hosts.content = "127.0.0.1\tlocalhost\n10.88.0.5\tweb\n";
  hosts.mode = 0644;
  MountSpec conf;
  conf.type = MountSpec::Type::kFile;
  conf.target = "/etc/app.conf";
  conf.content = std::string("bin\0ary\xff\xfe", 9);  // not UTF-8: base64url carries it
  conf.mode = 0;                                      // mode 0 is a mode, not "absent"
  conf.uid = 1000;
  conf.gid = 4294967295u;
  conf.readonly = true;
  MountSpec empty;
  empty.type = MountSpec::Type::kFile;
  empty.target = "/run/.containerenv";
  empty.mode = 0600;
  o.mounts = {hosts, conf, empty};
  const std::string json = to_json(o);
  EXPECT_NE(json.find(R"("type":"file")"), std::string::npos) << json;
  EXPECT_NE(json.find(R"("content":")" + base64url_encode(hosts.content) + "\""), std::string::npos)
      << json;
  EXPECT_EQ(run_overrides_from_json(json), o);
  // A file without a mode is 0644.
  RunOverrides d = run_overrides_from_json(
      R"({"schema":1,"mounts":[{"type":"file","target":"/f","content":"eA"}]})");
  ASSERT_EQ(d.mounts.size(), 1u);
  EXPECT_EQ(d.mounts[0].mode, 0644u);
  EXPECT_EQ(d.mounts[0].content, "x");

  auto bad = [](const std::string& mounts) {
    try {
      run_overrides_from_json(R"({"schema":1,"mounts":)" + mounts + "}");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  auto file = [](const std::string& target, const std::string& content) {
    return R"({"type":"file","target":")" + target + R"(","content":")" + content + "\"}";
  };
  EXPECT_NE(bad("[" + file("/f", "e*") + "]").find(R"("mounts.content" of /f: base64url)"),
            std::string::npos);
  EXPECT_NE(bad(R"([{"type":"file","target":"/f","content":7}])").find("content"),
            std::string::npos);
  EXPECT_NE(bad(R"([{"type":"file","target":"/f","tag":"t"}])").find("mounts.tag"),
            std::string::npos);
  EXPECT_NE(bad(R"([{"type":"file","target":"/f","size":1}])").find("size"), std::string::npos);
  EXPECT_NE(bad(R"([{"type":"file","target":"/f","uid":4294967296}])").find("mounts.uid"),
            std::string::npos);
  EXPECT_NE(bad(R"([{"type":"file","target":"/f","mode":4096}])").find("mounts.mode"),
            std::string::npos);
  EXPECT_NE(bad(R"([{"type":"virtiofs","tag":"t","target":"/a","content":""}])").find("not a file"),
            std::string::npos);
  EXPECT_NE(bad("[" + file("/etc", "") + "," + file("/etc", "") + "]").find("twice"),
            std::string::npos);
  // One file: at most kMaxFileMountBytes, refused by its text's length before decoding, and by
  // the decoded size (padding makes the text longer without more bytes).
  const std::string at_most = base64url_encode(std::string(kMaxFileMountBytes, 'a'));
  EXPECT_EQ(bad("[" + file("/f", at_most) + "]"), "accepted");
  const std::string over = base64url_encode(std::string(kMaxFileMountBytes + 1, 'a'));
  EXPECT_NE(
      bad("[" + file("/f", over) + "]").find(R"("mounts.content" of /f is larger than 1048576)"),
      std::string::npos);
  EXPECT_NE(bad("[" + file("/f", std::string(at_most.size() + 4, 'A')) + "]").find("larger than"),
            std::string::npos);
  // All of them: at most kMaxFileMountsBytes.
  std::string four = "[";
  for (int i = 0; i < 4; ++i) four += (i ? "," : "") + file("/f" + std::to_string(i), at_most);
  EXPECT_EQ(bad(four + "]"), "accepted");
  EXPECT_NE(bad(four + "," + file("/g", "eA") + "]").find("4194304 bytes in all"),
            std::string::npos);

  // The encoder refuses what the decoder would.
  RunOverrides big;
  MountSpec f = hosts;
  f.content.assign(kMaxFileMountBytes + 1, 'a');
  big.mounts = {f};
  EXPECT_NE(error_of([&] { to_json(big); }).find("the file mount /etc/hosts holds 1048577 bytes"),
            std::string::npos);
  f.content.assign(kMaxFileMountBytes, 'a');
  big.mounts.clear();
  for (int i = 0; i < 5; ++i) {
    f.target = "/f" + std::to_string(i);
    big.mounts.push_back(f);
  }
  EXPECT_NE(error_of([&] { to_json(big); }).find("more than 4194304 bytes in all"),
            std::string::npos);
  big.mounts.pop_back();
  EXPECT_EQ(run_overrides_from_json(to_json(big)), big);
}

TEST(RunOverrides, NotUtf8IsAnErrorNotACrash) {
  RunOverrides o;
  o.env = {"A=\xff\xfe"};
  EXPECT_NE(error_of([&] { to_json(o); }).find("UTF-8"), std::string::npos);
}

// run --rootfs: the image config travels in the overrides (the directory's own is not read).
TEST(RunOverrides, ImageConfigRoundTrip) {
  RunOverrides o;
  EXPECT_EQ(to_json(o).find("image"), std::string::npos);
  RuntimeConfig c;
  c.cmd = {"sh", "-c", "echo hi"};
  c.env = {"PATH=/bin"};
  c.working_dir = "/w";
  c.user = "1:2";
  c.stop_signal = "SIGINT";
  c.hostname = "h";
  c.labels = {{"k", "v"}};
  o.image = c;
  o.cmd = Strings{"x"};
  EXPECT_EQ(run_overrides_from_json(to_json(o)), o);
  o.image = RuntimeConfig{};
  EXPECT_EQ(run_overrides_from_json(to_json(o)), o);
  EXPECT_NE(error_of([] {
              run_overrides_from_json(R"({"schema":1,"image":[]})");
            }).find("\"image\" must be an object"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              run_overrides_from_json(R"({"schema":1,"image":{"cmd":"sh"}})");
            }).find("image: field \"cmd\""),
            std::string::npos);
}

// What `umoci unpack` writes (runtime-spec config.md), abridged.
constexpr const char* kUmociConfig = R"({
  "ociVersion": "1.0.0",
  "process": {"terminal": true, "user": {"uid": 1000, "gid": 100, "additionalGids": [10]},
              "args": ["sh", "-c", "echo hi"], "env": ["PATH=/bin", "A=b=c"], "cwd": "/srv",
              "capabilities": {"bounding": ["CAP_CHOWN"]}, "rlimits": [], "noNewPrivileges": true},
  "root": {"path": "rootfs"},
  "hostname": "umoci-default",
  "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
  "annotations": {"org.opencontainers.image.ref.name": "latest"},
  "linux": {"namespaces": [{"type": "pid"}]}})";

TEST(OciBundleConfig, TakesTheProcessAndTheRoot) {
  auto b = oci_bundle_config(kUmociConfig);
  ASSERT_TRUE(b);
  EXPECT_EQ(b->root_path, "rootfs");
  EXPECT_EQ(b->config.cmd, (Strings{"sh", "-c", "echo hi"}));
  EXPECT_TRUE(b->config.entrypoint.empty());
  EXPECT_EQ(b->config.env, (Strings{"PATH=/bin", "A=b=c"}));
  EXPECT_EQ(b->config.working_dir, "/srv");
  EXPECT_EQ(b->config.user, "1000:100");
  EXPECT_EQ(b->config.hostname, "umoci-default");
  // The minimum: a version and nothing else.
  auto m = oci_bundle_config(R"({"ociVersion":"1.1.0"})");
  ASSERT_TRUE(m);
  EXPECT_EQ(*m, OciBundleConfig{});
  auto u = oci_bundle_config(R"({"ociVersion":"1","process":{"user":{"uid":5}}})");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->config.user, "5:0");
}

TEST(OciBundleConfig, NotARuntimeSpecIsNoConfig) {
  for (const char* other : {"", "[]", "not json", R"({"schema":1,"cmd":["x"]})",
                            R"({"ociVersion":1,"root":{"path":"rootfs"}})"})
    EXPECT_FALSE(oci_bundle_config(other)) << other;
  // nlohmann would stop at a NUL and ignore what follows.
  EXPECT_FALSE(oci_bundle_config(std::string("{\"ociVersion\":\"1\"}\0trailing", 27)));
}

TEST(OciBundleConfig, HostileFieldsAreRefusedNamingTheField) {
  struct Case {
    const char* json;
    const char* says;
  };
  for (const Case& c : {
           Case{R"({"ociVersion":"1","root":"rootfs"})", "\"root\" must be an object"},
           Case{R"({"ociVersion":"1","root":{"path":7}})", "\"path\" must be a string"},
           Case{R"({"ociVersion":"1","process":[]})", "\"process\" must be an object"},
           Case{R"({"ociVersion":"1","process":{"args":"sh"}})", "\"args\""},
           Case{R"({"ociVersion":"1","process":{"args":["sh",1]}})", "\"args\""},
           Case{R"({"ociVersion":"1","process":{"env":["NOEQUALS"]}})", "process.env"},
           Case{R"({"ociVersion":"1","process":{"env":["=x"]}})", "process.env"},
           Case{R"({"ociVersion":"1","process":{"cwd":"rel"}})", "process.cwd"},
           Case{R"({"ociVersion":"1","process":{"user":{"uid":-1}}})", "process.user.uid"},
           Case{R"({"ociVersion":"1","process":{"user":{"gid":4294967295}}})", "process.user.gid"},
           Case{R"({"ociVersion":"1","process":{"user":{"uid":"0"}}})", "process.user.uid"},
           Case{R"({"ociVersion":"1","hostname":["h"]})", "\"hostname\""},
       }) {
    std::string e = error_of([&] { oci_bundle_config(c.json); });
    EXPECT_NE(e.find(c.says), std::string::npos) << c.json << " -> " << e;
    EXPECT_EQ(e.rfind("OCI runtime config", 0), 0u) << e;
  }
}

TEST(OciBundleConfig, OversizeIsRefusedBeforeParsing) {
  std::string big = R"({"ociVersion":"1","process":{"args":[")";
  big += std::string(kMaxOciConfigJson, 'a');
  big += "\"]}}";
  EXPECT_NE(error_of([&] { oci_bundle_config(big); }).find("larger than"), std::string::npos);
  std::string fits = R"({"ociVersion":"1","process":{"args":[")";
  fits += std::string(kMaxOciConfigJson - fits.size() - 4, 'a') + "\"]}}";
  ASSERT_EQ(fits.size(), kMaxOciConfigJson);
  auto b = oci_bundle_config(fits);
  ASSERT_TRUE(b);
  EXPECT_EQ(b->config.cmd.at(0).size(), kMaxOciConfigJson - 42);
}
