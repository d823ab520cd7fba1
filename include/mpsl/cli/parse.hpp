// Command-line and config-file parsing for `mpsl <command> [options]` (../shared/CLI.md).
//
// Parsing is a pure function of argv and the config file it names: it prints nothing and never
// exits, so tests call it directly. Every problem is an InputError whose message names the option
// (and the file and line for config files) and says what is expected.
#pragma once

#include <string>
#include <vector>

#include "mpsl/cli/options.hpp"

namespace mpsl::cli {

// What the caller should do with the result.
enum class Action {
  kRun,      // run `command` with the filled option structs
  kHelp,     // print `text` to stdout and exit 0 (--help, `mpsl help [command]`)
  kVersion,  // print `text` to stdout and exit 0 (--version)
};

struct ParsedCommand {
  Action action = Action::kRun;
  std::string
      command;       // train | eval | convert | profile | plan | inspect; empty for top-level help
  std::string text;  // help or version text when action != kRun
  CommonOptions common;
  TrainOptions train;
  EvalOptions eval;
  ConvertOptions convert;
  InspectOptions inspect;
  ProfileOptions profile;
  PlanOptions plan;
};

// Parses argv (argv[0] is the program name). Config-file values fill what the command line left
// unset: values of the file's [command] section win over its section-less values.
ParsedCommand parse_command_line(int argc, const char* const argv[]);

// Convenience for tests: {"train", "--model", "x"} (the program name is added).
ParsedCommand parse_args(const std::vector<std::string>& args);

// The command names, in the order of CLI.md.
const std::vector<std::string>& command_names();

// Whether this build can run `command` (profile and plan are parsed but planned for later).
bool command_available(const std::string& command);

// Help texts: the top-level one lists the commands; a command's lists its options with defaults.
std::string top_level_help();
std::string command_help(const std::string& command);

// "mpsl <MPSL_VERSION>".
std::string version_text();

}  // namespace mpsl::cli
