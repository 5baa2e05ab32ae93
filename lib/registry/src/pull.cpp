#include "img2vm/registry/pull.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <ctime>
#include <deque>
#include <exception>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "img2vm/base/error.hpp"
#include "img2vm/registry/image_source.hpp"
#include "img2vm/registry/media_types.hpp"
#include "img2vm/registry/reference.hpp"

namespace img2vm::registry {

namespace {

std::string now_rfc3339() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// Wraps an Ingest to report progress and to stop when another download failed.
class ProgressSink : public BlobSink {
 public:
  ProgressSink(Ingest& in, const Descriptor& d, const std::function<void(const PullEvent&)>& report,
               const std::atomic<bool>& cancel, const std::atomic<bool>* interrupt)
      : in_(in), d_(d), report_(report), cancel_(cancel), interrupt_(interrupt) {}
  uint64_t offset() const override { return in_.offset(); }
  void restart() override {
    in_.restart();
    last_ = 0;
  }
  void write(const char* data, size_t len) override {
    if (interrupt_ && *interrupt_) throw Error(ErrorKind::kIo, "interrupted");
    if (cancel_) throw Error(ErrorKind::kIo, "cancelled");
    in_.write(data, len);
    downloaded += len;
    if (in_.offset() - last_ >= (512u << 10) || in_.offset() == static_cast<uint64_t>(d_.size)) {
      last_ = in_.offset();
      PullEvent e{PullEvent::Kind::kProgress,     {}, d_.digest, d_.media_type, in_.offset(),
                  static_cast<uint64_t>(d_.size), {}};
      report_(e);
    }
  }
  uint64_t downloaded = 0;

 private:
  Ingest& in_;
  const Descriptor& d_;
  const std::function<void(const PullEvent&)>& report_;
  const std::atomic<bool>& cancel_;
  const std::atomic<bool>* interrupt_;
  uint64_t last_ = 0;
};

// Copies a local blob into a sink (for oci: and docker-archive: sources).
void copy_local(const ImageSource& src, const Descriptor& d, BlobSink& sink) {
  if (sink.offset() > 0) sink.restart();
  auto r = src.open_blob(d);
  std::string buf(1 << 20, '\0');
  for (;;) {
    size_t n = r->read(buf.data(), buf.size());
    if (n == 0) break;
    sink.write(buf.data(), n);
  }
}

// Commits verified blobs (fsync, rename) on its own thread, in the order they finish, so that
// the download threads go on with the next blob instead of waiting for the disk.
class Committer {
 public:
  explicit Committer(std::function<void(const Descriptor&)> done)
      : done_(std::move(done)), thread_([this] { run(); }) {}
  ~Committer() {
    if (thread_.joinable()) finish();
  }
  void add(std::unique_ptr<Ingest> in, const Descriptor& d) {
    {
      std::lock_guard l(mu_);
      queue_.push_back({std::move(in), &d});
    }
    cv_.notify_one();
  }
  // Commits what is queued, stops the thread and returns the first error (null if none).
  std::exception_ptr finish() {
    {
      std::lock_guard l(mu_);
      closed_ = true;
    }
    cv_.notify_one();
    thread_.join();
    return error_;
  }
  bool failed() const { return failed_; }

