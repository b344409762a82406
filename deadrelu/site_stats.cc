// deadrelu's fused site statistics: two TensorFlow CPU ops, built on the user's machine by
// deadrelu/kernel.py (which documents when they are used).
//
// TensorFlow's own ops reduce a ReLU site's output in four or five passes (a sign, two position
// sums, a max-pool, more for the gradient); each pass reads the whole activation, and on a CPU
// these passes, not the arithmetic, are what a scan pays for. These ops read each activation
// (and its gradient) once and keep every per-unit number in registers and small per-thread
// arrays. The numbers are those of deadrelu/reductions.py's TensorFlow path: counts exact, sums in
// float64 (of float32 sums over blocks of positions), values below FLT_MIN read as zero
// (TensorFlow runs its CPU kernels with denormals flushed to zero, so its own ops see them as zero).

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

namespace deadrelu {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::shape_inference::InferenceContext;

// Every output is one number per unit: the units are the last dimension of the first input.
::tensorflow::Status PerUnitShapes(InferenceContext* c) {
  ::tensorflow::shape_inference::ShapeHandle output;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &output));
  for (int i = 0; i < c->num_outputs(); ++i) c->set_output(i, c->Vector(c->Dim(output, 2)));
  return ::tensorflow::OkStatus();
}

REGISTER_OP("DeadreluSiteStats")
    .Input("output: float")  // [samples, positions, units], units contiguous
    .Input("valid: float")   // [samples] of 1 (counted) and 0 (padding), or [0]: all counted
    .Attr("cap: float = 0")  // the site's max_value, with capped
    .Attr("capped: bool = false")
    .Output("fires: int64")         // (sample, position) pairs with a non-zero output
    .Output("sample_fires: int64")  // samples with a non-zero output somewhere
    .Output("sum_abs: double")      // sum of |output|
    .Output("max: float")           // largest output (-inf without samples)
    .Output("saturated: int64")     // pairs at the cap (zeros unless capped)
    .SetShapeFn(PerUnitShapes);

REGISTER_OP("DeadreluGradStats")
    .Input("output: float")  // [samples, positions, units]
    .Input("grad: float")    // ∂ℓ/∂output, same shape
    .Input("valid: float")
    .Attr("cap: float = 0")
    .Attr("capped: bool = false")
    .Output("grad_abs: double")      // sum of |∂ℓ/∂z| = |∂ℓ/∂output| where the unit passes gradient
    .Output("grad_nonzero: int64")   // pairs where that gradient is not zero
    .SetShapeFn(PerUnitShapes);

namespace {

// Shapes shared by both ops, checked once.
struct Layout {
  int64_t samples, positions, units;
  const float* valid;  // nullptr: every sample counts
};

::tensorflow::Status ReadLayout(const Tensor& output, const Tensor& valid, Layout* layout) {
  if (output.dims() != 3) {
    return ::tensorflow::errors::InvalidArgument("output must be [samples, positions, units], got rank ",
                                                 output.dims());
  }
  layout->samples = output.dim_size(0);
  layout->positions = output.dim_size(1);
  layout->units = output.dim_size(2);
  const int64_t n = valid.NumElements();
  if (valid.dims() != 1 || (n != 0 && n != layout->samples)) {
    return ::tensorflow::errors::InvalidArgument("valid must be [samples] or [0], got ",
                                                 valid.shape().DebugString());
  }
  layout->valid = n ? valid.flat<float>().data() : nullptr;
  return ::tensorflow::OkStatus();
}

// The number of shards `RunSharded` splits the samples into: at most one per intra-op thread.
int64_t ShardCount(OpKernelContext* ctx, const Layout& layout) {
  const int64_t threads = ctx->device()->tensorflow_cpu_worker_threads()->num_threads;
  return std::max<int64_t>(1, std::min<int64_t>(threads, layout.samples));
}

// Splits the samples over TensorFlow's intra-op threads; `work(shard, first, last)` fills the
// shard's own partial arrays, which the caller then combines (no shared writes, no atomics).
template <typename Work>
int RunSharded(OpKernelContext* ctx, const Layout& layout, Work work) {
  const int64_t shards = ShardCount(ctx, layout);
  const int64_t cost = std::max<int64_t>(1, layout.samples * layout.positions * layout.units / shards);
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  ::tensorflow::Shard(shards, pool, shards, cost, [&](int64_t begin, int64_t end) {
    for (int64_t shard = begin; shard < end; ++shard) {
      work(shard, layout.samples * shard / shards, layout.samples * (shard + 1) / shards);
    }
  });
  return static_cast<int>(shards);
}

// Positions are summed in float32 in blocks of this many, each block's sum then added in float64:
// one float32 chain over a large feature map (250,000 positions) would lose ~3e-6 of the sum.
constexpr int64_t kBlock = 64;

// Adds a block's float32 sums into the float64 totals, and zeroes the block.
inline void Flush(float* __restrict block, double* __restrict total, int64_t units) {
  for (int64_t k = 0; k < units; ++k) {
    total[k] += block[k];
    block[k] = 0.f;
  }
}

}  // namespace

