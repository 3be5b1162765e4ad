// _core.Trainer over the training core (csrc/sae/train.hpp): a config dict
// in, numpy arrays in SAELens's layout out.
#include "sae/train.hpp"

#include <pybind11/stl.h>

#include <optional>
#include <string>

#include "python/bindings.hpp"
#include "python/numpy_buffers.hpp"
#include "sae/sae.hpp"  // shape_string

namespace {

using FloatIn = py::array_t<float, py::array::c_style | py::array::forcecast>;

tmech::TrainConfig train_config(const py::dict& d) {
  tmech::TrainConfig c;
  c.arch =
      tmech::train_arch(tmech::parse_sae_activation(d["activation"].cast<std::string>()), d["batch_topk"].cast<bool>());
  c.d_in = d["d_in"].cast<int64_t>();
  c.d_sae = d["d_sae"].cast<int64_t>();
  c.d_out = d["d_out"].cast<int64_t>();
  c.skip = d["skip"].cast<bool>();
  c.k = d["k"].cast<double>();
  c.rescale_acts_by_decoder_norm = d["rescale_acts_by_decoder_norm"].cast<bool>();
  c.apply_b_dec_to_input = d["apply_b_dec_to_input"].cast<bool>();
  c.aux_coefficient = d["aux_loss_coefficient"].cast<double>();
  c.topk_threshold_lr = d["topk_threshold_lr"].cast<double>();
  c.bandwidth = d["jumprelu_bandwidth"].cast<double>();
  c.init_threshold = d["jumprelu_init_threshold"].cast<double>();
  c.decoder_init_norm = d["decoder_init_norm"].cast<double>();
  c.dead_tokens = d["dead_tokens"].cast<int64_t>();
  c.beta1 = d["adam_beta1"].cast<double>();
  c.beta2 = d["adam_beta2"].cast<double>();
  c.eps = d["adam_eps"].cast<double>();
  c.max_grad_norm = d["max_grad_norm"].cast<double>();
  return c;
}

// a [rows, width] batch of `rows` rows (rows < 0: any)
void check_batch(const FloatIn& a, int64_t width, int64_t rows, const char* name) {
  if (a.ndim() != 2 || a.shape(1) != width || (rows >= 0 && a.shape(0) != rows))
    throw std::invalid_argument(std::string(name) + " must be [rows, " + std::to_string(width) + "]");
}

}  // namespace

void bind_train(py::module_& m) {
  py::class_<tmech::Trainer>(m, "Trainer")
      .def(py::init([](const py::dict& cfg, uint64_t seed) { return new tmech::Trainer(train_config(cfg), seed); }),
           py::arg("config"), py::arg("seed"))
      .def(
          "step",
          [](tmech::Trainer& t, FloatIn x, std::optional<FloatIn> y, double lr, double coefficient) {
            const tmech::TrainConfig& c = t.config();
            check_batch(x, c.d_in, -1, "x");
            if (y) check_batch(*y, c.d_out, x.shape(0), "y");
            if (!y && c.d_in != c.d_out) throw std::invalid_argument("a transcoder's step needs y");
            tmech::StepStats s;
            {
              py::gil_scoped_release nogil;
              s = t.step(x.data(), y ? y->data() : nullptr, x.shape(0), lr, coefficient);
            }
            py::dict d;
            d["loss"] = s.loss;
            d["mse"] = s.mse;
            d["aux_loss"] = s.aux_loss;
            d["sparsity_loss"] = s.sparsity_loss;
            d["l0"] = s.l0;
            d["explained_variance"] = s.explained_variance;
            d["n_dead"] = s.n_dead;
            return d;
          },
          py::arg("x"), py::arg("y"), py::arg("lr"), py::arg("coefficient"))
      .def("names",
           [](tmech::Trainer& t) {
             std::vector<std::string> names;
             for (const tmech::TrainParam& q : t.params()) names.push_back(q.name);
             return names;
           })
      .def(
          "get",
          [](tmech::Trainer& t, const std::string& name, const std::string& what) {
            std::vector<py::ssize_t> shape(t.param(name).shape.begin(), t.param(name).shape.end());
            return tmech::owned_array(t.get(name, what), shape);
          },
          py::arg("name"), py::arg("what") = "value")
      .def(
          "set",
          [](tmech::Trainer& t, const std::string& name, const std::string& what, FloatIn a) {
            const std::vector<int64_t>& shape = t.param(name).shape;
            if (std::vector<int64_t>(a.shape(), a.shape() + a.ndim()) != shape)
              throw std::invalid_argument(name + " must have shape " + tmech::shape_string(shape));
            t.set(name, what, a.data());
          },
          py::arg("name"), py::arg("what"), py::arg("array"))
      .def_readwrite("steps", &tmech::Trainer::steps)
      .def_readwrite("topk_threshold", &tmech::Trainer::topk_threshold)
      .def_property(
          "tokens_since_fired",
          [](tmech::Trainer& t) {
            return tmech::owned_array(std::vector<int64_t>(t.tokens_since_fired),
                                      {static_cast<py::ssize_t>(t.tokens_since_fired.size())});
          },
          [](tmech::Trainer& t, py::array_t<int64_t, py::array::c_style | py::array::forcecast> a) {
            if (a.ndim() != 1 || a.shape(0) != static_cast<py::ssize_t>(t.tokens_since_fired.size()))
              throw std::invalid_argument("tokens_since_fired must be [d_sae]");
            t.tokens_since_fired.assign(a.data(), a.data() + a.shape(0));
          });
}
