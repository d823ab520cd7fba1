#include "mpsl/io/hdf5.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <type_traits>

#include "mpsl/core/error.hpp"

namespace mpsl::io {

namespace {

[[noreturn]] void raise(ErrorKind kind, const std::string& message) {
  if (kind == ErrorKind::Input) throw InputError(message);
  throw RuntimeFailure(message);
}

// Collects the descriptions on HDF5's error stack, innermost first.
herr_t collect_error(unsigned /*n*/, const H5E_error2_t* err, void* data) {
  auto* out = static_cast<std::vector<std::string>*>(data);
  if (err != nullptr && err->desc != nullptr && err->desc[0] != '\0') out->emplace_back(err->desc);
  return 0;
}

std::string error_stack_detail() {
  std::vector<std::string> descs;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, collect_error, &descs);
  H5Eclear2(H5E_DEFAULT);
  if (descs.empty()) return "no details from HDF5";
  // The outermost entry says what failed, the innermost why.
  const std::string& inner = descs.front();
  const std::string& outer = descs.back();
  if (descs.size() == 1 || inner == outer) return outer;
  return outer + " (" + inner + ")";
}

const char* closer_name(Handle::Closer closer) {
  if (closer == &H5Fclose) return "H5Fclose";
  if (closer == &H5Gclose) return "H5Gclose";
  if (closer == &H5Dclose) return "H5Dclose";
  if (closer == &H5Aclose) return "H5Aclose";
  if (closer == &H5Sclose) return "H5Sclose";
  if (closer == &H5Tclose) return "H5Tclose";
  if (closer == &H5Pclose) return "H5Pclose";
  return "H5?close";
}

// A property list owned for the length of one call.
Handle property_list(hid_t cls, std::string_view where, ErrorKind kind) {
  quiet_errors();
  return Handle(check_id(H5Pcreate(cls), "H5Pcreate", where, kind), &H5Pclose, std::string(where),
                kind);
}

std::vector<hsize_t> to_hsize(const Shape& shape, std::string_view where) {
  std::vector<hsize_t> dims(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0)
      throw RuntimeFailure("HDF5: negative extent in shape " + shape_string(shape) + " for '" +
                           std::string(where) + "'");
    dims[i] = static_cast<hsize_t>(shape[i]);
  }
  return dims;
}

Datatype string_type(bool variable, size_t size, H5T_cset_t cset, std::string_view where,
                     ErrorKind kind) {
  Datatype t(check_id(H5Tcopy(H5T_C_S1), "H5Tcopy", where, kind), std::string(where), kind);
  check(H5Tset_size(t.id(), variable ? H5T_VARIABLE : size), "H5Tset_size", where, kind);
  check(H5Tset_cset(t.id(), cset), "H5Tset_cset", where, kind);
  return t;
}

// Frees the strings HDF5 allocated for a variable-length read.
void reclaim_strings(const Datatype& mem, const Dataspace& space, void* buf) {
#if H5_VERSION_GE(1, 12, 0)
  H5Treclaim(mem.id(), space.id(), H5P_DEFAULT, buf);
#else
  H5Dvlen_reclaim(mem.id(), space.id(), H5P_DEFAULT, buf);
#endif
}

