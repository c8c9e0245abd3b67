// Least-squares GAN loss on the CPU: mean((d - a)^2), in fixed blocks (deterministic), and its
// gradient 2 c g (d - a) / numel (c = 0.5 in the discriminator form 0.5 (mean((r - 1)^2) + mean(f^2))).
// Registered as the CPU kernels of cycleseg::lsgan_loss and lsgan_disc_loss (below).
#include "common.h"

namespace cycleseg {

// mean((d - target)^2) of a contiguous score map, in double.
static double mean_square(const at::Tensor& d, double target) {
  TORCH_CHECK(d.numel() > 0, "lsgan_loss: empty score map");
  TORCH_CHECK(d.device().is_cpu() && d.is_contiguous(), "lsgan_loss (C++): contiguous CPU tensors only");
  const int64_t n = d.numel(), nb = (n + kBlock * 64 - 1) / (kBlock * 64);
  std::vector<double> part(nb, 0.0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.scalar_type(), "lsgan_loss", [&] {
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

// 2 coef g (d - target) / numel, in d's dtype and shape (g: the upstream gradient, read on the host).
static at::Tensor gradient(const at::Tensor& grad, const at::Tensor& d, double target, double coef) {
  const int64_t n = d.numel();
  const double scale = 2.0 * coef * grad.item<double>() / n;  // host read of one scalar: fine on the CPU
  auto dd = new_output(d.sizes(), d.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.scalar_type(), "lsgan_loss_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* p = d.data_ptr<scalar_t>();
    scalar_t* o = dd.data_ptr<scalar_t>();
    const acc_t a = static_cast<acc_t>(target), s = static_cast<acc_t>(scale);
    at::parallel_for(0, n, kBlock * 64, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) o[i] = static_cast<scalar_t>(s * (static_cast<acc_t>(p[i]) - a));
    });
  });
  return dd;
}

// The loss, a 0-d tensor in the accumulation dtype.
static at::Tensor loss_tensor(const at::Tensor& d, double value) {
  return new_output({}, d.options().dtype(acc_type(d))).fill_(value);
}

at::Tensor lsgan_loss(const at::Tensor& d, double target) {
  return loss_tensor(d, mean_square(d.contiguous(), target));
}

at::Tensor lsgan_loss_backward(const at::Tensor& grad, const at::Tensor& d, double target) {
  return gradient(grad, d.contiguous(), target, 1.0);
}

at::Tensor lsgan_disc_loss(const at::Tensor& d_real, const at::Tensor& d_fake) {
  return loss_tensor(d_real, 0.5 * (mean_square(d_real.contiguous(), 1.0) + mean_square(d_fake.contiguous(), 0.0)));
}

std::tuple<at::Tensor, at::Tensor> lsgan_disc_loss_backward(const at::Tensor& grad, const at::Tensor& d_real,
                                                            const at::Tensor& d_fake) {
  return {gradient(grad, d_real.contiguous(), 1.0, 0.5), gradient(grad, d_fake.contiguous(), 0.0, 0.5)};
}

}  // namespace cycleseg

TORCH_LIBRARY_IMPL(cycleseg, CPU, m) {
  m.impl("lsgan_loss", &cycleseg::lsgan_loss);
  m.impl("lsgan_loss_backward", &cycleseg::lsgan_loss_backward);
  m.impl("lsgan_disc_loss", &cycleseg::lsgan_disc_loss);
  m.impl("lsgan_disc_loss_backward", &cycleseg::lsgan_disc_loss_backward);
}
