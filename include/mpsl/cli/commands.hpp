// The entry point of each command. Each returns the process exit code; InputError escaping one
// of them means exit code 2 (main prints the message once).
#pragma once

#include "mpsl/cli/options.hpp"

namespace mpsl::cli {

int run_convert(const CommonOptions& common, const ConvertOptions& opts);  // src/data
int run_train(const CommonOptions& common, const TrainOptions& opts);      // src/train
int run_eval(const CommonOptions& common, const EvalOptions& opts);        // src/train
int run_inspect(const CommonOptions& common, const InspectOptions& opts);  // src/train
int run_profile(const CommonOptions& common, const ProfileOptions& opts);  // src/plan
int run_plan(const CommonOptions& common, const PlanOptions& opts);        // src/plan

}  // namespace mpsl::cli
