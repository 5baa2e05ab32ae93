// `img2vm run` end to end: real images (busybox-static, and a glibc image made of Debian's own
// bash and libraries) built with the image builder, converted by `img2vm convert` on this host,
// then booted with our guest kernel in our KVM runner. Where this host's /dev/kvm cannot boot
// Linux (none, or PVM), the runs happen inside the nested rig's L1 guest (tests/nested), all in
// one L1 boot: a shell script runs every case and prints its output between markers, and the
// assertions here read them back.
//
// Needs: the guest kernel ($IMG2VM_KERNEL or ~/.cache/img2vm/kernel/*/vmlinux), busybox-static,
// and qemu-system-x86_64 for the nested route. Missing pieces skip the test, saying which.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>

#include "image_builder.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/runtime/kernel.hpp"
#include "nested_rig.hpp"
#include "process.hpp"

using namespace img2vm;
using namespace img2vm::testing;
namespace fs = std::filesystem;

namespace {

// The guest kernel as img2vm finds it ($IMG2VM_KERNEL, else the cached build of this tree's
// guest/kernel: its cache key, not whichever build the cache lists first).
std::optional<fs::path> find_kernel() {
  try {
    if (auto k = img2vm::runtime::find_guest_kernel()) return k->path;
  } catch (const img2vm::Error&) {
  }
  return std::nullopt;
}

std::string file_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

constexpr const char* kApplets[] = {"sh",    "echo",  "id",   "cat",   "sleep", "pwd",
                                    "env",   "test",  "true", "false", "grep",  "head",
                                    "mkdir", "mount", "ls",   "httpd", "nc",    "printf",
                                    "ip",    "stty",  "ping", "sed",   "dd",    "md5sum"};

// busybox-static with a few applets, users and groups; CMD prints a line.
ImageSpec busybox_image() {
  std::vector<Entry> e = {
      dir("bin"),
      dir("etc"),
      dir("tmp", 01777),
      dir("root", 0700),
      file("bin/busybox", file_bytes("/bin/busybox"), 0755),
      file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"),
      file("etc/group", "root:x:0:\napp:x:1000:\n")};
  for (const char* a : kApplets) e.push_back(symlink_to(std::string("bin/") + a, "busybox"));
  ImageSpec s;
  s.layers.push_back(layer(e));
  s.config.cmd = {"sh", "-c", "echo hello from busybox"};
  s.config.env = {"PATH=/bin", "BASE=1"};
  return s;
}

// Debian's bash with the shared libraries it loads, copied from this host (a Debian 12 system).
ImageSpec glibc_image() {
  std::vector<Entry> e = {dir("etc"),
                          file("etc/debian_version", file_bytes("/etc/debian_version"))};
  auto ldd = run_command({"ldd", "/bin/bash"});
  std::vector<std::string> files = {"/bin/bash"};
  std::istringstream in(ldd.out);
  for (std::string line; std::getline(in, line);) {
    auto slash = line.find('/');
    if (slash == std::string::npos) continue;
    files.push_back(line.substr(slash, line.find(' ', slash) - slash));
  }
  std::set<std::string> dirs;
  for (const auto& f : files) {
    fs::path p = fs::path(f).relative_path();
    for (fs::path d = p.parent_path(); !d.empty(); d = d.parent_path()) dirs.insert(d.string());
  }
  for (const auto& d : dirs) e.push_back(dir(d));
  for (const auto& f : files)
    e.push_back(file(fs::path(f).relative_path().string(), file_bytes(fs::canonical(f)), 0755));
  ImageSpec s;
  s.layers.push_back(layer(e, LayerCompression::kZstd));
  s.config.cmd = {"/bin/bash", "-c",
                  "echo \"debian $(</etc/debian_version) bash ${BASH_VERSINFO[0]}\""};
  return s;
}

// busybox with a web root, an HTTP client and a UDP echo tool, serving /www on port 80.
ImageSpec net_image() {
  ImageSpec net = busybox_image();
  // HTTP client: busybox nc (Debian's static busybox wget crashes in getaddrinfo).
  net.layers.push_back(layer(
      {file("bin/udp_echo", file_bytes(UDP_ECHO_BINARY), 0755),
       file("bin/http_get",
            "#!/bin/sh\nprintf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w \"${3:-20}\" \"$1\" \"$2\"\n",
            0755),
       dir("www"), file("www/index.html", "served-by-image\n")}));
  net.config.exposed_ports = {"80/tcp"};
  net.config.cmd = {"httpd", "-f", "-p", "80", "-h", "/www"};
  return net;
}

struct Case {
  std::string out, err;
  int rc = -1;
};

// Splits the script's output at its @@BEGIN/@@STDERR/@@END markers.
std::map<std::string, Case> parse_cases(const std::string& text) {
  std::map<std::string, Case> cases;
  size_t pos = 0;
  while ((pos = text.find("@@BEGIN ", pos)) != std::string::npos) {
    size_t name_end = text.find("@@", pos + 8);
    if (name_end == std::string::npos) break;
    std::string name = text.substr(pos + 8, name_end - pos - 8);
    size_t body = text.find('\n', name_end) + 1;
    size_t err_mark = text.find("\n@@STDERR@@\n", body);
    size_t end_mark = text.find("\n@@END " + name + " ", body);
    if (err_mark == std::string::npos || end_mark == std::string::npos) break;
    Case c;
    c.out = text.substr(body, err_mark - body);
    c.err = text.substr(err_mark + 12, end_mark - err_mark - 12);
    c.rc = std::atoi(text.c_str() + end_mark + 8 + name.size());
    cases[name] = c;
    pos = end_mark + 1;
  }
  return cases;
}

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// Shell functions every cases script starts with (after IMG2VM_HOME and W are set): `begin NAME`
// prints a case's @@BEGIN marker and starts its clock, and a watchdog bounds each case. A case
// still running after kCaseLimitSeconds is reported as "@@HUNG NAME@@" with what this test's
// img2vm processes were doing (each thread's state, wait channel, system call and kernel stack),
// and those processes are killed, so the case ends with an error and the cases after it still
// run: one hang costs minutes and says where it was, instead of the whole rig's timeout.
// "This test's" processes are those named img2vm or img2vm-vmm whose environment has this
// script's IMG2VM_HOME (nothing else on the machine is touched).
constexpr int kCaseLimitSeconds = 300;
std::string case_watchdog() {
  return "begin() { echo \"@@BEGIN $1@@\"; echo \"$1 $(date +%s)\" > \"$W/.case\"; }\n"
         "mine() { for d in /proc/[0-9]*; do case $(cat $d/comm 2>/dev/null) in img2vm|img2vm-vmm) "
         ";; *) continue;; esac;"
         " tr '\\0' '\\n' < $d/environ 2>/dev/null | grep -qxF \"IMG2VM_HOME=$IMG2VM_HOME\" && "
         "echo ${d#/proc/}; done; }\n"
         "watchdog() { while [ -e \"$W/.watch\" ]; do sleep 5 </dev/null >/dev/null 2>&1; read -r "
         "name start < \"$W/.case\" "
         "2>/dev/null || continue;\n"
         "  [ $(( $(date +%s) - start )) -ge " +
         std::to_string(kCaseLimitSeconds) +
         " ] || continue; rm -f \"$W/.case\";\n"
         "  echo \"@@HUNG $name@@ still running after " +
         std::to_string(kCaseLimitSeconds) +
         " s; load $(cat /proc/loadavg)\";\n"
         "  for p in $(mine); do echo \"pid $p: $(tr '\\0' ' ' < /proc/$p/cmdline | cut -c1-300)\";"
         " for t in /proc/$p/task/*; do echo \"  thread ${t##*/} $(cat $t/comm)"
         " $(grep '^State:' $t/status) wchan=$(cat $t/wchan) syscall=$(cat $t/syscall)\";"
         " sed 's/^/    /' $t/stack 2>/dev/null; done; done\n"
         "  for p in $(mine); do kill -9 $p; done; echo \"@@HUNG-END $name@@\"; done; }\n"
         "touch \"$W/.watch\"; watchdog & watchdog_pid=$!\n"
         "trap 'rm -f \"$W/.watch\"; kill $watchdog_pid 2>/dev/null' EXIT\n";
}

// A workload that ignores SIGTERM, run in the background and sent Ctrl-C (SIGINT) once it is
// ready; `twice`: a second SIGINT two seconds later.
std::string stop_case(const std::string& name, const std::string& cmd, bool twice) {
  // The previous case's out file goes first: the shell redirects in the background child, so
  // the wait below could otherwise find that case's "ready" and signal this one too early.
  return "begin " + name + "\nrm -f \"$W/out\" \"$W/err\"\n" + cmd +
         " sh -c 'trap \"\" TERM; echo ready; while :; do sleep 1; done' >\"$W/out\" 2>\"$W/err\" "
         "</dev/null &\n"
         "pid=$!; i=0; while ! grep -q ready \"$W/out\" && [ $i -lt 120 ]; do sleep 1; i=$((i+1)); "
         "done\n"
         "kill -INT $pid; " +
         std::string(twice ? "sleep 2; kill -INT $pid; " : "") +
         "wait $pid; rc=$?\n"
         "cat \"$W/out\"; echo; echo @@STDERR@@; cat \"$W/err\"; echo; echo \"@@END " +
         name + " $rc@@\"\n";
}

// The cases a script reported, by name; a missing one is a test failure showing the output.
class Cases {
 public:
  explicit Cases(std::string output) : output_(std::move(output)), cases_(parse_cases(output_)) {
    // What the watchdog (case_watchdog) found, each hang on its own.
    for (size_t pos = 0; (pos = output_.find("@@HUNG ", pos)) != std::string::npos;) {
      size_t end = output_.find("@@HUNG-END", pos);
      ADD_FAILURE() << "a case hung and was killed after " << kCaseLimitSeconds << " s:\n"
                    << output_.substr(pos, end == std::string::npos ? 20000 : end - pos);
      pos += 7;
    }
  }
  const Case& get(const std::string& name) const {
    static const Case none;
    auto it = cases_.find(name);
    if (it == cases_.end()) {
      ADD_FAILURE() << "case " << name << " did not report; output:\n" << output_;
      return none;
    }
    return it->second;
  }

