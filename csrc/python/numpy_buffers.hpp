// Core buffers and vectors handed to numpy without a copy (bindings only).
#pragma once
#include <pybind11/numpy.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "runtime/float_buffers.hpp"

namespace tmech {

// A numpy array that takes over the buffer; its memory returns to the buffer
// pool when the array is dropped.
inline pybind11::array_t<float, pybind11::array::c_style> to_numpy(FloatBuffer&& data,
                                                                   const std::vector<int64_t>& shape) {
  float* raw = data.release();
  pybind11::capsule owner(raw, [](void* p) { FreeFloats()(static_cast<float*>(p)); });
  std::vector<pybind11::ssize_t> dims(shape.begin(), shape.end());
  return pybind11::array_t<float, pybind11::array::c_style>(dims, raw, owner);
}

// A numpy array that takes over a std::vector's storage.
template <class T>
pybind11::array_t<T> owned_array(std::vector<T>&& data, std::vector<pybind11::ssize_t> shape) {
  auto* owned = new std::vector<T>(std::move(data));
  pybind11::capsule owner(owned, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return pybind11::array_t<T>(shape, owned->data(), owner);
}

}  // namespace tmech
