// The I/O ports through which the guest init talks to the runner (docs/guest-abi.md §5). The
// guest writes EXIT, INIT_FAIL and BOOT_MARK (8-bit) and reads SIGNAL (8-bit), WINSIZE (16-bit)
// and STDIN_BYTES (32-bit). Under qemu the EXIT port is
// `-device isa-debug-exit,iobase=0xf4,iosize=1` (qemu then exits with (N << 1) | 1).
#pragma once

#include <cstdint>

namespace img2vm::guestabi {

inline constexpr uint16_t kExitPort =
    0x0f4;  // workload exit status 0-255 (128+N: signal N); ends the VM
inline constexpr uint16_t kInitFailPort =
    0x0f5;  // the init failed before the workload ran (InitFail code)
inline constexpr uint16_t kBootMarkPort = 0x0f6;  // boot-time markers, below
inline constexpr uint8_t kMarkInitStarted = 1;
inline constexpr uint8_t kMarkWorkloadExec = 2;
// Only with RunOverrides::wait_for_start (OCI create): the workload's process exists and waits
// for the host's start (agent op "start"); the exec agent is running (it may not listen yet: the
// host's connection retries). kMarkWorkloadExec follows once the start has released it.
inline constexpr uint8_t kMarkWorkloadCreated = 3;
// The guest is at the point a snapshot is taken (docs/snapshots.md): a host that asked for it
// (vm::MachineConfig::pause_at_snapshot_point) pauses the VM here, right after this write.
inline constexpr uint8_t kMarkSnapshotPoint = 4;
// Read by the init about every 100 ms while the workload runs: 0x00 (or 0xff) nothing pending,
// 1-64 deliver that signal to the workload, kStopRequest deliver the image's StopSignal.
// Reading consumes the request.
inline constexpr uint16_t kSignalPort = 0x0f7;
inline constexpr uint8_t kStopRequest = 0x80;
// kWindowSizeChanged on SIGNAL: the terminal's size changed; the init reads it from the two
// 16-bit WINSIZE ports (rows, columns; 0 when unknown) and applies it to the workload's tty.
// Signal requests take precedence: a resize never replaces a pending signal.
inline constexpr uint8_t kWindowSizeChanged = 0x81;
inline constexpr uint16_t kWinRowsPort = 0x0f8;  // 16-bit read
inline constexpr uint16_t kWinColsPort = 0x0fa;  // 16-bit read
// kStdinClosed on SIGNAL: the console input (-i) has ended; STDIN_BYTES (32-bit read) is how many
// bytes it carried in all (mod 2^32), so the init closes the workload's stdin after exactly those.
// Reported once, after any signal and resize.
inline constexpr uint8_t kStdinClosed = 0x82;
inline constexpr uint16_t kStdinBytesPort = 0x0fc;  // 32-bit read
// The init's ioperm range: kExitPort up to 0x0ff.
inline constexpr uint16_t kFirstPort = kExitPort;
inline constexpr unsigned kPortCount = 12;

// INIT_FAIL values: what failed before the workload ran.
enum InitFail : uint8_t {
  kFailInternal = 1,
  kFailConfig = 2,     // config.json unreadable or invalid
  kFailOverrides = 3,  // the run overrides invalid
  kFailMount = 4,
  kFailUser = 5,
  kFailWorkdir = 6,
  kFailCommand = 7,  // no command specified
  kFailSpawn = 8,
  kFailHostname = 9,
  kFailNetwork = 10,
};

// Legacy PC devices the runner emulates for the guest kernel (not used by the init).
inline constexpr uint16_t kUartBase = 0x3f8;  // COM1, IRQ 4: the console (ttyS0)
inline constexpr unsigned kUartIrq = 4;
// COM2, IRQ 3 (ttyS1): output only, the workload's stderr when it has no tty (the guest init
// falls back to the console when the kernel has no such port).
inline constexpr uint16_t kStderrUartBase = 0x2f8;
inline constexpr unsigned kStderrUartIrq = 3;
inline constexpr uint16_t kI8042Data = 0x60;
inline constexpr uint16_t kI8042Command = 0x64;  // write 0xfe: reset (the VM ends as a reboot)

}  // namespace img2vm::guestabi
