#include "ext4_writer.hpp"

extern "C" {
#include <et/com_err.h>
}
#include <ext2fs/ext2fs.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "dir_blocks.hpp"
#include "img2vm/base/error.hpp"

namespace img2vm::rootfs::detail {

namespace {

using layers::Inode;
using layers::NodeType;

constexpr uint64_t kBlockSize = 4096;
constexpr unsigned kInodeSize = 256;
constexpr unsigned kExtraIsize = 32;
constexpr uint32_t kMaxLinks = 65000;

void init_error_table() {
  static std::once_flag once;
  std::call_once(once, [] { initialize_ext2_error_table(); });
}

void check(errcode_t err, const std::string& what) {
  if (err) throw Error(ErrorKind::kIo, "ext4: " + what + ": " + error_message(err));
}

uint64_t round4(uint64_t n) { return (n + 3) & ~uint64_t{3}; }

// Block ranges [first, end) covering a file's data extents, merged.
std::vector<std::pair<uint64_t, uint64_t>> block_ranges(const Inode& n) {
  std::vector<std::pair<uint64_t, uint64_t>> r;
  for (const auto& e : n.extents) {
    if (e.length == 0) continue;
    uint64_t b0 = e.offset / kBlockSize, b1 = (e.offset + e.length + kBlockSize - 1) / kBlockSize;
    if (!r.empty() && b0 <= r.back().second)
      r.back().second = std::max(r.back().second, b1);
    else
      r.emplace_back(b0, b1);
  }
  return r;
}

// Bytes the xattrs need inside an inode / in an xattr block (entry headers, names, values).
uint64_t xattr_bytes(const Inode& n) {
  uint64_t b = 0;
  for (const auto& [k, v] : n.xattrs) b += 16 + round4(k.size()) + round4(v.size());
  return b;
}

uint8_t file_type(NodeType t) {
  switch (t) {
    case NodeType::kFile:
      return EXT2_FT_REG_FILE;
    case NodeType::kDir:
      return EXT2_FT_DIR;
    case NodeType::kSymlink:
      return EXT2_FT_SYMLINK;
    case NodeType::kCharDev:
      return EXT2_FT_CHRDEV;
    case NodeType::kBlockDev:
      return EXT2_FT_BLKDEV;
    case NodeType::kFifo:
      return EXT2_FT_FIFO;
  }
  return EXT2_FT_UNKNOWN;
}

uint16_t type_bits(NodeType t) {
  switch (t) {
    case NodeType::kFile:
      return LINUX_S_IFREG;
    case NodeType::kDir:
      return LINUX_S_IFDIR;
    case NodeType::kSymlink:
      return LINUX_S_IFLNK;
    case NodeType::kCharDev:
      return LINUX_S_IFCHR;
    case NodeType::kBlockDev:
      return LINUX_S_IFBLK;
    case NodeType::kFifo:
      return LINUX_S_IFIFO;
  }
  return 0;
}

void encode_time(int64_t sec, uint32_t nsec, __u32& lo, __u32& extra) {
  lo = static_cast<__u32>(static_cast<uint64_t>(sec) & 0xffffffffu);
  int64_t epoch = (sec - static_cast<int64_t>(static_cast<int32_t>(lo))) >> 32;
  extra = static_cast<__u32>(epoch & 3) | (nsec << 2);
}

struct Need {
  uint64_t blocks = 0;  // data, directory, symlink, xattr and extent-tree blocks
  uint64_t inodes = 0;  // used inodes incl. the reserved ones
  uint64_t data_bytes = 0;
};

struct PhysRun {
  uint64_t lblk, pblk, len;
};

struct Ctx {
  const layers::Tree& tree;
  std::unordered_map<const Inode*, uint32_t> nlink;  // names per non-directory inode
  std::vector<const Inode*> order;                   // unique inodes
  // Each directory's parent and name in it (the root: none), for messages: paths are made only
  // when one is needed, so memory stays linear in the entries however deep the tree.
  std::unordered_map<const Inode*, std::pair<const Inode*, const std::string*>> dir_parent;
  std::unordered_map<const Inode*, std::vector<PhysRun>>
      adopted;  // files whose blocks are in place
  uint64_t adopted_blocks = 0;
};

// The blocks of `n`'s data where its spool (the output itself, from byte `base`) holds them.
std::vector<PhysRun> adopted_runs(const Inode& n, uint64_t base, const Ext4Params& p) {
  auto bad = [] {
    return Error(ErrorKind::kInternal,
                 "ext4: a file's data in the output is not laid out in blocks");
  };
  const auto ranges = block_ranges(n);
  std::vector<PhysRun> runs;
  size_t r = 0;
  bool fresh = true;
  uint64_t start = 0;  // byte of the output holding the range's first block
  for (const auto& e : n.extents) {
    if (e.length == 0) continue;
    const uint64_t b = e.offset / kBlockSize;
    while (r < ranges.size() && b >= ranges[r].second) {
      ++r;
      fresh = true;
    }
    if (r == ranges.size()) throw bad();
    const uint64_t into = e.offset - ranges[r].first * kBlockSize;
    const uint64_t at = base + e.spool_offset;
    if (fresh) {
      if (at < into || (at - into) % kBlockSize) throw bad();
      start = at - into;
      const uint64_t len = ranges[r].second - ranges[r].first;
      if (start < p.adopt_begin || start > p.adopt_end || len > (p.adopt_end - start) / kBlockSize)
        throw bad();
      runs.push_back({ranges[r].first, start / kBlockSize, len});
      fresh = false;
    } else if (at != start + into) {
      throw bad();
    }
  }
  return runs;
}

// "/a/b" from the names of a directory's ancestors.
std::string join_path(const std::vector<const std::string*>& names_upward) {
  if (names_upward.empty()) return "/";
  std::string p;
  for (auto it = names_upward.rbegin(); it != names_upward.rend(); ++it) p += "/" + **it;
  return p;
}

std::string dir_path(const Ctx& c, const Inode* dir) {
  std::vector<const std::string*> names;
  for (auto it = c.dir_parent.find(dir); it != c.dir_parent.end() && it->second.first;
       it = c.dir_parent.find(it->second.first))
    names.push_back(it->second.second);
  return join_path(names);
}

void count_links(Ctx& c) {
  std::vector<const Inode*> todo{c.tree.root.get()};
  c.dir_parent[c.tree.root.get()] = {nullptr, nullptr};
  while (!todo.empty()) {
    const Inode* d = todo.back();
    todo.pop_back();
    c.order.push_back(d);
    for (const auto& [name, de] : d->children) {
      const Inode* n = de.inode.get();
      if (n->type == NodeType::kDir) {
        todo.push_back(n);
        c.dir_parent[n] = {d, &name};
      } else if (c.nlink[n]++ == 0) {
        c.order.push_back(n);
      }
    }
  }
}

// Directory blocks of `dir` as the writer lays them out (dir_blocks.hpp), with `extra` names.
uint64_t dir_blocks(const Ctx& c, const Inode& dir, const DirFormat& fmt,
                    const std::string* extra) {
  std::vector<DirEntry> names;
  names.reserve(dir.children.size() + 1);
  for (const auto& [name, de] : dir.children) names.push_back({name});
  if (extra) names.push_back({*extra});
  try {
    return plan_dir(std::move(names), fmt).blocks();
  } catch (const Error& e) {
    throw e.with_context("ext4: directory \"" + dir_path(c, &dir) + "\"");
  }
}

Need estimate(const Ctx& c, const std::string& lost_found_name, const DirFormat& fmt) {
  Need need;
  need.inodes = EXT2_GOOD_OLD_FIRST_INO;  // 1..10 reserved, 11 first free
  for (const Inode* n : c.order) {
    ++need.inodes;
    uint64_t blocks = 0;
    uint64_t runs = 1;
    switch (n->type) {
      case NodeType::kDir: {
        const bool add_lf = n == c.tree.root.get() && !n->children.count(lost_found_name);
        blocks = dir_blocks(c, *n, fmt, add_lf ? &lost_found_name : nullptr);
        if (add_lf) {
          ++need.inodes;
          ++blocks;  // lost+found's own block
        }
        runs = blocks;  // directories grow one block at a time
        break;
      }
      case NodeType::kFile: {
        for (auto [b0, b1] : block_ranges(*n)) blocks += b1 - b0;
        runs = block_ranges(*n).size() + blocks / 32768 + 2;
        need.data_bytes += n->data_bytes();
        break;
      }
      case NodeType::kSymlink:
        if (n->link_target.size() >= 60) blocks = 1;
        break;
      default:
        break;
    }
    if (runs > 4) blocks += (runs + 339) / 340 + 1;  // extent tree blocks
    if (!n->xattrs.empty() &&
        xattr_bytes(*n) + 8 > kInodeSize - EXT2_GOOD_OLD_INODE_SIZE - kExtraIsize)
      blocks += 1;
    need.blocks += blocks;
  }
  return need;
}

class Fs {
 public:
  Fs() = default;
  ~Fs() {
    if (fs_) ext2fs_free(fs_);
  }
  Fs(const Fs&) = delete;
  Fs& operator=(const Fs&) = delete;
  ext2_filsys get() const { return fs_; }
  ext2_filsys* out() { return &fs_; }
  void close() {
    ext2_filsys f = fs_;
    fs_ = nullptr;
    // No fsync of its own at the end: the output is an AtomicFile whose commit syncs the file
    // once, everything in it (libext2fs still syncs once before the primary superblock).
    check(ext2fs_close2(f, EXT2_FLAG_FLUSH_NO_SYNC), "closing the file system");
  }
  void reset() {
    if (fs_) ext2fs_free(fs_);
    fs_ = nullptr;
  }

