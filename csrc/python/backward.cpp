// Tape: what a forward keeps for a backward (core/tape.hpp), opaque to
// Python; and Model.backward's conversion (model.cpp binds the method).
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "core/forward.hpp"
#include "core/tape.hpp"
#include "python/bindings.hpp"
#include "python/hooks.hpp"

void bind_backward(py::module_& m) {
  py::class_<tmech::Tape>(m, "Tape")
      .def(py::init([](int64_t from_layer) {
             tmech::Tape t;
             t.from = from_layer;
             return t;
           }),
           py::arg("from_layer") = 0,
           "An empty record: Model.forward(..., tape=) fills it from block from_layer on, Model.backward reads it")
      .def_property_readonly("from_layer", [](const tmech::Tape& t) { return t.from; })
      .def_property_readonly("recorded", [](const tmech::Tape& t) { return t.model != 0; });
}

void model_backward(tmech::Model& model, tmech::Tape& tape, const FloatArray& grad_logits, PyHookPlan* plan,
                    bool freeze_pattern, bool freeze_scales) {
  const int64_t V = model.config().d_vocab;
  if (tape.model == 0) throw std::invalid_argument("this tape was not recorded by a completed forward");
  if (grad_logits.ndim() != 3 || grad_logits.shape(0) != tape.batch || grad_logits.shape(1) != tape.n_tokens ||
      grad_logits.shape(2) != V)
    throw std::invalid_argument("grad_logits must be [" + std::to_string(tape.batch) + ", " +
                                std::to_string(tape.n_tokens) + ", " + std::to_string(V) + "], the tape's logits");
  tmech::BackwardOptions options;
  options.freeze_pattern = freeze_pattern;
  options.freeze_scales = freeze_scales;
  py::gil_scoped_release nogil;
  model.backward(tape, grad_logits.data(), plan ? &plan->plan : nullptr, options);
}
