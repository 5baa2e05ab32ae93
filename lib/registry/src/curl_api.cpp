#include "curl_api.hpp"

#include <dlfcn.h>

#include <string>

#include "img2vm/base/error.hpp"

namespace img2vm::registry::curl {
namespace {

// Debian's libcurl4 (the OpenSSL flavour img2vm is built against, libcurl4-openssl-dev).
constexpr const char* kLibrary = "libcurl.so.4";

template <typename F>
void bind(void* lib, F& slot, const char* name) {
  void* sym = ::dlsym(lib, name);
  if (!sym)
    throw Error(ErrorKind::kUnsupported,
                std::string(kLibrary) + " has no " + name + " (libcurl older than 7.62?)");
  slot = reinterpret_cast<F>(sym);
}

Api load() {
  // Never closed: libcurl keeps global state (TLS, its thread for DNS) for the process's life.
  void* lib = ::dlopen(kLibrary, RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    const char* why = ::dlerror();
    throw Error(ErrorKind::kUnsupported, std::string("cannot load ") + kLibrary +
                                             ", needed to talk to registries (install libcurl4): " +
                                             (why ? why : "unknown error"));
  }
  Api a{};
  bind(lib, a.global_init, "curl_global_init");
  bind(lib, a.easy_init, "curl_easy_init");
  bind(lib, a.easy_setopt, "curl_easy_setopt");
  bind(lib, a.easy_perform, "curl_easy_perform");
  bind(lib, a.easy_getinfo, "curl_easy_getinfo");
  bind(lib, a.easy_reset, "curl_easy_reset");
  bind(lib, a.easy_cleanup, "curl_easy_cleanup");
  bind(lib, a.easy_strerror, "curl_easy_strerror");
  bind(lib, a.share_init, "curl_share_init");
  bind(lib, a.share_setopt, "curl_share_setopt");
  bind(lib, a.share_cleanup, "curl_share_cleanup");
  bind(lib, a.slist_append, "curl_slist_append");
  bind(lib, a.slist_free_all, "curl_slist_free_all");
  bind(lib, a.url, "curl_url");
  bind(lib, a.url_dup, "curl_url_dup");
  bind(lib, a.url_set, "curl_url_set");
  bind(lib, a.url_get, "curl_url_get");
  bind(lib, a.url_cleanup, "curl_url_cleanup");
  bind(lib, a.free, "curl_free");
  if (a.global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
    throw Error(ErrorKind::kInternal, "curl_global_init failed");
  return a;
}

}  // namespace

const Api& api() {
  static const Api a = load();
  return a;
}

}  // namespace img2vm::registry::curl