 private:
  ext2_filsys fs_ = nullptr;
};

class Writer {
 public:
  Writer(ext2_filsys fs, int fd, Ctx& c, const Ext4Params& p,
         const std::function<SpoolRef(uint32_t)>& spool)
      : fs_(fs), fd_(fd), c_(c), p_(p), spool_(spool), fmt_(DirFormat::of(*fs->super)) {}

  void run() {
    const Inode& root = *c_.tree.root;
    inos_[&root] = EXT2_ROOT_INO;
    ext2fs_inode_alloc_stats2(fs_, EXT2_ROOT_INO, +1, 1);
    Inode lf;
    lf.type = NodeType::kDir;
    lf.mode = 0700;
    lf.mtime = p_.timestamp;
    bool has_lf = root.children.count("lost+found") > 0;
    write_dirs(root, has_lf ? nullptr : &lf);
    write_data();
  }

  uint64_t data_bytes() const { return data_written_; }

 private:
  // A directory being written: its inode (allocated), its parent's, the next child to write
  // and the entries written so far.
  struct Frame {
    ext2_ino_t ino, parent;
    const Inode* dir;
    const std::string* name;  // in the parent; nullptr for the root
    std::map<std::string, layers::Dentry, std::less<>>::const_iterator next;
    std::vector<DirEntry> ents;
    uint32_t subdirs = 0;
    const Inode* lost_found = nullptr;  // the root's, still to add
  };

  // Writes the tree from `root` depth first, without recursion (the tree may be deep): each
  // directory's children first, in name order, then its blocks (linear or an htree,
  // dir_blocks.hpp), allocated in one go. A directory's inode is allocated when its parent
  // reaches it, near the parent's.
  void write_dirs(const Inode& root, const Inode* lost_found) {
    static const std::string kLf = "lost+found";
    std::vector<Frame> stack;
    stack.push_back(
        {EXT2_ROOT_INO, EXT2_ROOT_INO, &root, nullptr, root.children.begin(), {}, 0, lost_found});
    while (!stack.empty()) {
      Frame& f = stack.back();
      const std::string* name = nullptr;
      const Inode* sub = nullptr;
      if (f.next != f.dir->children.end()) {
        name = &f.next->first;
        const Inode& n = *f.next->second.inode;
        ++f.next;
        if (auto it = inos_.find(&n);
            it != inos_.end()) {  // another name of an inode already written
          f.ents.push_back({*name, it->second, file_type(n.type)});
          continue;
        }
        if (n.type != NodeType::kDir) {
          f.ents.push_back({*name, write_node(f.ino, n, *name), file_type(n.type)});
          continue;
        }
        sub = &n;
      } else if (f.lost_found) {
        name = &kLf;
        sub = f.lost_found;
        f.lost_found = nullptr;
      } else {
        finish_dir(stack);
        stack.pop_back();
        continue;
      }
      ext2_ino_t ino;
      check(ext2fs_new_inode(fs_, f.ino, LINUX_S_IFDIR | 0755, nullptr, &ino),
            "allocating an inode for \"" + *name + "\"");
      ext2fs_inode_alloc_stats2(fs_, ino, +1, 1);
      inos_[sub] = ino;
      f.ents.push_back({*name, ino, EXT2_FT_DIR});
      ++f.subdirs;
      const ext2_ino_t parent = f.ino;
      stack.push_back(
          {ino, parent, sub, name, sub->children.begin(), {}, 0, nullptr});  // `f` is stale from
                                                                             // here
    }
  }

