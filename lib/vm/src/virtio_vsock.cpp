// The guest side of virtio-vsock (virtio_vsock.hpp): queues, packet validation and delivery.
// The host side (unix sockets, the CONNECT handshake, deadlines) is in vsock_host.cpp.
#include "virtio_vsock.hpp"

#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "img2vm/base/error.hpp"

namespace img2vm::vm {

namespace {
template <typename T>
void put_le(uint8_t* p, T v) {
  for (size_t i = 0; i < sizeof(T); ++i) p[i] = uint8_t(uint64_t(v) >> (8 * i));
}
template <typename T>
T get_le(const uint8_t* p) {
  uint64_t v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) v |= uint64_t(p[i]) << (8 * i);
  return T(v);
}

// Copies `out.size()` bytes from offset `off` of a chain's buffers (checked by pop()).
void gather(const GuestMemory& mem, const DescChain& c, uint64_t off, std::span<uint8_t> out) {
  size_t done = 0;
  for (const auto& e : c.elems) {
    if (done == out.size()) break;
    if (off >= e.len) {
      off -= e.len;
      continue;
    }
    uint64_t n = std::min<uint64_t>(e.len - off, out.size() - done);
    mem.read(e.addr + off, out.data() + done, n);
    done += n;
    off = 0;
  }
}

// Writes `parts` one after the other into a chain's buffers (checked by pop()).
void scatter(const GuestMemory& mem, const DescChain& c,
             std::initializer_list<std::span<const uint8_t>> parts) {
  auto e = c.elems.begin();
  uint64_t eoff = 0;
  for (auto part : parts) {
    size_t done = 0;
    while (done < part.size() && e != c.elems.end()) {
      uint64_t n = std::min<uint64_t>(e->len - eoff, part.size() - done);
      mem.write(e->addr + eoff, part.data() + done, n);
      done += n;
      eoff += n;
      if (eoff == e->len) {
        ++e;
        eoff = 0;
      }
    }
  }
}
}  // namespace

void VsockHeader::encode(uint8_t* p) const {
  put_le(p, src_cid);
  put_le(p + 8, dst_cid);
  put_le(p + 16, src_port);
  put_le(p + 20, dst_port);
  put_le(p + 24, len);
  put_le(p + 28, type);
  put_le(p + 30, op);
  put_le(p + 32, flags);
  put_le(p + 36, buf_alloc);
  put_le(p + 40, fwd_cnt);
}

VsockHeader VsockHeader::decode(const uint8_t* p) {
  VsockHeader h;
  h.src_cid = get_le<uint64_t>(p);
  h.dst_cid = get_le<uint64_t>(p + 8);
  h.src_port = get_le<uint32_t>(p + 16);
  h.dst_port = get_le<uint32_t>(p + 20);
  h.len = get_le<uint32_t>(p + 24);
  h.type = get_le<uint16_t>(p + 28);
  h.op = get_le<uint16_t>(p + 30);
  h.flags = get_le<uint32_t>(p + 32);
  h.buf_alloc = get_le<uint32_t>(p + 36);
  h.fwd_cnt = get_le<uint32_t>(p + 40);
  return h;
}

bool VirtioVsock::process(const GuestMemory&, SplitQueue&) { return false; }

bool VirtioVsock::process_queues(const GuestMemory& mem, std::span<SplitQueue> queues, uint64_t) {
  if (queues.size() < 3) return false;
  std::lock_guard lk(mu_);
  bool used = false;
  // Deliver first (room for the RSTs the guest's packets may cause), then take the guest's
  // packets, then deliver what they caused.
  if (queues[kRxQueue].ready) used |= deliver(mem, queues[kRxQueue]);
  if (queues[kTxQueue].ready) used |= transmit(mem, queues[kTxQueue]);
  if (queues[kRxQueue].ready) used |= deliver(mem, queues[kRxQueue]);
  // The event queue's buffers stay with the device: no event is ever sent.
  return used;
}

bool VirtioVsock::transmit(const GuestMemory& mem, SplitQueue& q) {
  bool used = false;
  // Paused while too many RSTs wait for receive buffers: the guest gets them first.
  while (resets_.size() < kMaxResets) {
    auto chain = q.pop(mem);
    if (!chain) break;
    used = true;
    bool ok = chain->error.empty();
    uint64_t total = 0;
    for (const auto& e : chain->elems) {
      if (e.device_writable) ok = false;  // the device only reads a tx buffer
      total += e.len;
    }
    if (!ok || total < VsockHeader::kSize) {
      ++bad_chains_;
    } else {
      uint8_t raw[VsockHeader::kSize];
      gather(mem, *chain, 0, raw);
      const VsockHeader h = VsockHeader::decode(raw);
      if (h.len > kMaxPayload || h.len > total - VsockHeader::kSize || h.src_cid != cid_ ||
          h.dst_cid != kHostCid) {
        ++dropped_;
      } else {
        buf_.resize(h.len);
        gather(mem, *chain, VsockHeader::kSize, buf_);
        ++tx_packets_;
        guest_packet(h, buf_);
      }
    }
    q.add_used(mem, chain->head, 0);
  }
  if (used) q.publish_used(mem);
  return used;
}

