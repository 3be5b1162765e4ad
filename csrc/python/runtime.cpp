// The thread pool's size and the pool of kept capture buffers.
#include "python/bindings.hpp"
#include "runtime/float_buffers.hpp"
#include "runtime/threads.hpp"

void bind_runtime(py::module_& m) {
  m.def("set_num_threads", &tmech::set_num_threads, py::arg("n"));
  m.attr("MAX_THREADS") = tmech::kMaxThreads;
  m.def("get_num_threads", &tmech::num_threads);
  m.def("release_pooled_buffers", &tmech::release_pooled_buffers,
        "frees the kept buffers of dropped activation caches; returns the bytes given back");
}
