// Shared helpers of the CPU kernels.
#pragma once
#include <torch/extension.h>
#include <torch/library.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <cstring>
#include <limits>

namespace cycleseg {

// The accumulation dtype of every fused op (both backends): fp64 for fp64 inputs, fp32 otherwise.
inline at::ScalarType acc_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Outputs start NaN-filled while this is on (tests: a kernel must write every element it returns; set
// through the extension module's set_poison_outputs).
inline bool& poison_outputs() {
  static bool on = false;
  return on;
}

inline at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  if (poison_outputs()) return at::full(sizes, std::numeric_limits<double>::quiet_NaN(), options);
  return at::empty(sizes, options);
}

// Same shape and memory format (strides) as x.
inline at::Tensor new_output_like(const at::Tensor& x) {
  auto out = at::empty_like(x);
  return poison_outputs() ? out.fill_(std::numeric_limits<double>::quiet_NaN()) : out;
}

inline bool is_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// Pixels handled together by one task: long enough to vectorise the inner loops, and a fixed size so
// that partial sums (and so every reduction) do not depend on the number of threads.
constexpr int64_t kBlock = 256;

// exp for the fp32 accumulation path, branch-free so that loops over it vectorise (std::exp is a scalar
// call): Cephes' expf, exp(x) = 2^k exp(r), |r| <= ln2 / 2, degree-6 polynomial, ~1-2 ulp.
// NaN stays NaN (std::max / std::min return their first argument when it is NaN); arguments below -87
// (exp(-inf) included) give ~1e-38 instead of 0, which a softmax cannot tell apart.
inline float vexp(float x) {
  const float xc = std::min(std::max(x, -87.0f), 88.0f);
  const float k = std::floor(xc * 1.44269504088896341f + 0.5f);
  const float r = (xc - k * 0.693359375f) - k * -2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const int bits = (static_cast<int>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
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
