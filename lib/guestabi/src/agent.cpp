#include "img2vm/guestabi/agent.hpp"

#include <nlohmann/json.hpp>

#include "img2vm/guestabi/error.hpp"
#include "json_object.hpp"

namespace img2vm::guestabi {

using nlohmann::json;

bool known_frame_type(uint8_t type) {
  switch (static_cast<FrameType>(type)) {
    case FrameType::kRequest:
    case FrameType::kStdin:
    case FrameType::kStdinClose:
    case FrameType::kResize:
    case FrameType::kSignal:
    case FrameType::kStdout:
    case FrameType::kStderr:
    case FrameType::kExit:
    case FrameType::kResponse:
      return true;
  }
  return false;
}

std::size_t max_frame_payload(FrameType type) {
  return type == FrameType::kRequest ? kMaxAgentRequest : kMaxAgentPayload;
}

std::string encode_frame(FrameType type, std::string_view payload) {
  if (payload.size() > max_frame_payload(type))
    throw Error("agent frame: payload of " + std::to_string(payload.size()) +
                " bytes is over the limit of " + std::to_string(max_frame_payload(type)));
  std::string out;
  out.reserve(kAgentFrameHeader + payload.size());
  out += static_cast<char>(type);
  auto n = static_cast<uint32_t>(payload.size());
  for (int i = 0; i < 4; ++i) out += static_cast<char>((n >> (8 * i)) & 0xff);
  out += payload;
  return out;
}

void FrameDecoder::feed(std::string_view bytes) {
  if (pos_ > 0 && pos_ == buf_.size()) {
    buf_.clear();
    pos_ = 0;
  } else if (pos_ > kMaxAgentPayload) {
    buf_.erase(0, pos_);
    pos_ = 0;
  }
  buf_.append(bytes);
}

std::optional<Frame> FrameDecoder::next() {
  std::size_t avail = buf_.size() - pos_;
  if (avail < kAgentFrameHeader) return std::nullopt;
  const auto* p = reinterpret_cast<const unsigned char*>(buf_.data() + pos_);
  if (!known_frame_type(p[0]))
    throw Error("agent frame: unknown type " + std::to_string(unsigned(p[0])));
  auto type = static_cast<FrameType>(p[0]);
  uint32_t len = uint32_t(p[1]) | uint32_t(p[2]) << 8 | uint32_t(p[3]) << 16 | uint32_t(p[4]) << 24;
  if (len > max_frame_payload(type))
    throw Error("agent frame: length " + std::to_string(len) + " is over the limit of " +
                std::to_string(max_frame_payload(type)));
  if (avail - kAgentFrameHeader < len) return std::nullopt;
  Frame f{type, buf_.substr(pos_ + kAgentFrameHeader, len)};
  pos_ += kAgentFrameHeader + len;
  return f;
}

namespace {

[[noreturn]] void bad(std::string_view what, std::string_view field, std::string_view why) {
  throw Error(std::string(what) + ": field \"" + std::string(field) + "\" " + std::string(why));
}

std::string dump(const json& j, std::string_view what) {
  try {
    return j.dump();
  } catch (const json::exception&) {
    throw Error(std::string(what) + ": a string is not valid UTF-8");
  }
}

const json* member(const json& obj, const char* field) {
  auto it = obj.find(field);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

std::string string_field(const json& obj, std::string_view what, const char* field) {
  const json* v = member(obj, field);
  if (!v) return {};
  if (!v->is_string()) bad(what, field, "must be a string");
  std::string s = v->get<std::string>();
  if (s.find('\0') != std::string::npos) bad(what, field, "must not contain a NUL byte");
  return s;
}

std::vector<std::string> string_list(const json& obj, std::string_view what, const char* field,
                                     std::size_t& count) {
  std::vector<std::string> out;
  const json* v = member(obj, field);
  if (!v) return out;
  if (!v->is_array()) bad(what, field, "must be an array of strings");
  for (const auto& e : *v) {
    if (!e.is_string()) bad(what, field, "must be an array of strings");
    if (++count > kMaxExecStrings)
      bad(what, field,
          "has too many strings (args and env: at most " + std::to_string(kMaxExecStrings) + ")");
    std::string s = e.get<std::string>();
    if (s.find('\0') != std::string::npos) bad(what, field, "must not contain a NUL byte");
    out.push_back(std::move(s));
  }
  return out;
}

bool bool_field(const json& obj, std::string_view what, const char* field) {
  const json* v = member(obj, field);
  if (!v) return false;
  if (!v->is_boolean()) bad(what, field, "must be true or false");
  return v->get<bool>();
}

// An integer field in [lo, hi]; `fallback` when absent.
int64_t int_field(const json& obj, std::string_view what, const char* field, int64_t lo, int64_t hi,
                  std::optional<int64_t> fallback) {
  const json* v = member(obj, field);
  if (!v) {
    if (!fallback) bad(what, field, "is missing");
    return *fallback;
  }
  if (!v->is_number_integer()) bad(what, field, "must be an integer");
  if (v->is_number_unsigned() ? v->get<uint64_t>() > uint64_t(hi)
                              : (v->get<int64_t>() < lo || v->get<int64_t>() > hi))
    bad(what, field, "must be between " + std::to_string(lo) + " and " + std::to_string(hi));
  return v->get<int64_t>();
}

constexpr std::string_view kRequestWhat = "agent request";

}  // namespace

std::string to_json(const AgentRequest& r) {
  json j = json::object();
  j["version"] = kAgentVersion;
  if (const auto* e = std::get_if<ExecRequest>(&r)) {
    j["op"] = "exec";
    j["args"] = e->args;
    j["env"] = e->env;
    j["user"] = e->user;
    j["workdir"] = e->workdir;
    j["tty"] = e->tty;
    j["rows"] = e->rows;
    j["cols"] = e->cols;
    j["stdin"] = e->open_stdin;
  } else if (const auto* s = std::get_if<SignalRequest>(&r)) {
    j["op"] = "signal";
    j["signal"] = s->signal;
  } else if (std::holds_alternative<StopRequest>(r)) {
    j["op"] = "stop";
  } else if (std::holds_alternative<StartRequest>(r)) {
    j["op"] = "start";
  } else {
    j["op"] = "status";
  }
  return dump(j, kRequestWhat);
}

AgentRequest agent_request_from_json(std::string_view text) {
  constexpr std::string_view what = kRequestWhat;
  json j = detail::parse_json_object(text, what);
  int64_t version = int_field(j, what, "version", INT32_MIN, INT32_MAX, std::nullopt);
  if (version != kAgentVersion)
    throw Error(std::string(what) + ": version " + std::to_string(version) +
                " is not supported (this agent speaks version " + std::to_string(kAgentVersion) +
                ")");
  const json* op = member(j, "op");
  if (!op) bad(what, "op", "is missing");
  if (!op->is_string()) bad(what, "op", "must be a string");
  const std::string name = op->get<std::string>();
  if (name == "exec") {
    ExecRequest e;
    std::size_t count = 0;
    e.args = string_list(j, what, "args", count);
    if (e.args.empty()) bad(what, "args", "must name a command");
    e.env = string_list(j, what, "env", count);
    for (const auto& kv : e.env) {
      auto eq = kv.find('=');
      if (eq == std::string::npos || eq == 0) bad(what, "env", "entries must be KEY=VALUE");
    }
    e.user = string_field(j, what, "user");
    e.workdir = string_field(j, what, "workdir");
    if (!e.workdir.empty() && e.workdir.front() != '/') bad(what, "workdir", "must be absolute");
    e.tty = bool_field(j, what, "tty");
    e.rows = static_cast<uint16_t>(int_field(j, what, "rows", 0, 65535, 0));
    e.cols = static_cast<uint16_t>(int_field(j, what, "cols", 0, 65535, 0));
    e.open_stdin = bool_field(j, what, "stdin");
    return e;
  }
  if (name == "signal")
    return SignalRequest{static_cast<int>(int_field(j, what, "signal", 1, 64, std::nullopt))};
  if (name == "status") return StatusRequest{};
  if (name == "stop") return StopRequest{};
  if (name == "start") return StartRequest{};
  bad(what, "op", "\"" + name + "\" is not an operation (exec, signal, stop, status, start)");
}

std::string to_json(const ExecExit& e) {
  json j = json::object();
  j["status"] = e.status;
  if (!e.error.empty()) j["error"] = e.error;
  return dump(j, "agent exit");
}

ExecExit exec_exit_from_json(std::string_view text) {
  constexpr std::string_view what = "agent exit";
  json j = detail::parse_json_object(text, what);
  ExecExit e;
  e.status = static_cast<int>(int_field(j, what, "status", 0, 255, std::nullopt));
  e.error = string_field(j, what, "error");
  return e;
}

std::string to_json(const AgentResponse& r) {
  json j = json::object();
  if (!r.error.empty()) {
    j["error"] = r.error;
  } else if (r.workload_pid > 0) {
    j["workload_pid"] = r.workload_pid;
    j["running"] = r.running;
  }
  return dump(j, "agent response");
}

AgentResponse agent_response_from_json(std::string_view text) {
  constexpr std::string_view what = "agent response";
  json j = detail::parse_json_object(text, what);
  AgentResponse r;
  r.error = string_field(j, what, "error");
  r.workload_pid = static_cast<int>(int_field(j, what, "workload_pid", 0, INT32_MAX, 0));
  r.running = bool_field(j, what, "running");
  return r;
}

std::string encode_resize(uint16_t rows, uint16_t cols) {
  std::string out(4, '\0');
  out[0] = static_cast<char>(rows & 0xff);
  out[1] = static_cast<char>(rows >> 8);
  out[2] = static_cast<char>(cols & 0xff);
  out[3] = static_cast<char>(cols >> 8);
  return out;
}

std::pair<uint16_t, uint16_t> decode_resize(std::string_view payload) {
  if (payload.size() != 4)
    throw Error("agent resize frame: " + std::to_string(payload.size()) +
                " bytes, not 4 (rows, columns)");
  const auto* p = reinterpret_cast<const unsigned char*>(payload.data());
  return {static_cast<uint16_t>(p[0] | p[1] << 8), static_cast<uint16_t>(p[2] | p[3] << 8)};
}

std::string encode_signal(int signal) {
  if (signal < 1 || signal > 64)
    throw Error("agent signal frame: signal " + std::to_string(signal) + " is not 1-64");
  return std::string(1, static_cast<char>(signal));
}

int decode_signal(std::string_view payload) {
  if (payload.size() != 1)
    throw Error("agent signal frame: " + std::to_string(payload.size()) + " bytes, not 1");
  int s = static_cast<unsigned char>(payload[0]);
  if (s < 1 || s > 64)
    throw Error("agent signal frame: signal " + std::to_string(s) + " is not 1-64");
  return s;
}

}  // namespace img2vm::guestabi
