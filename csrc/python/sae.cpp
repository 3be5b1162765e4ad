// _core.Sae and _core.SaeSplice (a NativeHook) over the SAE core
// (csrc/sae/sae.hpp), and the screen mode (csrc/sae/screen.hpp).
#include "sae/sae.hpp"

#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "python/bindings.hpp"
#include "python/numpy_buffers.hpp"
#include "runtime/checked.hpp"
#include "sae/screen.hpp"

namespace {

using FloatIn = py::array_t<float, py::array::c_style | py::array::forcecast>;
using ByteIn = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

// The SAE plus the arrays its weight pointers point into. Splices share it,
// so it lives until the last of them is gone; the arrays are released
// under the GIL, wherever the last owner lets go.
struct OwnedSae {
  std::unique_ptr<tmech::Sae> sae;
  std::vector<py::object> keep;
  ~OwnedSae() {
    py::gil_scoped_acquire gil;
    keep.clear();
  }
};

struct PySae {
  std::shared_ptr<OwnedSae> owned;
  // The splices made over it (changed under the GIL): an SAE rebuilt with new
  // weights or a new config takes them over (take_splices), whoever holds them,
  // a hook plan of a generation under way included.
  std::vector<std::weak_ptr<tmech::SaeSplice>> splices;
  const tmech::Sae& sae() const { return *owned->sae; }
  std::shared_ptr<const tmech::Sae> shared() const { return {owned, owned->sae.get()}; }
  void track(const std::shared_ptr<tmech::SaeSplice>& splice) {
    splices.erase(std::remove_if(splices.begin(), splices.end(), [](const auto& w) { return w.expired(); }),
                  splices.end());
    splices.push_back(splice);
  }
};

// The SAE's weights dict: float32 C-contiguous arrays by name.
class SaeWeightsDict : public tmech::WeightSource {
 public:
  SaeWeightsDict(const py::dict& weights, std::vector<py::object>& keep) : weights_(weights), keep_(keep) {}

  tmech::Matrix get(int64_t, const char* key, const std::vector<int64_t>& shape, bool optional, bool) override {
    if (!weights_.contains(key) || weights_[key].is_none()) {
      if (optional) return {};
      throw std::invalid_argument(std::string("SAE weight '") + key + "' is missing");
    }
    py::object obj = weights_[key];
    if (!py::isinstance<py::array_t<float>>(obj))
      throw std::invalid_argument(std::string("SAE weight '") + key + "' must be a float32 array");
    auto arr = obj.cast<py::array>();
    std::vector<int64_t> got(arr.shape(), arr.shape() + arr.ndim());
    if (got != shape)
      throw std::invalid_argument(std::string("SAE weight '") + key + "' has shape " + tmech::shape_string(got) +
                                  " but the config needs " + tmech::shape_string(shape));
    if (!(arr.flags() & py::array::c_style))
      throw std::invalid_argument(std::string("SAE weight '") + key + "' must be C-contiguous");
    keep_.push_back(obj);
    return static_cast<const float*>(arr.data());
  }

