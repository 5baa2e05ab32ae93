#include "img2vm/rootfs/runtime_config.hpp"

#include <nlohmann/json.hpp>

#include "img2vm/base/error.hpp"

namespace img2vm::rootfs {

using nlohmann::json;

namespace {

[[noreturn]] void bad(std::string_view what, std::string_view field, std::string_view why) {
  throw Error(ErrorKind::kInvalidArgument, std::string(what) + ": field \"" + std::string(field) + "\" " + std::string(why));
}

std::vector<std::string> string_list(const json& obj, std::string_view what, const char* field) {
  std::vector<std::string> out;
  auto it = obj.find(field);
  if (it == obj.end() || it->is_null()) return out;
  if (!it->is_array()) bad(what, field, "must be an array of strings");
  for (const auto& v : *it) {
    if (!v.is_string()) bad(what, field, "must be an array of strings");
    out.push_back(v.get<std::string>());
  }
  return out;
}

std::string string_field(const json& obj, std::string_view what, const char* field) {
  auto it = obj.find(field);
  if (it == obj.end() || it->is_null()) return {};
  if (!it->is_string()) bad(what, field, "must be a string");
  return it->get<std::string>();
}

std::map<std::string, std::string> string_map(const json& obj, std::string_view what, const char* field) {
  std::map<std::string, std::string> out;
  auto it = obj.find(field);
  if (it == obj.end() || it->is_null()) return out;
  if (!it->is_object()) bad(what, field, "must be an object of strings");
  for (auto kv = it->begin(); kv != it->end(); ++kv) {
    if (!kv.value().is_string()) bad(what, field, "must be an object of strings");
    out.emplace(kv.key(), kv.value().get<std::string>());
  }
  return out;
}

json parse_object(std::string_view text, std::string_view what) {
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) throw Error(ErrorKind::kInvalidArgument, std::string(what) + ": not valid JSON");
  if (!j.is_object()) throw Error(ErrorKind::kInvalidArgument, std::string(what) + ": not a JSON object");
  return j;
}

}  // namespace

RuntimeConfig runtime_config_from_image_config(std::string_view text) {
  constexpr std::string_view what = "image configuration";
  json root = parse_object(text, what);
  RuntimeConfig c;
  auto it = root.find("config");
  if (it == root.end() || it->is_null()) return c;
  if (!it->is_object()) bad(what, "config", "must be an object");
  const json& cfg = *it;
  c.entrypoint = string_list(cfg, what, "Entrypoint");
  c.cmd = string_list(cfg, what, "Cmd");
  c.env = string_list(cfg, what, "Env");
  c.working_dir = string_field(cfg, what, "WorkingDir");
  c.user = string_field(cfg, what, "User");
  c.stop_signal = string_field(cfg, what, "StopSignal");
  c.labels = string_map(cfg, what, "Labels");
  return c;
}

std::string to_json(const RuntimeConfig& c) {
  json j = {
      {"schema", kSchemaVersion}, {"entrypoint", c.entrypoint}, {"cmd", c.cmd},
      {"env", c.env},           {"working_dir", c.working_dir}, {"user", c.user},
      {"stop_signal", c.stop_signal}, {"hostname", c.hostname}, {"labels", c.labels},
  };
  return j.dump(2) + "\n";
}

RuntimeConfig runtime_config_from_json(std::string_view text) {
  constexpr std::string_view what = "img2vm runtime config";
  json j = parse_object(text, what);
  auto schema = j.find("schema");
  if (schema == j.end() || !schema->is_number_integer()) bad(what, "schema", "is missing");
  if (schema->get<int>() != kSchemaVersion)
    bad(what, "schema", "is version " + std::to_string(schema->get<int>()) + ", this build reads version " +
                            std::to_string(kSchemaVersion));
  RuntimeConfig c;
  c.entrypoint = string_list(j, what, "entrypoint");
  c.cmd = string_list(j, what, "cmd");
  c.env = string_list(j, what, "env");
  c.working_dir = string_field(j, what, "working_dir");
  c.user = string_field(j, what, "user");
  c.stop_signal = string_field(j, what, "stop_signal");
  c.hostname = string_field(j, what, "hostname");
  c.labels = string_map(j, what, "labels");
  return c;
}

}  // namespace img2vm::rootfs
