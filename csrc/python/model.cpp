// _core.Model: a config dict and a dict of weight arrays in, the core's model
// out (core/config.hpp and core/weights.hpp say what they hold); forward passes.
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/forward.hpp"
#include "python/bindings.hpp"
#include "python/hooks.hpp"
#include "python/numpy_buffers.hpp"
#include "runtime/checked.hpp"

namespace {

// Per-row padding counts (core/forward.hpp's Padding).
using RowCounts = py::array_t<int64_t, py::array::c_style>;

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
  const bool dtype_ok =
      arr.dtype().is(py::dtype::of<float>()) || (allow_bf16 && arr.dtype().is(py::dtype::of<uint16_t>()));
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

// The weights dict: arrays by name, and "layers", one such dict per block.
class WeightsDict : public tmech::WeightSource {
 public:
  WeightsDict(const py::dict& weights, std::vector<py::object>& keep) : weights_(weights), keep_(keep) {}

  tmech::Matrix get(int64_t layer, const char* name, const std::vector<int64_t>& shape, bool optional,
                    bool allow_bf16) override {
    const py::dict d = layer < 0 ? weights_ : layer_list()[static_cast<size_t>(layer)].cast<py::dict>();
    const std::optional<py::array> arr = checked_array(d, name, shape, keep_, optional, allow_bf16);
    if (!arr) return {};
    if (arr->dtype().is(py::dtype::of<uint16_t>())) return tmech::Matrix(static_cast<const uint16_t*>(arr->data()));
    return tmech::Matrix(static_cast<const float*>(arr->data()));
  }
  int64_t layers() override { return static_cast<int64_t>(layer_list().size()); }

 private:
  py::list layer_list() const { return weights_["layers"].cast<py::list>(); }
  py::dict weights_;
  std::vector<py::object>& keep_;  // the arrays handed over
};

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

// d[key] as T, or nullopt where absent or None.
template <class T>
std::optional<T> optional_field(const py::dict& d, const char* key) {
  if (!d.contains(key) || d[key].is_none()) return std::nullopt;
  return field<T>(d, key);
}

// The config dict (the Python Config's core_dict) as a checked ModelConfig;
// the architecture fields beyond GPT-2's may be absent (ModelConfig's defaults).
tmech::ModelConfig read_config(const py::dict& d) {
  tmech::ModelConfig c;
  c.n_layers = field<int64_t>(d, "n_layers");
  c.d_model = field<int64_t>(d, "d_model");
  c.n_heads = field<int64_t>(d, "n_heads");
  c.d_head = field<int64_t>(d, "d_head");
  c.d_mlp = field<int64_t>(d, "d_mlp");
  c.d_vocab = field<int64_t>(d, "d_vocab");
  c.n_ctx = field<int64_t>(d, "n_ctx");
  c.ln_eps = field<float>(d, "eps");
  c.attn_scale = field<float>(d, "attn_scale");
  c.act_fn = tmech::parse_activation(field<std::string>(d, "act_fn"));
  c.scale_attn_by_inverse_layer_idx = field<bool>(d, "scale_attn_by_inverse_layer_idx");
  if (auto s = optional_field<std::string>(d, "normalization_type")) c.normalization = tmech::parse_normalization(*s);
  if (auto s = optional_field<std::string>(d, "positional_embedding_type")) c.positions = tmech::parse_positions(*s);
  if (auto s = optional_field<std::string>(d, "weight_layout")) c.layout = tmech::parse_weight_layout(*s);
  if (auto n = optional_field<int64_t>(d, "n_key_value_heads")) c.n_key_value_heads = *n;
  if (auto g = optional_field<bool>(d, "gated_mlp")) c.gated_mlp = *g;
  if (auto r = optional_field<int64_t>(d, "rotary_dim")) c.rotary_dim = *r;
  c.validate();
  return c;
}

// Records what read_weights asks for, for block 0 and outside the blocks: the weight
// schema, which Python reads instead of listing the core's weight names again.
class SchemaRecorder : public tmech::WeightSource {
 public:
  explicit SchemaRecorder(int64_t n_layers) : n_layers_(n_layers) {}
  tmech::Matrix get(int64_t layer, const char* name, const std::vector<int64_t>& shape, bool optional,
                    bool allow_bf16) override {
    if (layer <= 0)
      entries.append(py::dict(py::arg("layer") = layer, py::arg("name") = name,
                              py::arg("shape") = py::tuple(py::cast(shape)), py::arg("optional") = optional,
                              py::arg("matrix") = allow_bf16));
    return {};
  }
  int64_t layers() override { return n_layers_; }
  py::list entries;