  // Writes the inode of non-directory `n` named `name` in directory `dino`; returns its number.
  ext2_ino_t write_node(ext2_ino_t dino, const Inode& n, const std::string& name) {
    ext2_ino_t ino;
    check(ext2fs_new_inode(fs_, dino, type_bits(n.type) | 0644, nullptr, &ino),
          "allocating an inode for \"" + name + "\"");
    inos_[&n] = ino;
    const uint32_t links = c_.nlink[&n];
    if (links > kMaxLinks)
      throw Error(ErrorKind::kUnsupported, "ext4: \"" + name + "\" has more than 65000 hard links");
    switch (n.type) {
      case NodeType::kSymlink:
        if (n.link_target.size() >= kBlockSize)
          throw Error(ErrorKind::kUnsupported,
                      "ext4: symlink \"" + name + "\" has a target longer than 4095 bytes");
        check(ext2fs_symlink(fs_, dino, ino, nullptr, n.link_target.c_str()),
              "creating symlink \"" + name + "\"");
        break;
      case NodeType::kFile:
        if (create_file(ino, n, name, links)) {
          write_xattrs(ino, n);
          return ino;
        }
        break;
      default:
        create_special(ino, n, name);
        break;
    }
    finalize(ino, n, links);
    return ino;
  }

  // "/a/b": the path of the directory on top of `stack`, for messages.
  static std::string stack_path(const std::vector<Frame>& stack) {
    std::vector<const std::string*> names;
    for (auto it = stack.rbegin(); it != stack.rend() && it->name; ++it) names.push_back(it->name);
    return join_path(names);
  }

  // The directory on top of `stack`, its children written: its blocks and its inode.
  void finish_dir(std::vector<Frame>& stack) {
    Frame& f = stack.back();
    const ext2_ino_t dino = f.ino;
    const Inode& dir = *f.dir;
    const std::string& name = f.name ? *f.name : std::string("/");
    DirBlocks db;
    try {
      db = build_dir(std::move(f.ents), dino, f.parent, fmt_);
    } catch (const Error& e) {
      throw e.with_context("ext4: directory \"" + stack_path(stack) + "\"");
    }
    std::vector<char>& buf = db.data;
    const uint64_t nblocks = buf.size() / kBlockSize;

    struct ext2_inode_large in;
    std::memset(&in, 0, sizeof in);
    in.i_mode = static_cast<__u16>(LINUX_S_IFDIR | (dir.mode & 07777));
    in.i_links_count = static_cast<__u16>(f.subdirs + 2 > kMaxLinks ? 1 : f.subdirs + 2);
    if (db.plan.indexed) in.i_flags |= EXT2_INDEX_FL;
    check(ext2fs_inode_size_set(fs_, reinterpret_cast<ext2_inode*>(&in), nblocks * kBlockSize),
          "sizing a directory");
    ext2_extent_handle_t h;
    check(ext2fs_extent_open2(fs_, dino, reinterpret_cast<ext2_inode*>(&in), &h),
          "directory extent tree");
    ext2fs_extent_free(h);
    check(ext2fs_write_new_inode(fs_, dino, reinterpret_cast<ext2_inode*>(&in)),
          "writing a directory inode");
    check(ext2fs_fallocate(fs_, EXT2_FALLOCATE_FORCE_INIT | EXT2_FALLOCATE_INIT_BEYOND_EOF, dino,
                           nullptr, goal_, 0, nblocks),
          "allocating directory blocks");
    std::vector<PhysRun> map = mapping(dino, name);
    for (uint64_t b = 0; b < nblocks; ++b) {
      auto it = std::upper_bound(map.begin(), map.end(), b,
                                 [](uint64_t x, const PhysRun& r) { return x < r.lblk; });
      if (it == map.begin() || b >= std::prev(it)->lblk + std::prev(it)->len)
        throw Error(ErrorKind::kInternal, "ext4: directory block not mapped");
      blk64_t pblk = std::prev(it)->pblk + (b - std::prev(it)->lblk);
      check(ext2fs_write_dir_block4(fs_, pblk, buf.data() + b * kBlockSize, 0, dino),
            "writing a directory block");
    }
    if (!map.empty()) goal_ = map.back().pblk + map.back().len;
    finalize(dino, dir, 0);
  }

  void create_special(ext2_ino_t ino, const Inode& n, const std::string& name) {
    ext2fs_inode_alloc_stats2(fs_, ino, +1, 0);
    struct ext2_inode_large in;
    std::memset(&in, 0, sizeof in);
    in.i_mode = static_cast<__u16>(type_bits(n.type) | (n.mode & 07777));
    in.i_links_count = 1;
    if (n.type == NodeType::kCharDev || n.type == NodeType::kBlockDev) {
      uint32_t ma = n.dev_major, mi = n.dev_minor;
      // Linux's device numbers have 12 bits of major and 20 of minor (and so has the inode's
      // encoding): larger ones would come out as another device.
      if (ma > 0xfff || mi > 0xfffff)
        throw Error(ErrorKind::kUnsupported, "ext4: device \"" + name + "\" has numbers " +
                                                 std::to_string(ma) + ":" + std::to_string(mi) +
                                                 ", past Linux's 4095:1048575");
      if (ma < 256 && mi < 256) {
        in.i_block[0] = ma * 256 + mi;
      } else {
        in.i_block[1] = (mi & 0xff) | (ma << 8) | ((mi & ~0xffu) << 12);
      }
    }
    check(ext2fs_write_new_inode(fs_, ino, reinterpret_cast<ext2_inode*>(&in)),
          "writing \"" + name + "\"");
  }

