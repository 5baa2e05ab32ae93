// The one reader of a platform out of JSON: an index entry's "platform" object (manifest.cpp)
// and an image config's top-level os/architecture/variant (pull, image sources).
#pragma once

#include <nlohmann/json.hpp>
#include <string_view>

#include "img2vm/registry/manifest.hpp"

namespace img2vm::registry {

// The os, architecture, variant, os.version and os.features of JSON object `j`, as written (not
// normalized). A missing or null field is empty; a field of another type than string is
// Error(kIntegrity) "invalid WHAT: ..."; entries of os.features that are not strings are skipped.
Platform read_platform(const nlohmann::json& j, std::string_view what);

// The normalized platform an image config declares; empty when the config is not a JSON object.
// Errors as read_platform's, naming `what`.
Platform platform_of_config(std::string_view config, std::string_view what);

}  // namespace img2vm::registry