// Strings of an attribute, fixed- or variable-length.
std::vector<std::string> read_strings(const Attribute& attr, const std::string& where) {
  const ErrorKind kind = attr.error_kind();
  Datatype stored = attr.type();
  if (stored.type_class() != H5T_STRING)
    raise(kind, "HDF5: attribute '" + where + "' is " + stored.describe() + ", expected a string");
  Dataspace space = attr.space();
  const auto n = static_cast<size_t>(space.element_count());
  const H5T_cset_t cset = H5Tget_cset(stored.id());
  std::vector<std::string> out;
  out.reserve(n);
  if (stored.is_variable_string()) {
    Datatype mem = string_type(true, 0, cset, where, kind);
    std::vector<char*> ptrs(n, nullptr);
    if (n > 0) check(H5Aread(attr.id(), mem.id(), ptrs.data()), "H5Aread", where, kind);
    for (char* p : ptrs) out.emplace_back(p != nullptr ? p : "");
    if (n > 0) reclaim_strings(mem, space, ptrs.data());
  } else {
    const size_t size = stored.size();
    const H5T_str_t pad = H5Tget_strpad(stored.id());
    Datatype mem = string_type(false, size, cset, where, kind);
    check(H5Tset_strpad(mem.id(), H5T_STR_NULLPAD), "H5Tset_strpad", where, kind);
    std::vector<char> buf(n * size + 1, '\0');
    if (n > 0) check(H5Aread(attr.id(), mem.id(), buf.data()), "H5Aread", where, kind);
    for (size_t i = 0; i < n; ++i) {
      const char* p = buf.data() + i * size;
      size_t len = strnlen(p, size);
      if (pad == H5T_STR_SPACEPAD)
        while (len > 0 && p[len - 1] == ' ') --len;
      out.emplace_back(p, len);
    }
  }
  return out;
}

// Checks that a stored numeric type can be read as T without changing its meaning.
template <Element T>
void require_numeric(const Datatype& stored, const std::string& where, ErrorKind kind) {
  const H5T_class_t cls = stored.type_class();
  const bool ok =
      std::is_floating_point_v<T> ? (cls == H5T_INTEGER || cls == H5T_FLOAT) : cls == H5T_INTEGER;
  if (!ok)
    raise(kind, "HDF5: '" + where + "' holds " + stored.describe() + ", expected " +
                    (std::is_floating_point_v<T> ? "numbers" : "integers"));
}

}  // namespace