  // Creates regular file `n` as inode `ino` with `links` links; returns whether the inode is
  // complete (attributes included) and needs only its xattrs.
  bool create_file(ext2_ino_t ino, const Inode& n, const std::string& name, uint32_t links) {
    ext2fs_inode_alloc_stats2(fs_, ino, +1, 0);
    struct ext2_inode_large in;
    std::memset(&in, 0, sizeof in);
    in.i_mode = static_cast<__u16>(LINUX_S_IFREG | (n.mode & 07777));
    in.i_links_count = 1;
    check(ext2fs_inode_size_set(fs_, reinterpret_cast<ext2_inode*>(&in), n.size),
          "sizing \"" + name + "\"");
    ext2_extent_handle_t h;
    check(ext2fs_extent_open2(fs_, ino, reinterpret_cast<ext2_inode*>(&in), &h),
          "extent tree of \"" + name + "\"");
    ext2fs_extent_free(h);
    check(ext2fs_write_new_inode(fs_, ino, reinterpret_cast<ext2_inode*>(&in)),
          "writing \"" + name + "\"");
    if (auto a = c_.adopted.find(&n); a != c_.adopted.end()) {
      // Its attributes go into adopt's write (after write_new_inode, which sets zero times to
      // now), so the inode is written whole once more rather than read and written again.
      set_attributes(in, n, links);
      adopt(ino, in, a->second, name);
      data_written_ += n.data_bytes();
      return true;
    }
    auto ranges = block_ranges(n);
    if (ranges.empty()) return false;
    for (auto [b0, b1] : ranges) {
      check(ext2fs_fallocate(fs_, EXT2_FALLOCATE_FORCE_INIT | EXT2_FALLOCATE_INIT_BEYOND_EOF, ino,
                             nullptr, goal_, b0, b1 - b0),
            "allocating " + std::to_string((b1 - b0) * kBlockSize) + " bytes for \"" + name + "\"");
    }
    std::vector<PhysRun> map = mapping(ino, name);
    if (!map.empty()) goal_ = map.back().pblk + map.back().len;
    files_.push_back({&n, std::move(map), name});
    return false;
  }

  // Gives inode `ino` (written as `in`) the blocks its data already occupies (marked in use by
  // the caller) as its extents.
  void adopt(ext2_ino_t ino, ext2_inode_large& in, const std::vector<PhysRun>& runs,
             const std::string& name) {
    ext2_extent_handle_t h;
    check(ext2fs_extent_open2(fs_, ino, reinterpret_cast<ext2_inode*>(&in), &h),
          "extent tree of \"" + name + "\"");
    uint64_t blocks = 0;
    errcode_t err = 0;
    for (const PhysRun& r : runs) {
      for (uint64_t done = 0; done < r.len && !err;) {
        struct ext2fs_extent e {};
        e.e_lblk = r.lblk + done;
        e.e_pblk = r.pblk + done;
        e.e_len = static_cast<__u32>(std::min<uint64_t>(r.len - done, EXT_INIT_MAX_LEN));
        err = ext2fs_extent_insert(h, EXT2_EXTENT_INSERT_AFTER, &e);
        done += e.e_len;
      }
      blocks += r.len;
    }
    ext2fs_extent_free(h);
    check(err, "extents of \"" + name + "\"");
    check(ext2fs_iblk_add_blocks(fs_, reinterpret_cast<ext2_inode*>(&in), blocks),
          "block count of \"" + name + "\"");
    check(ext2fs_write_inode_full(fs_, ino, reinterpret_cast<ext2_inode*>(&in), sizeof in),
          "writing \"" + name + "\"");
  }

  std::vector<PhysRun> mapping(ext2_ino_t ino, const std::string& name) {
    std::vector<PhysRun> out;
    ext2_extent_handle_t h;
    check(ext2fs_extent_open(fs_, ino, &h), "extent tree of \"" + name + "\"");
    struct ext2fs_extent e;
    errcode_t err = ext2fs_extent_get(h, EXT2_EXTENT_ROOT, &e);
    while (!err) {
      if (e.e_flags & EXT2_EXTENT_FLAGS_LEAF) {
        if (e.e_flags & EXT2_EXTENT_FLAGS_UNINIT) {
          ext2fs_extent_free(h);
          throw Error(ErrorKind::kInternal,
                      "ext4: uninitialized extent allocated for \"" + name + "\"");
        }
        if (!(e.e_flags & EXT2_EXTENT_FLAGS_SECOND_VISIT))
          out.push_back({e.e_lblk, e.e_pblk, e.e_len});
      }
      err = ext2fs_extent_get(h, EXT2_EXTENT_NEXT, &e);
    }
    ext2fs_extent_free(h);
    if (err != EXT2_ET_EXTENT_NO_NEXT && err != EXT2_ET_EXTENT_NO_DOWN)
      check(err, "reading the extents of \"" + name + "\"");
    std::sort(out.begin(), out.end(),
              [](const PhysRun& a, const PhysRun& b) { return a.lblk < b.lblk; });
    return out;
  }

  // The attributes every inode takes from its node: permissions, owner, link count (when
  // `links`), times.
  static void set_attributes(ext2_inode_large& in, const Inode& n, uint32_t links) {
    in.i_mode = static_cast<__u16>((in.i_mode & LINUX_S_IFMT) | (n.mode & 07777));
    in.i_uid = static_cast<__u16>(n.uid & 0xffff);
    ext2fs_set_i_uid_high(in, static_cast<__u16>(n.uid >> 16));
    in.i_gid = static_cast<__u16>(n.gid & 0xffff);
    ext2fs_set_i_gid_high(in, static_cast<__u16>(n.gid >> 16));
    if (links) in.i_links_count = static_cast<__u16>(links);
    in.i_extra_isize = kExtraIsize;
    encode_time(n.mtime, n.mtime_nsec, in.i_mtime, in.i_mtime_extra);
    encode_time(n.mtime, n.mtime_nsec, in.i_atime, in.i_atime_extra);
    encode_time(n.mtime, n.mtime_nsec, in.i_ctime, in.i_ctime_extra);
    encode_time(n.mtime, n.mtime_nsec, in.i_crtime, in.i_crtime_extra);
  }

