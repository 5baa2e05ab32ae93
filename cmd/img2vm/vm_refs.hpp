// Shared by the VM commands (ps, logs, stop, kill, wait, rm, inspect): docker's status words
// and the loop over VM references that reports each failure and goes on.
#pragma once

#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/runtime/vms.hpp"

namespace img2vm::cli {

// "3 seconds" since an RFC 3339 time ("" when unknown).
std::string vm_elapsed(const std::string& rfc3339);
// docker ps's STATUS: "Created", "Up 3 seconds", "Exited (0) 5 seconds ago".
std::string vm_status_text(const runtime::VmRecord& r);
// docker inspect's form of a VM.
nlohmann::json vm_inspect_json(const runtime::VmStore& store, const runtime::VmRecord& r);

// Runs `each` on every reference; a failure is one line on stderr and the rest still run, as
// docker does. Returns kExitOk, or kExitError when any failed.
inline int for_each_vm(const std::vector<std::string>& refs,
                       const std::function<void(const std::string&)>& each) {
  int rc = kExitOk;
  for (const auto& ref : refs) {
    try {
      each(ref);
    } catch (const Error& e) {
      std::cerr << "img2vm: " << e.what() << "\n";
      rc = kExitError;
    }
  }
  return rc;
}

}  // namespace img2vm::cli
