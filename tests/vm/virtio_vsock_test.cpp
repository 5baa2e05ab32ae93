// virtio-vsock against synthetic guest memory, driven through the virtio-mmio registers as a
// guest driver would, with real unix sockets on the host side (in a temporary directory): the
// CONNECT handshake, guest connections to `<uds>_<port>`, data and credit both ways, shutdown
// and reset, malicious chains and headers, the connection limit and bounded buffering.
#include "virtio_vsock.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/base/unix_address.hpp"
#include "img2vm/vm/seccomp.hpp"
#include "virtio_mmio.hpp"

using namespace img2vm;
using namespace img2vm::vm;

namespace {

using Bytes = std::vector<uint8_t>;
using V = VirtioVsock;

constexpr uint16_t kQ = 64;
constexpr uint64_t kDesc[3] = {0x1000, 0x4000, 0x7000}, kAvail[3] = {0x2000, 0x5000, 0x8000},
                   kUsed[3] = {0x3000, 0x6000, 0x9000};
constexpr uint64_t kTxBuf = 0x80000;
constexpr uint32_t kRxLen = 4096 + 44;
constexpr uint64_t kCid = 3;

struct Pkt {
  VsockHeader h;
  Bytes data;
};

VsockHeader guest_hdr(uint16_t op, uint32_t src_port, uint32_t dst_port,
                      uint32_t buf_alloc = 1 << 18, uint32_t fwd_cnt = 0) {
  VsockHeader h;
  h.src_cid = kCid;
  h.dst_cid = V::kHostCid;
  h.src_port = src_port;
  h.dst_port = dst_port;
  h.type = V::kTypeStream;
  h.op = op;
  h.buf_alloc = buf_alloc;
  h.fwd_cnt = fwd_cnt;
  return h;
}

Bytes bytes_of(std::string_view s) { return Bytes(s.begin(), s.end()); }

UniqueFd unix_connect(const std::filesystem::path& p) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  UnixAddress a(p);
  if (::connect(fd.get(), a.get(), a.size()) != 0) return UniqueFd();
  return fd;
}

UniqueFd unix_listen(const std::filesystem::path& p) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  UnixAddress a(p);
  if (::bind(fd.get(), a.get(), a.size()) != 0 || ::listen(fd.get(), 16) != 0) return UniqueFd();
  return fd;
}

// `dir`/`sub`/v.sock, the directories made.
std::filesystem::path socket_in(const TempDir& dir, const std::filesystem::path& sub) {
  std::filesystem::create_directories(dir.path() / sub);
  return dir.path() / sub / "v.sock";
}

// What is readable now, without waiting (the device's writes are synchronous).
std::string recv_now(int fd, size_t max = 1 << 20) {
  std::string out(max, '\0');
  ssize_t n = ::recv(fd, out.data(), max, MSG_DONTWAIT);
  out.resize(n > 0 ? size_t(n) : 0);
  return out;
}
// True when the peer closed: EOF now, or a reset (it closed with our bytes unread).
bool at_eof(int fd) {
  char c;
  ssize_t n = ::recv(fd, &c, 1, MSG_DONTWAIT);
  return n == 0 || (n < 0 && errno == ECONNRESET);
}

struct VsockRig {
  TempDir dir{"vsock-test"};
  std::filesystem::path uds;
  GuestMemory mem{1u << 20};
  VirtioVsock vsock;
  VirtioMmio mmio;
  int interrupts = 0;
  uint16_t avail_idx[3] = {0, 0, 0};
  uint16_t rx_seen = 0;
  bool repost = true;  // hand each rx buffer back once its packet was read

