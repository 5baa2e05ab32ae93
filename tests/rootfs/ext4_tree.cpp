#include "ext4_tree.hpp"

extern "C" {
#include <et/com_err.h>
}
#include <ext2fs/ext2fs.h>

#include <cstring>
#include <stdexcept>
#include <vector>

namespace img2vm::testing {

namespace fs = std::filesystem;

namespace {

void ck(errcode_t e, const std::string& what) {
  if (e) throw std::runtime_error("libext2fs: " + what + ": " + error_message(e));
}

int64_t decode_time(__u32 lo, __u32 extra, uint32_t* nsec) {
  int64_t sec = static_cast<int32_t>(lo);
  sec += static_cast<int64_t>(extra & 3) << 32;
  *nsec = extra >> 2;
  return sec;
}

int xattr_cb(char* name, char* value, size_t len, void* data) {
  (*static_cast<std::map<std::string, std::string>*>(data))[name] = std::string(value, len);
  return 0;
}

// Blocks of an extent-mapped inode's tree outside the inode itself (i_blocks counts them too):
// one per index entry, each pointing at a node block. A file whose data lies in more than four
// runs needs one; that is layout, not data.
uint64_t extent_tree_blocks(ext2_filsys fs, ext2_ino_t ino, ext2_inode_large& in) {
  if (!(in.i_flags & EXT4_EXTENTS_FL)) return 0;
  ext2_extent_handle_t h;
  ck(ext2fs_extent_open2(fs, ino, reinterpret_cast<ext2_inode*>(&in), &h), "extent tree");
  uint64_t nodes = 0;
  struct ext2fs_extent x {};
  for (errcode_t err = ext2fs_extent_get(h, EXT2_EXTENT_ROOT, &x); !err;
       err = ext2fs_extent_get(h, EXT2_EXTENT_NEXT, &x))
    if (!(x.e_flags & EXT2_EXTENT_FLAGS_LEAF) && !(x.e_flags & EXT2_EXTENT_FLAGS_SECOND_VISIT))
      ++nodes;
  ext2fs_extent_free(h);
  return nodes;
}

void read_inode_into(ext2_filsys fs, ext2_ino_t ino, FsEntry& e) {
  struct ext2_inode_large in;
  std::memset(&in, 0, sizeof in);
  ck(ext2fs_read_inode_full(fs, ino, reinterpret_cast<ext2_inode*>(&in), sizeof in), "read inode");
  e.ino = ino;
  e.mode = in.i_mode & 07777;
  e.uid = inode_uid(in);
  e.gid = inode_gid(in);
  e.nlink = in.i_links_count;
  e.size = EXT2_I_SIZE(&in);
  e.mtime = decode_time(in.i_mtime, in.i_mtime_extra, &e.mtime_nsec);
  e.allocated = ext2fs_get_stat_i_blocks(fs, reinterpret_cast<ext2_inode*>(&in)) * 512;
  if (in.i_file_acl) e.allocated -= fs->blocksize;
  e.allocated -= extent_tree_blocks(fs, ino, in) * fs->blocksize;
  switch (in.i_mode & LINUX_S_IFMT) {
    case LINUX_S_IFREG:
      e.type = 'f';
      break;
    case LINUX_S_IFDIR:
      e.type = 'd';
      break;
    case LINUX_S_IFLNK:
      e.type = 'l';
      break;
    case LINUX_S_IFCHR:
      e.type = 'c';
      break;
    case LINUX_S_IFBLK:
      e.type = 'b';
      break;
    case LINUX_S_IFIFO:
      e.type = 'p';
      break;
    default:
      e.type = '?';
  }
  if (e.type == 'c' || e.type == 'b') {
    if (in.i_block[0]) {
      e.major = (in.i_block[0] >> 8) & 255;
      e.minor = in.i_block[0] & 255;
    } else {
      e.major = (in.i_block[1] & 0xfff00) >> 8;
      e.minor = (in.i_block[1] & 0xff) | ((in.i_block[1] >> 12) & 0xfff00);
    }
  }
  if (e.type == 'l' && ext2fs_is_fast_symlink(reinterpret_cast<ext2_inode*>(&in))) {
    e.target.assign(reinterpret_cast<const char*>(in.i_block), e.size);
  } else if (e.type == 'f' || e.type == 'l') {
    ext2_file_t f;
    ck(ext2fs_file_open(fs, ino, 0, &f), "file open");
    std::string data;
    char buf[65536];
    for (;;) {
      unsigned got = 0;
      ck(ext2fs_file_read(f, buf, sizeof buf, &got), "file read");
      if (!got) break;
      data.append(buf, got);
      if (data.size() > (256u << 20)) break;
    }
    ext2fs_file_close(f);
    (e.type == 'f' ? e.content : e.target) = std::move(data);
  }
  struct ext2_xattr_handle* h;
  ck(ext2fs_xattrs_open(fs, ino, &h), "xattrs open");
  ck(ext2fs_xattrs_read(h), "xattrs read");
  ck(ext2fs_xattrs_iterate(h, xattr_cb, &e.xattrs), "xattrs iterate");
  ext2fs_xattrs_close(&h);
}

// Every entry below `root` (whose path is "/") into `out`, depth first without recursion (the
// trees under test may be thousands of directories deep).
void walk(ext2_filsys fs, ext2_ino_t root, FsTree& out) {
  std::vector<std::pair<ext2_ino_t, std::string>> todo{{root, "/"}};
  while (!todo.empty()) {
    auto [dir, path] = std::move(todo.back());
    todo.pop_back();
    std::vector<std::pair<std::string, ext2_ino_t>> kids;
    auto cb = [](ext2_ino_t, int, struct ext2_dir_entry* d, int, int, char*, void* priv) -> int {
      auto* v = static_cast<std::vector<std::pair<std::string, ext2_ino_t>>*>(priv);
      std::string name(d->name, ext2fs_dirent_name_len(d));
      if (name != "." && name != "..") v->emplace_back(name, d->inode);
      return 0;
    };
    ck(ext2fs_dir_iterate2(fs, dir, 0, nullptr, cb, &kids), "dir iterate " + path);
    for (auto& [name, ino] : kids) {
      std::string p = (path == "/" ? "/" : path + "/") + name;
      FsEntry e;
      read_inode_into(fs, ino, e);
      if (e.type == 'd') todo.emplace_back(ino, p);
      out[p] = std::move(e);
    }
  }
}

}  // namespace

FsTree read_ext4(const fs::path& image) {
  static bool init = (initialize_ext2_error_table(), true);
  (void)init;
  ext2_filsys fs;
  ck(ext2fs_open(image.c_str(), EXT2_FLAG_64BITS, 0, 0, unix_io_manager, &fs),
     "open " + image.string());
  FsTree out;
  try {
    FsEntry root;
    read_inode_into(fs, EXT2_ROOT_INO, root);
    out["/"] = root;
    walk(fs, EXT2_ROOT_INO, out);
  } catch (...) {
    ext2fs_close_free(&fs);
    throw;
  }
  ext2fs_close_free(&fs);
  return out;
}

}  // namespace img2vm::testing
