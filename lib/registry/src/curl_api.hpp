#pragma once
// libcurl, loaded when the first transfer or URL needs it rather than when a program starts.
// Debian's libcurl brings about twenty libraries (GnuTLS, Kerberos, LDAP, libssh2, librtmp, ...)
// whose loading and constructors cost every img2vm command about 16 ms, most of which never talk
// to a registry (convert and run of a stored image, images, rm). The calls below have curl's own
// signatures; api() opens libcurl.so.4 once (thread-safe) and throws an Error saying what is
// missing when it cannot.
#include <curl/curl.h>

#include <type_traits>

namespace img2vm::registry::curl {

struct Api {
  decltype(&::curl_global_init) global_init;
  decltype(&::curl_easy_init) easy_init;
  decltype(&::curl_easy_setopt) easy_setopt;
  decltype(&::curl_easy_perform) easy_perform;
  decltype(&::curl_easy_getinfo) easy_getinfo;
  decltype(&::curl_easy_reset) easy_reset;
  decltype(&::curl_easy_cleanup) easy_cleanup;
  decltype(&::curl_easy_strerror) easy_strerror;
  decltype(&::curl_share_init) share_init;
  decltype(&::curl_share_setopt) share_setopt;
  decltype(&::curl_share_cleanup) share_cleanup;
  decltype(&::curl_slist_append) slist_append;
  decltype(&::curl_slist_free_all) slist_free_all;
  decltype(&::curl_url) url;
  decltype(&::curl_url_dup) url_dup;
  decltype(&::curl_url_set) url_set;
  decltype(&::curl_url_get) url_get;
  decltype(&::curl_url_cleanup) url_cleanup;
  decltype(&::curl_free) free;
};

// The loaded library's entry points; the first call loads it (and runs curl_global_init).
const Api& api();

// curl_easy_setopt without gcc's type-checking macro: the value must be what curl reads for
// any option, a long, a curl_off_t or a pointer (an int or a bool would be read as garbage).
template <typename T>
CURLcode easy_setopt(CURL* h, CURLoption option, T value) {
  static_assert(std::is_same_v<T, long> || std::is_same_v<T, curl_off_t> || std::is_pointer_v<T> ||
                    std::is_null_pointer_v<T>,
                "curl options take a long, a curl_off_t or a pointer");
  return api().easy_setopt(h, option, value);
}

}  // namespace img2vm::registry::curl
