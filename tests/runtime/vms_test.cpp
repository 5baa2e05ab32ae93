// The VM store (vms.hpp) on a temporary directory: ids, names, lookup by id, name and prefix,
// records that survive their processes, concurrent creates, and the console log's rotation and
// `logs --tail/-t` reading.
#include "img2vm/runtime/vms.hpp"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"

namespace img2vm::runtime {
namespace {

namespace fs = std::filesystem;

class Vms : public ::testing::Test {
 protected:
  TempDir tmp{"img2vm-vms-test"};
  VmStore vms{tmp.path() / "vms"};

  VmRecord make(const std::string& name = "") {
    VmCreate c;
    c.name = name;
    c.image = "alpine:3.20";
    c.command = {"sleep", "1"};
    return vms.create(c, "{\"machine\":{}}");
  }
  // A record with an id we choose (for prefix tests): made, then renamed into place.
  VmRecord make_with_id(const std::string& id, const std::string& name) {
    VmRecord r = make(name);
    fs::rename(vms.vm_dir(r.id), vms.vm_dir(id));
    std::string text = read_file(vms.vm_dir(id) / "state.json");
    text.replace(text.find(r.id), r.id.size(), id);
    write_file_atomic(vms.vm_dir(id) / "state.json", text);
    r.id = id;
    return r;
  }
};

TEST_F(Vms, CreateRecordsTheVmWithANewIdAndAName) {
  VmRecord r = make();
  EXPECT_TRUE(std::regex_match(r.id, std::regex("[0-9a-f]{64}"))) << r.id;
  EXPECT_TRUE(is_vm_name(r.name)) << r.name;
  EXPECT_EQ(r.status, VmStatus::kCreated);
  EXPECT_EQ(r.vsock_socket, (vms.vm_dir(r.id) / "vsock.sock").string());
  EXPECT_TRUE(std::regex_match(r.created, std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z)")))
      << r.created;
  EXPECT_EQ(read_file(vms.vm_dir(r.id) / "spec.json"), "{\"machine\":{}}");
  VmRecord back = vms.get(r.id);
  EXPECT_EQ(back.name, r.name);
  EXPECT_EQ(back.image, "alpine:3.20");
  EXPECT_EQ(back.command, (std::vector<std::string>{"sleep", "1"}));
  EXPECT_EQ(back.created, r.created);
  // Nothing but the VM's directory and the store's lock file: no temporary leftovers.
  std::set<std::string> entries;
  for (const auto& e : fs::directory_iterator(vms.dir())) entries.insert(e.path().filename());
  EXPECT_EQ(entries, (std::set<std::string>{".lock", r.id}));
  // Generated names differ.
  std::set<std::string> names = {r.name};
  for (int i = 0; i < 20; ++i) EXPECT_TRUE(names.insert(make().name).second);
}

TEST_F(Vms, NamesAreUniqueAndCheckedWithDockersWords) {
  VmRecord web = make("web");
  try {
    make("web");
    FAIL() << "a second VM named web";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("Conflict. The container name \"/web\" is already in use "
                                         "by container \"" +
                                         web.id + "\""),
              std::string::npos)
        << e.what();
  }
  for (const std::string& bad :
       std::vector<std::string>{"-x", "a/b", "a b", "_x", ".x", "é", std::string(129, 'a')}) {
    EXPECT_FALSE(is_vm_name(bad)) << bad;
    EXPECT_THROW(make(bad), Error) << bad;
  }
  for (const std::string& good :
       std::vector<std::string>{"a", "web-1", "A.b_c-d", std::string(128, 'a')})
    EXPECT_TRUE(is_vm_name(good)) << good;
  EXPECT_EQ(vms.list().size(), 1u);
}

TEST_F(Vms, LookupByIdNameAndUniquePrefix) {
  const std::string a = "abc1" + std::string(60, '0');
  const std::string b = "abc2" + std::string(60, '0');
  make_with_id(a, "first");
  make_with_id(b, "second");
  EXPECT_EQ(vms.get(a).name, "first");
  EXPECT_EQ(vms.get("second").id, b);
  EXPECT_EQ(vms.get("abc1").id, a);
  EXPECT_EQ(vms.get("abc2000").id, b);
  try {
    vms.get("abc");
    FAIL() << "an ambiguous prefix matched";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_STREQ(e.what(), "multiple IDs found with provided prefix: abc");
  }
  try {
    vms.get("nosuch");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
    EXPECT_STREQ(e.what(), "No such VM: nosuch");
  }
  EXPECT_FALSE(vms.find("../vms"));
  EXPECT_FALSE(vms.find(""));
  // A name that looks like a prefix wins over the prefix (docker's order).
  make_with_id("fed" + std::string(61, '1'), "abc");
  EXPECT_EQ(vms.get("abc").name, "abc");
}

TEST_F(Vms, DamagedOrHugeStateFilesAreSkipped) {
  VmRecord ok = make("ok");
  VmRecord bad = make("bad");
  write_file_atomic(vms.vm_dir(bad.id) / "state.json", "{not json");
  VmRecord big = make("big");
  write_file_atomic(vms.vm_dir(big.id) / "state.json",
                    std::string(VmStore::kMaxStateBytes + 1, ' '));
  fs::create_directory(vms.dir() / "not-a-vm");
  auto all = vms.list();
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].id, ok.id);
  // The damaged ones can still be removed by their full id.
  vms.remove(bad.id, false);
  vms.remove(big.id, false);
  EXPECT_FALSE(fs::exists(vms.vm_dir(bad.id)));
  EXPECT_FALSE(fs::exists(vms.vm_dir(big.id)));
  EXPECT_THROW(vms.remove(bad.id, false), Error);
}

