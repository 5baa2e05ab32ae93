#include "img2vm/registry/pull.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <ctime>
#include <deque>
#include <exception>
#include <mutex>
#include <set>
#include <thread>

#include "img2vm/base/error.hpp"
#include "img2vm/registry/image_source.hpp"
#include "img2vm/registry/media_types.hpp"
#include "img2vm/registry/reference.hpp"
#include "platform_json.hpp"

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

using Report = std::function<void(const PullEvent&)>;

// An event about blob `d`: `current` of its bytes.
PullEvent blob_event(PullEvent::Kind kind, const Descriptor& d, uint64_t current) {
  return PullEvent{kind, {}, d.digest, d.media_type, current, static_cast<uint64_t>(d.size), {}};
}

// Wraps an Ingest to report progress and to stop when another download failed.
class ProgressSink : public BlobSink {
 public:
  ProgressSink(Ingest& in, const Descriptor& d, const Report& report,
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
      report_(blob_event(PullEvent::Kind::kProgress, d_, in_.offset()));
    }
  }
  uint64_t downloaded = 0;

 private:
  Ingest& in_;
  const Descriptor& d_;
  const Report& report_;
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

// What a pull stores: the image manifest (and the index it was chosen from), and where its blobs
// come from: a local source or a registry.
struct Plan {
  std::string name;
  std::unique_ptr<ImageSource> local;  // oci: and docker-archive: sources
  std::unique_ptr<Client> client;      // a registry
  std::string repository;              // on that registry
  Manifest manifest;
  std::string manifest_bytes;
  Descriptor manifest_desc;
  std::optional<std::string> index_bytes;
  std::optional<Digest> index_digest;
};

// An oci: or docker-archive: source, resolved by the source itself.
Plan resolve_local(const std::string& spec, const PullOptions& opts) {
  Plan plan;
  plan.local = open_image_source(spec, opts.platform);
  plan.name = plan.local->name();
  plan.manifest = plan.local->manifest();
  plan.manifest_bytes = plan.local->manifest_bytes();
  plan.index_bytes = plan.local->index_bytes();
  plan.index_digest = plan.local->index_digest();
  plan.manifest_desc.platform = plan.local->platform();
  return plan;
}

// Manifest `reference` of the plan's repository, named `what` in errors. When its `digest` is
// known and the store has it (with `size`, -1 for any), it is read from there without a request;
// otherwise what the registry serves must hash to that digest.
ManifestResponse fetch_manifest(Store& store, const Plan& plan, const std::string& reference,
                                const std::optional<Digest>& digest, int64_t size,
                                const std::string& what) {
  if (digest && store.has_blob(*digest, size))
    return ManifestResponse{store.read_blob(*digest, kMaxManifestBytes), {}, {}, *digest};
  ManifestResponse m = plan.client->get_manifest(plan.repository, reference);
  if (digest && m.digest != *digest)
    throw Error(ErrorKind::kIntegrity, what + " does not match its digest: got " + m.digest.str());
  return m;
}

// The image manifest for `want` out of `index` (fetched as `top`), into the plan.
void choose_from_index(Store& store, Plan& plan, const Index& index, ManifestResponse top,
                       const Platform& want) {
  Descriptor child = select_platform(index, want, plan.name);
  plan.index_bytes = std::move(top.body);
  plan.index_digest = top.digest;
  std::string what = "manifest " + child.digest.str() + " of " + plan.name;
  ManifestResponse m =
      fetch_manifest(store, plan, child.digest.str(), child.digest, child.size, what);
  ParsedManifest c = parse_manifest(m.body, child.media_type, what);
  if (!c.manifest)
    throw Error(ErrorKind::kUnsupported, plan.name + ": an index inside an index is not supported");
  plan.manifest = *c.manifest;
  plan.manifest_bytes = std::move(m.body);
  // An entry without a platform leaves it to the image config (record_image).
  if (child.platform) plan.manifest_desc.platform = normalize(*child.platform);
}

