#include "http.hpp"

#include <curl/curl.h>

#include <cctype>
#include <mutex>
#include <nlohmann/json.hpp>

#include "img2vm/base/ascii.hpp"

namespace img2vm::testing {

namespace {

size_t on_body(char* p, size_t size, size_t n, void* ud) {
  static_cast<std::string*>(ud)->append(p, size * n);
  return size * n;
}

size_t on_header(char* p, size_t size, size_t n, void* ud) {
  std::string line(p, size * n);
  auto colon = line.find(':');
  if (colon != std::string::npos) {
    std::string k = ascii_lower(line.substr(0, colon));
    std::string v = line.substr(colon + 1);
    v.erase(0, v.find_first_not_of(" \t"));
    while (!v.empty() && (v.back() == '\r' || v.back() == '\n')) v.pop_back();
    (*static_cast<std::map<std::string, std::string>*>(ud))[k] = v;
  }
  return size * n;
}

std::string escape(const std::string& s) {
  std::string out;
  static const char kHex[] = "0123456789ABCDEF";
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

}  // namespace

HttpResponse http_request(const std::string& method, const std::string& url,
                          const HttpOptions& opts) {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  HttpResponse r;
  CURL* c = curl_easy_init();
  curl_slist* hdrs = nullptr;
  for (const auto& h : opts.headers) hdrs = curl_slist_append(hdrs, h.c_str());
  if (!opts.bearer.empty())
    hdrs = curl_slist_append(hdrs, ("Authorization: Bearer " + opts.bearer).c_str());
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method.c_str());
  if (method == "HEAD") curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
  if (!opts.body.empty() || method == "POST" || method == "PUT") {
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, opts.body.data());
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, static_cast<long>(opts.body.size()));
  }
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &r.body);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &r.headers);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, opts.timeout_ms);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
  if (!opts.ca_file.empty()) curl_easy_setopt(c, CURLOPT_CAINFO, opts.ca_file.c_str());
  if (!opts.basic_user.empty()) {
    curl_easy_setopt(c, CURLOPT_HTTPAUTH, CURLAUTH_BASIC);
    curl_easy_setopt(c, CURLOPT_USERNAME, opts.basic_user.c_str());
    curl_easy_setopt(c, CURLOPT_PASSWORD, opts.basic_password.c_str());
  }
  CURLcode rc = curl_easy_perform(c);
  if (rc == CURLE_OK) {
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
  } else {
    r.error = curl_easy_strerror(rc);
  }
  curl_slist_free_all(hdrs);
  curl_easy_cleanup(c);
  return r;
}

Challenge parse_challenge(const std::string& v) {
  Challenge ch;
  size_t sp = v.find(' ');
  ch.scheme = ascii_lower(v.substr(0, sp));
  size_t i = sp == std::string::npos ? v.size() : sp + 1;
  while (i < v.size()) {
    while (i < v.size() && (v[i] == ' ' || v[i] == ',')) ++i;
    size_t eq = v.find('=', i);
    if (eq == std::string::npos) break;
    std::string key = v.substr(i, eq - i);
    std::string val;
    i = eq + 1;
    if (i < v.size() && v[i] == '"') {
      ++i;
      while (i < v.size() && v[i] != '"') {
        if (v[i] == '\\' && i + 1 < v.size()) ++i;
        val += v[i++];
      }
      ++i;
    } else {
      size_t end = v.find(',', i);
      if (end == std::string::npos) end = v.size();
      val = v.substr(i, end - i);
      i = end;
    }
    ch.params[key] = val;
  }
  return ch;
}

HttpResponse get_manifest(const std::string& base_url, const std::string& repo,
                          const std::string& reference, const std::string& user,
                          const std::string& password, const std::string& ca_file) {
  HttpOptions o;
  o.ca_file = ca_file;
  o.headers = {
      "Accept: application/vnd.oci.image.manifest.v1+json, "
      "application/vnd.oci.image.index.v1+json, "
      "application/vnd.docker.distribution.manifest.v2+json, "
      "application/vnd.docker.distribution.manifest.list.v2+json"};
  std::string url = base_url + "/v2/" + repo + "/manifests/" + reference;
  HttpResponse r = http_request("GET", url, o);
  if (r.status != 401 || !r.headers.count("www-authenticate")) return r;
  Challenge ch = parse_challenge(r.headers["www-authenticate"]);
  if (ch.scheme == "basic") {
    o.basic_user = user;
    o.basic_password = password;
    return http_request("GET", url, o);
  }
  if (ch.scheme != "bearer") return r;
  std::string token_url = ch.params["realm"] + "?service=" + escape(ch.params["service"]);
  if (ch.params.count("scope")) token_url += "&scope=" + escape(ch.params["scope"]);
  HttpOptions t;
  t.ca_file = ca_file;
  t.basic_user = user;
  t.basic_password = password;
  HttpResponse tr = http_request("GET", token_url, t);
  if (tr.status != 200) return tr;
  auto j = nlohmann::json::parse(tr.body, nullptr, false);
  if (j.is_discarded()) return tr;
  o.bearer = j.contains("token") ? j["token"].get<std::string>() : j.value("access_token", "");
  return http_request("GET", url, o);
}

}  // namespace img2vm::testing
