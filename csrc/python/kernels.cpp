// _core.kernels: the active kernel variant's table entries and the machine
// probes, called directly (tests and benchmarks only).
#include "kernels/kernels.hpp"

#include <pybind11/stl.h>

#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "ops/matmul.hpp"
#include "ops/probes.hpp"
#include "ops/rows.hpp"
#include "python/bindings.hpp"
#include "runtime/float_buffers.hpp"

void bind_kernels(py::module_& m) {
  py::module_ k = m.def_submodule("kernels", "Direct access to the SIMD kernels, for tests");
  k.def("variant", [] { return std::string(tmech::kernels::active().name); });
  k.def("available", [] {
    const tmech::KernelTable* all[8];
    int n = tmech::kernels::available(all, 8);
    std::vector<std::string> names;
    for (int i = 0; i < n && i < 8; ++i) names.emplace_back(all[i]->name);
    return names;
  });
  k.def(
      "bf16_dot_products", [] { return tmech::kernels::active().bf16_dot_products; },
      "whether bfloat16-weight matmuls of more than small_rows() rows round A to bfloat16 "
      "and use bfloat16 dot products (AVX512-BF16)");
  k.def(
      "small_rows", [] { return tmech::kMatmulSmallM; },
      "up to this many rows, a matmul streams B once (the decode path)");
  k.def(
      "stream_rows_kn", [] { return tmech::kernels::active().stream_rows_kn; },
      "up to this many rows, a matmul over B stored [K, N] streams B once (but over "
      "bfloat16 B where bf16_dot_products(): small_rows())");
  k.def("select", [](const std::string& name) {
    if (!tmech::kernels::select(name.c_str()))
      throw std::invalid_argument("kernel variant '" + name + "' is not available on this CPU");
  });
  // C = A @ B (+ bias); B given as [K, N], or as [N, K] when b_transposed;
  // B float32 or bfloat16 (uint16).
  k.def(
      "matmul",
      [](FloatArray A, py::array B, std::optional<FloatArray> bias, bool b_transposed) {
        const bool bf16 = B.dtype().is(py::dtype::of<uint16_t>());
        if (!bf16) B = FloatArray::ensure(B);
        if (!B || !(B.flags() & py::array::c_style))
          throw std::invalid_argument("B must be a C-contiguous float32 or uint16 (bfloat16) array");
        if (A.ndim() != 2 || B.ndim() != 2) throw std::invalid_argument("matmul takes 2-D arrays");
        const int64_t M = A.shape(0), K = A.shape(1);
        const int64_t N = b_transposed ? B.shape(0) : B.shape(1);
        if ((b_transposed ? B.shape(1) : B.shape(0)) != K) throw std::invalid_argument("inner sizes differ");
        if (bias && (bias->ndim() != 1 || bias->shape(0) != N)) throw std::invalid_argument("bias must be [N]");
        const tmech::Matrix Bm = bf16 ? tmech::Matrix(static_cast<const uint16_t*>(B.data()))
                                      : tmech::Matrix(static_cast<const float*>(B.data()));
        FloatArray C({M, N});
        {
          py::gil_scoped_release nogil;
          tmech::matmul(A.data(), M, K, K, Bm, N, b_transposed ? 1 : N, b_transposed ? K : 1,
                        bias ? bias->data() : nullptr, C.mutable_data(), N);
        }
        return C;
      },
      py::arg("A"), py::arg("B"), py::arg("bias") = py::none(), py::arg("b_transposed") = false);
  k.def(
      "round_bf16",
      [](FloatArray x) {
        py::array_t<uint16_t> out(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
        tmech::kernels::active().round_bf16(x.data(), out.mutable_data(), x.size());
        return out;
      },
      "float32 -> bfloat16 bits (uint16), to nearest, ties to even");
  k.def("pooled_bytes", &tmech::pooled_bytes, "bytes of freed capture buffers kept for reuse");
  k.def("transpose", [](FloatArray x) {
    if (x.ndim() != 2) throw std::invalid_argument("transpose takes a 2-D array");
    FloatArray out({x.shape(1), x.shape(0)});
    tmech::kernels::active().transpose(x.data(), x.shape(1), x.shape(0), x.shape(1), out.mutable_data(), x.shape(0));
    return out;
  });
  k.def(
      "screen",
      [](FloatArray x, FloatArray w, float alpha, FloatArray limit) {
        if (x.ndim() != 1 || w.size() != x.size() || limit.size() != x.size())
          throw std::invalid_argument("screen takes x, w and limit of one length");
        std::vector<int32_t> out(static_cast<size_t>(x.size()));
        out.resize(static_cast<size_t>(
            tmech::kernels::active().screen(x.data(), w.data(), alpha, limit.data(), x.size(), out.data())));
        return out;
      },
      "indices j where x[j] + alpha w[j] <= limit[j] fails, or x[j] is -inf");
  k.def("layernorm", [](FloatArray x, FloatArray w, FloatArray b, float eps) {
    if (x.ndim() != 2 || w.size() != x.shape(1) || b.size() != x.shape(1))
      throw std::invalid_argument("layernorm takes x [rows, n], w [n], b [n]");
    FloatArray out({x.shape(0), x.shape(1)});
    tmech::layernorm_rows(x.data(), x.shape(0), x.shape(1), eps, w.data(), b.data(), out.mutable_data());
    return out;
  });
  k.def("gelu_new", [](FloatArray x) {
    FloatArray out(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
    std::memcpy(out.mutable_data(), x.data(), x.size() * sizeof(float));
    tmech::gelu_new_rows(out.mutable_data(), out.size());
    return out;
  });
  k.def("softmax", [](FloatArray x) {
    FloatArray out(std::vector<py::ssize_t>{x.size()});
    std::memcpy(out.mutable_data(), x.data(), x.size() * sizeof(float));
    tmech::kernels::active().softmax(out.mutable_data(), out.size());
    return out;
  });
  k.def("exp", [](FloatArray x) {
    FloatArray out(std::vector<py::ssize_t>{x.size()});
    tmech::kernels::active().exp(x.data(), out.mutable_data(), x.size());
    return out;
  });
  // Machine probes for benchmarks/roofline.py, on the pool's current threads.
  k.def(
      "fma_peak_gflops",
      [](double seconds) {
        py::gil_scoped_release nogil;
        return tmech::fma_peak_gflops(seconds);
      },
      py::arg("seconds") = 0.5);
  k.def(
      "bf16_dot_peak_gflops",
      [](double seconds) {
        py::gil_scoped_release nogil;
        return tmech::bf16_dot_peak_gflops(seconds);
      },
      py::arg("seconds") = 0.5, "0 where the active kernel variant has no bfloat16 dot products");
  k.def(
      "read_bandwidth_gbs",
      [](int64_t bytes, int repeats) {
        py::gil_scoped_release nogil;
        return tmech::read_bandwidth_gbs(bytes, repeats);
      },
      py::arg("bytes") = int64_t{512} << 20, py::arg("repeats") = 3, "the best of read_bandwidth_probes' ways");
  k.def(
      "read_bandwidth_probes",
      [](int64_t bytes, int repeats, py::object ways_arg, bool mean) {
        std::vector<std::string> ways;
        if (!ways_arg.is_none()) {
          if (py::isinstance<py::str>(ways_arg)) throw std::invalid_argument("ways is a list of names, not one string");
          for (py::handle way : py::iter(ways_arg)) {
            if (!py::isinstance<py::str>(way)) throw std::invalid_argument("ways holds names (strings)");
            ways.push_back(way.cast<std::string>());
          }
        }
        std::vector<std::pair<std::string, double>> gbs;
        {
          py::gil_scoped_release nogil;
          gbs = tmech::read_bandwidth_probes(bytes, repeats, ways, mean);
        }
        py::dict d;
        for (const auto& [way, value] : gbs) d[py::str(way)] = value;
        return d;
      },
      py::arg("bytes") = int64_t{512} << 20, py::arg("repeats") = 3, py::arg("ways") = py::none(),
      py::arg("mean") = false,
      "GB/s of each way of reading a large buffer (all of read_ways() unless `ways` names some): one stream per "
      "thread, 2/4/6/8 stretches per thread side by side, a 1-row matmul; the best of `repeats` passes, or with "
      "mean=True all passes' bytes over their time");
  k.def("read_ways", [] { return tmech::read_ways(); });
  k.def("dot", [](FloatArray a, FloatArray b) {
    if (a.size() != b.size()) throw std::invalid_argument("dot needs equal lengths");
    return tmech::kernels::active().dot(a.data(), b.data(), a.size());
  });
}
