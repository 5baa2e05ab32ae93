#include <gtest/gtest.h>

#include "img2vm/base/error.hpp"
#include "img2vm/rootfs/runtime_config.hpp"

using namespace img2vm;
using namespace img2vm::rootfs;

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
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
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
