// Pixelwise softmax cross-entropy on the CPU: (N, K, H, W) logits, (N, H, W) targets.
//
// Forward writes the weighted per-pixel loss and the log-sum-exp (fp32 for half inputs) and reduces
// in fixed blocks. Backward recomputes softmax from the logits and the saved log-sum-exp:
//   dlogits[n, k, p] = g[n, p] * w[t] * (exp(x[n, k, p] - lse[n, p]) - [k == t]),  0 at ignored pixels.
// A target outside [0, K) that is not ignore_index yields NaN at that pixel (the Python boundary
// rejects such targets in eager mode; under torch.compile the check is skipped), never a bad read.
#include "common.h"

namespace cycleseg {

template <typename scalar_t, typename target_t>
static void xent_fwd_kernel(const scalar_t* x, const target_t* t, const at::opmath_type<scalar_t>* w, int64_t N, int64_t K,
                            int64_t HW, int64_t ignore, at::opmath_type<scalar_t>* loss,
                            at::opmath_type<scalar_t>* lse, std::vector<double>& part_l,
                            std::vector<double>& part_w) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t blocks_per_n = (HW + kBlock - 1) / kBlock;
  at::parallel_for(0, N * blocks_per_n, 1, [&](int64_t b0, int64_t b1) {
    acc_t m[kBlock], s[kBlock];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n = b / blocks_per_n, p0 = (b % blocks_per_n) * kBlock;
      const int64_t len = std::min(kBlock, HW - p0);
      const scalar_t* xb = x + n * K * HW + p0;
      for (int64_t i = 0; i < len; ++i) m[i] = static_cast<acc_t>(xb[i]);
      for (int64_t k = 1; k < K; ++k)
        for (int64_t i = 0; i < len; ++i) m[i] = std::max(m[i], static_cast<acc_t>(xb[k * HW + i]));
      for (int64_t i = 0; i < len; ++i) s[i] = 0;
      for (int64_t k = 0; k < K; ++k)
        for (int64_t i = 0; i < len; ++i) s[i] += vexp(static_cast<acc_t>(xb[k * HW + i]) - m[i]);
      double bl = 0.0, bw = 0.0;
      for (int64_t i = 0; i < len; ++i) {
        const int64_t p = n * HW + p0 + i;
        const acc_t l = m[i] + std::log(s[i]);
        lse[p] = l;
        const int64_t ti = static_cast<int64_t>(t[p]);
        acc_t li = 0, wi = 0;
        if (ti != ignore) {
          if (ti >= 0 && ti < K) {
            wi = w ? w[ti] : acc_t(1);
            li = (l - static_cast<acc_t>(xb[ti * HW + i])) * wi;
          } else {
            li = wi = std::numeric_limits<acc_t>::quiet_NaN();
          }
        }
        loss[p] = li;
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
                            const at::opmath_type<scalar_t>* lse, const at::opmath_type<scalar_t>* g,
                            bool g_per_pixel, double g_scalar, int64_t N, int64_t K, int64_t HW,
                            int64_t ignore, scalar_t* dx) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t blocks_per_n = (HW + kBlock - 1) / kBlock;
  at::parallel_for(0, N * blocks_per_n, 1, [&](int64_t b0, int64_t b1) {
    acc_t scale[kBlock], l[kBlock];
    int64_t tt[kBlock];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n = b / blocks_per_n, p0 = (b % blocks_per_n) * kBlock;
      const int64_t len = std::min(kBlock, HW - p0);
      for (int64_t i = 0; i < len; ++i) {
        const int64_t p = n * HW + p0 + i;
        const int64_t ti = static_cast<int64_t>(t[p]);
        const bool ok = ti != ignore && ti >= 0 && ti < K;
        const acc_t gp = g_per_pixel ? static_cast<acc_t>(g[p]) : static_cast<acc_t>(g_scalar);
        scale[i] = ti == ignore ? acc_t(0)
                   : ok         ? gp * (w ? w[ti] : acc_t(1))
                                : std::numeric_limits<acc_t>::quiet_NaN();
        tt[i] = ok ? ti : -1;
        l[i] = lse[p];
      }
      const scalar_t* xb = x + n * K * HW + p0;
      scalar_t* db = dx + n * K * HW + p0;
      for (int64_t k = 0; k < K; ++k)
        for (int64_t i = 0; i < len; ++i) {
          const acc_t sm = vexp(static_cast<acc_t>(xb[k * HW + i]) - l[i]);
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

static void check_inputs(const at::Tensor& x, const at::Tensor& t, const c10::optional<at::Tensor>& w) {
  TORCH_CHECK(x.dim() == 4, "softmax_cross_entropy: logits must be (N, K, H, W), got ", x.sizes());
  TORCH_CHECK(x.size(1) >= 1, "softmax_cross_entropy: K must be >= 1");
  TORCH_CHECK(t.dim() == 3 && t.size(0) == x.size(0) && t.size(1) == x.size(2) && t.size(2) == x.size(3),
              "softmax_cross_entropy: target must be (N, H, W) = ", x.size(0), ", ", x.size(2), ", ", x.size(3),
              ", got ", t.sizes());
  TORCH_CHECK(x.device().is_cpu() && t.device().is_cpu(), "softmax_cross_entropy (C++): CPU tensors only");
  if (w) TORCH_CHECK(w->dim() == 1 && w->size(0) == x.size(1), "softmax_cross_entropy: weight must be (K,)");
}

static int64_t reduction_code(const std::string& r) {
  if (r == "none") return 0;
  if (r == "mean") return 1;
  TORCH_CHECK(r == "sum", "softmax_cross_entropy: reduction must be none, mean or sum, got ", r);
  return 2;
}

// The checked, contiguous arguments shared by forward and backward.
struct XentArgs {
  at::Tensor x, t;
  c10::optional<at::Tensor> w;   // class weights in the accumulation type
  int64_t N, K, HW, reduction;
  at::ScalarType acc;            // opmath type: double for double inputs, float otherwise
};

static XentArgs prepare(const at::Tensor& logits, const at::Tensor& target, const c10::optional<at::Tensor>& weight,
                        const std::string& reduction) {
  check_inputs(logits, target, weight);
  XentArgs a;
  a.x = logits.contiguous();
  a.t = target.contiguous();
  a.N = a.x.size(0), a.K = a.x.size(1), a.HW = a.x.size(2) * a.x.size(3);
  a.reduction = reduction_code(reduction);
  a.acc = a.x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  a.w = weight ? c10::optional<at::Tensor>(weight->to(a.acc).contiguous()) : c10::nullopt;
  return a;
}

// Returns (loss, lse, denom): loss is () for mean/sum or (N, H, W) for none.
std::vector<at::Tensor> softmax_cross_entropy_fwd(const at::Tensor& logits, const at::Tensor& target,
                                                  const c10::optional<at::Tensor>& weight, int64_t ignore_index,
                                                  const std::string& reduction_name) {
  const XentArgs a = prepare(logits, target, weight, reduction_name);
  const auto &x = a.x, &t = a.t;
  const auto& w = a.w;
  const int64_t N = a.N, K = a.K, HW = a.HW, reduction = a.reduction;
  const auto acc = a.acc;
  auto loss = at::empty({N, x.size(2), x.size(3)}, x.options().dtype(acc));
  auto lse = at::empty({N, x.size(2), x.size(3)}, x.options().dtype(acc));
  const int64_t nb = N * ((HW + kBlock - 1) / kBlock);
  std::vector<double> part_l(nb, 0.0), part_w(nb, 0.0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "softmax_cross_entropy_fwd", [&] {
    CYCLESEG_DISPATCH_TARGET(t, "softmax_cross_entropy", [&] {
      xent_fwd_kernel<scalar_t, target_t>(x.data_ptr<scalar_t>(), t.data_ptr<target_t>(),
                                          w ? w->data_ptr<at::opmath_type<scalar_t>>() : nullptr, N, K, HW, ignore_index,
                                          loss.data_ptr<at::opmath_type<scalar_t>>(),
                                          lse.data_ptr<at::opmath_type<scalar_t>>(), part_l, part_w);
    });
  });
  const double sl = sum_partials(part_l), sw = sum_partials(part_w);
  auto denom = at::scalar_tensor(reduction == 1 ? sw : 1.0, x.options().dtype(acc));
  at::Tensor out;
  if (reduction == 0) out = loss.to(x.scalar_type());
  else if (reduction == 1) out = at::scalar_tensor(sl / sw, x.options().dtype(acc)).to(x.scalar_type());
  else out = at::scalar_tensor(sl, x.options().dtype(acc)).to(x.scalar_type());
  return {out, lse, denom};
}

at::Tensor softmax_cross_entropy_bwd(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& target,
                                     const c10::optional<at::Tensor>& weight, const at::Tensor& lse,
                                     const at::Tensor& denom, int64_t ignore_index,
                                     const std::string& reduction_name) {
  const XentArgs a = prepare(logits, target, weight, reduction_name);
  const auto &x = a.x, &t = a.t;
  const auto& w = a.w;
  const int64_t N = a.N, K = a.K, HW = a.HW;
  const auto acc = a.acc;
  auto dx = at::empty_like(x);
  const bool per_pixel = a.reduction == 0;
  const auto g = per_pixel ? grad.to(acc).contiguous() : grad;
  // Host reads of two scalars: fine on the CPU, where there is no device queue to stall.
  const double g_scalar = per_pixel ? 0.0 : grad.item<double>() / denom.item<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "softmax_cross_entropy_bwd", [&] {
    CYCLESEG_DISPATCH_TARGET(t, "softmax_cross_entropy", [&] {
      xent_bwd_kernel<scalar_t, target_t>(x.data_ptr<scalar_t>(), t.data_ptr<target_t>(),
                                          w ? w->data_ptr<at::opmath_type<scalar_t>>() : nullptr,
                                          lse.contiguous().data_ptr<at::opmath_type<scalar_t>>(),
                                          per_pixel ? g.data_ptr<at::opmath_type<scalar_t>>() : nullptr, per_pixel, g_scalar, N, K,
                                          HW, ignore_index, dx.data_ptr<scalar_t>());
    });
  });
  return dx;
}

}  // namespace cycleseg
