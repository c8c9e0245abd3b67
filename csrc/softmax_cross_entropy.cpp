// Pixelwise softmax cross-entropy on the CPU: (N, K, H, W) logits (contiguous), (N, H, W) targets.
//
// Forward, per block of kBlock pixels: max and sum of exp over the classes (the classes of a pixel are
// HW apart, so each inner loop runs over contiguous pixels and vectorises), then the weighted loss;
// per-block partial sums reduced in block order (deterministic whatever the thread count). Writes the
// per-pixel loss only for reduction 'none'.
// Writes the log-sum-exp of each pixel (4 bytes) for the backward, which writes
//   dlogits[n, k, p] = g[n, p] * w[t] * (exp(x[n, k, p] - lse[n, p]) - [k == t]),  0 at ignored pixels.
// A target outside [0, K) that is not ignore_index yields NaN at that pixel (the Python boundary
// rejects such targets in eager mode; under torch.compile the check is skipped), never a bad read.
// Registered as the CPU kernels of cycleseg::softmax_cross_entropy(_backward) (below).
#include "common.h"

namespace cycleseg {

// lse[i] of the pixels [p0, p0 + len) of one image, xb pointing at class 0 of pixel p0.
template <typename scalar_t, typename acc_t>
static void block_lse(const scalar_t* xb, int64_t K, int64_t HW, int64_t len, acc_t* lse) {
  acc_t m[kBlock], s[kBlock];
  for (int64_t i = 0; i < len; ++i) m[i] = static_cast<acc_t>(xb[i]);
  for (int64_t k = 1; k < K; ++k)
    for (int64_t i = 0; i < len; ++i) {
      const acc_t v = static_cast<acc_t>(xb[k * HW + i]);
      m[i] = v > m[i] || v != v ? v : m[i];               // NaN wins, as in PyTorch
    }
  for (int64_t i = 0; i < len; ++i) s[i] = 0;
  for (int64_t k = 0; k < K; ++k)
    for (int64_t i = 0; i < len; ++i) s[i] += vexp(static_cast<acc_t>(xb[k * HW + i]) - m[i]);
  for (int64_t i = 0; i < len; ++i) lse[i] = m[i] + std::log(s[i]);
}

template <typename scalar_t, typename target_t>
static void xent_fwd_kernel(const scalar_t* x, const target_t* t, const at::opmath_type<scalar_t>* w, int64_t N,
                            int64_t K, int64_t HW, int64_t ignore, at::opmath_type<scalar_t>* lse_out,
                            scalar_t* loss_out, std::vector<double>& part_l, std::vector<double>& part_w) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t blocks_per_n = (HW + kBlock - 1) / kBlock;
  at::parallel_for(0, N * blocks_per_n, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n = b / blocks_per_n, p0 = (b % blocks_per_n) * kBlock;
      const int64_t len = std::min(kBlock, HW - p0);
      const scalar_t* xb = x + n * K * HW + p0;
      acc_t* lse = lse_out + n * HW + p0;
      block_lse(xb, K, HW, len, lse);
      double bl = 0.0, bw = 0.0;
      for (int64_t i = 0; i < len; ++i) {
        const int64_t p = n * HW + p0 + i;
        const int64_t ti = static_cast<int64_t>(t[p]);
        acc_t li = 0, wi = 0;
        if (ti != ignore) {
          if (ti >= 0 && ti < K) {
            wi = w ? w[ti] : acc_t(1);
            li = (lse[i] - static_cast<acc_t>(xb[ti * HW + i])) * wi;
          } else {
            li = wi = std::numeric_limits<acc_t>::quiet_NaN();
          }
        }
        if (loss_out) loss_out[p] = static_cast<scalar_t>(li);
        bl += li;
        bw += wi;
      }
      part_l[b] = bl;
      part_w[b] = bw;
    }
  });
}