  explicit VsockRig(size_t max_conns = V::kMaxConnections, bool post_rx = true,
                    const std::filesystem::path& sub = {}, bool host_side = true)
      : uds(socket_in(dir, sub)),
        vsock(kCid, host_side ? uds : std::filesystem::path(), max_conns),
        mmio(mem, vsock, [this] { ++interrupts; }) {
    vsock.set_kick([this] { mmio.notify(); });
    wr(0x070, 0);
    wr(0x070, 3);
    wr(0x024, 1);
    wr(0x020, 1);  // VERSION_1
    wr(0x070, 11);
    for (uint32_t q = 0; q < 3; ++q) {
      wr(0x030, q);
      wr(0x038, kQ);
      wr(0x080, uint32_t(kDesc[q]));
      wr(0x090, uint32_t(kAvail[q]));
      wr(0x0a0, uint32_t(kUsed[q]));
      wr(0x044, 1);
    }
    wr(0x070, 15);
    for (uint16_t i = 0; post_rx && i < kQ; ++i) {
      desc(0, i, rx_buf(i), kRxLen, SplitQueue::kDescWrite);
      post(0, i);
    }
  }
  void wr(uint64_t off, uint32_t v) { mmio.write(off, reinterpret_cast<const uint8_t*>(&v), 4); }
  uint32_t rd(uint64_t off) {
    uint32_t v = 0;
    mmio.read(off, reinterpret_cast<uint8_t*>(&v), 4);
    return v;
  }
  static uint64_t rx_buf(uint16_t i) { return 0x10000 + uint64_t(i) * 0x1100; }
  void desc(unsigned q, uint16_t i, uint64_t addr, uint32_t len, uint16_t flags,
            uint16_t next = 0) {
    uint64_t d = kDesc[q] + 16 * uint64_t(i);
    mem.store<uint64_t>(d, addr);
    mem.store<uint32_t>(d + 8, len);
    mem.store<uint16_t>(d + 12, flags);
    mem.store<uint16_t>(d + 14, next);
  }
  void post(unsigned q, uint16_t head) {
    mem.store<uint16_t>(kAvail[q] + 4 + 2 * (avail_idx[q] % kQ), head);
    mem.store<uint16_t>(kAvail[q] + 2, ++avail_idx[q]);
  }
  void notify() { wr(0x050, 1); }
  uint16_t used_idx(unsigned q) { return *mem.load<uint16_t>(kUsed[q] + 2); }

  // Sends one tx packet: header + payload, cut into descriptors at `cuts` (offsets).
  void send(const VsockHeader& hdr, const Bytes& payload = {}, std::vector<size_t> cuts = {}) {
    VsockHeader h = hdr;
    if (h.len == 0) h.len = uint32_t(payload.size());
    Bytes all(VsockHeader::kSize);
    h.encode(all.data());
    all.insert(all.end(), payload.begin(), payload.end());
    send_raw(all, std::move(cuts));
  }
  void send_raw(const Bytes& all, std::vector<size_t> cuts = {}, uint16_t last_flags = 0) {
    mem.write(kTxBuf, all.data(), all.size());
    cuts.insert(cuts.begin(), 0);
    cuts.push_back(all.size());
    for (size_t i = 0; i + 1 < cuts.size(); ++i) {
      bool last = i + 2 == cuts.size();
      desc(1, uint16_t(i), kTxBuf + cuts[i], uint32_t(cuts[i + 1] - cuts[i]),
           last ? last_flags : SplitQueue::kDescNext, uint16_t(i + 1));
    }
    post(1, 0);
    notify();
  }
  // The packets delivered since last asked (their buffers are posted again).
  std::vector<Pkt> packets() {
    std::vector<Pkt> out;
    while (rx_seen != used_idx(0)) {
      uint64_t e = kUsed[0] + 4 + 8 * uint64_t(rx_seen++ % kQ);
      uint32_t id = *mem.load<uint32_t>(e), len = *mem.load<uint32_t>(e + 4);
      EXPECT_LT(id, kQ);
      EXPECT_LE(len, kRxLen);
      if (id >= kQ || len > kRxLen) continue;
      if (len >= VsockHeader::kSize) {
        Pkt p;
        Bytes raw(len);
        mem.read(rx_buf(uint16_t(id)), raw.data(), len);
        p.h = VsockHeader::decode(raw.data());
        EXPECT_EQ(p.h.len, len - VsockHeader::kSize);
        p.data.assign(raw.begin() + VsockHeader::kSize, raw.end());
        out.push_back(std::move(p));
      }
      if (repost) {
        desc(0, uint16_t(id), rx_buf(uint16_t(id)), kRxLen, SplitQueue::kDescWrite);
        post(0, uint16_t(id));
      }
    }
    return out;
  }
  // The one packet delivered since last asked.
  Pkt one() {
    auto p = packets();
    EXPECT_EQ(p.size(), 1u);
    return p.empty() ? Pkt{} : p[0];
  }

  // A host client through the CONNECT handshake to guest port `port`, accepted by the guest.
  // Returns the client and the host port the guest sees.
  std::pair<UniqueFd, uint32_t> host_connect(uint32_t port, uint32_t guest_buf = 1 << 18) {
    UniqueFd c = unix_connect(uds);
    EXPECT_TRUE(c);
    std::string line = "CONNECT " + std::to_string(port) + "\n";
    EXPECT_EQ(::write(c.get(), line.data(), line.size()), ssize_t(line.size()));
    vsock.handle_host();
    Pkt req = one();
    EXPECT_EQ(req.h.op, V::kOpRequest);
    EXPECT_EQ(req.h.dst_port, port);
    send(guest_hdr(V::kOpResponse, port, req.h.src_port, guest_buf));
    EXPECT_EQ(recv_now(c.get()), "OK " + std::to_string(req.h.src_port) + "\n");
    return {std::move(c), req.h.src_port};
  }
};

}  // namespace

