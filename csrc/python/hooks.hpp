// HookPlan's binding (hooks.cpp), which Model.forward takes.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <vector>

#include "core/hooks.hpp"

struct PyHookPlan {
  tmech::HookPlan plan;
  std::vector<pybind11::object> keep;  // arrays that edits point into
  explicit PyHookPlan(int64_t n_layers) : plan(n_layers) {}

  tmech::Edit make(tmech::EditType type, std::vector<int64_t> heads, std::vector<int64_t> positions,
                   const pybind11::object& values, float scalar);
};
