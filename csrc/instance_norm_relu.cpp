// Instance norm (affine=False, biased variance) + ReLU on the CPU, one (n, c) plane per task.
//
// Forward: exact two-pass statistics per plane (mean, then sum of squared deviations), then
//   y = max(0, (x - mean) * rstd); saves mean and rstd in the accumulation type.
// Backward: x_hat recomputed from x, g = dy * [x_hat > 0], a = sum(g), b = sum(g * x_hat),
//   dx = rstd * (g - a / HW - x_hat * b / HW).
#include "common.h"

namespace cycleseg {

std::vector<at::Tensor> instance_norm_relu_fwd(const at::Tensor& input, double eps) {
  TORCH_CHECK(input.dim() == 4, "instance_norm_relu: expected (N, C, H, W), got ", input.sizes());
  TORCH_CHECK(input.device().is_cpu(), "instance_norm_relu (C++): CPU tensors only");
  const auto x = input.contiguous();
  const int64_t planes = x.size(0) * x.size(1), HW = x.size(2) * x.size(3);
  TORCH_CHECK(HW > 0, "instance_norm_relu: empty planes");
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto y = at::empty_like(x);
  auto mean = at::empty({x.size(0), x.size(1)}, x.options().dtype(acc));
  auto rstd = at::empty({x.size(0), x.size(1)}, x.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "instance_norm_relu_fwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    acc_t* mp = mean.data_ptr<acc_t>();
    acc_t* rp = rstd.data_ptr<acc_t>();
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
        for (int64_t i = 0; i < HW; ++i)
          yq[i] = static_cast<scalar_t>(std::max(acc_t(0), (static_cast<acc_t>(xq[i]) - mu) * r));
      }
    });
  });
  return {y, mean, rstd};
}

at::Tensor instance_norm_relu_bwd(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& mean,
                                  const at::Tensor& rstd) {
  TORCH_CHECK(grad.sizes() == input.sizes(), "instance_norm_relu_backward: grad and input shapes differ");
  const auto x = input.contiguous();
  const auto dy = grad.to(x.scalar_type()).contiguous();
  const int64_t planes = x.size(0) * x.size(1), HW = x.size(2) * x.size(3);
  auto dx = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "instance_norm_relu_bwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gp = dy.data_ptr<scalar_t>();
    scalar_t* dp = dx.data_ptr<scalar_t>();
    const auto m = mean.contiguous();
    const auto rs = rstd.contiguous();
    const acc_t* mp = m.data_ptr<acc_t>();
    const acc_t* rp = rs.data_ptr<acc_t>();
    at::parallel_for(0, planes, 1, [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q) {
        const scalar_t* xq = xp + q * HW;
        const scalar_t* gq = gp + q * HW;
        const acc_t mu = mp[q], r = rp[q];
        // One pass for both sums, kLanes independent accumulators each (vectorisable).
        acc_t la[kLanes] = {}, lb[kLanes] = {};
        int64_t i = 0;
        for (; i + kLanes <= HW; i += kLanes)
          for (int j = 0; j < kLanes; ++j) {
            const acc_t xh = (static_cast<acc_t>(xq[i + j]) - mu) * r;
            const acc_t g = xh > 0 ? static_cast<acc_t>(gq[i + j]) : acc_t(0);
            la[j] += g;
            lb[j] += g * xh;
          }
        acc_t a = 0, b = 0;
        for (; i < HW; ++i) {
          const acc_t xh = (static_cast<acc_t>(xq[i]) - mu) * r;
          const acc_t g = xh > 0 ? static_cast<acc_t>(gq[i]) : acc_t(0);
          a += g;
          b += g * xh;
        }
        for (int j = 0; j < kLanes; ++j) {
          a += la[j];
          b += lb[j];
        }
        a /= HW;
        b /= HW;
        scalar_t* dq = dp + q * HW;
        for (int64_t k = 0; k < HW; ++k) {
          const acc_t xh = (static_cast<acc_t>(xq[k]) - mu) * r;
          const acc_t g = xh > 0 ? static_cast<acc_t>(gq[k]) : acc_t(0);
          dq[k] = static_cast<scalar_t>(r * (g - a - xh * b));
        }
      }
    });
  });
  return dx;
}

}  // namespace cycleseg