TEST(VirtioVsock, DeviceIdFeaturesAndConfig) {
  VsockRig r;
  EXPECT_EQ(r.rd(0x008), 19u);
  r.wr(0x014, 0);
  EXPECT_EQ(r.rd(0x010), 0u);
  r.wr(0x014, 1);
  EXPECT_EQ(r.rd(0x010), 1u) << "VERSION_1 only";
  uint8_t cfg[8];
  for (unsigned i = 0; i < 8; ++i) r.mmio.read(0x100 + i, cfg + i, 1);
  uint64_t cid = 0;
  for (unsigned i = 0; i < 8; ++i) cid |= uint64_t(cfg[i]) << (8 * i);
  EXPECT_EQ(cid, kCid);
  EXPECT_TRUE(std::filesystem::exists(r.uds));

  TempDir d("vsock-cid");
  for (uint64_t bad : {0ull, 1ull, 2ull, 0xffffffffull, 1ull << 32})
    EXPECT_THROW(VirtioVsock(bad, d.path() / "x"), Error) << bad;
  EXPECT_THROW(VirtioVsock(3, d.path() / std::string(100, 'a')), Error) << "path too long";
  EXPECT_THROW(VirtioVsock(4, r.uds), Error) << "path already bound";
  VirtioVsock ok(4, d.path() / "y");
  EXPECT_EQ(ok.guest_cid(), 4u);
}

TEST(VirtioVsock, HostConnectHandshakeAndDataBothWays) {
  VsockRig r;
  UniqueFd c = unix_connect(r.uds);
  ASSERT_TRUE(c);
  // Keyword in any case; bytes after the line are the stream's first bytes.
  std::string first = "cOnNeCt 1234\nearly";
  ASSERT_EQ(::write(c.get(), first.data(), first.size()), ssize_t(first.size()));
  r.vsock.handle_host();
  Pkt req = r.one();
  EXPECT_EQ(req.h.op, V::kOpRequest);
  EXPECT_EQ(req.h.src_cid, V::kHostCid);
  EXPECT_EQ(req.h.dst_cid, kCid);
  EXPECT_EQ(req.h.dst_port, 1234u);
  EXPECT_GE(req.h.src_port, V::kFirstHostPort);
  EXPECT_LT(req.h.src_port, V::kEndHostPort);
  EXPECT_EQ(req.h.buf_alloc, V::kBufAlloc);
  const uint32_t hp = req.h.src_port;
  EXPECT_EQ(recv_now(c.get()), "") << "nothing before the guest accepts";

  r.send(guest_hdr(V::kOpResponse, 1234, hp));
  EXPECT_EQ(recv_now(c.get()), "OK " + std::to_string(hp) + "\n");
  r.vsock.handle_host();
  Pkt early = r.one();
  EXPECT_EQ(early.h.op, V::kOpRw);
  EXPECT_EQ(early.data, bytes_of("early"));

  ASSERT_EQ(::write(c.get(), "hello", 5), 5);
  r.vsock.handle_host();
  Pkt rw = r.one();
  EXPECT_EQ(rw.h.op, V::kOpRw);
  EXPECT_EQ(rw.h.src_port, hp);
  EXPECT_EQ(rw.h.dst_port, 1234u);
  EXPECT_EQ(rw.data, bytes_of("hello"));

  // Guest to host, the header and the payload in separate descriptors.
  r.send(guest_hdr(V::kOpRw, 1234, hp), bytes_of("world!"), {44});
  EXPECT_EQ(recv_now(c.get()), "world!");
  r.send(guest_hdr(V::kOpCreditRequest, 1234, hp));
  Pkt cu = r.one();
  EXPECT_EQ(cu.h.op, V::kOpCreditUpdate);
  EXPECT_EQ(cu.h.fwd_cnt, 6u) << "the bytes passed to the host peer";
  EXPECT_EQ(cu.h.buf_alloc, V::kBufAlloc);
  EXPECT_EQ(r.vsock.stats().connections, 1u);
}

TEST(VirtioVsock, HostToGuestDataStaysWithinTheGuestsCredit) {
  VsockRig r;
  auto [c, hp] = r.host_connect(80, /*guest_buf=*/100);
  std::string data(300, 'x');
  for (size_t i = 0; i < data.size(); ++i) data[i] = char('a' + i % 26);
  ASSERT_EQ(::write(c.get(), data.data(), data.size()), 300);
  r.vsock.handle_host();
  Pkt p = r.one();
  EXPECT_EQ(p.data, bytes_of(std::string_view(data).substr(0, 100)));
  r.vsock.handle_host();
  r.notify();
  EXPECT_TRUE(r.packets().empty()) << "no credit left";
  // The guest read 60 bytes: 60 more may come.
  r.send(guest_hdr(V::kOpCreditUpdate, 80, hp, 100, 60));
  p = r.one();
  EXPECT_EQ(p.data, bytes_of(std::string_view(data).substr(100, 60)));
  r.send(guest_hdr(V::kOpCreditUpdate, 80, hp, 1000, 160));
  p = r.one();
  EXPECT_EQ(p.data, bytes_of(std::string_view(data).substr(160)));
}

