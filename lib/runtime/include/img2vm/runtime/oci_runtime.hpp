// img2vm as an OCI runtime (issue #18): the runtime-spec operations that runc implements and
// podman's conmon and containerd's shim call (create, start, state, kill, delete), each
// container a microVM. A container is a detached VM (vms.hpp) in a VmStore of its own (runc's
// --root), named by its container id; its bundle's root directory and bind mounts are served
// through virtio-fs by the VM's monitor, and the guest init applies config.json's process.
//
// create boots the VM and stops before the workload's exec (the guest init waits for the
// agent's "start", BOOT_MARK 3); start lets it go. The process in --pid-file is the VM's
// monitor: its exit status is the workload's, which is what conmon and the shim wait for.
//
//   img2vm::runtime::OciRuntime rt(img2vm::runtime::OciRuntime::default_root());
//   img2vm::runtime::OciCreateOptions o;
//   o.id = "web";
//   o.bundle = "/run/bundles/web";
//   rt.create(o);
//   rt.start("web");
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "img2vm/base/fd.hpp"
#include "img2vm/runtime/kernel.hpp"
#include "img2vm/runtime/machine.hpp"
#include "img2vm/runtime/oci_bundle.hpp"
#include "img2vm/runtime/vms.hpp"

namespace img2vm::runtime {

// The runtime-spec version whose state and config img2vm-oci speaks.
inline constexpr const char* kOciRuntimeSpecVersion = "1.1.0";

// Annotations that choose the VM (config.json "annotations"; podman --annotation, containerd
// labels): the guest kernel (a path on the host), the guest's memory in MiB and its vCPUs.
inline constexpr const char* kAnnotationKernel = "org.img2vm.kernel";
inline constexpr const char* kAnnotationMemory = "org.img2vm.memory_mib";
inline constexpr const char* kAnnotationCpus = "org.img2vm.cpus";

// The annotations by which the CRI marks a pod's sandbox ("sandbox") and its other containers
// ("container"): containerd's and CRI-O's (podman sets CRI-O's "container" on the other
// containers of a pod, but nothing on its infra container).
inline constexpr const char* kAnnotationCriContainerType = "io.kubernetes.cri.container-type";
inline constexpr const char* kAnnotationCrioContainerType = "io.kubernetes.cri-o.ContainerType";

// Guest memory when config.json sets no memory limit, and the least a VM gets. The VM's host
// processes (img2vm-vmm, the monitor, one virtiofsd per shared directory) come on top.
inline constexpr uint64_t kOciDefaultMemoryMib = 256;
inline constexpr uint64_t kOciMinMemoryMib = 64;

struct OciCreateOptions {
  std::string id;                  // the container id: [a-zA-Z0-9][a-zA-Z0-9_.-]*, <= 128
  std::filesystem::path bundle;    // holds config.json
  std::filesystem::path pid_file;  // written with the monitor's pid (empty: none)
  // process.terminal: a unix socket (the engine listens there) that gets the pty's master
  // (send_console_master); its slave is the monitor's stdin, stdout and stderr.
  std::filesystem::path console_socket;
  // The monitor keeps this process's stdin, stdout and stderr and copies the VM's console to
  // its stdout (what conmon and the shim read); false: /dev/null, as run -d.
  bool inherit_stdio = true;
  // Each setting of config.json a VM does not honour, one line each (for --log).
  std::function<void(const std::string&)> warn;
  // img2vm-oci's global --kernel: the kernel when config.json's annotation names none.
  std::filesystem::path kernel;
};

// `exec`: a process (parse_oci_process) run in a running container's VM by the guest agent,
// with this process's stdin, stdout and stderr.
struct OciExecOptions {
  std::string id;
  OciBundle process;               // its process fields: args, env, cwd, uid, gid, terminal
  bool detach = false;             // a daemon runs it (see OciRuntime::exec)
  std::filesystem::path pid_file;  // detach: that daemon's pid
  // process.terminal (exec --tty): where the pty's master goes, as for create; the slave is the
  // exec's stdin, stdout and stderr and its window size is passed on.
  std::filesystem::path console_socket;
};

// The runtime-spec state of a container.
struct OciState {
  std::string id;
  std::string status;  // creating, created, running, stopped
  pid_t pid = 0;       // the monitor's, while it runs
  std::string bundle;
  std::map<std::string, std::string> annotations;
};
// {"ociVersion", "id", "status", "pid", "bundle", "annotations"} (runtime-spec state).
std::string to_json(const OciState& s);

// What `features` prints (runtime-spec features.md): the versions, the mount options and
// namespaces understood, and the annotations above.
std::string oci_features_json();

// The guest kernel of a container: the annotation org.img2vm.kernel, else `kernel_flag`
// (img2vm-oci --kernel), else $IMG2VM_KERNEL, else the cached build (GuestKernel::source:
// "annotation", "--kernel", "IMG2VM_KERNEL", "cache"). A named file that does not exist is
// Error(kNotFound) saying where it was named ("config.json: annotation org.img2vm.kernel: the
// kernel image P does not exist", "img2vm-oci --kernel: ...", "IMG2VM_KERNEL: ..."); no kernel
// at all is Error(kNotFound) saying how to give one.
GuestKernel oci_guest_kernel(const OciBundle& b, const std::filesystem::path& kernel_flag);

// A pod's sandbox ("infra", "pause") container, which only holds the pod's namespaces: marked
// so by the CRI annotations above ("sandbox"; "container" says it is not), else, as podman
// marks its infra container with neither, a process that does nothing but wait for a signal:
// podman's pause image's (`/catatonit -P`) or Kubernetes' (`/pause`), by the program's base
// name. OciRuntime::create runs it as a host process, not a VM.
bool is_pod_sandbox(const OciBundle& b);

// The MachineOptions for a bundle (the kernel, the root directory and process, mounts, with
// copies of the regular files bound (Mount::Type::kFile, read here: Error(kLimit) naming the
// mount past 1 MiB a file or 4 MiB in all), memory, vCPUs, the network: the engine's namespace
// joined, NetworkMode::kNetns), with what cannot be honoured passed to `warn`; process.terminal
// gives the workload the console as its tty and stdin (RunOverrides::tty, interactive). Throws
// Error naming the field at fault.
MachineOptions oci_machine_options(const OciBundle& b,
                                   const std::function<void(const std::string&)>& warn,
                                   const std::filesystem::path& kernel_flag = {});

// process.terminal's pty: the master for the engine, the slave (raw: the guest's tty does the
// line discipline) for the VM's monitor, which copies the console to it and its input to the
// console, and passes its window size on (the engine sets it on the master).
struct ConsolePty {
  UniqueFd master, slave;
  std::string name;  // the slave's path, /dev/pts/N
};
// Throws Error naming what failed.
ConsolePty open_console_pty();
// What runc does with --console-socket: connects to the unix socket `socket_path` and sends one
// message, the pty's name as its data and the master as its one descriptor (SCM_RIGHTS).
// Throws Error naming the socket.
void send_console_master(const std::filesystem::path& socket_path, const ConsolePty& pty);

class OciRuntime {
 public:
  // /run/img2vm-oci as root, else $XDG_RUNTIME_DIR/img2vm-oci (or /tmp/img2vm-oci-UID).
  static std::filesystem::path default_root();
  explicit OciRuntime(std::filesystem::path root);
  VmStore& store() { return store_; }

