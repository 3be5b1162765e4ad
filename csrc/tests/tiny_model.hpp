// A random-weight model small enough for the native tests: GPT-2-like, or
// Llama-like (RMSNorm, rotary, 2 key/value heads for 4 query heads, a gated
// MLP, [out, in] weights and no biases).
#pragma once
#include <cmath>
#include <random>
#include <vector>

#include "core/config.hpp"
#include "core/weights.hpp"
#include "tests/native_tests.hpp"

namespace tmech::test {

struct TinyModel {
  ModelConfig cfg;
  std::vector<std::vector<float>> store;
  ModelWeights w;

  TinyModel(std::mt19937& rng, bool llama) {
    cfg.n_layers = 2, cfg.d_model = 40, cfg.n_heads = 4, cfg.d_head = 10, cfg.d_mlp = 72;
    cfg.d_vocab = 53, cfg.n_ctx = 16, cfg.attn_scale = std::sqrt(10.f);
    if (llama) {
      cfg.normalization = Normalization::rms_norm, cfg.positions = Positions::rotary;
      cfg.layout = WeightLayout::out_in, cfg.act_fn = Activation::silu;
      cfg.n_key_value_heads = 2, cfg.gated_mlp = true, cfg.rotary_dim = cfg.d_head;
    }
    const int64_t D = cfg.d_model, F = cfg.d_mlp, V = cfg.d_vocab, Dqkv = cfg.d_qkv();
    auto make = [&](size_t n, float scale) {
      store.push_back(randn(n, rng, scale));
      return store.back().data();
    };
    store.reserve(64);
    auto bias = [&](size_t n) { return llama ? nullptr : make(n, 0.1f); };
    w.wte = make(V * D, 0.5f);
    if (llama) {
      store.emplace_back();
      for (int64_t i = 0; i < cfg.rotary_dim / 2; ++i)
        store.back().push_back(std::pow(100.f, -2.f * i / cfg.rotary_dim));
      w.rope_inv_freq = store.back().data();
    } else {
      w.wpe = make(cfg.n_ctx * D, 0.2f);
    }
    w.lnf_w = make(D, 1.f);
    w.lnf_b = bias(D);
    w.unembed = w.wte;
    for (int l = 0; l < cfg.n_layers; ++l) {
      LayerWeights lw;
      lw.ln1_w = make(D, 1.f), lw.ln1_b = bias(D);
      lw.qkv_w = make(D * Dqkv, 0.3f), lw.qkv_b = bias(Dqkv);
      lw.out_w = make(D * D, 0.2f), lw.out_b = bias(D);
      lw.ln2_w = make(D, 1.f), lw.ln2_b = bias(D);
      if (llama) lw.gate_w = make(D * F, 0.2f);
      lw.fc_w = make(D * F, 0.2f), lw.fc_b = bias(F);
      lw.proj_w = make(F * D, 0.2f), lw.proj_b = bias(D);
      w.layers.push_back(lw);
    }
  }
};

}  // namespace tmech::test
