// _core.HookPlan (a plan of edits at hook points, Python callbacks among
// them), _core.NativeHook (the base of hook actions written in C++) and the
// hook names.
#include "python/hooks.hpp"

#include <pybind11/stl.h>

#include <cstring>
#include <memory>
#include <string>

#include "python/bindings.hpp"
#include "python/numpy_buffers.hpp"

namespace {

// Calls a Python function with a copy of the activation; the function
// returns the array to write back (the Python layer checks its shape).
struct PyCallback : tmech::HookCallback {
  py::function fn;
  explicit PyCallback(py::function f) : fn(std::move(f)) {}
  ~PyCallback() override {
    py::gil_scoped_acquire gil;
    fn = py::function();
  }
  void call(int, int64_t, std::vector<float>& buffer, const std::vector<int64_t>& shape) override {
    py::gil_scoped_acquire gil;
    std::vector<py::ssize_t> dims(shape.begin(), shape.end());
    FloatArray arr(dims);
    std::memcpy(arr.mutable_data(), buffer.data(), buffer.size() * sizeof(float));
    py::object out = fn(arr);  // a Python exception propagates as error_already_set
    auto res = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(out);
    if (!res || static_cast<size_t>(res.size()) != buffer.size())
      throw std::invalid_argument("hook function returned an array of the wrong size");
    std::memcpy(buffer.data(), res.data(), buffer.size() * sizeof(float));
  }
};

}  // namespace

tmech::Edit PyHookPlan::make(tmech::EditType type, std::vector<int64_t> heads, std::vector<int64_t> positions,
                             const py::object& values, float scalar) {
  tmech::Edit e;
  e.type = type;
  e.heads = std::move(heads);
  e.positions = std::move(positions);
  e.scalar = scalar;
  if (!values.is_none()) {
    auto arr = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(values);
    if (!arr) throw std::invalid_argument("edit values must be convertible to float32");
    keep.push_back(arr);
    e.values = arr.data();
    e.values_shape.assign(arr.shape(), arr.shape() + arr.ndim());
  }
  return e;
}

void bind_hooks(py::module_& m) {
  m.def(
      "hook_table",
      [] {
        const char* const heads[] = {nullptr, "n_heads", "n_key_value_heads"};
        const char* const widths[] = {"d_model", "d_mlp", "d_head", "key_pos", "1", "d_vocab"};
        py::list rows;
        for (int k = 0; k < tmech::kHookKinds; ++k) {
          const tmech::HookInfo& h = tmech::hook_info(static_cast<tmech::HookKind>(k));
          const char* head = heads[static_cast<int>(h.heads)];
          rows.append(py::dict(py::arg("name") = h.name, py::arg("per_layer") = h.per_layer,
                               py::arg("heads") = head ? py::object(py::str(head)) : py::object(py::none()),
                               py::arg("width") = widths[static_cast<int>(h.width)]));
        }
        return rows;
      },
      "The hook points in the order a forward pass reaches them: name (after blocks.N. when per_layer), "
      "heads (the config field sizing its head axis, or None) and width (its last axis: a config field, "
      "key_pos or 1)");
  m.def("hook_names", [](int64_t n_layers) {
    std::vector<std::string> names;
    for (int i = 0; i < tmech::hook_count(n_layers); ++i) names.push_back(tmech::hook_name(i, n_layers));
    return names;
  });

  // Base of hook actions implemented in C++ (e.g. an SAE splice): added to a
  // plan with HookPlan.native(id, action) and run without the GIL.
  py::class_<tmech::HookCallback, std::shared_ptr<tmech::HookCallback>>(m, "NativeHook");

  py::class_<PyHookPlan>(m, "HookPlan")
      .def(py::init<int64_t>(), py::arg("n_layers"))
      .def("capture",
           [](PyHookPlan& p, int id) { p.plan.add(id, p.make(tmech::EditType::capture, {}, {}, py::none(), 0.f)); })
      .def("replace",
           [](PyHookPlan& p, int id, py::object values, std::vector<int64_t> heads, std::vector<int64_t> positions) {
             p.plan.add(id, p.make(tmech::EditType::replace, heads, positions, values, 0.f));
           })
      .def("fill",
           [](PyHookPlan& p, int id, py::object values, float scalar, std::vector<int64_t> heads,
              std::vector<int64_t> positions) {
             p.plan.add(id, p.make(tmech::EditType::fill, heads, positions, values, scalar));
           })
      .def("add",
           [](PyHookPlan& p, int id, py::object values, float coeff, std::vector<int64_t> heads,
              std::vector<int64_t> positions) {
             p.plan.add(id, p.make(tmech::EditType::add, heads, positions, values, coeff));
           })
      .def("scale",
           [](PyHookPlan& p, int id, float factor, std::vector<int64_t> heads, std::vector<int64_t> positions) {
             p.plan.add(id, p.make(tmech::EditType::scale, heads, positions, py::none(), factor));
           })
      .def("callback",
           [](PyHookPlan& p, int id, py::function fn) {
             tmech::Edit e = p.make(tmech::EditType::callback, {}, {}, py::none(), 0.f);
             e.callback = std::make_shared<PyCallback>(std::move(fn));
             p.plan.add(id, std::move(e));
           })
      .def("native",
           [](PyHookPlan& p, int id, std::shared_ptr<tmech::HookCallback> action) {
             tmech::Edit e = p.make(tmech::EditType::callback, {}, {}, py::none(), 0.f);
             e.callback = std::move(action);
             p.plan.add(id, std::move(e));
           })
      .def_property(
          "attention_input",
          [](const PyHookPlan& p) {
            const char* const names[] = {"shared", "attn_in", "split_qkv"};
            return names[static_cast<int>(p.plan.attention_input())];
          },
          [](PyHookPlan& p, const std::string& name) {
            p.plan.set_attention_input(tmech::parse_attention_input(name));
          },
          "How blocks feed their attention: 'shared' (one input for every head), 'attn_in' (a copy of resid_pre "
          "per head, hook_attn_in) or 'split_qkv' (one per head for each of q, k and v, hook_q_input, ...)")
      .def("take_captured", [](PyHookPlan& p) {
        py::list out;
        for (auto& [id, c] : p.plan.captured())
          out.append(py::make_tuple(id, tmech::to_numpy(std::move(c.data), c.shape)));
        p.plan.captured().clear();
        return out;
      });
}