  // Gives inode `ino`, as written so far, its attributes and its xattrs.
  void finalize(ext2_ino_t ino, const Inode& n, uint32_t links) {
    struct ext2_inode_large in;
    std::memset(&in, 0, sizeof in);
    check(ext2fs_read_inode_full(fs_, ino, reinterpret_cast<ext2_inode*>(&in), sizeof in),
          "reading inode");
    set_attributes(in, n, links);
    check(ext2fs_write_inode_full(fs_, ino, reinterpret_cast<ext2_inode*>(&in), sizeof in),
          "writing inode");
    write_xattrs(ino, n);
  }

  void write_xattrs(ext2_ino_t ino, const Inode& n) {
    if (n.xattrs.empty()) return;
    struct ext2_xattr_handle* h = nullptr;
    check(ext2fs_xattrs_open(fs_, ino, &h), "opening xattrs");
    errcode_t err = ext2fs_xattrs_read(h);
    for (const auto& [k, v] : n.xattrs) {
      if (err) break;
      err = ext2fs_xattr_set(h, k.c_str(), v.data(), v.size());
      if (err) {
        ext2fs_xattrs_close(&h);
        throw Error(ErrorKind::kUnsupported, "ext4: cannot store xattr \"" + k + "\" (" +
                                                 std::to_string(v.size()) +
                                                 " bytes): " + error_message(err));
      }
    }
    if (!err)
      err = ext2fs_xattrs_close(&h);
    else
      ext2fs_xattrs_close(&h);
    check(err, "writing xattrs");
  }

  void write_data() {
    // No flush of libext2fs's cache first: it holds metadata blocks only (nothing here asks
    // libext2fs to zero or write data blocks), and its fsync would wait for all the data too.
    uint64_t total = 0;
    for (const auto& f : files_) total += f.node->data_bytes();
    constexpr uint64_t kWritebackStep = 32u << 20;
    uint64_t kicked = 0;
    for (const auto& f : files_) {
      const SpoolRef sp = spool_(f.node->spool);
      const int sfd = sp.fd;
      for (const auto& e : f.node->extents) {
        uint64_t off = e.offset, len = e.length, soff = sp.base + e.spool_offset;
        while (len) {
          uint64_t lblk = off / kBlockSize;
          auto it = std::upper_bound(f.map.begin(), f.map.end(), lblk,
                                     [](uint64_t b, const PhysRun& r) { return b < r.lblk; });
          if (it == f.map.begin() || lblk >= std::prev(it)->lblk + std::prev(it)->len)
            throw Error(ErrorKind::kInternal, "ext4: data of \"" + f.name + "\" not mapped");
          const PhysRun& r = *std::prev(it);
          uint64_t run_end = (r.lblk + r.len) * kBlockSize;
          uint64_t n = std::min(len, run_end - off);
          uint64_t dst = r.pblk * kBlockSize + (off - r.lblk * kBlockSize);
          copy(sfd, soff, dst, n, f.name);
          off += n;
          soff += n;
          len -= n;
          data_written_ += n;
        }
      }
      if (p_.progress) p_.progress(data_written_, total);
      // Start the disk writes of what is copied so far (without waiting for them), so that the
      // final fsync of the output overlaps with the copying instead of following it.
      if (data_written_ - kicked >= kWritebackStep) {
        kicked = data_written_;
        (void)::sync_file_range(fd_, 0, 0,
                                SYNC_FILE_RANGE_WRITE);  // a hint: failure changes nothing
      }
    }
  }

  void copy(int sfd, uint64_t soff, uint64_t dst, uint64_t n, const std::string& name) {
    if (copy_range(sfd, soff, fd_, dst, n, "the data of \"" + name + "\" into the ext4 image") != n)
      throw Error(ErrorKind::kIo, "spooled data of \"" + name + "\" ends early");
  }

  struct FileJob {
    const Inode* node;
    std::vector<PhysRun> map;
    std::string name;
  };

