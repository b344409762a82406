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
//
// A NaN or ±inf output (a diverged model) is counted in `non_finite` and read as zero by every
// other statistic: it neither fires nor reaches the cap, and adds nothing to a sum or a maximum
// (the rule of deadrelu/reductions.py, on every backend). The loop over positions does not test
// for them: they reach the float32 sum of their block of positions, and a block whose sums are
// not all finite is measured again, value by value (`SiteStatsOp::Remeasure`), so a model that
// has not diverged pays one check per block. A non-finite gradient passes no gradient.

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
    .Output("fires: int64")         // (sample, position) pairs with a finite non-zero output
    .Output("sample_fires: int64")  // samples with a finite non-zero output somewhere
    .Output("sum_abs: double")      // sum of the finite |output|
    .Output("max: float")           // largest finite output (-inf without samples)
    .Output("saturated: int64")     // pairs at the cap (zeros unless capped)
    .Output("non_finite: int64")    // pairs whose output is NaN or ±inf
    .SetShapeFn(PerUnitShapes);

REGISTER_OP("DeadreluGradStats")
    .Input("output: float")  // [samples, positions, units]
    .Input("grad: float")    // ∂ℓ/∂output, same shape
    .Input("valid: float")
    .Attr("cap: float = 0")
    .Attr("capped: bool = false")
    .Output("grad_abs: double")      // sum of |∂ℓ/∂z| = |∂ℓ/∂output| where the unit passes gradient
    .Output("grad_nonzero: int64")   // pairs where that gradient is finite and not zero
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

