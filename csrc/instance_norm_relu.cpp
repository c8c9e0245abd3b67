// Instance norm (affine=False, biased variance) + leaky ReLU on the CPU.
//
//   y = act((x - mean) rstd),  act(v) = v < 0 ? slope v : v   (slope 0: ReLU, 1: no activation)
// act is written as a select between precomputed values (`v < 0`), so that NaN propagates
// (std::max(0, NaN) would return 0) and the loops vectorise.
// Forward: exact two-pass statistics (mean as pivot + mean(x - pivot), pivot the plane's first value, then
//   the sum of squared deviations); saves mean and rstd in the
//   accumulation type (fp32 for half inputs, fp64 for fp64).
// Backward: x_hat recomputed from x, g = dy act'(x_hat), a = sum(g), b = sum(g x_hat),
//   dx = rstd (g - a / HW - x_hat b / HW).
// Two layouts, no copies: NCHW-contiguous (one (n, c) plane per task, loops over contiguous pixels) and
// channels_last (one image and a block of kChannels channels per task, loops over pixels with the
// channels contiguous inside). Reductions run in a fixed order inside a task: results do not depend on
// the thread count. Registered as the CPU kernels of cycleseg::instance_norm_relu(_backward) (below).
#include "common.h"

namespace cycleseg {

constexpr int64_t kChannels = 16;  // channels per channels_last task (one or two vector registers wide)

static bool channels_last(const at::Tensor& t) { return is_channels_last(t); }

static void check_like(const at::Tensor& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.sizes() == x.sizes() && t.strides() == x.strides() &&
                  (x.is_contiguous() || channels_last(x)),
              "instance_norm_relu (C++): ", name, " must be a CPU tensor of shape ", x.sizes(),
              " in the input's layout (NCHW- or channels_last-contiguous)");
}

template <typename acc_t>
static inline acc_t act(acc_t v, acc_t s) {
  const acc_t vs = v * s;  // unconditional: the select vectorises
  return v < 0 ? vs : v;
}

// The gate of the backward: RELU selects dy or 0 (exact for any dy), otherwise dy or slope * dy.
template <bool RELU, typename acc_t>
static inline acc_t gate(acc_t xh, acc_t d, acc_t s) {
  const acc_t off = RELU ? acc_t(0) : d * s;
  return xh > 0 ? d : off;
}

// -- NCHW: one plane per task ---------------------------------------------------------------------------

template <typename scalar_t, typename acc_t>
static void plane_fwd(const scalar_t* xq, scalar_t* yq, int64_t HW, acc_t eps, acc_t s, acc_t* mean, acc_t* rstd) {
  const acc_t pivot = static_cast<acc_t>(xq[0]);  // sums of x - pivot: exact on offset inputs
  const acc_t mu = pivot + lane_sum<acc_t>(HW, [&](int64_t i) { return static_cast<acc_t>(xq[i]) - pivot; }) / HW;
  const acc_t var = lane_sum<acc_t>(HW, [&](int64_t i) {
    const acc_t d = static_cast<acc_t>(xq[i]) - mu;
    return d * d;
  }) / HW;
  const acc_t r = acc_t(1) / std::sqrt(var + eps);
  *mean = mu;
  *rstd = r;
  for (int64_t i = 0; i < HW; ++i) yq[i] = static_cast<scalar_t>(act((static_cast<acc_t>(xq[i]) - mu) * r, s));
}

template <bool RELU, typename scalar_t, typename acc_t>
static void plane_bwd(const scalar_t* xq, const scalar_t* gq, scalar_t* dq, int64_t HW, acc_t mu, acc_t r, acc_t s) {
  auto g_at = [&](int64_t i, acc_t& xh) {
    xh = (static_cast<acc_t>(xq[i]) - mu) * r;
    return gate<RELU>(xh, static_cast<acc_t>(gq[i]), s);
  };
  // One pass for both sums, kLanes independent accumulators each (vectorisable).
  acc_t la[kLanes] = {}, lb[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= HW; i += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      acc_t xh;
      const acc_t g = g_at(i + j, xh);
      la[j] += g;
      lb[j] += g * xh;
    }
  acc_t a = 0, b = 0;
  for (; i < HW; ++i) {
    acc_t xh;
    const acc_t g = g_at(i, xh);
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
    const acc_t g = g_at(k, xh);
    dq[k] = static_cast<scalar_t>(r * (g - a - xh * b));
  }
}

