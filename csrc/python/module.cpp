// Thin pybind11 layer: numpy in, numpy out, C++ exceptions become Python
// ones (invalid_argument -> ValueError, out_of_range -> IndexError). The
// Python package (tinymech/) owns the user-facing API and every friendly
// check; this layer checks only what keeps memory safe.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <optional>
#include <string>

#include "runtime/checked.hpp"
#include "ops/dequantize.hpp"
#include "core/forward.hpp"
#include "core/hooks.hpp"
#include "core/kv_cache.hpp"
#include "kernels/kernels.hpp"
#include "ops/probes.hpp"
#include "ops/bf16.hpp"
#include "ops/matmul.hpp"
#include "ops/rows.hpp"
#include "python/numpy_buffers.hpp"
#include "runtime/threads.hpp"
#include "ops/sampling.hpp"
#include "ops/top_k.hpp"

namespace py = pybind11;
using FloatArray = py::array_t<float, py::array::c_style>;

namespace {

// f() run holding the cache, without the GIL: a pass on another thread may be
// using the cache, and its Python hooks need the GIL to finish.
template <class F>
auto holding(tmech::KVCache& cache, F f) {
  py::gil_scoped_release nogil;
  tmech::OwnedLock lock(cache.mutex(), tmech::KVCache::kInUse);
  return f();
}

// The C-contiguous array d[key] of the given shape, float32 or (where
// allow_bf16) bfloat16 stored as uint16; nullopt if optional and absent.
std::optional<py::array> checked_array(const py::dict& d, const char* key, const std::vector<int64_t>& shape,
                        std::vector<py::object>& keep, bool optional, bool allow_bf16) {
  const std::string kinds = allow_bf16 ? "float32 or bfloat16 (uint16)" : "float32";
  if (!d.contains(key)) {
    if (optional) return std::nullopt;
    throw std::invalid_argument(std::string("missing weight '") + key + "'");
  }
  py::object obj = d[key];
  if (obj.is_none() && optional) return std::nullopt;
  if (!py::isinstance<py::array>(obj))
    throw std::invalid_argument(std::string("weight '") + key + "' must be a C-contiguous " + kinds + " array");
  auto arr = obj.cast<py::array>();
  const bool dtype_ok = arr.dtype().is(py::dtype::of<float>()) || (allow_bf16 && arr.dtype().is(py::dtype::of<uint16_t>()));
  if (!(arr.flags() & py::array::c_style) || !dtype_ok)
    throw std::invalid_argument(std::string("weight '") + key + "' must be a C-contiguous " + kinds + " array");
  bool ok = arr.ndim() == static_cast<py::ssize_t>(shape.size());
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = arr.shape(i) == shape[i];
  if (!ok) {
    std::string want, got;
    for (auto s : shape) want += std::to_string(s) + ",";
    for (py::ssize_t i = 0; i < arr.ndim(); ++i) got += std::to_string(arr.shape(i)) + ",";
    throw std::invalid_argument(std::string("weight '") + key + "' has shape (" + got + ") but the config needs (" +
                                want + ")");
  }
  keep.push_back(obj);
  return arr;
}

const float* checked(const py::dict& d, const char* key, std::vector<int64_t> shape,
                     std::vector<py::object>& keep, bool optional = false) {
  std::optional<py::array> arr = checked_array(d, key, shape, keep, optional, false);
  return arr ? static_cast<const float*>(arr->data()) : nullptr;
}

// A weight matrix: float32, or bfloat16 in the bf16 weight mode.
tmech::Matrix checked_matrix(const py::dict& d, const char* key, std::vector<int64_t> shape,
                             std::vector<py::object>& keep) {
  py::array arr = *checked_array(d, key, shape, keep, false, true);
  if (arr.dtype().is(py::dtype::of<uint16_t>())) return tmech::Matrix(static_cast<const uint16_t*>(arr.data()));
  return tmech::Matrix(static_cast<const float*>(arr.data()));
}

tmech::Activation parse_activation(const std::string& s) {
  if (s == "gelu_new" || s == "gelu_pytorch_tanh" || s == "gelu_fast") return tmech::Activation::gelu_new;
  if (s == "gelu") return tmech::Activation::gelu;
  if (s == "relu") return tmech::Activation::relu;
  if (s == "silu" || s == "swish") return tmech::Activation::silu;
  throw std::invalid_argument("unsupported activation function '" + s + "'");
}

// d[key] as T; a value T cannot hold (an integer past int64) is refused by
// name instead of with pybind's cast error.
template <class T>
T field(const py::dict& d, const char* key) {
  try {
    return d[key].cast<T>();
  } catch (const py::cast_error&) {
    throw std::invalid_argument(std::string("invalid model config: ") + key + " = " +
                                py::repr(d[key]).cast<std::string>() + " is out of range or of the wrong type");
  }
}

template <class T>
T get_or(const py::dict& d, const char* key, T fallback) {
  return d.contains(key) && !d[key].is_none() ? field<T>(d, key) : fallback;
}

// The architecture fields beyond GPT-2's; a GPT-2 config dict may omit them.
void parse_architecture(const py::dict& d, tmech::ModelConfig& c) {
  const std::string norm = get_or<std::string>(d, "normalization_type", "LN");
  if (norm == "RMS" || norm == "RMSPre")
    c.normalization = tmech::Normalization::rms_norm;
  else if (norm != "LN" && norm != "LNPre")
    throw std::invalid_argument("unsupported normalization_type '" + norm + "'");
  const std::string pos = get_or<std::string>(d, "positional_embedding_type", "standard");
  if (pos == "rotary")
    c.positions = tmech::Positions::rotary;
  else if (pos != "standard")
    throw std::invalid_argument("unsupported positional_embedding_type '" + pos + "'");
  const std::string layout = get_or<std::string>(d, "weight_layout", "in_out");
  if (layout == "out_in")
    c.layout = tmech::WeightLayout::out_in;
  else if (layout != "in_out")
    throw std::invalid_argument("weight_layout must be 'in_out' or 'out_in'");
  c.n_key_value_heads = get_or<int64_t>(d, "n_key_value_heads", 0);
  c.gated_mlp = get_or<bool>(d, "gated_mlp", false);
  c.rotary_dim = get_or<int64_t>(d, "rotary_dim", 0);
}

struct PyModel {
  std::unique_ptr<tmech::Model> model;
  std::vector<py::object> keep;  // the weight arrays the model points into

