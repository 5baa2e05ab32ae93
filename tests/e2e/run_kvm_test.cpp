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

#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <nlohmann/json.hpp>
#include <sstream>

#include "image_builder.hpp"
#include "img2vm/base/fd.hpp"
#include "nested_rig.hpp"
#include "process.hpp"

using namespace img2vm;
using namespace img2vm::testing;
namespace fs = std::filesystem;

namespace {

std::optional<fs::path> find_kernel() {
  if (const char* k = std::getenv("IMG2VM_KERNEL"); k && *k) return fs::path(k);
  const char* home = std::getenv("HOME");
  if (!home) return std::nullopt;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(fs::path(home) / ".cache/img2vm/kernel", ec))
    if (fs::exists(e.path() / "vmlinux") && fs::exists(e.path() / ".complete")) return e.path() / "vmlinux";
  return std::nullopt;
}

std::string file_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

constexpr const char* kApplets[] = {"sh", "echo", "id", "cat", "sleep", "pwd", "env", "test", "true", "false",
                                    "grep", "head", "mkdir", "mount", "ls"};

// busybox-static with a few applets, users and groups; CMD prints a line.
ImageSpec busybox_image() {
  std::vector<Entry> e = {dir("bin"), dir("etc"), dir("tmp", 01777), dir("root", 0700),
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
  std::vector<Entry> e = {dir("etc"), file("etc/debian_version", file_bytes("/etc/debian_version"))};
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
  for (const auto& f : files) e.push_back(file(fs::path(f).relative_path().string(), file_bytes(fs::canonical(f)), 0755));
  ImageSpec s;
  s.layers.push_back(layer(e, LayerCompression::kZstd));
  s.config.cmd = {"/bin/bash", "-c", "echo \"debian $(</etc/debian_version) bash ${BASH_VERSINFO[0]}\""};
  return s;
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

// A workload that ignores SIGTERM, run in the background and sent Ctrl-C (SIGINT) once it is
// ready; `twice`: a second SIGINT two seconds later.
std::string stop_case(const std::string& name, const std::string& cmd, bool twice) {
  return "echo '@@BEGIN " + name + "@@'\n" + cmd +
         " sh -c 'trap \"\" TERM; echo ready; while :; do sleep 1; done' >\"$W/out\" 2>\"$W/err\" </dev/null &\n"
         "pid=$!; i=0; while ! grep -q ready \"$W/out\" && [ $i -lt 120 ]; do sleep 1; i=$((i+1)); done\n"
         "kill -INT $pid; " + std::string(twice ? "sleep 2; kill -INT $pid; " : "") + "wait $pid; rc=$?\n"
         "cat \"$W/out\"; echo; echo @@STDERR@@; cat \"$W/err\"; echo; echo \"@@END " + name + " $rc@@\"\n";
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
  write_file_atomic(w / "env.list", "# comment\nFROM_FILE=file value\n");
  fs::copy_file(*kernel, w / "vmlinux");

  // Convert here (fast) into the rootfs cache that the runs in L1 then find.
  std::map<std::string, std::string> env = {{"IMG2VM_HOME", home.string()}, {"IMG2VM_INIT", IMG2VM_INIT_BINARY}};
  for (const char* img : {"busybox", "debian"}) {
    auto c = run_command({bin, "convert", "oci:" + (w / img).string()}, {.input = {}, .env = env, .cwd = {}, .timeout = std::chrono::minutes(5)});
    ASSERT_EQ(c.exit_code, 0) << c.describe();
  }

  std::string B = "oci:" + (w / "busybox").string(), D = "oci:" + (w / "debian").string();
  std::string run = quote(bin) + " run --kernel " + quote((w / "vmlinux").string());
  std::string big(3000, 'x');
  std::ostringstream sh;
  sh << "export IMG2VM_HOME=" << quote(home.string()) << " IMG2VM_INIT=" << quote(IMG2VM_INIT_BINARY) << "\n"
     << "W=" << quote(w.string()) << "\n"
     << "c() { name=$1; shift; echo \"@@BEGIN $name@@\"; \"$@\" >\"$W/out\" 2>\"$W/err\" </dev/null; rc=$?;\n"
     << "  cat \"$W/out\"; echo; echo @@STDERR@@; cat \"$W/err\"; echo; echo \"@@END $name $rc@@\"; }\n"
     << "c cache-before sh -c 'sha256sum \"$IMG2VM_HOME\"/rootfs/*.ext4'\n"
     << "c default " << run << " --json --timings " << B << "\n"
     << "c exit3 " << run << " " << B << " sh -c 'exit 3'\n"
     << "c debian " << run << " " << D << "\n"
     << "c user-workdir " << run << " -u 1234:5678 -w /some/new/dir " << B << " sh -c 'id -u; id -g; pwd'\n"
     << "c named-user " << run << " -u app " << B << " id\n"
     << "c env " << run << " -e 'A=x y=z' -e BASE=2 --env-file \"$W/env.list\" " << B
     << " sh -c 'echo \"[$A][$BASE][$FROM_FILE]\"'\n"
     << "c big-env " << run << " -e BIG=" << big << " " << B << " sh -c 'echo ${#BIG}'\n"
     << "c entrypoint " << run << " --entrypoint /bin/echo " << B << " one two\n"
     << "c missing " << run << " " << B << " nosuchcmd\n"
     << "c init-fail " << run << " -u nosuchuser " << B << " true\n"
     << "c write " << run << " " << B << " sh -c 'echo written > /marker && cat /marker'\n"
     << "c not-kept " << run << " " << B << " test -e /marker\n"
     << "c keep " << run << " --keep \"$W/kept.ext4\" " << B << " sh -c 'echo kept-data > /kept'\n"
     << "c extra-disk " << run << " --disk \"$W/kept.ext4:ro\" " << B
     << " sh -c 'mkdir -p /mnt && mount -o ro /dev/vdb /mnt && cat /mnt/kept'\n"
     << "c cpus " << run << " --cpus 2 " << B << " sh -c 'grep -c ^processor /proc/cpuinfo'\n"
     << "c timeout " << run << " --timeout 40s " << B << " sh -c 'echo started; sleep 1000'\n"
     << "echo '@@BEGIN stdin@@'; echo piped-line | " << run << " -i " << B
     << " head -n1 >\"$W/out\" 2>\"$W/err\"; rc=$?; cat \"$W/out\"; echo; echo @@STDERR@@; cat \"$W/err\"; echo;"
     << " echo \"@@END stdin $rc@@\"\n"
     << "echo '@@BEGIN sigterm@@'\n"
     << run << " " << B
     << " sh -c 'trap \"echo got-term; exit 7\" TERM; echo ready; while :; do sleep 1; done' >\"$W/out\" 2>\"$W/err\" "
        "</dev/null &\n"
     << "pid=$!; i=0; while ! grep -q ready \"$W/out\" && [ $i -lt 120 ]; do sleep 1; i=$((i+1)); done\n"
     << "kill -INT $pid; wait $pid; rc=$?\n"
     << "cat \"$W/out\"; echo; echo @@STDERR@@; cat \"$W/err\"; echo; echo \"@@END sigterm $rc@@\"\n"
     // Orphans the workload leaves are reaped by the init: no zombies.
     << "c orphans " << run << " " << B
     << " sh -c '(sleep 0.2 &); (sleep 0.2 &); sleep 2; z=$(grep -l \"^State:.*Z\" /proc/[0-9]*/status 2>/dev/null"
        " | wc -l); echo zombies=$z'\n"
     // A workload that ignores SIGTERM: the stop timeout, then a second Ctrl-C, stop the VM (130).
     << stop_case("stop-timeout", run + " --stop-timeout 3s " + B, false)
     << stop_case("second-int", run + " --stop-timeout 10m " + B, true)
     // -t under a pseudo-terminal (script(1)): the workload has a tty, and the host terminal's
     // settings are what they were before, after img2vm leaves raw mode.
     << "printf '%s\\n' 'before=$(stty -g)' " << quote(run + " -t " + B + " sh -c 'test -t 0 && test -t 1 && echo tty-yes; exit 5'")
     << " 'rc=$?; [ \"$before\" = \"$(stty -g)\" ] && echo tty-restored; exit $rc' > \"$W/tty.sh\"\n"
     << "c tty script -qec \"sh $W/tty.sh\" /dev/null\n"
     << "c cache-after sh -c 'sha256sum \"$IMG2VM_HOME\"/rootfs/*.ext4'\n";
  write_file_atomic(w / "cases.sh", sh.str());

  std::string output;
  if (kvm_route(false) == KvmRoute::kDirect) {
    auto r = run_command({"sh", (w / "cases.sh").string()}, {.input = {}, .env = {}, .cwd = {}, .timeout = std::chrono::minutes(15)});
    output = r.out;
  } else {
    auto r = run_nested({"sh", (w / "cases.sh").string()}, {bin, IMG2VM_INIT_BINARY, w, "/usr/bin/script"},
                        std::chrono::seconds(1500));
    ASSERT_EQ(r.exit_code, 0) << r.describe();
    output = r.output;
  }
  auto cases = parse_cases(output);
  auto get = [&](const std::string& n) -> const Case& {
    static const Case none;
    auto it = cases.find(n);
    if (it == cases.end()) {
      ADD_FAILURE() << "case " << n << " did not report; output:\n" << output;
      return none;
    }
    return it->second;
  };
  auto has = [](const std::string& hay, const std::string& needle) { return hay.find(needle) != std::string::npos; };

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
  const Case& deb = get("debian");
  EXPECT_EQ(deb.rc, 0) << deb.err;
  std::string version = file_bytes("/etc/debian_version");
  while (!version.empty() && version.back() == '\n') version.pop_back();
  EXPECT_TRUE(has(deb.out, "debian " + version + " bash 5")) << deb.out;
  EXPECT_TRUE(has(get("user-workdir").out, "1234\n5678\n/some/new/dir")) << get("user-workdir").out;
  EXPECT_TRUE(has(get("named-user").out, "uid=1000(app) gid=1000(app)")) << get("named-user").out;
  EXPECT_TRUE(has(get("env").out, "[x y=z][2][file value]")) << get("env").out;
  EXPECT_TRUE(has(get("big-env").out, "3000")) << get("big-env").out << get("big-env").err;
  EXPECT_TRUE(has(get("entrypoint").out, "one two")) << get("entrypoint").out;
  const Case& missing = get("missing");
  EXPECT_EQ(missing.rc, 127);
  EXPECT_TRUE(has(missing.out, "exec: \"nosuchcmd\": executable file not found in $PATH")) << missing.out;
  const Case& initfail = get("init-fail");
  EXPECT_EQ(initfail.rc, 122) << initfail.out << initfail.err;
  EXPECT_TRUE(has(initfail.out, "unable to find user nosuchuser")) << initfail.out;
  EXPECT_TRUE(has(initfail.err, "init")) << initfail.err;
  EXPECT_TRUE(has(get("write").out, "written")) << get("write").out;
  EXPECT_EQ(get("write").rc, 0);
  EXPECT_EQ(get("not-kept").rc, 1) << "a write in one run is visible in the next";
  EXPECT_EQ(get("keep").rc, 0) << get("keep").err;
  EXPECT_TRUE(has(get("extra-disk").out, "kept-data")) << get("extra-disk").out << get("extra-disk").err;
  EXPECT_EQ(get("cpus").out.substr(0, 2), "2\n") << get("cpus").out;
  EXPECT_EQ(get("cpus").rc, 0);
  const Case& to = get("timeout");
  EXPECT_EQ(to.rc, 124) << to.err;
  EXPECT_TRUE(has(to.out, "started")) << to.out;
  EXPECT_TRUE(has(get("stdin").out, "piped-line")) << get("stdin").out << get("stdin").err;
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
  // The cached rootfs every run booted is byte for byte what convert wrote.
  EXPECT_FALSE(get("cache-before").out.empty());
  EXPECT_EQ(get("cache-before").out, get("cache-after").out);
}
