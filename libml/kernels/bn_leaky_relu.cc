// Training-mode batch norm fused with leaky ReLU for channels-last tensors on the CPU, forward
// and gradient, float32 or bfloat16 activations (libml/fused_ops.py builds and loads it; used by
// libml/models.py when --fused_bn_act resolves to on).
//
// TensorFlow runs FusedBatchNormV3 and LeakyRelu (and their gradients) as separate kernels on the
// CPU; each reads and writes the whole activation tensor, and its elementwise kernels are compiled
// for a baseline x86 CPU. This op does the same arithmetic in three passes forward (statistics;
// normalise + activate) and two backward (reductions; dx), the minimum number of passes over
// memory. Under bf16 with AMX convolutions that makes the training step 1.3x faster
// (BENCHMARKS.md section 5).
//
// Maths (x: [M rows, C channels], per channel c):
//   mean = sum(x) / M, var = sum((x - mean)^2) / M, inv = 1 / sqrt(var + epsilon)
//   z = gamma * (x - mean) * inv + beta,  y = z if z > 0 else alpha * z
//   g = dy * (1 if z > 0 else alpha)
//   dbeta = sum(g), dgamma = sum(g * xhat) with xhat = (x - mean) * inv
//   dx = gamma * inv * (g - dbeta / M - xhat * dgamma / M)
// batch_variance is Bessel-corrected (var * M / (M - 1)) like TensorFlow's kernel, for the moving
// average. Sums are taken in float within chunks of 64 rows and in double across chunks, over a
// fixed split of the rows, so results do not depend on the thread count. The gradient's mask uses
// the sign of z computed in float32 (z == +0 counts as positive), TensorFlow's that of the rounded
// output: they differ only for |z| within rounding of zero.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

namespace {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

// bfloat16 is the upper half of a float32: widen by a shift, narrow with round-to-nearest-even
// (NaN stays NaN). Written on integers so that the loops vectorise.
inline float Load(const float* p, int64_t i) { return p[i]; }
inline float Load(const uint16_t* p, int64_t i) {
  uint32_t bits = static_cast<uint32_t>(p[i]) << 16;
  float v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}
inline void Store(float* p, int64_t i, float v) { p[i] = v; }
inline void Store(uint16_t* p, int64_t i, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof v);
  uint32_t rounded = bits + 0x7fffu + ((bits >> 16) & 1u);
  bool nan = (bits & 0x7fffffffu) > 0x7f800000u;
  p[i] = nan ? static_cast<uint16_t>((bits >> 16) | 0x40u) : static_cast<uint16_t>(rounded >> 16);
}

template <typename T> struct Storage { using type = T; };
template <> struct Storage<Eigen::bfloat16> { using type = uint16_t; };

constexpr int64_t kChunkRows = 64;
constexpr int64_t kMaxBlocks = 64;

// Splits [0, rows) into a fixed number of blocks (independent of the thread count, so that
// results are deterministic) and runs fn(block, first_row, end_row) on the CPU worker threads.
template <typename Fn>
void ForBlocks(OpKernelContext* ctx, int64_t rows, int64_t channels, int64_t blocks, Fn fn) {
  const int64_t per_block = (rows + blocks - 1) / blocks;
  auto* workers = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  tensorflow::Shard(workers->NumThreads(), workers, blocks, per_block * channels * 8,
                    [&](int64_t begin, int64_t end) {
                      for (int64_t b = begin; b < end; ++b) {
                        int64_t lo = b * per_block, hi = std::min(rows, lo + per_block);
                        if (lo < hi) fn(b, lo, hi);
                      }
                    });
}

// Per-channel sums over all rows of two per-element terms: term(r, c, &u, &w) sets the terms of
// element (r, c); first[c] = sum_r u, second[c] = sum_r w. Float within chunks of kChunkRows rows
// (so that the inner loop vectorises), double across chunks and blocks.
template <typename Term>
void ChannelSums(OpKernelContext* ctx, int64_t rows, int64_t channels, Term term, double* first,
                 double* second) {
  const int64_t blocks = std::min(rows, kMaxBlocks);
  std::vector<double> partial(2 * blocks * channels, 0.0);
  ForBlocks(ctx, rows, channels, blocks, [&](int64_t b, int64_t lo, int64_t hi) {
    Term local_term = term;  // a private copy: the sums' stores cannot alias its captures
    std::vector<float> u_sum(channels), w_sum(channels);
    double* block_first = partial.data() + 2 * b * channels;
    double* block_second = block_first + channels;
    for (int64_t r0 = lo; r0 < hi; r0 += kChunkRows) {
      std::fill(u_sum.begin(), u_sum.end(), 0.f);
      std::fill(w_sum.begin(), w_sum.end(), 0.f);
      float* __restrict us = u_sum.data();
      float* __restrict ws = w_sum.data();
      const int64_t r1 = std::min(hi, r0 + kChunkRows);
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = 0; c < channels; ++c) {
          float u, w;
          local_term(r, c, &u, &w);
          us[c] += u;
          ws[c] += w;
        }
      }
      for (int64_t c = 0; c < channels; ++c) {
        block_first[c] += us[c];
        block_second[c] += ws[c];
      }
    }
  });
  for (int64_t c = 0; c < channels; ++c) {
    first[c] = second[c] = 0.0;
    for (int64_t b = 0; b < blocks; ++b) {
      first[c] += partial[2 * b * channels + c];
      second[c] += partial[(2 * b + 1) * channels + c];
    }
  }
}

