// Helpers shared by the runtime suites.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "image_builder.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/runtime/image.hpp"
#include "registry.hpp"
#include "skopeo.hpp"

namespace img2vm::testing {

// `n` pseudo-random (incompressible) bytes.
inline std::string noise(size_t n, unsigned seed) {
  std::string s(n, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (auto& c : s) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    c = static_cast<char>(x);
  }
  return s;
}

// Three layers (small, 3 MiB of noise, zstd), exposing 80/tcp and 53/udp.
inline ImageSpec three_layer_spec() {
  ImageSpec spec;
  spec.layers.push_back(layer({dir("etc"), file("etc/marker", "runtime\n")}));
  spec.layers.push_back(layer({file("data/big.bin", noise(3 << 20, 7))}));
  spec.layers.push_back(layer({file("hello.txt", "hello\n", 0600)}, LayerCompression::kZstd));
  spec.config.cmd = {"/bin/sh"};
  spec.config.exposed_ports = {"80/tcp", "53/udp"};
  return spec;
}

// Pushes `img` to `reg` as `dest` (skopeo, through an OCI layout).
inline void push(const Registry& reg, const BuiltImage& img, const std::string& dest) {
  TempDir layout("layout");
  write_oci_layout(layout.path(), {{"t", img}});
  skopeo_push("oci:" + layout.path().string() + ":t", reg, dest);
}

// Image options for the plain-HTTP test registry, without the user's docker config.
inline runtime::ImageOptions image_options() {
  runtime::ImageOptions o;
  o.platform = registry::Platform::parse("linux/amd64");
  o.client.use_docker_config = false;
  o.client.backoff_initial = std::chrono::milliseconds(20);
  return o;
}

// The files under `dir`, recursively (none when it does not exist).
inline std::vector<std::string> files_under(const std::filesystem::path& dir) {
  std::vector<std::string> out;
  if (!std::filesystem::exists(dir)) return out;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir))
    if (!e.is_directory()) out.push_back(e.path().string());
  return out;
}

// The Error `f` throws (a failed expectation when it throws nothing).
inline Error error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "no error";
  return Error(ErrorKind::kInternal, "no error");
}

}  // namespace img2vm::testing
