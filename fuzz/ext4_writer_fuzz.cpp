// Fuzzes the ext4 writer: the input describes a tree (directories, files with data and holes,
// fast and slow symlinks, hard links, devices, fifos, xattrs, long names, deep chains, large
// directories), which is written with write_ext4 to an image in a memfd — in about
// half of the runs with files' data already in the output, adopted as convert does, with dead
// runs between them to cut out — and then checked: e2fsck -fn must be clean and every entry
// read back through libext2fs must match the tree. Errors the writer reports for what ext4
// cannot hold (kUnsupported, kLimit) are fine; any other error, a mismatch or a crash is a bug.
#include <fcntl.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "ext4_tree.hpp"
#include "ext4_writer.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"

extern char** environ;

using namespace img2vm;
using img2vm::layers::Dentry;
using img2vm::layers::Inode;
using img2vm::layers::NodeType;
using img2vm::testing::FsEntry;
using img2vm::testing::FsTree;

namespace {

constexpr uint64_t kBlock = 4096;
constexpr size_t kMaxNodes = 5000;
constexpr uint64_t kMaxData = 1u << 20;
constexpr uint64_t kMaxSize = 1ull << 30;
// Deeper than layers may go (4095), but bounded: the read-back tree is keyed by full paths.
constexpr size_t kMaxPath = 8192;

[[noreturn]] void bug(const std::string& what) {
  std::fprintf(stderr, "ext4_writer_fuzz: %s\n", what.c_str());
  __builtin_trap();
}

class Input {
 public:
  Input(const uint8_t* p, size_t n) : p_(p), n_(n) {}
  bool done() const { return n_ == 0; }
  uint8_t u8() {
    if (!n_) return 0;
    --n_;
    return *p_++;
  }
  // (Each read its own statement: the order of evaluation within an expression is unspecified.)
  uint16_t u16() {
    const uint16_t lo = u8();
    return static_cast<uint16_t>(lo | u8() << 8);
  }
  uint32_t u32() {
    const uint32_t lo = u16();
    return lo | static_cast<uint32_t>(u16()) << 16;
  }

 private:
  const uint8_t* p_;
  size_t n_;
};

// Deterministic filler bytes (the input stays short however much data it asks for).
std::string pattern(size_t n, uint8_t seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(seed + i * 31 + (i >> 7));
  return s;
}

// Builds the tree and the files' data from the input.
class Gen {
 public:
  layers::Tree tree;
  std::map<const Inode*, std::string> data;  // every file's content (holes as zeros)
  std::vector<const Inode*> files;           // in creation order (replaced ones included)

  explicit Gen(Input& in) : in_(in) { stack_.push_back({tree.root.get(), 0}); }

  void run() {
    while (!in_.done() && nodes_ < kMaxNodes) {
      switch (in_.u8() % 12) {
        case 0: {
          const std::string n = name();
          cd(n, add_named(n, dir_node()));
          break;
        }
        case 1:
          if (stack_.size() > 1) stack_.pop_back();
          break;
        case 2:
          add(file_node());
          break;
        case 3:
          add(symlink_node());
          break;
        case 4:
          if (!nondirs_.empty()) {
            const std::string n = name();
            add_named(n, nondirs_[in_.u16() % nondirs_.size()]);
          }
          break;
        case 5:
          add(special(in_.u8() & 1 ? NodeType::kCharDev : NodeType::kBlockDev));
          break;
        case 6:
          add(special(NodeType::kFifo));
          break;
        case 7:
          xattr(last_ ? *last_ : *stack_.back().dir);
          break;
        case 8: {  // a chain of directories alike, entered
          const unsigned k = 1 + in_.u16() % 1000;
          const std::string n = name();
          const auto like = dir_node();
          for (unsigned i = 0;
               i < k && nodes_ < kMaxNodes && cd(n, add_named(n, std::make_shared<Inode>(*like)));
               ++i) {
          }
          break;
        }
        case 9: {  // many entries: an htree
          const unsigned k = in_.u16() % 3000;
          const size_t len = 1 + in_.u8();
          for (unsigned i = 0; i < k && nodes_ < kMaxNodes; ++i) {
            std::string n = std::to_string(i) + "-";
            n.resize(std::max(len, n.size()), 'm');
            add_named(n, special(NodeType::kFifo, false));
          }
          break;
        }
        case 10:
          attrs(*stack_.back().dir);
          break;
        case 11:
          attrs(*tree.root);
          break;
      }
    }
  }

