#include "img2vm/base/digest.hpp"

#include <fcntl.h>
#include <nettle/sha2.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <ctime>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"

namespace img2vm {

namespace {
bool is_lower_hex(std::string_view s) {
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

// Returns an empty string when valid, else why not.
std::string check(std::string_view text) {
  auto colon = text.find(':');
  if (colon == std::string_view::npos) return "missing ':' between algorithm and hex";
  std::string_view alg = text.substr(0, colon), enc = text.substr(colon + 1);
  size_t want;
  if (alg == "sha256") {
    want = 64;
  } else if (alg == "sha512") {
    want = 128;
  } else {
    return "unsupported digest algorithm '" + std::string(alg) + "'";
  }
  if (enc.size() != want)
    return std::string(alg) + " needs " + std::to_string(want) + " hex characters, got " +
           std::to_string(enc.size());
  if (!is_lower_hex(enc)) return "the encoded part must be lowercase hex";
  return {};
}
}  // namespace

Digest Digest::parse(std::string_view text) {
  std::string why = check(text);
  if (!why.empty())
    throw Error(ErrorKind::kInvalidArgument,
                "invalid digest \"" + std::string(text) + "\": " + why);
  auto colon = text.find(':');
  return Digest(std::string(text.substr(0, colon)), std::string(text.substr(colon + 1)));
}

bool Digest::valid(std::string_view text) noexcept { return check(text).empty(); }

Digest Digest::sha256_of(std::string_view data) {
  Sha256 h;
  h.update(data);
  return h.finish();
}

// Nettle's SHA-256 (SHA-NI where the CPU has it, as OpenSSL's): no library-wide initialisation,
// where OpenSSL 3's first digest built its provider and algorithm tables (some 5 million
// instructions, more than the rest of an img2vm command's start) and libcrypto's relocations
// cost as much again.
struct Sha256::Ctx {
  sha256_ctx state;
};

Sha256::Sha256() : ctx_(std::make_unique<Ctx>()) { ::nettle_sha256_init(&ctx_->state); }
Sha256::~Sha256() = default;
Sha256::Sha256(Sha256&&) noexcept = default;
Sha256& Sha256::operator=(Sha256&&) noexcept = default;

void Sha256::update(const void* data, size_t len) {
  if (len == 0) return;
  ::nettle_sha256_update(&ctx_->state, len, static_cast<const uint8_t*>(data));
  bytes_ += len;
}

Digest Sha256::finish() {
  uint8_t out[SHA256_DIGEST_SIZE];
  ::nettle_sha256_digest(&ctx_->state, sizeof out, out);
  static const char kHex[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(2 * sizeof out);
  for (uint8_t b : out) {
    hex.push_back(kHex[b >> 4]);
    hex.push_back(kHex[b & 15]);
  }
  return Digest::parse("sha256:" + hex);
}

namespace {

Digest sha256_fd(int fd, const std::filesystem::path& path) {
  Sha256 h;
  std::string buf(1 << 20, '\0');
  for (;;) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("cannot read " + path.string());
    }
    if (n == 0) break;
    h.update(buf.data(), static_cast<size_t>(n));
  }
  return h.finish();
}

// What identifies a file's content without reading it (see sha256_file_remembered).
std::string identity(const struct stat& st) {
  return std::to_string(st.st_dev) + " " + std::to_string(st.st_ino) + " " +
         std::to_string(st.st_size) + " " + std::to_string(st.st_mtim.tv_sec) + "." +
         std::to_string(st.st_mtim.tv_nsec) + " " + std::to_string(st.st_ctim.tv_sec) + "." +
         std::to_string(st.st_ctim.tv_nsec);
}

}  // namespace

Digest sha256_file(const std::filesystem::path& path) {
  UniqueFd fd = open_file(path, O_RDONLY);
  return sha256_fd(fd.get(), path);
}

Digest sha256_file_remembered(const std::filesystem::path& path,
                              const std::filesystem::path& cache_dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path abs = fs::absolute(path, ec);
  if (ec) return sha256_file(path);
  const fs::path entry =
      cache_dir / Digest::sha256_of(abs.lexically_normal().string()).hex().substr(0, 32);
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) {
    try {
      const std::string text = read_file(entry, 1024);
      const std::string head = identity(st) + " sha256:";
      if (text.size() == head.size() + 64 + 1 && text.starts_with(head) && text.back() == '\n') {
        const std::string kept = "sha256:" + text.substr(head.size(), 64);
        if (Digest::valid(kept)) return Digest::parse(kept);
      }
    } catch (const Error&) {  // none yet, or unreadable: hash
    }
  }
  UniqueFd fd = open_file(path, O_RDONLY);
  struct stat before {
  }, after{};
  if (::fstat(fd.get(), &before) != 0) throw_errno("cannot stat " + path.string());
  const Digest d = sha256_fd(fd.get(), path);
  // Remembered when the file did not change while it was hashed and its last change is older
  // than the timestamps' granularity.
  if (::fstat(fd.get(), &after) == 0 && identity(after) == identity(before) &&
      before.st_ctim.tv_sec + 2 < ::time(nullptr)) {
    try {
      fs::create_directories(cache_dir);
      write_file_atomic(entry, identity(before) + " " + d.str() + "\n", 0644);
    } catch (const std::exception&) {  // a cache: the caller goes on without it
    }
  }
  return d;
}

}  // namespace img2vm
