// Thin RAII wrappers over the HDF5 C API (serial libhdf5).
//
// Every handle is move-only and closes itself; destructors never throw (a failed close is logged
// to stderr). Every H5* call is checked: a negative return becomes an exception that names the
// call and the file/object it was made on, e.g.
//   HDF5 error: H5Dread failed on 'run/ckpt.h5:/weights/conv1': <HDF5's innermost message>
// The exception type follows where the file came from: handles that descend from a file opened
// read-only with File::open (a file the user gave us) throw InputError, everything else
// (files we create or open for writing, dataspaces, types) throws RuntimeFailure.
// HDF5's automatic error-stack printing is turned off (per thread) before the first call, so
// the user sees one clear message.
//
// Element types supported by the typed helpers: uint8_t, int32_t, int64_t, float, double.
#pragma once

#include <hdf5.h>

#include <concepts>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace mpsl::io {

using Shape = std::vector<int64_t>;

// Product of a shape's extents (1 for a scalar, empty shape).
int64_t element_count(const Shape& shape);
// "[2,3,4]"
std::string shape_string(const Shape& shape);

// Which exception a failed call throws (see the file comment).
enum class ErrorKind { Input, Runtime };

// Element types the typed helpers accept, and the HDF5 native type of each.
template <class T>
concept Element = std::same_as<T, uint8_t> || std::same_as<T, int32_t> ||
    std::same_as<T, int64_t> || std::same_as<T, float> || std::same_as<T, double>;
template <Element T>
hid_t native_type() {
  if constexpr (std::same_as<T, uint8_t>)
    return H5T_NATIVE_UINT8;
  else if constexpr (std::same_as<T, int32_t>)
    return H5T_NATIVE_INT32;
  else if constexpr (std::same_as<T, int64_t>)
    return H5T_NATIVE_INT64;
  else if constexpr (std::same_as<T, float>)
    return H5T_NATIVE_FLOAT;
  else
    return H5T_NATIVE_DOUBLE;
}
// "uint8", "int32", "int64", "float32", "float64"
template <Element T>
constexpr const char* element_name() {
  if constexpr (std::same_as<T, uint8_t>)
    return "uint8";
  else if constexpr (std::same_as<T, int32_t>)
    return "int32";
  else if constexpr (std::same_as<T, int64_t>)
    return "int64";
  else if constexpr (std::same_as<T, float>)
    return "float32";
  else
    return "float64";
}

// Turns off HDF5's automatic error-stack printing for the calling thread (idempotent, cheap).
// Every wrapper calls it; call it yourself before raw H5* calls on a new thread.
void quiet_errors();

// Throws InputError/RuntimeFailure: "HDF5 error: <call> failed on '<where>': <HDF5 message>".
[[noreturn]] void throw_h5_error(const char* call, std::string_view where, ErrorKind kind);

// Checked calls for raw H5* use: return `ret` unless it is negative, then throw_h5_error.
inline hid_t check_id(hid_t ret, const char* call, std::string_view where, ErrorKind kind) {
  if (ret < 0) throw_h5_error(call, where, kind);
  return ret;
}
inline herr_t check(herr_t ret, const char* call, std::string_view where, ErrorKind kind) {
  if (ret < 0) throw_h5_error(call, where, kind);
  return ret;
}
// For H5*exists / H5*is_* style calls: negative = error, else 0/1 as bool.
inline bool check_tri(htri_t ret, const char* call, std::string_view where, ErrorKind kind) {
  if (ret < 0) throw_h5_error(call, where, kind);
  return ret > 0;
}

