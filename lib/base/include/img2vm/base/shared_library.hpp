// A shared library opened when a program first needs it rather than when it starts (libcurl for
// registries, libnftables for tap networks): what most commands never call costs them nothing.
#pragma once

#include <string>

namespace img2vm {

// An opened library (dlopen, RTLD_NOW | RTLD_LOCAL), never closed: the libraries opened this way
// keep global state for the process's life.
class SharedLibrary {
 public:
  // Opens `soname`; throws Error(kUnsupported) "cannot load SONAME, NEEDED_FOR: why" (say what
  // for and which package has it, e.g. "needed to talk to registries (install libcurl4)").
  SharedLibrary(const char* soname, const std::string& needed_for);

  // Sets `slot` to the function `name` (declare the slot with the function's own type,
  // decltype(&::name)); throws Error(kUnsupported) "SONAME has no NAME" + `hint`.
  template <typename F>
  void bind(F& slot, const char* name, const std::string& hint = {}) const {
    slot = reinterpret_cast<F>(symbol(name, hint));
  }

 private:
  void* symbol(const char* name, const std::string& hint) const;
  const char* soname_;
  void* handle_;
};

}  // namespace img2vm
