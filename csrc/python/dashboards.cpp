// _core.FeatureStats over the dashboards' accumulator (csrc/sae/dashboards.hpp):
// numpy batches in (the GIL released while it computes), its state as a dict of
// numpy arrays out and back.
#include "sae/dashboards.hpp"

#include <string>

#include "python/bindings.hpp"
#include "python/numpy_buffers.hpp"

namespace {

template <class T>
using In = py::array_t<T, py::array::c_style | py::array::forcecast>;

// a's shape must be `shape` (rows < 0: any number of rows)
void check_shape(const py::array& a, std::vector<int64_t> shape, const char* name) {
  bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = shape[i] < 0 || a.shape(i) == shape[i];
  if (!ok) {
    std::string want;
    for (int64_t s : shape) want += (want.empty() ? "" : ", ") + (s < 0 ? std::string("n") : std::to_string(s));
    throw std::invalid_argument(std::string(name) + " must have shape [" + want + "]");
  }
}

// an exact dtype: a state saved as another type is another state
template <class T>
std::vector<T> state_array(const py::dict& d, const char* name, const std::vector<int64_t>& shape) {
  if (!d.contains(name)) throw std::invalid_argument(std::string("the state has no ") + name);
  const py::array a = py::reinterpret_borrow<py::array>(py::array::ensure(d[name]));
  if (!a || !a.dtype().is(py::dtype::of<T>()))
    throw std::invalid_argument(std::string(name) + " must be an array of " + std::string(py::str(py::dtype::of<T>())));
  check_shape(a, shape, name);
  const In<T> c = In<T>::ensure(a);
  return std::vector<T>(c.data(), c.data() + c.size());
}

py::dict state(const tmech::FeatureStats& s) {
  py::dict d;
  const tmech::FeatureState& st = s.state();
  d["n_tokens"] = tmech::owned_array(std::vector<int64_t>{st.n_tokens}, {1});
  d["n_rows"] = tmech::owned_array(std::vector<int64_t>{st.n_rows}, {1});
  d["context"] = tmech::owned_array(std::vector<int64_t>{st.context}, {1});
  tmech::FeatureState copy = st;
  copy.visit([&](const char* name, auto& v) {
    if (std::string(name) == "cooc" && !s.config().cooccurrence) return;
    const std::vector<int64_t> shape = s.shape(name);
    d[name] = tmech::owned_array(std::move(v), std::vector<py::ssize_t>(shape.begin(), shape.end()));
  });
  return d;
}

void load_state(tmech::FeatureStats& s, const py::dict& d) {
  tmech::FeatureState st;
  st.n_tokens = state_array<int64_t>(d, "n_tokens", {1})[0];
  st.n_rows = state_array<int64_t>(d, "n_rows", {1})[0];
  st.context = state_array<int64_t>(d, "context", {1})[0];
  st.visit([&](const char* name, auto& v) {
    using T = typename std::decay_t<decltype(v)>::value_type;
    if (std::string(name) == "cooc" && !s.config().cooccurrence) return;
    v = state_array<T>(d, name, s.shape(name));
  });
  s.load(std::move(st));
}

}  // namespace

void bind_dashboards(py::module_& m) {
  py::class_<tmech::FeatureStats>(m, "FeatureStats")
      .def(py::init([](int64_t n_features, int64_t top_k, int64_t n_intervals, int64_t per_interval, int64_t n_bins,
                       int64_t before, int64_t after, bool cooccurrence, int64_t cooc_cap, uint64_t seed) {
             return new tmech::FeatureStats(
                 {n_features, top_k, n_intervals, per_interval, n_bins, before, after, cooccurrence, cooc_cap, seed});
           }),
           py::arg("n_features"), py::arg("top_k"), py::arg("n_intervals"), py::arg("per_interval"), py::arg("n_bins"),
           py::arg("before"), py::arg("after"), py::arg("cooccurrence"), py::arg("cooc_cap"), py::arg("seed"))
      .def(
          "add_sparse",
          [](tmech::FeatureStats& s, const py::array& idx_in, In<float> val, In<uint8_t> valid, int64_t first_row,
             int64_t context) {
            if (!idx_in.dtype().is(py::dtype::of<int32_t>()))  // a cast would wrap larger indices around
              throw std::invalid_argument("idx must be an array of int32");
            const In<int32_t> idx = In<int32_t>::ensure(idx_in);
            check_shape(idx, {-1, -1}, "idx");
            check_shape(val, {idx.shape(0), idx.shape(1)}, "val");
            check_shape(valid, {idx.shape(0)}, "valid");
            py::gil_scoped_release nogil;
            s.add_sparse(idx.data(), val.data(), idx.shape(0), idx.shape(1), valid.data(), first_row, context);
          },
          py::arg("idx"), py::arg("val"), py::arg("valid"), py::arg("first_row"), py::arg("context"))
      .def(
          "add_dense",
          [](tmech::FeatureStats& s, In<float> acts, In<uint8_t> valid, int64_t first_row, int64_t context) {
            check_shape(acts, {-1, s.config().n_features}, "acts");
            check_shape(valid, {acts.shape(0)}, "valid");
            py::gil_scoped_release nogil;
            s.add_dense(acts.data(), acts.shape(0), valid.data(), first_row, context);
          },
          py::arg("acts"), py::arg("valid"), py::arg("first_row"), py::arg("context"))
      .def("state", &state)
      .def("load_state", &load_state, py::arg("state"))
      .def_property_readonly("n_features", [](const tmech::FeatureStats& s) { return s.config().n_features; })
      .def_property_readonly("top_k", [](const tmech::FeatureStats& s) { return s.config().top_k; })
      .def_property_readonly("n_intervals", [](const tmech::FeatureStats& s) { return s.config().n_intervals; })
      .def_property_readonly("per_interval", [](const tmech::FeatureStats& s) { return s.config().per_interval; })
      .def_property_readonly("n_bins", [](const tmech::FeatureStats& s) { return s.config().n_bins; })
      .def_property_readonly("before", [](const tmech::FeatureStats& s) { return s.config().before; })
      .def_property_readonly("after", [](const tmech::FeatureStats& s) { return s.config().after; })
      .def_property_readonly("cooccurrence", [](const tmech::FeatureStats& s) { return s.config().cooccurrence; })
      .def_property_readonly("memory_bytes", &tmech::FeatureStats::memory_bytes);
}
