// One register_* function per implemented subcommand (each in its own cmd_*.cpp).
#pragma once

#include "cli.hpp"

namespace img2vm::cli {

void register_info(CLI::App& app, Globals& g, Action* slot);
void register_kernel(CLI::App& app, Globals& g, Action* slot);

}  // namespace img2vm::cli
