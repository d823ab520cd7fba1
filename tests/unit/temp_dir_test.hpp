// Test helpers: expect_error, and a GoogleTest fixture with a fresh folder per test, removed
// afterwards, that also checks that the test closed every HDF5 handle it opened.
#pragma once

#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <filesystem>
#include <initializer_list>
#include <string>
#include <vector>

namespace mpsl::testing {

// Runs `fn`, expects an exception E whose message contains every one of `parts`.
template <class E, class Fn>
void expect_error(Fn&& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
    ADD_FAILURE() << "expected an exception";
  } catch (const E& e) {
    const std::string msg = e.what();
    for (const auto& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos) << msg << "\nlacks: " << p;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    dir_ = std::filesystem::temp_directory_path() /
           ("mpsl-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    std::filesystem::create_directories(dir_);
    // Identifiers open before the test: none, unless HDF5's C++ library is loaded (its
    // predefined types are open identifiers), as in sanitizer builds.
    open_before_ = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL);
  }
  void TearDown() override {
    // Every handle the test made is closed again (no leaked HDF5 identifiers).
    EXPECT_EQ(H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL), open_before_);
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  ssize_t open_before_ = 0;
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  // Names of the files in the folder (to catch leftover temporaries).
  std::vector<std::string> files() const {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(dir_))
      out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }
  std::filesystem::path dir_;
};

}  // namespace mpsl::testing