 private:
  // Enters directory `d` named `n` unless its path would pass kMaxPath; returns whether it did.
  bool cd(const std::string& n, const std::shared_ptr<Inode>& d) {
    const size_t len = stack_.back().path_len + 1 + n.size();
    if (len > kMaxPath) return false;
    stack_.push_back({d.get(), len});
    return true;
  }
  std::shared_ptr<Inode> add(std::shared_ptr<Inode> n) { return add_named(name(), std::move(n)); }
  std::shared_ptr<Inode> add_named(const std::string& nm, std::shared_ptr<Inode> n) {
    ++nodes_;
    stack_.back().dir->children[nm] = Dentry{n, 1};  // replaces what had that name
    if (n->type != NodeType::kDir) nondirs_.push_back(n);
    last_ = n.get();
    return n;
  }
  // 1 to 255 bytes of anything but '/' and NUL, never "." or ".."; sometimes 256 (refused).
  std::string name() {
    const uint8_t len = in_.u8();
    if (len < 8) return "n" + std::to_string(len);
    std::string s;
    if (len >= 248) {
      const size_t n = len == 255 && (in_.u8() & 1) ? 256 : 200 + len % 56;
      s = pattern(n, in_.u8());
    } else {
      for (unsigned i = 0; i < len % 24 + 1; ++i) s += static_cast<char>(in_.u8());
    }
    for (char& c : s)
      if (c == '/' || c == '\0') c = '_';
    if (s == "." || s == "..") s += "_";
    return s;
  }
  void attrs(Inode& n) {
    n.mode = in_.u16() & 07777;
    n.uid = in_.u8() & 1 ? in_.u32() : in_.u8();
    n.gid = in_.u8() & 1 ? in_.u32() : in_.u8();
    // Within what ext4's 34-bit seconds hold (before 1902 to 2446).
    n.mtime = static_cast<int32_t>(in_.u32());
    n.mtime += static_cast<int64_t>(in_.u8() & 3) << 32;
    n.mtime_nsec = in_.u32() % 1000000000;
  }
  std::shared_ptr<Inode> node(NodeType t, bool with_attrs = true) {
    auto n = std::make_shared<Inode>();
    n->type = t;
    if (with_attrs) attrs(*n);
    return n;
  }
  std::shared_ptr<Inode> dir_node() { return node(NodeType::kDir); }
  std::shared_ptr<Inode> special(NodeType t, bool with_attrs = true) {
    auto n = node(t, with_attrs);
    if (t != NodeType::kFifo) {
      n->dev_major = in_.u8() & 1 ? in_.u16() : in_.u8();
      n->dev_minor = in_.u8() & 1 ? in_.u32() & 0x1fffff : in_.u8();
    }
    return n;
  }
  std::shared_ptr<Inode> symlink_node() {
    auto n = node(NodeType::kSymlink);
    const uint8_t k = in_.u8();
    size_t len =
        k & 0x80 ? 60 + (static_cast<size_t>(k & 0x7f) << 5) : 1 + k;  // fast and slow, up to 4124
    n->link_target = pattern(len, in_.u8());
    for (char& c : n->link_target)
      if (c == '\0') c = '/';
    return n;
  }
  std::shared_ptr<Inode> file_node() {
    auto n = node(NodeType::kFile);
    std::string content;
    uint64_t off = 0;
    const unsigned segs = in_.u8() % 5;
    for (unsigned i = 0; i < segs && data_total_ < kMaxData; ++i) {
      const uint8_t g = in_.u8();
      off += g & 0x80 ? static_cast<uint64_t>(g & 0x7f) * kBlock
                      : g;  // a hole: in-block or whole blocks
      uint64_t len = 1 + in_.u16() % (g & 0x40 ? 20000 : 300);
      len = std::min(len, kMaxData - data_total_);
      n->extents.push_back({off, len, 0});
      content.resize(off, '\0');
      content += pattern(len, in_.u8());
      data_total_ += len;
      off += len;
    }
    n->size = off + (in_.u8() & 1 ? in_.u16() : 0);  // a hole at the end, sometimes
    content.resize(n->size, '\0');
    files.push_back(n.get());
    data[n.get()] = std::move(content);
    return n;
  }
  void xattr(Inode& n) {
    static const char* const kPrefix[] = {"user.", "trusted.", "security."};
    std::string k = kPrefix[in_.u8() % 3];
    const size_t kl = 1 + in_.u8() % 40;
    k += pattern(kl, in_.u8());
    for (char& c : k)
      if (c == '\0') c = 'x';
    const uint16_t vl = in_.u16();
    std::string v = pattern(vl & 0x8000 ? vl % 5000 : vl % 100, in_.u8());
    auto it = std::lower_bound(n.xattrs.begin(), n.xattrs.end(), k,
                               [](const auto& x, const std::string& key) { return x.first < key; });
    if (it != n.xattrs.end() && it->first == k)
      it->second = std::move(v);
    else
      n.xattrs.insert(it, {std::move(k), std::move(v)});
  }

