// Padded batches (core/forward.hpp's Padding): each padded row gives what the
// row gives alone, on the fused and the phased attention paths, prefilled and
// decoded through a KV cache that remembers the left padding; padding query
// rows attend to nothing; bad counts throw and leave the cache as it was.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/forward.hpp"
#include "tests/native_tests.hpp"
#include "tests/tiny_model.hpp"

namespace tmech::test {
namespace {

constexpr int64_t kRows = 3, kWidth = 9;
const int64_t kLengths[kRows] = {9, 1, 4};  // a full row, one token, one in between

struct Batch {
  std::vector<std::vector<int32_t>> own;  // each row's real tokens
  std::vector<int32_t> tokens;            // [kRows, kWidth], padded with token 0
  std::vector<int64_t> left, right;
};

// The rows padded on the left (side 0), the right (1) or both (2: half each).
Batch padded(const std::vector<std::vector<int32_t>>& own, int side) {
  Batch batch{own, std::vector<int32_t>(kRows * kWidth, 0), {}, {}};
  for (int64_t b = 0; b < kRows; ++b) {
    const int64_t pad = kWidth - kLengths[b];
    const int64_t left = side == 0 ? pad : side == 1 ? 0 : pad / 2;
    batch.left.push_back(left);
    batch.right.push_back(pad - left);
    std::copy(own[b].begin(), own[b].end(), batch.tokens.begin() + b * kWidth + left);
  }
  return batch;
}

// max |a - b| over the real positions of row b: padded [kWidth, n] rows against own [length, n] rows.
double row_diff(const float* padded_rows, const float* own_rows, int64_t left, int64_t length, int64_t n) {
  double worst = 0;
  for (int64_t i = 0; i < length * n; ++i)
    worst = std::max(worst, double(std::abs(padded_rows[left * n + i] - own_rows[i])));
  return worst;
}

bool throws(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::invalid_argument&) {  // CacheMismatch too
    return true;
  }
  return false;
}

void test_padded_rows(Model& model, const std::vector<std::vector<int32_t>>& own, const std::string& arch) {
  const int64_t V = model.config().d_vocab;
  std::vector<std::vector<float>> alone(kRows);
  for (int64_t b = 0; b < kRows; ++b) {
    alone[b].resize(kLengths[b] * V);
    model.forward(nullptr, own[b].data(), 1, kLengths[b], nullptr, LogitsMode::all, alone[b].data());
  }
  const int64_t pattern = hook_id(HookKind::pattern, 1, model.config().n_layers);
  for (int side = 0; side < 3; ++side) {
    const std::string what = arch + (side == 0 ? "left" : side == 1 ? "right" : "both sides") + " padding: ";
    const Batch batch = padded(own, side);
    const Padding padding{batch.left.data(), batch.right.data()};
    std::vector<float> fused(kRows * kWidth * V), phased(fused.size());
    model.forward(nullptr, batch.tokens.data(), kRows, kWidth, nullptr, LogitsMode::all, fused.data(), {}, padding);
    HookPlan plan(model.config().n_layers);  // a captured pattern: the phased path
    plan.add(pattern, Edit{});
    model.forward(nullptr, batch.tokens.data(), kRows, kWidth, &plan, LogitsMode::all, phased.data(), {}, padding);
    double worst = 0, phased_worst = 0;
    for (int64_t b = 0; b < kRows; ++b) {
      worst = std::max(worst, row_diff(fused.data() + b * kWidth * V, alone[b].data(), batch.left[b], kLengths[b], V));
      phased_worst = std::max(phased_worst,
                              row_diff(phased.data() + b * kWidth * V, alone[b].data(), batch.left[b], kLengths[b], V));
    }
    check(worst < 1e-4, what + "each row's logits equal the row's own run (fused attention)");
    check(phased_worst < 1e-4, what + "each row's logits equal the row's own run (phased attention)");
    // pattern [batch, head, query, key]: a query before its row's first token attends to nothing,
    // the others to the row's real keys only, summing to one
    const Captured& p = plan.captured().at(0).second;
    const int64_t H = model.config().n_heads;
    bool rows_ok = true;
    for (int64_t b = 0; b < kRows; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t q = 0; q < kWidth; ++q) {
          const float* row = p.data.get() + ((b * H + h) * kWidth + q) * kWidth;
          double sum = 0, outside = 0;
          for (int64_t k = 0; k < kWidth; ++k) {
            sum += row[k];
            if (k < batch.left[b] || k >= kWidth - batch.right[b]) outside += std::abs(row[k]);
          }
          rows_ok = rows_ok && outside == 0 && std::abs(sum - (q < batch.left[b] ? 0.0 : 1.0)) < 1e-5;
        }
    check(rows_ok, what + "pattern rows: zero before a row's tokens, padding keys never attended");
  }
}

void test_padded_cache(Model& model, const std::vector<std::vector<int32_t>>& own, const std::string& arch) {
  const int64_t V = model.config().d_vocab, steps = 3;
  const Batch batch = padded(own, 0);
  const Padding left{batch.left.data(), nullptr};
  KVCache cache = model.new_cache(kRows);
  std::vector<float> last(kRows * V), prefill(kRows * kWidth * V);
  model.forward(&cache, batch.tokens.data(), kRows, kWidth, nullptr, LogitsMode::last, last.data(), {}, left);
  bool held = true;
  for (int64_t b = 0; b < kRows; ++b) held = held && cache.left_padding(b) == batch.left[b];
  check(held, arch + "the KV cache holds each row's left padding");
  // the same tokens decoded after the prompt, row by row alone and as a padded batch
  std::vector<int32_t> next = {5, 7, 11};
  double worst = 0;
  std::vector<KVCache> alone;
  for (int64_t b = 0; b < kRows; ++b) {
    alone.push_back(model.new_cache(1));
    model.forward(&alone[b], own[b].data(), 1, kLengths[b], nullptr, LogitsMode::none, nullptr);
  }
  for (int64_t s = 0; s < steps; ++s) {
    model.forward(&cache, next.data(), kRows, 1, nullptr, LogitsMode::last, last.data());
    for (int64_t b = 0; b < kRows; ++b) {
      std::vector<float> own_last(V);
      model.forward(&alone[b], &next[b], 1, 1, nullptr, LogitsMode::last, own_last.data());
      worst = std::max(worst, row_diff(last.data() + b * V, own_last.data(), 0, 1, V));
    }
  }
  check(worst < 1e-4, arch + "decoding after a left-padded prompt equals each row's own decoding");

  // refused: padding that would leave a gap, and rows of padding only; the cache stays as it was
  const int64_t n_past = cache.n_past();
  const std::vector<int64_t> one(kRows, 1), none(kRows, 0), all(kRows, kWidth);
  check(throws([&] {
          model.forward(&cache, next.data(), kRows, 1, nullptr, LogitsMode::none, nullptr, {}, {one.data()});
        }),
        arch + "left padding after real tokens is refused");
  check(throws([&] {
          model.forward(&cache, next.data(), kRows, 1, nullptr, LogitsMode::none, nullptr, {},
                        {none.data(), one.data()});
        }),
        arch + "right padding in a KV cache is refused");
  check(cache.n_past() == n_past && cache.left_padding(0) == batch.left[0], arch + "a refused call changes no cache");
  std::vector<int64_t> negative = {0, -1, 0};
  check(throws([&] {
          model.forward(nullptr, batch.tokens.data(), kRows, kWidth, nullptr, LogitsMode::none, nullptr, {},
                        {negative.data()});
        }),
        arch + "a negative padding count is refused");
  check(throws([&] {
          model.forward(nullptr, batch.tokens.data(), kRows, kWidth, nullptr, LogitsMode::none, nullptr, {},
                        {all.data()});
        }),
        arch + "a row of padding only is refused");
  const std::vector<int64_t> four(kRows, 4), five(kRows, 5);
  check(throws([&] {
          model.forward(nullptr, batch.tokens.data(), kRows, kWidth, nullptr, LogitsMode::none, nullptr, {},
                        {four.data(), five.data()});
        }),
        arch + "left and right padding covering a row are refused");

  // truncating into a row's padding leaves that row padding only; reset forgets it
  KVCache cut = cache.fork();
  cut.truncate(3);
  check(cut.left_padding(0) == 0 && cut.left_padding(1) == 3 && cut.left_padding(2) == 3,
        arch + "truncate shortens the left padding it cuts into");
  cut.reset();
  check(!cut.padded() && cut.left_padding(1) == 0, arch + "reset forgets the padding");
}

}  // namespace

void test_padding(std::mt19937& rng, bool llama) {
  TinyModel tiny(rng, llama);
  Model model(tiny.cfg, tiny.w);
  std::vector<std::vector<int32_t>> own(kRows);
  for (int64_t b = 0; b < kRows; ++b)
    for (int64_t t = 0; t < kLengths[b]; ++t)
      own[b].push_back(static_cast<int32_t>(1 + rng() % (tiny.cfg.d_vocab - 1)));
  const std::string arch = llama ? "llama: " : "gpt2: ";
  test_padded_rows(model, own, arch);
  test_padded_cache(model, own, arch);
}

}  // namespace tmech::test