 private:
  int64_t n_layers_;
};

struct PyModel {
  std::unique_ptr<tmech::Model> model;
  std::vector<py::object> keep;  // the weight arrays the model points into

  PyModel(const py::dict& config, const py::dict& weights) {
    tmech::ModelConfig c = read_config(config);
    WeightsDict source(weights, keep);
    tmech::ModelWeights w = tmech::read_weights(c, source);
    model = std::make_unique<tmech::Model>(c, std::move(w));
  }
};

}  // namespace

void bind_model(py::module_& m) {
  m.def(
      "weight_schema",
      [](const py::dict& config) {
        tmech::ModelConfig c = read_config(config);
        SchemaRecorder recorder(c.n_layers);
        tmech::read_weights(c, recorder);
        return recorder.entries;
      },
      py::arg("config"),
      "[{layer (-1 outside the blocks, 0 for every block), name, shape, optional, matrix}] of the weights a "
      "config needs; matrix: a linear map's weight, which the bf16 mode stores in bfloat16");
  m.def("activation_names", &tmech::activation_names,
        "[(name, canonical name)] of every MLP activation the core computes, as a config may name it");
  py::class_<PyModel>(m, "Model")
      .def(py::init<const py::dict&, const py::dict&>(), py::arg("config"), py::arg("weights"))
      .def(
          "new_cache", [](PyModel& pm, int64_t batch) { return pm.model->new_cache(batch); }, py::arg("batch"))
      .def("hook_ids", [](PyModel& pm) { return pm.model->hook_ids(); })
      .def(
          "forward",
          [](PyModel& pm, tmech::KVCache* cache, std::optional<py::array_t<int32_t, py::array::c_style>> tokens,
             PyHookPlan* plan, const std::string& logits, int64_t start, int64_t stop, std::optional<FloatArray> resid,
             std::optional<RowCounts> pad_left, std::optional<RowCounts> pad_right, tmech::Tape* tape) {
            const tmech::ModelConfig& cfg = pm.model->config();
            if (tokens && tokens->ndim() != 2) throw std::invalid_argument("tokens must be [batch, pos]");
            if (resid && (resid->ndim() != 3 || resid->shape(2) != cfg.d_model))
              throw std::invalid_argument("the residual must be [batch, pos, d_model]");
            if (!tokens && !resid) throw std::invalid_argument("give tokens or a residual");
            const int64_t B = resid ? resid->shape(0) : tokens->shape(0);
            const int64_t T = resid ? resid->shape(1) : tokens->shape(1);
            if (tokens && resid && (tokens->shape(0) != B || tokens->shape(1) != T))
              throw std::invalid_argument("tokens and residual cover different [batch, pos]");
            for (const auto& counts : {pad_left, pad_right})
              if (counts && (counts->ndim() != 1 || counts->shape(0) != B))
                throw std::invalid_argument("padding counts are one per row: [batch]");
            const tmech::Padding padding{pad_left ? pad_left->data() : nullptr,
                                         pad_right ? pad_right->data() : nullptr};
            const tmech::LogitsMode mode = tmech::parse_logits_mode(logits);
            const bool returns_resid = stop >= 0;  // an explicit last block: the residual after it
            const int64_t V = cfg.d_vocab;
            const std::vector<int64_t> shape = returns_resid ? std::vector<int64_t>{B, T, cfg.d_model}
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
              pm.model->forward(cache, tokens ? tokens->data() : nullptr, B, T, plan ? &plan->plan : nullptr, mode,
                                returns_resid ? nullptr : out.mutable_data(), span, padding, tape);
            }
            return out;
          },
          py::arg("cache"), py::arg("tokens"), py::arg("plan") = nullptr, py::arg("logits") = "all",
          py::arg("start") = 0, py::arg("stop") = -1, py::arg("resid") = std::nullopt,
          py::arg("pad_left") = std::nullopt, py::arg("pad_right") = std::nullopt, py::arg("tape") = nullptr)
      .def(
          "backward",
          [](PyModel& pm, tmech::Tape& tape, const FloatArray& grad_logits, PyHookPlan* plan, bool freeze_pattern,
             bool freeze_scales) { model_backward(*pm.model, tape, grad_logits, plan, freeze_pattern, freeze_scales); },
          py::arg("tape"), py::arg("grad_logits"), py::arg("plan") = nullptr, py::arg("freeze_pattern") = false,
          py::arg("freeze_scales") = false);
}