int64_t element_count(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_string(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ",";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

void quiet_errors() {
  // With a thread-safe libhdf5 the default error stack (and its printing) is per thread.
  thread_local bool done = false;
  if (!done) {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    done = true;
  }
}

void throw_h5_error(const char* call, std::string_view where, ErrorKind kind) {
  raise(kind, "HDF5: " + std::string(call) + " failed on '" + std::string(where) +
                  "': " + error_stack_detail());
}

// ---- Handle ----------------------------------------------------------------------------------

void Handle::reset() noexcept {
  if (id_ >= 0 && closer_ != nullptr) {
    if (closer_(id_) < 0) {
      const std::string detail = error_stack_detail();
      std::fprintf(stderr, "mpsl: warning: %s failed on '%s': %s\n", closer_name(closer_),
                   where_.c_str(), detail.c_str());
    }
  }
  id_ = H5I_INVALID_HID;
}

void Handle::close() {
  if (!valid()) return;
  const hid_t id = release();
  if (closer_ != nullptr && closer_(id) < 0) throw_h5_error(closer_name(closer_), where_, kind_);
}

// ---- Dataspace, Datatype, Attribute -----------------------------------------------------------

Dataspace::Dataspace(hid_t id, std::string where, ErrorKind kind)
    : Handle(id, &H5Sclose, std::move(where), kind) {}

Dataspace Dataspace::scalar() {
  quiet_errors();
  return Dataspace(
      io::check_id(H5Screate(H5S_SCALAR), "H5Screate", "scalar dataspace", ErrorKind::Runtime),
      "scalar dataspace", ErrorKind::Runtime);
}

Dataspace Dataspace::simple(const Shape& shape) {
  if (shape.empty()) return scalar();
  quiet_errors();
  const std::string where = "dataspace " + shape_string(shape);
  const std::vector<hsize_t> dims = to_hsize(shape, where);
  return Dataspace(
      io::check_id(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr),
                   "H5Screate_simple", where, ErrorKind::Runtime),
      where, ErrorKind::Runtime);
}

bool Dataspace::is_scalar() const {
  const H5S_class_t cls = H5Sget_simple_extent_type(id());
  if (cls == H5S_NO_CLASS) throw_h5_error("H5Sget_simple_extent_type", where(), error_kind());
  return cls == H5S_SCALAR;
}

Shape Dataspace::shape() const {
  const int rank = check(H5Sget_simple_extent_ndims(id()), "H5Sget_simple_extent_ndims");
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  if (rank > 0)
    check(H5Sget_simple_extent_dims(id(), dims.data(), nullptr), "H5Sget_simple_extent_dims");
  return Shape(dims.begin(), dims.end());
}

int64_t Dataspace::element_count() const {
  const hssize_t n = H5Sget_simple_extent_npoints(id());
  if (n < 0) throw_h5_error("H5Sget_simple_extent_npoints", where(), error_kind());
  return static_cast<int64_t>(n);
}

Datatype::Datatype(hid_t id, std::string where, ErrorKind kind)
    : Handle(id, &H5Tclose, std::move(where), kind) {}

H5T_class_t Datatype::type_class() const {
  const H5T_class_t cls = H5Tget_class(id());
  if (cls == H5T_NO_CLASS) throw_h5_error("H5Tget_class", where(), error_kind());
  return cls;
}

size_t Datatype::size() const {
  const size_t n = H5Tget_size(id());
  if (n == 0) throw_h5_error("H5Tget_size", where(), error_kind());
  return n;
}

bool Datatype::is_variable_string() const {
  return check_tri(H5Tis_variable_str(id()), "H5Tis_variable_str", where(), error_kind());
}

bool Datatype::is_signed() const {
  const H5T_sign_t sign = H5Tget_sign(id());
  if (sign == H5T_SGN_ERROR) throw_h5_error("H5Tget_sign", where(), error_kind());
  return sign != H5T_SGN_NONE;
}

std::string Datatype::describe() const {
  switch (type_class()) {
    case H5T_INTEGER:
      return std::string(is_signed() ? "int" : "uint") + std::to_string(8 * size());
    case H5T_FLOAT:
      return "float" + std::to_string(8 * size());
    case H5T_STRING:
      return "string";
    case H5T_COMPOUND:
      return "compound";
    case H5T_ENUM:
      return "enum";
    case H5T_ARRAY:
      return "array type";
    case H5T_VLEN:
      return "variable-length sequence";
    case H5T_OPAQUE:
      return "opaque";
    case H5T_REFERENCE:
      return "reference";
    default:
      return "HDF5 type class " + std::to_string(static_cast<int>(type_class()));
  }
}

Attribute::Attribute(hid_t id, std::string where, ErrorKind kind)
    : Handle(id, &H5Aclose, std::move(where), kind) {}

Dataspace Attribute::space() const {
  return Dataspace(check_id(H5Aget_space(id()), "H5Aget_space"), where(), error_kind());
}

Datatype Attribute::type() const {
  return Datatype(check_id(H5Aget_type(id()), "H5Aget_type"), where(), error_kind());
}

// ---- Object: attributes -----------------------------------------------------------------------

Object::Object(hid_t id, Closer closer, std::string file, std::string path, ErrorKind kind)
    : Handle(id, closer, path == "/" ? file : file + ":" + path, kind),
      file_(std::move(file)),
      path_(std::move(path)) {}

std::string Object::child_path(const std::string& name) const {
  if (!name.empty() && name.front() == '/') return name;
  if (path_.empty() || path_ == "/") return "/" + name;
  return path_ + "/" + name;
}

std::string Object::attribute_where(const std::string& name) const {
  return where() + " (attribute " + name + ")";
}

bool Object::has_attribute(const std::string& name) const {
  quiet_errors();
  return check_tri(H5Aexists(id(), name.c_str()), "H5Aexists", attribute_where(name), error_kind());
}

Attribute Object::open_attribute(const std::string& name) const {
  const std::string where = attribute_where(name);
  if (!has_attribute(name))
    raise(error_kind(), "HDF5: '" + this->where() + "' has no attribute '" + name + "'");
  return Attribute(
      io::check_id(H5Aopen(id(), name.c_str(), H5P_DEFAULT), "H5Aopen", where, error_kind()), where,
      error_kind());
}

void Object::delete_attribute(const std::string& name) {
  io::check(H5Adelete(id(), name.c_str()), "H5Adelete", attribute_where(name), error_kind());
}

namespace {

// Creates (replacing) an attribute of `type` and `space` on `obj` and writes `data` to it.
void create_and_write_attribute(Object& obj, const std::string& name, const std::string& where,
                                hid_t type, const Dataspace& space, const void* data) {
  const ErrorKind kind = obj.error_kind();
  if (obj.has_attribute(name)) obj.delete_attribute(name);
  Attribute attr(
      check_id(H5Acreate2(obj.id(), name.c_str(), type, space.id(), H5P_DEFAULT, H5P_DEFAULT),
               "H5Acreate2", where, kind),
      where, kind);
  if (space.element_count() > 0) check(H5Awrite(attr.id(), type, data), "H5Awrite", where, kind);
  attr.close();
}

}  // namespace

void Object::write_attribute(const std::string& name, const std::string& value) {
  const std::string where = attribute_where(name);
  Datatype type = string_type(true, 0, H5T_CSET_UTF8, where, error_kind());
  const char* p = value.c_str();
  create_and_write_attribute(*this, name, where, type.id(), Dataspace::scalar(), &p);
}

void Object::write_attribute(const std::string& name, const std::vector<std::string>& values) {
  const std::string where = attribute_where(name);
  Datatype type = string_type(true, 0, H5T_CSET_UTF8, where, error_kind());
  std::vector<const char*> ptrs;
  ptrs.reserve(values.size());
  for (const auto& v : values) ptrs.push_back(v.c_str());
  create_and_write_attribute(*this, name, where, type.id(),
                             Dataspace::simple({static_cast<int64_t>(values.size())}), ptrs.data());
}

void Object::write_attribute(const std::string& name, int64_t value) {
  create_and_write_attribute(*this, name, attribute_where(name), H5T_NATIVE_INT64,
                             Dataspace::scalar(), &value);
}

void Object::write_attribute(const std::string& name, double value) {
  create_and_write_attribute(*this, name, attribute_where(name), H5T_NATIVE_DOUBLE,
                             Dataspace::scalar(), &value);
}

template <Element T>
void Object::write_attribute(const std::string& name, std::span<const T> values) {
  create_and_write_attribute(*this, name, attribute_where(name), native_type<T>(),
                             Dataspace::simple({static_cast<int64_t>(values.size())}),
                             values.data());
}

std::string Object::read_string_attribute(const std::string& name) const {
  const std::string where = attribute_where(name);
  std::vector<std::string> v = read_strings(open_attribute(name), where);
  if (v.size() != 1)
    raise(error_kind(), "HDF5: attribute '" + where + "' holds " + std::to_string(v.size()) +
                            " strings, expected one");
  return v.front();
}

std::vector<std::string> Object::read_strings_attribute(const std::string& name) const {
  return read_strings(open_attribute(name), attribute_where(name));
}

template <Element T>
std::vector<T> Object::read_array_attribute(const std::string& name) const {
  const std::string where = attribute_where(name);
  Attribute attr = open_attribute(name);
  require_numeric<T>(attr.type(), where, error_kind());
  Dataspace space = attr.space();
  if (space.shape().size() > 1)
    raise(error_kind(), "HDF5: attribute '" + where + "' has shape " + shape_string(space.shape()) +
                            ", expected a list of numbers");
  std::vector<T> out(static_cast<size_t>(space.element_count()));
  if (!out.empty())
    io::check(H5Aread(attr.id(), native_type<T>(), out.data()), "H5Aread", where, error_kind());
  return out;
}

int64_t Object::read_int_attribute(const std::string& name) const {
  std::vector<int64_t> v = read_array_attribute<int64_t>(name);
  if (v.size() != 1)
    raise(error_kind(), "HDF5: attribute '" + attribute_where(name) + "' holds " +
                            std::to_string(v.size()) + " values, expected one integer");
  return v.front();
}

double Object::read_double_attribute(const std::string& name) const {
  std::vector<double> v = read_array_attribute<double>(name);
  if (v.size() != 1)
    raise(error_kind(), "HDF5: attribute '" + attribute_where(name) + "' holds " +
                            std::to_string(v.size()) + " values, expected one number");
  return v.front();
}

// ---- Dataset ----------------------------------------------------------------------------------

Dataset::Dataset(hid_t id, std::string file, std::string path, ErrorKind kind)
    : Object(id, &H5Dclose, std::move(file), std::move(path), kind) {}

Dataspace Dataset::space() const {
  return Dataspace(check_id(H5Dget_space(id()), "H5Dget_space"), where(), error_kind());
}

Datatype Dataset::type() const {
  return Datatype(check_id(H5Dget_type(id()), "H5Dget_type"), where(), error_kind());
}

Shape Dataset::shape() const {
  return space().shape();
}

int64_t Dataset::element_count() const {
  return space().element_count();
}

template <Element T>
void Dataset::write(const T* data) {
  check(H5Dwrite(id(), native_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, data), "H5Dwrite");
}

template <Element T>
void Dataset::read(T* data) const {
  require_numeric<T>(type(), where(), error_kind());
  if (element_count() == 0) return;
  check(H5Dread(id(), native_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, data), "H5Dread");
}

namespace {

// File and memory dataspaces selecting rows [first, first+count) of `ds`.
std::pair<Dataspace, Dataspace> row_selection(const Dataset& ds, int64_t first, int64_t count) {
  Dataspace file_space = ds.space();
  Shape shape = file_space.shape();
  if (shape.empty() || first < 0 || count < 0 || first + count > shape[0])
    raise(ds.error_kind(), "HDF5: rows [" + std::to_string(first) + ", " +
                               std::to_string(first + count) + ") are outside '" + ds.where() +
                               "' of shape " + shape_string(shape));
  std::vector<hsize_t> start(shape.size(), 0), counts(shape.begin(), shape.end());
  start[0] = static_cast<hsize_t>(first);
  counts[0] = static_cast<hsize_t>(count);
  check(H5Sselect_hyperslab(file_space.id(), H5S_SELECT_SET, start.data(), nullptr, counts.data(),
                            nullptr),
        "H5Sselect_hyperslab", ds.where(), ds.error_kind());
  shape[0] = count;
  return {std::move(file_space), Dataspace::simple(shape)};
}

}  // namespace

template <Element T>
void Dataset::read_rows(int64_t first, int64_t count, T* data) const {
  require_numeric<T>(type(), where(), error_kind());
  auto [file_space, mem_space] = row_selection(*this, first, count);
  if (count == 0) return;
  check(H5Dread(id(), native_type<T>(), mem_space.id(), file_space.id(), H5P_DEFAULT, data),
        "H5Dread");
}

template <Element T>
void Dataset::write_rows(int64_t first, int64_t count, const T* data) {
  auto [file_space, mem_space] = row_selection(*this, first, count);
  if (count == 0) return;
  check(H5Dwrite(id(), native_type<T>(), mem_space.id(), file_space.id(), H5P_DEFAULT, data),
        "H5Dwrite");
}

// ---- Location ---------------------------------------------------------------------------------

bool Location::exists(const std::string& path) const {
  quiet_errors();
  // H5Lexists needs every intermediate link to exist, so walk the path one component at a time.
  std::string prefix = (!path.empty() && path.front() == '/') ? "/" : "";
  size_t pos = 0;
  while (pos <= path.size()) {
    size_t next = path.find('/', pos);
    if (next == std::string::npos) next = path.size();
    const std::string part = path.substr(pos, next - pos);
    pos = next + 1;
    if (part.empty() || part == ".") continue;
    prefix += (prefix.empty() || prefix.back() == '/') ? part : "/" + part;
    if (!check_tri(H5Lexists(id(), prefix.c_str(), H5P_DEFAULT), "H5Lexists",
                   where() + " (path " + prefix + ")", error_kind()))
      return false;
  }
  if (prefix.empty() || prefix == "/") return true;
  // The link exists; make sure it leads somewhere (soft links may dangle).
  return check_tri(H5Oexists_by_name(id(), prefix.c_str(), H5P_DEFAULT), "H5Oexists_by_name",
                   where() + " (path " + prefix + ")", error_kind());
}

Group Location::create_group(const std::string& name) {
  const std::string path = child_path(name);
  const std::string where = file_path() + ":" + path;
  Handle lcpl = property_list(H5P_LINK_CREATE, where, error_kind());
  io::check(H5Pset_create_intermediate_group(lcpl.id(), 1), "H5Pset_create_intermediate_group",
            where, error_kind());
  return Group(io::check_id(H5Gcreate2(id(), name.c_str(), lcpl.id(), H5P_DEFAULT, H5P_DEFAULT),
                            "H5Gcreate2", where, error_kind()),
               file_path(), path, error_kind());
}

Group Location::open_group(const std::string& name) const {
  const std::string path = child_path(name);
  const std::string where = file_path() + ":" + path;
  if (!exists(name)) raise(error_kind(), "HDF5: '" + file_path() + "' has no group '" + path + "'");
  return Group(
      io::check_id(H5Gopen2(id(), name.c_str(), H5P_DEFAULT), "H5Gopen2", where, error_kind()),
      file_path(), path, error_kind());
}

Group Location::require_group(const std::string& name) {
  return exists(name) ? open_group(name) : create_group(name);
}

Dataset Location::create_dataset(const std::string& name, hid_t type, const Shape& shape,
                                 const DatasetOptions& options) {
  const std::string path = child_path(name);
  const std::string where = file_path() + ":" + path;
  const ErrorKind kind = error_kind();
  Dataspace space = Dataspace::simple(shape);
  Handle lcpl = property_list(H5P_LINK_CREATE, where, kind);
  io::check(H5Pset_create_intermediate_group(lcpl.id(), 1), "H5Pset_create_intermediate_group",
            where, kind);
  Handle dcpl = property_list(H5P_DATASET_CREATE, where, kind);

  // Chunking: needed for compression; impossible for scalars and empty extents.
  const bool empty = element_count(shape) == 0;
  const bool want_chunks = !options.chunk.empty() || options.deflate > 0;
  if (want_chunks && !shape.empty() && !empty) {
    Shape chunk = options.chunk;
    if (chunk.empty()) {
      // Default: whole rows along the first dimension, about 1 MiB per chunk.
      chunk = shape;
      const size_t elem = H5Tget_size(type);
      const int64_t row_bytes =
          static_cast<int64_t>(elem == 0 ? 1 : elem) * (element_count(shape) / shape[0]);
      chunk[0] =
          std::clamp<int64_t>((int64_t{1} << 20) / std::max<int64_t>(row_bytes, 1), 1, shape[0]);
    }
    if (chunk.size() != shape.size())
      throw RuntimeFailure("HDF5: chunk " + shape_string(chunk) + " does not match shape " +
                           shape_string(shape) + " of '" + where + "'");
    for (size_t i = 0; i < chunk.size(); ++i) chunk[i] = std::clamp<int64_t>(chunk[i], 1, shape[i]);
    const std::vector<hsize_t> cdims = to_hsize(chunk, where);
    io::check(H5Pset_chunk(dcpl.id(), static_cast<int>(cdims.size()), cdims.data()), "H5Pset_chunk",
              where, kind);
    if (options.deflate > 0 && H5Zfilter_avail(H5Z_FILTER_DEFLATE) > 0)
      io::check(H5Pset_deflate(dcpl.id(), static_cast<unsigned>(std::min(options.deflate, 9))),
                "H5Pset_deflate", where, kind);
  }
  return Dataset(io::check_id(H5Dcreate2(id(), name.c_str(), type, space.id(), lcpl.id(), dcpl.id(),
                                         H5P_DEFAULT),
                              "H5Dcreate2", where, kind),
                 file_path(), path, kind);
}

Dataset Location::open_dataset(const std::string& name) const {
  const std::string path = child_path(name);
  const std::string where = file_path() + ":" + path;
  if (!exists(name))
    raise(error_kind(), "HDF5: '" + file_path() + "' has no dataset '" + path + "'");
  return Dataset(
      io::check_id(H5Dopen2(id(), name.c_str(), H5P_DEFAULT), "H5Dopen2", where, error_kind()),
      file_path(), path, error_kind());
}

template <Element T>
Dataset Location::write_dataset(const std::string& name, const Shape& shape,
                                std::span<const T> data, const DatasetOptions& options) {
  if (static_cast<int64_t>(data.size()) != element_count(shape))
    throw RuntimeFailure("HDF5: writing '" + file_path() + ":" + child_path(name) + "' of shape " +
                         shape_string(shape) + " needs " + std::to_string(element_count(shape)) +
                         " values, got " + std::to_string(data.size()));
  Dataset ds = create_dataset<T>(name, shape, options);
  if (!data.empty()) ds.write(data.data());
  return ds;
}

template <Element T>
std::vector<T> Location::read_dataset(const std::string& name, Shape* shape_out) const {
  Dataset ds = open_dataset(name);
  if (shape_out != nullptr) *shape_out = ds.shape();
  return ds.read<T>();
}

namespace {
herr_t collect_name(hid_t /*group*/, const char* name, const H5L_info_t* /*info*/, void* data) {
  static_cast<std::vector<std::string>*>(data)->emplace_back(name);
  return 0;
}
}  // namespace

std::vector<std::string> Location::children() const {
  std::vector<std::string> names;
  check(H5Literate(id(), H5_INDEX_NAME, H5_ITER_INC, nullptr, collect_name, &names), "H5Literate");
  return names;
}

Group::Group(hid_t id, std::string file, std::string path, ErrorKind kind)
    : Location(id, &H5Gclose, std::move(file), std::move(path), kind) {}

// ---- File -------------------------------------------------------------------------------------

File::File(hid_t id, const std::string& path, ErrorKind kind)
    : Location(id, &H5Fclose, path, "/", kind) {}

File File::create(const std::string& path) {
  quiet_errors();
  const hid_t id = io::check_id(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT),
                                "H5Fcreate", path, ErrorKind::Runtime);
  return File(id, path, ErrorKind::Runtime);
}