// Adds a block's float32 sums into the float64 totals, and zeroes the block (the gradient op).
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
    Totals totals(most * u);

    const int shards = RunSharded(ctx, layout, [&](int64_t shard, int64_t first, int64_t last) {
      // The sample's counts so far (int32: at most `positions`), and its current block of positions.
      Block sample(u), block(u);
      Shard mine = totals.Of(shard, u);
      for (int64_t i = first; i < last; ++i) {
        if (layout.valid && layout.valid[i] == 0.f) continue;
        const float* values = data + i * p * u;
        for (int64_t start = 0; start < p; start += kBlock) {
          const int64_t stop = std::min(p, start + kBlock);
          const float* row = values + start * u;
          for (int64_t j = start; j < stop; ++j, row += u) {
            if (capped_) {
              Accumulate<true>(row, u, cap_, &block);
            } else {
              Accumulate<false>(row, u, cap_, &block);
            }
          }
          if (!Finite(block.sum.data(), u)) Remeasure(values + start * u, stop - start, u, &block, mine.non_finite);
          SettleBlock(stop == p, u, &block, &sample, mine);
        }
      }
    });

    Tensor* out[6];
    for (int i = 0; i < 6; ++i) {
      OP_REQUIRES_OK(ctx, ctx->allocate_output(i, TensorShape({u}), &out[i]));
    }
    auto f = out[0]->flat<int64_t>();
    auto sf = out[1]->flat<int64_t>();
    auto s = out[2]->flat<double>();
    auto m = out[3]->flat<float>();
    auto sat = out[4]->flat<int64_t>();
    auto nf = out[5]->flat<int64_t>();
    for (int64_t k = 0; k < u; ++k) {
      f(k) = sf(k) = sat(k) = nf(k) = 0;
      s(k) = 0.0;
      m(k) = -std::numeric_limits<float>::infinity();
      for (int shard = 0; shard < shards; ++shard) {
        f(k) += totals.fires[shard * u + k];
        sf(k) += totals.sample_fires[shard * u + k];
        s(k) += totals.sums[shard * u + k];
        m(k) = std::max(m(k), totals.maxima[shard * u + k]);
        sat(k) += totals.saturated[shard * u + k];
        nf(k) += totals.non_finite[shard * u + k];
      }
    }
  }

 private:
  // Per unit: counts, a float32 sum and a maximum, of a block of positions or of a sample so far.
  struct Block {
    explicit Block(int64_t units)
        : count(units, 0), at_cap(units, 0), sum(units, 0.f), best(units, -std::numeric_limits<float>::infinity()) {}
    std::vector<int32_t> count, at_cap;
    std::vector<float> sum, best;
  };

  // Per shard and unit, the totals over its samples (one slice of `Totals` per shard).
  struct Shard {
    int64_t *fires, *sample_fires, *saturated, *non_finite;
    double* sums;
    float* maxima;
  };

  struct Totals {
    explicit Totals(int64_t size)
        : fires(size, 0),
          sample_fires(size, 0),
          saturated(size, 0),
          non_finite(size, 0),
          sums(size, 0.0),
          maxima(size, -std::numeric_limits<float>::infinity()) {}
    Shard Of(int64_t shard, int64_t units) {
      const int64_t at = shard * units;
      return {&fires[at], &sample_fires[at], &saturated[at], &non_finite[at], &sums[at], &maxima[at]};
    }
    std::vector<int64_t> fires, sample_fires, saturated, non_finite;
    std::vector<double> sums;
    std::vector<float> maxima;
  };

  // One position of one sample into its block: a loop over contiguous units, without branches, so
  // that it vectorizes. `v < FLT_MIN` (zero, or subnormal: read as zero whatever the thread's mode)
  // is false for NaN, so NaN and ±inf reach the block's sum — and are sorted out by `Remeasure`.
  template <bool kCapped>
  static void Accumulate(const float* __restrict row, int64_t units, float cap, Block* block) {
    int32_t* __restrict count = block->count.data();
    int32_t* __restrict at_cap = block->at_cap.data();
    float* __restrict sum = block->sum.data();
    float* __restrict best = block->best.data();
    for (int64_t k = 0; k < units; ++k) {
      const float value = row[k];
      const float v = std::fabs(value);
      const bool zero = v < FLT_MIN;
      const float kept = zero ? 0.f : value;
      count[k] += !zero;
      sum[k] += zero ? 0.f : v;
      best[k] = best[k] < kept ? kept : best[k];
      if (kCapped) at_cap[k] += value >= cap;
    }
  }

  // Whether every sum of a block is finite: false when one of its values was NaN or ±inf (or when a
  // float32 sum of finite values overflowed, which `Remeasure` finds again).
  static bool Finite(const float* __restrict sum, int64_t units) {
    bool finite = true;
    for (int64_t k = 0; k < units; ++k) finite &= std::fabs(sum[k]) <= FLT_MAX;
    return finite;
  }

  // Measures a block of `positions` rows again, value by value: NaN and ±inf are counted in
  // `non_finite` and read as zero by the block's numbers.
  void Remeasure(const float* row, int64_t positions, int64_t units, Block* block, int64_t* non_finite) const {
    std::fill(block->count.begin(), block->count.end(), 0);
    std::fill(block->at_cap.begin(), block->at_cap.end(), 0);
    std::fill(block->sum.begin(), block->sum.end(), 0.f);
    std::fill(block->best.begin(), block->best.end(), -std::numeric_limits<float>::infinity());
    for (int64_t j = 0; j < positions; ++j, row += units) {
      for (int64_t k = 0; k < units; ++k) {
        const float value = row[k];
        const float v = std::fabs(value);
        const bool finite = v <= FLT_MAX;  // false for NaN and ±inf
        const bool fires = finite & (v >= FLT_MIN);
        const float kept = fires ? value : 0.f;
        block->count[k] += fires;
        non_finite[k] += !finite;
        block->sum[k] += fires ? v : 0.f;
        block->best[k] = std::max(block->best[k], kept);
        if (capped_) block->at_cap[k] += finite & (value >= cap_);
      }
    }
  }

  // `Settle` for this op's cap; `last`: the block ends its sample.
  void SettleBlock(bool last, int64_t units, Block* block, Block* sample, const Shard& shard) const {
    if (capped_ && last) {
      Settle<true, true>(units, block, sample, shard);
    } else if (capped_) {
      Settle<true, false>(units, block, sample, shard);
    } else if (last) {
      Settle<false, true>(units, block, sample, shard);
    } else {
      Settle<false, false>(units, block, sample, shard);
    }
  }

  // Adds a block into the sample (and its sum and maximum into the shard's totals), and empties it;
  // at the end of the sample (kLast), adds the sample's counts into the shard's totals and empties
  // the sample too. One loop per type of number, so that each vectorizes.
  template <bool kCapped, bool kLast>
  static void Settle(int64_t units, Block* block, Block* sample, const Shard& shard) {
    SettleCounts<kLast>(units, block->count.data(), sample->count.data(), shard.fires, shard.sample_fires);
    if (kCapped) SettleCounts<kLast>(units, block->at_cap.data(), sample->at_cap.data(), shard.saturated, nullptr);
    float* __restrict sum = block->sum.data();
    double* __restrict sums = shard.sums;
    for (int64_t k = 0; k < units; ++k) {
      sums[k] += sum[k];
      sum[k] = 0.f;
    }
    float* __restrict best = block->best.data();
    float* __restrict maxima = shard.maxima;
    for (int64_t k = 0; k < units; ++k) {
      maxima[k] = maxima[k] < best[k] ? best[k] : maxima[k];
      best[k] = -std::numeric_limits<float>::infinity();
    }
  }

  // A block's counts into the sample's; at the end of the sample, the sample's into the shard's
  // `totals` (and, with `samples`, how many samples counted at least one).
  template <bool kLast>
  static void SettleCounts(int64_t units, int32_t* __restrict block, int32_t* __restrict sample,
                           int64_t* __restrict totals, int64_t* __restrict samples) {
    for (int64_t k = 0; k < units; ++k) {
      if (kLast) {
        const int32_t counted = sample[k] + block[k];
        totals[k] += counted;
        if (samples != nullptr) samples[k] += counted > 0;
        sample[k] = 0;
      } else {
        sample[k] += block[k];
      }
      block[k] = 0;
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
  // One position of one sample. ∂ℓ/∂z = ∂ℓ/∂a where the unit fires below its cap, else 0. Site
  // outputs are ≥ 0 (or NaN, or +inf), so "fires below the cap" is `FLT_MIN <= out < cap`, false
  // for NaN and ±inf; a NaN or ±inf gradient counts as none. The conditions are combined without
  // branches (`&`, not `&&`) so that the loop vectorizes.
  static void AccumulateGrad(const float* __restrict out, const float* __restrict grad, int64_t units, float cap,
                             int32_t* __restrict count, float* __restrict sum) {
    for (int64_t k = 0; k < units; ++k) {
      const float v = std::fabs(grad[k]);
      const bool passes = (out[k] >= FLT_MIN) & (out[k] < cap) & (v >= FLT_MIN) & (v <= FLT_MAX);
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
