// `img2vm pull REF`: pull an image (registry, oci:DIR[:TAG], docker-archive:FILE[:REF]) into the
// store, with one progress line per blob on a TTY, quiet otherwise, or JSON events (--json).
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "commands.hpp"
#include "format.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/registry/pull.hpp"

namespace img2vm::cli {

namespace {

struct PullArgs {
  std::string ref, platform, username, ca_cert;
  bool password_stdin = false;
  int jobs = 4;
  std::vector<std::string> insecure;
};

// Ctrl-C or SIGTERM during a pull: the first stops it cleanly (partial downloads kept for the
// next pull to resume), a second one ends the process at once.
std::atomic<bool> g_interrupted{false};

void on_interrupt(int sig) {
  if (g_interrupted.exchange(true)) {
    ::signal(sig, SIG_DFL);
    ::raise(sig);
  }
}

class InterruptHandler {
 public:
  InterruptHandler() {
    struct sigaction sa {};
    sa.sa_handler = on_interrupt;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGINT, &sa, &old_int_);
    ::sigaction(SIGTERM, &sa, &old_term_);
  }
  ~InterruptHandler() {
    ::sigaction(SIGINT, &old_int_, nullptr);
    ::sigaction(SIGTERM, &old_term_, nullptr);
  }
  InterruptHandler(const InterruptHandler&) = delete;
  InterruptHandler& operator=(const InterruptHandler&) = delete;

 private:
  struct sigaction old_int_ {
  }, old_term_{};
};

// Redraws one line per blob on a terminal.
class TtyProgress {
 public:
  void on(const registry::PullEvent& e) {
    using K = registry::PullEvent::Kind;
    if (e.kind == K::kResolved) {
      if (e.platform.empty())
        std::fprintf(stderr, "%s: %s\n", e.name.c_str(), e.digest.str().c_str());
      else
        std::fprintf(stderr, "%s: %s (%s)\n", e.name.c_str(), e.digest.str().c_str(),
                     e.platform.c_str());
      return;
    }
    if (e.kind == K::kDone) {
      draw(true);
      return;
    }
    std::string key = e.digest.str();
    if (!index_.count(key)) {
      index_[key] = lines_.size();
      lines_.push_back(
          {e.digest.short_hex(), 0, e.total, "waiting", std::chrono::steady_clock::now(), 0});
    }
    Line& l = lines_[index_[key]];
    l.current = e.current;
    if (e.kind == K::kBlobStart) {
      l.state = "downloading";
      l.start = std::chrono::steady_clock::now();
      l.start_bytes = e.current;
    } else if (e.kind == K::kBlobDone)
      l.state = "done";
    else if (e.kind == K::kBlobCached)
      l.state = "already present";
    draw(e.kind != K::kProgress);
  }