void VirtioVsock::guest_packet(const VsockHeader& h, std::span<const uint8_t> payload) {
  // The connection, as seen from the host: local = the guest's destination port.
  Conn* c = find(h.dst_port, h.src_port);
  if (h.type != kTypeStream) {
    if (h.op != kOpRst) queue_rst(h.dst_port, h.src_port);
    return;
  }
  if (h.op == kOpRst) {
    if (c) drop_conn(*c, false);
    return;
  }
  if (h.op == kOpRequest) {
    if (c)
      drop_conn(*c, true);  // a second REQUEST for a live flow: the guest lost track of it
    else
      guest_connect(h);
    return;
  }
  // A connection waiting for its CONNECT line has no flow yet: find() never returns it.
  if (!c || h.op < kOpResponse || h.op > kOpCreditRequest) {
    if (c)
      drop_conn(*c, true);
    else
      queue_rst(h.dst_port, h.src_port);
    return;
  }
  c->peer_buf_alloc = h.buf_alloc;
  c->peer_fwd_cnt = h.fwd_cnt;
  if (c->state == State::kConnecting && h.op != kOpResponse) {
    drop_conn(*c, true);  // only an answer is expected before the flow exists
    return;
  }
  switch (h.op) {
    case kOpResponse: {
      if (c->state != State::kConnecting) {
        drop_conn(*c, true);
        return;
      }
      const std::string ok = "OK " + std::to_string(c->local_port) + "\n";
      if (::send(c->fd.get(), ok.data(), ok.size(), MSG_DONTWAIT | MSG_NOSIGNAL) !=
          ssize_t(ok.size())) {
        drop_conn(*c, true);  // the client went away (a fresh socket has room for the line)
        return;
      }
      c->state = State::kEstablished;
      update_interest(*c);
      return;
    }
    case kOpShutdown:
      c->guest_shutdown |= h.flags & (kShutdownRcv | kShutdownSend);
      if (c->guest_shutdown & kShutdownRcv) {
        c->to_guest.clear();  // it will not read them
      }
      if (c->guest_shutdown == (kShutdownRcv | kShutdownSend)) {
        // The guest closed: what it sent goes out, then the RST that ends the flow.
        c->reset_when_flushed = true;
        if (c->state != State::kClosing) {
          c->state = State::kClosing;
          c->deadline = std::chrono::steady_clock::now() + kTimeout;
        }
      }
      maybe_finish(*c);
      return;
    case kOpRw:
      if (c->state != State::kEstablished || (c->guest_shutdown & kShutdownSend) ||
          uint32_t(c->rx_cnt - c->fwd_cnt) + uint64_t(payload.size()) > kBufAlloc) {
        drop_conn(*c, true);  // data before RESPONSE, after SHUTDOWN, or beyond its credit
        return;
      }
      c->to_host.insert(c->to_host.end(), payload.begin(), payload.end());
      c->rx_cnt += uint32_t(payload.size());
      if (flush_to_host(*c)) maybe_finish(*c);
      return;
    case kOpCreditRequest:
      c->pending |= kPendCredit;
      return;
    default:  // CREDIT_UPDATE: the credit fields were all it carried
      return;
  }
}

uint32_t VirtioVsock::peer_credit(const Conn& c) const {
  const uint32_t in_flight = c.tx_cnt - c.peer_fwd_cnt;
  return in_flight >= c.peer_buf_alloc ? 0 : c.peer_buf_alloc - in_flight;
}

VsockHeader VirtioVsock::header_for(const Conn& c, uint16_t op) const {
  VsockHeader h;
  h.src_cid = kHostCid;
  h.dst_cid = cid_;
  h.src_port = c.local_port;
  h.dst_port = c.peer_port;
  h.type = kTypeStream;
  h.op = op;
  h.buf_alloc = kBufAlloc;
  h.fwd_cnt = c.fwd_cnt;
  return h;
}