// A registry reference: its manifest, or the one an index holds for the wanted platform.
Plan resolve_remote(Store& store, const std::string& spec, const PullOptions& opts) {
  Plan plan;
  Reference ref = Reference::parse(spec);
  plan.name = ref.str();
  plan.repository = ref.repository;
  ClientOptions co = opts.client;
  if (opts.interrupt) co.interrupt = opts.interrupt;
  plan.client = std::make_unique<Client>(ref.registry, co);
  std::string what = "manifest of " + plan.name;
  // Pulling by digest with everything already here needs no request at all.
  ManifestResponse top =
      fetch_manifest(store, plan, ref.manifest_reference(), ref.digest, -1, what);
  ParsedManifest p = parse_manifest(top.body, top.content_type, what);
  if (p.index) {
    choose_from_index(store, plan, *p.index, std::move(top), opts.platform);
  } else {
    plan.manifest = *p.manifest;
    plan.manifest_bytes = std::move(top.body);
  }
  return plan;
}

// The plan for `spec`, with the descriptor of its image manifest filled in.
Plan resolve(Store& store, const std::string& spec, const PullOptions& opts) {
  Plan plan = is_local_source(spec) ? resolve_local(spec, opts) : resolve_remote(store, spec, opts);
  plan.manifest_desc.media_type = plan.manifest.media_type;
  plan.manifest_desc.digest = Digest::sha256_of(plan.manifest_bytes);
  plan.manifest_desc.size = static_cast<int64_t>(plan.manifest_bytes.size());
  return plan;
}

// The blobs of the image: config first, then layers, each once.
std::vector<Descriptor> blobs_of(const Plan& plan) {
  if (plan.manifest.config.size > static_cast<int64_t>(kMaxConfigBytes))
    throw Error(ErrorKind::kLimit, plan.name + ": image config " +
                                       plan.manifest.config.digest.str() + " is too large");
  std::vector<Descriptor> blobs{plan.manifest.config};
  std::set<std::string> seen{plan.manifest.config.digest.str()};
  for (const auto& l : plan.manifest.layers) {
    if (media_type::is_schema1(l.media_type)) continue;
    if (seen.insert(l.digest.str()).second) blobs.push_back(l);
  }
  return blobs;
}

// Those of `blobs` the store lacks; the others are reported as cached.
std::vector<Descriptor> missing_blobs(const Store& store, const std::vector<Descriptor>& blobs,
                                      const Report& report) {
  std::vector<Descriptor> todo;
  for (const auto& b : blobs) {
    if (store.has_blob(b.digest, b.size))
      report(blob_event(PullEvent::Kind::kBlobCached, b, static_cast<uint64_t>(b.size)));
    else
      todo.push_back(b);
  }
  return todo;
}

// What the download threads share.
struct Downloads {
  Store& store;
  const Plan& plan;
  const PullOptions& opts;
  const Report& report;
  std::atomic<bool> cancel{false};
  std::atomic<uint64_t> downloaded{0};
};

// Blob `d` downloaded (or resumed) into the store's ingest directory and verified, ready to
// commit; null when another pull stored it meanwhile.
std::unique_ptr<Ingest> download_blob(Downloads& dl, const Descriptor& d) {
  std::unique_ptr<Ingest> in = dl.store.ingest(d);
  if (in->already_present()) {
    dl.report(blob_event(PullEvent::Kind::kBlobCached, d, static_cast<uint64_t>(d.size)));
    return nullptr;
  }
  dl.report(blob_event(PullEvent::Kind::kBlobStart, d, in->resumed_from()));
  ProgressSink sink(*in, d, dl.report, dl.cancel, dl.opts.interrupt);
  auto fetch = [&] {
    if (dl.plan.client)
      dl.plan.client->get_blob(dl.plan.repository, d.digest, sink);
    else
      copy_local(*dl.plan.local, d, sink);
  };
  // A partial file that already holds the whole blob (a pull killed before its commit)
  // needs no request: it is verified like any download.
  if (!in->complete()) fetch();
  if (in->resumed_from() > 0 && !in->matches()) {
    // Bytes an earlier pull left behind were wrong: discard them, download the blob whole.
    if (dl.opts.client.log)
      dl.opts.client.log("blob " + d.digest.str() +
                         ": the partial download failed verification; downloading it whole");
    sink.restart();
    fetch();
  }
  in->verify();
  dl.downloaded += sink.downloaded;
  return in;
}

