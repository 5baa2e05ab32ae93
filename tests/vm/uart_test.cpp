// The 8250 UART's registers as Linux's driver uses them, and the i8042 reset.
#include "uart.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "i8042.hpp"

using namespace img2vm::vm;

namespace {
struct Fixture {
  std::string out;
  std::vector<bool> irqs;
  Uart8250 uart{[this](uint8_t c) { out.push_back(char(c)); },
                [this](bool l) { irqs.push_back(l); }};
};
constexpr uint16_t THR = 0, IER = 1, IIR = 2, LCR = 3, MCR = 4, LSR = 5, MSR = 6, SCR = 7;
}  // namespace

TEST(Uart, IdleLineStatusIs0x60AndOutputGoesOut) {
  Fixture f;
  EXPECT_EQ(f.uart.read(LSR), 0x60);
  for (char c : std::string("hi\n")) f.uart.write(THR, uint8_t(c));
  EXPECT_EQ(f.out, "hi\n");
  EXPECT_EQ(f.uart.read(LSR), 0x60);
  EXPECT_EQ(f.uart.read(IIR) & 0x0f, 0x01);  // no interrupt pending
  EXPECT_TRUE(f.irqs.empty());
}

TEST(Uart, DivisorLatchDoesNotTransmit) {
  Fixture f;
  f.uart.write(LCR, 0x80);
  f.uart.write(THR, 0x01);
  f.uart.write(IER, 0x00);
  EXPECT_EQ(f.uart.read(THR), 0x01);
  EXPECT_EQ(f.uart.read(IER), 0x00);
  f.uart.write(LCR, 0x03);
  EXPECT_EQ(f.uart.read(LCR), 0x03);
  EXPECT_TRUE(f.out.empty());
  f.uart.write(SCR, 0x5a);
  EXPECT_EQ(f.uart.read(SCR), 0x5a);
}

TEST(Uart, ReceiveRaisesAndClearsTheInterrupt) {
  Fixture f;
  f.uart.write(MCR, 0x08);  // OUT2 gates the IRQ
  f.uart.write(IER, 0x01);
  const uint8_t in[] = {'a', 'b'};
  EXPECT_EQ(f.uart.push_input(in, 2), 2u);
  EXPECT_EQ(f.uart.read(LSR) & 0x01, 0x01);
  EXPECT_EQ(f.uart.read(IIR) & 0x0f, 0x04);
  ASSERT_EQ(f.irqs, std::vector<bool>{true});
  EXPECT_EQ(f.uart.read(THR), 'a');
  EXPECT_EQ(f.uart.read(THR), 'b');
  EXPECT_EQ(f.uart.read(LSR), 0x60);
  EXPECT_EQ(f.irqs, (std::vector<bool>{true, false}));
  EXPECT_EQ(f.uart.read(THR), 0);  // empty FIFO reads 0
}

TEST(Uart, FifoIsBounded) {
  Fixture f;
  std::vector<uint8_t> lots(100, 'x');
  EXPECT_EQ(f.uart.push_input(lots.data(), lots.size()), Uart8250::kFifoSize);
  EXPECT_EQ(f.uart.input_space(), 0u);
  EXPECT_EQ(f.uart.push_input(lots.data(), 1), 0u);
  f.uart.write(IIR, 0x07);  // FIFO enable + clear receive FIFO
  EXPECT_EQ(f.uart.input_space(), Uart8250::kFifoSize);
}

TEST(Uart, TransmitterEmptyInterrupt) {
  Fixture f;
  f.uart.write(MCR, 0x08);
  f.uart.write(IER, 0x02);  // enabling THRE with an empty THR raises it at once
  ASSERT_EQ(f.irqs, std::vector<bool>{true});
  EXPECT_EQ(f.uart.read(IIR) & 0x0f, 0x02);  // reading IIR acknowledges it
  EXPECT_EQ(f.irqs, (std::vector<bool>{true, false}));
  EXPECT_EQ(f.uart.read(IIR) & 0x0f, 0x01);
  f.uart.write(THR, 'z');  // and it comes back after each transmitted byte
  EXPECT_EQ(f.irqs, (std::vector<bool>{true, false, true}));
  EXPECT_EQ(f.out, "z");
}

TEST(Uart, LoopbackForTheDriverProbe) {
  Fixture f;
  f.uart.write(MCR, 0x1a);  // LOOP | OUT2 | RTS
  EXPECT_EQ(f.uart.read(MSR) & 0xf0, 0x90);
  f.uart.write(MCR, 0x1f);
  EXPECT_EQ(f.uart.read(MSR) & 0xf0, 0xf0);
  f.uart.write(THR, 'L');  // looped back, not transmitted
  EXPECT_TRUE(f.out.empty());
  EXPECT_EQ(f.uart.read(THR), 'L');
  f.uart.write(MCR, 0x0b);
  EXPECT_EQ(f.uart.read(MSR), 0xb0);
}

TEST(I8042, SelfTestCommandByteAndReset) {
  I8042 k;
  EXPECT_EQ(k.read(0x64) & 1, 0);
  EXPECT_FALSE(k.write(0x64, 0xaa));
  EXPECT_EQ(k.read(0x64) & 1, 1);
  EXPECT_EQ(k.read(0x60), 0x55);
  EXPECT_FALSE(k.write(0x64, 0x60));
  EXPECT_FALSE(k.write(0x60, 0x65));
  EXPECT_FALSE(k.write(0x64, 0x20));
  EXPECT_EQ(k.read(0x60), 0x65);
  EXPECT_TRUE(k.write(0x64, 0xfe));
  for (int i = 0; i < 100; ++i) k.write(0x64, 0x20);  // output queue stays bounded
  EXPECT_FALSE(k.write(0x60, 0x00));
}
