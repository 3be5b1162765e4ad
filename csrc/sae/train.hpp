// Training SAEs and transcoders with SAELens's (6.54) training semantics:
// one call, Trainer::step, runs the forward pass, the loss, the backward pass,
// torch's clip_grad_norm_(1.0) and one torch.optim.Adam step.
//
// Only the encoder is a dense GEMM. Everything after it walks the active
// latents: the decode, AuxK's decode, and every gradient (W_dec's rows and
// W_enc's columns are sums of outer products over the active (row, latent)
// pairs, gathered per latent so that each thread owns whole latents: no
// atomics, and the same bits whatever the thread count).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sae/sae.hpp"  // SaeActivation

namespace tmech {

enum class TrainArch { topk, batchtopk, jumprelu, standard };
// From the SAE's activation (its names: sae.cpp's table) and whether TopK is over the batch.
TrainArch train_arch(SaeActivation activation, bool batch_topk);

struct TrainConfig {
  TrainArch arch = TrainArch::topk;
  int64_t d_in = 0, d_sae = 0, d_out = 0;
  bool skip = false;                         // W_skip [d_out, d_in] (skip transcoders)
  double k = 0;                              // topk: per row; batchtopk: the mean per row
  bool rescale_acts_by_decoder_norm = true;  // topk, batchtopk
  bool apply_b_dec_to_input = true;          // SAEs (d_in == d_out and no y); never for transcoders
  double aux_coefficient = 1.0;              // AuxK (topk, batchtopk)
  double topk_threshold_lr = 0.01;           // batchtopk's running threshold
  double bandwidth = 0.05;                   // jumprelu's straight-through estimator
  double init_threshold = 0.01;              // jumprelu
  double decoder_init_norm = 0.1;            // <= 0: keep kaiming_uniform's norms
  int64_t dead_tokens = 1000 * 4096;         // dead: more tokens than this since it last fired
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double max_grad_norm = 1.0;  // <= 0: no clipping
  void validate() const;
};

// One parameter, in SAELens's layout and name; W_enc is kept transposed
// ([d_sae, d_in], `transposed`) so that a latent's encoder weights are one row.
struct TrainParam {
  std::string name;
  std::vector<int64_t> shape;  // SAELens's
  bool transposed = false;
  std::vector<float> value, grad, m, v;
};

struct StepStats {
  double loss = 0, mse = 0, aux_loss = 0, sparsity_loss = 0, l0 = 0, explained_variance = 0;
  int64_t n_dead = 0;  // after this step's firing counts
};

class Trainer {
 public:
  Trainer(TrainConfig cfg, uint64_t seed);
  const TrainConfig& config() const { return cfg_; }

  // x [n, d_in]; y [n, d_out] for transcoders (null: y = x); coefficient: the
  // sparsity coefficient (standard: L1, jumprelu: L0; unused otherwise).
  StepStats step(const float* x, const float* y, int64_t n, double lr, double coefficient);

  std::vector<TrainParam>& params() { return params_; }
  TrainParam& param(const std::string& name);  // std::out_of_range for an unknown one
  // A parameter's value, or Adam moment ("value", "m", "v"), in SAELens's layout.
  std::vector<float> get(const std::string& name, const std::string& what);
  void set(const std::string& name, const std::string& what, const float* data);

  int64_t steps = 0;                        // Adam's step count
  std::vector<int64_t> tokens_since_fired;  // [d_sae]
  double topk_threshold = 0;                // batchtopk's running threshold (float64, as SAELens)

 private:
  struct Work;  // the step's buffers, kept between steps
  void init(uint64_t seed);
  TrainParam& p(int i) { return params_[static_cast<size_t>(i)]; }
  std::vector<float>& slot(TrainParam& q, const std::string& what);
  void decoder_norms();
  double prepare_dead(int64_t n);
  void encode_rows(const float* sae_in, int64_t r0, int64_t r1);
  void select(int64_t n);
  // TopK's and BatchTopK's ranking value: the pre-activation times ||W_dec[j]|| when rescaling
  float act(float pre, int64_t j) const { return rescale_ ? pre * scale_[static_cast<size_t>(j)] : pre; }
  void near_threshold(int64_t n, float coef);
  void backward(int64_t n, const float* sae_in, const float* x, float coef);
  void sparse_backward(int64_t n, const float* sae_in, float coef);
  void dense_backward(int64_t n, const float* sae_in, float coef);
  void l1_decoder_grad(const float* acts, int64_t n, float coef);
  double total_variance(const float* target, int64_t n) const;
  double grad_norm() const;
  void adam(double lr, double clip);

  TrainConfig cfg_;
  std::vector<TrainParam> params_;
  int threshold_ = -1, skip_ = -1;
  bool rescale_ = false;          // TopK or BatchTopK, rescaling by decoder norms
  const float* scale_ = nullptr;  // ||W_dec[j]||, this step's  // their index in params_, -1 when absent
  std::shared_ptr<Work> work_;
};

// Per latent j: grad_rows[j] = sum over its entries e of coef[e] * src[rows[e]] (rows of
// `width` floats), entries grouped per latent by offsets, each group's key (its batch
// row) ascending; the sums run over blocks of keys, so that a block's src rows stay in
// cache, and each latent's in entry order, whatever the threads.
void accumulate_rows(const int64_t* offsets, const int32_t* key, const int32_t* rows, const float* coef,
                     const float* src, int64_t width, int64_t latents, float* grad_rows);

}  // namespace tmech
