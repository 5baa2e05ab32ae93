#pragma once
// libnftables, opened when a tap network first needs it rather than when a program starts.
// libnftables brings libmnl, libnftnl, libxtables, libjansson and libgmp: six libraries whose
// loading and relocation every img2vm command paid at its start (about a fifth of it), though
// only `--network tap` (and its tests) use them. The calls below have libnftables' own
// signatures; api() opens libnftables.so.1 once (thread-safe) and throws an Error saying what
// is missing when it cannot.
#include <nftables/libnftables.h>

namespace img2vm::vm::nft {

struct Api {
  decltype(&::nft_ctx_new) ctx_new;
  decltype(&::nft_ctx_free) ctx_free;
  decltype(&::nft_ctx_buffer_output) ctx_buffer_output;
  decltype(&::nft_ctx_buffer_error) ctx_buffer_error;
  decltype(&::nft_ctx_get_output_buffer) ctx_get_output_buffer;
  decltype(&::nft_ctx_get_error_buffer) ctx_get_error_buffer;
  decltype(&::nft_run_cmd_from_buffer) run_cmd_from_buffer;
};

// The loaded library's entry points; the first call loads it.
const Api& api();

}  // namespace img2vm::vm::nft
