// The _core module: a switchboard calling each bound object's bind_ function
// (python/bindings.hpp), the core's errors as Python exceptions, and Ctrl-C.
#include <pybind11/pybind11.h>

#include <chrono>

#include "core/forward.hpp"
#include "core/kv_cache.hpp"
#include "python/bindings.hpp"
#include "runtime/checked.hpp"

namespace {

// Ctrl-C during a long pass: before each block, a pass on Python's main
// thread (the one that runs signal handlers) runs the pending handlers, at
// most every 20 ms (taking the GIL before every block of a decoding step would
// cost more than the blocks). A handler's exception (KeyboardInterrupt) ends
// the pass.
unsigned long g_main_thread = 0;

void check_signals() {
  if (PyThread_get_thread_ident() != g_main_thread) return;
  using Clock = std::chrono::steady_clock;
  static Clock::time_point last;  // only the main thread comes here
  const Clock::time_point now = Clock::now();
  if (now - last < std::chrono::milliseconds(20)) return;
  last = now;
  py::gil_scoped_acquire gil;
  if (PyErr_CheckSignals() != 0) throw py::error_already_set();
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "tinymech's C++ core: transformer forward passes, KV cache, hook plans";

  g_main_thread = py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
  tmech::set_interrupt_check(check_signals);

  py::register_exception<tmech::ContextOverflow>(m, "ContextOverflow", PyExc_IndexError);
  py::register_exception<tmech::SizeOverflow>(m, "SizeOverflow", PyExc_MemoryError);
  py::register_exception<tmech::CacheMismatch>(m, "CacheMismatch", PyExc_ValueError);

  // in this order: a class is bound before the functions that take or return it
  bind_runtime(m);
  bind_ops(m);
  bind_kernels(m);
  bind_hooks(m);
  bind_sae(m);
  bind_train(m);
  bind_dashboards(m);
  bind_kv_cache(m);
  bind_backward(m);
  bind_model(m);
}