 private:
  std::string output_;
  std::map<std::string, Case> cases_;
};

bool has(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

// Runs a cases script here (hardware KVM) or inside L1 with `files`; returns what it printed.
// `direct_prefix` goes before the command on the direct route (L1 is a machine of its own).
std::string run_script(const fs::path& script, const std::vector<fs::path>& files,
                       std::chrono::seconds timeout,
                       const std::vector<std::string>& direct_prefix = {}) {
  if (kvm_route(false) == KvmRoute::kDirect) {
    std::vector<std::string> argv = direct_prefix;
    argv.insert(argv.end(), {"sh", script.string()});
    auto r = run_command(argv, {.input = {}, .env = {}, .cwd = {}, .timeout = timeout});
    return r.out;
  }
  auto r = run_nested({"sh", script.string()}, files, timeout);
  EXPECT_EQ(r.exit_code, 0) << r.describe();
  return r.output;
}

}  // namespace

TEST(RunKvm, DockerRunSemanticsInOurRunner) {
  auto kernel = find_kernel();
  if (!kernel) GTEST_SKIP() << "no guest kernel: run `img2vm kernel build` or set IMG2VM_KERNEL";
  if (!fs::exists("/bin/busybox")) GTEST_SKIP() << "needs busybox-static (scripts/setup.sh)";
  const char* bin = std::getenv("IMG2VM_BIN");
  ASSERT_TRUE(bin) << "IMG2VM_BIN not set (run through ctest)";

  TempDir work("img2vm-run-kvm");
  fs::path w = work.path();
  fs::path home = w / "home";
  write_oci_layout(w / "busybox", {{"latest", build_image(busybox_image())}});
  write_oci_layout(w / "debian", {{"latest", build_image(glibc_image())}});
  {
    // A directory of 3000 files: an htree (dir_index) directory that the guest kernel reads and
    // adds to.
    ImageSpec big = busybox_image();
    std::vector<Entry> files = {dir("big")};
    for (int i = 0; i < 3000; ++i) {
      char name[32];
      std::snprintf(name, sizeof name, "big/file-%04d", i);
      files.push_back(file(name, std::to_string(i) + "\n"));
    }
    big.layers.push_back(layer(files));
    write_oci_layout(w / "bigdir", {{"latest", build_image(big)}});
  }
  // FROM scratch: one static musl program and nothing else (no shell, /etc, /dev or /proc).
  ASSERT_STRNE(SCRATCH_HELLO_BINARY, "")
      << "musl-gcc was not found at configure time (scripts/setup.sh installs musl-tools)";
  ImageSpec scratch;
  scratch.layers.push_back(layer({file("hello", file_bytes(SCRATCH_HELLO_BINARY), 0755)}));
  scratch.config.cmd = {"/hello"};
  write_oci_layout(w / "scratch", {{"latest", build_image(scratch)}});
  write_file_atomic(w / "env.list", "# comment\nFROM_FILE=file value\n");
  fs::copy_file(*kernel, w / "vmlinux");

  // Convert here (fast) into the rootfs cache that the runs in L1 then find.
  std::map<std::string, std::string> env = {{"IMG2VM_HOME", home.string()},
                                            {"IMG2VM_INIT", IMG2VM_INIT_BINARY}};
  for (const char* img : {"busybox", "debian", "scratch", "bigdir"}) {
    auto c = run_command({bin, "convert", "oci:" + (w / img).string()},
                         {.input = {}, .env = env, .cwd = {}, .timeout = std::chrono::minutes(5)});
    ASSERT_EQ(c.exit_code, 0) << c.describe();
  }

  std::string B = "oci:" + (w / "busybox").string(), D = "oci:" + (w / "debian").string();
  std::string run = quote(bin) + " run --kernel " + quote((w / "vmlinux").string());
  std::string big(3000, 'x');
  std::ostringstream sh;
  sh << "export IMG2VM_HOME=" << quote(home.string())
     << " IMG2VM_INIT=" << quote(IMG2VM_INIT_BINARY) << "\n"
     << "W=" << quote(w.string()) << "\n"
     << case_watchdog()
     << "c() { name=$1; shift; begin \"$name\"; \"$@\" >\"$W/out\" 2>\"$W/err\" "
        "</dev/null; rc=$?;\n"
     << "  cat \"$W/out\"; echo; echo @@STDERR@@; cat \"$W/err\"; echo; echo \"@@END $name "
        "$rc@@\"; }\n"
     << "c cache-before sh -c 'sha256sum \"$IMG2VM_HOME\"/rootfs/*.ext4'\n"
     << "c default " << run << " --json --timings " << B << "\n"
     << "c exit3 " << run << " " << B << " sh -c 'exit 3'\n"
     << "c bigdir " << run << " oci:" << quote((w / "bigdir").string())
     << " sh -c 'ls /big | grep -c .; cat /big/file-2345; echo added > /big/zz-new; cat "
        "/big/zz-new; ls /big/file-0007;"
        " ls /big | grep -c .'\n"
     << "c debian " << run << " " << D << "\n"
     << "c scratch " << run << " -w /work oci:" << quote((w / "scratch").string()) << "\n"
     << "c user-workdir " << run << " -u 1234:5678 -w /some/new/dir " << B
     << " sh -c 'id -u; id -g; pwd'\n"
     << "c named-user " << run << " -u app " << B << " id\n"
     << "c env " << run << " -e 'A=x y=z' -e BASE=2 --env-file \"$W/env.list\" " << B
     << " sh -c 'echo \"[$A][$BASE][$FROM_FILE]\"'\n"
     << "c big-env " << run << " -e BIG=" << big << " " << B << " sh -c 'echo ${#BIG}'\n"
     << "c entrypoint " << run << " --entrypoint /bin/echo " << B << " one two\n"
     << "c missing " << run << " " << B
     << " nosuchcmd\n"
     // The workload's stdout and stderr apart, as docker's (the guest's second UART).
     << "c streams " << run << " " << B
     << " sh -c 'echo to-stdout; echo to-stderr >&2; echo to-stdout-2; exit 5'\n"
     << "c init-fail " << run << " -u nosuchuser " << B << " true\n"
     << "c write " << run << " " << B << " sh -c 'echo written > /marker && cat /marker'\n"
     << "c not-kept " << run << " " << B << " test -e /marker\n"
     << "c keep " << run << " --keep \"$W/kept.ext4\" " << B << " sh -c 'echo kept-data > /kept'\n"
     << "c extra-disk " << run << " --disk \"$W/kept.ext4:ro\" " << B
     << " sh -c 'mkdir -p /mnt && mount -o ro /dev/vdb /mnt && cat /mnt/kept'\n"
     << "c cpus " << run << " --cpus 2 " << B << " sh -c 'grep -c ^processor /proc/cpuinfo'\n"
     << "c timeout " << run << " --timeout 60s " << B << " sh -c 'echo started; sleep 1000'\n"
     << "begin stdin; echo piped-line | " << run << " -i " << B
     << " head -n1 >\"$W/out\" 2>\"$W/err\"; rc=$?; cat \"$W/out\"; echo; echo @@STDERR@@; cat "
        "\"$W/err\"; echo;"
     << " echo \"@@END stdin $rc@@\"\n"
     // The end of piped stdin reaches the workload (-i without -t: a pipe, as docker's), after
     // every byte: text, nothing at all, and 20000 random bytes checked by md5.
     << "begin stdin-eof; printf 'line1\\nline2\\n' | " << run << " --timeout 120s -i " << B
     << " sh -c 'cat; echo eof-seen' >\"$W/out\" 2>\"$W/err\"; rc=$?; cat \"$W/out\"; echo; echo "
        "@@STDERR@@; cat \"$W/err\"; echo;"
     << " echo \"@@END stdin-eof $rc@@\"\n"
     << "c stdin-empty " << run << " --timeout 120s -i " << B << " sh -c 'cat; echo empty-eof'\n"
     << "head -c 20000 /dev/urandom > \"$W/random\"; echo \"host-md5=$(md5sum < \"$W/random\")\" > "
        "\"$W/random.md5\"\n"
     << "begin stdin-binary; " << run << " --timeout 120s -i " << B
     << " md5sum < \"$W/random\" >\"$W/out\" 2>\"$W/err\"; rc=$?;"
     << " cat \"$W/random.md5\" \"$W/out\"; echo; echo @@STDERR@@; cat \"$W/err\"; echo; echo "
        "\"@@END stdin-binary $rc@@\"\n"
     << "begin sigterm\nrm -f \"$W/out\" \"$W/err\"\n"
     << run << " " << B
     << " sh -c 'trap \"echo got-term; exit 7\" TERM; echo ready; while :; do sleep 1; done' "
        ">\"$W/out\" 2>\"$W/err\" "
        "</dev/null &\n"
     << "pid=$!; i=0; while ! grep -q ready \"$W/out\" && [ $i -lt 120 ]; do sleep 1; i=$((i+1)); "
        "done\n"
     << "kill -INT $pid; wait $pid; rc=$?\n"
     << "cat \"$W/out\"; echo; echo @@STDERR@@; cat \"$W/err\"; echo; echo \"@@END sigterm "
        "$rc@@\"\n"
     // Orphans the workload leaves are reaped by the init: no zombies.
     << "c orphans " << run << " " << B
     << " sh -c '(sleep 0.2 &); (sleep 0.2 &); sleep 2; z=$(grep -l \"^State:.*Z\" "
        "/proc/[0-9]*/status 2>/dev/null"
        " | wc -l); echo zombies=$z'\n"
     // A workload that ignores SIGTERM: the stop timeout, then a second Ctrl-C, stop the VM (130).
     << stop_case("stop-timeout", run + " --stop-timeout 3s " + B, false)
     << stop_case("second-int", run + " --stop-timeout 10m " + B, true)
     // -t under a pseudo-terminal (script(1)): the workload has a tty, and the host terminal's
     // settings are what they were before, after img2vm leaves raw mode.
     << "printf '%s\\n' 'stty rows 40 cols 100' 'before=$(stty -g)' "
     << quote(run + " -t " + B +
              " sh -c 'test -t 0 && test -t 1 && echo tty-yes; echo size=$(stty size); exit 5'")
     << " 'rc=$?; [ \"$before\" = \"$(stty -g)\" ] && echo tty-restored; exit $rc' > "
        "\"$W/tty.sh\"\n"
     << "c tty script -qec \"sh $W/tty.sh\" /dev/null\n"
     // A resize of the host terminal reaches the workload as SIGWINCH with the new size.
     << "c tty-resize script -qec \"sh $W/tty-resize.sh\" /dev/null\n"
     // An ordinary user whose only privilege is access to /dev/kvm (its group, as Debian's 'kvm')
     // runs images from a store of its own; without that access, one clear line. In L1, a
     // throwaway machine, /dev/kvm is given a group first; on a host, its own group is used.
     << "if [ " << (kvm_route(false) == KvmRoute::kDirect ? 0 : 1)
     << " = 1 ]; then chgrp 4321 /dev/kvm; chmod 0660 /dev/kvm; fi\n"
     << "KG=$(stat -c %g /dev/kvm); cp -a \"$IMG2VM_HOME\" \"$W/home-u\"; chown -R 4321:$KG "
        "\"$W/home-u\"; chmod 0755 \"$W\"\n"
     << "c kvm-access stat -c %a /dev/kvm\n"
     << "c nonroot env HOME=\"$W/home-u\" IMG2VM_HOME=\"$W/home-u\" " << quote(RUNAS_BINARY)
     << " 4321 $KG " << run << " " << B << " sh -c 'echo nonroot-ok; id -u'\n"
     << "c nonroot-nokvm env HOME=\"$W/home-u\" IMG2VM_HOME=\"$W/home-u\" " << quote(RUNAS_BINARY)
     << " 4321 4322 " << run << " " << B << " true\n"
     << "c cache-after sh -c 'sha256sum \"$IMG2VM_HOME\"/rootfs/*.ext4'\n";
  write_file_atomic(w / "cases.sh", sh.str());
  const std::string resize_out = quote((w / "tty-resize.out").string());
  write_file_atomic(w / "tty-resize.sh", "stty rows 40 cols 100\n" + run + " --timeout 120s -t " +
                                             B +
                                             " sh -c 'trap \"echo resized=\\$(stty size); exit 6\" "
                                             "WINCH; echo ready; while :; do sleep 1; done'"
                                             " </dev/tty >" +
                                             resize_out +
                                             " 2>&1 &\n"
                                             "pid=$!; i=0; while ! grep -q ready " +
                                             resize_out +
                                             " && [ $i -lt 120 ]; do sleep 1; i=$((i+1)); done\n"
                                             "stty rows 50 cols 132 </dev/tty\n"
                                             "wait $pid; rc=$?; cat " +
                                             resize_out + "; exit $rc\n");

  std::string output =
      run_script(w / "cases.sh",
                 {bin, IMG2VM_VMM_BINARY, IMG2VM_INIT_BINARY, RUNAS_BINARY, w, "/usr/bin/script"},
                 std::chrono::seconds(1200));
  Cases cases(output);
  auto get = [&](const std::string& n) -> const Case& { return cases.get(n); };

  const Case& def = get("default");
  EXPECT_EQ(def.rc, 0) << def.err;
  EXPECT_TRUE(has(def.out, "hello from busybox")) << def.out;
  {
    // --json: one summary object, the last line on stderr (stdout is the workload's).
    std::string last = def.err;
    while (!last.empty() && last.back() == '\n') last.pop_back();
    last = last.substr(last.rfind('\n') + 1);
    auto j = nlohmann::json::parse(last, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << def.err;
    EXPECT_EQ(j["exit_code"], 0);
    EXPECT_EQ(j["reason"], "exited");
    EXPECT_TRUE(j["root_disk"] == "overlay" || j["root_disk"] == "reflink") << j.dump();
    EXPECT_GT(j["timings_ms"]["to_exec"].get<double>(), 0.0) << j.dump();
    EXPECT_GT(j["timings_ms"]["kernel_boot"].get<double>(), 0.0) << j.dump();
  }
  EXPECT_EQ(get("exit3").rc, 3);
  const Case& bigdir = get("bigdir");
  EXPECT_EQ(bigdir.rc, 0) << bigdir.err;
  EXPECT_TRUE(has(bigdir.out, "3000\n2345\nadded\n/big/file-0007\n3001\n")) << bigdir.out;
  const Case& deb = get("debian");
  EXPECT_EQ(deb.rc, 0) << deb.err;
  std::string version = file_bytes("/etc/debian_version");
  while (!version.empty() && version.back() == '\n') version.pop_back();
  EXPECT_TRUE(has(deb.out, "debian " + version + " bash 5")) << deb.out;
  const Case& scr = get("scratch");
  EXPECT_EQ(scr.rc, 4) << scr.out << scr.err;
  EXPECT_TRUE(
      has(scr.out, "scratch hello from /hello: uid=0 cwd=/work args=1 PATH=/usr/local/sbin:"))
      << scr.out;
  EXPECT_TRUE(has(get("user-workdir").out, "1234\n5678\n/some/new/dir")) << get("user-workdir").out;
  EXPECT_TRUE(has(get("named-user").out, "uid=1000(app) gid=1000(app)")) << get("named-user").out;
  EXPECT_TRUE(has(get("env").out, "[x y=z][2][file value]")) << get("env").out;
  EXPECT_TRUE(has(get("big-env").out, "3000")) << get("big-env").out << get("big-env").err;
  EXPECT_TRUE(has(get("entrypoint").out, "one two")) << get("entrypoint").out;
  const Case& missing = get("missing");
  EXPECT_EQ(missing.rc, 127);
  EXPECT_TRUE(has(missing.err, "exec: \"nosuchcmd\": executable file not found in $PATH"))
      << missing.out << missing.err;
  const Case& streams = get("streams");
  EXPECT_EQ(streams.rc, 5) << streams.out << streams.err;
  EXPECT_TRUE(has(streams.out, "to-stdout\nto-stdout-2\n")) << streams.out;
  EXPECT_FALSE(has(streams.out, "to-stderr")) << streams.out;
  EXPECT_TRUE(has(streams.err, "to-stderr\n")) << streams.err;
  EXPECT_FALSE(has(streams.err, "to-stdout")) << streams.err;
  const Case& initfail = get("init-fail");
  EXPECT_EQ(initfail.rc, 122) << initfail.out << initfail.err;
  EXPECT_TRUE(has(initfail.out, "unable to find user nosuchuser")) << initfail.out;
  EXPECT_TRUE(has(initfail.err, "init")) << initfail.err;
  EXPECT_TRUE(has(get("write").out, "written")) << get("write").out;
  EXPECT_EQ(get("write").rc, 0);
  EXPECT_EQ(get("not-kept").rc, 1) << "a write in one run is visible in the next";
  EXPECT_EQ(get("keep").rc, 0) << get("keep").err;
  EXPECT_TRUE(has(get("extra-disk").out, "kept-data"))
      << get("extra-disk").out << get("extra-disk").err;
  EXPECT_EQ(get("cpus").out.substr(0, 2), "2\n") << get("cpus").out;
  EXPECT_EQ(get("cpus").rc, 0);
  const Case& to = get("timeout");
  EXPECT_EQ(to.rc, 124) << to.err;
  EXPECT_TRUE(has(to.out, "started")) << to.out;
  EXPECT_TRUE(has(get("stdin").out, "piped-line")) << get("stdin").out << get("stdin").err;
  const Case& eof = get("stdin-eof");
  EXPECT_EQ(eof.rc, 0) << eof.out << eof.err;
  EXPECT_TRUE(has(eof.out, "line1\nline2\neof-seen")) << eof.out;
  const Case& empty = get("stdin-empty");
  EXPECT_EQ(empty.rc, 0) << empty.out << empty.err;
  EXPECT_TRUE(has(empty.out, "empty-eof")) << empty.out;
  {
    const Case& binary = get("stdin-binary");
    EXPECT_EQ(binary.rc, 0) << binary.out << binary.err;
    auto pos = binary.out.find("host-md5=");
    ASSERT_NE(pos, std::string::npos) << binary.out;
    std::string md5 = binary.out.substr(pos + 9, 32);
    EXPECT_NE(binary.out.find(md5, pos + 41), std::string::npos)
        << "the workload read other bytes: " << binary.out;
  }
  const Case& term = get("sigterm");
  EXPECT_EQ(term.rc, 7) << term.err;
  EXPECT_TRUE(has(term.out, "got-term")) << term.out;
  EXPECT_TRUE(has(get("orphans").out, "zombies=0")) << get("orphans").out;
  for (const char* n : {"stop-timeout", "second-int"}) {
    const Case& c = get(n);
    EXPECT_EQ(c.rc, 130) << n << ": " << c.out << c.err;
    EXPECT_TRUE(has(c.out, "ready")) << n << ": " << c.out;
    EXPECT_TRUE(has(c.err, "stopped")) << n << ": " << c.err;
  }
  const Case& tty = get("tty");
  EXPECT_EQ(tty.rc, 5) << tty.out << tty.err;
  EXPECT_TRUE(has(tty.out, "tty-yes")) << tty.out;
  EXPECT_TRUE(has(tty.out, "tty-restored")) << tty.out;
  EXPECT_TRUE(has(tty.out, "size=40 100")) << tty.out;
  const Case& resize = get("tty-resize");
  EXPECT_EQ(resize.rc, 6) << resize.out << resize.err;
  EXPECT_TRUE(has(resize.out, "resized=50 132")) << resize.out;
  {
    const Case& nr = get("nonroot");
    EXPECT_EQ(nr.rc, 0) << nr.out << nr.err;
    EXPECT_TRUE(has(nr.out, "nonroot-ok\n0\n"))
        << nr.out;  // root inside the guest, an ordinary user outside
    const std::string mode = get("kvm-access").out;
    if (!mode.empty() &&
        mode[mode.find_first_of("0123456789") + 2] == '0') {  // no access for others
      const Case& no = get("nonroot-nokvm");
      EXPECT_NE(no.rc, 0) << no.out << no.err;
      EXPECT_TRUE(has(no.err, "/dev/kvm: Permission denied (add yourself to the 'kvm' group)"))
          << no.err;
    }
  }
  // The cached rootfs every run booted is byte for byte what convert wrote.
  EXPECT_FALSE(get("cache-before").out.empty());
  EXPECT_EQ(get("cache-before").out, get("cache-after").out);
}

// What the networking tests start from: the net image converted into a store of their own, the
// kernel, a host web root, and the start of their scripts (variables, wait_for, fetch, c).
// Our runtime config (guestabi's, what convert writes) at `path`, its command `sh -c CMD`.
void guestabi_config_json(const fs::path& path, const std::string& cmd) {
  fs::create_directories(path.parent_path());
  nlohmann::json j = {{"schema", 1}, {"cmd", {"sh", "-c", cmd}}, {"env", {"PATH=/bin"}}};
  write_file_atomic(path, j.dump());
}

struct NetSetup {
  TempDir work{"img2vm-run-net"};
  fs::path w = work.path();
  std::string B = "oci:" + (w / "net").string();
  std::string run;  // the img2vm run command line up to the options

  // Returns why the test cannot run here ("" when it can).
  std::string prepare() {
    auto kernel = find_kernel();
    if (!kernel) return "no guest kernel: run `img2vm kernel build` or set IMG2VM_KERNEL";
    if (!fs::exists("/bin/busybox")) return "needs busybox-static (scripts/setup.sh)";
    const char* bin = std::getenv("IMG2VM_BIN");
    if (!bin) throw Error(ErrorKind::kInvalidArgument, "IMG2VM_BIN not set (run through ctest)");
    write_oci_layout(w / "net", {{"latest", build_image(net_image())}});
    fs::copy_file(*kernel, w / "vmlinux");
    fs::create_directories(w / "hostwww");
    write_file_atomic(w / "hostwww/index.html", "served-by-host\n");
    std::map<std::string, std::string> env = {{"IMG2VM_HOME", (w / "home").string()},
                                              {"IMG2VM_INIT", IMG2VM_INIT_BINARY}};
    auto c = run_command({bin, "convert", B},
                         {.input = {}, .env = env, .cwd = {}, .timeout = std::chrono::minutes(5)});
    if (c.exit_code != 0) throw Error(ErrorKind::kInternal, "convert failed: " + c.describe());
    run = quote(bin) + " run -m 160M --kernel " + quote((w / "vmlinux").string());
    return "";
  }
  std::vector<fs::path> files() const {
    return {std::getenv("IMG2VM_BIN"), IMG2VM_VMM_BINARY, IMG2VM_INIT_BINARY, UDP_ECHO_BINARY, w};
  }
  std::string prelude() const {
    std::ostringstream sh;
    sh << "export IMG2VM_HOME=" << quote((w / "home").string())
       << " IMG2VM_INIT=" << quote(IMG2VM_INIT_BINARY) << "\n"
       << "W=" << quote(w.string()) << " U=" << quote(UDP_ECHO_BINARY) << "\n"
       << case_watchdog()
       // Free ports on a real host are not known in advance: a range unlikely to be taken.
       << "P=$(( 20000 + $$ % 20000 )); P1=$P P2=$((P+1)) P3=$((P+2)) P4=$((P+3)) P5=$((P+4))\n"
       << "wait_for() { i=0; while ! grep -q \"$2\" \"$1\" 2>/dev/null && [ $i -lt 180 ]; do sleep "
          "1; i=$((i+1)); done; }\n"
       // slirp accepts a connection before the guest listens (then closes it): retry until a reply.
       << "fetch() { i=0; while [ $i -lt 60 ]; do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc "
          "-w 5 127.0.0.1 $1 > \"$2\" 2>/dev/null;"
          " grep -q '200 OK' \"$2\" && return; sleep 1; i=$((i+1)); done; }\n"
       << "c() { name=$1; shift; begin \"$name\"; \"$@\" >\"$W/out\" 2>\"$W/err\" "
          "</dev/null; rc=$?;\n"
       << "  cat \"$W/out\"; echo; echo @@STDERR@@; cat \"$W/err\"; echo; echo \"@@END $name "
          "$rc@@\"; }\n";
    return sh.str();
  }
};

// Networking (issue #7) with the default user-mode backend: published TCP ports served by guests
// (two VMs at once, -p with and without a host address, -P with a port picked for it), a port
// already in use, a guest reaching a server on the host's loopback (only when allowed), UDP
// both ways, what the guest's eth0, routes and resolv.conf look like, and --network none.
// Debian's virtiofsd, copied into L1 for the virtio-fs tests.
constexpr const char* kVirtiofsd = "/usr/lib/qemu/virtiofsd";

// Why a virtio-fs test cannot run here; empty when it can.
std::string virtiofs_skip_reason() {
  if (!fs::exists(kVirtiofsd)) return std::string("needs ") + kVirtiofsd + " (qemu-system-common)";
  if (::geteuid() != 0) return "virtiofsd's sandbox in L1 runs as root here";
  return {};
}

// Writes `script` as `name` in the work directory and runs it in L1 with virtiofsd.
std::string run_fs_script(const NetSetup& ns, const std::string& name, const std::string& script) {
  write_file_atomic(ns.w / name, script);
  std::vector<fs::path> files = ns.files();
  files.push_back(kVirtiofsd);
  return run_script(ns.w / name, files, std::chrono::seconds(1200));
}

// Host directories in the guest (issue #16): -v and --mount type=bind through virtio-fs served by
// Debian's virtiofsd, both ways with owner, mode and mtime; read-only shares refusing writes in
// the guest (EROFS) whatever the guest's mount flags; --tmpfs with size and mode; a missing host
// path refused before anything starts; and virtiofsd killed mid-run ending the run with 125.
TEST(RunKvm, VolumesThroughVirtioFs) {
  if (std::string why = virtiofs_skip_reason(); !why.empty()) GTEST_SKIP() << why;
  NetSetup ns;
  if (std::string why = ns.prepare(); !why.empty()) GTEST_SKIP() << why;
  const std::string& B = ns.B;
  const std::string& run = ns.run;
  std::ostringstream sh;
  sh << ns.prelude() << "S=\"$W/share\"; mkdir -p \"$S\"; echo from-host > \"$S/from-host\"\n"
     << "chown 1234:5678 \"$S/from-host\"; chmod 640 \"$S/from-host\"; touch -d @1500000000 "
        "\"$S/from-host\"\n"
     << "c rw " << run << " -v \"$S:/mnt/share\" " << B
     << " sh -c 'cat /mnt/share/from-host; stat -c \"%a %u %g %Y\" /mnt/share/from-host;"
        " echo from-guest > /mnt/share/new && chown 42:43 /mnt/share/new && chmod 600 "
        "/mnt/share/new && touch -d @1400000000 /mnt/share/new && echo wrote'\n"
     << "begin host-side; stat -c '%a %u %g %Y' \"$S/new\"; cat \"$S/new\"; echo; echo @@STDERR@@; "
        "echo; echo '@@END host-side 0@@'\n"
     << "c ro " << run << " -v \"$S:/ro:ro\" " << B
     << " sh -c 'cat /ro/from-host; echo x > /ro/y; mount -o remount,rw /ro; echo x > /ro/z; ls "
        "/ro'\n"
     << "c mount-ro " << run << " --mount type=bind,source=\"$S\",target=/m,readonly " << B
     << " sh -c 'touch /m/t'\n"
     << "begin ro-host; ls \"$S\"; echo; echo @@STDERR@@; echo; echo '@@END ro-host 0@@'\n"
     << "c tmpfs " << run << " --tmpfs /scratch:size=1m,mode=1770 " << B
     << " sh -c 'grep \" /scratch \" /proc/mounts; stat -c %a /scratch; dd if=/dev/zero "
        "of=/scratch/f bs=1k count=2048 2>&1 | grep -c \"No space left\"'\n"
     << "c missing " << run << " -v /no/such/dir:/x " << B << " true\n"
     << "begin kill-backend\n"
     << run << " -v \"$S:/s\" " << B
     << " sh -c 'echo ready; while :; do ls /s >/dev/null; sleep 1; done' >\"$W/k.out\" "
        "2>\"$W/k.err\" </dev/null &\n"
     << "kp=$!; wait_for \"$W/k.out\" ready; kill -9 $(pidof virtiofsd); wait $kp; rc=$?\n"
     << "cat \"$W/k.out\"; echo; echo @@STDERR@@; cat \"$W/k.err\"; echo; echo \"@@END "
        "kill-backend $rc@@\"\n";
  std::string output = run_fs_script(ns, "fs.sh", sh.str());
  Cases cases(output);
  auto get = [&](const std::string& n) -> const Case& { return cases.get(n); };
  const Case& rw = get("rw");
  EXPECT_EQ(rw.rc, 0) << rw.out << rw.err;
  EXPECT_TRUE(has(rw.out, "from-host\n640 1234 5678 1500000000\n")) << rw.out;
  EXPECT_TRUE(has(rw.out, "wrote")) << rw.out << rw.err;
  EXPECT_TRUE(has(get("host-side").out, "600 42 43 1400000000\nfrom-guest"))
      << get("host-side").out;
  const Case& ro = get("ro");
  EXPECT_TRUE(has(ro.out, "from-host")) << ro.out;
  EXPECT_TRUE(has(ro.out + ro.err, "Read-only file system")) << ro.out << ro.err;
  const Case& mro = get("mount-ro");
  EXPECT_NE(mro.rc, 0) << mro.out << mro.err;
  EXPECT_TRUE(has(mro.out + mro.err, "Read-only file system")) << mro.out << mro.err;
  const Case& roh = get("ro-host");
  EXPECT_FALSE(has(roh.out, "\ny\n") || has(roh.out, "\nz\n") || has(roh.out, "\nt\n")) << roh.out;
  const Case& tmp = get("tmpfs");
  EXPECT_EQ(tmp.rc, 0) << tmp.out << tmp.err;
  EXPECT_TRUE(has(tmp.out, "size=1024k")) << tmp.out;
  EXPECT_TRUE(has(tmp.out, "1770")) << tmp.out;
  EXPECT_TRUE(has(tmp.out, "\n1\n")) << "no ENOSPC past 1 MiB: " << tmp.out;
  const Case& miss = get("missing");
  EXPECT_NE(miss.rc, 0);
  EXPECT_TRUE(has(miss.err, "/no/such/dir")) << miss.err;
  const Case& kill = get("kill-backend");
  EXPECT_EQ(kill.rc, 125) << kill.out << kill.err;
  EXPECT_TRUE(has(kill.err, "virtio-fs")) << kill.err;
  if (HasFailure()) std::cerr << "--- the script's whole output ---\n" << output << "\n";
}

// Named and anonymous volumes (issue #16): a named volume starts with the image's content at its
// mount point and keeps what a run wrote for the next run; volume-nocopy leaves it empty; -v PATH
// alone makes an anonymous volume filled the same way; a volume a running VM holds cannot be
// removed, and prune takes only the anonymous ones.
TEST(RunKvm, NamedVolumes) {
  if (std::string why = virtiofs_skip_reason(); !why.empty()) GTEST_SKIP() << why;
  NetSetup ns;
  if (std::string why = ns.prepare(); !why.empty()) GTEST_SKIP() << why;
  const std::string& B = ns.B;
  const std::string& run = ns.run;
  const std::string vol = quote(std::getenv("IMG2VM_BIN")) + " volume";
  std::ostringstream sh;
  sh << ns.prelude() << "c first " << run << " -v web:/www " << B
     << " sh -c 'cat /www/index.html; echo kept > /www/state'\n"
     << "c second " << run << " -v web:/www " << B << " sh -c 'cat /www/state /www/index.html'\n"
     << "c nocopy " << run << " --mount type=volume,src=bare,dst=/www,volume-nocopy " << B
     << " sh -c 'ls -A /www | wc -l'\n"
     << "c anonymous " << run << " -v /www " << B << " cat /www/index.html\n"
     << "c host-side sh -c '" << vol
     << " ls -q | wc -l; cat \"$IMG2VM_HOME/volumes/web/_data/state\"'\n"
     << "begin in-use\n"
     << run << " -v web:/www " << B
     << " sh -c 'echo ready; while :; do sleep 1; done' >\"$W/u.out\" 2>\"$W/u.err\" </dev/null &\n"
     << "up=$!; wait_for \"$W/u.out\" ready; " << vol << " rm web 2>&1; echo rm=$?\n"
     << "kill -INT $up; wait $up; " << vol << " rm web; echo rm-after=$?\n"
     << "echo; echo @@STDERR@@; cat \"$W/u.err\"; echo; echo '@@END in-use 0@@'\n"
     << "c prune sh -c '" << vol << " prune; " << vol << " ls -q'\n";
  std::string output = run_fs_script(ns, "vol.sh", sh.str());
  Cases cases(output);
  auto get = [&](const std::string& n) -> const Case& { return cases.get(n); };
  const Case& first = get("first");
  EXPECT_EQ(first.rc, 0) << first.out << first.err;
  EXPECT_TRUE(has(first.out, "served-by-image")) << first.out << first.err;
  const Case& second = get("second");
  EXPECT_EQ(second.rc, 0) << second.out << second.err;
  EXPECT_TRUE(has(second.out, "kept\nserved-by-image")) << second.out << second.err;
  const Case& nocopy = get("nocopy");
  EXPECT_EQ(nocopy.rc, 0) << nocopy.out << nocopy.err;
  EXPECT_TRUE(has(nocopy.out, "0\n")) << nocopy.out;
  const Case& anon = get("anonymous");
  EXPECT_EQ(anon.rc, 0) << anon.out << anon.err;
  EXPECT_TRUE(has(anon.out, "served-by-image")) << anon.out << anon.err;
  EXPECT_TRUE(has(get("host-side").out, "3\nkept")) << get("host-side").out;
  const Case& busy = get("in-use");
  EXPECT_TRUE(has(busy.out, "img2vm: volume web is in use\nrm=1")) << busy.out << busy.err;
  EXPECT_TRUE(has(busy.out, "web\nrm-after=0")) << busy.out << busy.err;
  const Case& prune = get("prune");
  EXPECT_TRUE(has(prune.out, "Deleted Volumes:\n")) << prune.out;
  EXPECT_TRUE(has(prune.out, "\nbare\n")) << prune.out;  // the named one stays
  if (HasFailure()) std::cerr << "--- the script's whole output ---\n" << output << "\n";
}

// A host directory as the root (run --rootfs, issue #16): a bundle `umoci unpack` made from a
// busybox image boots with its CMD from umoci's config.json (exit code and output passed
// through); what the guest writes to / lands in the directory and nothing of ours is written
// there; --read-only refuses writes with EROFS; DIR/.img2vm/config.json comes before the
// bundle's config; a command on the command line replaces the config's.
TEST(RunKvm, RootDirectoryThroughVirtioFs) {
  if (std::string why = virtiofs_skip_reason(); !why.empty()) GTEST_SKIP() << why;
  if (find_program("umoci").empty()) GTEST_SKIP() << "needs umoci";
  NetSetup ns;
  if (std::string why = ns.prepare(); !why.empty()) GTEST_SKIP() << why;
  const fs::path& w = ns.w;
  ImageSpec img = busybox_image();
  img.layers.push_back(layer({dir("dev"), dir("proc"), dir("sys")}));
  img.config.cmd = {"sh", "-c", "echo hello from the bundle as $(id -u); exit 7"};
  write_oci_layout(w / "bb", {{"latest", build_image(img)}});
  for (const char* b : {"bundle", "own"}) {
    auto r = run_command({"umoci", "unpack", "--rootless", "--image",
                          (w / "bb").string() + ":latest", (w / b).string()});
    ASSERT_EQ(r.exit_code, 0) << r.describe();
  }
  guestabi_config_json(w / "own/rootfs/.img2vm/config.json", "echo own config wins");
  const std::string run = ns.run;
  std::ostringstream sh;
  sh << ns.prelude() << "D=\"$W/bundle/rootfs\"\n"
     << "c cmd " << run << " --rootfs \"$D\"\n"
     << "c write " << run << " --rootfs \"$D\" sh -c 'echo from-guest > /written; echo wrote'\n"
     << "begin host-side; cat \"$D/written\"; ls -a \"$D\"; echo; echo @@STDERR@@; echo; echo "
        "'@@END host-side 0@@'\n"
     << "c ro " << run << " --rootfs \"$D\" --read-only sh -c 'echo x > /ro-file'\n"
     << "begin ro-host; ls \"$D\"; echo; echo @@STDERR@@; echo; echo '@@END ro-host 0@@'\n"
     << "c own " << run << " --rootfs \"$W/own/rootfs\"\n"
     << "c timings-dir " << run << " --timings --rootfs \"$D\" true\n"
     << "c timings-ext4 " << run << " --timings " << ns.B << " true\n";
  std::string output = run_fs_script(ns, "rootdir.sh", sh.str());
  Cases cases(output);
  auto get = [&](const std::string& n) -> const Case& { return cases.get(n); };
  const Case& cmd = get("cmd");
  EXPECT_EQ(cmd.rc, 7) << cmd.out << cmd.err;
  EXPECT_TRUE(has(cmd.out, "hello from the bundle as 0")) << cmd.out << cmd.err;
  const Case& wr = get("write");
  EXPECT_EQ(wr.rc, 0) << wr.out << wr.err;
  EXPECT_TRUE(has(wr.out, "wrote")) << wr.out << wr.err;
  const Case& host = get("host-side");
  EXPECT_TRUE(has(host.out, "from-guest\n")) << host.out;
  EXPECT_FALSE(has(host.out, ".img2vm")) << host.out;
  EXPECT_FALSE(has(host.out, "newroot")) << host.out;
  const Case& ro = get("ro");
  EXPECT_NE(ro.rc, 0) << ro.out << ro.err;
  EXPECT_TRUE(has(ro.out + ro.err, "Read-only file system")) << ro.out << ro.err;
  EXPECT_FALSE(has(get("ro-host").out, "ro-file")) << get("ro-host").out;
  const Case& own = get("own");
  EXPECT_EQ(own.rc, 0) << own.out << own.err;
  EXPECT_TRUE(has(own.out, "own config wins")) << own.out << own.err;
  EXPECT_EQ(get("timings-dir").rc, 0) << get("timings-dir").err;
  std::cerr << "--- timings: --rootfs ---\n"
            << get("timings-dir").err << "--- timings: ext4 ---\n"
            << get("timings-ext4").err;
  if (HasFailure()) std::cerr << "--- the script's whole output ---\n" << output << "\n";
}

// An OCI runtime-spec config.json for the bundle `dir` (root "rootfs"), running `cmd` with sh.
void oci_config(const fs::path& dir, const std::string& cmd, const fs::path& share) {
  nlohmann::json j = {
      {"ociVersion", "1.0.2"},
      {"root", {{"path", "rootfs"}}},
      {"hostname", "oci-host"},
      {"process",
       {{"terminal", false},
        {"user", {{"uid", 1000}, {"gid", 1000}, {"additionalGids", {10, 20}}}},
        {"rlimits", {{{"type", "RLIMIT_NOFILE"}, {"soft", 1000}, {"hard", 2000}}}},
        {"noNewPrivileges", true},
        {"args", {"sh", "-c", cmd}},
        {"env", {"PATH=/bin", "FOO=bar"}},
        {"cwd", "/data"}}},
      {"mounts",
       {{{"destination", "/proc"}, {"type", "proc"}, {"source", "proc"}},
        {{"destination", "/dev"},
         {"type", "tmpfs"},
         {"source", "tmpfs"},
         {"options", {"nosuid", "strictatime", "mode=755", "size=65536k"}}},
        {{"destination", "/data"},
         {"type", "bind"},
         {"source", share.string()},
         {"options", {"rbind", "rw"}}},
        {{"destination", "/etc/extra"},
         {"type", "bind"},
         {"source", (share / "host-file").string()},
         {"options", {"rbind", "ro"}}},
        {{"destination", "/etc/missing"},
         {"type", "bind"},
         {"source", (share / "no-such-file").string()},
         {"options", {"rbind", "ro"}}},
        {{"destination", "/scratch"}, {"type", "tmpfs"}, {"source", "tmpfs"}}}},
      {"annotations", {{"org.img2vm.memory_mib", "160"}, {"test", "oci"}}},
      {"linux", {{"namespaces", {{{"type", "pid"}}, {{"type", "network"}}, {{"type", "mount"}}}}}}};
  write_file_atomic(dir / "config.json", j.dump(2));
}

// img2vm-oci (issue #18) driven as conmon drives runc, under a child subreaper standing for
// conmon: create boots the VM and leaves the workload waiting (state "created", its output not
// there yet), the --pid-file process is the one whose exit status is the workload's (7, then
// 9 from a TERM trap via kill, 137 from KILL while created); config.json's process (uid:gid,
// additionalGids, rlimits, noNewPrivileges, env, cwd, hostname), a bind mount (read and
// written through virtio-fs), a file bind (a copy) and annotations reach the VM; a bind of a
// missing file is left out with a warning in the JSON log; exec (a process JSON) gives its output
// and status, and with --detach its --pid-file process exits with that status; delete refuses a
// running container without --force; a duplicate id and an unknown one are errors.
TEST(RunKvm, OciRuntimeCreateStartKillDelete) {
  if (std::string why = virtiofs_skip_reason(); !why.empty()) GTEST_SKIP() << why;
  if (find_program("umoci").empty()) GTEST_SKIP() << "needs umoci";
  NetSetup ns;
  if (std::string why = ns.prepare(); !why.empty()) GTEST_SKIP() << why;
  const fs::path& w = ns.w;
  ImageSpec img = busybox_image();
  img.layers.push_back(layer({dir("dev"), dir("proc"), dir("sys"), dir("data"), dir("scratch")}));
  write_oci_layout(w / "bb", {{"latest", build_image(img)}});
  for (const char* b : {"b1", "b2"}) {
    auto r = run_command({"umoci", "unpack", "--rootless", "--image",
                          (w / "bb").string() + ":latest", (w / b).string()});
    ASSERT_EQ(r.exit_code, 0) << r.describe();
  }
  const fs::path share = w / "share";
  fs::create_directories(share);
  fs::permissions(share, fs::perms::all);
  write_file_atomic(share / "host-file", "host-data\n");
  oci_config(w / "b1",
             "echo hello-oci $(hostname) $(id -u):$(id -g) $(pwd) $FOO; cat /data/host-file; "
             "echo extra=$(cat /etc/extra); echo groups=$(id -G) nofile=$(ulimit -n)/$(ulimit "
             "-Hn); grep NoNewPrivs "
             "/proc/self/status; echo written > /data/from-guest; exit 7",
             share);
  oci_config(w / "b2", "trap 'echo got-term; exit 9' TERM; echo up; while :; do sleep 1; done",
             share);
  std::ostringstream sh;
  sh << ns.prelude() << "export IMG2VM_KERNEL=\"$W/vmlinux\"\n"
     << "R=" << quote(REAPER_BINARY) << "\n"
     << "O=\"" << IMG2VM_OCI_BINARY
     << " --root $W/oci-state --log $W/oci.log --log-format json\"\n"
     // create under the reaper, in the background; its first report line is create's own end.
     << "create() { id=$1; b=$2; $R \"$W/r-$id\" $O create --bundle \"$W/$b\" --pid-file "
        "\"$W/p-$id\" $id >\"$W/o-$id\" 2>&1 & wait_for \"$W/r-$id\" '^exited'; }\n"
     << "begin create1\n"
     << "create c1 b1; cat \"$W/r-c1\"; echo pid=$(cat \"$W/p-c1\"); $O state c1\n"
     << "echo output-lines=$(grep -c hello-oci \"$W/o-c1\")\n"
     << "echo; echo @@STDERR@@; cat \"$W/o-c1\"; echo; echo '@@END create1 0@@'\n"
     << "c dup $O create --bundle \"$W/b1\" c1\n"
     << "begin start1\n"
     << "$O start c1; echo start=$?; wait_for \"$W/r-c1\" \"exited $(cat \"$W/p-c1\") \"\n"
     << "cat \"$W/r-c1\"; echo pid=$(cat \"$W/p-c1\"); $O state c1; cat \"$W/o-c1\"; "
        "echo from-guest=$(cat \"$W/share/from-guest\")\n"
     << "echo; echo @@STDERR@@; echo; echo '@@END start1 0@@'\n"
     << "c start-stopped $O start c1\n"
     << "c delete1 $O delete c1\n"
     << "c state-gone $O state c1\n"
     << "begin term\n"
     << "create c2 b2; $O start c2; wait_for \"$W/o-c2\" up; $O kill c2 TERM; echo kill=$?\n"
     << "wait_for \"$W/r-c2\" \"exited $(cat \"$W/p-c2\") \"; echo pid=$(cat \"$W/p-c2\")\n"
     << "cat \"$W/r-c2\" \"$W/o-c2\"; $O state c2; $O delete c2; echo delete=$?\n"
     << "echo; echo @@STDERR@@; echo; echo '@@END term 0@@'\n"
     << "begin kill-created\n"
     << "create c3 b2; $O state c3; $O kill c3 KILL; echo kill=$?\n"
     << "wait_for \"$W/r-c3\" \"exited $(cat \"$W/p-c3\") \"; echo pid=$(cat \"$W/p-c3\")\n"
     << "cat \"$W/r-c3\"; $O state c3; grep -c up \"$W/o-c3\"; $O delete c3; echo delete=$?\n"
     << "echo; echo @@STDERR@@; echo; echo '@@END kill-created 0@@'\n"
     << "begin delete-running\n"
     << "create c4 b2; $O start c4; wait_for \"$W/o-c4\" up\n"
     << "echo '{\"args\":[\"sh\",\"-c\",\"echo exec-out $(id -u) $(pwd) $E; exit 4\"],"
        "\"env\":[\"E=x\",\"PATH=/bin\"],\"cwd\":\"/scratch\",\"user\":{\"uid\":0,\"gid\":0}}' "
        ">\"$W/proc.json\"\n"
     << "$O exec --process \"$W/proc.json\" c4; echo exec=$?\n"
     << "$R \"$W/r-e4\" $O exec --detach --pid-file \"$W/p-e4\" --process \"$W/proc.json\" c4 "
        ">\"$W/o-e4\" 2>&1 & wait_for \"$W/r-e4\" '^exited'\n"
     << "wait_for \"$W/r-e4\" \"exited $(cat \"$W/p-e4\") \"; echo e4=$(cat \"$W/p-e4\"); "
        "cat \"$W/r-e4\" \"$W/o-e4\"\n"
     << "$O delete c4; echo delete=$?; $O delete --force c4; echo force=$?\n"
     << "wait_for \"$W/r-c4\" \"exited $(cat \"$W/p-c4\") \"; $O state c4; echo state=$?\n"
     << "$O delete --force c4; echo force-gone=$?; $O list\n"
     << "echo; echo @@STDERR@@; echo; echo '@@END delete-running 0@@'\n"
     << "c features $O features\n"
     << "begin log; cat \"$W/oci.log\"; echo; echo @@STDERR@@; echo; echo '@@END log 0@@'\n";
  std::vector<fs::path> files = ns.files();
  files.push_back(kVirtiofsd);
  files.push_back(IMG2VM_OCI_BINARY);
  files.push_back(REAPER_BINARY);
  write_file_atomic(w / "oci.sh", sh.str());
  std::string output = run_script(w / "oci.sh", files, std::chrono::seconds(1200));
  Cases cases(output);
  auto get = [&](const std::string& n) -> const Case& { return cases.get(n); };
  auto pid_of = [](const Case& c) {
    auto at = c.out.find("pid=");
    return at == std::string::npos ? std::string("?")
                                   : c.out.substr(at + 4, c.out.find('\n', at) - at - 4);
  };

  const Case& c1 = get("create1");
  EXPECT_TRUE(has(c1.out, "exited ")) << c1.out;
  EXPECT_TRUE(has(c1.out, " 0\n")) << "create must exit 0:\n" << c1.out << c1.err;
  EXPECT_TRUE(has(c1.out, "\"status\": \"created\"")) << c1.out << c1.err;
  EXPECT_TRUE(has(c1.out, "\"pid\": " + pid_of(c1))) << c1.out;
  EXPECT_TRUE(has(c1.out, "\"test\": \"oci\"")) << c1.out;
  EXPECT_TRUE(has(c1.out, "output-lines=0")) << "the workload ran before start:\n" << c1.out;
  const Case& dup = get("dup");
  EXPECT_EQ(dup.rc, 1) << dup.out << dup.err;
  EXPECT_TRUE(has(dup.err, "container with id exists: c1")) << dup.err;

  const Case& s1 = get("start1");
  EXPECT_TRUE(has(s1.out, "start=0")) << s1.out;
  EXPECT_TRUE(has(s1.out, "exited " + pid_of(s1) + " 7\n"))
      << "the pid-file process must exit with the workload's status:\n"
      << s1.out;
  EXPECT_TRUE(has(s1.out, "\"status\": \"stopped\"")) << s1.out;
  EXPECT_TRUE(has(s1.out, "hello-oci oci-host 1000:1000 /data bar")) << s1.out;
  EXPECT_TRUE(has(s1.out, "host-data\nextra=host-data\n")) << s1.out;
  EXPECT_TRUE(has(s1.out, "host-data")) << s1.out;
  EXPECT_TRUE(has(s1.out, "groups=1000 10 20 nofile=1000/2000")) << s1.out;
  EXPECT_TRUE(has(s1.out, "NoNewPrivs:\t1")) << s1.out;
  EXPECT_TRUE(has(s1.out, "from-guest=written")) << s1.out;
  EXPECT_EQ(get("start-stopped").rc, 1);
  EXPECT_TRUE(has(get("start-stopped").err, "has stopped")) << get("start-stopped").err;
  EXPECT_EQ(get("delete1").rc, 0) << get("delete1").err;
  EXPECT_EQ(get("state-gone").rc, 1);
  EXPECT_TRUE(has(get("state-gone").err, "container c1 does not exist")) << get("state-gone").err;

  const Case& term = get("term");
  EXPECT_TRUE(has(term.out, "kill=0")) << term.out;
  EXPECT_TRUE(has(term.out, "exited " + pid_of(term) + " 9\n")) << term.out;
  EXPECT_TRUE(has(term.out, "got-term")) << term.out;
  EXPECT_TRUE(has(term.out, "delete=0")) << term.out;

  const Case& kc = get("kill-created");
  EXPECT_TRUE(has(kc.out, "\"status\": \"created\"")) << kc.out;
  EXPECT_TRUE(has(kc.out, "exited " + pid_of(kc) + " 137\n")) << kc.out;
  EXPECT_TRUE(has(kc.out, "\"status\": \"stopped\"")) << kc.out;
  EXPECT_TRUE(has(kc.out, "\n0\n")) << "the workload ran without start:\n" << kc.out;
  EXPECT_TRUE(has(kc.out, "delete=0")) << kc.out;

  const Case& dr = get("delete-running");
  EXPECT_TRUE(has(dr.out, "exec-out 0 /scratch x\nexec=4\n")) << dr.out;
  {
    auto at = dr.out.find("e4=");
    std::string e4 =
        at == std::string::npos ? "?" : dr.out.substr(at + 3, dr.out.find('\n', at) - at - 3);
    EXPECT_TRUE(has(dr.out, "exited " + e4 + " 4\n"))
        << "a detached exec's pid-file process must exit with its status:\n"
        << dr.out;
  }
  EXPECT_TRUE(has(dr.out, "delete=1")) << dr.out;
  EXPECT_TRUE(has(dr.out, "force=0")) << dr.out;
  EXPECT_TRUE(has(dr.out, "state=1")) << dr.out;
  EXPECT_TRUE(has(dr.out, "force-gone=0")) << dr.out;

  const Case& feat = get("features");
  EXPECT_EQ(feat.rc, 0) << feat.err;
  EXPECT_TRUE(has(feat.out, "\"ociVersionMax\": \"1.1.0\"")) << feat.out;
  const Case& log = get("log");
  EXPECT_TRUE(has(log.out, "\"level\":\"warning\"")) << log.out;
  // The file bind is a copy in the VM (no warning); a missing source is warned about.
  EXPECT_FALSE(has(log.out, "/etc/extra")) << log.out;
  EXPECT_TRUE(has(log.out, "/etc/missing")) << log.out;
  EXPECT_TRUE(has(log.out, "\"level\":\"error\",\"msg\":\"container with id exists: c1\""))
      << log.out;
  if (HasFailure()) std::cerr << "--- the script's whole output ---\n" << output << "\n";
}

// process.terminal (issue #18): create sends the terminal's master to --console-socket (a pty
// master, named by the message), and the workload's stdin, stdout and tty are that terminal: a
// line written to the master is echoed by the guest's tty and run by its shell, a window size
// set on the master (before start and later) is the guest's `stty size`, and the --pid-file
// process exits with the shell's status.
TEST(RunKvm, OciRuntimeTerminal) {
  if (std::string why = virtiofs_skip_reason(); !why.empty()) GTEST_SKIP() << why;
  if (find_program("umoci").empty()) GTEST_SKIP() << "needs umoci";
  NetSetup ns;
  if (std::string why = ns.prepare(); !why.empty()) GTEST_SKIP() << why;
  const fs::path& w = ns.w;
  ImageSpec img = busybox_image();
  img.layers.push_back(layer({dir("dev"), dir("proc"), dir("sys"), dir("data"), dir("scratch")}));
  write_oci_layout(w / "bb", {{"latest", build_image(img)}});
  auto r = run_command({"umoci", "unpack", "--rootless", "--image", (w / "bb").string() + ":latest",
                        (w / "bt").string()});
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  const fs::path share = w / "share";
  fs::create_directories(share);
  fs::permissions(share, fs::perms::all);
  write_file_atomic(share / "host-file", "host-data\n");
  oci_config(w / "bt", "echo shell-up; exec sh", share);
  nlohmann::json j = nlohmann::json::parse(read_file(w / "bt/config.json"));
  j["process"]["terminal"] = true;
  write_file_atomic(w / "bt/config.json", j.dump(2));
  // exec --tty's process: each line read is answered with its terminal and size, "q" ends it.
  write_file_atomic(w / "bt/rootfs/loop.sh",
                    "while read l; do [ \"$l\" = q ] && exit 5; echo \"got-$l $(tty) $(stty "
                    "size)\"; done\n");
  std::ostringstream sh;
  sh << ns.prelude() << "export IMG2VM_KERNEL=\"$W/vmlinux\"\n"
     << "R=" << quote(REAPER_BINARY) << " T=" << quote(CONSOLE_BINARY) << "\n"
     << "O=\"" << IMG2VM_OCI_BINARY << " --root $W/oci-state --log $W/oci.log\"\n"
     << "say() { printf '%s\\n' \"$1\" > \"$W/tin\"; }\n"
     << "begin tty\n"
     << "mkfifo \"$W/tin\"; : > \"$W/tout\"\n"
     << "$T \"$W/tsock\" \"$W/tin\" \"$W/tout\" $R \"$W/r-t\" $O create --bundle \"$W/bt\" "
        "--pid-file \"$W/p-t\" --console-socket \"$W/tsock\" t >\"$W/o-t\" 2>&1 &\n"
     << "wait_for \"$W/r-t\" '^exited'; cat \"$W/r-t\"; echo pid=$(cat \"$W/p-t\")\n"
     << "say '@size 33 101'; $O start t; echo start=$?\n"
     << "wait_for \"$W/tout\" shell-up\n"
     << "say 'tty'; say 'stty size'; say 'echo hi-$((6*7))'; wait_for \"$W/tout\" hi-42\n"
     << "say '@size 40 120'; i=0; while ! grep -q '40 120' \"$W/tout\" && [ $i -lt 30 ]; do "
        "say 'stty size'; sleep 1; i=$((i+1)); done\n"
     // exec --tty as conmon runs it (--detach, the daemon's status through --pid-file).
     << "mkfifo \"$W/ein\"; : > \"$W/eout\"\n"
     << "$T \"$W/esock\" \"$W/ein\" \"$W/eout\" $R \"$W/r-e\" $O exec --detach --pid-file "
        "\"$W/p-e\" --tty --console-socket \"$W/esock\" t sh /loop.sh >\"$W/o-e\" 2>&1 &\n"
     << "wait_for \"$W/r-e\" '^exited'; printf '@size 25 90\\n' > \"$W/ein\"\n"
     << "i=0; while ! grep -q 'got-x .* 25 90' \"$W/eout\" && [ $i -lt 30 ]; do "
        "printf 'x\\n' > \"$W/ein\"; sleep 1; i=$((i+1)); done\n"
     << "printf 'q\\n' > \"$W/ein\"; wait_for \"$W/r-e\" \"exited $(cat \"$W/p-e\") \"\n"
     << "wait_for \"$W/o-e\" 'hung up'; echo exec-pid=$(cat \"$W/p-e\")\n"
     << "echo ---; cat \"$W/r-e\" \"$W/eout\" \"$W/o-e\"; echo; echo ---\n"
     << "say 'exit 3'; wait_for \"$W/r-t\" \"exited $(cat \"$W/p-t\") \"\n"
     << "wait_for \"$W/o-t\" 'hung up'\n"
     << "cat \"$W/r-t\"; echo; echo ---; cat \"$W/tout\"; echo; echo ---; cat \"$W/o-t\"\n"
     << "$O delete t; echo delete=$?\n"
     << "echo; echo @@STDERR@@; cat \"$W/oci.log\" 2>/dev/null; echo; echo '@@END tty 0@@'\n";
  std::vector<fs::path> files = ns.files();
  files.push_back(kVirtiofsd);
  files.push_back(IMG2VM_OCI_BINARY);
  files.push_back(REAPER_BINARY);
  files.push_back(CONSOLE_BINARY);
  write_file_atomic(w / "oci-tty.sh", sh.str());
  std::string output = run_script(w / "oci-tty.sh", files, std::chrono::seconds(900));
  Cases cases(output);
  const Case& t = cases.get("tty");
  // The guest's tty ends lines with CR LF; the rig's console may leave the CRs out.
  std::string out = t.out;
  std::erase(out, '\r');
  auto at = out.find("pid=");
  const std::string pid =
      at == std::string::npos ? "?" : out.substr(at + 4, out.find('\n', at) - at - 4);
  EXPECT_TRUE(has(out, "console: /dev/pts/")) << out;
  EXPECT_TRUE(has(out, " pty=yes")) << out;
  EXPECT_TRUE(has(out, "start=0")) << out;
  // The guest's tty echoes the line as typed; only the shell's run of it says 42.
  EXPECT_TRUE(has(out, "echo hi-$((6*7))")) << out;
  EXPECT_TRUE(has(out, "\nhi-42\n")) << out;
  EXPECT_TRUE(std::regex_search(out, std::regex("\n/dev/(console|tty[A-Za-z0-9]*|pts/[0-9]+)\n")))
      << "`tty` must name the workload's terminal:\n"
      << out;
  EXPECT_TRUE(has(out, "\n33 101\n")) << out;
  EXPECT_TRUE(has(out, "\n40 120\n")) << out;
  EXPECT_TRUE(has(out, "exited " + pid + " 3\n"))
      << "the pid-file process must exit with the shell's status:\n"
      << out;
  EXPECT_TRUE(has(out, "console: the terminal hung up")) << out;
  EXPECT_TRUE(has(out, "delete=0")) << out;
  // exec --tty: a pty master of its own at its socket, the guest's tty its terminal, resized.
  at = out.find("exec-pid=");
  const std::string exec_pid =
      at == std::string::npos ? "?" : out.substr(at + 9, out.find('\n', at) - at - 9);
  EXPECT_TRUE(std::regex_search(out, std::regex("got-x /dev/[a-z]+/?[0-9]* 25 90\n"))) << out;
  EXPECT_TRUE(has(out, "exited " + exec_pid + " 5\n"))
      << "the exec's pid-file process must exit with its status:\n"
      << out;
  if (HasFailure()) std::cerr << "--- the script's whole output ---\n" << output << "\n";
}

// Detached VMs (issue #17): run -d returns once the workload runs; exec gives the output,
// stderr and exit status, takes -e/-w/-u/-i, and 20 at once all answer; exec -t passes the
// terminal's size and its resize; logs -f follows the workload's output until it ends; kill -s
// USR1 reaches the workload; stop gives it SIGTERM (its trap's exit status comes back through
// wait and ps -a) and SIGKILL after -t when it ignores SIGTERM (137); a VMM killed with SIGKILL
// shows as exited in ps -a; rm -f removes a running VM and everything of it.
//
// It runs by default since two fixes: 20 parallel execs killed the VMM (SIGSYS: glibc's malloc
// opened a /proc file in the vsock thread) and exec -i hung when its stdin came with the request.
TEST(RunKvm, DetachedVmsExecLogsStopWaitRm) {
  NetSetup ns;
  if (std::string why = ns.prepare(); !why.empty()) GTEST_SKIP() << why;
  const std::string& B = ns.B;
  const std::string& run = ns.run;
  const std::string img = quote(std::getenv("IMG2VM_BIN"));
  const fs::path& w = ns.w;
  const std::string tty_out = quote((w / "exec-tty.out").string());
  write_file_atomic(w / "exec-tty.sh",
                    "stty rows 40 cols 100\n" + img +
                        " exec -t svc sh -c 'stty size; trap \"echo resized=\\$(stty size); exit "
                        "6\" WINCH; echo ready; while :; do sleep 1; done' </dev/tty >" +
                        tty_out +
                        " 2>&1 &\n"
                        "pid=$!; i=0; while ! grep -q ready " +
                        tty_out +
                        " && [ $i -lt 120 ]; do sleep 1; i=$((i+1)); done\n"
                        "stty rows 50 cols 132 </dev/tty\n"
                        "wait $pid; rc=$?; cat " +
                        tty_out + "; exit $rc\n");
  std::ostringstream sh;
  sh << ns.prelude()
     << "svc='trap \"echo got-usr1\" USR1; trap \"echo got-term; exit 7\" TERM; echo started; "
        "echo started-on-stderr >&2; i=0; while :; do i=$((i+1)); echo tick $i; sleep 1; done'\n"
     << "c run-d " << run << " -d --name svc " << B << " sh -c \"$svc\"\n"
     << "c ps " << img << " ps\n"
     << "c exec " << img << " exec svc sh -c 'echo out; echo err >&2; exit 3'\n"
     << "c exec-opts " << img
     << " exec -e FOO=bar -w /tmp -u 1000 svc sh -c 'echo \"$FOO $(pwd) $(id -u) $BASE\"'\n"
     << "c exec-missing " << img << " exec svc /no/such/program\n"
     << "c exec-stdin sh -c 'printf \"piped\\n\" | " << img << " exec -i svc cat'\n"
     << "begin parallel\n"
     << "for i in $(seq 20); do " << img
     << " exec svc echo par-$i >\"$W/par$i\" 2>&1 & pids=\"$pids $!\"; done\n"
     << "[ -z \"$pids\" ] || wait $pids  # a bare wait would wait for the watchdog too\n"
     << "cat \"$W\"/par* | grep -c '^par-'; echo; echo @@STDERR@@\n"
     << "for f in \"$W\"/par*; do grep -q '^par-' \"$f\" || { echo \"$f:\"; cat \"$f\"; }; done\n"
     << img << " ps -a; " << img << " logs --tail 5 svc\n"
     << "echo; echo '@@END parallel 0@@'\n"
     << "c exec-tty script -qec \"sh $W/exec-tty.sh\" /dev/null\n"
     << "begin follow\n"
     << img << " logs -f svc >\"$W/follow\" 2>&1 &\n"
     << "lf=$!; wait_for \"$W/follow\" 'tick 2'\n"
     << img << " kill -s USR1 svc; wait_for \"$W/follow\" got-usr1\n"
     << img << " stop -t 60 svc; echo stop=$?; wait $lf; echo follow-ended=$?\n"
     << "cat \"$W/follow\"; echo; echo @@STDERR@@; echo; echo '@@END follow 0@@'\n"
     << "c wait " << img << " wait svc\n"
     << "c logs-tail " << img << " logs --tail 1 svc\n"
     << "c logs-t " << img << " logs -t svc\n"
     << "c logs-split " << img << " logs svc\n"
     << "c stubborn sh -c '" << run << " -d --name stubborn " << B
     << " sh -c \"trap \\\"\\\" TERM; echo ready; while :; do sleep 1; done\" >/dev/null && "
     // Its trap is set once it says ready (run -d returns once the shell runs, maybe before).
     << "{ i=0; while ! " << img << " logs stubborn 2>/dev/null | grep -q ready && [ $i -lt 180 ]; "
     << "do sleep 1; i=$((i+1)); done; } && " << img << " stop -t 2 stubborn && " << img
     << " wait stubborn'\n"
     << "begin vmm-killed\n"
     << run << " -d --name victim " << B << " sleep 1000 >/dev/null\n"
     << "vp=$(" << img
     << " inspect victim | sed -n 's/.*\"Pid\": *\\([0-9][0-9]*\\).*/\\1/p' | head -n 1)\n"
     << "echo vmm=$vp; kill -9 $vp; " << img << " wait victim; " << img << " ps -a | grep victim\n"
     << "echo; echo @@STDERR@@; echo; echo '@@END vmm-killed 0@@'\n"
     << "begin rm-f\n"
     << "did=$(" << run << " -d --name doomed " << B << " sleep 1000)\n"
     << img << " rm doomed; echo rm=$?; " << img << " rm -f doomed; echo rm-f=$?\n"
     << img << " ps -a | grep -c doomed; test -e \"$IMG2VM_HOME/vms/$did\" && echo dir-left || "
     << "echo dir-gone\n"
     << "echo; echo @@STDERR@@; echo; echo '@@END rm-f 0@@'\n"
     << "c ps-a " << img << " ps -a\n";
  // run -d -v: the share's virtiofsd lives with the VM (its monitor's child), not with `run`.
  const bool shares = virtiofs_skip_reason().empty();
  if (shares)
    sh << "begin shared\n"
       << "mkdir -p \"$W/share\"; echo from-host > \"$W/share/in\"\n"
       << run << " -d --name shared -v \"$W/share:/data\" " << B
       << " sleep 1000 >/dev/null; echo run=$?\n"
       << img << " exec shared sh -c 'cat /data/in; echo from-guest > /data/out'; echo exec=$?\n"
       << "cat \"$W/share/out\"; " << img << " rm -f shared >/dev/null; echo rm=$?\n"
       << "i=0; while pidof virtiofsd >/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); "
          "done; pidof virtiofsd || echo virtiofsd-gone\n"
       << "echo; echo @@STDERR@@; echo; echo '@@END shared 0@@'\n";
  write_file_atomic(w / "life.sh", sh.str());
  std::vector<fs::path> files = ns.files();
  files.push_back("/usr/bin/script");
  if (shares) files.push_back(kVirtiofsd);
  std::string output = run_script(w / "life.sh", files, std::chrono::seconds(1200));
  Cases cases(output);
  auto get = [&](const std::string& n) -> const Case& { return cases.get(n); };
  const Case& rd = get("run-d");
  EXPECT_EQ(rd.rc, 0) << rd.out << rd.err;
  EXPECT_EQ(rd.out.find_first_not_of("0123456789abcdef"), 64u) << "the full id: " << rd.out;
  EXPECT_TRUE(has(get("ps").out, " svc")) << get("ps").out;
  const Case& ex = get("exec");
  EXPECT_EQ(ex.rc, 3) << ex.out << ex.err;
  EXPECT_TRUE(has(ex.out, "out\n")) << ex.out;
  EXPECT_TRUE(has(ex.err, "err\n")) << ex.err;
  EXPECT_FALSE(has(ex.out, "err")) << "stderr kept apart: " << ex.out;
  const Case& opts = get("exec-opts");
  EXPECT_EQ(opts.rc, 0) << opts.out << opts.err;
  EXPECT_TRUE(has(opts.out, "bar /tmp 1000 1\n")) << opts.out << opts.err;
  EXPECT_EQ(get("exec-missing").rc, 127) << get("exec-missing").err;
  EXPECT_TRUE(has(get("exec-stdin").out, "piped\n")) << get("exec-stdin").out;
  EXPECT_TRUE(has(get("parallel").out, "20\n")) << get("parallel").out << get("parallel").err;
  const Case& tty = get("exec-tty");
  EXPECT_EQ(tty.rc, 6) << tty.out << tty.err;
  EXPECT_TRUE(has(tty.out, "40 100")) << tty.out;
  EXPECT_TRUE(has(tty.out, "resized=50 132")) << tty.out;
  const Case& follow = get("follow");
  EXPECT_TRUE(has(follow.out, "started\n")) << follow.out;
  EXPECT_TRUE(has(follow.out, "got-usr1\n")) << follow.out;
  EXPECT_TRUE(has(follow.out, "got-term\n")) << follow.out;
  EXPECT_TRUE(has(follow.out, "stop=0")) << follow.out;
  EXPECT_TRUE(has(follow.out, "follow-ended=0")) << follow.out;
  EXPECT_TRUE(has(get("wait").out, "7\n")) << get("wait").out << get("wait").err;
  EXPECT_TRUE(has(get("logs-tail").out, "got-term")) << get("logs-tail").out;
  EXPECT_FALSE(has(get("logs-tail").out, "started")) << get("logs-tail").out;
  EXPECT_TRUE(has(get("logs-t").out, "Z started")) << get("logs-t").out;
  // As docker logs: the workload's stderr on stderr, its stdout on stdout.
  const Case& split = get("logs-split");
  EXPECT_TRUE(has(split.out, "started\n")) << split.out;
  EXPECT_FALSE(has(split.out, "started-on-stderr")) << split.out;
  EXPECT_TRUE(has(split.err, "started-on-stderr\n")) << split.err;
  EXPECT_FALSE(has(split.err, "tick")) << split.err;
  const Case& stubborn = get("stubborn");
  EXPECT_EQ(stubborn.rc, 0) << stubborn.out << stubborn.err;
  EXPECT_TRUE(has(stubborn.out, "stubborn\n137\n")) << stubborn.out << stubborn.err;
  const Case& killed = get("vmm-killed");
  EXPECT_FALSE(has(killed.out, "vmm=\n")) << "no VMM pid in inspect: " << killed.out;
  EXPECT_TRUE(has(killed.out, "\n137\n")) << killed.out;
  EXPECT_TRUE(has(killed.out, "Exited (137)")) << killed.out;
  const Case& rmf = get("rm-f");
  EXPECT_TRUE(has(rmf.out, "rm=1")) << rmf.out;
  EXPECT_TRUE(has(rmf.out, "doomed\nrm-f=0\n0\ndir-gone")) << rmf.out;
  if (shares) {
    const Case& sh_case = get("shared");
    EXPECT_TRUE(has(sh_case.out, "run=0\nfrom-host\nexec=0\nfrom-guest\nrm=0\nvirtiofsd-gone"))
        << sh_case.out << sh_case.err;
  }
  if (HasFailure()) std::cerr << "--- the script's whole output ---\n" << output << "\n";
}

TEST(RunKvm, NetworkingInOurRunner) {
  NetSetup ns;
  if (std::string why = ns.prepare(); !why.empty()) GTEST_SKIP() << why;
  const std::string& B = ns.B;
  const std::string& run = ns.run;
  // A guest web server that says which VM it is, started in the background.
  auto server = [&](const std::string& tag, const std::string& opts, const std::string& body) {
    return run + " " + opts + " " + B + " sh -c 'echo " + body +
           " > /www/index.html; echo ready; exec httpd -f -p 80 -h /www'" + " >\"$W/" + tag +
           ".out\" 2>\"$W/" + tag + ".err\" </dev/null &\n";
  };
  std::ostringstream sh;
  sh << ns.prelude()
     << "busybox ip link set lo up 2>/dev/null\n"
     // Two VMs at once, each publishing its port 80; a third asking for a port in use.
     << "begin two-servers\n"
     << server("a", "-p 127.0.0.1:$P1:80", "served-by-a") << "pa=$!\n"
     << server("b", "-p $P2:80", "served-by-b") << "pb=$!\n"
     << "wait_for \"$W/a.out\" ready; wait_for \"$W/b.out\" ready\n"
     << "fetch $P1 \"$W/a.html\"; fetch $P2 \"$W/b.html\"\n"
     << run << " -p 127.0.0.1:$P1:80 " << B
     << " true >\"$W/c.out\" 2>\"$W/c.err\" </dev/null; rc_c=$?\n"
     << "kill -INT $pa $pb; wait $pa; rc_a=$?; wait $pb; rc_b=$?\n"
     << "echo \"a=$(tail -n1 \"$W/a.html\") b=$(tail -n1 \"$W/b.html\") rc_a=$rc_a rc_b=$rc_b "
        "rc_c=$rc_c\"\n"
     << "echo; echo @@STDERR@@; cat \"$W/c.err\" \"$W/a.out\" \"$W/a.err\" \"$W/b.err\"; echo; "
        "echo '@@END two-servers 0@@'\n"
     // -P: the image's ExposedPorts on a port picked here, reported as a JSON event.
     << "begin publish-all\n"
     << run << " --json -P " << B << " >\"$W/p.out\" 2>\"$W/p.err\" </dev/null &\n"
     << "pp=$!; wait_for \"$W/p.err\" '\"published\"'\n"
     << "port=$(sed -n 's/.*\"0\\.0\\.0\\.0:\\([0-9]*\\)->80\\/tcp\".*/\\1/p' \"$W/p.err\" | head "
        "-n1)\n"
     << "fetch $port \"$W/p.html\"; kill -INT $pp; wait $pp; rc=$?\n"
     << "echo \"port=$port body=$(tail -n1 \"$W/p.html\")\"; echo; echo @@STDERR@@; cat "
        "\"$W/p.err\"; echo;"
     << " echo \"@@END publish-all $rc@@\"\n"
     // The guest as a client of the host's loopback: only with host_loopback.
     << "busybox httpd -f -p 127.0.0.1:$P3 -h \"$W/hostwww\" & hp=$!\n"
     << "c host-loopback " << run << " --network user:host_loopback=on " << B
     << " http_get 10.0.2.2 $P3\n"
     << "c host-private " << run << " " << B << " http_get 10.0.2.2 $P3\n"
     << "kill $hp\n"
     // UDP: guest to a host echo server, and host to a guest echo server through -p .../udp.
     << "\"$U\" serve $P4 >\"$W/udp-host.out\" & up=$!\n"
     << "c udp-out " << run << " --network user:host_loopback=on " << B
     << " udp_echo send 10.0.2.2 $P4 ping-from-guest\n"
     << "kill $up\n"
     << "begin udp-in\n"
     << run << " -p 127.0.0.1:$P5:7/udp " << B
     << " udp_echo serve 7 >\"$W/u.out\" 2>\"$W/u.err\" </dev/null &\n"
     << "pu=$!; wait_for \"$W/u.out\" listening; \"$U\" send 127.0.0.1 $P5 ping-from-host; rc=$?\n"
     << "kill -INT $pu; wait $pu; cat \"$W/u.out\"; echo; echo @@STDERR@@; cat \"$W/u.err\"; echo; "
        "echo \"@@END udp-in $rc@@\"\n"
     << "begin udp-host-log; cat \"$W/udp-host.out\"; echo; echo @@STDERR@@; echo; echo "
        "'@@END udp-host-log 0@@'\n"
     // What the guest sees.
     << "c facts " << run << " " << B
     << " sh -c 'cat /etc/resolv.conf; ip -4 addr show dev eth0; ip route; cat "
        "/sys/class/net/eth0/mtu'\n"
     << "c none " << run << " --network none " << B << " ls /sys/class/net\n";
  write_file_atomic(ns.w / "net.sh", sh.str());

  std::string output = run_script(ns.w / "net.sh", ns.files(), std::chrono::seconds(1200));
  Cases cases(output);
  auto get = [&](const std::string& n) -> const Case& { return cases.get(n); };

  const Case& two = get("two-servers");
  EXPECT_TRUE(has(two.out, "a=served-by-a b=served-by-b")) << two.out << two.err;
  // Ctrl-C stops each server with SIGTERM, as docker stop would: 128+15.
  EXPECT_TRUE(has(two.out, "rc_a=143 rc_b=143")) << two.out;
  EXPECT_TRUE(has(two.out, "rc_c=125")) << two.out;
  EXPECT_TRUE(has(two.err, "already in use")) << two.err;

  const Case& all = get("publish-all");
  EXPECT_TRUE(has(all.out, "body=served-by-image")) << all.out << all.err;
  {
    std::string last = all.err;
    while (!last.empty() && last.back() == '\n') last.pop_back();
    auto j = nlohmann::json::parse(last.substr(last.rfind('\n') + 1), nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << all.err;
    EXPECT_EQ(j["network"], "user");
    ASSERT_EQ(j["published"].size(), 1u) << j.dump();
    EXPECT_TRUE(has(j["published"][0].get<std::string>(), "->80/tcp")) << j.dump();
  }

  EXPECT_EQ(get("host-loopback").rc, 0) << get("host-loopback").out << get("host-loopback").err;
  EXPECT_TRUE(has(get("host-loopback").out, "served-by-host")) << get("host-loopback").out;
  EXPECT_NE(get("host-private").rc, 0) << "the host's loopback is reachable without host_loopback";
  EXPECT_FALSE(has(get("host-private").out, "served-by-host")) << get("host-private").out;

  EXPECT_EQ(get("udp-out").rc, 0) << get("udp-out").out << get("udp-out").err;
  EXPECT_TRUE(has(get("udp-out").out, "answer ping-from-guest")) << get("udp-out").out;
  EXPECT_TRUE(has(get("udp-host-log").out, "got ping-from-guest from 127.0.0.1"))
      << get("udp-host-log").out;
  const Case& uin = get("udp-in");
  EXPECT_EQ(uin.rc, 0) << uin.out << uin.err;
  EXPECT_TRUE(has(uin.out, "got ping-from-host from 10.0.2.2")) << uin.out;

  const Case& facts = get("facts");
  EXPECT_EQ(facts.rc, 0) << facts.out << facts.err;
  EXPECT_TRUE(has(facts.out, "nameserver 10.0.2.3")) << facts.out;
  EXPECT_TRUE(has(facts.out, "inet 10.0.2.15/24")) << facts.out;
  EXPECT_TRUE(has(facts.out, "default via 10.0.2.2")) << facts.out;
  EXPECT_TRUE(has(facts.out, "\n1500")) << facts.out;
  const Case& none = get("none");
  EXPECT_EQ(none.rc, 0) << none.out << none.err;
  EXPECT_TRUE(has(none.out, "lo")) << none.out;
  EXPECT_FALSE(has(none.out, "eth0")) << none.out;
  if (HasFailure()) std::cerr << "--- the script's whole output ---\n" << output << "\n";
}

// Why a tap network test cannot run here ("" when it can): root, iproute2 and nftables.
std::string tap_skip_reason() {
  if (::geteuid() != 0) return "the tap network needs root (CAP_NET_ADMIN)";
  for (const char* tool : {"/usr/bin/ip", "/usr/sbin/nft"})
    if (!fs::exists(tool))
      return std::string("needs ") + tool + " (iproute2, nftables: scripts/setup.sh)";
  return "";
}

// The tap backend (--network tap) with real guests, as root: a guest web server published on the
// host's loopback, what the guest sees, the VMM running as an unprivileged child of img2vm
// meanwhile, a second VM that reaches its gateway but neither the first VM nor a host service,
// UDP through a published port, the host side gone after each run, and a device made
// beforehand (tap=NAME). Inside L1 on the nested route; on hardware KVM
// in a network namespace of its own, so the host's network is not touched.
TEST(RunKvm, TapNetworkingInOurRunner) {
  if (std::string why = tap_skip_reason(); !why.empty()) GTEST_SKIP() << why;
  NetSetup ns;
  if (std::string why = ns.prepare(); !why.empty()) GTEST_SKIP() << why;
  const std::string& B = ns.B;
  const std::string& run = ns.run;
  std::ostringstream sh;
  sh << ns.prelude() << "[ -x /bin/load-net-modules ] && /bin/load-net-modules\n"
     << "unset SUDO_UID SUDO_GID SUDO_USER\n"  // root itself: the VMM becomes nobody
     << "/usr/bin/ip link set lo up\n"
     << "busybox httpd -f -p $P3 -h \"$W/hostwww\" & hp=$!\n"
     // VM a: a web server published on the host's loopback; it reports what it sees first.
     << "begin server\n"
     << run << " --json --network tap -p 127.0.0.1:$P1:80 " << B
     << " sh -c 'echo served-by-tap > /www/index.html; ip -4 addr show dev eth0; ip route; cat "
        "/etc/resolv.conf;"
        " cat /sys/class/net/eth0/mtu; echo features=$(cat /sys/class/net/eth0/device/features); "
        "dd if=/dev/urandom of=/www/big bs=1024 count=4096 2>/dev/null;"
        " echo guest-md5=$(md5sum < /www/big); echo ready; exec httpd -f -p 80 -h /www' "
        ">\"$W/a.out\" 2>\"$W/a.err\" </dev/null &\n"
     << "pa=$!; wait_for \"$W/a.out\" ready; fetch $P1 \"$W/a.html\"\n"
     // 4 MiB from the guest: its TCP segments and partial checksums finished by the host kernel.
     << "printf 'GET /big HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 60 127.0.0.1 $P1 > \"$W/big\"\n"
     << "echo \"body=$(tail -n1 \"$W/a.html\") host-md5=$(tail -c 4194304 \"$W/big\" | md5sum)\"\n"
     << "echo; echo @@STDERR@@; echo; echo '@@END server 0@@'\n"
     // The VMM is a child of img2vm that gave up root: its identity, capabilities and filters.
     << "begin vmm-child\n"
     << "for d in /proc/[0-9]*; do [ \"$(awk '/^PPid:/{print $2}' $d/status 2>/dev/null)\" = "
        "\"$pa\" ] && vmm=${d#/proc/}; done\n"
     << "echo \"exe=$(readlink /proc/$vmm/exe)\"\n"
     << "grep -E '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' "
        "/proc/$vmm/status\n"
     << "echo \"threads=$(ls /proc/$vmm/task | wc -l) filtered=$(cat /proc/$vmm/task/*/status | "
        "grep -c '^Seccomp:.2')\"\n"
     << "grep -q -E 'libcurl|libssl|libnftables|libarchive|libext2fs' /proc/$vmm/maps && echo "
        "maps-registry-code\n"
     << "echo; echo @@STDERR@@; echo; echo '@@END vmm-child 0@@'\n"
     << "c links-during /usr/bin/ip -br link\n"
     << "c rules-during /usr/sbin/nft list ruleset\n"
     // VM b, outbound off: its gateway answers ping; VM a and the host's web server do not answer.
     << "c isolation " << run << " --network tap:outbound=off " << B
     << " sh -c 'gw=$(ip route | sed -n \"s/^default via \\([0-9.]*\\).*/\\1/p\"); echo gw=$gw;"
        " ping -c 1 -W 10 $gw >/dev/null && echo ping-gateway-ok;"
        " http_get 10.200.0.2 80 5 | grep -q served-by-tap && echo reached-other-vm;"
        " http_get $gw '\"$P3\"' 5 | grep -q served-by-host && echo reached-host-service; true'\n"
     << "kill -INT $pa; wait $pa; rc=$?\n"
     << "begin server-end; cat \"$W/a.out\"; echo; echo @@STDERR@@; cat \"$W/a.err\"; "
        "echo; echo \"@@END server-end $rc@@\"\n"
     << "c links-after /usr/bin/ip -br link\n"
     << "c rules-after /usr/sbin/nft list ruleset\n"
     // UDP to a guest through a published port.
     << "begin udp-in\n"
     << run << " --network tap -p 127.0.0.1:$P5:7/udp " << B
     << " udp_echo serve 7 >\"$W/u.out\" 2>\"$W/u.err\" </dev/null &\n"
     << "pu=$!; wait_for \"$W/u.out\" listening; \"$U\" send 127.0.0.1 $P5 ping-from-host; rc=$?\n"
     << "kill -INT $pu; wait $pu; cat \"$W/u.out\"; echo; echo @@STDERR@@; cat \"$W/u.err\"; echo; "
        "echo \"@@END udp-in $rc@@\"\n"
     << "kill $hp\n"
     // A device an administrator made: used as it is.
     << "/usr/bin/ip tuntap add dev vmtap0 mode tap && /usr/bin/ip addr add 172.31.9.1/24 dev "
        "vmtap0 && /usr/bin/ip link set vmtap0 up\n"
     << "c existing " << run << " --network tap=vmtap0 " << B
     << " sh -c 'ip -4 addr show dev eth0; ping -c 1 -W 10 172.31.9.1 >/dev/null && echo ping-ok'\n"
     << "c existing-publish " << run << " --network tap=vmtap0 -p 8080:80 " << B << " true\n"
     << "c existing-after /usr/bin/ip -4 -br addr show dev vmtap0\n";
  write_file_atomic(ns.w / "tap.sh", sh.str());

  std::vector<fs::path> files = ns.files();
  files.insert(files.end(), {"/usr/bin/ip", "/usr/sbin/nft"});
  std::string output =
      run_script(ns.w / "tap.sh", files, std::chrono::seconds(1200), {"unshare", "--net"});
  Cases cases(output);
  auto get = [&](const std::string& n) -> const Case& { return cases.get(n); };

  EXPECT_TRUE(has(get("server").out, "body=served-by-tap")) << get("server").out;
  const Case& end = get("server-end");
  {
    // The 4 MiB the host fetched are the guest's bytes.
    const std::string& o = get("server").out;
    auto pos = end.out.find("guest-md5=");
    ASSERT_NE(pos, std::string::npos) << end.out;
    std::string md5 = end.out.substr(pos + 10, 32);
    EXPECT_TRUE(has(o, "host-md5=" + md5)) << o << "\nguest: " << md5;
    // The guest's driver took the offloads (virtio feature bits, bit 0 first).
    pos = end.out.find("features=");
    ASSERT_NE(pos, std::string::npos) << end.out;
    std::string bits = end.out.substr(pos + 9, 16);
    for (int bit : {0, 1, 7, 8, 11, 12})
      EXPECT_EQ(bits.at(size_t(bit)), '1') << "feature bit " << bit << ": " << bits;
  }
  EXPECT_EQ(end.rc, 143) << end.err;  // Ctrl-C: SIGTERM to httpd, as docker stop
  EXPECT_TRUE(has(end.out, "inet 10.200.0.2/30")) << end.out;
  EXPECT_TRUE(has(end.out, "default via 10.200.0.1")) << end.out;
  EXPECT_TRUE(has(end.out, "nameserver ")) << end.out;
  EXPECT_TRUE(has(end.out, "\n1500\n")) << end.out;
  {
    std::string last = end.err;
    while (!last.empty() && last.back() == '\n') last.pop_back();
    auto j = nlohmann::json::parse(last.substr(last.rfind('\n') + 1), nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << end.err;
    EXPECT_EQ(j["network"], "tap");
    EXPECT_EQ(j["tap"]["device"], "img2vm0") << j.dump();
    EXPECT_EQ(j["tap"]["guest_ip"], "10.200.0.2") << j.dump();
    ASSERT_EQ(j["published"].size(), 1u) << j.dump();
    EXPECT_TRUE(has(j["published"][0].get<std::string>(), "->80/tcp")) << j.dump();
  }
  {
    // While its guest served through the tap: the VMM runs as nobody, with no capability left
    // in any set, no_new_privs, every thread filtered, and none of img2vm's other code mapped.
    const std::string& v = get("vmm-child").out;
    EXPECT_TRUE(has(v, "exe=" + fs::path(IMG2VM_VMM_BINARY).string())) << v;
    EXPECT_TRUE(has(v, "Uid:\t65534\t65534\t65534\t65534")) << v;
    EXPECT_TRUE(has(v, "Gid:\t65534\t65534\t65534\t65534")) << v;
    for (const char* set : {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"})
      EXPECT_TRUE(has(v, std::string(set) + ":\t0000000000000000")) << set << "\n" << v;
    EXPECT_TRUE(has(v, "NoNewPrivs:\t1")) << v;
    auto threads = v.find("threads="), filtered = v.find(" filtered=");
    ASSERT_NE(threads, std::string::npos) << v;
    ASSERT_NE(filtered, std::string::npos) << v;
    int n = std::atoi(v.c_str() + threads + 8), f = std::atoi(v.c_str() + filtered + 10);
    EXPECT_GE(n, 5) << v;  // main, signal relay, I/O, network, vCPU
    EXPECT_EQ(f, n) << "not every thread of the VMM is filtered\n" << v;
    EXPECT_FALSE(has(v, "maps-registry-code")) << v;
  }
  EXPECT_TRUE(has(get("links-during").out, "img2vm0")) << get("links-during").out;
  EXPECT_TRUE(has(get("rules-during").out, "table ip img2vm_img2vm0")) << get("rules-during").out;
  const Case& iso = get("isolation");
  EXPECT_EQ(iso.rc, 0) << iso.out << iso.err;
  EXPECT_TRUE(has(iso.out, "gw=10.200.0.5")) << iso.out;
  EXPECT_TRUE(has(iso.out, "ping-gateway-ok")) << iso.out << iso.err;
  EXPECT_FALSE(has(iso.out, "reached-other-vm")) << iso.out;
  EXPECT_FALSE(has(iso.out, "reached-host-service")) << iso.out;
  EXPECT_FALSE(has(get("links-after").out, "img2vm")) << get("links-after").out;
  EXPECT_FALSE(has(get("rules-after").out, "img2vm")) << get("rules-after").out;
  const Case& uin = get("udp-in");
  EXPECT_EQ(uin.rc, 0) << uin.out << uin.err;
  EXPECT_TRUE(has(uin.out, "got ping-from-host from 10.200.0.1")) << uin.out;
  const Case& ex = get("existing");
  EXPECT_EQ(ex.rc, 0) << ex.out << ex.err;
  EXPECT_TRUE(has(ex.out, "inet 172.31.9.2/24")) << ex.out;
  EXPECT_TRUE(has(ex.out, "ping-ok")) << ex.out;
  const Case& exp = get("existing-publish");
  EXPECT_EQ(exp.rc, 125) << exp.err;
  EXPECT_TRUE(has(exp.err, "publish ports with --network tap")) << exp.err;
  EXPECT_TRUE(has(get("existing-after").out, "172.31.9.1/24")) << get("existing-after").out;
  if (HasFailure() || std::getenv("IMG2VM_TEST_SHOW_OUTPUT"))
    std::cerr << "--- the script's whole output ---\n" << output << "\n";
}

namespace {

// The summary a run's --json writes last on stderr: its last line that is a JSON object.
nlohmann::json run_summary(const Case& c) {
  nlohmann::json last = nlohmann::json::object();
  std::istringstream in(c.err);
  for (std::string line; std::getline(in, line);)
    if (auto j = nlohmann::json::parse(line, nullptr, false); j.is_object()) last = j;
  return last;
}

}  // namespace

// Snapshots (issue #19): `img2vm snapshot create` boots the image up to the init's snapshot
// point and stores the VM; `img2vm run` with the same image, kernel, memory and vCPUs (and no
// network, as the snapshot had) resumes it instead of booting. Each resumed VM runs its own
// command, env and exit code,
// and gets its own entropy (RNG output, boot id) and the current time; --no-snapshot, a network,
// another kernel and a damaged snapshot boot instead (the last two saying why); ls, rm, prune.
TEST(RunKvm, SnapshotsResumeWithEachRunsOwnInput) {
  NetSetup ns;
  if (std::string why = ns.prepare(); !why.empty()) GTEST_SKIP() << why;
  const std::string& B = ns.B;
  const std::string bin = quote(std::getenv("IMG2VM_BIN"));
  const std::string k = quote((ns.w / "vmlinux").string());
  const std::string run = ns.run + " --network none --json";
  const std::string work =
      " sh -c 'echo var=$RUNVAR args=$0 guest-time=$(date +%s); cat "
      "/proc/sys/kernel/random/boot_id; head -c 64 /dev/urandom | md5sum; exit 7' ";
  std::ostringstream sh;
  sh << ns.prelude() << "c create " << bin << " snapshot create --network none -m 160M --kernel "
     << k << " --json " << B << "\n"
     << "c ls " << bin << " snapshot ls\n"

     << "c r1 sh -c 'echo host-time=$(date +%s); exec \"$@\"' - " << run << " -e RUNVAR=one " << B
     << work << "first\n"
     << "c r2 " << run << " -e RUNVAR=two " << B << work << "second\n"
     << "c cold " << run << " --no-snapshot -e RUNVAR=three " << B << work
     << "third\n"
     // What the init prepared before the snapshot's point (lo up, the stderr port open) is
     // what a resumed run has: stderr apart from stdout; with -t, both on the tty.
     << "c r-streams " << run << " " << B
     << " sh -c 'echo to-out; echo to-err >&2; echo lo=$(cat /sys/class/net/lo/flags)'\n"
     << "printf '%s\\n' "
     << quote(run + " -t " + B + " sh -c 'test -t 1 && test -t 2 && echo tty-both'")
     << " > \"$W/snap-tty.sh\"\n"
     << "c r-tty script -qec \"sh $W/snap-tty.sh\" /dev/null\n"
     << "c with-net " << ns.run << " --json " << B
     << " echo net-run\n"
     // -d resumes the same snapshot (its vsock device gets the monitor's socket): exec and logs.
     << "c detached " << ns.run << " --network none -d --log-level info -e RUNVAR=four " << B
     << " sh -c 'echo detached-up $RUNVAR; exec sleep 600'\n"
     << "id=$(head -n 1 \"$W/out\")\n"
     << "c d-exec " << bin << " exec \"$id\" sh -c 'echo exec-in-restored $RUNVAR'\n"
     << "c d-logs sh -c 'i=0; while [ $i -lt 120 ] && ! \"$0\" logs \"$1\" 2>&1 | grep -q "
        "detached-up; do sleep 1; i=$((i+1)); done; exec \"$0\" logs \"$1\"' "
     << bin << " \"$id\"\n"
     << "c d-stop " << bin << " stop \"$id\"\n"
     << "c d-rm " << bin << " rm \"$id\"\n"
     << "cp \"$W/vmlinux\" \"$W/vmlinux2\"; printf x >> \"$W/vmlinux2\"\n"
     << "c other-kernel " << bin << " run -m 160M --kernel \"$W/vmlinux2\" --network none --json "
     << B << " echo other-kernel-run\n"
     << "c damaged sh -c 'for f in \"$IMG2VM_HOME\"/snapshots/*/state; do truncate -s 100 \"$f\";"
        " done; exec \"$@\"' - "
     << run << " " << B << " echo after-damage\n"
     << "c rm sh -c '" << bin << " snapshot rm $(" << bin << " snapshot ls -q)'\n"
     << "c ls-after " << bin << " snapshot ls -q\n"
     << "c create2 " << bin << " snapshot create --network none -m 160M --kernel " << k << " " << B
     << "\n"
     << "c prune " << bin << " snapshot prune -a --json\n";
  write_file_atomic(ns.w / "snap.sh", sh.str());
  std::vector<fs::path> files = ns.files();
  files.push_back("/usr/bin/script");  // r-tty's pseudo-terminal
  std::string output = run_script(ns.w / "snap.sh", files, std::chrono::seconds(1500));
  Cases cases(output);
  auto get = [&](const std::string& n) -> const Case& { return cases.get(n); };
  const Case& create = get("create");
  ASSERT_EQ(create.rc, 0) << create.out << create.err;
  auto made = nlohmann::json::parse(create.out, nullptr, false);
  ASSERT_TRUE(made.is_object()) << create.out;
  const std::string key = made.value("key", "");
  EXPECT_EQ(key.size(), 32u) << create.out;
  EXPECT_EQ(made.value("memory_mib", 0), 160);
  EXPECT_TRUE(has(get("ls").out, key)) << get("ls").out;

  auto lines_of = [](const std::string& s) {
    std::vector<std::string> v;
    std::istringstream in(s);
    for (std::string l; std::getline(in, l);)
      if (!l.empty()) v.push_back(l);
    return v;
  };
  const Case& r1 = get("r1");
  const Case& r2 = get("r2");
  const Case& cold = get("cold");
  EXPECT_EQ(r1.rc, 7) << r1.out << r1.err;
  EXPECT_EQ(r2.rc, 7) << r2.out << r2.err;
  EXPECT_EQ(cold.rc, 7) << cold.out << cold.err;
  EXPECT_TRUE(has(r1.out, "var=one args=first")) << r1.out;
  EXPECT_TRUE(has(r2.out, "var=two args=second")) << r2.out;
  EXPECT_TRUE(has(cold.out, "var=three args=third")) << cold.out;
  EXPECT_EQ(run_summary(r1).value("snapshot", ""), key) << r1.err;
  EXPECT_TRUE(run_summary(r1).value("restored", false)) << r1.err;
  EXPECT_TRUE(run_summary(r2).value("restored", false)) << r2.err;
  EXPECT_FALSE(run_summary(cold).contains("snapshot")) << cold.err;
  // Fresh per VM: boot id and RNG output (lines 2 and 3), and a clock that is not the snapshot's.
  auto l1 = lines_of(r1.out), l2 = lines_of(r2.out), l3 = lines_of(cold.out);
  ASSERT_GE(l1.size(), 4u) << r1.out;
  ASSERT_GE(l2.size(), 3u) << r2.out;
  ASSERT_GE(l3.size(), 3u) << cold.out;
  EXPECT_NE(l1[2], l2[1]) << "the same boot id in two resumed VMs";
  EXPECT_NE(l1[3], l2[2]) << "the same random bytes in two resumed VMs";
  EXPECT_NE(l2[1], l3[1]);
  {
    long host = std::atol(r1.out.c_str() + r1.out.find("host-time=") + 10);
    auto g = r1.out.find("guest-time=");
    ASSERT_NE(g, std::string::npos) << r1.out;
    long guest = std::atol(r1.out.c_str() + g + 11);
    EXPECT_GE(guest, host - 1) << "the resumed guest's clock is behind the host's: " << r1.out;
  }
  const Case& streams = get("r-streams");
  EXPECT_EQ(streams.rc, 0) << streams.out << streams.err;
  EXPECT_TRUE(run_summary(streams).value("restored", false)) << streams.err;
  EXPECT_TRUE(has(streams.out, "to-out")) << streams.out;
  EXPECT_FALSE(has(streams.out, "to-err")) << streams.out;
  EXPECT_TRUE(has(streams.err, "to-err")) << streams.err;
  EXPECT_TRUE(has(streams.out, "lo=0x9")) << streams.out;  // IFF_UP | IFF_LOOPBACK
  const Case& rtty = get("r-tty");
  EXPECT_EQ(rtty.rc, 0) << rtty.out << rtty.err;
  EXPECT_TRUE(has(rtty.out, "tty-both")) << rtty.out;
  EXPECT_TRUE(has(rtty.out, "\"restored\":true")) << rtty.out;
  const Case& net = get("with-net");
  EXPECT_EQ(net.rc, 0) << net.out << net.err;
  EXPECT_TRUE(has(net.out, "net-run")) << net.out;
  EXPECT_FALSE(run_summary(net).contains("snapshot")) << net.err;
  const Case& det = get("detached");
  EXPECT_EQ(det.rc, 0) << det.out << det.err;
  EXPECT_TRUE(has(det.err, "resuming snapshot " + key)) << det.err;
  const Case& dexec = get("d-exec");
  EXPECT_EQ(dexec.rc, 0) << dexec.out << dexec.err;
  EXPECT_TRUE(has(dexec.out, "exec-in-restored")) << dexec.out << dexec.err;
  const Case& dlogs = get("d-logs");
  EXPECT_TRUE(has(dlogs.out, "detached-up four")) << dlogs.out << dlogs.err;
  EXPECT_FALSE(has(dlogs.out + dlogs.err, "booting instead")) << dlogs.out << dlogs.err;
  EXPECT_EQ(get("d-stop").rc, 0) << get("d-stop").err;
  EXPECT_EQ(get("d-rm").rc, 0) << get("d-rm").err;
  const Case& ok = get("other-kernel");
  EXPECT_EQ(ok.rc, 0) << ok.out << ok.err;
  EXPECT_TRUE(has(ok.out, "other-kernel-run")) << ok.out;
  EXPECT_TRUE(has(ok.err, "snapshot " + key + " of this image not used: it was taken with kernel"))
      << ok.err;
  const Case& dmg = get("damaged");
  EXPECT_EQ(dmg.rc, 0) << dmg.out << dmg.err;
  EXPECT_TRUE(has(dmg.out, "after-damage")) << dmg.out;
  EXPECT_TRUE(has(dmg.err, "snapshot " + key + " not resumed: ")) << dmg.err;
  EXPECT_TRUE(has(dmg.err, "; booting instead")) << dmg.err;
  EXPECT_FALSE(run_summary(dmg).value("restored", true)) << dmg.err;
  EXPECT_EQ(get("rm").rc, 0) << get("rm").err;
  EXPECT_TRUE(has(get("rm").out, key)) << get("rm").out;
  EXPECT_EQ(get("ls-after").out, "") << get("ls-after").out;
  EXPECT_EQ(get("create2").rc, 0) << get("create2").err;
  EXPECT_TRUE(has(get("prune").out, key)) << get("prune").out;
  if (HasFailure() || std::getenv("IMG2VM_TEST_SHOW_OUTPUT"))
    std::cerr << "--- the script's whole output ---\n" << output << "\n";
}

// Snapshots with the user network (issue #19), `snapshot create`'s default: resumed VMs serve a
// published port and reach the host (with host_loopback), each with a MAC of its own; a run
// without a network does not resume the snapshot of one.
TEST(RunKvm, SnapshotsWithTheUserNetworkServePublishedPorts) {
  NetSetup ns;
  if (std::string why = ns.prepare(); !why.empty()) GTEST_SKIP() << why;
  const std::string& B = ns.B;
  const std::string bin = quote(std::getenv("IMG2VM_BIN"));
  const std::string k = quote((ns.w / "vmlinux").string());
  const std::string run = ns.run + " --json";
  const std::string mac = " cat /sys/class/net/eth0/address";
  std::ostringstream sh;
  sh << ns.prelude() << "busybox ip link set lo up 2>/dev/null\n"
     << "c create " << bin << " snapshot create -m 160M --kernel " << k << " --json " << B << "\n"
     << "begin served\n"
     << run << " -p 127.0.0.1:$P1:80 " << B
     << " sh -c 'echo served-by-restore > /www/index.html; echo ready; exec httpd -f -p 80 -h "
        "/www' >\"$W/a.out\" 2>\"$W/a.err\" </dev/null &\n"
     << "pa=$!; wait_for \"$W/a.out\" ready; fetch $P1 \"$W/a.html\"; kill -INT $pa; wait $pa; "
        "rc=$?\n"
     << "echo \"body=$(tail -n1 \"$W/a.html\")\"; echo; echo @@STDERR@@; cat \"$W/a.err\"; echo; "
        "echo \"@@END served $rc@@\"\n"
     << "busybox httpd -f -p 127.0.0.1:$P3 -h \"$W/hostwww\" & hp=$!\n"
     << "c client " << run << " --network user:host_loopback=on " << B
     << " sh -c 'http_get 10.0.2.2 '$P3';" << mac << "'\n"
     << "kill $hp\n"
     << "c mac2 " << run << " " << B << mac << "\n"
     << "c cold " << run << " --no-snapshot " << B << mac << "\n"
     << "c none " << run << " --network none " << B << " ls /sys/class/net\n";
  write_file_atomic(ns.w / "snapnet.sh", sh.str());
  std::string output = run_script(ns.w / "snapnet.sh", ns.files(), std::chrono::seconds(1500));
  Cases cases(output);
  auto get = [&](const std::string& n) -> const Case& { return cases.get(n); };
  // The MAC a run printed: its first line of the form xx:xx:xx:xx:xx:xx.
  auto mac_of = [](const Case& c) {
    static const std::regex re("([0-9a-f]{2}:){5}[0-9a-f]{2}");
    std::smatch m;
    return std::regex_search(c.out, m, re) ? m.str() : std::string();
  };
  const Case& create = get("create");
  ASSERT_EQ(create.rc, 0) << create.out << create.err;
  auto made = nlohmann::json::parse(create.out, nullptr, false);
  ASSERT_TRUE(made.is_object()) << create.out;
  EXPECT_EQ(made.value("network", ""), "user") << create.out;
  const std::string key = made.value("key", "");
  const Case& served = get("served");
  EXPECT_TRUE(has(served.out, "body=served-by-restore")) << served.out << served.err;
  EXPECT_EQ(run_summary(served).value("snapshot", ""), key) << served.err;
  EXPECT_TRUE(run_summary(served).value("restored", false)) << served.err;
  const Case& client = get("client");
  EXPECT_EQ(client.rc, 0) << client.out << client.err;
  EXPECT_TRUE(has(client.out, "served-by-host")) << client.out << client.err;
  EXPECT_TRUE(run_summary(client).value("restored", false)) << client.err;
  const Case& m2 = get("mac2");
  EXPECT_EQ(m2.rc, 0) << m2.out << m2.err;
  EXPECT_TRUE(run_summary(m2).value("restored", false)) << m2.err;
  const Case& cold = get("cold");
  EXPECT_EQ(cold.rc, 0) << cold.out << cold.err;
  EXPECT_FALSE(run_summary(cold).contains("snapshot")) << cold.err;
  const std::string mac1 = mac_of(client), mac2 = mac_of(m2), mac3 = mac_of(cold);
  EXPECT_FALSE(mac1.empty()) << client.out;
  EXPECT_FALSE(mac2.empty()) << m2.out;
  EXPECT_NE(mac1, mac2) << "two VMs resumed from one snapshot with the same MAC";
  EXPECT_NE(mac2, mac3);
  EXPECT_TRUE(mac1.starts_with("52:54:00:")) << mac1;
  const Case& none = get("none");
  EXPECT_EQ(none.rc, 0) << none.out << none.err;
  EXPECT_EQ(none.out.find("eth0"), std::string::npos) << none.out;
  EXPECT_FALSE(run_summary(none).contains("snapshot")) << none.err;
  if (HasFailure() || std::getenv("IMG2VM_TEST_SHOW_OUTPUT"))
    std::cerr << "--- the script's whole output ---\n" << output << "\n";
}

// Snapshots with a tap network (issue #19): `snapshot create --network tap` needs no device and
// no privilege (the NIC is of a tap's kind, with nothing behind it); each run that resumes it
// sets its own tap device up, as root, and its guest takes the addresses of that run: a restored
// VM serves a published port, another reaches its gateway (the host's side of its own device,
// which answers ping and nothing else), each with a MAC of its own; no device is left once they
// have ended.
TEST(RunKvm, SnapshotsWithATapNetworkServeAndReachTheirGateway) {
  if (std::string why = tap_skip_reason(); !why.empty()) GTEST_SKIP() << why;
  NetSetup ns;
  if (std::string why = ns.prepare(); !why.empty()) GTEST_SKIP() << why;
  const std::string& B = ns.B;
  const std::string bin = quote(std::getenv("IMG2VM_BIN"));
  const std::string k = quote((ns.w / "vmlinux").string());
  const std::string run = ns.run + " --json --network tap";
  const std::string show =
      " ip -4 addr show dev eth0; echo mac=$(cat /sys/class/net/eth0/address);";
  std::ostringstream sh;
  sh << ns.prelude() << "[ -x /bin/load-net-modules ] && /bin/load-net-modules\n"
     << "unset SUDO_UID SUDO_GID SUDO_USER\n"
     << "/usr/bin/ip link set lo up\n"
     << "links() { /usr/bin/ip -o link show | wc -l; }\n"
     << "echo \"links-before=$(links)\"\n"
     << "c create " << bin << " snapshot create --network tap -m 160M --kernel " << k << " --json "
     << B << "\n"
     << "echo \"links-after-create=$(links)\"\n"
     << "begin served\n"
     << run << " -p 127.0.0.1:$P1:80 " << B << " sh -c '" << show
     << " echo served-by-tap-restore > /www/index.html; echo ready; exec httpd -f -p 80 -h /www'"
     << " >\"$W/a.out\" 2>\"$W/a.err\" </dev/null &\n"
     << "pa=$!; wait_for \"$W/a.out\" ready; fetch $P1 \"$W/a.html\"; kill -INT $pa; wait $pa; "
        "rc=$?\n"
     << "cat \"$W/a.out\"; echo \"body=$(tail -n1 \"$W/a.html\")\"; echo; echo @@STDERR@@; "
        "cat \"$W/a.err\"; echo; echo \"@@END served $rc@@\"\n"
     << "c client " << run << " " << B << " sh -c '" << show
     << " gw=$(ip route | sed -n \"s/^default via \\([0-9.]*\\).*/\\1/p\"); echo gw=$gw;"
        " ping -c 1 -W 20 $gw >/dev/null && echo ping-gateway-ok'\n"
     << "echo \"links-at-end=$(links)\"\n";
  write_file_atomic(ns.w / "snaptap.sh", sh.str());
  std::vector<fs::path> files = ns.files();
  files.insert(files.end(), {"/usr/bin/ip", "/usr/sbin/nft"});
  std::string output =
      run_script(ns.w / "snaptap.sh", files, std::chrono::seconds(1500), {"unshare", "--net"});
  Cases cases(output);
  auto get = [&](const std::string& n) -> const Case& { return cases.get(n); };
  auto line_value = [&](const std::string& text, const std::string& key) {
    const size_t at = text.find(key + "=");
    if (at == std::string::npos) return std::string();
    const size_t end = text.find('\n', at);
    return text.substr(at + key.size() + 1,
                       end == std::string::npos ? end : end - at - key.size() - 1);
  };
  const Case& create = get("create");
  ASSERT_EQ(create.rc, 0) << create.out << create.err;
  auto made = nlohmann::json::parse(create.out, nullptr, false);
  ASSERT_TRUE(made.is_object()) << create.out;
  EXPECT_EQ(made.value("network", ""), "tap") << create.out;
  const std::string key = made.value("key", "");
  EXPECT_EQ(line_value(output, "links-after-create"), line_value(output, "links-before"))
      << "snapshot create made a device";
  const Case& served = get("served");
  EXPECT_TRUE(has(served.out, "body=served-by-tap-restore")) << served.out << served.err;
  EXPECT_EQ(run_summary(served).value("snapshot", ""), key) << served.err;
  EXPECT_TRUE(run_summary(served).value("restored", false)) << served.err;
  EXPECT_TRUE(run_summary(served).contains("tap")) << served.err;
  const Case& client = get("client");
  EXPECT_EQ(client.rc, 0) << client.out << client.err;
  EXPECT_TRUE(has(client.out, "ping-gateway-ok")) << client.out << client.err;
  EXPECT_TRUE(run_summary(client).value("restored", false)) << client.err;
  const std::string gw = line_value(client.out, "gw");
  EXPECT_EQ(gw, run_summary(client).value("tap", nlohmann::json::object()).value("host_ip", ""))
      << client.out << client.err;
  const std::string mac1 = line_value(served.out, "mac"), mac2 = line_value(client.out, "mac");
  EXPECT_TRUE(mac1.starts_with("52:54:00:")) << served.out;
  EXPECT_TRUE(mac2.starts_with("52:54:00:")) << client.out;
  EXPECT_NE(mac1, mac2) << "two VMs resumed from one snapshot with the same MAC";
  EXPECT_EQ(line_value(output, "links-at-end"), line_value(output, "links-before"))
      << "a run's tap device was left";
  if (HasFailure() || std::getenv("IMG2VM_TEST_SHOW_OUTPUT"))
    std::cerr << "--- the script's whole output ---\n" << output << "\n";
}
