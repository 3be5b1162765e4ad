// Shared by the native tests (one executable, one file per area of the
// core): a check that counts, random data, the error measure, and each
// area's entry point, which main.cpp calls.
#pragma once
#include <cstddef>
#include <random>
#include <string>
#include <vector>

namespace tmech::test {

void check(bool ok, const std::string& what);
std::vector<float> randn(size_t n, std::mt19937& rng, float scale = 1.f);
// max |a - ref| / max |ref|: the error relative to the reference's scale.
double max_rel(const std::vector<float>& a, const std::vector<double>& ref);

void test_runtime();                                            // test_runtime.cpp
void test_ops(std::mt19937& rng);                               // test_ops.cpp
void test_core();                                               // test_core.cpp
void test_forward(std::mt19937& rng, bool llama);               // test_core.cpp, per kernel variant
void test_padding(std::mt19937& rng, bool llama);               // test_padding.cpp, per kernel variant
void test_backward(std::mt19937& rng, bool llama);              // test_backward.cpp, per kernel variant
void test_kernels(const char* variant, std::mt19937& rng);      // test_kernels.cpp, per kernel variant
void test_sae();                                                // test_sae.cpp
void test_sae_variant(const char* variant, std::mt19937& rng);  // test_sae.cpp, per kernel variant
void test_train(std::mt19937& rng);                             // test_train.cpp
void test_dashboards(std::mt19937& rng);                        // test_dashboards.cpp

}  // namespace tmech::test