namespace {

// Clear messages for the usual ways a user-given path is not a readable HDF5 file.
void require_hdf5_file(const std::string& path, ErrorKind kind) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) raise(kind, "HDF5 file '" + path + "' does not exist");
  if (fs::is_directory(st)) raise(kind, "'" + path + "' is a folder, expected an HDF5 file");
  if (::access(path.c_str(), R_OK) != 0)
    raise(kind, "cannot read '" + path + "': " + std::strerror(errno));
  const htri_t is = H5Fis_hdf5(path.c_str());
  if (is == 0) raise(kind, "'" + path + "' is not an HDF5 file");
  if (is < 0) throw_h5_error("H5Fis_hdf5", path, kind);
}

}  // namespace

File File::open(const std::string& path) {
  quiet_errors();
  require_hdf5_file(path, ErrorKind::Input);
  const hid_t id = io::check_id(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), "H5Fopen", path,
                                ErrorKind::Input);
  return File(id, path, ErrorKind::Input);
}

File File::open_read_write(const std::string& path) {
  quiet_errors();
  require_hdf5_file(path, ErrorKind::Runtime);
  const hid_t id = io::check_id(H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT), "H5Fopen", path,
                                ErrorKind::Runtime);
  return File(id, path, ErrorKind::Runtime);
}

