// The exec agent's protocol (docs/guest-abi.md §6): the guest init listens on vsock port
// kAgentPort; the host connects (through the VMM's unix socket, `CONNECT 1024`) and each
// connection carries one request. Both directions are frames:
//
//   u8 type | u32 little-endian payload length | payload
//
// The payload is at most kMaxAgentPayload bytes (a request frame: kMaxAgentRequest); a larger
// length or an unknown type is a protocol error that ends the connection. Bump kAgentVersion on
// any incompatible change: the agent refuses any other version.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace img2vm::guestabi {

inline constexpr uint32_t kAgentPort = 1024;
inline constexpr int kAgentVersion = 1;
inline constexpr std::size_t kAgentFrameHeader = 5;
inline constexpr std::size_t kMaxAgentPayload = 64u << 10;
// A request frame's payload (the JSON): args and env of an exec may be this large together.
inline constexpr std::size_t kMaxAgentRequest = 1u << 20;
inline constexpr std::size_t kMaxExecStrings = 65536;  // args + env entries of one exec
// The most requests the agent serves at once; one more is answered with an error response.
inline constexpr unsigned kMaxAgentConnections = 64;

enum class FrameType : uint8_t {
  // host -> guest
  kRequest = 1,     // JSON (AgentRequest), the connection's first frame
  kStdin = 2,       // bytes for the exec'd process's stdin
  kStdinClose = 3,  // empty: close its stdin
  kResize = 4,      // u16 rows, u16 columns (little-endian): the tty's new size
  kSignal = 5,      // u8 signal number 1-64 for the exec'd process
  // guest -> host
  kStdout = 16,    // bytes the process wrote to stdout (with a tty: the terminal's output)
  kStderr = 17,    // bytes it wrote to stderr (never with a tty)
  kExit = 18,      // JSON (ExecExit): the exec is over; the last frame
  kResponse = 19,  // JSON (AgentResponse): the answer to signal and status, or a refusal
};

// True for the types above.
bool known_frame_type(uint8_t type);
// The most payload a frame of `type` may carry.
std::size_t max_frame_payload(FrameType type);

struct Frame {
  FrameType type = FrameType::kStdout;
  std::string payload;

  friend bool operator==(const Frame&, const Frame&) = default;
};

// The frame's bytes. Throws Error when the payload is longer than max_frame_payload(type).
std::string encode_frame(FrameType type, std::string_view payload);

// Frames from a byte stream fed in pieces of any size. Call next() until it returns nullopt
// after each feed(): then at most one incomplete frame stays buffered.
class FrameDecoder {
 public:
  void feed(std::string_view bytes);
  // The next complete frame. Throws Error on an unknown type or a length over the type's bound
  // (as soon as the header is in); the decoder is then unusable.
  std::optional<Frame> next();
  // Bytes of an incomplete frame are buffered (a stream that ends now ends mid-frame).
  bool partial() const noexcept { return pos_ < buf_.size(); }

 private:
  std::string buf_;
  std::size_t pos_ = 0;
};

// op "exec": like docker exec. Empty user and workdir: the workload's; env entries replace the
// workload's ("KEY=VALUE").
struct ExecRequest {
  std::vector<std::string> args;  // non-empty; args[0] is looked up in PATH
  std::vector<std::string> env;
  std::string user;
  std::string workdir;  // empty or absolute
  bool tty = false;
  uint16_t rows = 0;  // the tty's initial size; 0: leave the default
  uint16_t cols = 0;
  bool open_stdin = false;  // JSON "stdin"; false: stdin is /dev/null, stdin frames ignored

  friend bool operator==(const ExecRequest&, const ExecRequest&) = default;
};
// op "signal": a signal 1-64 for the workload (the init's child running ENTRYPOINT/CMD).
struct SignalRequest {
  int signal = 0;
  friend bool operator==(const SignalRequest&, const SignalRequest&) = default;
};
// op "status": the workload's state.
struct StatusRequest {
  friend bool operator==(const StatusRequest&, const StatusRequest&) = default;
};
// op "stop": the image's StopSignal (SIGTERM unless the config names another) for the workload,
// as docker stop sends it.
struct StopRequest {
  friend bool operator==(const StopRequest&, const StopRequest&) = default;
};
// op "start": OCI start. The workload's process, created waiting (RunOverrides::
// wait_for_start), execs its command. Answered {} once; refused when the workload was not
// waiting (started already, or never made to wait).
struct StartRequest {
  friend bool operator==(const StartRequest&, const StartRequest&) = default;
};
using AgentRequest =
    std::variant<ExecRequest, SignalRequest, StatusRequest, StopRequest, StartRequest>;

// {"version":1,"op":...}. Throws Error when a string is not UTF-8.
std::string to_json(const AgentRequest& r);
// Throws Error naming the field at fault: not a JSON object, another version, an unknown op, a
// field of the wrong type or out of range, empty args, a string with a NUL byte, an env entry
// without "KEY=", a relative workdir, more than kMaxExecStrings strings. Unknown fields are
// ignored.
AgentRequest agent_request_from_json(std::string_view json);

// The kExit frame: the process's status 0-255 (128+N: killed by signal N); `error` is set when
// it could not be started (docker exec's statuses: 126 cannot run, 127 not found).
struct ExecExit {
  int status = 0;
  std::string error;
  friend bool operator==(const ExecExit&, const ExecExit&) = default;
};
std::string to_json(const ExecExit& e);
ExecExit exec_exit_from_json(std::string_view json);  // throws Error

// The kResponse frame: `error` set when the request was refused or failed; otherwise, for
// status, the workload's pid and whether it still runs ({} for a delivered signal or a start).
struct AgentResponse {
  std::string error;
  int workload_pid = 0;
  bool running = false;
  friend bool operator==(const AgentResponse&, const AgentResponse&) = default;
};
std::string to_json(const AgentResponse& r);
AgentResponse agent_response_from_json(std::string_view json);  // throws Error

// kResize and kSignal payloads.
std::string encode_resize(uint16_t rows, uint16_t cols);
std::pair<uint16_t, uint16_t> decode_resize(std::string_view payload);  // throws Error
std::string encode_signal(int signal);                                  // throws Error
int decode_signal(std::string_view payload);                            // throws Error

}  // namespace img2vm::guestabi
