// The local image store: one content-addressed OCI image layout under
// $IMG2VM_HOME/oci (default ~/.local/share/img2vm/oci) that skopeo and umoci can read:
//   oci/oci-layout, oci/index.json, oci/blobs/sha256/<hex>
// index.json holds one entry per stored reference: the platform-selected image manifest's
// descriptor with org.opencontainers.image.ref.name = the full normalized reference
// ("docker.io/library/alpine:latest") and img2vm's own annotations (pull time, source index).
//
// Safety: blobs are written to ingest/<hex>.partial while their sha256 is computed, checked
// against the descriptor's size and digest, fsync'd, and only then renamed into blobs/; pull
// makes its renames durable with one fsync of blobs/ before index.json refers to them. A partial
// file survives a failed download (or kill -9) and is resumed by the next pull. Per-blob flocks
// make concurrent pulls of the same or overlapping images safe; index.json is rewritten atomically
// under its own lock; prune takes the whole store exclusively.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "img2vm/base/digest.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/registry/client.hpp"
#include "img2vm/registry/manifest.hpp"

namespace img2vm::registry {

inline constexpr std::string_view kRefNameAnnotation = "org.opencontainers.image.ref.name";
inline constexpr std::string_view kPulledAnnotation = "io.img2vm.pulled";  // RFC 3339 UTC
inline constexpr std::string_view kIndexAnnotation =
    "io.img2vm.index.digest";                                              // the index it came from
inline constexpr std::string_view kSourceAnnotation = "io.img2vm.source";  // what was pulled

// An image in the store's index.
struct StoredImage {
  std::string name;     // the ref.name annotation
  Descriptor manifest;  // the image manifest's descriptor (with platform and annotations)
  std::optional<Digest> index_digest;
  std::string pulled;  // RFC 3339
};

// A blob being written into the store (a BlobSink for Client::get_blob). Holds the blob's
// lock for its lifetime.
class Ingest : public BlobSink {
 public:
  ~Ingest() override;
  // True when another pull stored the blob while we waited for its lock: nothing to do.
  bool already_present() const { return present_; }
  uint64_t offset() const override { return written_; }
  void restart() override;
  void write(const char* data, size_t len) override;
  // True when the bytes so far are the whole blob (size and digest). Ends the hash: after false,
  // only restart() may follow.
  bool matches();
  // Checks size and digest. On a mismatch the partial file is deleted and Error(kIntegrity)
  // names the digest.
  void verify();
  // verify(), then makes the blob durable (fsync) and moves it into place. With sync_dir false
  // the rename itself is not yet durable: the caller calls Store::sync_blobs() before anything
  // refers to the blob (pull does so once for all its blobs).
  void commit(bool sync_dir = true);
  // Bytes that were already there from an earlier interrupted download (0 after restart()).
  uint64_t resumed_from() const { return resumed_; }
  // The partial file already holds as many bytes as the descriptor says (a download that was
  // killed before its commit): verify, no request.
  bool complete() const { return written_ == static_cast<uint64_t>(desc_.size); }

 private:
  friend class Store;
  Ingest() = default;
  Descriptor desc_;
  std::filesystem::path partial_, final_;
  UniqueFd lock_, fd_;
  std::unique_ptr<Sha256> hash_;
  std::optional<Digest> got_;  // the hash, once finished
  void flush();
  void write_out(const char* data, size_t len);

  uint64_t written_ = 0;  // bytes received and hashed (resumed_ of them from an earlier pull)
  uint64_t resumed_ = 0;
  uint64_t on_disk_ = 0;    // bytes in the partial file; written_ - on_disk_ wait in the buffer
  uint64_t writeback_ = 0;  // the file up to here has been handed to writeback (sync_file_range)
  // Gathers curl's 16 KiB pieces into large writes; taken from a small pool of reused buffers,
  // as a fresh 1 MiB for each blob would be faulted in page by page.
  std::unique_ptr<char[]> buffer_;
  size_t buffered_ = 0;
  bool present_ = false, verified_ = false;
};

// The content store: an OCI image layout with verified blobs and named images.
class Store {
 public:
  // $IMG2VM_HOME, else $XDG_DATA_HOME/img2vm, else ~/.local/share/img2vm.
  static std::filesystem::path default_home();
  // Opens the store under `home`, creating its directories (its oci-layout and index.json come
  // with the first image put in it).
  explicit Store(std::filesystem::path home = default_home());

  // The directory the store lives in.
  const std::filesystem::path& home() const { return home_; }
  // Its OCI image layout (<home>/oci).
  std::filesystem::path layout_dir() const { return home_ / "oci"; }
  // Where the blob `d` is (or would be) stored.
  std::filesystem::path blob_path(const Digest& d) const;
  // True when the blob is present (with `size` bytes, when given).
  bool has_blob(const Digest& d, int64_t size = -1) const;
  // Reads a (small) blob and verifies its digest; Error(kNotFound) if absent.
  std::string read_blob(const Digest& d, uint64_t max_bytes) const;
  // Stores bytes whose digest must be `d` (verified).
  void put_blob(const Digest& d, std::string_view data);
  // Starts writing blob `d` (blocks while another process writes the same blob).
  std::unique_ptr<Ingest> ingest(const Descriptor& d);
  // Makes the renames of blobs committed with commit(false) durable (fsync of blobs/sha256).
  void sync_blobs() const;

  // The images in the store, by name.
  std::vector<StoredImage> list() const;
  // By exact name, then by normalized reference ("alpine" finds docker.io/library/alpine:latest).
  std::optional<StoredImage> find(const std::string& name) const;
  // Adds or replaces the entry named img.name.
  void put_image(const StoredImage& img);
  // Removes the entry; false when there was none.
  bool remove_image(const std::string& name);

  // What prune() removed.
  struct PruneResult {
    uint64_t blobs = 0, bytes = 0;
  };
  // Deletes blobs no stored image references, and leftover partial downloads.
  PruneResult prune();

  // The store-wide lock: pulls hold it shared, prune exclusively.
  UniqueFd lock_shared() const;

 private:
  std::filesystem::path home_;
};

}  // namespace img2vm::registry
