// `img2vm-oci delete [--force] ID`: removes a stopped (or created) container; --force kills a
// running one first, and an unknown id is not an error with it.
#include "img2vm/base/error.hpp"
#include "oci_cli.hpp"

namespace img2vm::oci_cli {

void register_delete(CLI::App& app, Globals& g, Action* slot) {
  struct Opts {
    std::string id;
    bool force = false;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("delete", "Remove a container");
  sub->add_flag("-f,--force", o->force, "Kill a running container first; no error when gone");
  sub->add_option("id", o->id, "The container id")->required();
  sub->callback([slot, o, &g] {
    *slot = [o, &g] {
      try {
        g.runtime().remove(o->id, o->force);
      } catch (const Error& e) {
        if (!(o->force && e.kind() == ErrorKind::kNotFound)) throw;
      }
      return 0;
    };
  });
}

}  // namespace img2vm::oci_cli
