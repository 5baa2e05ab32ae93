// virtio-vsock (virtio 1.x, section 5.10) on the virtio-mmio transport, with its host side
// multiplexed onto unix sockets in the manner of Firecracker's "hybrid" vsock: no vhost-vsock
// module and no privilege are needed.
//
// Queues: 0 = rx (the guest posts empty buffers; the device fills them with packets for it),
// 1 = tx (packets from the guest), 2 = event (never used: no transport reset is ever sent).
// Every packet starts with the 44-byte little-endian header below; only stream sockets
// (type 1) exist. Config space: le64 guest_cid. Features: VERSION_1 only.
//
// Host side (`uds_path`):
// - host -> guest: the device listens on `uds_path`. A client connects, writes one line
//   `CONNECT <port>\n` (at most kMaxConnectLine bytes, keyword in any case) and the device asks
//   the guest (REQUEST from CID 2, a host port taken from [2^30, 2^31)). When the guest accepts
//   (RESPONSE) the client reads `OK <host port>\n` and the socket carries the stream; when it
//   refuses (RST), or does not answer within kTimeout, the client's socket is closed.
// - guest -> host: a REQUEST to (CID 2, port P) connects to the unix socket `<uds_path>_P`;
//   RESPONSE when that succeeds at once, RST otherwise (nothing listening, backlog full).
//
// Everything the guest sends is checked: descriptor directions and sizes (virtqueue.hpp for
// the chains themselves), src_cid (the guest's own), dst_cid (the host's; anything else is
// dropped), len (inside the chain, at most kMaxPayload), type (stream, else RST) and op (known,
// else RST). The guest's sends are held to the credit the device grants (kBufAlloc per
// connection: a guest that sends more is reset), so what is buffered towards a host peer that
// does not read is bounded; what the host sends is read only while kHostBuffer bytes of it
// wait for the guest, so a guest that does not read stops its host peer (that peer's writes
// block) instead of growing memory. At most kMaxConnections connections exist at a time.
//
// Threads: process_queues() runs under the transport's lock (the thread taking the queue
// notifications); handle_host() runs on the thread watching poll_fd(). A mutex of the device's
// own serialises the two.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "img2vm/base/fd.hpp"
#include "img2vm/base/unix_address.hpp"
#include "virtio_mmio.hpp"

namespace img2vm::vm {

// The packet header (struct virtio_vsock_hdr), decoded.
struct VsockHeader {
  uint64_t src_cid = 0, dst_cid = 0;
  uint32_t src_port = 0, dst_port = 0, len = 0;
  uint16_t type = 0, op = 0;
  uint32_t flags = 0, buf_alloc = 0, fwd_cnt = 0;

  static constexpr size_t kSize = 44;
  void encode(uint8_t* out) const;
  static VsockHeader decode(const uint8_t* in);
};

struct VirtioVsockStats {
  uint64_t tx_packets = 0;       // guest packets handled
  uint64_t rx_packets = 0;       // packets delivered to the guest
  uint64_t bad_chains = 0;       // malformed chains (either queue) returned unused
  uint64_t dropped = 0;          // guest packets dropped (wrong CID, bad length)
  uint64_t resets_sent = 0;      // RST packets delivered to the guest
  size_t connections = 0;        // open now (any state)
  size_t to_host_buffered = 0;   // guest bytes waiting for host peers (all connections)
  size_t to_guest_buffered = 0;  // host bytes waiting for the guest (all connections)
};

class VirtioVsock final : public VirtioDevice {
 public:
  static constexpr unsigned kRxQueue = 0, kTxQueue = 1, kEventQueue = 2;
  static constexpr uint64_t kHostCid = 2;
  static constexpr uint16_t kTypeStream = 1;
  static constexpr uint16_t kOpRequest = 1, kOpResponse = 2, kOpRst = 3, kOpShutdown = 4, kOpRw = 5,
                            kOpCreditUpdate = 6, kOpCreditRequest = 7;
  static constexpr uint32_t kShutdownRcv = 1, kShutdownSend = 2;
  static constexpr uint32_t kMaxPayload = 64 * 1024;  // per packet, either way
  // Credit granted to the guest per connection: 256 KiB (Linux's own default) lets a stream
  // run on without waiting for each CREDIT_UPDATE (64 KiB halved what exec streams got);
  // connections are capped so that what waits for host peers stays at 64 MiB at most.
  static constexpr uint32_t kBufAlloc = 256 * 1024;
  static constexpr size_t kHostBuffer = 32 * 1024;          // host bytes read ahead per connection
  static constexpr uint32_t kCreditThreshold = 128 * 1024;  // send CREDIT_UPDATE below this
  static constexpr size_t kMaxConnections = 256;
  static constexpr size_t kMaxResets = 1024;  // RSTs waiting for rx buffers; tx pauses beyond
  static constexpr size_t kMaxConnectLine = 32;
  static constexpr std::chrono::milliseconds kTimeout{2000};
  static constexpr uint32_t kFirstHostPort = 1u << 30, kEndHostPort = 1u << 31;

  // Listens on `uds_path`, which must not exist; the caller removes it (and any
  // `<uds_path>_<port>` of its own) afterwards: under the VMM's seccomp filters the thread
  // that destroys the device may not unlink files. Throws
  // Error for a reserved CID (0, 1, 2, 0xffffffff and above 32 bits) or a path that cannot be
  // bound. An empty `uds_path`: a device without a host side (nothing listens, every
  // connection the guest asks for is refused), for a machine that needs the device's shape
  // only (a snapshot's machine resumed without an exec agent).
  // `max_connections` (at most kMaxConnections) is lowered by tests only.
  VirtioVsock(uint64_t guest_cid, std::filesystem::path uds_path,
              size_t max_connections = kMaxConnections);
  ~VirtioVsock() override;