template <typename T>
class BatchNormLeakyReluOp : public OpKernel {
 public:
  explicit BatchNormLeakyReluOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("epsilon", &epsilon_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("alpha", &alpha_));
  }

  void Compute(OpKernelContext* ctx) override {
    using S = typename Storage<T>::type;
    const Tensor& x_t = ctx->input(0);
    const Tensor& scale_t = ctx->input(1);
    const Tensor& offset_t = ctx->input(2);
    OP_REQUIRES(ctx, x_t.dims() >= 2,
                tensorflow::errors::InvalidArgument("x must have rank >= 2"));
    const int64_t C = x_t.dim_size(x_t.dims() - 1);
    const int64_t M = x_t.NumElements() / std::max<int64_t>(C, 1);
    OP_REQUIRES(ctx, scale_t.NumElements() == C && offset_t.NumElements() == C,
                tensorflow::errors::InvalidArgument("scale and offset need one value per channel"));
    Tensor *y_t, *mean_t, *var_t, *inv_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x_t.shape(), &y_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({C}), &mean_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({C}), &var_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({C}), &inv_t));
    if (C == 0) return;
    const S* x = reinterpret_cast<const S*>(x_t.flat<T>().data());
    S* y = reinterpret_cast<S*>(y_t->flat<T>().data());
    const float* gamma = scale_t.flat<float>().data();
    const float* beta = offset_t.flat<float>().data();
    float* mean = mean_t->flat<float>().data();
    float* var = var_t->flat<float>().data();
    float* inv = inv_t->flat<float>().data();
    if (M == 0) {
      for (int64_t c = 0; c < C; ++c) mean[c] = var[c] = inv[c] = std::nanf("");
      return;
    }

    // Shifted sums (shift = the first row) keep the variance accurate when |mean| >> std.
    std::vector<float> shift(C);
    for (int64_t c = 0; c < C; ++c) shift[c] = Load(x, c);
    const S* __restrict xs = x;
    const float* __restrict kp = shift.data();
    std::vector<double> sums(C), squares(C);
    ChannelSums(ctx, M, C, [=](int64_t r, int64_t c, float* u, float* w) {
      float v = Load(xs, r * C + c) - kp[c];
      *u = v;
      *w = v * v;
    }, sums.data(), squares.data());
    std::vector<float> a(C), o(C);
    for (int64_t c = 0; c < C; ++c) {
      double s = sums[c], q = squares[c];
      double m = s / M;
      double v = std::max(0.0, q / M - m * m);
      mean[c] = static_cast<float>(shift[c] + m);
      inv[c] = static_cast<float>(1.0 / std::sqrt(v + epsilon_));
      var[c] = static_cast<float>(M > 1 ? v * M / (M - 1) : v);
      a[c] = gamma[c] * inv[c];
      o[c] = beta[c] - mean[c] * a[c];
    }
    const float slope = alpha_;  // local copies let the compiler vectorise the loops
    ForBlocks(ctx, M, C, std::min(M, kMaxBlocks), [&](int64_t, int64_t lo, int64_t hi) {
      const float* __restrict ap = a.data();
      const float* __restrict op = o.data();
      for (int64_t r = lo; r < hi; ++r) {
        const S* __restrict row = x + r * C;
        S* __restrict out = y + r * C;
        for (int64_t c = 0; c < C; ++c) {
          float z = Load(row, c) * ap[c] + op[c];
          Store(out, c, std::max(z, 0.f) + slope * std::min(z, 0.f));
        }
      }
    });
  }

 private:
  float epsilon_, alpha_;
};