// -- channels_last: one image and kChannels channels per task ---------------------------------------------
// xn points at pixel 0, channel c0 of image n; pixels are C apart; cb <= kChannels channels.

// CB > 0: a full block of CB channels known at compile time (the inner loops vectorise fully).
template <int64_t CB, typename scalar_t, typename acc_t>
static void slab_fwd(const scalar_t* xn, scalar_t* yn, int64_t HW, int64_t C, int64_t cb_, acc_t eps, acc_t s,
                     acc_t* mean, acc_t* rstd) {
  const int64_t cb = CB > 0 ? CB : cb_;
  acc_t mu[kChannels] = {}, m2[kChannels] = {}, r[kChannels], pivot[kChannels] = {};
  for (int64_t c = 0; c < cb; ++c) pivot[c] = static_cast<acc_t>(xn[c]);  // sums of x - pivot (offset inputs)
  for (int64_t p = 0; p < HW; ++p)
    for (int64_t c = 0; c < cb; ++c) mu[c] += static_cast<acc_t>(xn[p * C + c]) - pivot[c];
  for (int64_t c = 0; c < cb; ++c) mu[c] = pivot[c] + mu[c] / HW;
  for (int64_t p = 0; p < HW; ++p)
    for (int64_t c = 0; c < cb; ++c) {
      const acc_t d = static_cast<acc_t>(xn[p * C + c]) - mu[c];
      m2[c] += d * d;
    }
  for (int64_t c = 0; c < cb; ++c) {
    r[c] = acc_t(1) / std::sqrt(m2[c] / HW + eps);
    mean[c] = mu[c];
    rstd[c] = r[c];
  }
  for (int64_t p = 0; p < HW; ++p)
    for (int64_t c = 0; c < cb; ++c)
      yn[p * C + c] = static_cast<scalar_t>(act((static_cast<acc_t>(xn[p * C + c]) - mu[c]) * r[c], s));
}

template <bool RELU, int64_t CB, typename scalar_t, typename acc_t>
static void slab_bwd(const scalar_t* xn, const scalar_t* gn, scalar_t* dn, int64_t HW, int64_t C, int64_t cb_,
                     const acc_t* mu, const acc_t* r, acc_t s) {
  const int64_t cb = CB > 0 ? CB : cb_;
  acc_t a[kChannels] = {}, b[kChannels] = {};
  for (int64_t p = 0; p < HW; ++p)
    for (int64_t c = 0; c < cb; ++c) {
      const acc_t xh = (static_cast<acc_t>(xn[p * C + c]) - mu[c]) * r[c];
      const acc_t g = gate<RELU>(xh, static_cast<acc_t>(gn[p * C + c]), s);
      a[c] += g;
      b[c] += g * xh;
    }
  for (int64_t c = 0; c < cb; ++c) {
    a[c] /= HW;
    b[c] /= HW;
  }
  for (int64_t p = 0; p < HW; ++p)
    for (int64_t c = 0; c < cb; ++c) {
      const acc_t xh = (static_cast<acc_t>(xn[p * C + c]) - mu[c]) * r[c];
      const acc_t g = gate<RELU>(xh, static_cast<acc_t>(gn[p * C + c]), s);
      dn[p * C + c] = static_cast<scalar_t>(r[c] * (g - a[c] - xh * b[c]));
    }
}

// f(offset of the slab's first element, index of its first channel's statistics, its channel count) for
// each channels_last task (one image, kChannels channels), in parallel.
template <typename F>
static void for_each_slab(int64_t N, int64_t C, int64_t HW, F f) {
  const int64_t blocks = (C + kChannels - 1) / kChannels;
  at::parallel_for(0, N * blocks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / blocks, c0 = (t % blocks) * kChannels;
      f(n * HW * C + c0, n * C + c0, std::min(kChannels, C - c0));
    }
  });
}

// -- entry points ---------------------------------------------------------------------------------------

// x itself when NCHW- or channels_last-contiguous (the kernels read both), else an NCHW copy.
static at::Tensor dense(const at::Tensor& x) {
  return x.is_contiguous() || channels_last(x) ? x : x.contiguous();
}

