// `img2vm convert REF [-o FILE]`: an image from any source flattened into a bootable ext4 with
// our init at /.img2vm/init. Without -o the result goes to the store's rootfs cache.
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "commands.hpp"
#include "image_input.hpp"
#include "img2vm/base/digest.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/version.hpp"

namespace img2vm::cli {

namespace fs = std::filesystem;

namespace {

struct ConvertArgs {
  std::string ref, output, platform, size, extra_space, max_size;
  bool no_init = false;
};

// "512M", "2G", "1048576": bytes.
uint64_t parse_size(const std::string& flag, const std::string& text) {
  size_t pos = 0;
  unsigned long long v = 0;
  try {
    v = std::stoull(text, &pos);
  } catch (const std::exception&) {
    pos = 0;
  }
  if (pos == 0) throw Error(ErrorKind::kInvalidArgument, flag + ": \"" + text + "\" is not a size (e.g. 512M, 2G)");
  std::string unit = text.substr(pos);
  uint64_t mul = 1;
  if (unit == "" || unit == "B") mul = 1;
  else if (unit == "K" || unit == "KiB" || unit == "k") mul = 1ull << 10;
  else if (unit == "M" || unit == "MiB" || unit == "m") mul = 1ull << 20;
  else if (unit == "G" || unit == "GiB" || unit == "g") mul = 1ull << 30;
  else if (unit == "T" || unit == "TiB" || unit == "t") mul = 1ull << 40;
  else throw Error(ErrorKind::kInvalidArgument, flag + ": unknown unit \"" + unit + "\" in \"" + text + "\"");
  if (v > UINT64_MAX / mul) throw Error(ErrorKind::kInvalidArgument, flag + ": \"" + text + "\" is too large");
  return v * mul;
}

// The cache key covers everything that changes the bytes of the output.
fs::path cache_path(const registry::Store& store, const registry::ImageSource& src, const fs::path& init,
                    const ConvertArgs& a) {
  Sha256 h;
  std::string key = "img2vm-rootfs-v1\n" + src.manifest_digest().str() + "\n" + src.platform().str() + "\n" +
                    (init.empty() ? "no-init" : sha256_file(init).str()) + "\n" + std::string(version()) + "\n" +
                    a.size + "\n" + a.extra_space + "\n" + a.max_size + "\n";
  h.update(key);
  return store.home() / "rootfs" / (h.finish().hex().substr(0, 32) + ".ext4");
}

}  // namespace

void register_convert(CLI::App& app, Globals& g, Action* slot) {
  auto a = std::make_shared<ConvertArgs>();
  auto* sub = app.add_subcommand("convert", "Convert an image into a bootable ext4 root filesystem (rootless)");
  add_global_flags(*sub);
  sub->add_option("ref", a->ref, "Image: a registry reference, oci:DIR[:TAG] or docker-archive:FILE[:REF]")->required();
  sub->add_option("-o,--output", a->output, "Write the ext4 image here (default: the store's rootfs cache)");
  sub->add_option("--platform", a->platform, "os/arch[/variant] to select from a multi-platform image");
  sub->add_option("--size", a->size, "Exact filesystem size (e.g. 2G); default: from the content");
  sub->add_option("--extra-space", a->extra_space, "Free space to leave on top of the content (default 16M)");
  sub->add_option("--max-size", a->max_size, "Refuse images whose content exceeds this (default 64G)");
  sub->add_flag("--no-init", a->no_init, "Do not inject the img2vm guest init");
  sub->callback([a, &g, slot] {
    *slot = [a, &g] {
      registry::Store store;
      registry::Platform platform = a->platform.empty() ? registry::host_platform() : registry::Platform::parse(a->platform);
      rootfs::ConvertOptions o;
      if (!a->size.empty()) o.size = parse_size("--size", a->size);
      if (!a->extra_space.empty()) o.extra_space = parse_size("--extra-space", a->extra_space);
      if (!a->max_size.empty()) o.max_size = parse_size("--max-size", a->max_size);
      if (!a->no_init) o.init_binary = init_binary();

      auto src = resolve_image(store, a->ref, platform, g.json);
      bool cached = false;
      if (a->output.empty()) {
        o.output = cache_path(store, *src, o.init_binary, *a);
        fs::create_directories(o.output.parent_path());
        cached = fs::exists(o.output);
      } else {
        o.output = a->output;
      }
      bool tty = !g.json && isatty(STDERR_FILENO);
      if (tty) {
        o.progress = [](std::string_view phase, uint64_t done, uint64_t total) {
          std::fprintf(stderr, "\r%-6.*s %llu/%llu", static_cast<int>(phase.size()), phase.data(),
                       static_cast<unsigned long long>(done), static_cast<unsigned long long>(total));
          std::fflush(stderr);
        };
      }
      rootfs::ConvertResult r{};
      if (!cached) {
        TempDir scratch("img2vm-convert");
        r = rootfs::convert(image_input(*src, scratch.path()), o);
        if (tty) std::fprintf(stderr, "\n");
      }
      uint64_t size = fs::file_size(o.output);
      if (g.json) {
        nlohmann::json j = {{"image", src->name()},
                            {"manifest_digest", src->manifest_digest().str()},
                            {"platform", src->platform().str()},
                            {"output", fs::absolute(o.output).string()},
                            {"size", size},
                            {"cached", cached}};
        if (!cached) {
          j["inodes"] = r.inodes;
          j["data_bytes"] = r.data_bytes;
          j["layers"] = r.layers;
        }
        std::cout << j.dump() << "\n";
      } else {
        std::cout << fs::absolute(o.output).string() << "\n";
      }
      return kExitOk;
    };
  });
}

}  // namespace img2vm::cli
