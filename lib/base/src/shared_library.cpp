#include "img2vm/base/shared_library.hpp"

#include <dlfcn.h>

#include "img2vm/base/error.hpp"

namespace img2vm {

SharedLibrary::SharedLibrary(const char* soname, const std::string& needed_for)
    : soname_(soname), handle_(::dlopen(soname, RTLD_NOW | RTLD_LOCAL)) {
  if (!handle_) {
    const char* why = ::dlerror();
    throw Error(ErrorKind::kUnsupported, std::string("cannot load ") + soname + ", " + needed_for +
                                             ": " + (why ? why : "unknown error"));
  }
}

void* SharedLibrary::symbol(const char* name, const std::string& hint) const {
  void* sym = ::dlsym(handle_, name);
  if (!sym) throw Error(ErrorKind::kUnsupported, std::string(soname_) + " has no " + name + hint);
  return sym;
}

}  // namespace img2vm
