// Small formatting helpers shared by the store commands.
#pragma once

#include <cstdint>
#include <cstdio>
#include <ctime>
#include <string>

namespace img2vm::cli {

inline std::string human_size(uint64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

// "2026-11-22T13:39:24Z" -> "5 minutes ago".
inline std::string age(const std::string& rfc3339) {
  std::tm tm{};
  if (!strptime(rfc3339.c_str(), "%Y-%m-%dT%H:%M:%SZ", &tm)) return "?";
  long d = static_cast<long>(std::time(nullptr) - timegm(&tm));
  if (d < 0) d = 0;
  auto fmt = [](long n, const char* unit) {
    return std::to_string(n) + " " + unit + (n == 1 ? "" : "s") + " ago";
  };
  if (d < 60) return fmt(d, "second");
  if (d < 3600) return fmt(d / 60, "minute");
  if (d < 86400) return fmt(d / 3600, "hour");
  return fmt(d / 86400, "day");
}

}  // namespace img2vm::cli
