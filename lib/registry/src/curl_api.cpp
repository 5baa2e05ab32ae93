#include "curl_api.hpp"

#include "img2vm/base/error.hpp"
#include "img2vm/base/shared_library.hpp"

namespace img2vm::registry::curl {
namespace {

// Debian's libcurl4 (the OpenSSL flavour img2vm is built against, libcurl4-openssl-dev).
constexpr const char* kLibrary = "libcurl.so.4";

Api load() {
  const SharedLibrary lib(kLibrary, "needed to talk to registries (install libcurl4)");
  auto bind = [&lib](auto& slot, const char* name) {
    lib.bind(slot, name, " (libcurl older than 7.62?)");
  };
  Api a{};
  bind(a.global_init, "curl_global_init");
  bind(a.easy_init, "curl_easy_init");
  bind(a.easy_setopt, "curl_easy_setopt");
  bind(a.easy_perform, "curl_easy_perform");
  bind(a.easy_getinfo, "curl_easy_getinfo");
  bind(a.easy_reset, "curl_easy_reset");
  bind(a.easy_cleanup, "curl_easy_cleanup");
  bind(a.easy_strerror, "curl_easy_strerror");
  bind(a.share_init, "curl_share_init");
  bind(a.share_setopt, "curl_share_setopt");
  bind(a.share_cleanup, "curl_share_cleanup");
  bind(a.slist_append, "curl_slist_append");
  bind(a.slist_free_all, "curl_slist_free_all");
  bind(a.url, "curl_url");
  bind(a.url_dup, "curl_url_dup");
  bind(a.url_set, "curl_url_set");
  bind(a.url_get, "curl_url_get");
  bind(a.url_cleanup, "curl_url_cleanup");
  bind(a.free, "curl_free");
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
