#include "img2vm/init/warm.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <variant>

#include "img2vm/init/command.hpp"
#include "img2vm/init/sys.hpp"

namespace img2vm::init {

namespace {

uint64_t le(std::string_view b, std::size_t off, std::size_t n) {
  uint64_t v = 0;
  for (std::size_t i = 0; i < n; ++i) v |= uint64_t(uint8_t(b[off + i])) << (8 * i);
  return v;
}

// The first word after "#!" (the kernel's rule: spaces and tabs around it, one line of at most
// 256 bytes).
std::string script_interpreter(std::string_view head) {
  std::string_view line = head.substr(2, std::min<std::size_t>(head.size(), 256) - 2);
  line = line.substr(0, line.find_first_of(std::string_view("\n\0", 2)));
  const std::size_t start = line.find_first_not_of(" \t");
  if (start == std::string_view::npos) return {};
  line = line.substr(start);
  return std::string(line.substr(0, line.find_first_of(" \t")));
}

std::string elf_interpreter(std::string_view head) {
  constexpr std::size_t kEhdr = 64, kPhdr = 56;
  constexpr uint32_t kPtInterp = 3;
  if (head.size() < kEhdr || head[4] != 2 || head[5] != 1) return {};  // ELFCLASS64, LSB
  const uint64_t phoff = le(head, 32, 8), phentsize = le(head, 54, 2), phnum = le(head, 56, 2);
  if (phentsize < kPhdr || phoff > head.size()) return {};
  for (uint64_t i = 0; i < phnum; ++i) {
    const uint64_t off = phoff + i * phentsize;  // both at most 2^16: no overflow
    if (off > head.size() || head.size() - off < kPhdr) return {};
    if (le(head, off, 4) != kPtInterp) continue;
    const uint64_t at = le(head, off + 8, 8), size = le(head, off + 32, 8);
    if (at > head.size() || size > head.size() - at || size < 2) return {};
    std::string_view s = head.substr(at, size);
    s = s.substr(0, s.find('\0'));
    return std::string(s);
  }
  return {};
}

// The regular file at `file` opened for reading, when it is one on the device `dev` (the
// image's root file system: not /proc/kcore, say); a device node or FIFO is never opened (its
// driver's open could act). Nothing else runs in the guest yet: the type cannot change between.
UniqueFd open_regular(const std::string& file, dev_t dev) {
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_dev != dev) return {};
  UniqueFd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY));
  if (!fd || ::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) return {};
  return fd;
}

// The first kExecHeadBytes of the regular file at `file` (on `dev`); empty when it is none.
std::string exec_head(const std::string& file, dev_t dev) {
  UniqueFd fd = open_regular(file, dev);
  if (!fd) return {};
  std::string head(kExecHeadBytes, '\0');
  std::size_t got = 0;
  while (got < head.size()) {
    ssize_t n = ::read(fd.get(), head.data() + got, head.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
  }
  head.resize(got);
  return head;
}

std::string below(const std::filesystem::path& root, const std::string& guest_path) {
  return (root / std::filesystem::path(guest_path).relative_path()).string();
}

}  // namespace

std::string interpreter_of(std::string_view head) {
  std::string interp;
  if (head.starts_with("#!"))
    interp = script_interpreter(head);
  else if (head.starts_with("\x7f"
                            "ELF"))
    interp = elf_interpreter(head);
  if (interp.empty() || interp.front() != '/') return {};
  return interp;
}

std::vector<std::string> warm_files(const std::filesystem::path& root,
                                    const guestabi::RuntimeConfig& config) {
  std::vector<std::string> argv;
  try {
    argv = command_line(config);
  } catch (const std::exception&) {  // no command: the run will say so
    return {};
  }
  const std::string cwd = config.working_dir.empty() ? "/" : config.working_dir;
  auto found = find_executable(
      root, argv[0], env_get(config.env, "PATH").value_or(std::string(kDefaultPath)), cwd);
  const std::string* program = std::get_if<std::string>(&found);
  if (!program) return {};
  std::string path = *program;
  if (path.front() != '/') path = (std::filesystem::path(cwd) / path).lexically_normal().string();
  struct stat rs {};
  if (::stat(root.c_str(), &rs) != 0) return {};
  std::vector<std::string> out;
  while (out.size() < kMaxWarmFiles && std::find(out.begin(), out.end(), path) == out.end()) {
    const std::string head = exec_head(below(root, path), rs.st_dev);
    if (head.empty()) break;
    out.push_back(path);
    path = interpreter_of(head);
    if (path.empty()) break;
  }
  return out;
}

uint64_t read_through(const std::string& path, uint64_t budget) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return 0;
  UniqueFd fd = open_regular(path, st.st_dev);
  if (!fd) return 0;
  std::string buf(256 << 10, '\0');
  uint64_t done = 0;
  while (done < budget) {
    ssize_t n = ::read(fd.get(), buf.data(), std::min<uint64_t>(buf.size(), budget - done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += static_cast<uint64_t>(n);
  }
  return done;
}

}  // namespace img2vm::init