  // How the device gets packets for the guest delivered when the host side produced them: the
  // owner sets this to call VirtioMmio::notify().
  void set_kick(std::function<void()> kick) { kick_ = std::move(kick); }
  // An epoll fd, readable when a host socket needs attention: call handle_host() then.
  int poll_fd() const noexcept { return ep_.get(); }
  // Milliseconds until the next connection deadline (to wait at most that long before
  // calling handle_host() again), or -1 when none.
  int timeout_ms() const;
  // Accepts, reads and writes whatever host sockets are ready, expires deadlines; kicks when
  // there is something new for the guest. Never blocks.
  void handle_host();

  uint32_t device_id() const override { return 19; }
  uint64_t features() const override { return kVirtioFVersion1; }
  unsigned num_queues() const override { return 3; }
  std::span<const uint8_t> config() const override { return config_; }
  bool process(const GuestMemory& mem, SplitQueue& queue) override;  // unused: process_queues
  bool process_queues(const GuestMemory& mem, std::span<SplitQueue> queues,
                      uint64_t features) override;
  void reset() override;

  // Snapshots (docs/snapshots.md): the device's own state is its CID (the guest's driver read
  // it once, at probe), which a restored device must have too. A snapshot holds no connection:
  // saving refuses one the guest knows of (anything past a client's CONNECT line), and a
  // restored device starts with none.
  struct SavedState {
    uint64_t guest_cid = 0;
    uint32_t reserved[2] = {};
  };
  bool snapshot_supported() const override { return true; }
  std::vector<uint8_t> save_state() const override;
  void load_state(std::span<const uint8_t> state) override;

  uint64_t guest_cid() const noexcept { return cid_; }
  const std::filesystem::path& uds_path() const noexcept { return path_; }
  VirtioVsockStats stats() const;

 private:
  enum class State { kLine, kConnecting, kEstablished, kClosing };
  // Control packets a connection owes the guest (Conn::pending bits).
  static constexpr unsigned kPendRequest = 1, kPendResponse = 2, kPendCredit = 4, kPendShutdown = 8;
  struct Conn {
    uint64_t id = 0;
    UniqueFd fd;
    State state = State::kLine;
    uint32_t local_port = 0, peer_port = 0;                     // host side, guest side
    std::string line;                                           // kLine: the CONNECT line so far
    std::vector<uint8_t> to_guest, to_host;                     // buffered either way
    uint32_t rx_cnt = 0, fwd_cnt = 0, fwd_told = 0;             // guest -> host accounting
    uint32_t tx_cnt = 0, peer_buf_alloc = 0, peer_fwd_cnt = 0;  // host -> guest
    uint32_t guest_shutdown = 0;                                // flags the guest sent
    bool host_eof = false, hup = false, reset_when_flushed = false, host_write_shut = false;
    unsigned pending = 0;
    std::chrono::steady_clock::time_point deadline{};  // kLine, kConnecting, kClosing
    uint32_t interest = 0;
    bool registered = false;
  };
  struct Reset {
    uint32_t local_port, peer_port;
  };

  static uint64_t key(uint32_t local, uint32_t peer) { return uint64_t(local) << 32 | peer; }
  Conn* find(uint32_t local, uint32_t peer);
  void drop_conn(Conn& c, bool send_rst);  // removes it (queueing an RST to the guest)
  void queue_rst(uint32_t local, uint32_t peer);
  void update_interest(Conn& c);
  void accept_clients();
  // These return false (or void) after dropping `c`: it must not be used then.
  void read_line(Conn& c);
  bool read_host(Conn& c);
  bool flush_to_host(Conn& c);
  void host_event(Conn& c, uint32_t events);
  bool expire();
  void maybe_finish(Conn& c);

  bool transmit(const GuestMemory& mem, SplitQueue& q);
  void guest_packet(const VsockHeader& h, std::span<const uint8_t> payload);
  void guest_connect(const VsockHeader& h);
  bool deliver(const GuestMemory& mem, SplitQueue& q);
  uint32_t peer_credit(const Conn& c) const;
  VsockHeader header_for(const Conn& c, uint16_t op) const;

  uint64_t cid_;
  std::filesystem::path path_;
  std::optional<UnixAddress> addr_;  // path_ as bind/connect see it; none without a host side
  size_t max_conns_;
  std::array<uint8_t, 8> config_{};
  UniqueFd listen_fd_, ep_;
  std::function<void()> kick_;

  mutable std::mutex mu_;
  std::unordered_map<uint64_t, std::unique_ptr<Conn>> conns_;  // by id
  std::map<uint64_t, uint64_t> by_key_;                        // key() -> id
  std::deque<Reset> resets_;
  uint64_t next_id_ = 1;
  uint32_t next_host_port_ = kFirstHostPort;
  bool listener_paused_ = false;  // out of fds: accepting resumes when a connection closes
  std::vector<uint8_t> buf_;      // one tx packet's payload gathered
  uint64_t tx_packets_ = 0, rx_packets_ = 0, bad_chains_ = 0, dropped_ = 0, resets_sent_ = 0;
};

}  // namespace img2vm::vm
