// Shared helpers of the CPU kernels.
#pragma once
#include <torch/extension.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

namespace cycleseg {

// Pixels handled together by one task: long enough to vectorise the inner loops, and a fixed size so
// that partial sums (and so every reduction) do not depend on the number of threads.
constexpr int64_t kBlock = 256;

// Deterministic sum of per-block partials, in block order.
inline double sum_partials(const std::vector<double>& p) {
  double s = 0.0;
  for (double v : p) s += v;
  return s;
}

}  // namespace cycleseg
