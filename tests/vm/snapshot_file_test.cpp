// A snapshot's state file: what is written reads back the same, and a damaged, foreign or
// newer file is refused with a line that says what is wrong, never read past its end. The
// VMM's devices save and load their state.
#include "snapshot_file.hpp"

#include <gtest/gtest.h>

#include <string>

#include "i8042.hpp"
#include "img2vm/base/error.hpp"
#include "uart.hpp"

using namespace img2vm;
using namespace img2vm::vm;

namespace {

std::string sample() {
  SnapshotWriter w;
  SnapshotMachine m;
  m.memory_bytes = 64u << 20;
  m.vcpus = 2;
  w.add_struct(Section::kMachine, 0, m);
  SnapshotMsr msrs[2] = {{0x10, 0, 1234}, {0x6e0, 0, 99}};
  w.add(Section::kMsrs, 1, {reinterpret_cast<const uint8_t*>(msrs), sizeof msrs});
  w.add_struct(Section::kTscKhz, 0, uint32_t(2'000'000));
  return w.serialize();
}

// The message of the Error parse() throws, or "" when it accepts `bytes`.
std::string refusal(const std::string& bytes, ErrorKind* kind = nullptr) {
  try {
    SnapshotState::parse(bytes);
    return "";
  } catch (const Error& e) {
    if (kind) *kind = e.kind();
    return e.what();
  }
}

void put_u32(std::string& s, size_t at, uint32_t v) {
  s.replace(at, 4, reinterpret_cast<const char*>(&v), 4);
}

}  // namespace

TEST(SnapshotFile, WhatIsWrittenReadsBackTheSame) {
  auto st = SnapshotState::parse(sample());
  EXPECT_EQ(st.size(), 3u);
  auto m = st.get_struct<SnapshotMachine>(Section::kMachine, 0);
  EXPECT_EQ(m.memory_bytes, 64u << 20);
  EXPECT_EQ(m.vcpus, 2u);
  auto msrs = st.get_array<SnapshotMsr>(Section::kMsrs, 1, 16);
  ASSERT_EQ(msrs.size(), 2u);
  EXPECT_EQ(msrs[0].index, 0x10u);
  EXPECT_EQ(msrs[0].data, 1234u);
  EXPECT_EQ(msrs[1].index, 0x6e0u);
  EXPECT_EQ(st.get_struct<uint32_t>(Section::kTscKhz, 0), 2'000'000u);
  EXPECT_TRUE(st.has(Section::kMsrs, 1));
  EXPECT_FALSE(st.has(Section::kMsrs, 0));
}

TEST(SnapshotFile, ADamagedOrForeignFileIsRefusedWithTheReason) {
  const std::string good = sample();
  ErrorKind kind{};
  EXPECT_NE(refusal("", &kind).find("not an img2vm snapshot"), std::string::npos);
  EXPECT_EQ(kind, ErrorKind::kIntegrity);
  EXPECT_NE(refusal("ELF\x7f" + good.substr(4)).find("not an img2vm snapshot"), std::string::npos);
  // Every truncation is refused, at any length.
  for (size_t n = 0; n < good.size(); ++n)
    EXPECT_NE(refusal(good.substr(0, n)), "") << "accepted the first " << n << " bytes";
  EXPECT_NE(refusal(good + "x").find("1 bytes after the last section"), std::string::npos);

  std::string newer = good;
  put_u32(newer, 8, 2);
  EXPECT_EQ(refusal(newer, &kind), "snapshot state file: format version 2, this img2vm reads 1");
  EXPECT_EQ(kind, ErrorKind::kUnsupported);

  std::string many = good;
  put_u32(many, 12, 1u << 30);
  EXPECT_NE(refusal(many).find("1073741824 sections (at most 4096)"), std::string::npos);

  std::string unknown = good;
  put_u32(unknown, 16, 77);  // the first section's kind
  EXPECT_NE(refusal(unknown).find("unknown section kind 77"), std::string::npos);

  std::string huge = good;
  put_u32(huge, 24, 0xffffffffu);  // the first section's length
  EXPECT_NE(refusal(huge).find("the machine section is 4294967295 bytes (at most 1048576)"),
            std::string::npos);

  std::string far = good;
  put_u32(far, 20, 5000);  // the first section's instance
  EXPECT_NE(refusal(far).find("instance out of range"), std::string::npos);

  SnapshotWriter twice;
  twice.add_struct(Section::kTscKhz, 3, uint32_t(1));
  twice.add_struct(Section::kTscKhz, 3, uint32_t(2));
  EXPECT_EQ(refusal(twice.serialize()), "snapshot state file: vCPU 3 TSC frequency appears twice");
}