// -> (y in x's layout, mean (N, C), rstd (N, C) in the accumulation dtype).
std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_relu(const at::Tensor& input, double eps, double slope) {
  TORCH_CHECK(input.dim() == 4, "instance_norm_relu: expected (N, C, H, W), got ", input.sizes());
  TORCH_CHECK(input.device().is_cpu(), "instance_norm_relu (C++): CPU tensors only");
  const auto x = dense(input);
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  TORCH_CHECK(HW > 0, "instance_norm_relu: empty planes");
  auto y = new_output_like(x);
  auto mean = new_output({N, C}, x.options().dtype(acc_type(x)));
  auto rstd = new_output({N, C}, x.options().dtype(acc_type(x)));
  const bool cl = channels_last(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "instance_norm_relu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    acc_t* mp = mean.data_ptr<acc_t>();
    acc_t* rp = rstd.data_ptr<acc_t>();
    const acc_t s = static_cast<acc_t>(slope), e = static_cast<acc_t>(eps);
    if (!cl) {
      at::parallel_for(0, N * C, 1, [&](int64_t q0, int64_t q1) {
        for (int64_t q = q0; q < q1; ++q) plane_fwd(xp + q * HW, yp + q * HW, HW, e, s, mp + q, rp + q);
      });
      return;
    }
    for_each_slab(N, C, HW, [&](int64_t off, int64_t q, int64_t cb) {
      if (cb == kChannels)
        slab_fwd<kChannels>(xp + off, yp + off, HW, C, cb, e, s, mp + q, rp + q);
      else
        slab_fwd<0>(xp + off, yp + off, HW, C, cb, e, s, mp + q, rp + q);
    });
  });
  return {y, mean, rstd};
}

// -> dx in the layout of x (as the kernels read it).
at::Tensor instance_norm_relu_backward(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& mean,
                                       const at::Tensor& rstd, double slope) {
  TORCH_CHECK(input.dim() == 4 && grad.sizes() == input.sizes(), "instance_norm_relu_backward: grad of shape ",
              grad.sizes(), " for an input of shape ", input.sizes());
  const auto x = dense(input);
  const bool cl = channels_last(x);
  const auto dy = grad.to(x.scalar_type()).contiguous(cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  check_like(dy, x, "grad");
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  auto dx = new_output_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "instance_norm_relu_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gp = dy.data_ptr<scalar_t>();
    scalar_t* dp = dx.data_ptr<scalar_t>();
    const auto m = mean.contiguous();
    const auto rs = rstd.contiguous();
    const acc_t* mp = m.data_ptr<acc_t>();
    const acc_t* rp = rs.data_ptr<acc_t>();
    const acc_t s = static_cast<acc_t>(slope);
    if (!cl) {
      at::parallel_for(0, N * C, 1, [&](int64_t q0, int64_t q1) {
        for (int64_t q = q0; q < q1; ++q) {
          if (s == 0)
            plane_bwd<true>(xp + q * HW, gp + q * HW, dp + q * HW, HW, mp[q], rp[q], s);
          else
            plane_bwd<false>(xp + q * HW, gp + q * HW, dp + q * HW, HW, mp[q], rp[q], s);
        }
      });
      return;
    }
    for_each_slab(N, C, HW, [&](int64_t off, int64_t q, int64_t cb) {
      if (s == 0 && cb == kChannels)
        slab_bwd<true, kChannels>(xp + off, gp + off, dp + off, HW, C, cb, mp + q, rp + q, s);
      else if (s == 0)
        slab_bwd<true, 0>(xp + off, gp + off, dp + off, HW, C, cb, mp + q, rp + q, s);
      else if (cb == kChannels)
        slab_bwd<false, kChannels>(xp + off, gp + off, dp + off, HW, C, cb, mp + q, rp + q, s);
      else
        slab_bwd<false, 0>(xp + off, gp + off, dp + off, HW, C, cb, mp + q, rp + q, s);
    });
  });
  return dx;
}

}  // namespace cycleseg

TORCH_LIBRARY_IMPL(cycleseg, CPU, m) {
  m.impl("instance_norm_relu", &cycleseg::instance_norm_relu);
  m.impl("instance_norm_relu_backward", &cycleseg::instance_norm_relu_backward);
}
