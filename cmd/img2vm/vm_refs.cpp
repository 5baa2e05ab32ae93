#include "vm_refs.hpp"

#include <ctime>

namespace img2vm::cli {

std::string vm_elapsed(const std::string& rfc3339) {
  std::tm tm{};
  if (rfc3339.empty() || !strptime(rfc3339.c_str(), "%Y-%m-%dT%H:%M:%S", &tm)) return "";
  long d = static_cast<long>(std::time(nullptr) - timegm(&tm));
  if (d < 1) return "Less than a second";
  auto fmt = [](long n, const char* unit) {
    return std::to_string(n) + " " + unit + (n == 1 ? "" : "s");
  };
  if (d < 60) return fmt(d, "second");
  if (d < 3600) return fmt(d / 60, "minute");
  if (d < 86400) return fmt(d / 3600, "hour");
  return fmt(d / 86400, "day");
}

std::string vm_status_text(const runtime::VmRecord& r) {
  switch (r.status) {
    case runtime::VmStatus::kCreated:
      return "Created";
    case runtime::VmStatus::kRunning:
      return "Up " + vm_elapsed(r.started.empty() ? r.created : r.started);
    case runtime::VmStatus::kExited:
      break;
  }
  std::string ago = vm_elapsed(r.finished);
  return "Exited (" + std::to_string(r.exit_code.value_or(255)) + ")" +
         (ago.empty() ? "" : " " + ago + " ago");
}

nlohmann::json vm_inspect_json(const runtime::VmStore& store, const runtime::VmRecord& r) {
  const auto dir = store.vm_dir(r.id);
  return {{"Id", r.id},
          {"Name", "/" + r.name},
          {"Created", r.created},
          {"Path", r.command.empty() ? "" : r.command[0]},
          {"Args", r.command.size() > 1
                       ? std::vector<std::string>(r.command.begin() + 1, r.command.end())
                       : std::vector<std::string>()},
          {"Image", r.image},
          {"State",
           {{"Status", runtime::to_string(r.status)},
            {"Running", r.status == runtime::VmStatus::kRunning},
            {"Pid", r.vmm.pid},
            {"MonitorPid", r.monitor.pid},
            {"ExitCode", r.exit_code.value_or(0)},
            {"Error", r.error},
            {"ExitReason", r.exit_reason},
            {"StartedAt", r.started},
            {"FinishedAt", r.finished}}},
          {"LogPath", (dir / "console.log").string()},
          {"SpecPath", (dir / "spec.json").string()},
          {"VsockSocket", r.vsock_socket},
          {"HostConfig",
           {{"AutoRemove", r.auto_remove}, {"StopTimeout", r.stop_timeout.count() / 1000}}}};
}

}  // namespace img2vm::cli