void File::flush() {
  check(H5Fflush(id(), H5F_SCOPE_LOCAL), "H5Fflush");
}

bool is_hdf5_file(const std::string& path) {
  quiet_errors();
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return false;
  const htri_t is = H5Fis_hdf5(path.c_str());
  if (is < 0) H5Eclear2(H5E_DEFAULT);
  return is > 0;
}

// ---- atomic writes ----------------------------------------------------------------------------

namespace {

void fsync_path(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd < 0) {
    if (directory) return;  // best effort
    throw RuntimeFailure("cannot open '" + path + "' to sync it: " + std::strerror(errno));
  }
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  // Some file systems refuse fsync on folders (EINVAL); the data itself was synced.
  if (rc != 0 && !(directory && (err == EINVAL || err == EBADF)))
    throw RuntimeFailure("fsync of '" + path + "' failed: " + std::strerror(err));
}

}  // namespace

void atomic_write(const std::string& path,
                  const std::function<void(const std::string& tmp_path)>& write) {
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  try {
    write(tmp);
    fsync_path(tmp, false);
    if (std::rename(tmp.c_str(), path.c_str()) != 0)
      throw RuntimeFailure("cannot rename '" + tmp + "' to '" + path +
                           "': " + std::strerror(errno));
  } catch (...) {
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
    throw;
  }
  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  fsync_path(dir.empty() ? std::string(".") : dir.string(), true);
}

