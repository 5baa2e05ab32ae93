// One register_* function per implemented subcommand (each in its own cmd_*.cpp).
#pragma once

#include "cli.hpp"

namespace img2vm::cli {

void register_info(CLI::App& app, Globals& g, Action* slot);
void register_kernel(CLI::App& app, Globals& g, Action* slot);
void register_convert(CLI::App& app, Globals& g, Action* slot);
void register_pull(CLI::App& app, Globals& g, Action* slot);
void register_images(CLI::App& app, Globals& g, Action* slot);
void register_inspect(CLI::App& app, Globals& g, Action* slot);
void register_rm(CLI::App& app, Globals& g, Action* slot);
void register_prune(CLI::App& app, Globals& g, Action* slot);
void register_run(CLI::App& app, Globals& g, Action* slot);
void register_volume(CLI::App& app, Globals& g, Action* slot);
void register_snapshot(CLI::App& app, Globals& g, Action* slot);
void register_rmi(CLI::App& app, Globals& g, Action* slot);
void register_ps(CLI::App& app, Globals& g, Action* slot);
void register_logs(CLI::App& app, Globals& g, Action* slot);
void register_stop(CLI::App& app, Globals& g, Action* slot);
void register_kill(CLI::App& app, Globals& g, Action* slot);
void register_wait(CLI::App& app, Globals& g, Action* slot);
void register_exec(CLI::App& app, Globals& g, Action* slot);

}  // namespace img2vm::cli