// A move-only owner of one hid_t and the function that closes it.
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);

  Handle() = default;
  // Takes ownership of `id` (must be valid). `where` names it in error messages.
  Handle(hid_t id, Closer closer, std::string where, ErrorKind kind)
      : id_(id), closer_(closer), where_(std::move(where)), kind_(kind) {}
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  Handle(Handle&& other) noexcept { steal(other); }
  Handle& operator=(Handle&& other) noexcept {
    if (this != &other) {
      reset();
      steal(other);
    }
    return *this;
  }
  ~Handle() { reset(); }

  hid_t id() const { return id_; }
  bool valid() const { return id_ >= 0; }
  explicit operator bool() const { return valid(); }
  // Where this object is, for messages: "file.h5:/group/name" (or a description).
  const std::string& where() const { return where_; }
  ErrorKind error_kind() const { return kind_; }

  // Closes now and throws if closing fails (a destructor only logs).
  void close();
  // Gives up ownership without closing.
  hid_t release() {
    hid_t id = id_;
    id_ = H5I_INVALID_HID;
    return id;
  }

 protected:
  // Checked calls on this object: errors name `call` and where().
  hid_t check_id(hid_t ret, const char* call) const {
    return io::check_id(ret, call, where_, kind_);
  }
  herr_t check(herr_t ret, const char* call) const { return io::check(ret, call, where_, kind_); }

 private:
  void reset() noexcept;
  void steal(Handle& other) noexcept {
    id_ = other.id_;
    closer_ = other.closer_;
    where_ = std::move(other.where_);
    kind_ = other.kind_;
    other.id_ = H5I_INVALID_HID;
  }

  hid_t id_ = H5I_INVALID_HID;
  Closer closer_ = nullptr;
  std::string where_;
  ErrorKind kind_ = ErrorKind::Runtime;
};

// A dataspace: the shape of a dataset or attribute (scalar or simple N-dimensional).
class Dataspace : public Handle {
 public:
  Dataspace() = default;
  Dataspace(hid_t id, std::string where, ErrorKind kind);
  static Dataspace scalar();
  static Dataspace simple(const Shape& shape);

  bool is_scalar() const;
  Shape shape() const;  // empty for a scalar
  int64_t element_count() const;
};

// A datatype handle (a copy of an object's stored type, or a type we build).
class Datatype : public Handle {
 public:
  Datatype() = default;
  Datatype(hid_t id, std::string where, ErrorKind kind);

  H5T_class_t type_class() const;
  size_t size() const;
  bool is_variable_string() const;
  bool is_signed() const;  // integers only
  // "uint8", "int64", "float32", "string", ... for messages.
  std::string describe() const;
};

// An attribute attached to a file, group or dataset.
class Attribute : public Handle {
 public:
  Attribute() = default;
  Attribute(hid_t id, std::string where, ErrorKind kind);
  Dataspace space() const;
  Datatype type() const;
};

// Something that can carry attributes: a file (its root group), a group or a dataset. It knows
// the file it lives in and its path inside that file, for messages and for children's names.
class Object : public Handle {
 public:
  Object() = default;
  Object(hid_t id, Closer closer, std::string file, std::string path, ErrorKind kind);

  const std::string& file_path() const { return file_; }
  const std::string& object_path() const { return path_; }  // "/" for a file's root

  bool has_attribute(const std::string& name) const;
  Attribute open_attribute(const std::string& name) const;
  void delete_attribute(const std::string& name);

  // Writers replace an existing attribute of the same name.
  void write_attribute(const std::string& name, const std::string& value);
  void write_attribute(const std::string& name, const char* value) {
    write_attribute(name, std::string(value));
  }
  void write_attribute(const std::string& name, const std::vector<std::string>& values);
  void write_attribute(const std::string& name, int64_t value);
  void write_attribute(const std::string& name, int value) {
    write_attribute(name, static_cast<int64_t>(value));
  }
  void write_attribute(const std::string& name, double value);
  // A 1-D numeric array attribute.
  template <Element T>
  void write_attribute(const std::string& name, std::span<const T> values);
  void write_attribute(const std::string& name, const std::vector<float>& values) {
    write_attribute<float>(name, std::span<const float>(values));
  }
  void write_attribute(const std::string& name, const std::vector<int64_t>& values) {
    write_attribute<int64_t>(name, std::span<const int64_t>(values));
  }
  void write_attribute(const std::string& name, const std::vector<double>& values) {
    write_attribute<double>(name, std::span<const double>(values));
  }

  // Readers throw (naming the attribute) when it is missing or of the wrong kind. Strings may be
  // fixed-length or variable-length (as h5py writes them); numbers are converted by HDF5 from
  // any stored integer or float type.
  std::string read_string_attribute(const std::string& name) const;
  std::vector<std::string> read_strings_attribute(const std::string& name) const;
  int64_t read_int_attribute(const std::string& name) const;
  double read_double_attribute(const std::string& name) const;
  template <Element T>
  std::vector<T> read_array_attribute(const std::string& name) const;
  std::vector<float> read_floats_attribute(const std::string& name) const {
    return read_array_attribute<float>(name);
  }

