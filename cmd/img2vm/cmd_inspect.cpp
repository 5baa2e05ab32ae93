// `img2vm inspect REF...`: VMs as docker inspect shows containers (a JSON array), or, for a
// REF that names no VM, a stored image's manifest and config as JSON.
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "commands.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/registry/image_source.hpp"
#include "img2vm/registry/store.hpp"
#include "vm_refs.hpp"

namespace img2vm::cli {

void register_inspect(CLI::App& app, Globals& g, Action* slot) {
  auto refs = std::make_shared<std::vector<std::string>>();
  auto* sub = app.add_subcommand(
      "inspect", "Show VMs, or a stored image's manifest and configuration, as JSON");
  add_global_flags(*sub);
  sub->add_option("ref", *refs, "VM names or ids, or an image reference (as pulled)")->required();
  sub->callback([&g, slot, refs] {
    *slot = [&g, refs] {
      runtime::VmStore vms;
      if (refs->size() > 1 || vms.find(refs->front())) {
        nlohmann::json out = nlohmann::json::array();
        int rc = for_each_vm(*refs, [&](const std::string& ref) {
          out.push_back(vm_inspect_json(vms, vms.get(ref)));
        });
        std::cout << (g.json ? out.dump() : out.dump(2)) << "\n";
        return rc;
      }
      registry::Store store;
      auto src = registry::open_image(store, refs->front());
      nlohmann::json j = {{"ref", src->name()},
                          {"digest", src->manifest_digest().str()},
                          {"platform", src->platform().str()},
                          {"manifest", nlohmann::json::parse(src->manifest_bytes())},
                          {"config", nlohmann::json::parse(src->config_bytes())}};
      if (auto d = src->index_digest()) j["index_digest"] = d->str();
      std::cout << (g.json ? j.dump() : j.dump(2)) << "\n";
      return kExitOk;
    };
  });
}

}  // namespace img2vm::cli