void atomic_write_h5(const std::string& path, const std::function<void(File& file)>& fill) {
  atomic_write(path, [&](const std::string& tmp) {
    File file = File::create(tmp);
    fill(file);
    const ssize_t open_objects =
        H5Fget_obj_count(file.id(), H5F_OBJ_DATASET | H5F_OBJ_GROUP | H5F_OBJ_DATATYPE |
                                        H5F_OBJ_ATTR | H5F_OBJ_LOCAL);
    if (open_objects < 0) throw_h5_error("H5Fget_obj_count", tmp, ErrorKind::Runtime);
    if (open_objects > 0)
      throw RuntimeFailure("HDF5: " + std::to_string(open_objects) + " object(s) of '" + tmp +
                           "' are still open when closing it");
    file.flush();
    file.close();
  });
}

// ---- explicit instantiations ------------------------------------------------------------------

#define MPSL_IO_INSTANTIATE(T)                                                            \
  template void Object::write_attribute<T>(const std::string&, std::span<const T>);       \
  template std::vector<T> Object::read_array_attribute<T>(const std::string&) const;      \
  template void Dataset::write<T>(const T*);                                              \
  template void Dataset::read<T>(T*) const;                                               \
  template void Dataset::read_rows<T>(int64_t, int64_t, T*) const;                        \
  template void Dataset::write_rows<T>(int64_t, int64_t, const T*);                       \
  template Dataset Location::write_dataset<T>(const std::string&, const Shape&,           \
                                              std::span<const T>, const DatasetOptions&); \
  template std::vector<T> Location::read_dataset<T>(const std::string&, Shape*) const;

MPSL_IO_INSTANTIATE(uint8_t)
MPSL_IO_INSTANTIATE(int32_t)
MPSL_IO_INSTANTIATE(int64_t)
MPSL_IO_INSTANTIATE(float)
MPSL_IO_INSTANTIATE(double)

#undef MPSL_IO_INSTANTIATE

}  // namespace mpsl::io