TEST(SnapshotFile, SectionsAreHandedOutOnlyAtTheirExactSize) {
  SnapshotWriter w;
  w.add_struct(Section::kTscKhz, 0, uint64_t(1));
  uint8_t odd[17] = {};
  w.add(Section::kMsrs, 0, odd);
  auto st = SnapshotState::parse(w.serialize());
  try {
    st.get_struct<uint32_t>(Section::kTscKhz, 0);
    FAIL() << "a section of another size was accepted";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "snapshot state file: vCPU 0 TSC frequency is 8 bytes, not 4");
  }
  EXPECT_THROW(st.get_array<SnapshotMsr>(Section::kMsrs, 0, 16), Error);
  try {
    st.get_struct<SnapshotMachine>(Section::kMachine, 0);
    FAIL() << "a missing section was handed out";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "snapshot state file: the machine section is missing");
  }
  SnapshotWriter many;
  std::vector<SnapshotMsr> msrs(20);
  many.add(Section::kMsrs, 0,
           {reinterpret_cast<const uint8_t*>(msrs.data()), 20 * sizeof(SnapshotMsr)});
  EXPECT_THROW(SnapshotState::parse(many.serialize()).get_array<SnapshotMsr>(Section::kMsrs, 0, 19),
               Error);
}

TEST(SnapshotFile, TheUartAndTheI8042ComeBackAsSaved) {
  std::string out;
  std::vector<bool> irqs;
  Uart8250 a([&](uint8_t c) { out.push_back(char(c)); }, [&](bool l) { irqs.push_back(l); });
  a.write(3, 0x03);  // LCR 8N1
  a.write(4, 0x0b);  // MCR: DTR, RTS, OUT2
  a.write(7, 0x5a);  // scratch
  a.write(1, 0x01);  // IER: received data
  const uint8_t in[] = {'x', 'y', 'z'};
  ASSERT_EQ(a.push_input(in, 3), 3u);
  EXPECT_EQ(a.read(0), 'x');
  Uart8250::State s = a.save();

  std::vector<bool> irqs_b;
  Uart8250 b([](uint8_t) {}, [&](bool l) { irqs_b.push_back(l); });
  b.load(s);
  EXPECT_TRUE(irqs_b.empty());  // the line's level comes with the restored interrupt controller
  EXPECT_EQ(b.read(7), 0x5a);
  EXPECT_EQ(b.read(3), 0x03);
  EXPECT_EQ(b.read(1), 0x01);
  EXPECT_EQ(b.read(5) & 1, 1);  // data ready
  EXPECT_EQ(b.read(0), 'y');
  EXPECT_EQ(b.read(0), 'z');
  EXPECT_EQ(b.input_space(), Uart8250::kFifoSize);
  ASSERT_FALSE(irqs_b.empty());
  EXPECT_FALSE(irqs_b.back());  // the FIFO emptied: the line drops as it would have in `a`

  Uart8250::State bad = s;
  bad.rx_len = Uart8250::kFifoSize + 1;
  EXPECT_THROW(b.load(bad), Error);

  I8042 k;
  k.write(0x64, 0xaa);  // self-test: 0x55 waits to be read
  I8042 k2;
  k2.load(k.save());
  EXPECT_EQ(k2.read(0x64) & 1, 1);
  EXPECT_EQ(k2.read(0x60), 0x55);
  I8042::State kb = k.save();
  kb.out_len = 17;
  EXPECT_THROW(k2.load(kb), Error);
}

TEST(SnapshotFile, VirtioAndDiskSectionsAreKnownAndNamedByTheirInstance) {
  SnapshotWriter w;
  w.add(Section::kVirtioMmio, 1, {});
  w.add(Section::kVirtioDevice, 1, {});
  w.add_struct(Section::kDisk, 2, SnapshotDisk{});
  auto st = SnapshotState::parse(w.serialize());
  EXPECT_TRUE(st.has(Section::kVirtioMmio, 1));
  EXPECT_EQ(st.get_struct<SnapshotDisk>(Section::kDisk, 2).size, 0u);
  EXPECT_EQ(describe(Section::kVirtioMmio, 1), "virtio-mmio device 1's transport");
  EXPECT_EQ(describe(Section::kVirtioDevice, 0), "virtio-mmio device 0's state");
  try {
    st.get(Section::kDisk, 0);
    FAIL() << "a missing disk section was handed out";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "snapshot state file: disk 0's section is missing");
  }
}
