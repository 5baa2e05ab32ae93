// Content digests as used by OCI ("sha256:<64 hex>") and a streaming SHA-256 on nettle.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

namespace img2vm {

// A validated "algorithm:encoded" digest. Only sha256 (and sha512, for parsing) are accepted.
class Digest {
 public:
  Digest() = default;
  // Throws Error(kInvalidArgument) naming the text when it is not a valid digest.
  static Digest parse(std::string_view text);
  // Returns false instead of throwing.
  static bool valid(std::string_view text) noexcept;
  // The sha256 digest of `data`.
  static Digest sha256_of(std::string_view data);

  // "sha256" or "sha512".
  const std::string& algorithm() const noexcept { return algorithm_; }
  // The encoded part, lowercase hex.
  const std::string& hex() const noexcept { return hex_; }
  // "algorithm:hex", as in manifests and references.
  std::string str() const { return algorithm_ + ":" + hex_; }
  // True for a default-constructed (no) digest.
  bool empty() const noexcept { return hex_.empty(); }
  // The first 12 hex characters, as docker shows short IDs.
  std::string short_hex() const { return hex_.substr(0, 12); }

  friend bool operator==(const Digest&, const Digest&) = default;
  friend auto operator<=>(const Digest&, const Digest&) = default;

 private:
  Digest(std::string algorithm, std::string hex)
      : algorithm_(std::move(algorithm)), hex_(std::move(hex)) {}
  std::string algorithm_;
  std::string hex_;
};

// Incremental SHA-256 (nettle: SHA-NI where the CPU has it). Move-only.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(Sha256&&) noexcept;
  Sha256& operator=(Sha256&&) noexcept;
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  // Hashes `len` more bytes.
  void update(const void* data, size_t len);
  // Hashes the bytes of `s`.
  void update(std::string_view s) { update(s.data(), s.size()); }
  // How many bytes were hashed so far.
  uint64_t bytes() const noexcept { return bytes_; }
  // Finishes the hash; the object must not be updated afterwards.
  Digest finish();

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
  uint64_t bytes_ = 0;
};

// Digest of a whole file, streamed.
Digest sha256_file(const std::filesystem::path& path);

// sha256_file(path), remembered in `cache_dir` (one small file per path, created with the
// directory when missing) by the file's identity: device, inode, size, modification and change
// times, as git's index does (any write, truncate, rename or chmod moves the change time, which
// no one can set back). An unchanged file is hashed once; a file changed in the last two
// seconds is always hashed (a write in the same tick may leave its times as they were). A
// cache that cannot be read or written is passed over. Throws as sha256_file() does.
Digest sha256_file_remembered(const std::filesystem::path& path,
                              const std::filesystem::path& cache_dir);

}  // namespace img2vm
