// The exec agent's protocol comes from the other side of the VM boundary both ways (the guest
// reads the host's frames, the host the guest's): the frame decoder and every payload parser must
// never crash, whatever the bytes and however they are split; what they accept round-trips.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "img2vm/guestabi/agent.hpp"
#include "img2vm/guestabi/error.hpp"

using namespace img2vm::guestabi;

namespace {

void parse_payload(const Frame& f) {
  try {
    switch (f.type) {
      case FrameType::kRequest: {
        AgentRequest r = agent_request_from_json(f.payload);
        if (!(agent_request_from_json(to_json(r)) == r)) __builtin_trap();
        break;
      }
      case FrameType::kResize: {
        auto [rows, cols] = decode_resize(f.payload);
        if (encode_resize(rows, cols) != f.payload) __builtin_trap();
        break;
      }
      case FrameType::kSignal:
        if (encode_signal(decode_signal(f.payload)) != f.payload) __builtin_trap();
        break;
      case FrameType::kExit: {
        ExecExit e = exec_exit_from_json(f.payload);
        if (!(exec_exit_from_json(to_json(e)) == e)) __builtin_trap();
        break;
      }
      case FrameType::kResponse:
        agent_response_from_json(f.payload);
        break;
      default:
        break;
    }
  } catch (const Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  // The first byte picks how the stream is split; the frames must not depend on it.
  const std::size_t step = 1 + data[0] % 64;
  std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  FrameDecoder whole, pieces;
  std::vector<Frame> a, b;
  bool whole_failed = false, pieces_failed = false;
  try {
    whole.feed(in);
    while (auto f = whole.next()) a.push_back(*f);
  } catch (const Error&) {
    whole_failed = true;
  }
  try {
    for (std::size_t i = 0; i < in.size() && !pieces_failed; i += step) {
      pieces.feed(in.substr(i, step));
      while (auto f = pieces.next()) b.push_back(*f);
    }
  } catch (const Error&) {
    pieces_failed = true;
  }
  if (whole_failed != pieces_failed || a != b) __builtin_trap();
  for (const auto& f : a) {
    if (encode_frame(f.type, f.payload).size() != kAgentFrameHeader + f.payload.size())
      __builtin_trap();
    parse_payload(f);
  }
  // The payload parsers on the raw bytes as well.
  parse_payload(Frame{FrameType::kRequest, std::string(in)});
  parse_payload(Frame{FrameType::kExit, std::string(in)});
  parse_payload(Frame{FrameType::kResponse, std::string(in)});
  return 0;
}
