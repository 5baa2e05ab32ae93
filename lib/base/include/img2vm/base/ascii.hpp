#pragma once

#include <string>
#include <string_view>

namespace img2vm {

// `s` with A-Z turned into a-z and every other byte unchanged (whatever the locale).
inline std::string ascii_lower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

}  // namespace img2vm