  PyModel(const py::dict& cfg_dict, const py::dict& weights) {
    tmech::ModelConfig c;
    c.n_layers = field<int64_t>(cfg_dict, "n_layers");
    c.d_model = field<int64_t>(cfg_dict, "d_model");
    c.n_heads = field<int64_t>(cfg_dict, "n_heads");
    c.d_head = field<int64_t>(cfg_dict, "d_head");
    c.d_mlp = field<int64_t>(cfg_dict, "d_mlp");
    c.d_vocab = field<int64_t>(cfg_dict, "d_vocab");
    c.n_ctx = field<int64_t>(cfg_dict, "n_ctx");
    c.ln_eps = field<float>(cfg_dict, "eps");
    c.attn_scale = field<float>(cfg_dict, "attn_scale");
    c.act_fn = parse_activation(field<std::string>(cfg_dict, "act_fn"));
    c.scale_attn_by_inverse_layer_idx = field<bool>(cfg_dict, "scale_attn_by_inverse_layer_idx");
    parse_architecture(cfg_dict, c);
    c.validate();
    const int64_t D = c.d_model, Da = c.d_attn(), Dqkv = c.d_qkv(), F = c.d_mlp, V = c.d_vocab;
    const bool ln = c.normalization == tmech::Normalization::layer_norm;
    // A linear weight [in, out], stored transposed in the out_in layout; its
    // bias is optional only where the architecture may lack one.
    auto linear = [&](const py::dict& d, const char* key, int64_t in, int64_t out) {
      return c.layout == tmech::WeightLayout::in_out ? checked_matrix(d, key, {in, out}, keep)
                                                     : checked_matrix(d, key, {out, in}, keep);
    };
    const bool optional_bias = c.layout == tmech::WeightLayout::out_in;
    tmech::ModelWeights w;
    w.wte = checked_matrix(weights, "wte", {V, D}, keep);
    if (c.positions == tmech::Positions::learned) w.wpe = checked(weights, "wpe", {c.n_ctx, D}, keep);
    if (c.positions == tmech::Positions::rotary)
      w.rope_inv_freq = checked(weights, "rope_inv_freq", {c.rotary_dim / 2}, keep);
    w.lnf_w = checked(weights, "lnf_w", {D}, keep);
    w.lnf_b = checked(weights, "lnf_b", {D}, keep, !ln);
    w.unembed = checked_matrix(weights, "unembed", {V, D}, keep);
    w.unembed_b = checked(weights, "unembed_b", {V}, keep, true);
    c.has_unembed_bias = w.unembed_b != nullptr;
    auto layers = weights["layers"].cast<py::list>();
    if (static_cast<int64_t>(layers.size()) != c.n_layers)
      throw std::invalid_argument("config has " + std::to_string(c.n_layers) + " layers but " +
                                  std::to_string(layers.size()) + " were given");
    for (auto item : layers) {
      py::dict d = item.cast<py::dict>();
      tmech::LayerWeights lw;
      lw.ln1_w = checked(d, "ln1_w", {D}, keep);
      lw.ln1_b = checked(d, "ln1_b", {D}, keep, !ln);
      lw.qkv_w = linear(d, "qkv_w", D, Dqkv);
      lw.qkv_b = checked(d, "qkv_b", {Dqkv}, keep, optional_bias);
      lw.out_w = linear(d, "out_w", Da, D);
      lw.out_b = checked(d, "out_b", {D}, keep, optional_bias);
      lw.ln2_w = checked(d, "ln2_w", {D}, keep);
      lw.ln2_b = checked(d, "ln2_b", {D}, keep, !ln);
      if (c.gated_mlp) {
        lw.gate_w = linear(d, "gate_w", D, F);
        lw.gate_b = checked(d, "gate_b", {F}, keep, true);
      }
      lw.fc_w = linear(d, "fc_w", D, F);
      lw.fc_b = checked(d, "fc_b", {F}, keep, optional_bias);
      lw.proj_w = linear(d, "proj_w", F, D);
      lw.proj_b = checked(d, "proj_b", {D}, keep, optional_bias);
      w.layers.push_back(lw);
    }
    model = std::make_unique<tmech::Model>(c, std::move(w));
  }
};

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

struct PyHookPlan {
  tmech::HookPlan plan;
  std::vector<py::object> keep;  // arrays that edits point into
  explicit PyHookPlan(int64_t n_layers) : plan(n_layers) {}

