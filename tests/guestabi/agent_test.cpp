// The exec agent's protocol (guestabi/agent.hpp): frames across arbitrary splits, the bounds on
// lengths and types, and the strict request parser.
#include "img2vm/guestabi/agent.hpp"

#include <gtest/gtest.h>

#include <string>

#include "img2vm/guestabi/error.hpp"

using namespace img2vm::guestabi;

namespace {

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

std::string header(uint8_t type, uint32_t len) {
  std::string h(1, static_cast<char>(type));
  for (int i = 0; i < 4; ++i) h += static_cast<char>((len >> (8 * i)) & 0xff);
  return h;
}

}  // namespace

TEST(AgentFrames, EncodesTypeLittleEndianLengthAndPayload) {
  EXPECT_EQ(encode_frame(FrameType::kStdout, "hi"), std::string("\x10\x02\x00\x00\x00hi", 7));
  EXPECT_EQ(encode_frame(FrameType::kStdinClose, ""), std::string("\x03\0\0\0\0", 5));
  std::string big(300, 'x');
  EXPECT_EQ(encode_frame(FrameType::kStdin, big).substr(0, 5), header(2, 300));
}

TEST(AgentFrames, DecodesFramesSplitAtEveryByte) {
  std::string stream = encode_frame(FrameType::kRequest, "{}") +
                       encode_frame(FrameType::kStdin, std::string(1000, 'a')) +
                       encode_frame(FrameType::kStdinClose, "") +
                       encode_frame(FrameType::kResize, encode_resize(24, 80));
  for (std::size_t step : {std::size_t{1}, std::size_t{3}, std::size_t{5}, stream.size()}) {
    FrameDecoder d;
    std::vector<Frame> got;
    for (std::size_t i = 0; i < stream.size(); i += step) {
      d.feed(std::string_view(stream).substr(i, step));
      while (auto f = d.next()) got.push_back(*f);
    }
    ASSERT_EQ(got.size(), 4u) << "step " << step;
    EXPECT_EQ(got[0], (Frame{FrameType::kRequest, "{}"}));
    EXPECT_EQ(got[1], (Frame{FrameType::kStdin, std::string(1000, 'a')}));
    EXPECT_EQ(got[2], (Frame{FrameType::kStdinClose, ""}));
    EXPECT_EQ(decode_resize(got[3].payload), std::make_pair(uint16_t{24}, uint16_t{80}));
    EXPECT_FALSE(d.partial());
  }
}

TEST(AgentFrames, PartialFrameIsReported) {
  FrameDecoder d;
  d.feed(encode_frame(FrameType::kStdout, "abc").substr(0, 6));
  EXPECT_FALSE(d.next());
  EXPECT_TRUE(d.partial());
}

TEST(AgentFrames, OversizedLengthIsRefusedFromTheHeaderAlone) {
  FrameDecoder d;
  d.feed(header(uint8_t(FrameType::kStdout), kMaxAgentPayload + 1));
  EXPECT_EQ(error_of([&] { d.next(); }), "agent frame: length 65537 is over the limit of 65536");
  FrameDecoder huge;
  huge.feed(header(uint8_t(FrameType::kRequest), 0xffffffffu));
  EXPECT_NE(error_of([&] { huge.next(); }).find("over the limit of 1048576"), std::string::npos);
  // A request may be larger than other frames, up to its own bound.
  FrameDecoder req;
  req.feed(header(uint8_t(FrameType::kRequest), kMaxAgentPayload + 1));
  EXPECT_FALSE(req.next());
  EXPECT_NE(error_of([] {
              encode_frame(FrameType::kStdout, std::string(kMaxAgentPayload + 1, 'x'));
            }).find("over the limit"),
            std::string::npos);
}

TEST(AgentFrames, UnknownTypeIsRefused) {
  for (uint8_t t : {0, 6, 15, 20, 255}) {
    FrameDecoder d;
    d.feed(header(t, 0));
    EXPECT_EQ(error_of([&] { d.next(); }), "agent frame: unknown type " + std::to_string(t));
  }
}

TEST(AgentFrames, SignalAndResizePayloads) {
  EXPECT_EQ(decode_signal(encode_signal(15)), 15);
  EXPECT_EQ(decode_signal(encode_signal(64)), 64);
  EXPECT_NE(error_of([] { decode_signal(std::string(1, '\0')); }), "(no error)");
  EXPECT_NE(error_of([] { decode_signal(std::string(1, char(65))); }), "(no error)");
  EXPECT_NE(error_of([] { decode_signal("ab"); }), "(no error)");
  EXPECT_NE(error_of([] { encode_signal(0); }), "(no error)");
  EXPECT_EQ(decode_resize(encode_resize(65535, 1)), std::make_pair(uint16_t{65535}, uint16_t{1}));
  EXPECT_EQ(error_of([] { decode_resize("abc"); }),
            "agent resize frame: 3 bytes, not 4 (rows, columns)");
}