TEST(VirtioVsock, HostConnectRefusedMalformedOrUnanswered) {
  VsockRig r;
  // The guest refuses: the client's socket is closed.
  UniqueFd c = unix_connect(r.uds);
  ASSERT_EQ(::write(c.get(), "CONNECT 7\n", 10), 10);
  r.vsock.handle_host();
  Pkt req = r.one();
  r.send(guest_hdr(V::kOpRst, 7, req.h.src_port));
  EXPECT_TRUE(at_eof(c.get()));
  EXPECT_EQ(r.vsock.stats().connections, 0u);

  // Malformed lines: closed, and the guest hears of none of them.
  for (std::string bad :
       std::vector<std::string>{"HELLO 7\n", "CONNECT\n", "CONNECT x\n", "CONNECT  7\n",
                                "CONNECT 4294967296\n", std::string(40, 'C')}) {
    UniqueFd b = unix_connect(r.uds);
    ASSERT_EQ(::write(b.get(), bad.data(), bad.size()), ssize_t(bad.size()));
    r.vsock.handle_host();
    r.vsock.handle_host();
    EXPECT_TRUE(at_eof(b.get())) << bad;
  }
  r.notify();
  EXPECT_TRUE(r.packets().empty());
  EXPECT_EQ(r.vsock.stats().connections, 0u);

  // No answer: closed after the timeout (and the guest gets an RST for the flow).
  UniqueFd u = unix_connect(r.uds);
  ASSERT_EQ(::write(u.get(), "CONNECT 9\n", 10), 10);
  r.vsock.handle_host();
  ASSERT_EQ(r.one().h.op, V::kOpRequest);
  ASSERT_GE(r.vsock.timeout_ms(), 0);
  for (int i = 0; i < 100 && !at_eof(u.get()); ++i) {
    pollfd p{r.vsock.poll_fd(), POLLIN, 0};
    ::poll(&p, 1, r.vsock.timeout_ms());
    r.vsock.handle_host();
  }
  EXPECT_TRUE(at_eof(u.get()));
  EXPECT_EQ(r.one().h.op, V::kOpRst);
  EXPECT_EQ(r.vsock.timeout_ms(), -1);
}