template <typename T>
class BatchNormLeakyReluGradOp : public OpKernel {
 public:
  explicit BatchNormLeakyReluGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("alpha", &alpha_));
  }

  void Compute(OpKernelContext* ctx) override {
    using S = typename Storage<T>::type;
    const Tensor& dy_t = ctx->input(0);
    const Tensor& x_t = ctx->input(1);
    const int64_t C = x_t.dim_size(x_t.dims() - 1);
    const int64_t M = x_t.NumElements() / std::max<int64_t>(C, 1);
    OP_REQUIRES(ctx, x_t.dims() >= 2 && dy_t.shape() == x_t.shape(),
                tensorflow::errors::InvalidArgument("dy and x need the same shape, rank >= 2"));
    for (int i = 2; i < 6; ++i) {
      OP_REQUIRES(ctx, ctx->input(i).NumElements() == x_t.dim_size(x_t.dims() - 1),
                  tensorflow::errors::InvalidArgument("per-channel inputs need C values"));
    }
    Tensor *dx_t, *dscale_t, *doffset_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x_t.shape(), &dx_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({C}), &dscale_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({C}), &doffset_t));
    float* dscale = dscale_t->flat<float>().data();
    float* doffset = doffset_t->flat<float>().data();
    if (C == 0) return;
    if (M == 0) {
      for (int64_t c = 0; c < C; ++c) dscale[c] = doffset[c] = 0.f;
      return;
    }
    const S* dy = reinterpret_cast<const S*>(dy_t.flat<T>().data());
    const S* x = reinterpret_cast<const S*>(x_t.flat<T>().data());
    S* dx = reinterpret_cast<S*>(dx_t->flat<T>().data());
    const float* gamma = ctx->input(2).flat<float>().data();
    const float* beta = ctx->input(3).flat<float>().data();
    const float* mean = ctx->input(4).flat<float>().data();
    const float* inv = ctx->input(5).flat<float>().data();
    std::vector<float> a(C), o(C);
    for (int64_t c = 0; c < C; ++c) {
      a[c] = gamma[c] * inv[c];
      o[c] = beta[c] - mean[c] * a[c];
    }
    const float alpha = alpha_;
    const float half_sum = 0.5f * (1.f + alpha), half_diff = 0.5f * (1.f - alpha);
    const S* __restrict xs = x;
    const S* __restrict dys = dy;
    const float* __restrict ap = a.data();
    const float* __restrict op = o.data();
    const float* __restrict mp = mean;
    std::vector<double> gsum(C), gxsum(C);
    ChannelSums(ctx, M, C, [=](int64_t r, int64_t c, float* u, float* w) {
      float xv = Load(xs, r * C + c), gv = Load(dys, r * C + c);
      // 1 if z > 0 else alpha, without a branch (a branch stops vectorisation).
      float g = gv * (half_sum + half_diff * std::copysign(1.f, xv * ap[c] + op[c]));
      *u = g;
      *w = g * (xv - mp[c]);
    }, gsum.data(), gxsum.data());
    std::vector<float> k0(C), k2(C);
    for (int64_t c = 0; c < C; ++c) {
      double s = gsum[c], q = gxsum[c];
      doffset[c] = static_cast<float>(s);
      dscale[c] = static_cast<float>(q * inv[c]);
      // dx = a * (g - mean(g) - xhat * mean(g * xhat)), xhat = (x - mean) * inv.
      double coef = a[c] * (q * inv[c]) * inv[c] / M;
      k2[c] = static_cast<float>(-coef);
      k0[c] = static_cast<float>(-a[c] * s / M + coef * mean[c]);
    }
    ForBlocks(ctx, M, C, std::min(M, kMaxBlocks), [&](int64_t, int64_t lo, int64_t hi) {
      const float* __restrict k0p = k0.data();
      const float* __restrict k2p = k2.data();
      for (int64_t r = lo; r < hi; ++r) {
        const S* __restrict xr = x + r * C;
        const S* __restrict gr = dy + r * C;
        S* __restrict out = dx + r * C;
        for (int64_t c = 0; c < C; ++c) {
          float xv = Load(xr, c), gv = Load(gr, c);
          // Recomputed, not stored: reading a saved tensor would cost as much as reading x.
          float g = gv * (half_sum + half_diff * std::copysign(1.f, xv * ap[c] + op[c]));
          Store(out, c, ap[c] * g + k2p[c] * xv + k0p[c]);
        }
      }
    });
  }

 private:
  float alpha_;
};

}  // namespace

REGISTER_OP("BatchNormLeakyRelu")
    .Input("x: T")
    .Input("scale: float")
    .Input("offset: float")
    .Output("y: T")
    .Output("batch_mean: float")
    .Output("batch_variance: float")
    .Output("inv_std: float")
    .Attr("T: {bfloat16, float}")
    .Attr("epsilon: float = 0.001")
    .Attr("alpha: float = 0.1")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      ShapeHandle x;
      TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(0), 2, &x));
      auto channels = c->Dim(x, -1);
      for (int i = 1; i < 4; ++i) c->set_output(i, c->Vector(channels));
      return absl::OkStatus();
    });

REGISTER_OP("BatchNormLeakyReluGrad")
    .Input("dy: T")
    .Input("x: T")
    .Input("scale: float")
    .Input("offset: float")
    .Input("batch_mean: float")
    .Input("inv_std: float")
    .Output("dx: T")
    .Output("dscale: float")
    .Output("doffset: float")
    .Attr("T: {bfloat16, float}")
    .Attr("alpha: float = 0.1")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(1));
      ShapeHandle x;
      TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(1), 2, &x));
      auto channels = c->Dim(x, -1);
      c->set_output(1, c->Vector(channels));
      c->set_output(2, c->Vector(channels));
      return absl::OkStatus();
    });

#define REGISTER(T)                                                                        \
  REGISTER_KERNEL_BUILDER(                                                                 \
      Name("BatchNormLeakyRelu").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T"),    \
      BatchNormLeakyReluOp<T>);                                                            \
  REGISTER_KERNEL_BUILDER(                                                                 \
      Name("BatchNormLeakyReluGrad").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T"), \
      BatchNormLeakyReluGradOp<T>);
REGISTER(float)
REGISTER(Eigen::bfloat16)
#undef REGISTER
