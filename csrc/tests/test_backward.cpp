// The reverse pass on the tiny model: hook_embed's gradient against central
// differences of the forward (the metric summed in double), every hook point's
// gradient captured in TransformerLens's shapes, the frozen-pattern option, and
// tapes refused where they do not fit.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/forward.hpp"
#include "tests/native_tests.hpp"
#include "tests/tiny_model.hpp"

namespace tmech::test {

namespace {

// sum(G * logits) in double
double metric(Model& model, const std::vector<int32_t>& tokens, int64_t B, int64_t T, const std::vector<float>& G,
              Padding padding = {}) {
  std::vector<float> logits(G.size());
  model.forward(nullptr, tokens.data(), B, T, nullptr, LogitsMode::all, logits.data(), {}, padding);
  double s = 0;
  for (size_t i = 0; i < G.size(); ++i) s += static_cast<double>(G[i]) * logits[i];
  return s;
}

// A padded batch (row 0 padded on the left, row 1 on the right; grad_logits 0 at
// the padding, so the unembedding's backward skips those rows): hook_embed's
// gradient against central differences of the same padded forward.
void check_padded(std::mt19937& rng, bool llama, const std::string& arch) {
  TinyModel tiny(rng, llama);
  float* wte = tiny.store[0].data();
  const std::vector<float> unembed = tiny.store[0];
  tiny.w.unembed = unembed.data();
  Model model(tiny.cfg, tiny.w);
  const int64_t B = 2, T = 5, V = tiny.cfg.d_vocab, D = tiny.cfg.d_model;
  const std::vector<int64_t> left = {2, 0}, right = {0, 1};
  const Padding padding{left.data(), right.data()};
  std::vector<int32_t> tokens(B * T);
  for (int64_t i = 0; i < B * T; ++i) tokens[i] = static_cast<int32_t>((5 * i + 1) % V);
  std::vector<float> G = randn(B * T * V, rng, 1.f);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      if (t < left[b] || t >= T - right[b])
        std::fill(G.begin() + (b * T + t) * V, G.begin() + (b * T + t + 1) * V, 0.f);
  Tape tape;
  std::vector<float> logits(B * T * V);
  model.forward(nullptr, tokens.data(), B, T, nullptr, LogitsMode::all, logits.data(), {}, padding, &tape);
  HookPlan plan(tiny.cfg.n_layers);
  plan.add(hook_id(HookKind::embed, 0, tiny.cfg.n_layers), Edit{});
  model.backward(tape, G.data(), &plan, BackwardOptions{});
  check(plan.captured().size() == 1, arch + "padded: hook_embed's gradient captured");
  if (plan.captured().size() != 1) return;
  const float* grad = plan.captured()[0].second.data.get();
  const std::vector<float> u = randn(B * T * D, rng, 1.f);
  double analytic = 0, magnitude = 0;
  for (int64_t i = 0; i < B * T * D; ++i) {
    analytic += static_cast<double>(grad[i]) * u[i];
    magnitude += std::abs(static_cast<double>(grad[i]) * u[i]);
  }
  const float eps = 1e-3f;
  auto shift = [&](float s) {
    for (int64_t r = 0; r < B * T; ++r)
      for (int64_t d = 0; d < D; ++d) wte[tokens[r] * D + d] += s * u[r * D + d];
  };
  shift(eps);
  const double up = metric(model, tokens, B, T, G, padding);
  shift(-2 * eps);
  const double down = metric(model, tokens, B, T, G, padding);
  shift(eps);
  const double numeric = (up - down) / (2 * eps);
  check(std::abs(analytic - numeric) <= 1e-3 * magnitude,
        arch + "padded: hook_embed's gradient equals finite differences (" + std::to_string(analytic) + " vs " +
            std::to_string(numeric) + ")");
  bool quiet = true;  // a left pad is seen by no real token: no gradient
  for (int64_t t = 0; t < left[0]; ++t)
    for (int64_t d = 0; d < D; ++d) quiet = quiet && grad[t * D + d] == 0.f;
  check(quiet, arch + "padded: left padding gets no gradient");
}

}  // namespace

void test_backward(std::mt19937& rng, bool llama) {
  const std::string arch = llama ? "backward (llama): " : "backward (gpt2): ";
  TinyModel tiny(rng, llama);
  float* wte = tiny.store[0].data();
  const std::vector<float> unembed = tiny.store[0];  // untied: moving wte's rows moves the embedding only
  tiny.w.unembed = unembed.data();
  Model model(tiny.cfg, tiny.w);
  const int64_t B = 2, T = 6, V = tiny.cfg.d_vocab, D = tiny.cfg.d_model;
  std::vector<int32_t> tokens(B * T);
  for (int64_t i = 0; i < B * T; ++i) tokens[i] = static_cast<int32_t>((7 * i + 3) % V);  // distinct: one row each
  const std::vector<float> G = randn(B * T * V, rng, 1.f);

  Tape tape;
  tape.from = 0;
  std::vector<float> logits(B * T * V);
  model.forward(nullptr, tokens.data(), B, T, nullptr, LogitsMode::all, logits.data(), {}, {}, &tape);
  HookPlan plan(tiny.cfg.n_layers);
  std::vector<int> ids;  // the shared-input points: a backward does not run the per-head modes or hook_mlp_in yet
  std::vector<int> skipped;
  for (int64_t l = 0; l < tiny.cfg.n_layers; ++l)
    for (HookKind kind : {HookKind::attn_in, HookKind::q_input, HookKind::k_input, HookKind::v_input, HookKind::mlp_in})
      skipped.push_back(hook_id(kind, l, tiny.cfg.n_layers));
  for (int id : model.hook_ids())
    if (std::find(skipped.begin(), skipped.end(), id) == skipped.end()) ids.push_back(id);
  for (int id : ids) plan.add(id, Edit{});
  model.backward(tape, G.data(), &plan, BackwardOptions{});
  check(plan.captured().size() == ids.size(), arch + "every hook point's gradient captured");
  const float* embed_grad = nullptr;
  for (auto& [id, c] : plan.captured()) {
    if (id == hook_id(HookKind::embed, 0, tiny.cfg.n_layers)) embed_grad = c.data.get();
    if (id == hook_id(HookKind::pattern, 1, tiny.cfg.n_layers))
      check(c.shape == std::vector<int64_t>{B, tiny.cfg.n_heads, T, T}, arch + "pattern gradient's shape");
  }
  check(embed_grad != nullptr, arch + "hook_embed's gradient");
  if (!embed_grad) return;

  // d metric along a random direction u of the token embeddings, against (f(+eps) - f(-eps)) / 2 eps
  const std::vector<float> u = randn(B * T * D, rng, 1.f);
  double analytic = 0, magnitude = 0;  // magnitude: the sum's scale before cancellation
  for (int64_t i = 0; i < B * T * D; ++i) {
    analytic += static_cast<double>(embed_grad[i]) * u[i];
    magnitude += std::abs(static_cast<double>(embed_grad[i]) * u[i]);
  }
  const float eps = 1e-3f;
  auto shift = [&](float s) {
    for (int64_t r = 0; r < B * T; ++r)
      for (int64_t d = 0; d < D; ++d) wte[tokens[r] * D + d] += s * u[r * D + d];
  };
  shift(eps);
  const double up = metric(model, tokens, B, T, G);
  shift(-2 * eps);
  const double down = metric(model, tokens, B, T, G);
  shift(eps);
  const double numeric = (up - down) / (2 * eps);
  check(std::abs(analytic - numeric) <= 1e-3 * magnitude, arch + "hook_embed's gradient equals finite differences (" +
                                                              std::to_string(analytic) + " vs " +
                                                              std::to_string(numeric) + ")");

  // A frozen pattern: no gradient reaches the queries and keys.
  HookPlan frozen(tiny.cfg.n_layers);
  frozen.add(hook_id(HookKind::q, 0, tiny.cfg.n_layers), Edit{});
  BackwardOptions opt;
  opt.freeze_pattern = true;
  model.backward(tape, G.data(), &frozen, opt);
  bool zero = frozen.captured().size() == 1;
  for (int64_t i = 0; zero && i < B * T * tiny.cfg.d_attn(); ++i) zero = frozen.captured()[0].second.data[i] == 0.f;
  check(zero, arch + "a frozen pattern leaves hook_q's gradient 0");

  // Tapes that do not fit are refused.
  Model other(tiny.cfg, tiny.w);
  bool threw = false;
  try {
    other.backward(tape, G.data(), nullptr, BackwardOptions{});
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  check(threw, arch + "another model's tape is refused");
  threw = false;
  KVCache cache = model.new_cache(B);
  try {
    model.forward(&cache, tokens.data(), B, T, nullptr, LogitsMode::all, logits.data(), {}, {}, &tape);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  check(threw, arch + "a tape with a KV cache is refused");

  // From block 1's residual input: the gradients there equal the whole run's.
  HookPlan whole(tiny.cfg.n_layers), part(tiny.cfg.n_layers), resid(tiny.cfg.n_layers);
  const int at = hook_id(HookKind::resid_pre, 1, tiny.cfg.n_layers);
  whole.add(at, Edit{});
  resid.add(at, Edit{});
  model.forward(nullptr, tokens.data(), B, T, &resid, LogitsMode::all, logits.data());
  const std::vector<float> x1(resid.captured()[0].second.data.get(), resid.captured()[0].second.data.get() + B * T * D);
  model.backward(tape, G.data(), &whole, BackwardOptions{});
  Tape from1;
  from1.from = 0;
  threw = false;
  try {  // a tape from block 0 needs a forward from block 0
    model.forward(nullptr, nullptr, B, T, nullptr, LogitsMode::all, logits.data(), BlockSpan{1, -1, x1.data()}, {},
                  &from1);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  check(threw, arch + "a tape below the forward's first block is refused");
  from1.from = 1;
  model.forward(nullptr, nullptr, B, T, nullptr, LogitsMode::all, logits.data(), BlockSpan{1, -1, x1.data()}, {},
                &from1);
  part.add(at, Edit{});
  model.backward(from1, G.data(), &part, BackwardOptions{});
  double diff = 0, scale = 0;
  for (int64_t i = 0; i < B * T * D; ++i) {
    diff = std::max(
        diff, static_cast<double>(std::abs(part.captured()[0].second.data[i] - whole.captured()[0].second.data[i])));
    scale = std::max(scale, static_cast<double>(std::abs(whole.captured()[0].second.data[i])));
  }
  check(diff <= 1e-5 * scale, arch + "a backward from block 1's residual equals the whole run's there");

  // From block 0's residual input: the embeddings never ran, so hook_embed gets no gradient.
  Tape from0;
  HookPlan embed(tiny.cfg.n_layers);
  embed.add(hook_id(HookKind::embed, 0, tiny.cfg.n_layers), Edit{});
  model.forward(nullptr, nullptr, B, T, nullptr, LogitsMode::all, logits.data(), BlockSpan{0, -1, x1.data()}, {},
                &from0);
  model.backward(from0, G.data(), &embed, BackwardOptions{});
  check(embed.captured().empty(), arch + "a backward from block 0's residual input visits no hook_embed");
  check_padded(rng, llama, arch);
}

}  // namespace tmech::test
