// `img2vm kernel path|build|info`: the guest kernel that `run` boots.
#include <fcntl.h>
#include <unistd.h>

#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "commands.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/runtime/kernel.hpp"

namespace img2vm::cli {

namespace fs = std::filesystem;

namespace {

struct KernelOpts {
  std::string kernel;
  bool force = false;
};

std::string image_format(const fs::path& p) {
  std::string head;
  {
    UniqueFd fd = open_file(p, O_RDONLY);
    head.resize(0x210);
    ssize_t n = ::pread(fd.get(), head.data(), head.size(), 0);
    head.resize(n > 0 ? static_cast<size_t>(n) : 0);
  }
  if (head.size() >= 4 && head.compare(0, 4,
                                       "\x7f"
                                       "ELF") == 0)
    return "vmlinux (ELF)";
  if (head.size() >= 0x206 && head.compare(0x202, 4, "HdrS") == 0) return "bzImage";
  return "unknown";
}

runtime::GuestKernel require_kernel(const KernelOpts& o) {
  auto k = runtime::find_guest_kernel(o.kernel);
  if (!k)
    throw Error(ErrorKind::kNotFound,
                "the guest kernel is not built yet: run 'img2vm kernel build' (about 5 minutes)");
  return *k;
}

}  // namespace

void register_kernel(CLI::App& app, Globals& g, Action* slot) {
  auto opts = std::make_shared<KernelOpts>();
  auto* k = app.add_subcommand("kernel", "Build, locate or describe the guest kernel");
  k->require_subcommand(1);
  add_global_flags(*k);
  k->add_option("--kernel", opts->kernel,
                "Use this kernel image (vmlinux or bzImage) instead of our build");

  auto* path = k->add_subcommand("path", "Print the path of the kernel image `run` boots");
  add_global_flags(*path);
  path->callback([opts, slot] {
    *slot = [opts] {
      std::cout << require_kernel(*opts).path.string() << "\n";
      return kExitOk;
    };
  });

  auto* build =
      k->add_subcommand("build", "Build our guest kernel from Debian's linux-source-6.1 (cached)");
  build->add_flag("--force", opts->force, "Rebuild even when a cached build exists");
  add_global_flags(*build);
  build->callback([opts, &g, slot] {
    *slot = [opts, &g] {
      runtime::GuestKernel kern = runtime::build_guest_kernel(opts->force);
      if (g.json)
        std::cout << nlohmann::json{{"path", kern.path.string()},
                                    {"cache_dir", kern.cache_dir.string()}}
                         .dump()
                  << "\n";
      else
        std::cout << kern.path.string() << "\n";
      return kExitOk;
    };
  });

  auto* info = k->add_subcommand("info", "Describe the kernel image `run` boots");
  add_global_flags(*info);
  info->callback([opts, &g, slot] {
    *slot = [opts, &g] {
      runtime::GuestKernel kern = require_kernel(*opts);
      nlohmann::json j = {{"path", kern.path.string()},
                          {"source", kern.source},
                          {"format", image_format(kern.path)},
                          {"size", fs::file_size(kern.path)}};
      if (!kern.cache_dir.empty()) {
        j["cache_dir"] = kern.cache_dir.string();
        if (fs::exists(kern.cache_dir / "info.json")) {
          auto built =
              nlohmann::json::parse(read_file(kern.cache_dir / "info.json"), nullptr, false);
          if (!built.is_discarded()) j["build"] = built;
        }
      }
      if (g.json) {
        std::cout << j.dump() << "\n";
      } else {
        std::cout << "path:    " << j["path"].get<std::string>() << "\n"
                  << "source:  " << kern.source << "\n"
                  << "format:  " << j["format"].get<std::string>() << "\n"
                  << "size:    " << j["size"].get<uintmax_t>() << " bytes\n";
        if (j.contains("build")) std::cout << "build:   " << j["build"].dump() << "\n";
      }
      return kExitOk;
    };
  });
}

}  // namespace img2vm::cli
