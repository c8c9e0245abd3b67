// Instance norm (affine=False, biased variance) + leaky ReLU on the CPU, one (n, c) plane per task.
//
//   y = act((x - mean) rstd),  act(v) = v < 0 ? slope v : v   (slope 0: ReLU, 1: no activation)
// act is written with `v < 0` so that NaN propagates (std::max(0, NaN) would return 0).
// Forward: exact two-pass statistics per plane (mean, then sum of squared deviations); saves mean and
//   rstd in the accumulation type.
// Backward: x_hat recomputed from x, g = dy act'(x_hat), a = sum(g), b = sum(g x_hat),
//   dx = rstd (g - a / HW - x_hat b / HW).
// Outputs are allocated by the caller (cycleseg/ops/alloc.py); tensors are contiguous NCHW.
#include "common.h"

namespace cycleseg {

static void check_plane_tensor(const at::Tensor& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.sizes() == x.sizes(),
              "instance_norm_relu (C++): ", name, " must be a contiguous CPU tensor of shape ", x.sizes());
}

void instance_norm_relu_fwd(const at::Tensor& x, double eps, double slope, at::Tensor y, at::Tensor mean,
                            at::Tensor rstd) {
  TORCH_CHECK(x.dim() == 4, "instance_norm_relu: expected (N, C, H, W), got ", x.sizes());
  check_plane_tensor(x, x, "input");
  check_plane_tensor(y, x, "output");
  const int64_t planes = x.size(0) * x.size(1), HW = x.size(2) * x.size(3);
  TORCH_CHECK(HW > 0, "instance_norm_relu: empty planes");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "instance_norm_relu_fwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    acc_t* mp = mean.data_ptr<acc_t>();
    acc_t* rp = rstd.data_ptr<acc_t>();
    const acc_t s = static_cast<acc_t>(slope);
    at::parallel_for(0, planes, 1, [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q) {
        const scalar_t* xq = xp + q * HW;
        const acc_t mu = lane_sum<acc_t>(HW, [&](int64_t i) { return static_cast<acc_t>(xq[i]); }) / HW;
        const acc_t var = lane_sum<acc_t>(HW, [&](int64_t i) {
          const acc_t d = static_cast<acc_t>(xq[i]) - mu;
          return d * d;
        }) / HW;
        const acc_t r = acc_t(1) / std::sqrt(var + static_cast<acc_t>(eps));
        mp[q] = mu;
        rp[q] = r;
        scalar_t* yq = yp + q * HW;
        for (int64_t i = 0; i < HW; ++i) {
          const acc_t v = (static_cast<acc_t>(xq[i]) - mu) * r;
          const acc_t vs = v * s;                                   // unconditional: the select vectorises
          yq[i] = static_cast<scalar_t>(v < 0 ? vs : v);
        }
      }
    });
  });
}

// One plane's backward; RELU selects dy or 0 (exact for any dy), otherwise dy or slope * dy. Both
// selects are between precomputed values, so the loops vectorise.
template <bool RELU, typename scalar_t, typename acc_t>
static void plane_bwd(const scalar_t* xq, const scalar_t* gq, scalar_t* dq, int64_t HW, acc_t mu, acc_t r, acc_t s) {
  auto gate = [&](int64_t i, acc_t& xh) {
    xh = (static_cast<acc_t>(xq[i]) - mu) * r;
    const acc_t d = static_cast<acc_t>(gq[i]);
    const acc_t off = RELU ? acc_t(0) : d * s;
    return xh > 0 ? d : off;
  };
  // One pass for both sums, kLanes independent accumulators each (vectorisable).
  acc_t la[kLanes] = {}, lb[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= HW; i += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      acc_t xh;
      const acc_t g = gate(i + j, xh);
      la[j] += g;
      lb[j] += g * xh;
    }
  acc_t a = 0, b = 0;
  for (; i < HW; ++i) {
    acc_t xh;
    const acc_t g = gate(i, xh);
    a += g;
    b += g * xh;
  }
  for (int j = 0; j < kLanes; ++j) {
    a += la[j];
    b += lb[j];
  }
  a /= HW;
  b /= HW;
  for (int64_t k = 0; k < HW; ++k) {
    acc_t xh;
    const acc_t g = gate(k, xh);
    dq[k] = static_cast<scalar_t>(r * (g - a - xh * b));
  }
}

void instance_norm_relu_bwd(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean,
                            const at::Tensor& rstd, double slope, at::Tensor dx) {
  check_plane_tensor(x, x, "input");
  check_plane_tensor(dy, x, "grad");
  check_plane_tensor(dx, x, "grad_input");
  TORCH_CHECK(dy.scalar_type() == x.scalar_type(), "instance_norm_relu_backward: grad dtype differs from input");
  const int64_t planes = x.size(0) * x.size(1), HW = x.size(2) * x.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "instance_norm_relu_bwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gp = dy.data_ptr<scalar_t>();
    scalar_t* dp = dx.data_ptr<scalar_t>();
    const auto m = mean.contiguous();
    const auto rs = rstd.contiguous();
    const acc_t* mp = m.data_ptr<acc_t>();
    const acc_t* rp = rs.data_ptr<acc_t>();
    const acc_t s = static_cast<acc_t>(slope);
    at::parallel_for(0, planes, 1, [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q) {
        if (s == 0)
          plane_bwd<true>(xp + q * HW, gp + q * HW, dp + q * HW, HW, mp[q], rp[q], s);
        else
          plane_bwd<false>(xp + q * HW, gp + q * HW, dp + q * HW, HW, mp[q], rp[q], s);
      }
    });
  });
}

}  // namespace cycleseg