 private:
  py::dict weights_;
  std::vector<py::object>& keep_;  // the arrays handed over
};

PySae make_sae(const py::dict& cfg, const py::dict& w) {
  tmech::SaeConfig c;
  c.d_in = cfg["d_in"].cast<int64_t>();
  c.d_sae = cfg["d_sae"].cast<int64_t>();
  c.d_out = cfg["d_out"].cast<int64_t>();
  c.activation = tmech::parse_sae_activation(cfg["activation"].cast<std::string>());
  c.k = cfg["k"].cast<int64_t>();
  c.apply_b_dec_to_input = cfg["apply_b_dec_to_input"].cast<bool>();
  c.rescale_acts_by_decoder_norm = cfg["rescale_acts_by_decoder_norm"].cast<bool>();
  c.norm = tmech::parse_sae_norm(cfg["norm"].cast<std::string>());
  c.denormalize_output = cfg["denormalize_output"].cast<bool>();
  c.decode_bias = cfg["decode_bias"].cast<bool>();
  c.norm_factor = cfg["norm_factor"].cast<float>();
  c.fixed_encoder = cfg["fixed_encoder"].cast<bool>();
  if (c.activation == tmech::SaeActivation::matching_pursuit) {
    c.matching_pursuit.residual_threshold = cfg["residual_threshold"].cast<float>();
    c.matching_pursuit.max_iterations = cfg["max_iterations"].cast<int64_t>();
    c.matching_pursuit.stop_on_duplicate_support = cfg["stop_on_duplicate_support"].cast<bool>();
  }
  if (c.activation == tmech::SaeActivation::temporal) {
    c.temporal.n_heads = cfg["n_heads"].cast<int64_t>();
    c.temporal.n_layers = cfg["n_attn_layers"].cast<int64_t>();
    c.temporal.width = cfg["attention_width"].cast<int64_t>();
    c.temporal.lam = cfg["lam"].cast<float>();
  }
  c.validate();
  auto owned = std::make_shared<OwnedSae>();
  SaeWeightsDict source(w, owned->keep);
  owned->sae = std::make_unique<tmech::Sae>(c, tmech::read_sae_weights(c, source));
  return PySae{owned};
}

// x as [rows, width] with width == `want`.
int64_t rows_of(const FloatIn& x, int64_t want, const char* name) {
  if (x.ndim() != 2 || x.shape(1) != want)
    throw std::invalid_argument(std::string(name) + " must be [rows, " + std::to_string(want) + "]");
  return x.shape(0);
}

py::tuple codes_to_numpy(tmech::SparseCodes&& codes) {
  const auto nnz = static_cast<py::ssize_t>(codes.indices.size());
  return py::make_tuple(tmech::owned_array(std::move(codes.offsets), {codes.rows + 1}),
                        tmech::owned_array(std::move(codes.indices), {nnz}),
                        tmech::owned_array(std::move(codes.values), {nnz}));
}

// Offsets and feature indices as int64 arrays, converted from other integer
// types only where numpy's safe casting keeps every value (no float or wider
// type): an index is range-checked before it is narrowed, never wrapped.
using IndexIn = py::array_t<int64_t, py::array::c_style>;

tmech::SparseCodes codes_from(IndexIn offsets, IndexIn indices, FloatIn values, int64_t d_sae) {
  if (offsets.ndim() != 1 || offsets.shape(0) < 1 || indices.ndim() != 1 || values.ndim() != 1 ||
      indices.shape(0) != values.shape(0))
    throw std::invalid_argument("sparse codes are offsets [rows + 1], indices [nnz], values [nnz]");
  return tmech::sparse_codes(offsets.data(), offsets.shape(0) - 1, indices.data(), values.data(), indices.shape(0),
                             d_sae);
}

// A splice's record as a dict of flat copies (acts_pre None unless recorded), or None.
py::object record_to_python(const std::shared_ptr<const tmech::SpliceRecord>& r) {
  if (!r) return py::none();
  auto flat = [](const std::vector<float>& v) -> py::object {
    if (v.empty()) return py::none();
    return tmech::owned_array(std::vector<float>(v), {static_cast<py::ssize_t>(v.size())});
  };
  py::dict d;
  d["shape"] = py::tuple(py::cast(r->shape));
  d["codes"] = codes_to_numpy(tmech::SparseCodes(r->codes));
  d["input"] = flat(r->input);
  d["acts_pre"] = flat(r->acts_pre);
  d["recons"] = flat(r->recons);
  d["error"] = flat(r->error);
  d["output"] = flat(r->output);
  return d;
}

// decode + finish, with the input (for normalization and W_skip) when given.
template <class Decode>
py::array_t<float> decode_with(const PySae& s, int64_t rows, const std::optional<FloatIn>& x, Decode decode) {
  const tmech::SaeConfig& c = s.sae().config();
  if (x && rows_of(*x, c.d_in, "x") != rows) throw std::invalid_argument("x and the features cover different rows");
  std::vector<float> out(static_cast<size_t>(tmech::checked_size({rows, c.d_out}, "SAE output")));
  {
    py::gil_scoped_release nogil;
    decode(out.data());
    tmech::RowNorm norm;
    const float* xs = x ? x->data() : nullptr;
    if (xs || c.norm == tmech::SaeNorm::constant_scalar_rescale) {  // a constant scale is undone without x
      s.sae().compute_norm(xs, rows, norm);
      s.sae().finish(norm, xs, rows, out.data());
    }
  }
  return tmech::owned_array(std::move(out), {rows, c.d_out});
}

}  // namespace