// A process that has ended and been reaped: its pid recorded as a VM's monitor.
pid_t reaped_pid(uint64_t* start_time) {
  int p[2];
  EXPECT_EQ(::pipe(p), 0);
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(p[1]);
    char b;
    (void)!::read(p[0], &b, 1);
    ::_exit(0);
  }
  *start_time = ProcessRef::of(pid).start_time;
  ::close(p[0]);
  ::close(p[1]);
  int st;
  ::waitpid(pid, &st, 0);
  return pid;
}

TEST_F(Vms, ARunningVmWhoseMonitorIsGoneIsReportedExited) {
  VmRecord r = make("gone");
  uint64_t start = 0;
  pid_t pid = reaped_pid(&start);
  ASSERT_NE(start, 0u);
  vms.update(r.id, [&](VmRecord& s) {
    s.status = VmStatus::kRunning;
    s.monitor = {pid, start};
    s.vmm = {pid, start};
  });
  VmRecord seen = vms.get("gone");
  EXPECT_EQ(seen.status, VmStatus::kExited);
  EXPECT_EQ(seen.exit_code, 255);
  EXPECT_NE(seen.exit_reason.find("the VMM is gone; no exit status was recorded"),
            std::string::npos)
      << seen.exit_reason;
  EXPECT_FALSE(seen.finished.empty());
  // Recorded, not only shown: the state file says so too.
  EXPECT_NE(read_file(vms.vm_dir(r.id) / "state.json").find("\"exited\""), std::string::npos);
  EXPECT_EQ(vms.wait("gone"), 255);
  vms.remove("gone", false);
  EXPECT_FALSE(vms.find("gone"));
  EXPECT_FALSE(fs::exists(vms.vm_dir(r.id)));
}

TEST_F(Vms, AnAttachedRunsEndIsReadFromItsExitFile) {
  uint64_t start = 0;
  pid_t pid = reaped_pid(&start);
  VmCreate c;
  c.name = "attached";
  c.detached = false;
  VmRecord r = vms.create(c, "{}");
  vms.update(r.id, [&](VmRecord& s) {
    s.status = VmStatus::kRunning;
    s.monitor = s.vmm = {pid, start};
  });
  write_file_atomic(vms.exit_file(r.id), R"({"ExitCode":7,"Reason":"exited with code 7"})");
  VmRecord seen = vms.get("attached");
  EXPECT_EQ(seen.status, VmStatus::kExited);
  EXPECT_EQ(seen.exit_code, 7);
  EXPECT_EQ(seen.exit_reason, "exited with code 7");
  EXPECT_EQ(vms.wait("attached"), 7);

  // run --rm --name: kept (the name taken) while it runs, gone once it has ended.
  c.name = "transient";
  c.auto_remove = true;
  VmRecord t = vms.create(c, "{}");
  ProcessRef me = ProcessRef::of(::getpid());
  vms.update(t.id, [&](VmRecord& s) {
    s.status = VmStatus::kRunning;
    s.monitor = me;
  });
  EXPECT_EQ(vms.list().size(), 2u);
  EXPECT_THROW(vms.check_name_free("transient"), Error);
  vms.update(t.id, [&](VmRecord& s) { s.monitor = {pid, start}; });
  EXPECT_EQ(vms.list().size(), 1u);
  EXPECT_FALSE(fs::exists(vms.vm_dir(t.id)));
  vms.check_name_free("transient");
}

