// Model files (--save-model, mpsl eval --model-file): the weights of a whole model in plain,
// framework-neutral layouts, one HDF5 dataset per tensor:
//   /                      attrs format="mpsl-model", format_version, mpsl_version, model,
//                          classes, input_shape [C,H,W], step, input_mean, input_std
//   /units/NNN             one group per unit with parameters (NNN = unit index, 3 digits),
//                          attrs type, description
//   /units/NNN/<tensor>    float32: conv weight [O, I/groups, KH, KW], bias [O]; linear weight
//                          [out, in] (inputs in NCHW flatten order), bias [out]; batch norm
//                          weight (gamma), bias (beta), running_mean, running_var [C]; members
//                          of blocks are prefixed ("main.0.weight", "shortcut.1.running_var").
#pragma once

#include <memory>
#include <string>

#include "mpsl/io/hdf5.hpp"
#include "mpsl/nn/model.hpp"

namespace mpsl::io {

constexpr int kModelFormatVersion = 1;

// Writes the tensors of `state` (a part covering units [begin, end)) under /units of `where`.
void write_part_tensors(Location& where, const nn::Model& model, const nn::PartState& state);
// Reads them back into `state`, checking every tensor's presence and shape (InputError naming
// the file and tensor otherwise).
void read_part_tensors(const Location& where, const nn::Model& model, nn::PartState& state);

// How the model's inputs were normalised in training: (pixel/255 - mean[c]) / std[c].
struct InputNormalisation {
  std::vector<float> mean, std;
};

// Writes a whole-model state atomically (no partial file is ever left at `path`).
void save_model(const std::string& path, const nn::Model& model, const nn::PartState& state,
                const InputNormalisation& norm);

struct LoadedModel {
  std::unique_ptr<nn::Model> model;
  nn::PartState state;
  InputNormalisation norm;
};
// Reads a model file; InputError naming the file for anything wrong with it.
LoadedModel load_model(const std::string& path);

// Starting weights (--init-model): checks that the model file at `path` is a readable mpsl model
// file of `model` (same name; InputError naming the file and what differs otherwise).
void check_initial_model(const std::string& path, const nn::Model& model);
// Sets a fresh part's parameters and buffers: from the model file at `init_model` when it is
// not empty (the part's units only), otherwise from the seeded initialisation. `state` must be
// plain (before adopt_formats).
void initialise_part(const nn::Model& model, nn::PartState& state, uint64_t seed,
                     const std::string& init_model);

}  // namespace mpsl::io