  ext2_filsys fs_;
  int fd_;
  Ctx& c_;
  const Ext4Params& p_;
  const std::function<SpoolRef(uint32_t)>& spool_;
  const DirFormat fmt_;
  std::unordered_map<const Inode*, ext2_ino_t> inos_;
  std::vector<FileJob> files_;
  blk64_t goal_ = 0;
  uint64_t data_written_ = 0;
};

// How directories are written: the superblock init_fs makes says exactly this. The hash flavour is
// fixed (signed chars, as mke2fs picks on x86) instead of following the build host's `char`, so
// the same input gives the same bytes on every host.
DirFormat dir_format(const Ext4Params& p) {
  DirFormat f;
  f.block_size = static_cast<unsigned>(kBlockSize);
  f.metadata_csum = true;
  f.dir_index = true;
  f.hash_version = EXT2_HASH_HALF_MD4;
  f.unsigned_hash = false;
  static_assert(sizeof f.hash_seed == sizeof p.hash_seed);
  std::memcpy(f.hash_seed.data(), p.hash_seed.data(), sizeof f.hash_seed);
  return f;
}

// Initializes an in-memory file system of `blocks` blocks and `inodes` inodes on `path`, with
// no group metadata in blocks [area_begin, area_end) (they stay free).
// Returns false when the group tables do not fit after the area (then nothing is allocated).
bool init_fs(Fs& fs, const std::filesystem::path& path, uint64_t blocks, uint64_t inodes,
             const Ext4Params& p, uint64_t area_begin, uint64_t area_end) {
  const bool area = area_end > area_begin;
  struct ext2_super_block param;
  std::memset(&param, 0, sizeof param);
  ext2fs_blocks_count_set(&param, blocks);
  param.s_log_block_size = 2;  // 4 KiB
  param.s_rev_level = EXT2_DYNAMIC_REV;
  param.s_inode_size = kInodeSize;
  param.s_min_extra_isize = kExtraIsize;
  param.s_want_extra_isize = kExtraIsize;
  param.s_log_groups_per_flex = 4;
  param.s_feature_compat = EXT2_FEATURE_COMPAT_EXT_ATTR | EXT2_FEATURE_COMPAT_DIR_INDEX;
  param.s_feature_incompat = EXT2_FEATURE_INCOMPAT_FILETYPE | EXT3_FEATURE_INCOMPAT_EXTENTS |
                             EXT4_FEATURE_INCOMPAT_FLEX_BG | EXT4_FEATURE_INCOMPAT_64BIT;
  param.s_feature_ro_compat =
      EXT2_FEATURE_RO_COMPAT_SPARSE_SUPER | EXT2_FEATURE_RO_COMPAT_LARGE_FILE |
      EXT4_FEATURE_RO_COMPAT_HUGE_FILE | EXT4_FEATURE_RO_COMPAT_DIR_NLINK |
      EXT4_FEATURE_RO_COMPAT_EXTRA_ISIZE | EXT4_FEATURE_RO_COMPAT_METADATA_CSUM;
  param.s_default_mount_opts = EXT2_DEFM_XATTR_USER | EXT2_DEFM_ACL;
  // More groups when one group's inode bitmap could not hold every inode.
  const uint64_t per_group_inodes = kBlockSize * 8;
  uint64_t groups_for_inodes = (inodes + per_group_inodes - 1) / per_group_inodes;
  uint64_t bpg = 32768;
  if (groups_for_inodes * bpg > blocks && groups_for_inodes > 1) {
    bpg = std::max<uint64_t>(1024, (blocks / groups_for_inodes) & ~uint64_t{7});
  }
  param.s_blocks_per_group = static_cast<__u32>(bpg);
  if (area) {
    // No backup superblocks and one flex group over all groups, so that every group's bitmaps
    // and inode table can go after the area (with flex_bg they may sit anywhere).
    param.s_feature_compat |= EXT4_FEATURE_COMPAT_SPARSE_SUPER2;
    param.s_backup_bgs[0] = param.s_backup_bgs[1] = 0;
    const uint64_t groups = (blocks + bpg - 1) / bpg;
    unsigned log = 4;
    while ((uint64_t{1} << log) < groups) ++log;
    param.s_log_groups_per_flex = static_cast<__u8>(log);
  }
  param.s_inodes_count = static_cast<__u32>(std::min<uint64_t>(inodes, 0xffffffffu));
  const errcode_t err =
      ext2fs_initialize(path.c_str(), EXT2_FLAG_64BITS, &param, unix_io_manager, fs.out());
  // The inode tables and group metadata alone do not fit:
  if (err == EXT2_ET_TOOSMALL || err == EXT2_ET_TOO_MANY_INODES)
    throw Error(ErrorKind::kLimit, "ext4: " + std::to_string(blocks * kBlockSize) +
                                       " bytes are too few for " + std::to_string(inodes) +
                                       " inodes");
  check(err, "initializing " + std::to_string(blocks * kBlockSize) + " bytes with " +
                 std::to_string(inodes) + " inodes");
  ext2_filsys f = fs.get();
  f->now = p.timestamp ? p.timestamp : 1;
  std::memcpy(f->super->s_uuid, p.uuid.data(), 16);
  const DirFormat dirs = dir_format(p);
  std::memcpy(f->super->s_hash_seed, dirs.hash_seed.data(), sizeof f->super->s_hash_seed);
  f->super->s_def_hash_version = dirs.hash_version;
  // ext2fs_initialize sets the flag of the host's char; replace it with ours.
  f->super->s_flags &= ~(EXT2_FLAGS_SIGNED_HASH | EXT2_FLAGS_UNSIGNED_HASH);
  f->super->s_flags |= dirs.unsigned_hash ? EXT2_FLAGS_UNSIGNED_HASH : EXT2_FLAGS_SIGNED_HASH;
  f->super->s_checksum_type = EXT2_CRC32C_CHKSUM;
  f->super->s_max_mnt_count = -1;
  f->super->s_checkinterval = 0;
  std::memset(f->super->s_volume_name, 0, sizeof f->super->s_volume_name);
  std::memcpy(f->super->s_volume_name, "img2vm-rootfs", 13);
  ext2fs_init_csum_seed(f);
  if (!area) {
    check(ext2fs_allocate_tables(f), "allocating group tables");
    return true;
  }
  if (1 + f->desc_blocks + f->super->s_reserved_gdt_blocks > area_begin)
    throw Error(ErrorKind::kInternal, "ext4: the group descriptors reach into the data");
  // Every group's block bitmap, inode bitmap and inode table, in that order, right after the
  // area (ext2fs_allocate_tables would search for room block by block across the area).
  const uint64_t groups = f->group_desc_count, itb = f->inode_blocks_per_group;
  const uint64_t tables = groups * (2 + itb);
  if (ext2fs_blocks_count(f->super) < area_end + tables + 1) return false;  // the caller grows it
  blk64_t b = area_end;
  for (dgrp_t g = 0; g < groups; ++g) ext2fs_block_bitmap_loc_set(f, g, b++);
  for (dgrp_t g = 0; g < groups; ++g) ext2fs_inode_bitmap_loc_set(f, g, b++);
  for (dgrp_t g = 0; g < groups; ++g, b += itb) ext2fs_inode_table_loc_set(f, g, b);
  ext2fs_block_alloc_stats_range(f, area_end, static_cast<blk_t>(tables), +1);
  for (dgrp_t g = 0; g < groups; ++g) ext2fs_group_desc_csum_set(f, g);
  return true;
}

// Replaces the blocks in [begin, end) that the file system does not use with zeros (holes).
void punch_free(ext2_filsys f, int fd, uint64_t begin, uint64_t end) {
  std::vector<char> zeros;
  blk64_t b = begin;
  while (b < end) {
    blk64_t first_free, next_used;
    if (ext2fs_find_first_zero_block_bitmap2(f->block_map, b, end - 1, &first_free)) break;
    if (ext2fs_find_first_set_block_bitmap2(f->block_map, first_free, end - 1, &next_used))
      next_used = end;
    const off_t off = static_cast<off_t>(first_free * kBlockSize),
                len = static_cast<off_t>((next_used - first_free) * kBlockSize);
    if (::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len) != 0) {
      if (errno != EOPNOTSUPP) throw_errno("ext4: freeing unused data blocks");
      zeros.resize(1 << 20);
      for (off_t o = 0; o < len; o += 1 << 20)
        pwrite_all(
            fd,
            std::string_view(zeros.data(), static_cast<size_t>(std::min<off_t>(len - o, 1 << 20))),
            static_cast<uint64_t>(off + o), "zeros over unused data blocks");
    }
    b = next_used;
  }
}

// Removes the larger runs of blocks in [begin, end) that no file keeps (the data of files that
// later layers removed or replaced) from the output, moving the data after them down, so that
// the file system does not carry them as free space; moves the adopted runs along and returns
// the new end. Where the host's file system can collapse ranges (ext4, XFS) the data's extents
// are shifted and nothing is copied; elsewhere, or with `copy`, the data is copied down. The
// bytes are the same either way: the smaller dead runs that stay are punched out later.
uint64_t compact_adopted(const std::filesystem::path& path, int fd, Ctx& c, uint64_t begin,
                         uint64_t end, bool copy) {
  constexpr uint64_t kMinGap = 16;   // blocks; shorter dead runs stay as holes
  constexpr size_t kMaxGaps = 4096;  // the largest ones, when there are more
  struct Span {
    uint64_t b, e;
  };
  std::vector<Span> live;
  for (const auto& [n, runs] : c.adopted)
    for (const PhysRun& r : runs) live.push_back({r.pblk, r.pblk + r.len});
  std::sort(live.begin(), live.end(), [](const Span& x, const Span& y) { return x.b < y.b; });
  std::vector<Span> merged;
  for (const Span& s : live) {
    if (!merged.empty() && s.b <= merged.back().e)
      merged.back().e = std::max(merged.back().e, s.e);
    else
      merged.push_back(s);
  }
  std::vector<Span> gaps;
  uint64_t live_end = begin;
  for (const Span& s : merged) {
    if (s.b >= live_end + kMinGap) gaps.push_back({live_end, s.b});
    live_end = s.e;
  }
  if (live_end > end)
    throw Error(ErrorKind::kInternal, "ext4: adopted data past the end of its range");
  if (gaps.size() > kMaxGaps) {
    std::sort(gaps.begin(), gaps.end(), [](const Span& x, const Span& y) {
      return x.e - x.b != y.e - y.b ? x.e - x.b > y.e - y.b : x.b < y.b;
    });
    gaps.resize(kMaxGaps);
    std::sort(gaps.begin(), gaps.end(), [](const Span& x, const Span& y) { return x.b < y.b; });
  }
  // Everything after the last file's data is dead: cut off.
  if (::ftruncate(fd, static_cast<off_t>(live_end * kBlockSize)) != 0)
    throw_errno("ext4: cutting off removed files' data");
  if (gaps.empty()) return live_end;

  bool collapsed = false;
  if (!copy) {
    for (size_t i = gaps.size(); i-- > 0;) {
      const Span& g = gaps[i];
      if (::fallocate(fd, FALLOC_FL_COLLAPSE_RANGE, static_cast<off_t>(g.b * kBlockSize),
                      static_cast<off_t>((g.e - g.b) * kBlockSize)) == 0) {
        collapsed = true;
        continue;
      }
      // The host cannot collapse (tmpfs, btrfs): nothing has moved yet, copy instead.
      if (!collapsed && (errno == EOPNOTSUPP || errno == EINVAL)) break;
      throw_errno("ext4: closing up removed files' data");
    }
  }
  // removed[i]: blocks removed before gaps[i + 1] starts (prefix sums of the gaps' lengths).
  std::vector<uint64_t> removed(gaps.size());
  for (size_t i = 0; i < gaps.size(); ++i)
    removed[i] = (i ? removed[i - 1] : 0) + (gaps[i].e - gaps[i].b);
  auto shift = [&](uint64_t pblk) -> uint64_t {
    auto it = std::upper_bound(gaps.begin(), gaps.end(), pblk,
                               [](uint64_t v, const Span& g) { return v < g.b; });
    return it == gaps.begin() ? 0 : removed[static_cast<size_t>(it - gaps.begin()) - 1];
  };
  if (!collapsed) {
    // Front to back, each live span copied to its place lower down, so no copy overwrites bytes
    // still to be copied (copy_range copies front to back too; the kernel refuses overlapping
    // ranges and it falls back to reads and writes). `fd` may be write-only.
    UniqueFd in = open_file(path, O_RDONLY);
    for (const Span& s : merged) {
      const uint64_t by = shift(s.b), len = (s.e - s.b) * kBlockSize;
      if (by != 0 && copy_range(in.get(), s.b * kBlockSize, fd, (s.b - by) * kBlockSize, len,
                                "removed files' data out of the ext4 image") != len)
        throw Error(ErrorKind::kIo, "ext4: the output ends inside the data to move");
    }
    if (::ftruncate(fd, static_cast<off_t>((live_end - removed.back()) * kBlockSize)) != 0)
      throw_errno("ext4: cutting off moved data");
  }
  for (auto& [n, runs] : c.adopted)
    for (PhysRun& r : runs) r.pblk -= shift(r.pblk);
  return live_end - removed.back();
}

}  // namespace

