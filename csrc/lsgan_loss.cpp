// Least-squares GAN loss on the CPU: mean((d - a)^2), in fixed blocks (deterministic), and its
// gradient 2 c g (d - a) / numel (c = 0.5 in the discriminator form 0.5 (mean((r - 1)^2) + mean(f^2))).
// Outputs are allocated by the caller (cycleseg/ops/alloc.py).
#include "common.h"

namespace cycleseg {

// mean((d - target)^2) of a contiguous score map, in double.
double lsgan_loss_fwd(const at::Tensor& d, double target) {
  TORCH_CHECK(d.numel() > 0, "lsgan_loss: empty score map");
  TORCH_CHECK(d.device().is_cpu() && d.is_contiguous(), "lsgan_loss (C++): contiguous CPU tensors only");
  const int64_t n = d.numel(), nb = (n + kBlock * 64 - 1) / (kBlock * 64);
  std::vector<double> part(nb, 0.0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.scalar_type(), "lsgan_loss_fwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* p = d.data_ptr<scalar_t>();
    const acc_t a = static_cast<acc_t>(target);
    at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t s = b * kBlock * 64, e = std::min(n, s + kBlock * 64);
        part[b] = lane_sum<acc_t>(e - s, [&](int64_t i) {
          const acc_t v = static_cast<acc_t>(p[s + i]) - a;
          return v * v;
        });
      }
    });
  });
  return sum_partials(part) / n;
}

void lsgan_loss_bwd(const at::Tensor& grad, const at::Tensor& d, double target, double coef, at::Tensor dd) {
  TORCH_CHECK(d.is_contiguous() && dd.is_contiguous() && dd.sizes() == d.sizes(),
              "lsgan_loss_backward (C++): contiguous tensors of one shape only");
  const int64_t n = d.numel();
  const double scale = 2.0 * coef * grad.item<double>() / n;  // host read of one scalar: fine on the CPU
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.scalar_type(), "lsgan_loss_bwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* p = d.data_ptr<scalar_t>();
    scalar_t* o = dd.data_ptr<scalar_t>();
    const acc_t a = static_cast<acc_t>(target), s = static_cast<acc_t>(scale);
    at::parallel_for(0, n, kBlock * 64, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) o[i] = static_cast<scalar_t>(s * (static_cast<acc_t>(p[i]) - a));
    });
  });
}

}  // namespace cycleseg
