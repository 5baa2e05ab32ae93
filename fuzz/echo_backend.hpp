// A network backend for the virtio-net fuzz targets: it answers some frames from the guest at
// once (those whose first byte is odd), as libslirp answers ARP inside send(), with or without
// offloads (a tap's vnet header passed through).
#pragma once

#include <cstdint>
#include <span>

#include "virtio_net.hpp"

namespace img2vm::fuzzing {

struct EchoBackend final : vm::NetBackend {
  explicit EchoBackend(bool offloading) : offload(offloading) {}
  bool offload;
  vm::NetDeviceSide* dev = nullptr;
  void attach(vm::NetDeviceSide* d) override { dev = d; }
  void send(std::span<const uint8_t> f) override {
    if (!f.empty() && (f[0] & 1) && dev) dev->receive(f);  // an immediate answer
  }
  void rx_ready() override {}
  bool rx_checksums_valid() const override { return !offload; }
  bool offloads() const override { return offload; }
  void run(std::span<const Watch>) override {}
};

}  // namespace img2vm::fuzzing