class SiteStatsOp : public OpKernel {
 public:
  explicit SiteStatsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("cap", &cap_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("capped", &capped_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& output = ctx->input(0);
    Layout layout;
    OP_REQUIRES_OK(ctx, ReadLayout(output, ctx->input(1), &layout));
    const int64_t u = layout.units, p = layout.positions;
    const float* data = output.flat<float>().data();
    const int64_t most = ShardCount(ctx, layout);
    std::vector<int64_t> fires(most * u, 0), sample_fires(most * u, 0), saturated(most * u, 0);
    std::vector<double> sums(most * u, 0.0);
    std::vector<float> maxima(most * u, -std::numeric_limits<float>::infinity());

    const int shards = RunSharded(ctx, layout, [&](int64_t shard, int64_t first, int64_t last) {
      // Per-sample counts (int32: at most `positions`) and block sums (float32, see kBlock).
      std::vector<int32_t> count(u), at_cap(u);
      std::vector<float> block(u, 0.f);
      float* best = &maxima[shard * u];
      double* total = &sums[shard * u];
      for (int64_t i = first; i < last; ++i) {
        if (layout.valid && layout.valid[i] == 0.f) continue;
        std::fill(count.begin(), count.end(), 0);
        const float* row = data + i * p * u;
        if (capped_) std::fill(at_cap.begin(), at_cap.end(), 0);
        for (int64_t j = 0; j < p; ++j, row += u) {
          if (capped_) {
            Accumulate<true>(row, u, cap_, count.data(), block.data(), best, at_cap.data());
          } else {
            Accumulate<false>(row, u, cap_, count.data(), block.data(), best, at_cap.data());
          }
          if ((j + 1) % kBlock == 0) Flush(block.data(), total, u);
        }
        Flush(block.data(), total, u);
        int64_t* f = &fires[shard * u];
        int64_t* sf = &sample_fires[shard * u];
        for (int64_t k = 0; k < u; ++k) {
          f[k] += count[k];
          sf[k] += count[k] > 0;
        }
        if (capped_) {
          int64_t* sat = &saturated[shard * u];
          for (int64_t k = 0; k < u; ++k) sat[k] += at_cap[k];
        }
      }
    });

    Tensor* out[5];
    for (int i = 0; i < 5; ++i) {
      OP_REQUIRES_OK(ctx, ctx->allocate_output(i, TensorShape({u}), &out[i]));
    }
    auto f = out[0]->flat<int64_t>();
    auto sf = out[1]->flat<int64_t>();
    auto s = out[2]->flat<double>();
    auto m = out[3]->flat<float>();
    auto sat = out[4]->flat<int64_t>();
    for (int64_t k = 0; k < u; ++k) {
      f(k) = sf(k) = sat(k) = 0;
      s(k) = 0.0;
      m(k) = -std::numeric_limits<float>::infinity();
      for (int shard = 0; shard < shards; ++shard) {
        f(k) += fires[shard * u + k];
        sf(k) += sample_fires[shard * u + k];
        s(k) += sums[shard * u + k];
        m(k) = std::max(m(k), maxima[shard * u + k]);
        sat(k) += saturated[shard * u + k];
      }
    }
  }

 private:
  // One position of one sample: a loop over contiguous units, without branches, so that it
  // vectorizes.
  template <bool kCapped>
  static void Accumulate(const float* __restrict row, int64_t units, float cap, int32_t* __restrict count,
                         float* __restrict sum, float* __restrict best, int32_t* __restrict at_cap) {
    for (int64_t k = 0; k < units; ++k) {
      const float value = row[k];
      const float v = std::fabs(value);
      const bool fires = v >= FLT_MIN;
      const float kept = fires ? value : 0.f;  // subnormals read as zero whatever the thread's mode
      count[k] += fires;
      sum[k] += fires ? v : 0.f;
      best[k] = best[k] < kept ? kept : best[k];
      if (kCapped) at_cap[k] += value >= cap;
    }
  }

  float cap_;
  bool capped_;
};

class GradStatsOp : public OpKernel {
 public:
  explicit GradStatsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("cap", &cap_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("capped", &capped_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& output = ctx->input(0);
    const Tensor& grad = ctx->input(1);
    Layout layout;
    OP_REQUIRES_OK(ctx, ReadLayout(output, ctx->input(2), &layout));
    OP_REQUIRES(ctx, grad.shape() == output.shape(),
                ::tensorflow::errors::InvalidArgument("grad must have the output's shape ",
                                                      output.shape().DebugString(), ", got ",
                                                      grad.shape().DebugString()));
    const int64_t u = layout.units, p = layout.positions;
    const float* a = output.flat<float>().data();
    const float* g = grad.flat<float>().data();
    const float cap = capped_ ? cap_ : std::numeric_limits<float>::infinity();
    const int64_t most = ShardCount(ctx, layout);
    std::vector<double> sums(most * u, 0.0);
    std::vector<int64_t> nonzero(most * u, 0);

    const int shards = RunSharded(ctx, layout, [&](int64_t shard, int64_t first, int64_t last) {
      std::vector<int32_t> count(u);
      std::vector<float> block(u, 0.f);
      double* total = &sums[shard * u];
      for (int64_t i = first; i < last; ++i) {
        if (layout.valid && layout.valid[i] == 0.f) continue;
        std::fill(count.begin(), count.end(), 0);
        const float* out_row = a + i * p * u;
        const float* grad_row = g + i * p * u;
        for (int64_t j = 0; j < p; ++j, out_row += u, grad_row += u) {
          AccumulateGrad(out_row, grad_row, u, cap, count.data(), block.data());
          if ((j + 1) % kBlock == 0) Flush(block.data(), total, u);
        }
        Flush(block.data(), total, u);
        int64_t* nz = &nonzero[shard * u];
        for (int64_t k = 0; k < u; ++k) nz[k] += count[k];
      }
    });

    Tensor* grad_abs = nullptr;
    Tensor* grad_nonzero = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({u}), &grad_abs));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({u}), &grad_nonzero));
    auto s = grad_abs->flat<double>();
    auto nz = grad_nonzero->flat<int64_t>();
    for (int64_t k = 0; k < u; ++k) {
      s(k) = 0.0;
      nz(k) = 0;
      for (int shard = 0; shard < shards; ++shard) {
        s(k) += sums[shard * u + k];
        nz(k) += nonzero[shard * u + k];
      }
    }
  }

 private:
  // One position of one sample. ∂ℓ/∂z = ∂ℓ/∂a where the unit fires below its cap, else 0. The
  // conditions are combined without branches (`&`, not `&&`) so that the loop vectorizes.
  static void AccumulateGrad(const float* __restrict out, const float* __restrict grad, int64_t units, float cap,
                             int32_t* __restrict count, float* __restrict sum) {
    for (int64_t k = 0; k < units; ++k) {
      const float v = std::fabs(grad[k]);
      const bool passes = (std::fabs(out[k]) >= FLT_MIN) & (out[k] < cap) & (v >= FLT_MIN);
      count[k] += passes;
      sum[k] += passes ? v : 0.f;
    }
  }

  float cap_;
  bool capped_;
};

REGISTER_KERNEL_BUILDER(Name("DeadreluSiteStats").Device(DEVICE_CPU), SiteStatsOp);
REGISTER_KERNEL_BUILDER(Name("DeadreluGradStats").Device(DEVICE_CPU), GradStatsOp);

}  // namespace deadrelu