uint64_t adopt_offset(uint64_t max_size) {
  // Groups have at least 1024 blocks (init_fs); each descriptor takes 64 bytes (64bit).
  const uint64_t max_blocks = std::min<uint64_t>(max_size, uint64_t{1} << 50) / kBlockSize;
  const uint64_t max_groups = (max_blocks + 1023) / 1024;
  const uint64_t desc_blocks = (max_groups * 64 + kBlockSize - 1) / kBlockSize;
  return (1 + desc_blocks) * kBlockSize;
}

Ext4Stats write_ext4(const std::filesystem::path& path, int fd, const layers::Tree& tree,
                     const std::function<SpoolRef(uint32_t)>& spool, const Ext4Params& p) {
  init_error_table();
  Ctx c{tree, {}, {}, {}, {}, 0};
  count_links(c);
  if (p.adopt_begin % kBlockSize || p.adopt_end % kBlockSize || p.adopt_end < p.adopt_begin)
    throw Error(ErrorKind::kInternal, "ext4: adopted range not in whole blocks");
  const uint64_t area_begin = p.adopt_begin / kBlockSize;
  uint64_t area_end = p.adopt_end / kBlockSize;
  for (const Inode* n : c.order) {
    if (n->type != NodeType::kFile || n->extents.empty()) continue;
    const SpoolRef sp = spool(n->spool);
    if (sp.fd != fd) continue;
    auto runs = adopted_runs(*n, sp.base, p);
    for (const auto& r : runs) c.adopted_blocks += r.len;
    c.adopted.emplace(n, std::move(runs));
  }
  if (area_end > area_begin)
    area_end = compact_adopted(path, fd, c, area_begin, area_end, p.compact_by_copy);
  const DirFormat dirs = dir_format(p);
  Need need = estimate(c, "lost+found", dirs);
  const uint64_t extra_blocks = (p.extra_space + kBlockSize - 1) / kBlockSize;
  const uint64_t want_free = need.blocks + (p.size ? 0 : extra_blocks);
  const uint64_t want_inodes = need.inodes + p.extra_inodes;
  auto too_big = [&](uint64_t blocks) {
    if (blocks * kBlockSize > p.max_size)
      throw Error(ErrorKind::kLimit,
                  "the root file system needs " + std::to_string(blocks * kBlockSize) +
                      " bytes, more than the size limit of " + std::to_string(p.max_size));
  };
  // Enough: the free blocks cover everything to write (the adopted blocks are free until
  // marked below), the inodes fit, and the file system reaches past the adopted range.
  auto enough = [&](ext2_filsys f) {
    return ext2fs_free_blocks_count(f->super) >= want_free &&
           f->super->s_inodes_count >= want_inodes && ext2fs_blocks_count(f->super) > area_end;
  };

  Fs fs;
  uint64_t blocks;
  if (p.size) {
    blocks = (*p.size + kBlockSize - 1) / kBlockSize;
    too_big(blocks);
    const Error too_small(ErrorKind::kLimit, "a size of " + std::to_string(*p.size) +
                                                 " bytes is too small for this image");
    if (blocks <= area_end) throw too_small;
    bool fits = false;
    try {
      fits = init_fs(fs, path, blocks, want_inodes, p, area_begin, area_end) && enough(fs.get());
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::kLimit) throw;
    }
    if (!fits) throw too_small;
  } else {
    // Start from the content plus the inode tables and a little for bitmaps and descriptors,
    // then grow until libext2fs's own layout leaves enough free blocks.
    const uint64_t tables =
        (want_inodes * kInodeSize + kBlockSize - 1) / kBlockSize + 64 + want_free / 4096;
    blocks = std::max(want_free + tables, area_end + (want_free - c.adopted_blocks) + tables);
    blocks = std::max<uint64_t>(blocks, 256);
    for (int round = 0;; ++round) {
      too_big(blocks);
      const bool placed = init_fs(fs, path, blocks, want_inodes, p, area_begin, area_end);
      uint64_t free_blocks = ext2fs_free_blocks_count(fs.get()->super);
      if (placed && enough(fs.get())) break;
      if (round > 20) throw Error(ErrorKind::kInternal, "ext4: cannot size the file system");
      const uint64_t have = ext2fs_blocks_count(fs.get()->super);
      const uint64_t need_tables =
          fs.get()->group_desc_count * (2 + uint64_t{fs.get()->inode_blocks_per_group});
      blocks +=
          (free_blocks < want_free ? want_free - free_blocks : 0) +
          (placed ? 0
                  : (area_end + need_tables + 1 > have ? area_end + need_tables + 1 - have : 0)) +
          16 + blocks / 256;
      fs.reset();
    }
  }
  if (::ftruncate(fd, static_cast<off_t>(blocks * kBlockSize)) != 0)
    throw_errno("sizing " + path.string());
  ext2_filsys f = fs.get();
  // The estimate planned directories with `dirs`; the writer reads the superblock.
  if (!(DirFormat::of(*f->super) == dirs))
    throw Error(ErrorKind::kInternal, "ext4: directory format differs from the plan");
  for (dgrp_t g = 0; g < f->group_desc_count; ++g) {
    ext2fs_bg_flags_set(f, g, EXT2_BG_INODE_ZEROED);
    ext2fs_bg_flags_clear(f, g, EXT2_BG_BLOCK_UNINIT);
  }
  // The adopted blocks are in use before anything else is allocated.
  for (const auto& [n, runs] : c.adopted)
    for (const auto& r : runs)
      ext2fs_block_alloc_stats_range(f, r.pblk, static_cast<blk_t>(r.len), +1);

  // Reserved inodes (1 = bad blocks, 3..10) as mke2fs marks them.
  ext2fs_inode_alloc_stats2(f, EXT2_BAD_INO, +1, 0);
  check(ext2fs_update_bb_inode(f, nullptr), "bad blocks inode");
  for (ext2_ino_t i = EXT2_ROOT_INO + 1; i < EXT2_FIRST_INODE(f->super); ++i)
    ext2fs_inode_alloc_stats2(f, i, +1, 0);

  Writer w(f, fd, c, p, spool);
  w.run();
  if (area_end > area_begin) punch_free(f, fd, area_begin, area_end);

  Ext4Stats st;
  st.size_bytes = blocks * kBlockSize;
  st.inodes = f->super->s_inodes_count - f->super->s_free_inodes_count;
  st.data_bytes = w.data_bytes();
  f->super->s_mkfs_time = f->super->s_lastcheck = static_cast<__u32>(p.timestamp);
  f->super->s_wtime = static_cast<__u32>(p.timestamp);
  f->super->s_mtime = 0;
  f->super->s_kbytes_written = 0;
  fs.close();
  return st;
}

}  // namespace img2vm::rootfs::detail
