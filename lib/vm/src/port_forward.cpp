#include "img2vm/vm/port_forward.hpp"

#include <arpa/inet.h>

#include <cctype>

#include "img2vm/base/ascii.hpp"
#include "img2vm/base/error.hpp"

namespace img2vm::vm {

namespace {

struct Range {
  uint32_t first = 0, last = 0;
  bool empty = true;
};

[[noreturn]] void bad(std::string_view spec, const std::string& why) {
  throw Error(ErrorKind::kInvalidArgument,
              "invalid port spec \"" + std::string(spec) + "\": " + why);
}

uint32_t parse_port(std::string_view spec, std::string_view s, const char* what, bool allow_zero) {
  if (s.empty() || s.size() > 5)
    bad(spec,
        std::string(what) + " port \"" + std::string(s) + "\" is not a number from 1 to 65535");
  uint32_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9')
      bad(spec,
          std::string(what) + " port \"" + std::string(s) + "\" is not a number from 1 to 65535");
    v = v * 10 + uint32_t(c - '0');
  }
  if (v > 65535 || (v == 0 && !allow_zero))
    bad(spec,
        std::string(what) + " port \"" + std::string(s) + "\" is not a number from 1 to 65535");
  return v;
}

Range parse_range(std::string_view spec, std::string_view s, const char* what, bool allow_zero) {
  Range r;
  if (s.empty()) return r;
  r.empty = false;
  size_t dash = s.find('-');
  if (dash == std::string_view::npos) {
    r.first = r.last = parse_port(spec, s, what, allow_zero);
    return r;
  }
  r.first = parse_port(spec, s.substr(0, dash), what, false);
  r.last = parse_port(spec, s.substr(dash + 1), what, false);
  if (r.last < r.first)
    bad(spec, std::string(what) + " port range \"" + std::string(s) + "\" runs backwards");
  return r;
}

}  // namespace

const char* to_string(PortProtocol p) noexcept { return p == PortProtocol::kUdp ? "udp" : "tcp"; }

std::string to_string(const PortForward& f) {
  std::string ip = f.host_ip.find(':') != std::string::npos ? "[" + f.host_ip + "]" : f.host_ip;
  return ip + ":" + std::to_string(f.host_port) + "->" + std::to_string(f.guest_port) + "/" +
         to_string(f.protocol);
}

std::vector<PortForward> parse_port_forward(std::string_view spec) {
  if (spec.empty()) bad(spec, "empty");
  for (char c : spec)
    if (std::isspace(static_cast<unsigned char>(c)) || !std::isprint(static_cast<unsigned char>(c)))
      bad(spec, "contains a space or control character");

  std::string_view rest = spec;
  PortProtocol proto = PortProtocol::kTcp;
  if (size_t slash = rest.rfind('/'); slash != std::string_view::npos) {
    std::string p = ascii_lower(rest.substr(slash + 1));
    if (p == "udp")
      proto = PortProtocol::kUdp;
    else if (p == "sctp")
      bad(spec, "sctp is not supported");
    else if (p != "tcp")
      bad(spec, "unknown protocol \"" + std::string(rest.substr(slash + 1)) + "\" (tcp or udp)");
    rest = rest.substr(0, slash);
  }

  std::string_view ip, host, guest;
  bool v6 = false;
  if (!rest.empty() && rest.front() == '[') {
    size_t close = rest.find(']');
    if (close == std::string_view::npos) bad(spec, "unclosed '[' around the host address");
    ip = rest.substr(1, close - 1);
    v6 = true;
    std::string_view after = rest.substr(close + 1);
    if (after.empty() || after.front() != ':')
      bad(spec, "expected ':' after the bracketed host address");
    after.remove_prefix(1);
    size_t colon = after.find(':');
    if (colon == std::string_view::npos)
      bad(spec, "expected HOSTPORT:GUESTPORT after the host address");
    host = after.substr(0, colon);
    guest = after.substr(colon + 1);
    if (guest.find(':') != std::string_view::npos) bad(spec, "too many ':'");
  } else {
    std::vector<std::string_view> parts;
    size_t start = 0;
    for (;;) {
      size_t colon = rest.find(':', start);
      parts.push_back(rest.substr(
          start, colon == std::string_view::npos ? std::string_view::npos : colon - start));
      if (colon == std::string_view::npos) break;
      start = colon + 1;
    }
    if (parts.size() == 1) {
      guest = parts[0];
    } else if (parts.size() == 2) {
      host = parts[0];
      guest = parts[1];
      if (host.empty()) bad(spec, "empty host port (write GUESTPORT alone for any free host port)");
    } else if (parts.size() == 3) {
      ip = parts[0];
      host = parts[1];
      guest = parts[2];
    } else {
      bad(spec, "too many ':' (an IPv6 host address goes in brackets: [::1]:8080:80)");
    }
  }

  std::string host_ip = "0.0.0.0";
  if (!ip.empty() || v6) {
    std::string addr(ip);
    unsigned char buf[16];
    if (v6 ? ::inet_pton(AF_INET6, addr.c_str(), buf) != 1
           : ::inet_pton(AF_INET, addr.c_str(), buf) != 1)
      bad(spec, "\"" + addr + "\" is not a numeric " + (v6 ? "IPv6" : "IPv4") + " address");
    host_ip = addr;
  }

  if (guest.empty()) bad(spec, "no guest port");
  Range g = parse_range(spec, guest, "guest", false);
  Range h = parse_range(spec, host, "host", true);
  if (!h.empty && h.last - h.first != g.last - g.first)
    bad(spec, "host and guest port ranges differ in length");

  std::vector<PortForward> out;
  for (uint32_t i = 0; i <= g.last - g.first; ++i) {
    PortForward f;
    f.protocol = proto;
    f.host_ip = host_ip;
    f.host_port = h.empty || (h.first == 0) ? 0 : uint16_t(h.first + i);
    f.guest_port = uint16_t(g.first + i);
    out.push_back(std::move(f));
  }
  return out;
}

}  // namespace img2vm::vm