  tmech::Edit make(tmech::EditType type, std::vector<int64_t> heads, std::vector<int64_t> positions,
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
};

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
  k.def("bf16_dot_products", [] { return tmech::kernels::active().bf16_dot_products; },
        "whether bfloat16-weight matmuls of more than small_rows() rows round A to bfloat16 "
        "and use bfloat16 dot products (AVX512-BF16)");
  k.def("small_rows", [] { return tmech::kMatmulSmallM; },
        "up to this many rows, a matmul streams B once (the decode path)");
  k.def("stream_rows_kn", [] { return tmech::kernels::active().stream_rows_kn; },
        "up to this many rows, a matmul over B stored [K, N] streams B once (but over "
        "bfloat16 B where bf16_dot_products(): small_rows())");
  k.def("select", [](const std::string& name) {
    if (!tmech::kernels::select(name.c_str()))
      throw std::invalid_argument("kernel variant '" + name + "' is not available on this CPU");
  });
  // C = A @ B (+ bias); B given as [K, N], or as [N, K] when b_transposed;
  // B float32 or bfloat16 (uint16).
  k.def("matmul", [](FloatArray A, py::array B, std::optional<FloatArray> bias, bool b_transposed) {
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
  }, py::arg("A"), py::arg("B"), py::arg("bias") = py::none(), py::arg("b_transposed") = false);
  k.def("round_bf16", [](FloatArray x) {
    py::array_t<uint16_t> out(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
    tmech::kernels::active().round_bf16(x.data(), out.mutable_data(), x.size());
    return out;
  }, "float32 -> bfloat16 bits (uint16), to nearest, ties to even");
  k.def("pooled_bytes", &tmech::pooled_bytes, "bytes of freed capture buffers kept for reuse");
  k.def("transpose", [](FloatArray x) {
    if (x.ndim() != 2) throw std::invalid_argument("transpose takes a 2-D array");
    FloatArray out({x.shape(1), x.shape(0)});
    tmech::kernels::active().transpose(x.data(), x.shape(1), x.shape(0), x.shape(1), out.mutable_data(), x.shape(0));
    return out;
  });
  k.def("screen", [](FloatArray x, FloatArray w, float alpha, FloatArray limit) {
    if (x.ndim() != 1 || w.size() != x.size() || limit.size() != x.size())
      throw std::invalid_argument("screen takes x, w and limit of one length");
    std::vector<int32_t> out(static_cast<size_t>(x.size()));
    out.resize(static_cast<size_t>(
        tmech::kernels::active().screen(x.data(), w.data(), alpha, limit.data(), x.size(), out.data())));
    return out;
  }, "indices j where x[j] + alpha w[j] <= limit[j] fails, or x[j] is -inf");
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
  k.def("fma_peak_gflops", [](double seconds) {
    py::gil_scoped_release nogil;
    return tmech::fma_peak_gflops(seconds);
  }, py::arg("seconds") = 0.5);
  k.def("bf16_dot_peak_gflops", [](double seconds) {
    py::gil_scoped_release nogil;
    return tmech::bf16_dot_peak_gflops(seconds);
  }, py::arg("seconds") = 0.5, "0 where the active kernel variant has no bfloat16 dot products");
  k.def("read_bandwidth_gbs", [](int64_t bytes, int repeats) {
    if (bytes <= 0 || repeats <= 0) throw std::invalid_argument("bytes and repeats must be positive");
    py::gil_scoped_release nogil;
    return tmech::read_bandwidth_gbs(bytes, repeats);
  }, py::arg("bytes") = int64_t{512} << 20, py::arg("repeats") = 3);
  k.def("dot", [](FloatArray a, FloatArray b) {
    if (a.size() != b.size()) throw std::invalid_argument("dot needs equal lengths");
    return tmech::kernels::active().dot(a.data(), b.data(), a.size());
  });
}

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

// Other areas register their bindings from their own files.
void register_sae(py::module_& m);

PYBIND11_MODULE(_core, m) {
  m.doc() = "tinymech's C++ core: transformer forward passes, KV cache, hook plans";

  g_main_thread = py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
  tmech::set_interrupt_check(check_signals);

  m.def("set_num_threads", &tmech::set_num_threads, py::arg("n"));
  m.attr("MAX_THREADS") = tmech::kMaxThreads;
  m.def("get_num_threads", &tmech::num_threads);
  m.def("to_bf16", [](FloatArray x, bool transpose) {
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
  }, py::arg("x"), py::arg("transpose") = false,
     "float32 -> bfloat16 bits (uint16), to nearest, ties to even, as torch rounds; transposed if asked");
  m.def("token_losses", [](FloatArray logits, py::array_t<int32_t, py::array::c_style> tokens) {
    if (logits.ndim() != 3 || tokens.ndim() != 2 || tokens.shape(0) != logits.shape(0) ||
        tokens.shape(1) != logits.shape(1))
      throw std::invalid_argument("logits must be [batch, pos, d_vocab] and tokens [batch, pos]");
    const int64_t B = logits.shape(0), T = logits.shape(1), V = logits.shape(2);
    if (V == 0 && T > 1) throw std::invalid_argument("logits over an empty vocabulary");
    for (int64_t i = 0; i < tokens.size(); ++i)
      if (tokens.data()[i] < 0 || tokens.data()[i] >= V)
        throw std::out_of_range("token id " + std::to_string(tokens.data()[i]) + " is outside the logits' " +
                                std::to_string(V) + " entries");
    FloatArray out(std::vector<py::ssize_t>{B, std::max<int64_t>(T - 1, 0)});
    if (T > 1) {
      py::gil_scoped_release nogil;
      tmech::token_losses(logits.data(), tokens.data(), B, T, V, out.mutable_data());
    }
    return out;
  }, py::arg("logits"), py::arg("tokens"), "each next token's cross-entropy (natural log), [batch, pos - 1]");
  m.def("log_sum_exp", [](FloatArray x) {
    if (x.ndim() < 1 || x.shape(x.ndim() - 1) == 0)
      throw std::invalid_argument("log_sum_exp needs an array with a non-empty last axis");
    const int64_t n = x.shape(x.ndim() - 1);
    FloatArray out(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim() - 1));
    {
      py::gil_scoped_release nogil;
      tmech::log_sum_exp_rows(x.data(), x.size() / n, n, out.mutable_data());
    }
    return out;
  }, py::arg("x"), "log(sum(exp(x))) along the last axis, max-subtracted; NaN where a row holds NaN or +inf");
  m.def("sample", [](FloatArray logits, float temperature, int64_t top_k, double top_p,
                     py::array_t<double, py::array::c_style> u) {
    if (logits.ndim() != 2 || u.ndim() != 1 || u.shape(0) != logits.shape(0))
      throw std::invalid_argument("sample needs logits [batch, d_vocab] and one uniform number per row");
    py::array_t<int64_t> out(logits.shape(0));
    {
      py::gil_scoped_release nogil;
      tmech::sample_rows(logits.data(), logits.shape(0), logits.shape(1), {temperature, top_k, top_p}, u.data(),
                         out.mutable_data());
    }
    return out;
  }, py::arg("logits"), py::arg("temperature"), py::arg("top_k"), py::arg("top_p"), py::arg("u"),
     "one token per row: softmax(logits / temperature) kept to the top_k (0: all) and the top_p nucleus, "
     "drawn with u in [0, 1)");
  m.def("dequantize", [](py::array_t<uint8_t, py::array::c_style> data, int ggml_type) {
    const tmech::QuantBlock q = tmech::quant_block(ggml_type);
    if (q.bytes == 0) throw std::invalid_argument("no dequantizer for GGML type " + std::to_string(ggml_type));
    if (data.size() % q.bytes) throw std::invalid_argument("the data is not a whole number of blocks");
    const int64_t n_blocks = data.size() / q.bytes;
    FloatArray out(tmech::checked_size({n_blocks, q.values}, "dequantized values"));
    {
      py::gil_scoped_release nogil;
      tmech::dequantize_blocks(ggml_type, data.data(), n_blocks, out.mutable_data());
    }
    return out;
  }, py::arg("data"), py::arg("ggml_type"), "GGML block-quantized bytes -> float32 values (see quant_block)");
  m.def("quant_block", [](int ggml_type) {
    const tmech::QuantBlock q = tmech::quant_block(ggml_type);
    return py::make_tuple(q.values, q.bytes);
  }, py::arg("ggml_type"),
     "(values, bytes) of one block of a GGML type the core dequantizes (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, "
     "Q6_K); (0, 0) for others");
  m.def("top_k", [](FloatArray x, int64_t k) {
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
  }, py::arg("x"), py::arg("k"),
     "(indices, values) of the k largest entries along the last axis, largest first; ties by index, NaN as -inf");
  m.def("release_pooled_buffers", &tmech::release_pooled_buffers,
        "frees the kept buffers of dropped activation caches; returns the bytes given back");
  m.def("hook_names", [](int64_t n_layers) {
    std::vector<std::string> names;
    for (int i = 0; i < tmech::hook_count(n_layers); ++i) names.push_back(tmech::hook_name(i, n_layers));
    return names;
  });
  bind_kernels(m);