TEST_F(Vms, APidReusedByAnotherProcessIsNotTheVm) {
  // This very process, recorded with another start time: not alive.
  ProcessRef me = ProcessRef::of(::getpid());
  ASSERT_EQ(me.pid, ::getpid());
  EXPECT_TRUE(me.alive());
  EXPECT_FALSE((ProcessRef{me.pid, me.start_time + 1}).alive());
  EXPECT_FALSE(ProcessRef{}.alive());
  VmRecord r = make("reused");
  vms.update(r.id, [&](VmRecord& s) {
    s.status = VmStatus::kRunning;
    s.monitor = {me.pid, me.start_time + 1};
  });
  EXPECT_EQ(vms.get("reused").status, VmStatus::kExited);
  // The same with the right start time: running, and rm refuses it without -f.
  VmRecord live = make("live");
  vms.update(live.id, [&](VmRecord& s) {
    s.status = VmStatus::kRunning;
    s.monitor = me;
  });
  EXPECT_EQ(vms.get("live").status, VmStatus::kRunning);
  try {
    vms.remove("live", false);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("You cannot remove a running container " + live.id),
              std::string::npos)
        << e.what();
  }
}

TEST_F(Vms, ConcurrentCreatesWithOneNameGiveOneVm) {
  std::vector<std::thread> ts;
  std::atomic<int> made{0}, refused{0};
  for (int i = 0; i < 8; ++i)
    ts.emplace_back([&] {
      try {
        make("same");
        ++made;
      } catch (const Error&) {
        ++refused;
      }
    });
  for (auto& t : ts) t.join();
  EXPECT_EQ(made.load(), 1);
  EXPECT_EQ(refused.load(), 7);
  EXPECT_EQ(vms.list().size(), 1u);
}

TEST_F(Vms, ConcurrentUpdatesLoseNothing) {
  VmRecord r = make("counter");
  std::vector<std::thread> ts;
  for (int i = 0; i < 4; ++i)
    ts.emplace_back([&] {
      for (int k = 0; k < 25; ++k) vms.update(r.id, [](VmRecord& s) { s.command.push_back("x"); });
    });
  for (auto& t : ts) t.join();
  EXPECT_EQ(vms.get("counter").command.size(), 2u + 100u);
}

TEST(VmSignals, ParseSignalTakesNamesAndNumbers) {
  EXPECT_EQ(parse_signal("TERM"), SIGTERM);
  EXPECT_EQ(parse_signal("sigusr1"), SIGUSR1);
  EXPECT_EQ(parse_signal("KILL"), SIGKILL);
  EXPECT_EQ(parse_signal("9"), 9);
  EXPECT_THROW(parse_signal("NOPE"), Error);
  EXPECT_THROW(parse_signal("0"), Error);
  EXPECT_THROW(parse_signal("65"), Error);
}

class Logs : public ::testing::Test {
 protected:
  TempDir dir{"img2vm-log-test"};
  static std::string strip_times(const std::string& s) {
    return std::regex_replace(
        s, std::regex(R"(^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z )", std::regex::multiline), "");
  }
};

TEST_F(Logs, EachLineGetsItsTimeAndPartsOfLinesStayWhole) {
  {
    ConsoleLog log(dir.path());
    log.write("hel");
    log.write("lo\nwor");
    log.write("ld\n\nlast");
  }
  std::string raw = read_file(dir.path() / "console.log");
  std::regex line(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z (hello|world|)\n)");
  std::istringstream in(raw);
  std::string l;
  int n = 0;
  while (std::getline(in, l)) {
    if (in.eof()) {
      EXPECT_TRUE(std::regex_match(l, std::regex(R"(\S+Z last)"))) << l;
    } else {
      EXPECT_TRUE(std::regex_match(l + "\n", line)) << l;
    }
    ++n;
  }
  EXPECT_EQ(n, 4);
  EXPECT_EQ(read_console_log(dir.path(), {}), "hello\nworld\n\nlast");
  EXPECT_EQ(read_console_log(dir.path(), {true, std::nullopt}), raw);
  EXPECT_EQ(read_console_log(dir.path(), {false, 2}), "\nlast");
  EXPECT_EQ(read_console_log(dir.path(), {false, 0}), "");
  EXPECT_EQ(read_console_log(dir.path(), {false, 99}), "hello\nworld\n\nlast");
  EXPECT_EQ(strip_times(read_console_log(dir.path(), {true, 1})), "last");
}

