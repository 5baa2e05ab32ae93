// A detached VM's console.log: written by the monitor (ConsoleLog), read by `logs`.
#include <fcntl.h>
#include <poll.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <deque>

#include "img2vm/base/error.hpp"
#include "img2vm/runtime/vms.hpp"

namespace img2vm::runtime {

namespace fs = std::filesystem;

namespace {

constexpr const char* kLog = "console.log";
constexpr const char* kOldLog = "console.log.1";
// Each file is at most max_bytes plus one write's worth; read with room to spare.
constexpr uint64_t kMaxReadBytes = 64u << 20;

// Hands each line of the log's bytes to `out` with its stream (the separator after its time:
// a space for the console, a tab for the workload's stderr), its time dropped unless -t (then
// followed by a space, whichever the stream). Keeps state across chunks.
class LineFilter {
 public:
  LineFilter(bool timestamps, const LogSink& out) : ts_(timestamps), out_(out) {}
  void operator()(std::string_view in) {
    for (char c : in) {
      if (in_time_) {
        if (c == ' ' || c == '\t') {
          in_time_ = false;
          put(c == '\t' ? ConsoleLog::Stream::kStderr : ConsoleLog::Stream::kConsole,
              ts_ ? time_ + ' ' : std::string());
          time_.clear();
          continue;
        }
        if (c != '\n') {
          if (time_.size() < kMaxTime) time_ += c;
          continue;
        }
        // A line with no separator (not written by ConsoleLog): kept as the console's.
        put(ConsoleLog::Stream::kConsole, ts_ ? time_ : std::string());
        time_.clear();
      }
      pending_ += c;
      if (c == '\n') in_time_ = true;
    }
    flush();
  }

 private:
  static constexpr size_t kMaxTime = 64;
  void put(ConsoleLog::Stream s, const std::string& text) {
    if (s != stream_) flush();
    stream_ = s;
    pending_ += text;
  }
  void flush() {
    if (!pending_.empty()) out_(pending_, stream_);
    pending_.clear();
  }
  bool ts_;
  const LogSink& out_;
  bool in_time_ = true;  // at a line's start: its time comes first
  std::string time_;
  ConsoleLog::Stream stream_ = ConsoleLog::Stream::kConsole;
  std::string pending_;  // of stream_
};

std::string read_if_any(const fs::path& p) {
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(p, ec))) return {};
  try {
    return read_file(p, kMaxReadBytes);
  } catch (const Error&) {
    return {};  // rotated or removed meanwhile
  }
}

// The last `n` lines of `text` (a last line without its newline counts).
std::string_view tail_lines(std::string_view text, size_t n) {
  if (n == 0) return {};
  size_t end = text.size();
  if (end > 0 && text[end - 1] == '\n') --end;
  size_t count = 0;
  while (end > 0) {
    size_t nl = text.rfind('\n', end - 1);
    if (nl == std::string_view::npos) return text;
    if (++count == n) return text.substr(nl + 1);
    end = nl;
  }
  return text;
}

}  // namespace

ConsoleLog::ConsoleLog(fs::path dir, uint64_t max_bytes)
    : dir_(std::move(dir)), max_(std::max<uint64_t>(max_bytes, 64)) {
  open();
}

void ConsoleLog::open() {
  fd_ = UniqueFd(
      ::open((dir_ / kLog).c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600));
  struct stat st {};
  size_ = fd_ && ::fstat(fd_.get(), &st) == 0 ? uint64_t(st.st_size) : 0;
  line_start_ = true;
}

void ConsoleLog::rotate() {
  fd_.reset();
  if (::rename((dir_ / kLog).c_str(), (dir_ / kOldLog).c_str()) != 0) return;
  open();
}

