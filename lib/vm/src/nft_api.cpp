#include "nft_api.hpp"

#include "img2vm/base/shared_library.hpp"

namespace img2vm::vm::nft {
namespace {

// Debian's libnftables1 (the library libnftables-dev's headers describe).
constexpr const char* kLibrary = "libnftables.so.1";

Api load() {
  const SharedLibrary lib(kLibrary,
                          "needed for a tap network's nftables rules (install libnftables1)");
  Api a{};
  lib.bind(a.ctx_new, "nft_ctx_new");
  lib.bind(a.ctx_free, "nft_ctx_free");
  lib.bind(a.ctx_buffer_output, "nft_ctx_buffer_output");
  lib.bind(a.ctx_buffer_error, "nft_ctx_buffer_error");
  lib.bind(a.ctx_get_output_buffer, "nft_ctx_get_output_buffer");
  lib.bind(a.ctx_get_error_buffer, "nft_ctx_get_error_buffer");
  lib.bind(a.run_cmd_from_buffer, "nft_run_cmd_from_buffer");
  return a;
}

}  // namespace

const Api& api() {
  static const Api a = load();
  return a;
}

}  // namespace img2vm::vm::nft