bool VirtioVsock::deliver(const GuestMemory& mem, SplitQueue& q) {
  bool used = false;
  for (;;) {
    // The next packet: queued RSTs, then a connection's control packet, then its data.
    VsockHeader h;
    Conn* conn = nullptr;
    Conn* data = nullptr;
    unsigned bit = 0;
    if (!resets_.empty()) {
      h.src_cid = kHostCid;
      h.dst_cid = cid_;
      h.src_port = resets_.front().local_port;
      h.dst_port = resets_.front().peer_port;
      h.type = kTypeStream;
      h.op = kOpRst;
    } else {
      for (auto& [id, c] : conns_) {
        if (c->state == State::kLine) continue;
        if (c->pending) {
          for (unsigned b : {kPendRequest, kPendResponse, kPendShutdown, kPendCredit})
            if (c->pending & b) {
              bit = b;
              break;
            }
          conn = c.get();
          break;
        }
        if (!data && c->state == State::kEstablished && !c->to_guest.empty() && peer_credit(*c) > 0)
          data = c.get();
      }
      if (!conn) conn = data;
      if (!conn) break;
      static constexpr uint16_t kOps[] = {0, kOpRequest, kOpResponse, 0,          kOpCreditUpdate,
                                          0, 0,          0,           kOpShutdown};
      h = header_for(*conn, bit ? kOps[bit] : kOpRw);
      if (bit == kPendShutdown) h.flags = kShutdownRcv | kShutdownSend;
    }
    auto chain = q.pop(mem);
    if (!chain) break;
    used = true;
    bool ok = chain->error.empty();
    uint64_t cap = 0;
    for (const auto& e : chain->elems) {
      if (!e.device_writable) ok = false;
      cap += e.len;
    }
    if (!ok || cap < VsockHeader::kSize) {
      ++bad_chains_;
      q.add_used(mem, chain->head, 0);
      continue;  // the packet waits for a good buffer
    }
    std::span<const uint8_t> payload;
    if (conn && !bit) {
      const uint64_t n = std::min<uint64_t>(
          {conn->to_guest.size(), peer_credit(*conn), cap - VsockHeader::kSize, kMaxPayload});
      payload = std::span<const uint8_t>(conn->to_guest.data(), size_t(n));
      h.len = uint32_t(n);
    }
    uint8_t raw[VsockHeader::kSize];
    h.encode(raw);
    scatter(mem, *chain, {std::span<const uint8_t>(raw), payload});
    q.add_used(mem, chain->head, uint32_t(VsockHeader::kSize + payload.size()));
    ++rx_packets_;
    if (!conn) {
      resets_.pop_front();
      ++resets_sent_;
      continue;
    }
    conn->fwd_told = conn->fwd_cnt;
    conn->pending &= ~(bit | kPendCredit);  // every packet carries the credit
    if (!bit) {
      conn->tx_cnt += h.len;
      conn->to_guest.erase(conn->to_guest.begin(), conn->to_guest.begin() + h.len);
      update_interest(*conn);  // room to read more from the host
    }
    maybe_finish(*conn);
  }
  if (used) q.publish_used(mem);
  return used;
}

void VirtioVsock::reset() {
  std::lock_guard lk(mu_);
  conns_.clear();  // closes the host sockets: their peers see EOF
  by_key_.clear();
  resets_.clear();
}

std::vector<uint8_t> VirtioVsock::save_state() const {
  {
    std::lock_guard lk(mu_);
    size_t known = resets_.size();
    for (const auto& [id, c] : conns_)
      if (c->state != State::kLine) ++known;
    if (known)
      throw Error(ErrorKind::kUnsupported,
                  "the vsock device has " + std::to_string(known) +
                      " connections or resets the guest knows of: a snapshot holds none");
  }
  SavedState st;
  st.guest_cid = cid_;
  return device_state_bytes(st);
}

void VirtioVsock::load_state(std::span<const uint8_t> state) {
  const auto st = device_state_from<SavedState>(state, "virtio-vsock");
  if (st.guest_cid != cid_)
    throw Error(ErrorKind::kUnsupported, "the snapshot's vsock device had CID " +
                                             std::to_string(st.guest_cid) + ", this one " +
                                             std::to_string(cid_));
}

VirtioVsockStats VirtioVsock::stats() const {
  std::lock_guard lk(mu_);
  VirtioVsockStats s;
  s.tx_packets = tx_packets_;
  s.rx_packets = rx_packets_;
  s.bad_chains = bad_chains_;
  s.dropped = dropped_;
  s.resets_sent = resets_sent_;
  s.connections = conns_.size();
  for (const auto& [id, c] : conns_) {
    s.to_host_buffered += c->to_host.size();
    s.to_guest_buffered += c->to_guest.size();
  }
  return s;
}

}  // namespace img2vm::vm