template <typename scalar_t, typename target_t>
static void xent_bwd_kernel(const scalar_t* x, const target_t* t, const at::opmath_type<scalar_t>* w,
                            const at::opmath_type<scalar_t>* lse_in, const at::opmath_type<scalar_t>* g,
                            bool g_per_pixel, double g_scalar, int64_t N, int64_t K, int64_t HW, int64_t ignore,
                            scalar_t* dx) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t blocks_per_n = (HW + kBlock - 1) / kBlock;
  at::parallel_for(0, N * blocks_per_n, 1, [&](int64_t b0, int64_t b1) {
    acc_t scale[kBlock];
    int64_t tt[kBlock];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n = b / blocks_per_n, p0 = (b % blocks_per_n) * kBlock;
      const int64_t len = std::min(kBlock, HW - p0);
      const scalar_t* xb = x + n * K * HW + p0;
      const acc_t* lse = lse_in + n * HW + p0;
      for (int64_t i = 0; i < len; ++i) {
        const int64_t p = n * HW + p0 + i;
        const int64_t ti = static_cast<int64_t>(t[p]);
        const bool ok = ti != ignore && ti >= 0 && ti < K;
        const acc_t gp = g_per_pixel ? static_cast<acc_t>(g[p]) : static_cast<acc_t>(g_scalar);
        scale[i] = ti == ignore ? acc_t(0)
                   : ok         ? gp * (w ? w[ti] : acc_t(1))
                                : std::numeric_limits<acc_t>::quiet_NaN();
        tt[i] = ok ? ti : -1;
      }
      scalar_t* db = dx + n * K * HW + p0;
      for (int64_t k = 0; k < K; ++k)
        for (int64_t i = 0; i < len; ++i) {
          const acc_t sm = vexp(static_cast<acc_t>(xb[k * HW + i]) - lse[i]);
          db[k * HW + i] = static_cast<scalar_t>(scale[i] * (sm - (tt[i] == k ? acc_t(1) : acc_t(0))));
        }
    }
  });
}

#define CYCLESEG_DISPATCH_TARGET(T, NAME, ...)                                          \
  [&] {                                                                                 \
    switch (T.scalar_type()) {                                                          \
      case at::kByte: { using target_t = uint8_t; return __VA_ARGS__(); }              \
      case at::kInt: { using target_t = int32_t; return __VA_ARGS__(); }               \
      case at::kLong: { using target_t = int64_t; return __VA_ARGS__(); }              \
      default: TORCH_CHECK(false, NAME, ": target must be uint8, int32 or int64, got ", T.scalar_type()); \
    }                                                                                   \
  }()

static int64_t reduction_code(c10::string_view r) {
  if (r == "none") return 0;
  if (r == "mean") return 1;
  TORCH_CHECK(r == "sum", "softmax_cross_entropy: reduction must be none, mean or sum, got ", r);
  return 2;
}

// The checked arguments shared by forward and backward.
struct XentArgs {
  int64_t N, K, HW, reduction;
  std::optional<at::Tensor> w;   // class weights in the accumulation type, contiguous
};

static XentArgs prepare(const at::Tensor& x, const at::Tensor& t, const std::optional<at::Tensor>& weight,
                        c10::string_view reduction) {
  TORCH_CHECK(x.dim() == 4 && x.size(1) >= 1, "softmax_cross_entropy: logits must be (N, K, H, W), got ", x.sizes());
  TORCH_CHECK(t.dim() == 3 && t.size(0) == x.size(0) && t.size(1) == x.size(2) && t.size(2) == x.size(3),
              "softmax_cross_entropy: target must be (N, H, W) = ", x.size(0), ", ", x.size(2), ", ", x.size(3),
              ", got ", t.sizes());
  TORCH_CHECK(x.device().is_cpu() && t.device().is_cpu(), "softmax_cross_entropy (C++): CPU tensors only");
  if (weight) TORCH_CHECK(weight->dim() == 1 && weight->size(0) == x.size(1), "softmax_cross_entropy: weight must be (K,)");
  XentArgs a;
  a.N = x.size(0), a.K = x.size(1), a.HW = x.size(2) * x.size(3);
  a.reduction = reduction_code(reduction);
  a.w = weight ? std::optional<at::Tensor>(weight->to(acc_type(x)).contiguous()) : std::nullopt;
  return a;
}

