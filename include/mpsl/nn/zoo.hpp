// The model zoo: the networks of the paper and of the baselines, defined unit by unit so that
// memory and time compare with the paper's (a residual block is one indivisible unit).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "mpsl/nn/model.hpp"

namespace mpsl::nn {

// Names accepted by make_model, with a one-line description each.
std::vector<std::pair<std::string, std::string>> zoo_models();

// Builds a zoo model. Throws InputError naming the model and listing the known names.
std::unique_ptr<Model> make_model(const std::string& name);

}  // namespace mpsl::nn