  // Base of hook actions implemented in C++ (e.g. an SAE splice): added to a
  // plan with HookPlan.native(id, action) and run without the GIL.
  py::class_<tmech::HookCallback, std::shared_ptr<tmech::HookCallback>>(m, "NativeHook");

  register_sae(m);

  py::register_exception<tmech::ContextOverflow>(m, "ContextOverflow", PyExc_IndexError);
  py::register_exception<tmech::SizeOverflow>(m, "SizeOverflow", PyExc_MemoryError);
  py::register_exception<tmech::CacheMismatch>(m, "CacheMismatch", PyExc_ValueError);
  py::class_<tmech::KVCache>(m, "KVCache")
      .def_property_readonly("batch", &tmech::KVCache::batch)
      .def_property_readonly("n_past", &tmech::KVCache::n_past)
      .def_property_readonly("capacity", &tmech::KVCache::capacity)
      .def_property_readonly("n_ctx", &tmech::KVCache::n_ctx)
      .def("reset", [](tmech::KVCache& c) { holding(c, [&] { c.reset(); }); })
      .def("truncate", [](tmech::KVCache& c, int64_t n) { holding(c, [&] { c.truncate(n); }); }, py::arg("n"))
      .def("reserve", [](tmech::KVCache& c, int64_t n) { holding(c, [&] { c.reserve(n); }); },
           py::arg("positions"), "make room for this many positions now (no regrowth while decoding up to them)")
      .def("fork", [](tmech::KVCache& c) { return holding(c, [&] { return c.fork(); }); });

