// Core buffers handed to numpy without a copy (bindings only).
#pragma once
#include <pybind11/numpy.h>

#include <cstdint>
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

}  // namespace tmech
