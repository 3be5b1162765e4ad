// The threaded operations on whole arrays: float32 -> bfloat16, per-token
// losses, log-sum-exp, sampling, top-k and GGML dequantizing.
#include <pybind11/stl.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "ops/bf16.hpp"
#include "ops/dequantize.hpp"
#include "ops/rows.hpp"
#include "ops/sampling.hpp"
#include "ops/top_k.hpp"
#include "python/bindings.hpp"
#include "runtime/checked.hpp"

void bind_ops(py::module_& m) {
  m.def(
      "to_bf16",
      [](FloatArray x, bool transpose) {
        if (transpose && x.ndim() != 2) throw std::invalid_argument("only a 2-D array can be transposed");
        std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
        const int64_t rows = x.ndim() == 2 ? x.shape(0) : 1, cols = x.ndim() == 2 ? x.shape(1) : x.size();
        if (transpose) std::swap(shape[0], shape[1]);
        py::array_t<uint16_t> out(shape);
        {
          py::gil_scoped_release nogil;
          tmech::to_bf16_matrix(x.data(), rows, cols, transpose, out.mutable_data());
        }
        return out;
      },
      py::arg("x"), py::arg("transpose") = false,
      "float32 -> bfloat16 bits (uint16), to nearest, ties to even, as torch rounds; transposed if asked");
  m.def(
      "token_losses",
      [](FloatArray logits, py::array_t<int32_t, py::array::c_style> tokens) {
        if (logits.ndim() != 3 || tokens.ndim() != 2 || tokens.shape(0) != logits.shape(0) ||
            tokens.shape(1) != logits.shape(1))
          throw std::invalid_argument("logits must be [batch, pos, d_vocab] and tokens [batch, pos]");
        const int64_t B = logits.shape(0), T = logits.shape(1), V = logits.shape(2);
        FloatArray out(std::vector<py::ssize_t>{B, std::max<int64_t>(T - 1, 0)});
        {
          py::gil_scoped_release nogil;
          tmech::token_losses(logits.data(), tokens.data(), B, T, V, out.mutable_data());
        }
        return out;
      },
      py::arg("logits"), py::arg("tokens"), "each next token's cross-entropy (natural log), [batch, pos - 1]");
  m.def(
      "log_sum_exp",
      [](FloatArray x) {
        if (x.ndim() < 1 || x.shape(x.ndim() - 1) == 0)
          throw std::invalid_argument("log_sum_exp needs an array with a non-empty last axis");
        const int64_t n = x.shape(x.ndim() - 1);
        FloatArray out(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim() - 1));
        {
          py::gil_scoped_release nogil;
          tmech::log_sum_exp_rows(x.data(), x.size() / n, n, out.mutable_data());
        }
        return out;
      },
      py::arg("x"), "log(sum(exp(x))) along the last axis, max-subtracted; NaN where a row holds NaN or +inf");
  m.def(
      "sample",
      [](FloatArray logits, float temperature, int64_t top_k, double top_p, py::array_t<double, py::array::c_style> u) {
        if (logits.ndim() != 2 || u.ndim() != 1 || u.shape(0) != logits.shape(0))
          throw std::invalid_argument("sample needs logits [batch, d_vocab] and one uniform number per row");
        py::array_t<int64_t> out(logits.shape(0));
        {
          py::gil_scoped_release nogil;
          tmech::sample_rows(logits.data(), logits.shape(0), logits.shape(1), {temperature, top_k, top_p}, u.data(),
                             out.mutable_data());
        }
        return out;
      },
      py::arg("logits"), py::arg("temperature"), py::arg("top_k"), py::arg("top_p"), py::arg("u"),
      "one token per row: softmax(logits / temperature) kept to the top_k (0: all) and the top_p nucleus, "
      "drawn with u in [0, 1)");
  m.def(
      "dequantize",
      [](py::array_t<uint8_t, py::array::c_style> data, int ggml_type) {
        const int64_t n_blocks = tmech::quant_blocks(ggml_type, data.size());
        FloatArray out(tmech::checked_size({n_blocks, tmech::quant_block(ggml_type).values}, "dequantized values"));
        {
          py::gil_scoped_release nogil;
          tmech::dequantize_blocks(ggml_type, data.data(), n_blocks, out.mutable_data());
        }
        return out;
      },
      py::arg("data"), py::arg("ggml_type"), "GGML block-quantized bytes -> float32 values (see quant_block)");
  m.def(
      "quant_block",
      [](int ggml_type) {
        const tmech::QuantBlock q = tmech::quant_block(ggml_type);
        return py::make_tuple(q.values, q.bytes);
      },
      py::arg("ggml_type"),
      "(values, bytes) of one block of a GGML type the core dequantizes (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, "
      "Q6_K); (0, 0) for others");
  m.def(
      "top_k",
      [](FloatArray x, int64_t k) {
        if (x.ndim() < 1) throw std::invalid_argument("top_k needs an array with a last axis");
        const int64_t n = x.shape(x.ndim() - 1), rows = n ? x.size() / n : 0;
        if (k < 0 || k > n) throw std::invalid_argument("top_k needs 0 <= k <= " + std::to_string(n));
        std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
        shape.back() = k;
        py::array_t<int64_t> indices(shape);
        FloatArray values(shape);
        {
          py::gil_scoped_release nogil;
          tmech::top_k_rows(x.data(), rows, n, k, indices.mutable_data(), values.mutable_data());
        }
        return py::make_tuple(indices, values);
      },
      py::arg("x"), py::arg("k"),
      "(indices, values) of the k largest entries along the last axis, largest first; ties by index, NaN as -inf");
}