 private:
  struct Item {
    std::unique_ptr<Ingest> in;
    const Descriptor* d;
  };
  void run() {
    for (;;) {
      Item it;
      {
        std::unique_lock l(mu_);
        cv_.wait(l, [&] { return closed_ || !queue_.empty(); });
        if (queue_.empty()) return;
        it = std::move(queue_.front());
        queue_.pop_front();
      }
      try {
        if (!error_) {
          it.in->commit(false);
          done_(*it.d);
        }
      } catch (...) {
        error_ = std::current_exception();
        failed_ = true;
      }
      it.in.reset();  // releases the blob's lock
    }
  }
  std::function<void(const Descriptor&)> done_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  bool closed_ = false;
  std::atomic<bool> failed_{false};
  std::exception_ptr error_;
  std::thread thread_;
};

struct Plan {
  std::string name;
  std::string source;
  Manifest manifest;
  std::string manifest_bytes;
  Descriptor manifest_desc;
  std::optional<std::string> index_bytes;
  std::optional<Digest> index_digest;
};

}  // namespace

PullResult pull(Store& store, const std::string& spec, const PullOptions& opts) {
  std::mutex report_mu;
  std::function<void(const PullEvent&)> report = [&](const PullEvent& e) {
    if (!opts.progress) return;
    std::lock_guard l(report_mu);
    opts.progress(e);
  };
  UniqueFd store_lock = store.lock_shared();

  Plan plan;
  std::unique_ptr<ImageSource> local;
  std::unique_ptr<Client> client;
  Reference ref;
  if (is_local_source(spec)) {
    local = open_image_source(spec, opts.platform);
    plan.name = local->name();
    plan.manifest = local->manifest();
    plan.manifest_bytes = local->manifest_bytes();
    plan.index_bytes = local->index_bytes();
    plan.index_digest = local->index_digest();
    plan.manifest_desc.platform = local->platform();
  } else {
    ref = Reference::parse(spec);
    plan.name = ref.str();
    ClientOptions co = opts.client;
    if (opts.interrupt) co.interrupt = opts.interrupt;
    client = std::make_unique<Client>(ref.registry, co);
    std::string top_bytes;
    std::string top_type;
    Digest top_digest;
    // Pulling by digest with everything already here needs no request at all.
    if (ref.digest && store.has_blob(*ref.digest)) {
      top_bytes = store.read_blob(*ref.digest, kMaxManifestBytes);
      top_digest = *ref.digest;
    } else {
      ManifestResponse m = client->get_manifest(ref.repository, ref.manifest_reference());
      if (ref.digest && m.digest != *ref.digest)
        throw Error(ErrorKind::kIntegrity, "manifest of " + plan.name +
                                               " does not match its digest: got " + m.digest.str());
      top_bytes = std::move(m.body);
      top_type = m.content_type;
      top_digest = m.digest;
    }
    ParsedManifest p = parse_manifest(top_bytes, top_type, "manifest of " + plan.name);
    if (p.index) {
      Descriptor child = select_platform(*p.index, opts.platform, plan.name);
      plan.index_bytes = top_bytes;
      plan.index_digest = top_digest;
      std::string child_bytes;
      if (store.has_blob(child.digest, child.size)) {
        child_bytes = store.read_blob(child.digest, kMaxManifestBytes);
      } else {
        ManifestResponse m = client->get_manifest(ref.repository, child.digest.str());
        if (m.digest != child.digest)
          throw Error(ErrorKind::kIntegrity, "manifest " + child.digest.str() + " of " + plan.name +
                                                 " does not match its digest: got " +
                                                 m.digest.str());
        child_bytes = std::move(m.body);
      }
      ParsedManifest c = parse_manifest(child_bytes, child.media_type,
                                        "manifest " + child.digest.str() + " of " + plan.name);
      if (!c.manifest)
        throw Error(ErrorKind::kUnsupported,
                    plan.name + ": an index inside an index is not supported");
      plan.manifest = *c.manifest;
      plan.manifest_bytes = std::move(child_bytes);
      plan.manifest_desc.platform = normalize(*child.platform);
    } else {
      plan.manifest = *p.manifest;
      plan.manifest_bytes = std::move(top_bytes);
    }
  }
  plan.manifest_desc.media_type = plan.manifest.media_type;
  plan.manifest_desc.digest = Digest::sha256_of(plan.manifest_bytes);
  plan.manifest_desc.size = static_cast<int64_t>(plan.manifest_bytes.size());

  // The blobs: config first, then layers, each once.
  std::vector<Descriptor> blobs{plan.manifest.config};
  std::set<std::string> seen{plan.manifest.config.digest.str()};
  for (const auto& l : plan.manifest.layers) {
    if (media_type::is_schema1(l.media_type)) continue;
    if (seen.insert(l.digest.str()).second) blobs.push_back(l);
  }
  if (plan.manifest.config.size > static_cast<int64_t>(kMaxConfigBytes))
    throw Error(ErrorKind::kLimit, plan.name + ": image config " +
                                       plan.manifest.config.digest.str() + " is too large");
  uint64_t total = 0;
  for (const auto& b : blobs) total += static_cast<uint64_t>(b.size);

  PullResult result;
  result.name = plan.name;
  result.manifest_digest = plan.manifest_desc.digest;
  result.size = total;
  {
    PullEvent e{PullEvent::Kind::kResolved,
                plan.name,
                plan.manifest_desc.digest,
                plan.manifest.media_type,
                0,
                total,
                {}};
    if (plan.manifest_desc.platform) e.platform = plan.manifest_desc.platform->str();
    report(e);
  }

  std::vector<Descriptor> todo;
  for (const auto& b : blobs) {
    if (store.has_blob(b.digest, b.size)) {
      report(PullEvent{PullEvent::Kind::kBlobCached,
                       {},
                       b.digest,
                       b.media_type,
                       static_cast<uint64_t>(b.size),
                       static_cast<uint64_t>(b.size),
                       {}});
    } else {
      todo.push_back(b);
    }
  }

  std::atomic<size_t> next{0};
  std::atomic<bool> cancel{false};
  std::atomic<uint64_t> downloaded{0};
  std::mutex err_mu;
  std::exception_ptr first_error;
  std::string repo = client ? ref.repository : "";
  Committer committer([&](const Descriptor& d) {
    report(PullEvent{PullEvent::Kind::kBlobDone,
                     {},
                     d.digest,
                     d.media_type,
                     static_cast<uint64_t>(d.size),
                     static_cast<uint64_t>(d.size),
                     {}});
  });
  auto worker = [&] {
    for (;;) {
      size_t i = next++;
      if (i >= todo.size() || cancel || committer.failed() || (opts.interrupt && *opts.interrupt))
        return;
      const Descriptor& d = todo[i];
      try {
        std::unique_ptr<Ingest> in = store.ingest(d);
        if (in->already_present()) {
          report(PullEvent{PullEvent::Kind::kBlobCached,
                           {},
                           d.digest,
                           d.media_type,
                           static_cast<uint64_t>(d.size),
                           static_cast<uint64_t>(d.size),
                           {}});
          continue;
        }
        report(PullEvent{PullEvent::Kind::kBlobStart,
                         {},
                         d.digest,
                         d.media_type,
                         in->resumed_from(),
                         static_cast<uint64_t>(d.size),
                         {}});
        ProgressSink sink(*in, d, report, cancel, opts.interrupt);
        auto fetch = [&] {
          if (client)
            client->get_blob(repo, d.digest, sink);
          else
            copy_local(*local, d, sink);
        };
        // A partial file that already holds the whole blob (a pull killed before its commit)
        // needs no request: it is verified like any download.
        if (!in->complete()) fetch();
        if (in->resumed_from() > 0 && !in->matches()) {
          // Bytes an earlier pull left behind were wrong: discard them, download the blob whole.
          if (opts.client.log)
            opts.client.log("blob " + d.digest.str() +
                            ": the partial download failed verification; downloading it whole");
          sink.restart();
          fetch();
        }
        in->verify();
        downloaded += sink.downloaded;
        committer.add(std::move(in), d);
      } catch (...) {
        std::lock_guard l(err_mu);
        if (!first_error) first_error = std::current_exception();
        cancel = true;
        return;
      }
    }
  };
  int jobs = std::clamp(opts.jobs, 1, 32);
  std::vector<std::thread> threads;
  for (int t = 0; t < std::min<int>(jobs, static_cast<int>(todo.size())); ++t)
    threads.emplace_back(worker);
  for (auto& t : threads) t.join();
  std::exception_ptr commit_error = committer.finish();
  if (commit_error && !first_error) first_error = commit_error;
  if (opts.interrupt && *opts.interrupt)
    throw Error(ErrorKind::kIo,
                "pull " + plan.name +
                    " interrupted: the partial downloads are kept and the next pull resumes them");
  if (first_error) {
    try {
      std::rethrow_exception(first_error);
    } catch (const Error& e) {
      throw e.with_context("pull " + plan.name);
    }
  }

  // Manifests last, so that an entry in index.json always has all its blobs.
  if (plan.index_bytes) store.put_blob(*plan.index_digest, *plan.index_bytes);
  store.put_blob(plan.manifest_desc.digest, plan.manifest_bytes);
  // The blobs were renamed into blobs/ without syncing the directory each time (so were those
  // another pull just stored and we found there): one fsync of it makes them all durable before
  // the entry that refers to them.
  store.sync_blobs();
  Platform plat;
  if (plan.manifest_desc.platform && !plan.manifest_desc.platform->empty()) {
    plat = *plan.manifest_desc.platform;
  } else {
    std::string cfg = store.read_blob(plan.manifest.config.digest, kMaxConfigBytes);
    auto j = nlohmann::json::parse(cfg, nullptr, false);
    if (j.is_object()) {
      plat.os = j.value("os", "");
      plat.architecture = j.value("architecture", "");
      plat.variant = j.value("variant", "");
    }
    plat = normalize(plat);
  }
  plan.manifest_desc.platform = plat;
  StoredImage img;
  img.name = plan.name;
  img.manifest = plan.manifest_desc;
  img.index_digest = plan.index_digest;
  img.pulled = now_rfc3339();
  img.manifest.annotations[std::string(kSourceAnnotation)] = spec;
  store.put_image(img);

  result.platform = plat;
  result.bytes_downloaded = downloaded;
  result.up_to_date = todo.empty();
  report(PullEvent{PullEvent::Kind::kDone, plan.name, plan.manifest_desc.digest,
                   plan.manifest.media_type, downloaded, total, plat.str()});
  return result;
}

}  // namespace img2vm::registry