  py::class_<PyHookPlan>(m, "HookPlan")
      .def(py::init<int64_t>(), py::arg("n_layers"))
      .def("capture", [](PyHookPlan& p, int id) { p.plan.add(id, p.make(tmech::EditType::capture, {}, {}, py::none(), 0.f)); })
      .def("replace", [](PyHookPlan& p, int id, py::object values, std::vector<int64_t> heads, std::vector<int64_t> positions) {
        p.plan.add(id, p.make(tmech::EditType::replace, heads, positions, values, 0.f));
      })
      .def("fill", [](PyHookPlan& p, int id, py::object values, float scalar, std::vector<int64_t> heads, std::vector<int64_t> positions) {
        p.plan.add(id, p.make(tmech::EditType::fill, heads, positions, values, scalar));
      })
      .def("add", [](PyHookPlan& p, int id, py::object values, float coeff, std::vector<int64_t> heads, std::vector<int64_t> positions) {
        p.plan.add(id, p.make(tmech::EditType::add, heads, positions, values, coeff));
      })
      .def("scale", [](PyHookPlan& p, int id, float factor, std::vector<int64_t> heads, std::vector<int64_t> positions) {
        p.plan.add(id, p.make(tmech::EditType::scale, heads, positions, py::none(), factor));
      })
      .def("callback", [](PyHookPlan& p, int id, py::function fn) {
        tmech::Edit e = p.make(tmech::EditType::callback, {}, {}, py::none(), 0.f);
        e.callback = std::make_shared<PyCallback>(std::move(fn));
        p.plan.add(id, std::move(e));
      })
      .def("native", [](PyHookPlan& p, int id, std::shared_ptr<tmech::HookCallback> action) {
        tmech::Edit e = p.make(tmech::EditType::callback, {}, {}, py::none(), 0.f);
        e.callback = std::move(action);
        p.plan.add(id, std::move(e));
      })
      .def("take_captured", [](PyHookPlan& p) {
        py::list out;
        for (auto& [id, c] : p.plan.captured()) out.append(py::make_tuple(id, tmech::to_numpy(std::move(c.data), c.shape)));
        p.plan.captured().clear();
        return out;
      });