  struct Level {
    Inode* dir;
    size_t path_len;
  };
  Input& in_;
  std::vector<Level> stack_;  // the current directory and its parents
  std::vector<std::shared_ptr<Inode>> nondirs_;
  Inode* last_ = nullptr;
  size_t nodes_ = 0;
  uint64_t data_total_ = 0;
};

// A memfd and a path that opens it, for this process and its children (e2fsck).
struct MemFile {
  UniqueFd fd;
  std::string path;
  explicit MemFile(const char* name) : fd(::memfd_create(name, MFD_CLOEXEC)) {
    if (!fd) bug("memfd_create");
    path = "/proc/" + std::to_string(::getpid()) + "/fd/" + std::to_string(fd.get());
  }
};

void e2fsck_clean(const std::string& img) {
  MemFile log("ext4-fuzz-e2fsck-log");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, log.fd.get(), 1);
  posix_spawn_file_actions_adddup2(&fa, log.fd.get(), 2);
  const char* argv[] = {"e2fsck", "-fn", img.c_str(), nullptr};
  pid_t pid;
  int err = posix_spawnp(&pid, "e2fsck", &fa, nullptr, const_cast<char* const*>(argv), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (err) bug("cannot run e2fsck: " + std::string(std::strerror(err)));
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return;
  std::string out;
  char buf[4096];
  ssize_t n;
  for (off_t at = 0; (n = ::pread(log.fd.get(), buf, sizeof buf, at)) > 0; at += n)
    out.append(buf, static_cast<size_t>(n));
  bug("e2fsck -fn is not clean:\n" + out);
}

// Blocks of a file's data as the writer allocates them (4 KiB blocks touched by an extent).
uint64_t data_blocks(const Inode& n) {
  uint64_t blocks = 0, end = 0;
  for (const auto& e : n.extents) {
    uint64_t b0 = std::max(e.offset / kBlock, end),
             b1 = (e.offset + e.length + kBlock - 1) / kBlock;
    if (b1 > b0) blocks += b1 - b0;
    end = std::max(end, b1);
  }
  return blocks;
}

char type_char(NodeType t) {
  switch (t) {
    case NodeType::kFile:
      return 'f';
    case NodeType::kDir:
      return 'd';
    case NodeType::kSymlink:
      return 'l';
    case NodeType::kCharDev:
      return 'c';
    case NodeType::kBlockDev:
      return 'b';
    case NodeType::kFifo:
      return 'p';
  }
  return '?';
}

// Compares the image with the tree, entry by entry.
void compare(const Gen& g, const FsTree& got, int64_t timestamp) {
  std::map<const Inode*, uint32_t> names;
  std::map<const Inode*, uint64_t> ino_of;
  std::map<uint64_t, const Inode*> node_of;
  std::map<const Inode*, const FsEntry*> entry_of;
  size_t expected = 0;
  struct Item {
    const Inode* dir;
    std::string path;
  };
  auto check = [&](const std::string& path, const Inode& n) {
    auto it = got.find(path);
    if (it == got.end()) bug("missing from the image: " + path);
    const FsEntry& e = it->second;
    auto fail = [&](const std::string& what) { bug(path + ": " + what + " differs"); };
    if (e.type != type_char(n.type)) fail("type");
    if (e.mode != (n.mode & 07777) || e.uid != n.uid || e.gid != n.gid) fail("mode or owner");
    if (e.mtime != n.mtime || e.mtime_nsec != n.mtime_nsec) fail("mtime");
    std::map<std::string, std::string> x(n.xattrs.begin(), n.xattrs.end());
    if (e.xattrs != x) fail("xattrs");
    if (n.type == NodeType::kDir) return;
    if (auto [i, fresh] = ino_of.emplace(&n, e.ino); !fresh && i->second != e.ino)
      fail("hard link");
    if (auto [i, fresh] = node_of.emplace(e.ino, &n); !fresh && i->second != &n)
      fail("inode sharing");
    entry_of[&n] = &e;
    if (n.type == NodeType::kFile) {
      if (e.size != n.size || e.content != g.data.at(&n)) fail("content");
      if (e.allocated != data_blocks(n) * kBlock)
        fail("allocation (" + std::to_string(e.allocated) + " bytes in the image, " +
             std::to_string(data_blocks(n) * kBlock) + " expected, " +
             std::to_string(n.extents.size()) + " extents)");
    }
    if (n.type == NodeType::kSymlink && e.target != n.link_target) fail("target");
    if ((n.type == NodeType::kCharDev || n.type == NodeType::kBlockDev) &&
        (e.major != n.dev_major || e.minor != n.dev_minor))
      fail("device numbers");
  };
  check("/", *g.tree.root);
  ++expected;
  std::vector<Item> todo{{g.tree.root.get(), "/"}};
  while (!todo.empty()) {
    Item d = std::move(todo.back());
    todo.pop_back();
    uint32_t subdirs = 0;
    for (const auto& [nm, de] : d.dir->children) {
      const std::string p = (d.path == "/" ? "/" : d.path + "/") + nm;
      ++expected;
      check(p, *de.inode);
      if (de.inode->type == NodeType::kDir) {
        ++subdirs;
        todo.push_back({de.inode.get(), p});
      } else {
        ++names[de.inode.get()];
      }
    }
    const bool add_lf = d.dir == g.tree.root.get() && !d.dir->children.count("lost+found");
    if (add_lf) {
      ++subdirs;
      ++expected;
      auto lf = got.find("/lost+found");
      if (lf == got.end() || lf->second.type != 'd' || lf->second.mode != 0700 ||
          lf->second.mtime != timestamp)
        bug("/lost+found is not as mkfs makes it");
    }
    if (got.at(d.path).nlink != (subdirs + 2 > 65000 ? 1 : subdirs + 2))
      bug(d.path + ": link count differs");
  }
  for (const auto& [n, count] : names)
    if (entry_of.at(n)->nlink != count) bug("an inode's link count differs from its names");
  if (got.size() != expected) bug("the image has entries the tree has not");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Input in(data, size);
  const uint8_t flags = in.u8();
  rootfs::detail::Ext4Params p;
  p.max_size = kMaxSize;
  p.timestamp = static_cast<int32_t>(in.u32());
  for (auto& b : p.uuid) b = in.u8();
  for (auto& b : p.hash_seed) b = in.u8();
  if (flags & 2) p.extra_space = uint64_t{in.u16()} << 8;
  if (flags & 4) p.extra_inodes = in.u16();
  if (flags & 8) p.size = uint64_t{in.u16()} << 12;  // an exact size: often too small (kLimit)
  const bool adopt = flags & 1;
  p.compact_by_copy = flags & 16;

  Gen g(in);
  g.run();

  MemFile image("ext4-fuzz-image");
  const std::string& path = image.path;
  UniqueFd& out = image.fd;
  UniqueFd spool(::memfd_create("ext4-fuzz-spool", MFD_CLOEXEC));
  if (!spool) bug("memfd_create");

  // Spool 2 (a file of its own): data back to back. Spool 1 (adopt): the output itself, each
  // block range of a file at the next free block, with dead blocks now and then, as flatten's
  // aligned layout leaves them.
  uint64_t spool_end = 0;
  const uint64_t area = rootfs::detail::adopt_offset(p.max_size);
  uint64_t cursor = area;
  uint8_t junk = 1;
  for (const Inode* cn : g.files) {
    auto* n = const_cast<Inode*>(cn);
    const std::string& content = g.data.at(n);
    const bool in_output = adopt && (junk++ % 3 != 0);
    n->spool = in_output ? 1 : 2;
    uint64_t range_first = 0, range_start = 0, range_end_block = 0;
    bool have_range = false;
    for (auto& e : n->extents) {
      if (in_output) {
        const uint64_t b0 = e.offset / kBlock, b1 = (e.offset + e.length + kBlock - 1) / kBlock;
        if (!have_range || b0 > range_end_block) {  // as the writer's block ranges split
          if (junk % 5 == 0) {                      // a dead run: data no file keeps
            const std::string dead = pattern(kBlock * (1 + junk % 20), junk);
            pwrite_all(out.get(), dead, cursor, "dead blocks");
            cursor += dead.size();
          }
          range_first = b0;
          range_start = cursor;
          have_range = true;
        }
        e.spool_offset = range_start + (e.offset - range_first * kBlock);
        range_end_block = std::max(range_end_block, b1);
        cursor = std::max(cursor, range_start + (range_end_block - range_first) * kBlock);
        pwrite_all(out.get(), std::string_view(content).substr(e.offset, e.length), e.spool_offset,
                   "adopted data");
      } else {
        e.spool_offset = spool_end;
        pwrite_all(spool.get(), std::string_view(content).substr(e.offset, e.length), spool_end,
                   "spool");
        spool_end += e.length;
      }
    }
  }
  if (adopt && cursor > area) {
    p.adopt_begin = area;
    p.adopt_end = cursor;
    if (::ftruncate(out.get(), static_cast<off_t>(cursor)) != 0) bug("ftruncate");
  } else if (::ftruncate(out.get(), 0) != 0) {
    bug("ftruncate");
  }

  try {
    rootfs::detail::write_ext4(
        path, out.get(), g.tree,
        [&](uint32_t s) {
          return rootfs::detail::SpoolRef{s == 1 ? out.get() : spool.get(), 0};
        },
        p);
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::kUnsupported || e.kind() == ErrorKind::kLimit) return 0;
    bug(std::string("write_ext4: ") + e.what());
  }
  e2fsck_clean(path);
  FsTree got;
  try {
    got = testing::read_ext4(path);
  } catch (const std::exception& e) {
    bug(std::string("reading the image back: ") + e.what());
  }
  compare(g, got, p.timestamp);
  return 0;
}