 private:
  struct Line {
    std::string id;
    uint64_t current, total;
    std::string state;
    std::chrono::steady_clock::time_point start;
    uint64_t start_bytes;
  };
  void draw(bool force) {
    auto now = std::chrono::steady_clock::now();
    if (!force && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    if (drawn_) std::fprintf(stderr, "\033[%zuA", drawn_);
    for (const auto& l : lines_) {
      std::string extra;
      if (l.state == "downloading") {
        double secs = std::chrono::duration<double>(now - l.start).count();
        double rate = secs > 0 ? static_cast<double>(l.current - l.start_bytes) / secs : 0;
        extra = "  " + human_size(static_cast<uint64_t>(rate)) + "/s";
        if (rate > 0 && l.total > l.current)
          extra +=
              "  ETA " +
              std::to_string(static_cast<int>(static_cast<double>(l.total - l.current) / rate)) +
              "s";
      }
      std::fprintf(stderr, "\033[2K%s: %-15s %s / %s%s\n", l.id.c_str(), l.state.c_str(),
                   human_size(l.current).c_str(), human_size(l.total).c_str(), extra.c_str());
    }
    drawn_ = lines_.size();
  }
  std::map<std::string, size_t> index_;
  std::vector<Line> lines_;
  size_t drawn_ = 0;
  std::chrono::steady_clock::time_point last_{};
};

const char* kind_name(registry::PullEvent::Kind k) {
  using K = registry::PullEvent::Kind;
  switch (k) {
    case K::kResolved:
      return "resolved";
    case K::kBlobStart:
      return "blob-start";
    case K::kProgress:
      return "progress";
    case K::kBlobDone:
      return "blob-done";
    case K::kBlobCached:
      return "blob-cached";
    case K::kDone:
      return "done";
  }
  return "?";
}

}  // namespace

void register_pull(CLI::App& app, Globals& g, Action* slot) {
  auto args = std::make_shared<PullArgs>();
  auto* sub = app.add_subcommand(
      "pull",
      "Pull an image (registry, oci:DIR[:TAG], docker-archive:FILE[:REF]) into the local store");
  add_global_flags(*sub);
  sub->add_option("ref", args->ref, "Image reference or source")->required();
  sub->add_option("--platform", args->platform,
                  "os/arch[/variant] to select from a multi-platform image (default: this host)");
  sub->add_option("-j,--jobs", args->jobs, "Concurrent blob downloads")->check(CLI::Range(1, 32));
  sub->add_option("-u,--username", args->username,
                  "Registry user name (the password is read from stdin)");
  sub->add_flag("--password-stdin", args->password_stdin, "Read the registry password from stdin");
  // One host per occurrence (repeat the option for more), so that it does not swallow the REF after
  // it.
  sub->add_option("--insecure-registry", args->insecure,
                  "Allow plain HTTP or unverified TLS for this registry host[:port]")
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  sub->add_option("--ca-cert", args->ca_cert, "Trust this PEM CA bundle for the registry")
      ->check(CLI::ExistingFile);
  sub->callback([&g, slot, args] {
    *slot = [&g, args] {
      registry::PullOptions o;
      if (!args->platform.empty()) o.platform = registry::Platform::parse(args->platform);
      o.jobs = args->jobs;
      o.client.ca_cert = args->ca_cert;
      o.client.insecure_registries = args->insecure;
      if (args->password_stdin && args->username.empty())
        throw Error(ErrorKind::kInvalidArgument, "--password-stdin needs --username");
      if (!args->username.empty()) {
        registry::Credentials c;
        c.username = args->username;
        if (args->password_stdin) {
          std::getline(std::cin, c.password);
          if (!c.password.empty() && c.password.back() == '\r') c.password.pop_back();
        }
        o.client.credentials = c;
      }
      if (g.verbose)
        o.client.log = [](const std::string& m) { std::cerr << "img2vm: " << m << "\n"; };
      bool tty = ::isatty(2) && !g.json;
      auto tp = std::make_shared<TtyProgress>();
      if (g.json) {
        o.progress = [](const registry::PullEvent& e) {
          nlohmann::json j = {{"event", kind_name(e.kind)}, {"digest", e.digest.str()}};
          if (!e.name.empty()) j["name"] = e.name;
          if (!e.media_type.empty()) j["mediaType"] = e.media_type;
          if (!e.platform.empty()) j["platform"] = e.platform;
          j["current"] = e.current;
          j["total"] = e.total;
          std::cout << j.dump() << "\n" << std::flush;
        };
      } else if (tty) {
        o.progress = [tp](const registry::PullEvent& e) { tp->on(e); };
      }
      registry::Store store;
      InterruptHandler on_ctrl_c;
      o.interrupt = &g_interrupted;
      registry::PullResult r;
      try {
        r = registry::pull(store, args->ref, o);
      } catch (const Error& e) {
        if (!g_interrupted) throw;
        if (tty) std::cerr << "\n";
        std::cerr << "img2vm: " << e.what() << "\n";
        return 130;  // 128 + SIGINT, as a shell reports an interrupted command
      }
      if (!g.json) {
        std::cout << r.name << " " << r.manifest_digest.str() << " " << r.platform.str()
                  << (r.up_to_date ? " (up to date)"
                                   : " (downloaded " + human_size(r.bytes_downloaded) + ")")
                  << "\n";
      }
      return kExitOk;
    };
  });
}

}  // namespace img2vm::cli
