#include "img2vm/init/warm.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <utility>
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

// A PT_LOAD segment: where its bytes lie in the file and in memory.
struct Segment {
  uint64_t vaddr = 0, offset = 0, filesz = 0;
};

// The file offset of the virtual address `vaddr` (a PT_LOAD segment's bytes), if any.
std::optional<uint64_t> file_offset(const std::vector<Segment>& loads, uint64_t vaddr) {
  for (const Segment& l : loads)
    if (vaddr >= l.vaddr && vaddr - l.vaddr < l.filesz) {
      const uint64_t off = vaddr - l.vaddr;
      if (l.offset > UINT64_MAX - off) return std::nullopt;
      return l.offset + off;
    }
  return std::nullopt;
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

// Up to `length` bytes of `fd` from `offset` (fewer at its end, none past it or past what an
// off_t can name).
std::string read_at(int fd, uint64_t offset, std::size_t length) {
  std::string buf(length, '\0');
  std::size_t got = 0;
  while (got < length && offset + got >= offset && offset + got <= uint64_t(INT64_MAX)) {
    ssize_t n = ::pread(fd, buf.data() + got, length - got, off_t(offset + got));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
  }
  buf.resize(got);
  return buf;
}

// The first kExecHeadBytes of the regular file at `file` (on `dev`); empty when it is none.
std::string exec_head(const std::string& file, dev_t dev) {
  UniqueFd fd = open_regular(file, dev);
  return fd ? read_at(fd.get(), 0, kExecHeadBytes) : std::string();
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

DynamicNeeds dynamic_needs(std::string_view head, const ReadAt& read_at) {
  constexpr std::size_t kEhdr = 64, kPhdr = 56, kDyn = 16, kMaxName = 256, kMaxLoads = 16;
  constexpr uint32_t kPtLoad = 1, kPtDynamic = 2;
  constexpr uint64_t kDtNull = 0, kDtNeeded = 1, kDtStrtab = 5, kDtStrsz = 10, kDtRpath = 15,
                     kDtRunpath = 29;
  if (!head.starts_with("\x7f"
                        "ELF") ||
      head.size() < kEhdr || head[4] != 2 || head[5] != 1)
    return {};
  const uint64_t phoff = le(head, 32, 8), phentsize = le(head, 54, 2), phnum = le(head, 56, 2);
  if (phentsize < kPhdr || phoff > head.size()) return {};
  std::vector<Segment> loads;
  std::optional<Segment> dynamic;
  for (uint64_t i = 0; i < phnum; ++i) {
    const uint64_t off = phoff + i * phentsize;  // both at most 2^16: no overflow
    if (off > head.size() || head.size() - off < kPhdr) break;
    const uint32_t type = uint32_t(le(head, off, 4));
    const Segment seg{le(head, off + 16, 8), le(head, off + 8, 8), le(head, off + 32, 8)};
    if (type == kPtLoad && loads.size() < kMaxLoads) loads.push_back(seg);
    if (type == kPtDynamic && !dynamic) dynamic = seg;
  }
  if (!dynamic) return {};
  const std::string dyn =
      read_at(dynamic->offset, std::min<uint64_t>(dynamic->filesz, kMaxDynamicBytes) / kDyn * kDyn);
  std::vector<uint64_t> names;
  std::optional<uint64_t> strtab, strsz, rpath, runpath;
  for (std::size_t at = 0; at + kDyn <= dyn.size(); at += kDyn) {
    const uint64_t tag = le(dyn, at, 8), val = le(dyn, at + 8, 8);
    if (tag == kDtNull) break;
    if (tag == kDtNeeded && names.size() < kMaxNeeded) names.push_back(val);
    if (tag == kDtStrtab && !strtab) strtab = val;
    if (tag == kDtStrsz && !strsz) strsz = val;
    if (tag == kDtRpath && !rpath) rpath = val;
    if (tag == kDtRunpath && !runpath) runpath = val;
  }
  if (!strtab || !strsz) return {};
  const std::optional<uint64_t> table = file_offset(loads, *strtab);
  if (!table) return {};
  // The string at `n` in the table, when it ends (a NUL) within the table and `max` bytes.
  auto string_at = [&](uint64_t n, std::size_t max) -> std::optional<std::string> {
    if (n >= *strsz || *table > UINT64_MAX - n) return std::nullopt;
    std::string s = read_at(*table + n, std::min<uint64_t>(max + 1, *strsz - n));
    const std::size_t end = s.find('\0');
    if (end == std::string::npos || end > max) return std::nullopt;
    s.resize(end);
    return s;
  };
  DynamicNeeds out;
  for (uint64_t n : names) {
    std::optional<std::string> name = string_at(n, kMaxName - 1);
    if (!name || name->empty() || name->find('/') != std::string::npos || *name == "." ||
        *name == "..")
      continue;
    if (std::find(out.needed.begin(), out.needed.end(), *name) == out.needed.end())
      out.needed.push_back(std::move(*name));
  }
  if (rpath) out.rpath = string_at(*rpath, kMaxSearchPath).value_or("");
  if (runpath) out.runpath = string_at(*runpath, kMaxSearchPath).value_or("");
  return out;
}

std::vector<std::string> needed_libraries(std::string_view head, const ReadAt& read_at) {
  return dynamic_needs(head, read_at).needed;
}

std::vector<std::string> search_path_dirs(std::string_view list, const std::string& object) {
  const std::string origin = std::filesystem::path(object).parent_path().string();
  std::vector<std::string> dirs;
  std::size_t start = 0;
  while (start <= list.size() && dirs.size() < kMaxSearchDirs) {
    std::size_t end = list.find(':', start);
    if (end == std::string_view::npos) end = list.size();
    const std::string_view raw = list.substr(start, end - start);
    start = end + 1;
    // Left to right, once: the object's own path may hold "$ORIGIN" too.
    std::string entry;
    bool other_token = false;
    for (std::size_t i = 0; i < raw.size() && entry.size() <= kMaxSearchPath;) {
      if (raw.substr(i).starts_with("${ORIGIN}")) {
        entry += origin;
        i += 9;
      } else if (raw.substr(i).starts_with("$ORIGIN")) {
        entry += origin;
        i += 7;
      } else {
        other_token |= raw[i] == '$';
        entry += raw[i++];
      }
    }
    if (entry.empty() || entry.front() != '/' || other_token || entry.size() > kMaxSearchPath)
      continue;
    std::string dir = std::filesystem::path(entry).lexically_normal().string();
    while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
    if (std::find(dirs.begin(), dirs.end(), dir) == dirs.end()) dirs.push_back(std::move(dir));
  }
  return dirs;
}

namespace {

// What the ELF file at `file` (a regular file on `dev`) needs.
DynamicNeeds needs_of(const std::string& file, dev_t dev) {
  UniqueFd fd = open_regular(file, dev);
  if (!fd) return {};
  const ReadAt read = [&fd](uint64_t offset, std::size_t length) {
    return read_at(fd.get(), offset, length);
  };
  return dynamic_needs(read(0, kExecHeadBytes), read);
}

// Where a library named `name` is found for the image: its LD_LIBRARY_PATH's absolute
// directories first, then kLibraryDirs; empty when none holds a regular file of that name on
// `dev`.
std::string find_library(const std::filesystem::path& root, const std::string& name,
                         const std::vector<std::string>& dirs, dev_t dev) {
  for (const std::string& d : dirs) {
    const std::string path = d + "/" + name;
    struct stat st {};
    if (::stat(below(root, path).c_str(), &st) == 0 && S_ISREG(st.st_mode) && st.st_dev == dev)
      return path;
  }
  return {};
}

// The file at the in-guest `path` as the kernel knows it (its device and inode); {0, 0} when it
// is not there.
std::pair<dev_t, ino_t> identity(const std::filesystem::path& root, const std::string& path) {
  struct stat st {};
  if (::stat(below(root, path).c_str(), &st) != 0) return {0, 0};
  return {st.st_dev, st.st_ino};
}

// The absolute directories of the image's LD_LIBRARY_PATH (its environment `env`).
std::vector<std::string> ld_library_path(const std::vector<std::string>& env) {
  constexpr std::size_t kMaxPathDirs = 16;
  std::vector<std::string> dirs;
  const std::string path = env_get(env, "LD_LIBRARY_PATH").value_or("");
  std::size_t start = 0;
  while (start <= path.size() && dirs.size() < kMaxPathDirs) {
    std::size_t end = path.find(':', start);
    if (end == std::string::npos) end = path.size();
    std::string d = path.substr(start, end - start);
    if (d.size() > 1 && d.front() == '/' && d.size() < 1024) {
      while (d.size() > 1 && d.back() == '/') d.pop_back();
      dirs.push_back(std::move(d));
    }
    start = end + 1;
  }
  return dirs;
}

void append(std::vector<std::string>& to, const std::vector<std::string>& dirs) {
  to.insert(to.end(), dirs.begin(), dirs.end());
}

}  // namespace

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
  while (out.size() < kMaxWarmChain && std::find(out.begin(), out.end(), path) == out.end()) {
    const std::string head = exec_head(below(root, path), rs.st_dev);
    if (head.empty()) break;
    out.push_back(path);
    path = interpreter_of(head);
    if (path.empty()) break;
  }
  // The shared libraries, breadth first: each file's needs once it is listed. A file is listed
  // once, whatever the names it is reached by (/lib64/ld-linux-x86-64.so.2, the interpreter, is
  // a link to the loader libc names from its directory).
  std::vector<std::pair<dev_t, ino_t>> seen;
  for (const std::string& f : out) seen.push_back(identity(root, f));
  const std::vector<std::string> env_dirs = ld_library_path(config.env);
  const std::vector<std::string> default_dirs(std::begin(kLibraryDirs), std::end(kLibraryDirs));
  // inherited[i]: the DT_RPATH directories of the files that needed out[i], nearest first (the
  // program's own last), which glibc searches for out[i]'s needs when it has no DT_RUNPATH.
  std::vector<std::vector<std::string>> inherited(out.size());
  bool dynamic = false;
  for (std::size_t i = 0; i < out.size() && out.size() < kMaxWarmFiles; ++i) {
    const DynamicNeeds needs = needs_of(below(root, out[i]), rs.st_dev);
    // What out[i]'s needs inherit: with a RUNPATH its own RPATH is ignored.
    std::vector<std::string> chain = inherited[i];
    std::vector<std::string> dirs;
    if (!needs.runpath.empty()) {
      dirs = env_dirs;
      append(dirs, search_path_dirs(needs.runpath, out[i]));
    } else {
      chain = search_path_dirs(needs.rpath, out[i]);
      append(chain, inherited[i]);
      chain.resize(std::min(chain.size(), kMaxSearchDirs));
      dirs = chain;
      append(dirs, env_dirs);
    }
    append(dirs, default_dirs);
    for (const std::string& name : needs.needed) {
      dynamic = true;
      const std::string lib = find_library(root, name, dirs, rs.st_dev);
      if (lib.empty()) continue;
      const std::pair<dev_t, ino_t> id = identity(root, lib);
      if (std::find(seen.begin(), seen.end(), id) != seen.end()) continue;
      out.push_back(lib);
      seen.push_back(id);
      inherited.push_back(chain);
      if (out.size() == kMaxWarmFiles) break;
    }
  }
  // glibc's loader maps its cache of library paths at every such exec.
  if (dynamic && out.size() < kMaxWarmFiles &&
      !find_library(root, "ld.so.cache", {"/etc"}, rs.st_dev).empty())
    out.emplace_back("/etc/ld.so.cache");
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
