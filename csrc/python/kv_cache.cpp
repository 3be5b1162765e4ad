// _core.KVCache: the core's KV cache, each method run holding the cache.
#include "core/kv_cache.hpp"

#include <pybind11/stl.h>

#include <vector>

#include "python/bindings.hpp"

namespace {

// f() run holding the cache, without the GIL: a pass on another thread may be
// using the cache, and its Python hooks need the GIL to finish.
template <class F>
auto holding(tmech::KVCache& cache, F f) {
  py::gil_scoped_release nogil;
  tmech::OwnedLock lock(cache.mutex(), tmech::KVCache::kInUse);
  return f();
}

}  // namespace

void bind_kv_cache(py::module_& m) {
  py::class_<tmech::KVCache>(m, "KVCache")
      .def_property_readonly("batch", &tmech::KVCache::batch)
      .def_property_readonly("n_past", &tmech::KVCache::n_past)
      .def_property_readonly("capacity", &tmech::KVCache::capacity)
      .def_property_readonly("n_ctx", &tmech::KVCache::n_ctx)
      .def_property_readonly("left_padding",
                             [](tmech::KVCache& c) {
                               return holding(c, [&] {
                                 std::vector<int64_t> rows;
                                 for (int64_t b = 0; c.padded() && b < c.batch(); ++b)
                                   rows.push_back(c.left_padding(b));
                                 return rows;
                               });
                             })
      .def("reset", [](tmech::KVCache& c) { holding(c, [&] { c.reset(); }); })
      .def(
          "truncate", [](tmech::KVCache& c, int64_t n) { holding(c, [&] { c.truncate(n); }); }, py::arg("n"))
      .def(
          "reserve", [](tmech::KVCache& c, int64_t n) { holding(c, [&] { c.reserve(n); }); }, py::arg("positions"),
          "make room for this many positions now (no regrowth while decoding up to them)")
      .def("fork", [](tmech::KVCache& c) { return holding(c, [&] { return c.fork(); }); });
}