void ConsoleLog::write(std::string_view data, Stream stream) {
  std::string out;
  std::string stamp;
  if (data.empty()) return;
  if (!line_start_ && stream != open_line_) {
    out += '\n';
    line_start_ = true;
  }
  open_line_ = stream;
  auto flush = [&] {
    if (!fd_ || out.empty()) return;
    try {
      write_all(fd_.get(), out, (dir_ / kLog).string());
      size_ += out.size();
    } catch (const Error&) {
      fd_.reset();
    }
    out.clear();
  };
  while (!data.empty() && fd_) {
    if (size_ + out.size() >= max_) {
      if (!line_start_) out += '\n';
      flush();
      rotate();
      if (!fd_) return;
    }
    if (line_start_) {
      if (stamp.empty()) stamp = now_rfc3339_nano();
      out += stamp;
      out += stream == Stream::kStderr ? '\t' : ' ';
      line_start_ = false;
    }
    size_t nl = data.find('\n');
    size_t take = nl == std::string_view::npos ? data.size() : nl + 1;
    const uint64_t used = size_ + out.size();
    if (used < max_) take = std::min<uint64_t>(take, max_ - used);
    out.append(data.substr(0, take));
    if (out.back() == '\n') line_start_ = true;
    data.remove_prefix(take);
  }
  flush();
}

void read_console_log(const fs::path& dir, const LogOptions& o, const LogSink& out) {
  std::string all = read_if_any(dir / kOldLog) + read_if_any(dir / kLog);
  std::string_view v = all;
  if (o.tail) v = tail_lines(v, *o.tail);
  LineFilter(o.timestamps, out)(v);
}

std::string read_console_log(const fs::path& dir, const LogOptions& o) {
  std::string text;
  read_console_log(dir, o, [&](std::string_view s, ConsoleLog::Stream) { text += s; });
  return text;
}

void follow_console_log(const VmStore& store, const std::string& id, const LogOptions& o,
                        const LogSink& out) {
  const fs::path dir = store.vm_dir(id);
  UniqueFd ino(::inotify_init1(IN_CLOEXEC | IN_NONBLOCK));
  if (!ino) throw_errno("inotify_init1");
  if (::inotify_add_watch(ino.get(), dir.c_str(),
                          IN_MODIFY | IN_CREATE | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF) < 0)
    throw_errno("watch " + dir.string());
  auto rec = store.find(id);
  if (!rec) throw Error(ErrorKind::kNotFound, "No such VM: " + id);
  UniqueFd monitor = rec->status == VmStatus::kExited ? UniqueFd() : rec->monitor.pidfd();

  // What is there now, as read_console_log gives it, then what comes.
  UniqueFd log(::open((dir / kLog).c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  std::string now = read_if_any(dir / kOldLog);
  LineFilter filter(o.timestamps, out);
  char buf[65536];
  auto drain = [&](std::string* into) {
    if (!log) return;
    for (;;) {
      ssize_t n = ::read(log.get(), buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;
      if (into)
        into->append(buf, size_t(n));
      else
        filter(std::string_view(buf, size_t(n)));
    }
  };
  drain(&now);
  std::string_view first = now;
  if (o.tail) first = tail_lines(first, *o.tail);
  filter(first);

  for (;;) {
    drain(nullptr);
    // Rotated: the rest of the old file is read above; the new one is read from its start.
    struct stat a {
    }, b{};
    if (::stat((dir / kLog).c_str(), &b) == 0 &&
        (!log || (::fstat(log.get(), &a) == 0 && (a.st_ino != b.st_ino || a.st_dev != b.st_dev)))) {
      log = UniqueFd(::open((dir / kLog).c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
      continue;
    }
    if (!monitor) break;  // the VM has ended: everything written is out
    struct pollfd p[2] = {{ino.get(), POLLIN, 0}, {monitor.get(), POLLIN, 0}};
    // The timeout is a safety net only: inotify and the pidfd wake this up.
    int n = ::poll(p, 2, 5000);
    if (n < 0 && errno != EINTR) throw_errno("poll");
    if (p[0].revents & POLLIN)
      while (::read(ino.get(), buf, sizeof buf) > 0) {
      }
    if (p[1].revents & POLLIN) monitor.reset();  // one more pass reads what it wrote last
    if (!fs::exists(dir)) break;                 // removed
  }
}

}  // namespace img2vm::runtime
