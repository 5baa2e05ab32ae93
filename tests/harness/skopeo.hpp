// skopeo, run for tests: copies images between the builder's outputs and a test registry, so
// that what our code reads was written by another implementation.
#pragma once

#include <string>
#include <vector>

#include "process.hpp"
#include "registry.hpp"

namespace img2vm::testing {

// Arguments that let skopeo talk to `reg` as a destination ("--dest-...") or source
// ("--src-..."): TLS trust or plain HTTP, and credentials when the registry needs them.
std::vector<std::string> skopeo_registry_args(const Registry& reg, const std::string& side);

// skopeo copy SRC docker://HOST/DEST_REPO; throws with skopeo's stderr when it fails.
// `extra` may add e.g. "--format", "v2s2" or "--all".
void skopeo_push(const std::string& src, const Registry& reg, const std::string& dest_ref,
                 const std::vector<std::string>& extra = {});

// skopeo copy SRC DEST between local transports (oci:, docker-archive:, dir:); throws with
// skopeo's stderr when it fails.
void skopeo_copy(const std::string& src, const std::string& dest);

// skopeo inspect --raw docker://HOST/REF: the manifest bytes as the registry serves them.
std::string skopeo_inspect_raw(const Registry& reg, const std::string& ref);

}  // namespace img2vm::testing