// Downloads the blobs of `todo`, up to opts.jobs at a time, and commits them into the store as
// they are verified; returns the bytes downloaded. The first error stops the others and is
// thrown (with the pull as context), as is an interruption.
uint64_t download_blobs(Store& store, const Plan& plan, const std::vector<Descriptor>& todo,
                        const PullOptions& opts, const Report& report) {
  Downloads dl{store, plan, opts, report};
  std::atomic<size_t> next{0};
  std::mutex err_mu;
  std::exception_ptr first_error;
  Committer committer([&](const Descriptor& d) {
    report(blob_event(PullEvent::Kind::kBlobDone, d, static_cast<uint64_t>(d.size)));
  });
  auto worker = [&] {
    for (;;) {
      size_t i = next++;
      if (i >= todo.size() || dl.cancel || committer.failed() ||
          (opts.interrupt && *opts.interrupt))
        return;
      try {
        if (std::unique_ptr<Ingest> in = download_blob(dl, todo[i]))
          committer.add(std::move(in), todo[i]);
      } catch (...) {
        std::lock_guard l(err_mu);
        if (!first_error) first_error = std::current_exception();
        dl.cancel = true;
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
  return dl.downloaded;
}

// The image's platform: the one its index entry named, else the one its config (now in the
// store) declares.
Platform platform_of(const Store& store, const Plan& plan) {
  if (plan.manifest_desc.platform && !plan.manifest_desc.platform->empty())
    return *plan.manifest_desc.platform;
  const Descriptor& config = plan.manifest.config;
  return platform_of_config(store.read_blob(config.digest, kMaxConfigBytes),
                            "image config " + config.digest.str() + " of " + plan.name);
}

// Stores the manifests (after the blobs they refer to) and the image entry for `spec`; returns
// the image's platform.
Platform record_image(Store& store, Plan& plan, const std::string& spec) {
  // Manifests last, so that an entry in index.json always has all its blobs.
  if (plan.index_bytes) store.put_blob(*plan.index_digest, *plan.index_bytes);
  store.put_blob(plan.manifest_desc.digest, plan.manifest_bytes);
  // The blobs were renamed into blobs/ without syncing the directory each time (so were those
  // another pull just stored and we found there): one fsync of it makes them all durable before
  // the entry that refers to them.
  store.sync_blobs();
  Platform plat = platform_of(store, plan);
  plan.manifest_desc.platform = plat;
  StoredImage img;
  img.name = plan.name;
  img.manifest = plan.manifest_desc;
  img.index_digest = plan.index_digest;
  img.pulled = now_rfc3339();
  img.manifest.annotations[std::string(kSourceAnnotation)] = spec;
  store.put_image(img);
  return plat;
}

}  // namespace

PullResult pull(Store& store, const std::string& spec, const PullOptions& opts) {
  std::mutex report_mu;
  Report report = [&](const PullEvent& e) {
    if (!opts.progress) return;
    std::lock_guard l(report_mu);
    opts.progress(e);
  };
  UniqueFd store_lock = store.lock_shared();

  Plan plan = resolve(store, spec, opts);
  std::vector<Descriptor> blobs = blobs_of(plan);
  uint64_t total = 0;
  for (const auto& b : blobs) total += static_cast<uint64_t>(b.size);
  PullEvent resolved{PullEvent::Kind::kResolved,
                     plan.name,
                     plan.manifest_desc.digest,
                     plan.manifest.media_type,
                     0,
                     total,
                     {}};
  if (plan.manifest_desc.platform) resolved.platform = plan.manifest_desc.platform->str();
  report(resolved);

  std::vector<Descriptor> todo = missing_blobs(store, blobs, report);
  uint64_t downloaded = download_blobs(store, plan, todo, opts, report);
  Platform plat = record_image(store, plan, spec);

  PullResult result;
  result.name = plan.name;
  result.manifest_digest = plan.manifest_desc.digest;
  result.size = total;
  result.platform = plat;
  result.bytes_downloaded = downloaded;
  result.up_to_date = todo.empty();
  report(PullEvent{PullEvent::Kind::kDone, plan.name, plan.manifest_desc.digest,
                   plan.manifest.media_type, downloaded, total, plat.str()});
  return result;
}

}  // namespace img2vm::registry
