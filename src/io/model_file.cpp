#include "mpsl/io/model_file.hpp"

#include <cstdio>

#include "mpsl/core/error.hpp"
#include "mpsl/nn/zoo.hpp"

namespace mpsl::io {

namespace {

std::string unit_group(int unit) {
  char b[32];
  std::snprintf(b, sizeof b, "units/%03d", unit);
  return b;
}

// "3.main.0.weight" -> "main.0.weight"
std::string tensor_name(const nn::PartLayout::Entry& e) {
  return e.name.substr(e.name.find('.') + 1);
}

}  // namespace

void write_part_tensors(Location& where, const nn::Model& model, const nn::PartState& state) {
  for (int u = state.layout.begin; u < state.layout.end; ++u) {
    bool any = false;
    for (const auto& e : state.layout.tensors) any |= e.unit == u;
    if (!any) continue;
    Group g = where.require_group(unit_group(u));
    g.write_attribute("type", model.unit(u).type());
    g.write_attribute("description", model.unit(u).describe());
  }
  for (const auto& e : state.layout.tensors) {
    Shape dims(e.dims.begin(), e.dims.end());
    // Weights may be stored in oneDNN's layouts (PartState::formats); files hold plain ones.
    std::vector<float> plain;
    const float* src = state.buffers.data() + e.offset;
    if (!e.buffer) {
      plain = state.plain_values(e, state.params);
      src = plain.data();
    }
    where.write_dataset<float>(unit_group(e.unit) + "/" + tensor_name(e), dims,
                               std::span<const float>(src, element_count(dims)));
  }
}

void read_part_tensors(const Location& where, const nn::Model& model, nn::PartState& state) {
  for (const auto& e : state.layout.tensors) {
    const std::string path = unit_group(e.unit) + "/" + tensor_name(e);
    if (!where.exists(path))
      throw InputError(where.file_path() + ": tensor " + path + " of model '" + model.name() +
                       "' is missing");
    Shape shape;
    std::vector<float> v = where.read_dataset<float>(path, &shape);
    const Shape want(e.dims.begin(), e.dims.end());
    if (shape != want)
      throw InputError(where.file_path() + ": tensor " + path + " has shape " +
                       shape_string(shape) + ", model '" + model.name() + "' needs " +
                       shape_string(want));
    if (e.buffer)
      std::copy(v.begin(), v.end(), state.buffers.data() + e.offset);
    else
      state.set_plain_values(e, v.data(), state.params);
  }
  ++state.version;
}

void save_model(const std::string& path, const nn::Model& model, const nn::PartState& state,
                const InputNormalisation& norm) {
  MPSL_CHECK(state.layout.begin == 0 && state.layout.end == model.num_units(),
             "save_model needs a whole-model state");
  atomic_write_h5(path, [&](File& f) {
    const nn::Shape in = model.input_shape(1);
    f.write_attribute("format", "mpsl-model");
    f.write_attribute("format_version", kModelFormatVersion);
    f.write_attribute("mpsl_version", MPSL_VERSION);
    f.write_attribute("model", model.name());
    f.write_attribute("classes", model.classes());
    f.write_attribute("input_shape", std::vector<int64_t>{in.c, in.h, in.w});
    f.write_attribute("step", static_cast<int64_t>(state.steps));
    f.write_attribute("input_mean", norm.mean);
    f.write_attribute("input_std", norm.std);
    write_part_tensors(f, model, state);
  });
}

namespace {

File open_model_file(const std::string& path) {
  File f = File::open(path);
  if (!f.has_attribute("format") || f.read_string_attribute("format") != "mpsl-model")
    throw InputError(path + ": not an mpsl model file (no format=\"mpsl-model\" attribute)");
  const int64_t version = f.read_int_attribute("format_version");
  if (version != kModelFormatVersion)
    throw InputError(path + ": model file format version " + std::to_string(version) +
                     ", this mpsl reads version " + std::to_string(kModelFormatVersion));
  return f;
}

}  // namespace

LoadedModel load_model(const std::string& path) {
  File f = open_model_file(path);
  LoadedModel m;
  const std::string name = f.read_string_attribute("model");
  try {
    m.model = nn::make_model(name);
  } catch (const InputError& e) {
    throw InputError(path + ": " + e.what());
  }
  m.state = nn::PartState(*m.model, 0, m.model->num_units());
  read_part_tensors(f, *m.model, m.state);
  m.state.steps = static_cast<uint64_t>(f.read_int_attribute("step"));
  m.norm.mean = f.read_floats_attribute("input_mean");
  m.norm.std = f.read_floats_attribute("input_std");
  const size_t channels = static_cast<size_t>(m.model->input_shape(1).c);
  if (m.norm.mean.size() != channels || m.norm.std.size() != channels)
    throw InputError(path + ": input_mean/input_std must have one value per input channel (" +
                     std::to_string(channels) + ")");
  return m;
}

void check_initial_model(const std::string& path, const nn::Model& model) {
  std::string name;
  try {
    File f = open_model_file(path);
    name = f.read_string_attribute("model");
    if (name == model.name()) {
      // Every tensor present with its shape: a damaged file is refused before any training.
      nn::PartState whole(model, 0, model.num_units());
      read_part_tensors(f, model, whole);
    }
  } catch (const InputError& e) {
    throw InputError(std::string("--init-model: ") + e.what());
  }
  if (name != model.name())
    throw InputError("--init-model " + path + " holds model '" + name + "', but --model is '" +
                     model.name() + "'");
}

void initialise_part(const nn::Model& model, nn::PartState& state, uint64_t seed,
                     const std::string& init_model) {
  MPSL_CHECK(state.plain(), "initialise_part needs a plain state");
  if (init_model.empty()) {
    state.initialise(model, seed);
    return;
  }
  File f = open_model_file(init_model);
  read_part_tensors(f, model, state);
}

}  // namespace mpsl::io