  py::class_<PyModel>(m, "Model")
      .def(py::init<const py::dict&, const py::dict&>(), py::arg("config"), py::arg("weights"))
      .def("new_cache", [](PyModel& pm, int64_t batch) { return pm.model->new_cache(batch); }, py::arg("batch"))
      .def("hook_ids", [](PyModel& pm) { return pm.model->hook_ids(); })
      .def("forward",
           [](PyModel& pm, tmech::KVCache* cache, std::optional<py::array_t<int32_t, py::array::c_style>> tokens,
              PyHookPlan* plan, const std::string& logits, int64_t start, int64_t stop,
              std::optional<FloatArray> resid) {
             const tmech::ModelConfig& cfg = pm.model->config();
             if (tokens && tokens->ndim() != 2) throw std::invalid_argument("tokens must be [batch, pos]");
             if (resid && (resid->ndim() != 3 || resid->shape(2) != cfg.d_model))
               throw std::invalid_argument("the residual must be [batch, pos, d_model]");
             if (!tokens && !resid) throw std::invalid_argument("give tokens or a residual");
             const int64_t B = resid ? resid->shape(0) : tokens->shape(0);
             const int64_t T = resid ? resid->shape(1) : tokens->shape(1);
             if (tokens && resid && (tokens->shape(0) != B || tokens->shape(1) != T))
               throw std::invalid_argument("tokens and residual cover different [batch, pos]");
             tmech::LogitsMode mode = logits == "all" ? tmech::LogitsMode::all
                                   : logits == "last" ? tmech::LogitsMode::last
                                   : logits == "none" ? tmech::LogitsMode::none
                                   : throw std::invalid_argument("logits must be 'all', 'last' or 'none'");
             const bool returns_resid = stop >= 0;  // an explicit last block: the residual after it
             const int64_t V = cfg.d_vocab;
             const std::vector<int64_t> shape = returns_resid                     ? std::vector<int64_t>{B, T, cfg.d_model}
                                                : mode == tmech::LogitsMode::all  ? std::vector<int64_t>{B, T, V}
                                                : mode == tmech::LogitsMode::last ? std::vector<int64_t>{B, V}
                                                                                  : std::vector<int64_t>{0};
             // from the pool of dropped outputs: a loop of forwards does not fault in fresh pages for
             // its logits each time (2-8 % of a 512-token prefill, measured in alternation)
             const int64_t numel = tmech::checked_size(shape, "a forward pass's output");
             FloatArray out = tmech::to_numpy(tmech::alloc_floats(numel), shape);
             const tmech::BlockSpan span{start, stop, resid ? resid->data() : nullptr,
                                         returns_resid ? out.mutable_data() : nullptr};
             {
               py::gil_scoped_release nogil;
               pm.model->forward(cache, tokens ? tokens->data() : nullptr, B, T, plan ? &plan->plan : nullptr,
                                 mode, returns_resid ? nullptr : out.mutable_data(), span);
             }
             return out;
           },
           py::arg("cache"), py::arg("tokens"), py::arg("plan") = nullptr, py::arg("logits") = "all",
           py::arg("start") = 0, py::arg("stop") = -1, py::arg("resid") = std::nullopt);
}