// -> (loss: () in the accumulation dtype, or (N, H, W) in the logits' dtype for 'none'; denom: () the mean's
// divisor; lse: (N, H, W) the log-sum-exp of each pixel, saved for the backward). channels_last logits
// are read through an NCHW copy.
std::tuple<at::Tensor, at::Tensor, at::Tensor> softmax_cross_entropy(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t ignore_index, c10::string_view reduction_name) {
  const auto x = logits.contiguous();
  const auto t = target.contiguous();
  const XentArgs a = prepare(x, t, weight, reduction_name);
  const auto acc = x.options().dtype(acc_type(x));
  auto lse = new_output({a.N, x.size(2), x.size(3)}, acc);
  auto out = a.reduction == 0 ? new_output({a.N, x.size(2), x.size(3)}, x.options()) : new_output({}, acc);
  auto denom = new_output({}, acc);
  const int64_t nb = a.N * ((a.HW + kBlock - 1) / kBlock);
  std::vector<double> part_l(nb, 0.0), part_w(nb, 0.0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "softmax_cross_entropy", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    CYCLESEG_DISPATCH_TARGET(t, "softmax_cross_entropy", [&] {
      xent_fwd_kernel<scalar_t, target_t>(x.data_ptr<scalar_t>(), t.data_ptr<target_t>(),
                                          a.w ? a.w->data_ptr<acc_t>() : nullptr, a.N, a.K, a.HW, ignore_index,
                                          lse.data_ptr<acc_t>(), a.reduction == 0 ? out.data_ptr<scalar_t>() : nullptr,
                                          part_l, part_w);
    });
  });
  const double sl = sum_partials(part_l), sw = sum_partials(part_w);
  denom.fill_(a.reduction == 1 ? sw : 1.0);
  if (a.reduction == 1) out.fill_(sl / sw);
  else if (a.reduction == 2) out.fill_(sl);
  return {out, denom, lse};
}

// -> the gradient of the logits, in their dtype and memory format.
at::Tensor softmax_cross_entropy_backward(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& target,
                                          const std::optional<at::Tensor>& weight, const at::Tensor& denom,
                                          const at::Tensor& lse, int64_t ignore_index, c10::string_view reduction_name) {
  const auto x = logits.contiguous();
  const auto t = target.contiguous();
  const XentArgs a = prepare(x, t, weight, reduction_name);
  const auto acc = acc_type(x);
  const bool per_pixel = a.reduction == 0;
  const auto g = per_pixel ? grad.to(acc).contiguous() : grad;
  const auto l = lse.to(acc).contiguous();
  // Host reads of two scalars: fine on the CPU, where there is no device queue to stall.
  const double g_scalar = per_pixel ? 0.0 : grad.item<double>() / denom.item<double>();
  auto dx = new_output(x.sizes(), x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "softmax_cross_entropy_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    CYCLESEG_DISPATCH_TARGET(t, "softmax_cross_entropy", [&] {
      xent_bwd_kernel<scalar_t, target_t>(x.data_ptr<scalar_t>(), t.data_ptr<target_t>(),
                                          a.w ? a.w->data_ptr<acc_t>() : nullptr, l.data_ptr<acc_t>(),
                                          per_pixel ? g.data_ptr<acc_t>() : nullptr, per_pixel, g_scalar, a.N, a.K,
                                          a.HW, ignore_index, dx.data_ptr<scalar_t>());
    });
  });
  return is_channels_last(logits) ? dx.contiguous(at::MemoryFormat::ChannelsLast) : dx;
}

}  // namespace cycleseg

TORCH_LIBRARY_IMPL(cycleseg, CPU, m) {
  m.impl("softmax_cross_entropy", &cycleseg::softmax_cross_entropy);
  m.impl("softmax_cross_entropy_backward", &cycleseg::softmax_cross_entropy_backward);
}
