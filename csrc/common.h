// Shared helpers of the CPU kernels.
#pragma once
#include <torch/extension.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <cstring>

namespace cycleseg {

// Pixels handled together by one task: long enough to vectorise the inner loops, and a fixed size so
// that partial sums (and so every reduction) do not depend on the number of threads.
constexpr int64_t kBlock = 256;

// exp for the fp32 accumulation path, written so that loops over it auto-vectorise (std::exp is a
// scalar call): Cephes' expf, exp(x) = 2^k exp(r), |r| <= ln2 / 2, degree-6 polynomial, ~1-2 ulp.
// exp(-inf) = 0 and exp(NaN) = NaN as std::exp; arguments below -87 flush to 0 (softmax never needs them).
inline float vexp(float x) {
  const float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float t = xc * 1.44269504088896341f;
  const int ki = static_cast<int>(t + (t >= 0.f ? 0.5f : -0.5f));     // round to nearest
  const float k = static_cast<float>(ki);
  const float r = (xc - k * 0.693359375f) - k * -2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  int bits = (ki + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const float e = y * scale;
  return x < -87.0f ? 0.0f : (x != x ? x : e);
}
inline double vexp(double x) { return std::exp(x); }

constexpr int kLanes = 16;  // independent accumulators, so that the sums vectorise without -ffast-math

template <typename T, typename F>
static T lane_sum(int64_t n, F f) {
  T acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += f(i + j);
  T s = 0;
  for (; i < n; ++i) s += f(i);
  for (int j = 0; j < kLanes; ++j) s += acc[j];
  return s;
}

// Deterministic sum of per-block partials, in block order.
inline double sum_partials(const std::vector<double>& p) {
  double s = 0.0;
  for (double v : p) s += v;
  return s;
}

}  // namespace cycleseg