TEST(VirtioVsock, GuestConnectsToListeningAndMissingPorts) {
  VsockRig r;
  UniqueFd l = unix_listen(r.uds.string() + "_5000");
  ASSERT_TRUE(l);
  r.send(guest_hdr(V::kOpRequest, 1025, 5000));
  Pkt resp = r.one();
  EXPECT_EQ(resp.h.op, V::kOpResponse);
  EXPECT_EQ(resp.h.src_port, 5000u);
  EXPECT_EQ(resp.h.dst_port, 1025u);
  UniqueFd a(::accept4(l.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(a);
  r.send(guest_hdr(V::kOpRw, 1025, 5000), bytes_of("ping"));
  EXPECT_EQ(recv_now(a.get()), "ping");
  ASSERT_EQ(::write(a.get(), "pong", 4), 4);
  r.vsock.handle_host();
  EXPECT_EQ(r.one().data, bytes_of("pong"));

  r.send(guest_hdr(V::kOpRequest, 1026, 5001));  // nothing listens there
  Pkt rst = r.one();
  EXPECT_EQ(rst.h.op, V::kOpRst);
  EXPECT_EQ(rst.h.src_port, 5001u);
  EXPECT_EQ(rst.h.dst_port, 1026u);
  EXPECT_EQ(r.vsock.stats().connections, 1u);
}

// A VM directory deep in a store makes socket paths longer than sockaddr_un holds (107 bytes):
// the device and its peers reach them through the directory (UnixAddress), both ways.
TEST(VirtioVsock, ALongSocketPathIsReachedThroughItsDirectory) {
  VsockRig r(V::kMaxConnections, true,
             std::filesystem::path(std::string(60, 'd')) / "vms" / std::string(64, 'e'));
  ASSERT_GT(r.uds.string().size() + 6, sizeof(sockaddr_un::sun_path)) << r.uds;
  EXPECT_TRUE(std::filesystem::exists(r.uds));
  UniqueFd c = unix_connect(r.uds);
  ASSERT_TRUE(c);
  ASSERT_EQ(::write(c.get(), "CONNECT 7\n", 10), 10);
  r.vsock.handle_host();
  Pkt req = r.one();
  EXPECT_EQ(req.h.op, V::kOpRequest);
  EXPECT_EQ(req.h.dst_port, 7u);

  UniqueFd l = unix_listen(r.uds.string() + "_5000");
  ASSERT_TRUE(l);
  r.send(guest_hdr(V::kOpRequest, 1025, 5000));
  EXPECT_EQ(r.one().h.op, V::kOpResponse);
  UniqueFd a(::accept4(l.get(), nullptr, nullptr, SOCK_CLOEXEC));
  EXPECT_TRUE(a);
}

// containerd's state directory: /run/containerd/runc/default/<64 hex>/vsock.sock is 106 bytes,
// which fits sockaddr_un but not with a connection's `_PORT` after it; the device goes through
// the directory then too, and a guest's connection to a host port still arrives.
TEST(VirtioVsock, APathThatFitsOnlyWithoutThePortSuffixIsReachedThroughItsDirectory) {
  const size_t base = TempDir("vsock-test").path().string().size();  // as the rig's own
  const size_t want = sizeof(sockaddr_un::sun_path) - 4;  // 104: fits, `_4294967295` does not
  ASSERT_LT(base + 1 + std::string("/v.sock").size(), want);
  VsockRig r(V::kMaxConnections, true, std::string(want - base - 1 - 7, 'd'));
  ASSERT_EQ(r.uds.string().size(), want) << r.uds;
  EXPECT_TRUE(std::filesystem::exists(r.uds));
  UniqueFd l = unix_listen(r.uds.string() + "_4000000000");
  ASSERT_TRUE(l);
  r.send(guest_hdr(V::kOpRequest, 1025, 4000000000u));
  EXPECT_EQ(r.one().h.op, V::kOpResponse);
  UniqueFd a(::accept4(l.get(), nullptr, nullptr, SOCK_CLOEXEC));
  EXPECT_TRUE(a);
  UniqueFd c = unix_connect(r.uds);
  ASSERT_TRUE(c);
  ASSERT_EQ(::write(c.get(), "CONNECT 9\n", 10), 10);
  r.vsock.handle_host();
  EXPECT_EQ(r.one().h.dst_port, 9u);
}

TEST(VirtioVsock, ShutdownAndResetCleanUp) {
  VsockRig r;
  // The guest closes: its last bytes reach the host, then EOF, and the flow ends with an RST.
  auto [c1, hp1] = r.host_connect(1);
  r.send(guest_hdr(V::kOpRw, 1, hp1), bytes_of("bye"));
  r.send(guest_hdr(V::kOpShutdown, 1, hp1));  // flags 0: nothing changes
  EXPECT_TRUE(r.packets().empty());
  VsockHeader sh = guest_hdr(V::kOpShutdown, 1, hp1);
  sh.flags = V::kShutdownRcv | V::kShutdownSend;
  r.send(sh);
  EXPECT_EQ(r.one().h.op, V::kOpRst);
  EXPECT_EQ(recv_now(c1.get()), "bye");
  EXPECT_TRUE(at_eof(c1.get()));

  // The host peer closes: SHUTDOWN to the guest, whose RST ends the flow.
  auto [c2, hp2] = r.host_connect(2);
  c2.reset();
  r.vsock.handle_host();
  Pkt s = r.one();
  EXPECT_EQ(s.h.op, V::kOpShutdown);
  EXPECT_EQ(s.h.flags, V::kShutdownRcv | V::kShutdownSend);
  EXPECT_EQ(r.vsock.stats().connections, 1u);
  r.send(guest_hdr(V::kOpRst, 2, hp2));
  EXPECT_EQ(r.vsock.stats().connections, 0u);

  // The guest resets: the host peer sees EOF.
  auto [c3, hp3] = r.host_connect(3);
  r.send(guest_hdr(V::kOpRst, 3, hp3));
  EXPECT_TRUE(at_eof(c3.get()));
  // A driver reset drops every connection.
  auto [c4, hp4] = r.host_connect(4);
  (void)hp4;
  r.wr(0x070, 0);
  EXPECT_TRUE(at_eof(c4.get()));
  EXPECT_EQ(r.vsock.stats().connections, 0u);
}

TEST(VirtioVsock, MaliciousPacketsAndChainsAreAnsweredWithoutHarm) {
  VsockRig r;
  auto [c, hp] = r.host_connect(77);
  auto bad_before = r.vsock.stats().bad_chains;
  // A chain too short for a header.
  r.send_raw(Bytes(20, 0));
  // len larger than the chain, and larger than the maximum packet.
  VsockHeader h = guest_hdr(V::kOpRw, 77, hp);
  h.len = 100;
  r.send(h, bytes_of("only ten b"));
  h.len = V::kMaxPayload + 1;
  r.send(h, Bytes(V::kMaxPayload + 1, 'z'));
  // Wrong source CID (not the guest's own) and a destination other than the host.
  h = guest_hdr(V::kOpRw, 77, hp);
  h.src_cid = 4;
  r.send(h, bytes_of("spoof"));
  h = guest_hdr(V::kOpRequest, 1, 5000);
  h.dst_cid = 5;
  r.send(h);
  EXPECT_EQ(r.vsock.stats().dropped, 4u);
  EXPECT_EQ(recv_now(c.get()), "") << "nothing of those reached the host";
  EXPECT_TRUE(r.packets().empty()) << "dropped, not answered";

  // An unknown type or op: RST.
  h = guest_hdr(V::kOpRw, 12, 13);
  h.type = 2;  // SEQPACKET
  r.send(h);
  EXPECT_EQ(r.one().h.op, V::kOpRst);
  h = guest_hdr(99, 77, hp);
  r.send(h);
  Pkt rst = r.one();
  EXPECT_EQ(rst.h.op, V::kOpRst);
  EXPECT_TRUE(at_eof(c.get())) << "a connection sent a bad op is reset";
  // Data for no connection: RST.
  r.send(guest_hdr(V::kOpRw, 50, 51), bytes_of("x"));
  EXPECT_EQ(r.one().h.op, V::kOpRst);

  // A device-writable descriptor in a tx chain; a tx buffer outside guest memory.
  Bytes raw(VsockHeader::kSize);
  guest_hdr(V::kOpRequest, 1, 5000).encode(raw.data());
  r.send_raw(raw, {}, SplitQueue::kDescWrite);
  r.desc(1, 0, 0x7ffffffff000ull, 44, 0);
  r.post(1, 0);
  r.notify();
  EXPECT_EQ(r.vsock.stats().bad_chains, bad_before + 3);
  EXPECT_EQ(r.rd(0x070) & VirtioMmio::kStatusNeedsReset, 0u) << "the queues still work";
  r.send(guest_hdr(V::kOpRw, 50, 51), bytes_of("x"));
  EXPECT_EQ(r.one().h.op, V::kOpRst);

  // Receive buffers that are read-only, too small for a header, or outside guest memory:
  // returned empty; the packet waits for a good one.
  VsockRig g(V::kMaxConnections, /*post_rx=*/false);
  g.desc(0, 0, VsockRig::rx_buf(0), kRxLen, 0);
  g.desc(0, 1, VsockRig::rx_buf(1), 43, SplitQueue::kDescWrite);
  g.desc(0, 2, 0xfffff000ull, kRxLen, SplitQueue::kDescWrite);
  g.desc(0, 3, VsockRig::rx_buf(3), 20, SplitQueue::kDescWrite | SplitQueue::kDescNext, 4);
  g.desc(0, 4, VsockRig::rx_buf(4), 24, SplitQueue::kDescWrite);  // 20 + 24: a header fits
  for (uint16_t i : {0, 1, 2, 3}) g.post(0, i);
  g.send(guest_hdr(V::kOpRequest, 1, 5000));  // nothing listens: RST
  ASSERT_EQ(g.used_idx(0), 4);
  auto used = [&](uint16_t i) {
    uint64_t e = kUsed[0] + 4 + 8 * uint64_t(i);
    return std::make_pair(*g.mem.load<uint32_t>(e), *g.mem.load<uint32_t>(e + 4));
  };
  EXPECT_EQ(used(0), std::make_pair(0u, 0u));
  EXPECT_EQ(used(1), std::make_pair(1u, 0u));
  EXPECT_EQ(used(2), std::make_pair(2u, 0u));
  EXPECT_EQ(used(3), std::make_pair(3u, 44u));
  Bytes hdr(44);
  g.mem.read(VsockRig::rx_buf(3), hdr.data(), 20);
  g.mem.read(VsockRig::rx_buf(4), hdr.data() + 20, 24);
  EXPECT_EQ(VsockHeader::decode(hdr.data()).op, V::kOpRst);
  EXPECT_EQ(g.vsock.stats().bad_chains, 3u);
}

TEST(VirtioVsock, ConnectionLimitHolds) {
  VsockRig r(/*max_conns=*/3);
  UniqueFd l = unix_listen(r.uds.string() + "_6000");
  ASSERT_TRUE(l);
  for (uint32_t p = 1; p <= 3; ++p) {
    r.send(guest_hdr(V::kOpRequest, p, 6000));
    EXPECT_EQ(r.one().h.op, V::kOpResponse);
  }
  r.send(guest_hdr(V::kOpRequest, 4, 6000));
  EXPECT_EQ(r.one().h.op, V::kOpRst) << "over the limit";
  UniqueFd c = unix_connect(r.uds);
  ASSERT_EQ(::write(c.get(), "CONNECT 1\n", 10), 10);
  r.vsock.handle_host();
  EXPECT_TRUE(at_eof(c.get())) << "a host client over the limit is closed";
  EXPECT_EQ(r.vsock.stats().connections, 3u);
  // One closes: there is room again.
  r.send(guest_hdr(V::kOpRst, 1, 6000));
  r.send(guest_hdr(V::kOpRequest, 4, 6000));
  EXPECT_EQ(r.one().h.op, V::kOpResponse);
}

TEST(VirtioVsock, AHostPeerThatNeverReadsBoundsWhatTheGuestMaySend) {
  VsockRig r;
  UniqueFd l = unix_listen(r.uds.string() + "_7000");
  r.send(guest_hdr(V::kOpRequest, 9, 7000));
  ASSERT_EQ(r.one().h.op, V::kOpResponse);
  UniqueFd a(::accept4(l.get(), nullptr, nullptr, SOCK_CLOEXEC));  // and never read
  // The guest sends as its credit allows, asking for more when out, until none comes.
  const Bytes chunk(4096, 'q');
  uint32_t sent = 0, peer_fwd = 0;
  bool blocked = false;
  for (int i = 0; i < 4000 && !blocked; ++i) {
    uint32_t credit = V::kBufAlloc - (sent - peer_fwd);
    if (credit >= chunk.size()) {
      r.send(guest_hdr(V::kOpRw, 9, 7000), chunk);
      sent += uint32_t(chunk.size());
    } else {
      r.send(guest_hdr(V::kOpCreditRequest, 9, 7000));
    }
    for (const auto& p : r.packets()) {
      ASSERT_NE(p.h.op, V::kOpRst);
      if (credit < chunk.size()) blocked = p.h.fwd_cnt == peer_fwd;
      peer_fwd = p.h.fwd_cnt;
    }
    EXPECT_LE(r.vsock.stats().to_host_buffered, V::kBufAlloc);
  }
  ASSERT_TRUE(blocked) << "the host socket never filled up";
  EXPECT_GT(r.vsock.stats().to_host_buffered, 0u);
  // Beyond its credit: the connection is reset, its buffer freed.
  r.send(guest_hdr(V::kOpRw, 9, 7000), chunk);
  EXPECT_EQ(r.one().h.op, V::kOpRst);
  EXPECT_EQ(r.vsock.stats().connections, 0u);
  EXPECT_EQ(r.vsock.stats().to_host_buffered, 0u);
}

TEST(VirtioVsock, AGuestThatNeverReadsStopsItsHostPeer) {
  VsockRig r;
  auto [c, hp] = r.host_connect(8, /*guest_buf=*/1u << 30);
  (void)hp;
  r.repost = false;  // the guest takes what is posted and never posts again
  ASSERT_EQ(::fcntl(c.get(), F_SETFL, O_NONBLOCK), 0);
  const std::string chunk(5000, 'h');  // not a divisor of the bound
  size_t written = 0;
  bool full = false;
  for (int i = 0; i < 10000 && !full; ++i) {
    ssize_t n = ::write(c.get(), chunk.data(), chunk.size());
    if (n < 0) {
      ASSERT_EQ(errno, EAGAIN);
      // The device read what it could: full for good once it takes nothing more.
      size_t before = r.vsock.stats().to_guest_buffered;
      r.vsock.handle_host();
      r.packets();
      full = ::write(c.get(), chunk.data(), 1) < 0 && r.vsock.stats().to_guest_buffered == before;
      continue;
    }
    written += size_t(n);
    r.vsock.handle_host();
    r.packets();
    EXPECT_LE(r.vsock.stats().to_guest_buffered, V::kHostBuffer);
  }
  EXPECT_TRUE(full) << "the host peer was never stopped after " << written << " bytes";
  EXPECT_LE(r.vsock.stats().to_guest_buffered, V::kHostBuffer);
}

// The vsock thread's filter (seccomp.hpp, ThreadRole::kVsock) lets the device do its work: a
// host client's handshake and data, a guest connection to `<uds>_<port>`; but no other socket
// family and no file.
TEST(VirtioVsock, WorksUnderItsThreadsSeccompFilter) {
  VsockRig r;
  UniqueFd l = unix_listen(r.uds.string() + "_5000");
  UniqueFd c = unix_connect(r.uds);
  ASSERT_TRUE(l && c);
  struct {
    uint16_t request = 0, response = 0, data_op = 0;
    int inet_errno = 0, open_errno = 0;
  } o;
  std::thread t([&] {
    install_thread_seccomp(ThreadRole::kVsock, SeccompMode::kErrno);
    (void)!::write(c.get(), "CONNECT 22\nabc", 14);
    r.vsock.handle_host();
    auto p = r.packets();
    if (p.size() != 1) return;
    o.request = p[0].h.op;
    r.send(guest_hdr(V::kOpResponse, 22, p[0].h.src_port));
    r.vsock.handle_host();
    p = r.packets();
    if (p.size() == 1) o.data_op = p[0].h.op;
    r.send(guest_hdr(V::kOpRequest, 1025, 5000));
    p = r.packets();
    if (p.size() == 1) o.response = p[0].h.op;
    o.inet_errno = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0) < 0 ? errno : 0;
    o.open_errno = ::open("/dev/null", O_RDONLY | O_CLOEXEC) < 0 ? errno : 0;
  });
  t.join();
  EXPECT_EQ(o.request, V::kOpRequest);
  EXPECT_EQ(o.data_op, V::kOpRw);
  EXPECT_EQ(o.response, V::kOpResponse);
  EXPECT_EQ(o.inet_errno, EPERM);
  EXPECT_EQ(o.open_errno, EACCES);
  EXPECT_EQ(recv_now(c.get()).substr(0, 3), "OK ");
}

// Snapshots: the device's state is its CID; a new device with the same CID takes it, another
// CID or a damaged state is refused; a connection the guest knows of cannot be saved (a client
// that has not sent its CONNECT line yet is the host's alone: it does not stop a snapshot).
TEST(VirtioVsock, ASnapshotHoldsTheCidAndNoConnection) {
  VsockRig r;
  UniqueFd waiting = unix_connect(r.uds);
  ASSERT_TRUE(waiting);
  r.vsock.handle_host();
  ASSERT_EQ(r.vsock.stats().connections, 1u) << "the client was accepted";
  std::vector<uint8_t> saved = r.vsock.save_state();
  EXPECT_EQ(saved.size(), sizeof(V::SavedState));
  auto refusal = [](auto&& f, ErrorKind* kind) -> std::string {
    try {
      f();
    } catch (const Error& e) {
      *kind = e.kind();
      return e.what();
    }
    return {};
  };
  TempDir d("vsock-snap");
  ErrorKind kind{};
  VirtioVsock same(kCid, d.path() / "a");
  EXPECT_EQ(refusal([&] { same.load_state(saved); }, &kind), "");
  VirtioVsock other(kCid + 1, d.path() / "b");
  EXPECT_EQ(refusal([&] { other.load_state(saved); }, &kind),
            "the snapshot's vsock device had CID 3, this one 4");
  EXPECT_EQ(kind, ErrorKind::kUnsupported);
  saved.pop_back();
  EXPECT_EQ(refusal([&] { same.load_state(saved); }, &kind),
            "virtio-vsock state: 15 bytes, not 16");
  EXPECT_EQ(kind, ErrorKind::kIntegrity);

  UniqueFd l = unix_listen(r.uds.string() + "_5000");
  ASSERT_TRUE(l);
  r.send(guest_hdr(V::kOpRequest, 1025, 5000));
  EXPECT_EQ(r.one().h.op, V::kOpResponse);
  EXPECT_EQ(refusal([&] { (void)r.vsock.save_state(); }, &kind),
            "the vsock device has 1 connections or resets the guest knows of: a snapshot holds "
            "none");
  EXPECT_EQ(kind, ErrorKind::kUnsupported);
}

// Without a host side (an empty path): nothing is bound, the guest's connections are refused,
// and a snapshot of it saves and loads like any other.
TEST(VirtioVsock, ADeviceWithoutAHostSideRefusesTheGuestsConnections) {
  VsockRig r(V::kMaxConnections, true, {}, false);
  EXPECT_FALSE(std::filesystem::exists(r.uds));
  EXPECT_TRUE(r.vsock.uds_path().empty());
  r.send(guest_hdr(V::kOpRequest, 1025, 5000));
  Pkt rst = r.one();
  EXPECT_EQ(rst.h.op, V::kOpRst);
  EXPECT_EQ(rst.h.dst_port, 1025u);
  EXPECT_EQ(r.vsock.stats().connections, 0u);
  r.vsock.handle_host();  // nothing to do, nothing breaks
  EXPECT_EQ(r.vsock.timeout_ms(), -1);
  VirtioVsock other(kCid, "");
  EXPECT_NO_THROW(other.load_state(r.vsock.save_state()));
}
