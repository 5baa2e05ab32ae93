// VM specs (img2vm-vmm --spec FILE) are files users write or tools generate: parsing one must
// never crash, and what the parser accepts must come back the same from its own JSON form.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "img2vm/base/error.hpp"
#include "img2vm/vm/machine_json.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  using namespace img2vm::vm;
  try {
    MachineConfig c = machine_config_from_json(in);
    std::string once = machine_config_to_json(c);
    if (machine_config_to_json(machine_config_from_json(once)) != once) __builtin_trap();
  } catch (const img2vm::Error&) {
  }
  return 0;
}