void bind_sae(py::module_& m) {
  m.def(
      "set_sae_screen", [](const std::string& mode) { tmech::set_screen_mode(tmech::parse_screen_mode(mode)); },
      py::arg("mode"),
      "when SAE encoders screen first (csrc/sae/screen.hpp): 'auto' where it pays, "
      "'always' (any CPU, any rows: for tests; in bfloat16 where the CPU has its dot products, else int16), "
      "'bf16' or 'int16' (always, that screen), 'never' (the float32 path)");
  m.def(
      "take_sae_screen_counts",
      [] {
        const auto c = tmech::take_screen_counts();
        return std::make_pair(c.screened, c.recomputed);
      },
      "(row-feature pairs screened, recomputed in float32) since the last call: the screen's pass rate");
  m.def("sae_activation_names", &tmech::sae_activation_names,
        "every SAE activation the core encodes, as tinymech/sae/architectures/ names them");
  m.def("sae_screen", [] { return tmech::screen_mode_name(tmech::screen_mode()); });
  py::class_<PySae>(m, "Sae", "An SAE or transcoder over float32 weights (see tinymech.sae.SAE)")
      .def(py::init(&make_sae), py::arg("config"), py::arg("weights"))
      .def_property_readonly(
          "keeps_transposed_encoder", [](const PySae& s) { return s.sae().keeps_transposed_encoder(); },
          "whether the screen has made its transposed copy of a W_enc nothing can write")
      .def(
          "take_splices",
          [](PySae& s, PySae& old) {
            for (const auto& weak : old.splices)
              if (auto splice = weak.lock()) {
                splice->set_sae(s.shared());
                s.track(splice);
              }
            old.splices.clear();
          },
          py::arg("old"), "the splices made over `old` (the same SAE before a rebuild) run this one from now on")
      .def(
          "encode",
          [](const PySae& s, FloatIn x, int64_t seq_len) {
            const tmech::SaeConfig& c = s.sae().config();
            const int64_t rows = rows_of(x, c.d_in, "x");
            tmech::FloatBuffer acts = tmech::alloc_floats(
                tmech::checked_size({rows, c.d_sae}, "SAE features"));  // encode writes every element
            {
              py::gil_scoped_release nogil;
              s.sae().encode(x.data(), rows, nullptr, acts.get(), nullptr, nullptr, seq_len);
            }
            return tmech::to_numpy(std::move(acts), {rows, c.d_sae});
          },
          py::arg("x"), py::arg("seq_len") = 0,
          "seq_len: a temporal SAE's rows are sequences of seq_len positions (ignored by others)")
      .def(
          "encode_pre",
          [](const PySae& s, FloatIn x, int64_t seq_len) {
            const tmech::SaeConfig& c = s.sae().config();
            const int64_t rows = rows_of(x, c.d_in, "x");
            std::vector<float> acts(static_cast<size_t>(tmech::checked_size({rows, c.d_sae}, "SAE features"))),
                pre(acts.size());
            {
              py::gil_scoped_release nogil;
              s.sae().encode(x.data(), rows, nullptr, acts.data(), pre.data(), nullptr, seq_len);
            }
            return tmech::owned_array(std::move(pre), {rows, c.d_sae});
          },
          py::arg("x"), py::arg("seq_len") = 0, "pre-activations x·W_enc + b_enc (after normalization and b_dec)")
      .def(
          "encode_predicted",
          [](const PySae& s, FloatIn x, int64_t seq_len) {
            const tmech::SaeConfig& c = s.sae().config();
            const int64_t rows = rows_of(x, c.d_in, "x");
            std::vector<float> acts(static_cast<size_t>(tmech::checked_size({rows, c.d_sae}, "SAE features"))),
                predicted(acts.size());
            {
              py::gil_scoped_release nogil;
              s.sae().encode(x.data(), rows, nullptr, acts.data(), nullptr, nullptr, seq_len, predicted.data());
            }
            return py::make_tuple(tmech::owned_array(std::move(acts), {rows, c.d_sae}),
                                  tmech::owned_array(std::move(predicted), {rows, c.d_sae}));
          },
          py::arg("x"), py::arg("seq_len"), "a temporal SAE's (novel codes, predicted codes)")
      .def(
          "encode_sparse",
          [](const PySae& s, FloatIn x, int64_t seq_len) {
            const int64_t rows = rows_of(x, s.sae().config().d_in, "x");
            tmech::SparseCodes codes;
            {
              py::gil_scoped_release nogil;
              s.sae().encode(x.data(), rows, &codes, nullptr, nullptr, nullptr, seq_len);
            }
            return codes_to_numpy(std::move(codes));
          },
          py::arg("x"), py::arg("seq_len") = 0,
          "(offsets [rows + 1], indices [nnz], values [nnz]) of the active features")
      .def(
          "top_features",
          [](const PySae& s, FloatIn x, int64_t k, int64_t seq_len) {
            if (k < 0 || k > s.sae().config().d_sae) throw std::invalid_argument("k must be in [0, d_sae]");
            const int64_t rows = rows_of(x, s.sae().config().d_in, "x");
            std::vector<int64_t> idx(static_cast<size_t>(tmech::checked_size({rows, k}, "SAE top-k indices")));
            std::vector<float> val(idx.size());
            {
              py::gil_scoped_release nogil;
              s.sae().top_features(x.data(), rows, k, idx.data(), val.data(), seq_len);
            }
            return py::make_tuple(tmech::owned_array(std::move(idx), {rows, k}),
                                  tmech::owned_array(std::move(val), {rows, k}));
          },
          py::arg("x"), py::arg("k"), py::arg("seq_len") = 0)
      .def(
          "decode",
          [](const PySae& s, FloatIn acts, std::optional<FloatIn> x) {
            const int64_t rows = rows_of(acts, s.sae().config().d_sae, "features");
            return decode_with(s, rows, x, [&](float* out) { s.sae().decode_dense(acts.data(), rows, out); });
          },
          py::arg("acts"), py::arg("x") = py::none())
      .def(
          "decode_sparse",
          [](const PySae& s, IndexIn offsets, IndexIn indices, FloatIn values, std::optional<FloatIn> x) {
            tmech::SparseCodes codes = codes_from(offsets, indices, values, s.sae().config().d_sae);
            return decode_with(s, codes.rows, x, [&](float* out) { s.sae().decode_codes(codes, out); });
          },
          py::arg("offsets"), py::arg("indices"), py::arg("values"), py::arg("x") = py::none())
      .def(
          "forward",
          [](const PySae& s, FloatIn x, int64_t seq_len) {
            const tmech::SaeConfig& c = s.sae().config();
            const int64_t rows = rows_of(x, c.d_in, "x");
            std::vector<float> out(static_cast<size_t>(tmech::checked_size({rows, c.d_out}, "SAE output")));
            {
              py::gil_scoped_release nogil;
              s.sae().forward(x.data(), rows, seq_len, out.data());
            }
            return tmech::owned_array(std::move(out), {rows, c.d_out});
          },
          py::arg("x"), py::arg("seq_len") = 0);

  py::class_<tmech::SaeSplice, tmech::HookCallback, std::shared_ptr<tmech::SaeSplice>>(
      m, "SaeSplice", "Hook action running an SAE at a hook point (a NativeHook)")
      .def(py::init([](PySae& s, bool keep_error, const std::string& hook_in, const std::string& hook_out) {
             auto splice = std::make_shared<tmech::SaeSplice>(s.shared(), keep_error, hook_in, hook_out);
             s.track(splice);
             return splice;
           }),
           py::arg("sae"), py::arg("keep_error"), py::arg("hook_in"), py::arg("hook_out"),
           "hook_in == hook_out: an SAE; else a transcoder reading hook_in and writing the later hook_out")
      .def("set_clamps", &tmech::SaeSplice::set_clamps, py::arg("features"), py::arg("values"),
           py::arg("positions") = std::vector<int64_t>{})
      .def("set_recording", &tmech::SaeSplice::set_recording, py::arg("record"), py::arg("record_pre"))
      .def(
          "set_bypass",
          [](tmech::SaeSplice& sp, ByteIn rows) {
            sp.set_bypass(std::vector<uint8_t>(rows.data(), rows.data() + rows.size()));
          },
          py::arg("rows"))
      .def(
          "last", [](const tmech::SaeSplice& sp) { return record_to_python(sp.last()); },
          "what the last call to finish recorded: {shape, codes (offsets, indices, values), input, acts_pre, "
          "recons, error, output} as flat arrays (acts_pre None unless recorded), or None");
}