TEST_F(Logs, RotationKeepsTwoBoundedFiles) {
  constexpr uint64_t kMax = 4096;
  {
    ConsoleLog log(dir.path(), kMax);
    for (int i = 0; i < 1000; ++i) log.write("line " + std::to_string(i) + "\n");
    // A line longer than the limit is cut, never a file beyond it by more than a line's time.
    log.write(std::string(3 * kMax, 'x') + "\nend\n");
  }
  const uint64_t slack = 64;  // the time and newline of a cut line
  EXPECT_LE(fs::file_size(dir.path() / "console.log"), kMax + slack);
  EXPECT_LE(fs::file_size(dir.path() / "console.log.1"), kMax + slack);
  EXPECT_FALSE(fs::exists(dir.path() / "console.log.2"));
  std::string text = read_console_log(dir.path(), {});
  EXPECT_EQ(text.substr(text.size() - 4), "end\n");
  // The tail reads across both files: every line whole.
  std::string tail = read_console_log(dir.path(), {false, 3});
  EXPECT_EQ(std::count(tail.begin(), tail.end(), '\n'), 3) << tail;
  EXPECT_EQ(tail.substr(tail.size() - 4), "end\n");
}

TEST_F(Logs, StderrSharesTheLogInOrderWithLinesKeptApart) {
  {
    ConsoleLog log(dir.path());
    log.write("out 1\nout ");
    log.write("err 1\n", ConsoleLog::Stream::kStderr);
    log.write("2\n");
    log.write("err ", ConsoleLog::Stream::kStderr);
    log.write("2\n", ConsoleLog::Stream::kStderr);
  }
  EXPECT_EQ(read_console_log(dir.path(), {}), "out 1\nout \nerr 1\n2\nerr 2\n");
  std::string raw = read_file(dir.path() / "console.log");
  EXPECT_EQ(std::count(raw.begin(), raw.end(), 'Z'), 5) << raw;   // each line has its time
  EXPECT_EQ(std::count(raw.begin(), raw.end(), '\t'), 2) << raw;  // and the stderr ones a tab
  // Each stream's own lines, in the order written: what `logs` puts on stdout and stderr.
  std::vector<std::pair<std::string, ConsoleLog::Stream>> parts;
  auto sink = [&](std::string_view t, ConsoleLog::Stream s) { parts.emplace_back(t, s); };
  read_console_log(dir.path(), {}, sink);
  using S = ConsoleLog::Stream;
  const std::vector<std::pair<std::string, S>> want = {{"out 1\nout \n", S::kConsole},
                                                       {"err 1\n", S::kStderr},
                                                       {"2\n", S::kConsole},
                                                       {"err 2\n", S::kStderr}};
  EXPECT_EQ(parts, want);
  // -t: every line "TIME text", whichever its stream; --tail counts both streams' lines.
  parts.clear();
  read_console_log(dir.path(), {true, 2}, sink);
  ASSERT_EQ(parts.size(), 2u);
  EXPECT_EQ(strip_times(parts[0].first), "2\n");
  EXPECT_EQ(strip_times(parts[1].first), "err 2\n");
  EXPECT_EQ(parts[1].second, S::kStderr);
  // A line cut by rotation or written by hand with no separator stays the console's.
  write_file_atomic(dir.path() / "console.log",
                    "no-separator\n2026-01-01T00:00:00.000000000Z\tx\n");
  parts.clear();
  read_console_log(dir.path(), {}, sink);
  const std::vector<std::pair<std::string, S>> odd = {{"\n", S::kConsole}, {"x\n", S::kStderr}};
  EXPECT_EQ(parts, odd);
}

TEST_F(Logs, NoLogYetReadsEmpty) { EXPECT_EQ(read_console_log(dir.path(), {}), ""); }

}  // namespace
}  // namespace img2vm::runtime
