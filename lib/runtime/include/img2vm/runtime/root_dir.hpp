// A host directory as the guest's root file system (img2vm run --rootfs DIR): the directory,
// the image config it boots with, and the initramfs that starts our init on it. The directory is
// never written to by the host; the guest sees it through a virtiofsd (machine.hpp).
//
//   img2vm::runtime::MachineOptions mo;
//   mo.root_dir = img2vm::runtime::open_root_directory("bundle/rootfs", /*read_only=*/false);
//   mo.overrides.cmd = std::vector<std::string>{"/bin/sh", "-c", "echo hi"};
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "img2vm/guestabi/config.hpp"

namespace img2vm::runtime {

struct RootDirectory {
  std::filesystem::path path;  // canonical
  bool read_only = false;      // the guest's root is read-only (refused on the host as well)
  // The image config, first found of: DIR/.img2vm/config.json (guestabi's RuntimeConfig, what
  // convert writes), the OCI runtime-spec bundle config DIR/../config.json when its root.path is
  // DIR (what `umoci unpack` makes); nullopt when neither: the command line must give a command.
  std::optional<guestabi::RuntimeConfig> config;
  std::filesystem::path config_file;  // where `config` came from; empty when none
};

// Opens `dir` as a root. Throws Error: kNotFound when it does not exist, kInvalidArgument when
// it is no directory or a config file in it is invalid (naming the file and the field), kLimit
// when a config file is too large. DIR/.img2vm and its config.json are opened without following
// symlinks (the tree's content may come from an untrusted image), and only regular files are
// read.
RootDirectory open_root_directory(const std::filesystem::path& dir, bool read_only);

// Throws Error(kInvalidArgument) when `root` has no config and `overrides` give no command:
// the guest would have nothing to run.
void check_root_command(const RootDirectory& root, const guestabi::RunOverrides& overrides);

// An initramfs (cpio, newc format, uncompressed) holding only the directory /.img2vm and the
// init at guestabi::kInitPath (mode 0755, owner 0:0, the bytes of `init`, at most 64 MiB).
std::string init_initramfs(const std::filesystem::path& init);

}  // namespace img2vm::runtime
