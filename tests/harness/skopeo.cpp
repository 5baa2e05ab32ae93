#include "skopeo.hpp"

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"

namespace img2vm::testing {

std::vector<std::string> skopeo_registry_args(const Registry& reg, const std::string& side) {
  std::vector<std::string> a;
  if (reg.tls()) {
    a.push_back("--" + side + "-cert-dir=" + reg.cert_dir().string());
  } else {
    a.push_back("--" + side + "-tls-verify=false");
  }
  if (reg.options().auth != RegistryAuth::kNone)
    a.push_back("--" + side + "-creds=" + reg.username() + ":" + reg.password());
  return a;
}

namespace {
CommandResult skopeo(std::vector<std::string> args) {
  args.insert(args.begin(), {"skopeo", "--insecure-policy"});
  // Keep skopeo away from a developer's own auth files and registries.conf.
  static TempDir auth_dir("skopeo-auth");
  static const std::string auth_file = [] {
    auto p = auth_dir.path() / "auth.json";
    write_file_atomic(p, R"({"auths":{}})");
    return p.string();
  }();
  RunOptions o;
  o.env["REGISTRY_AUTH_FILE"] = auth_file;
  o.timeout = std::chrono::minutes(3);
  return run_command(args, o);
}
}  // namespace

void skopeo_push(const std::string& src, const Registry& reg, const std::string& dest_ref,
                 const std::vector<std::string>& extra) {
  std::vector<std::string> args = {"copy", "--retry-times=2"};
  args.insert(args.end(), extra.begin(), extra.end());
  for (auto& a : skopeo_registry_args(reg, "dest")) args.push_back(a);
  args.push_back(src);
  args.push_back("docker://" + reg.host() + "/" + dest_ref);
  CommandResult r = skopeo(args);
  if (r.exit_code != 0)
    throw Error(ErrorKind::kIo, "skopeo copy " + src + " -> " + reg.host() + "/" + dest_ref +
                                    " failed: " + r.describe());
}

void skopeo_copy(const std::string& src, const std::string& dest) {
  CommandResult r = skopeo({"copy", src, dest});
  if (r.exit_code != 0)
    throw Error(ErrorKind::kIo, "skopeo copy " + src + " -> " + dest + " failed: " + r.describe());
}

std::string skopeo_inspect_raw(const Registry& reg, const std::string& ref) {
  std::vector<std::string> args = {"inspect", "--raw"};
  for (auto& a : skopeo_registry_args(reg, "src")) {
    // inspect takes the unprefixed flag names.
    auto pos = a.find("--src-");
    args.push_back(pos == 0 ? "--" + a.substr(6) : a);
  }
  args.push_back("docker://" + reg.host() + "/" + ref);
  CommandResult r = skopeo(args);
  if (r.exit_code != 0)
    throw Error(ErrorKind::kIo, "skopeo inspect " + ref + " failed: " + r.describe());
  return r.out;
}

}  // namespace img2vm::testing
