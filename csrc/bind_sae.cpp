// pybind11 bindings of the SAE core (csrc/sae.hpp).
#include <pybind11/pybind11.h>

namespace py = pybind11;

void register_sae(py::module_& m) { (void)m; }
