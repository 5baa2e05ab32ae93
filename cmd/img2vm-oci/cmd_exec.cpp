// `img2vm-oci exec [--process FILE] [--detach] [--pid-file F] ID [ARG...]`: a process in a
// running container's VM, through the guest's agent; exits with its status (or 0 once a
// detached one runs: its --pid-file process exits with the status).
#include <charconv>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "oci_cli.hpp"

namespace img2vm::oci_cli {

namespace {

// A uid or gid of --user; throws naming the option's value.
uint32_t id_number(const std::string& s, const std::string& user) {
  uint32_t n = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size())
    throw Error(ErrorKind::kInvalidArgument, "--user " + user + ": not UID[:GID]");
  return n;
}

}  // namespace

void register_exec(CLI::App& app, Globals& g, Action* slot) {
  struct Opts {
    std::string id, process, pid_file, console_socket, cwd, user;
    std::vector<std::string> args, env;
    bool detach = false, tty = false;
    int preserve_fds = 0;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("exec", "Run a process in a running container");
  sub->add_option("-p,--process", o->process, "A runtime-spec process JSON file");
  sub->add_flag("-d,--detach", o->detach, "Run it in the background");
  sub->add_option("--pid-file", o->pid_file,
                  "Write the pid of the process whose exit status is the exec's");
  sub->add_flag("-t,--tty", o->tty, "A terminal (its master goes to --console-socket)");
  sub->add_option("--console-socket", o->console_socket,
                  "A unix socket for the terminal's master (--tty, process.terminal)");
  sub->add_option("--cwd", o->cwd, "The working directory (without --process)");
  sub->add_option("-e,--env", o->env, "KEY=VALUE (without --process)");
  sub->add_option("-u,--user", o->user, "UID[:GID] (without --process)");
  sub->add_option("--preserve-fds", o->preserve_fds, "Accepted (runc's); not passed to the VM");
  sub->add_option("id", o->id, "The container id")->required();
  sub->add_option("args", o->args, "The command (without --process)");
  sub->callback([slot, o, &g] {
    *slot = [o, &g] {
      runtime::OciExecOptions e;
      e.id = o->id;
      e.detach = o->detach;
      e.pid_file = o->pid_file;
      e.console_socket = o->console_socket;
      if (!o->process.empty()) {
        if (!o->args.empty())
          throw Error(ErrorKind::kInvalidArgument,
                      "give the command in --process or as arguments, not both");
        e.process = runtime::parse_oci_process(
            read_file(o->process, runtime::OciBundle::kMaxConfigBytes + 1));
      } else {
        if (o->args.empty())
          throw Error(ErrorKind::kInvalidArgument, "no command: give --process FILE or ARGS");
        e.process.args = o->args;
        e.process.env = o->env;
        e.process.cwd = o->cwd.empty() ? "/" : o->cwd;
        if (!o->user.empty()) {
          const size_t colon = o->user.find(':');
          e.process.uid = id_number(o->user.substr(0, colon), o->user);
          if (colon != std::string::npos)
            e.process.gid = id_number(o->user.substr(colon + 1), o->user);
        }
      }
      if (o->tty) e.process.terminal = true;
      return g.runtime().exec(e);
    };
  });
}

}  // namespace img2vm::oci_cli
