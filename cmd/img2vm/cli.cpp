#include "cli.hpp"

namespace img2vm::cli {

void add_global_flags(CLI::App& sub) { sub.fallthrough(); }

}  // namespace img2vm::cli
