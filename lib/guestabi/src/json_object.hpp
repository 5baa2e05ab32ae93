// Internal to img2vm::guestabi: the one way its parsers read a JSON document.
#pragma once

#include <nlohmann/json.hpp>
#include <string_view>

namespace img2vm::guestabi::detail {

// `text` as a JSON object; throws Error "<what>: not valid JSON" (also for a NUL byte, where
// nlohmann would stop reading) or "<what>: not a JSON object".
nlohmann::json parse_json_object(std::string_view text, std::string_view what);

}  // namespace img2vm::guestabi::detail
