#include "img2vm/rootfs/convert.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "ext4_writer.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/guestabi/config.hpp"
#include "img2vm/guestabi/error.hpp"
#include "img2vm/guestabi/paths.hpp"

namespace img2vm::rootfs {

namespace fs = std::filesystem;
using guestabi::kReservedDir;
using guestabi::RuntimeConfig;
using layers::Inode;
using layers::NodeType;

namespace {

std::array<uint8_t, 16> derive(const Digest& seed, std::string_view purpose) {
  std::string text =
      "img2vm-rootfs-v1\n" + std::string(purpose) + "\n" + (seed.empty() ? "" : seed.str());
  Digest d = Digest::sha256_of(text);
  std::array<uint8_t, 16> out{};
  for (size_t i = 0; i < 16; ++i)
    out[i] = static_cast<uint8_t>(std::stoi(d.hex().substr(2 * i, 2), nullptr, 16));
  return out;
}

UniqueFd temp_file(const fs::path& dir) {
  int fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd >= 0) return UniqueFd(fd);
  std::string tmpl = (dir / ".img2vm-inject.XXXXXX").string();
  fd = ::mkostemp(tmpl.data(), O_CLOEXEC);
  if (fd < 0) throw_errno("cannot create a temporary file in " + dir.string());
  ::unlink(tmpl.c_str());
  return UniqueFd(fd);
}

std::shared_ptr<Inode> reserved_node(NodeType type, uint32_t mode, int64_t ts) {
  auto n = std::make_shared<Inode>();
  n->type = type;
  n->mode = mode;
  n->mtime = ts;
  return n;
}

}  // namespace

std::vector<Digest> diff_ids_from_image_config(std::string_view config_json) {
  auto bad = [](const std::string& why) {
    return Error(ErrorKind::kInvalidArgument, "rootfs.diff_ids " + why);
  };
  nlohmann::json root = nlohmann::json::parse(config_json, nullptr, /*allow_exceptions=*/false);
  if (!root.is_object()) throw Error(ErrorKind::kInvalidArgument, "not a JSON object");
  std::vector<Digest> out;
  auto rfs = root.find("rootfs");
  if (rfs == root.end() || rfs->is_null()) return out;
  if (!rfs->is_object()) throw Error(ErrorKind::kInvalidArgument, "rootfs must be an object");
  auto ids = rfs->find("diff_ids");
  if (ids == rfs->end() || ids->is_null()) return out;
  if (!ids->is_array()) throw bad("must be an array of digests");
  for (const auto& v : *ids) {
    std::string s = v.is_string() ? v.get<std::string>() : v.dump();
    if (!v.is_string() || !Digest::valid(s))
      throw bad("holds " + s.substr(0, 80) + (s.size() > 80 ? "..." : "") +
                ", which is not a digest");
    out.push_back(Digest::parse(s));
  }
  return out;
}

