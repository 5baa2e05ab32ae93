#include "guest_kernel.hpp"

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

#include "img2vm/base/error.hpp"

namespace img2vm::cli {

namespace fs = std::filesystem;

fs::path kernel_build_script() {
  std::vector<fs::path> candidates;
  if (const char* d = std::getenv("IMG2VM_DATA_DIR"); d && *d) candidates.push_back(fs::path(d) / "kernel" / "build.sh");
  candidates.push_back(fs::path(IMG2VM_INSTALL_DATADIR) / "kernel" / "build.sh");
  candidates.push_back(fs::path(IMG2VM_SOURCE_DIR) / "guest" / "kernel" / "build.sh");
  for (const auto& c : candidates)
    if (fs::exists(c)) return c;
  throw Error(ErrorKind::kNotFound, "the guest kernel build script is missing (looked for " +
                                        candidates.back().string() + "); set IMG2VM_KERNEL to a kernel image");
}

namespace {

// Runs the script with args; returns its exit status and its stdout (stderr passes through).
int run_script(const fs::path& script, const std::string& args, std::string& out) {
  std::string cmd = "'" + script.string() + "' " + args;
  FILE* raw = popen(cmd.c_str(), "r");
  if (!raw) throw_errno("cannot run " + script.string());
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, raw)) > 0) out.append(buf, n);
  int status = pclose(raw);
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

GuestKernel from_cache_dir(const fs::path& dir) {
  GuestKernel k;
  k.cache_dir = dir;
  k.source = "cache";
  k.path = dir / "vmlinux";
  if (!fs::exists(k.path)) throw Error(ErrorKind::kNotFound, "the kernel cache " + dir.string() + " has no vmlinux");
  return k;
}

}  // namespace

std::optional<GuestKernel> find_guest_kernel(const std::string& flag_value) {
  std::string explicit_path = flag_value;
  std::string source = "--kernel";
  if (explicit_path.empty()) {
    if (const char* e = std::getenv("IMG2VM_KERNEL"); e && *e) {
      explicit_path = e;
      source = "IMG2VM_KERNEL";
    }
  }
  if (!explicit_path.empty()) {
    if (!fs::is_regular_file(explicit_path))
      throw Error(ErrorKind::kNotFound, "kernel image " + explicit_path + " (from " + source + ") does not exist");
    return GuestKernel{fs::absolute(explicit_path), source, {}};
  }
  std::string out;
  int rc = run_script(kernel_build_script(), "--print-path", out);
  if (rc != 0 || out.empty()) return std::nullopt;
  return from_cache_dir(out);
}

GuestKernel build_guest_kernel(bool force) {
  std::string out;
  fs::path script = kernel_build_script();
  int rc = run_script(script, force ? "--force" : "", out);
  if (rc != 0) throw Error(ErrorKind::kIo, "the guest kernel build failed (" + script.string() + " exited with " + std::to_string(rc) + ")");
  return from_cache_dir(out);
}

}  // namespace img2vm::cli
