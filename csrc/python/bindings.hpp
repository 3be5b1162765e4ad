// The pybind11 layer: one file per bound object, each converting only (numpy
// in, numpy out; the core parses and checks). C++ exceptions become Python
// ones (invalid_argument -> ValueError, out_of_range -> IndexError). The
// Python package (tinymech/) owns the user-facing API and every friendly
// check; this layer checks only what keeps memory safe. module.cpp calls
// each file's bind_ function.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

namespace py = pybind11;
using FloatArray = py::array_t<float, py::array::c_style>;

void bind_runtime(py::module_& m);     // runtime.cpp: the thread pool, kept buffers
void bind_ops(py::module_& m);         // ops.cpp: bfloat16, losses, sampling, top-k, dequantizing
void bind_kernels(py::module_& m);     // kernels.cpp: _core.kernels, the kernel table for tests
void bind_hooks(py::module_& m);       // hooks.cpp: NativeHook, HookPlan, hook names
void bind_sae(py::module_& m);         // sae.cpp: Sae, SaeSplice, the screen mode
void bind_train(py::module_& m);       // train.cpp: Trainer (SAE and transcoder training)
void bind_dashboards(py::module_& m);  // dashboards.cpp: FeatureStats (feature dashboards' accumulator)
void bind_kv_cache(py::module_& m);    // kv_cache.cpp: KVCache
void bind_backward(py::module_& m);    // backward.cpp: Tape (a forward's record for a backward)
void bind_model(py::module_& m);       // model.cpp: Model

namespace tmech {
class Model;
struct Tape;
}  // namespace tmech
struct PyHookPlan;
// Model.backward (model.cpp binds it on Model; backward.cpp converts): G [batch, pos, d_vocab]
void model_backward(tmech::Model& model, tmech::Tape& tape, const FloatArray& grad_logits, PyHookPlan* plan,
                    bool freeze_pattern, bool freeze_scales);