ConvertResult convert(const ImageInput& image, const ConvertOptions& opt) {
  auto throw_if_cancelled = [](const std::atomic<bool>* cancel) {
    if (cancel && cancel->load(std::memory_order_relaxed))
      throw Error(ErrorKind::kIo, "convert: cancelled");
  };
  throw_if_cancelled(opt.cancel);
  if (opt.output.empty()) throw Error(ErrorKind::kInvalidArgument, "convert: no output path given");
  fs::path out_dir = opt.output.parent_path();
  if (out_dir.empty()) out_dir = ".";
  fs::path temp_dir = opt.temp_dir.empty() ? out_dir : opt.temp_dir;

  RuntimeConfig rc;
  std::vector<Digest> diff_ids;
  try {
    rc = guestabi::runtime_config_from_image_config(image.config_json);
    diff_ids = diff_ids_from_image_config(image.config_json);
  } catch (const guestabi::Error& e) {
    throw Error(ErrorKind::kInvalidArgument, std::string("image config: ") + e.what());
  } catch (const Error& e) {
    throw e.with_context("image config");
  }
  // Each layer's content is verified against the config's diff_id while it is decoded.
  const size_t n = image.layers.size();
  if (diff_ids.size() != n)
    throw Error(ErrorKind::kIntegrity, "the image config lists " + std::to_string(diff_ids.size()) +
                                           (diff_ids.size() == 1 ? " diff_id" : " diff_ids") +
                                           " (rootfs.diff_ids) for " + std::to_string(n) +
                                           (n == 1 ? " layer" : " layers") +
                                           ": it needs one per layer");
  std::vector<layers::LayerSource> sources = image.layers;
  for (size_t i = 0; i < n; ++i) {
    if (!sources[i].diff_id.empty() && sources[i].diff_id != diff_ids[i])
      throw Error(ErrorKind::kInvalidArgument,
                  "layer " + std::to_string(i + 1) + ": its LayerSource::diff_id " +
                      sources[i].diff_id.str() + " is not the config's " + diff_ids[i].str());
    sources[i].diff_id = diff_ids[i];
  }
  std::string config_json = guestabi::to_json(rc);

  UniqueFd init_fd;
  struct stat init_st {};
  if (!opt.init_binary.empty()) {
    init_fd = open_file(opt.init_binary, O_RDONLY);
    if (::fstat(init_fd.get(), &init_st) != 0)
      throw_errno("cannot stat " + opt.init_binary.string());
    if (!S_ISREG(init_st.st_mode))
      throw Error(ErrorKind::kInvalidArgument,
                  "init binary " + opt.init_binary.string() + " is not a regular file");
  }

  // The output is created first so that an unwritable destination fails before any work.
  AtomicFile out(opt.output, 0644);

  // The layers' file data goes straight into the output, after room for the superblock and the
  // group descriptors, where the ext4 writer adopts it block for block.
  layers::FlattenOptions fo;
  fo.max_bytes = opt.max_size;
  fo.spool_dir = temp_dir;
  fo.threads = opt.threads;
  fo.output.fd = out.fd();
  fo.output.offset = detail::adopt_offset(opt.max_size);
  fo.output.align = 4096;
  fo.output.in_place = opt.in_place;
  fo.output.region = opt.in_place_region;
  if (opt.progress) fo.progress = [&](size_t d, size_t t) { opt.progress("layers", d, t); };
  fo.cancel = opt.cancel;
  layers::Flattened flat = layers::flatten(sources, fo);

  // /.img2vm: config.json from a spool of its own, init straight from its file.
  auto dir = reserved_node(NodeType::kDir, 0755, opt.timestamp);
  {
    UniqueFd cfg = temp_file(temp_dir);
    write_all(cfg.get(), config_json, "the injected config.json");
    auto f = reserved_node(NodeType::kFile, 0644, opt.timestamp);
    f->size = config_json.size();
    if (!config_json.empty()) f->extents.push_back({0, config_json.size(), 0});
    f->spool = flat.add_spool(std::move(cfg));
    dir->children[std::string(guestabi::kConfigPath.substr(kReservedDir.size() + 1))] =
        layers::Dentry{f, 0};
  }
  if (init_fd) {
    auto f = reserved_node(NodeType::kFile, 0755, opt.timestamp);
    f->size = static_cast<uint64_t>(init_st.st_size);
    if (f->size) f->extents.push_back({0, f->size, 0});
    f->spool = flat.add_spool(std::move(init_fd));
    dir->children[std::string(guestabi::kInitPath.substr(kReservedDir.size() + 1))] =
        layers::Dentry{f, 0};
  }
  std::string reserved_name(kReservedDir.substr(1));
  flat.tree.root->children[reserved_name] = layers::Dentry{dir, 0};

  detail::Ext4Params p;
  p.size = opt.size;
  p.extra_space = opt.extra_space;
  p.extra_inodes = opt.extra_inodes;
  p.max_size = opt.max_size;
  p.uuid = derive(image.manifest_digest, "uuid");
  p.uuid[6] = static_cast<uint8_t>((p.uuid[6] & 0x0f) | 0x50);  // name-based UUID (v5 layout)
  p.uuid[8] = static_cast<uint8_t>((p.uuid[8] & 0x3f) | 0x80);
  p.hash_seed = derive(image.manifest_digest, "hash-seed");
  p.timestamp = opt.timestamp;
  // The writer reports after each file's data: the cancel flag is checked there too.
  if (opt.progress || opt.cancel) {
    p.progress = [&](uint64_t d, uint64_t t) {
      throw_if_cancelled(opt.cancel);
      if (opt.progress) opt.progress("data", d, t);
    };
  }
  p.adopt_begin = flat.data_begin;
  p.adopt_end = flat.data_end;
  p.compact_by_copy = opt.compact_by_copy;

  detail::Ext4Stats st = detail::write_ext4(
      out.temp_path(), out.fd(), flat.tree,
      [&](uint32_t i) {
        return detail::SpoolRef{flat.spools.at(i).fd, flat.spools.at(i).base};
      },
      p);
  throw_if_cancelled(opt.cancel);
  out.commit();

  ConvertResult r;
  r.output = opt.output;
  r.size_bytes = st.size_bytes;
  r.inodes = st.inodes;
  r.data_bytes = st.data_bytes;
  r.layers = n;
  r.data_in_place = flat.in_place;
  return r;
}

}  // namespace img2vm::rootfs
