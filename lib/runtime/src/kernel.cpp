#include "img2vm/runtime/kernel.hpp"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"

namespace img2vm::runtime {

namespace fs = std::filesystem;

fs::path kernel_build_script() {
  std::vector<fs::path> candidates;
  if (const char* d = std::getenv("IMG2VM_DATA_DIR"); d && *d)
    candidates.push_back(fs::path(d) / "kernel" / "build.sh");
  candidates.push_back(fs::path(IMG2VM_INSTALL_DATADIR) / "kernel" / "build.sh");
  candidates.push_back(fs::path(IMG2VM_SOURCE_DIR) / "guest" / "kernel" / "build.sh");
  for (const auto& c : candidates)
    if (fs::exists(c)) return c;
  throw Error(ErrorKind::kNotFound, "the guest kernel build script is missing (looked for " +
                                        candidates.back().string() +
                                        "); set IMG2VM_KERNEL to a kernel image");
}

namespace {

// Runs the script (no shell in between) with `args`; returns its exit status and its stdout
// (stderr passes through, so the build's progress reaches the user).
int run_script(const fs::path& script, const std::vector<std::string>& args, std::string& out) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw_errno("pipe");
  UniqueFd rd(fds[0]), wr(fds[1]);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, wr.get(), STDOUT_FILENO);
  std::vector<std::string> argv_s = {script.string()};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  int err = ::posix_spawn(&pid, script.c_str(), &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (err != 0) {
    errno = err;
    throw_errno("cannot run " + script.string());
  }
  wr.reset();
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(rd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, size_t(n));
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return WIFEXITED(status) ? WEXITSTATUS(status)
                           : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

GuestKernel from_cache_dir(const fs::path& dir) {
  GuestKernel k;
  k.cache_dir = dir;
  k.source = "cache";
  k.path = dir / "vmlinux";
  if (!fs::exists(k.path))
    throw Error(ErrorKind::kNotFound, "the kernel cache " + dir.string() + " has no vmlinux");
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
      throw Error(ErrorKind::kNotFound,
                  "kernel image " + explicit_path + " (from " + source + ") does not exist");
    return GuestKernel{fs::absolute(explicit_path), source, {}};
  }
  std::string out;
  int rc = run_script(kernel_build_script(), {"--print-path"}, out);
  if (rc != 0 || out.empty()) return std::nullopt;
  return from_cache_dir(out);
}

GuestKernel build_guest_kernel(bool force) {
  std::string out;
  fs::path script = kernel_build_script();
  int rc = run_script(
      script, force ? std::vector<std::string>{"--force"} : std::vector<std::string>{}, out);
  if (rc != 0)
    throw Error(ErrorKind::kIo, "the guest kernel build failed (" + script.string() +
                                    " exited with " + std::to_string(rc) + ")");
  return from_cache_dir(out);
}

}  // namespace img2vm::runtime
