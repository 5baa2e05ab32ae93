// `img2vm rm [-f] REF...`: remove VMs, as docker rm (a running one only with -f, which kills
// it); a REF that names no VM but a stored image removes the image, as img2vm rm did before VMs
// (its blobs stay until `prune`). `img2vm rmi` removes images only.
#include <iostream>

#include "cli.hpp"
#include "commands.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/registry/store.hpp"
#include "vm_refs.hpp"

namespace img2vm::cli {

namespace {

void remove_image(registry::Store& store, const std::string& r) {
  auto img = store.find(r);
  if (!img || !store.remove_image(img->name))
    throw Error(ErrorKind::kNotFound, "image " + r + " is not in the store");
  std::cout << "removed " << img->name << "\n";
}

}  // namespace

void register_rm(CLI::App& app, Globals& /*g*/, Action* slot) {
  auto refs = std::make_shared<std::vector<std::string>>();
  auto force = std::make_shared<bool>(false);
  auto* sub =
      app.add_subcommand("rm", "Remove VMs (-f: running ones too), or images no VM is named after");
  add_global_flags(*sub);
  sub->add_flag("-f,--force", *force, "Kill and remove running VMs; no error for missing ones");
  sub->add_option("ref", *refs, "VM names or ids, or image references")->required();
  sub->callback([slot, refs, force] {
    *slot = [refs, force] {
      runtime::VmStore vms;
      std::optional<registry::Store> images;
      return for_each_vm(*refs, [&](const std::string& ref) {
        if (auto r = vms.find(ref)) {
          vms.remove(r->id, *force);
          std::cout << ref << "\n";
          return;
        }
        if (!images) images.emplace();
        if (images->find(ref)) return remove_image(*images, ref);
        if (!*force)
          throw Error(ErrorKind::kNotFound,
                      "No such VM: " + ref + ", and image " + ref + " is not in the store");
      });
    };
  });
}

void register_rmi(CLI::App& app, Globals& /*g*/, Action* slot) {
  auto refs = std::make_shared<std::vector<std::string>>();
  auto* sub = app.add_subcommand(
      "rmi", "Remove images from the local store (run prune to free their blobs)");
  add_global_flags(*sub);
  sub->add_option("ref", *refs, "Image references")->required();
  sub->callback([slot, refs] {
    *slot = [refs] {
      registry::Store store;
      for (const auto& r : *refs) remove_image(store, r);
      return kExitOk;
    };
  });
}

}  // namespace img2vm::cli
