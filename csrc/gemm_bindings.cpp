// Bindings of the GEMM-family kernels (linear, quantize, int8_linear). Called from bindings.cpp.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_gemm(py::module_& m) { (void)m; }