 protected:
  // "file.h5:/path/child" style names for messages, and child paths.
  std::string child_path(const std::string& name) const;
  std::string attribute_where(const std::string& name) const;

 private:
  std::string file_, path_;
};

// A dataset: an N-dimensional array of one element type.
class Dataset : public Object {
 public:
  Dataset() = default;
  Dataset(hid_t id, std::string file, std::string path, ErrorKind kind);

  Dataspace space() const;
  Datatype type() const;
  Shape shape() const;
  int64_t element_count() const;

  // Whole-dataset transfer; `data` holds element_count() values. HDF5 converts between the
  // stored and the memory type (check type() first where that matters).
  template <Element T>
  void write(const T* data);
  template <Element T>
  void read(T* data) const;
  template <Element T>
  std::vector<T> read() const {
    std::vector<T> out(static_cast<size_t>(element_count()));
    read(out.data());
    return out;
  }
  // Rows [first, first + count) along the first dimension (a hyperslab), into / from `data`.
  template <Element T>
  void read_rows(int64_t first, int64_t count, T* data) const;
  template <Element T>
  void write_rows(int64_t first, int64_t count, const T* data);
};

// How create_dataset lays out the data. chunk empty = contiguous (or the default chunk when
// compression is asked for); deflate 0 = off, 1..9 = gzip level (skipped if unavailable).
struct DatasetOptions {
  Shape chunk;
  int deflate = 0;
};

class Group;

// A file or group: something that holds named links (groups and datasets).
class Location : public Object {
 public:
  using Object::Object;

  // Whether every component of a relative or absolute path ("a/b/c") exists.
  bool exists(const std::string& path) const;

  Group create_group(const std::string& name);  // intermediate groups are created too
  Group open_group(const std::string& name) const;
  Group require_group(const std::string& name);  // open or create

  Dataset create_dataset(const std::string& name, hid_t type, const Shape& shape,
                         const DatasetOptions& options = {});
  template <Element T>
  Dataset create_dataset(const std::string& name, const Shape& shape,
                         const DatasetOptions& options = {}) {
    return create_dataset(name, native_type<T>(), shape, options);
  }
  Dataset open_dataset(const std::string& name) const;

  // Whole datasets in one call. `data` has element_count(shape) values.
  template <Element T>
  Dataset write_dataset(const std::string& name, const Shape& shape, std::span<const T> data,
                        const DatasetOptions& options = {});
  template <Element T>
  Dataset write_dataset(const std::string& name, const Shape& shape, const std::vector<T>& data,
                        const DatasetOptions& options = {}) {
    return write_dataset<T>(name, shape, std::span<const T>(data), options);
  }
  // Reads a whole dataset; `shape_out` (optional) receives its shape.
  template <Element T>
  std::vector<T> read_dataset(const std::string& name, Shape* shape_out = nullptr) const;

  // Names of the direct children (groups and datasets), in name order.
  std::vector<std::string> children() const;
};

class Group : public Location {
 public:
  Group() = default;
  Group(hid_t id, std::string file, std::string path, ErrorKind kind);
};

class File : public Location {
 public:
  File() = default;

  // Creates (truncates) a file for writing. Failures are RuntimeFailure.
  static File create(const std::string& path);
  // Opens an existing file a user gave us, read-only. A missing file, a folder or a file that is
  // not HDF5 is an InputError naming the path; so is any later failure reading from it.
  static File open(const std::string& path);
  // Opens an existing file for reading and writing (our own files). Failures are RuntimeFailure.
  static File open_read_write(const std::string& path);

  const std::string& path() const { return file_path(); }
  void flush();

 private:
  File(hid_t id, const std::string& path, ErrorKind kind);
};

// Whether `path` is a readable HDF5 file (false for missing files and other formats).
bool is_hdf5_file(const std::string& path);

// Writes `path` atomically: `write(tmp)` writes the whole file at tmp = path + ".tmp-<pid>", which
// is then fsynced and renamed onto `path` (and the folder fsynced). If anything throws, the
// temporary file is removed and `path` is left as it was.
void atomic_write(const std::string& path,
                  const std::function<void(const std::string& tmp_path)>& write);

// The same for an HDF5 file: `fill` receives the freshly created file; it is flushed and closed
// (every handle made inside `fill` must be closed by then) before the rename.
void atomic_write_h5(const std::string& path, const std::function<void(File& file)>& fill);

}  // namespace mpsl::io