  // Boots the container's VM and returns once its workload waits for start. Throws Error:
  // kInvalidArgument "container with id exists: ID", config.json's errors, the VM's reason when
  // it could not start.
  //
  // A pod's sandbox (is_pod_sandbox) gets no VM: a host process stands in for its pause
  // program, in the network namespace config.json names (so that /proc/PID/ns/net, which the
  // engines give the pod's other containers, is the pod's), in a session of its own, reparented
  // to the nearest subreaper (conmon, the shim) as runc's container process is. It waits for a
  // signal: TERM, INT, HUP and KILL end it (its status is the signal's, 128+N for the engine);
  // its pid goes to --pid-file and its state, start, kill and delete are a container's. The
  // pod's namespace thus stays free for its first other container's VM, which takes the pod's
  // address; the ones after that find the interface taken and have loopback only (a warning).
  OciState create(const OciCreateOptions& o);
  // Lets a created container's workload exec. Error(kInvalidArgument) when it is not created.
  void start(const std::string& id);
  // Error(kNotFound) "container ID does not exist" for an unknown id.
  OciState state(const std::string& id) const;
  std::vector<OciState> list() const;
  // Any signal 1-64 to the workload (KILL ends the VM). Error(kInvalidArgument) when the
  // container is stopped.
  void kill(const std::string& id, int sig);
  // Removes a stopped container; a created or running one only with `force` (killed first).
  void remove(const std::string& id, bool force);
  // Without detach: runs the process and returns its exit status (128+N: signal N; 126 and 127
  // when it could not be started, its reason on stderr). With detach: a daemon of its own (a
  // double fork, so it is reparented to the nearest subreaper, conmon or the shim) runs it and
  // exits with its status; its pid goes to pid_file; returns 0 then. Error(kInvalidArgument)
  // when the container is not running. With process.terminal, the guest gives the process a
  // tty whose input and output are a pty's slave here, its master sent to o.console_socket
  // (Error(kInvalidArgument) without one); the slave's size is read every 100 ms and a change
  // passed on (ExecSession::resize).
  int exec(const OciExecOptions& o);
  // The host processes of a running container: the monitor, then the VMM.
  std::vector<pid_t> pids(const std::string& id) const;

 private:
  VmRecord get(const std::string& id) const;
  OciState create_pod_sandbox(const OciCreateOptions& o, const OciBundle& b);
  VmStore store_;
};

}  // namespace img2vm::runtime