TEST(AgentRequests, RoundTrip) {
  ExecRequest e;
  e.args = {"sh", "-c", "echo hi"};
  e.env = {"A=1", "B="};
  e.user = "nobody";
  e.workdir = "/tmp";
  e.tty = true;
  e.rows = 24;
  e.cols = 80;
  e.open_stdin = true;
  EXPECT_EQ(agent_request_from_json(to_json(AgentRequest{e})), AgentRequest{e});
  EXPECT_EQ(agent_request_from_json(to_json(AgentRequest{SignalRequest{10}})),
            AgentRequest{SignalRequest{10}});
  EXPECT_EQ(agent_request_from_json(to_json(AgentRequest{StatusRequest{}})),
            AgentRequest{StatusRequest{}});
  EXPECT_EQ(agent_request_from_json(to_json(AgentRequest{StopRequest{}})),
            AgentRequest{StopRequest{}});
  EXPECT_EQ(to_json(AgentRequest{StopRequest{}}), R"({"op":"stop","version":1})");
  EXPECT_EQ(agent_request_from_json(to_json(AgentRequest{StartRequest{}})),
            AgentRequest{StartRequest{}});
  EXPECT_EQ(to_json(AgentRequest{StartRequest{}}), R"({"op":"start","version":1})");
  EXPECT_EQ(agent_request_from_json(R"({"version":1,"op":"start","signal":"ignored"})"),
            AgentRequest{StartRequest{}});
  // Optional fields default; unknown fields are ignored.
  auto minimal = agent_request_from_json(R"({"version":1,"op":"exec","args":["true"],"x":1})");
  ExecRequest m;
  m.args = {"true"};
  EXPECT_EQ(minimal, AgentRequest{m});
}

TEST(AgentRequests, StrictErrors) {
  auto err = [](std::string_view json) { return error_of([&] { agent_request_from_json(json); }); };
  EXPECT_EQ(err("[]"), "agent request: not a JSON object");
  EXPECT_EQ(err("{"), "agent request: not valid JSON");
  EXPECT_EQ(err(R"({"op":"status"})"), "agent request: field \"version\" is missing");
  EXPECT_EQ(err(R"({"version":2,"op":"status"})"),
            "agent request: version 2 is not supported (this agent speaks version 1)");
  EXPECT_EQ(err(R"({"version":"1","op":"status"})"),
            "agent request: field \"version\" must be an integer");
  EXPECT_EQ(err(R"({"version":1})"), "agent request: field \"op\" is missing");
  EXPECT_EQ(err(R"({"version":1,"op":"reboot"})"),
            "agent request: field \"op\" \"reboot\" is not an operation (exec, signal, stop, "
            "status, start)");
  EXPECT_EQ(err(R"({"version":2,"op":"start"})"),
            "agent request: version 2 is not supported (this agent speaks version 1)");
  EXPECT_EQ(err(R"({"version":1,"op":"exec"})"),
            "agent request: field \"args\" must name a command");
  EXPECT_EQ(err(R"({"version":1,"op":"exec","args":[]})"),
            "agent request: field \"args\" must name a command");
  EXPECT_EQ(err(R"({"version":1,"op":"exec","args":"sh"})"),
            "agent request: field \"args\" must be an array of strings");
  EXPECT_EQ(err(R"({"version":1,"op":"exec","args":["sh",1]})"),
            "agent request: field \"args\" must be an array of strings");
  EXPECT_EQ(err(R"({"version":1,"op":"exec","args":["a\u0000b"]})"),
            "agent request: field \"args\" must not contain a NUL byte");
  EXPECT_EQ(err(R"({"version":1,"op":"exec","args":["sh"],"env":["NOEQ"]})"),
            "agent request: field \"env\" entries must be KEY=VALUE");
  EXPECT_EQ(err(R"({"version":1,"op":"exec","args":["sh"],"env":["=v"]})"),
            "agent request: field \"env\" entries must be KEY=VALUE");
  EXPECT_EQ(err(R"({"version":1,"op":"exec","args":["sh"],"workdir":"tmp"})"),
            "agent request: field \"workdir\" must be absolute");
  EXPECT_EQ(err(R"({"version":1,"op":"exec","args":["sh"],"tty":1})"),
            "agent request: field \"tty\" must be true or false");
  EXPECT_EQ(err(R"({"version":1,"op":"exec","args":["sh"],"rows":70000})"),
            "agent request: field \"rows\" must be between 0 and 65535");
  EXPECT_EQ(err(R"({"version":1,"op":"exec","args":["sh"],"cols":-1})"),
            "agent request: field \"cols\" must be between 0 and 65535");
  EXPECT_EQ(err(R"({"version":1,"op":"signal"})"), "agent request: field \"signal\" is missing");
  EXPECT_EQ(err(R"({"version":1,"op":"signal","signal":65})"),
            "agent request: field \"signal\" must be between 1 and 64");
}

TEST(AgentRequests, StringCountIsBounded) {
  std::string json = R"({"version":1,"op":"exec","args":["true"],"env":[)";
  for (std::size_t i = 0; i < kMaxExecStrings; ++i) json += std::string(i ? "," : "") + "\"A=1\"";
  json += "]}";
  EXPECT_EQ(error_of([&] { agent_request_from_json(json); }),
            "agent request: field \"env\" has too many strings (args and env: at most 65536)");
}

TEST(AgentResponses, RoundTrip) {
  EXPECT_EQ(exec_exit_from_json(to_json(ExecExit{3, ""})), (ExecExit{3, ""}));
  ExecExit nf{127, "exec: \"nope\": executable file not found in $PATH"};
  EXPECT_EQ(exec_exit_from_json(to_json(nf)), nf);
  EXPECT_EQ(error_of([] { exec_exit_from_json("{}"); }), "agent exit: field \"status\" is missing");
  EXPECT_EQ(error_of([] { exec_exit_from_json(R"({"status":256})"); }),
            "agent exit: field \"status\" must be between 0 and 255");
  AgentResponse st{"", 42, true};
  EXPECT_EQ(agent_response_from_json(to_json(st)), st);
  AgentResponse bad{"no such thing", 0, false};
  EXPECT_EQ(agent_response_from_json(to_json(bad)), bad);
  EXPECT_EQ(agent_response_from_json("{}"), AgentResponse{});
  // A refused start.
  AgentResponse started{"start: the workload has already started", 0, false};
  EXPECT_EQ(to_json(started), R"({"error":"start: the workload has already started"})");
  EXPECT_EQ(agent_response_from_json(to_json(started)), started);
}
