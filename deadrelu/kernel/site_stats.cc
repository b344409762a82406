// deadrelu's fused site statistics: four TensorFlow CPU ops, built on the user's machine by
// deadrelu/kernel/ (whose __init__.py documents when they are used).
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
//
// The third op, `DeadreluPreactStats`, reads a site's pre-activation z (the input of its ReLU) once:
// per unit its largest and smallest value and the float64 sums of z and z², with NaN, ±inf and
// subnormal z read as zero. Its sums do not depend on the number of threads (see `PreactChunks`).
//
// The fourth, `DeadreluReluSiteStats`, applies a layer-level site's ReLU itself: it reads z once and
// returns the ReLU's output (what Keras's relu computes, bit for bit) with the statistics of the other
// two ops, so that a scan's forward step reads each activation once (see `ReluSiteStatsOp`). Given
// the layer's bias, it reads the layer's output before the bias instead and adds the bias itself
// (one float32 addition, as `BiasAdd`): the layer's `BiasAdd` then has no reader and is not run.

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
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

REGISTER_OP("DeadreluPreactStats")
    .Input("z: float")            // pre-activations [samples, positions, units], units contiguous
    .Input("valid: float")        // [samples] of 1 (counted) and 0 (padding), or [0]: all counted
    .Output("pre_max: float")     // largest z (-inf without samples)
    .Output("pre_min: float")     // smallest z (+inf without samples)
    .Output("pre_sum: double")    // sum of z
    .Output("pre_sumsq: double")  // sum of z²
    .SetShapeFn(PerUnitShapes);

// The ReLU of a layer-level site and all its statistics, from one read of z: `a` has z's shape, the
// statistics are one number per unit (the last dimension of z).
::tensorflow::Status ReluShapes(InferenceContext* c) {
  ::tensorflow::shape_inference::ShapeHandle z;
  TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(0), 2, &z));
  c->set_output(0, z);
  for (int i = 1; i < c->num_outputs(); ++i) c->set_output(i, c->Vector(c->Dim(z, -1)));
  return ::tensorflow::OkStatus();
}

REGISTER_OP("DeadreluReluSiteStats")
    .Input("z: float")                // pre-activations [samples, ..., units], units contiguous
    .Input("valid: float")            // [samples] of 1 (counted) and 0 (padding), or [0]: all counted
    .Input("bias: float")             // [units] added to z first (the layer's BiasAdd, folded in), or [0]
    .Attr("threshold: float = 0")     // ReLU(threshold=t): z > t passes, the rest is 0
    .Attr("cap: float = 0")           // the site's max_value, with capped
    .Attr("capped: bool = false")
    .Output("a: float")               // the ReLU's output, z's shape: what Keras's relu computes
    .Output("fires: int64")           // as DeadreluSiteStats on a
    .Output("sample_fires: int64")
    .Output("sum_abs: double")
    .Output("max: float")
    .Output("saturated: int64")
    .Output("non_finite: int64")
    .Output("pre_max: float")         // as DeadreluPreactStats on z
    .Output("pre_min: float")
    .Output("pre_sum: double")
    .Output("pre_sumsq: double")
    .SetShapeFn(ReluShapes);

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

    EmitTotals(ctx, totals, shards, u, 0);
  }

 protected:  // shared with ReluSiteStatsOp, which derives from this op
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

  // The six statistics of `SiteStats` as outputs `first` … `first + 5`: per unit, the totals of the
  // first `parts` slices of `totals`, summed in slice order (the same sums on every run).
  static void EmitTotals(OpKernelContext* ctx, const Totals& totals, int64_t parts, int64_t u, int first) {
    Tensor* out[6];
    for (int i = 0; i < 6; ++i) {
      OP_REQUIRES_OK(ctx, ctx->allocate_output(first + i, TensorShape({u}), &out[i]));
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
      for (int64_t part = 0; part < parts; ++part) {
        const int64_t at = part * u + k;
        f(k) += totals.fires[at];
        sf(k) += totals.sample_fires[at];
        s(k) += totals.sums[at];
        m(k) = std::max(m(k), totals.maxima[at]);
        sat(k) += totals.saturated[at];
        nf(k) += totals.non_finite[at];
      }
    }
  }

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

// A site's pre-activation z, read once: per unit its largest and smallest value (float32, exact) and
// the sums of z and z² (float64 throughout: the mean and spread of the report subtract E[z]² from
// E[z²], which float32 sums would leave with a few digits). Padding rows (valid 0) are skipped.
class PreactStatsOp : public OpKernel {
 public:
  explicit PreactStatsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& z = ctx->input(0);
    Layout layout;
    OP_REQUIRES_OK(ctx, ReadLayout(z, ctx->input(1), &layout));
    const int64_t n = layout.samples, p = layout.positions, u = layout.units;
    const float* data = z.flat<float>().data();
    const int64_t chunks = PreactChunks(layout);
    constexpr float kInf = std::numeric_limits<float>::infinity();
    // Per chunk and unit: its maximum, minimum and sums (one slice of u per chunk; no shared writes).
    std::vector<float> highest(chunks * u, -kInf), lowest(chunks * u, kInf);
    std::vector<double> sums(chunks * u, 0.0), squares(chunks * u, 0.0);

    auto work = [&](int64_t begin, int64_t end) {
      std::vector<double> block_sum(u, 0.0), block_square(u, 0.0);
      for (int64_t chunk = begin; chunk < end; ++chunk) {
        const int64_t at = chunk * u;
        int64_t rows = 0;  // rows (sample, position) in the current block
        for (int64_t i = n * chunk / chunks; i < n * (chunk + 1) / chunks; ++i) {
          if (layout.valid && layout.valid[i] == 0.f) continue;
          const float* row = data + i * p * u;
          for (int64_t j = 0; j < p; ++j, row += u) {
            AccumulatePreact(row, u, &highest[at], &lowest[at], block_sum.data(), block_square.data());
            if (++rows == kBlock) {
              FlushPreact(u, block_sum.data(), block_square.data(), &sums[at], &squares[at]);
              rows = 0;
            }
          }
        }
        FlushPreact(u, block_sum.data(), block_square.data(), &sums[at], &squares[at]);
      }
    };
    const int64_t threads = ctx->device()->tensorflow_cpu_worker_threads()->num_threads;
    const int64_t cost = std::max<int64_t>(1, n * p * u / chunks);
    ::tensorflow::Shard(threads, ctx->device()->tensorflow_cpu_worker_threads()->workers, chunks, cost, work);

    Tensor* out[4];
    for (int i = 0; i < 4; ++i) {
      OP_REQUIRES_OK(ctx, ctx->allocate_output(i, TensorShape({u}), &out[i]));
    }
    auto pre_max = out[0]->flat<float>();
    auto pre_min = out[1]->flat<float>();
    auto pre_sum = out[2]->flat<double>();
    auto pre_sumsq = out[3]->flat<double>();
    for (int64_t k = 0; k < u; ++k) {
      float hi = -kInf, lo = kInf;
      double s = 0.0, q = 0.0;
      for (int64_t chunk = 0; chunk < chunks; ++chunk) {  // in chunk order: the same sums on every run
        hi = std::max(hi, highest[chunk * u + k]);
        lo = std::min(lo, lowest[chunk * u + k]);
        s += sums[chunk * u + k];
        q += squares[chunk * u + k];
      }
      pre_max(k) = hi;
      pre_min(k) = lo;
      pre_sum(k) = s;
      pre_sumsq(k) = q;
    }
  }

 public:  // the helpers below are shared with ReluSiteStatsOp
  // The samples are split into chunks whose number depends on the shape alone (one per
  // kChunkValues values, at most kMaxChunks, at most one per sample), each summed on its own and
  // the chunks added in order: the float64 sums are the same, bit for bit, on every run and
  // whatever the number of threads (which only decides who sums which chunks).
  static constexpr int64_t kChunkValues = int64_t{1} << 15;
  static constexpr int64_t kMaxChunks = 64;

  static int64_t PreactChunks(const Layout& layout) {
    const int64_t values = layout.samples * layout.positions * layout.units;
    return std::max<int64_t>(1, std::min({values / kChunkValues, kMaxChunks, layout.samples}));
  }

  // `value` where `kept`, else +0: a select on its bits. (A float select followed by the conversion to
  // double is not vectorized: the compiler may not convert a value the select would have dropped.)
  static float KeptOrZero(float value, bool kept) {
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof bits);
    bits &= 0u - static_cast<uint32_t>(kept);
    std::memcpy(&value, &bits, sizeof bits);
    return value;
  }

  // One row (a sample's position) of z into the chunk's maximum and minimum and the block's sums.
  // Branch-free, so that it vectorizes: NaN fails both tests, ±inf the second, ±0 and subnormals
  // the first — all read as +0. Sums are float64 from the first value (x² is exact in float64).
  static void AccumulatePreact(const float* __restrict row, int64_t units, float* __restrict highest,
                               float* __restrict lowest, double* __restrict sum, double* __restrict square) {
    for (int64_t k = 0; k < units; ++k) {
      const float value = row[k];
      const float v = std::fabs(value);
      const float x = KeptOrZero(value, (v >= FLT_MIN) & (v <= FLT_MAX));
      highest[k] = highest[k] < x ? x : highest[k];
      lowest[k] = x < lowest[k] ? x : lowest[k];
      const double d = x;
      sum[k] += d;
      square[k] += d * d;
    }
  }

  // A block's sums (at most kBlock rows) into the chunk's, and the block emptied: short chains of
  // additions keep the float64 rounding error far below that of one chain over the whole chunk.
  static void FlushPreact(int64_t units, double* __restrict block_sum, double* __restrict block_square,
                          double* __restrict sum, double* __restrict square) {
    for (int64_t k = 0; k < units; ++k) {
      sum[k] += block_sum[k];
      square[k] += block_square[k];
      block_sum[k] = 0.0;
      block_square[k] = 0.0;
    }
  }
};

// A layer-level site's ReLU and every statistic of the site, from one read of z: on TensorFlow's CPU
// a scan that also reads z loses TensorFlow's fusion of the layer's bias and ReLU (z then has two
// consumers), and reading z, then a, costs two passes more than the forward pass. Here z is read
// once: each row (a sample's position) of z gives its row of `a` — Keras's relu as TensorFlow
// computes it, bit for bit (see `Relu`) — and, while both rows are in the L1 cache, the site's
// statistics of `a` (`SiteStatsOp`'s, by its own functions) and of z (`PreactStatsOp`'s).
// Padding rows (valid 0) get their `a` and count nowhere. The samples are split into chunks as
// `PreactStatsOp` splits them, so the pre-activation sums are its own, bit for bit; `sum_abs`
// may differ from `SiteStatsOp`'s in the last bits of a float64 (its partial sums are added in
// another grouping).
class ReluSiteStatsOp : public SiteStatsOp {
 public:
  explicit ReluSiteStatsOp(OpKernelConstruction* ctx) : SiteStatsOp(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("threshold", &threshold_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& z = ctx->input(0);
    const Tensor& valid = ctx->input(1);
    OP_REQUIRES(ctx, z.dims() >= 2,
                ::tensorflow::errors::InvalidArgument("z must be [samples, ..., units], got rank ", z.dims()));
    Layout layout;
    layout.samples = z.dim_size(0);
    layout.units = z.dim_size(z.dims() - 1);
    layout.positions = 1;
    for (int d = 1; d + 1 < z.dims(); ++d) layout.positions *= z.dim_size(d);
    const int64_t nv = valid.NumElements();
    OP_REQUIRES(ctx, valid.dims() == 1 && (nv == 0 || nv == layout.samples),
                ::tensorflow::errors::InvalidArgument("valid must be [samples] or [0], got ",
                                                      valid.shape().DebugString()));
    layout.valid = nv ? valid.flat<float>().data() : nullptr;
    const Tensor& bias_in = ctx->input(2);
    const int64_t nb = bias_in.NumElements();
    OP_REQUIRES(ctx, bias_in.dims() == 1 && (nb == 0 || nb == layout.units),
                ::tensorflow::errors::InvalidArgument("bias must be [units] or [0], got ",
                                                      bias_in.shape().DebugString()));
    // Without a bias, zeros: z + 0 is z for every value the op reads (-0 and subnormals read as 0).
    std::vector<float> no_bias(nb ? 0 : layout.units, 0.f);
    const float* bias = nb ? bias_in.flat<float>().data() : no_bias.data();
    // `a` takes z's buffer when nothing else reads z (in a scan's step, nothing does): each value
    // of z is read, then overwritten by its ReLU, and no new activation-sized buffer is written.
    Tensor* a_out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, z.shape(), &a_out));

    const int64_t n = layout.samples, p = layout.positions, u = layout.units;
    const float* zs = z.flat<float>().data();
    float* as = a_out->flat<float>().data();
    const int64_t chunks = PreactStatsOp::PreactChunks(layout);
    constexpr float kInf = std::numeric_limits<float>::infinity();
    Totals totals(chunks * u);
    std::vector<float> highest(chunks * u, -kInf), lowest(chunks * u, kInf);
    std::vector<double> sums(chunks * u, 0.0), squares(chunks * u, 0.0);

    auto work = [&](int64_t begin, int64_t end) {
      Block sample(u), block(u);
      for (int64_t chunk = begin; chunk < end; ++chunk) {
        const int64_t at = chunk * u;
        Shard mine = totals.Of(chunk, u);
        for (int64_t i = n * chunk / chunks; i < n * (chunk + 1) / chunks; ++i) {
          const float* zi = zs + i * p * u;
          float* ai = as + i * p * u;
          if (layout.valid && layout.valid[i] == 0.f) {
            ApplyRows(zi, bias, ai, p, u);
            continue;
          }
          for (int64_t start = 0; start < p; start += kBlock) {
            const int64_t stop = std::min(p, start + kBlock);
            const Rows rows{zi + start * u, bias,         ai + start * u, stop - start, u,
                            &block,         &highest[at], &lowest[at],    &sums[at],   &squares[at]};
            MeasureBlock(rows);
            if (!Finite(block.sum.data(), u)) Remeasure(ai + start * u, stop - start, u, &block, mine.non_finite);
            SettleBlock(stop == p, u, &block, &sample, mine);
          }
        }
      }
    };
    const int64_t threads = ctx->device()->tensorflow_cpu_worker_threads()->num_threads;
    const int64_t cost = std::max<int64_t>(1, n * p * u / chunks);
    ::tensorflow::Shard(threads, ctx->device()->tensorflow_cpu_worker_threads()->workers, chunks, cost, work);

    EmitTotals(ctx, totals, chunks, u, 1);  // outputs 1–6; 0 is `a`
    if (!ctx->status().ok()) return;
    Tensor* out[4];
    for (int i = 0; i < 4; ++i) {
      OP_REQUIRES_OK(ctx, ctx->allocate_output(7 + i, TensorShape({u}), &out[i]));
    }
    auto pre_max = out[0]->flat<float>();
    auto pre_min = out[1]->flat<float>();
    auto pre_sum = out[2]->flat<double>();
    auto pre_sumsq = out[3]->flat<double>();
    for (int64_t k = 0; k < u; ++k) {
      float hi = -kInf, lo = kInf;
      double zs1 = 0.0, zs2 = 0.0;
      for (int64_t chunk = 0; chunk < chunks; ++chunk) {  // in chunk order: the same sums on every run
        const int64_t at = chunk * u + k;
        hi = std::max(hi, highest[at]);
        lo = std::min(lo, lowest[at]);
        zs1 += sums[at];
        zs2 += squares[at];
      }
      pre_max(k) = hi;
      pre_min(k) = lo;
      pre_sum(k) = zs1;
      pre_sumsq(k) = zs2;
    }
  }

 private:
  // Keras's relu of `x` as TensorFlow computes it (checked bit for bit by tests/test_kernel.py):
  // without a threshold (`Relu`, `Relu6`, and `clip_by_value` for another cap) NaN passes unchanged,
  // and -0.0, negatives and subnormals (flushed by TensorFlow's CPU kernels) give +0; with a
  // threshold (`where(x > t, x, 0)`, then the cap) NaN and everything at or below t give +0. +inf
  // gives the cap when there is one.
  // A block of rows (positions of one sample) of z, its `a`, and where their numbers go: the
  // block's (of `a`) and the chunk's (of z).
  struct Rows {
    const float* z;
    const float* bias;  // [units], added to z before anything reads it
    float* a;           // may be z itself
    int64_t rows, units;
    Block* block;
    float *highest, *lowest;
    double *sum, *square;
  };

  // Units in groups of 16 (`Group16`, in vector registers), then of 8 and 1 (`Group`): each group's
  // numbers stay in registers over the rows of the block.
  static constexpr int kGroup = 16;

  void MeasureBlock(const Rows& r) const {
    const bool threshold = threshold_ != 0.f;
    if (threshold && capped_) {
      MeasureGroups<true, true>(r);
    } else if (threshold) {
      MeasureGroups<true, false>(r);
    } else if (capped_) {
      MeasureGroups<false, true>(r);
    } else {
      MeasureGroups<false, false>(r);
    }
  }

  template <bool kThreshold, bool kCapped>
  void MeasureGroups(const Rows& r) const {
    int64_t k = 0;
#if defined(__clang__)  // whose C++ mode may not take `?:` on these vector types
    for (; k + kGroup <= r.units; k += kGroup) Group<kGroup, kThreshold, kCapped>(r, k);
#else
    for (; k + kGroup <= r.units; k += kGroup) Group16<kThreshold, kCapped>(r, k);
#endif
    for (; k + 8 <= r.units; k += 8) Group<8, kThreshold, kCapped>(r, k);
    for (; k < r.units; ++k) Group<1, kThreshold, kCapped>(r, k);
  }

  // Units [k0, k0 + W) over the block's rows: z → a (the row's W values of z are read before its
  // `a` is written, so that a written over z is right), the block's counts, float32 sum and maximum
  // of `a` as `Accumulate` counts them (simpler: `a` is never negative nor subnormal), and z's
  // extremes and float64 sums as `AccumulatePreact`.
  template <int W, bool kThreshold, bool kCapped>
  void Group(const Rows& r, int64_t k0) const {
    constexpr float kInf = std::numeric_limits<float>::infinity();
    int32_t count[W] = {}, at_cap[W] = {};
    float total[W] = {}, best[W], hi[W], lo[W];
    double s1[W] = {}, s2[W] = {};
    for (int w = 0; w < W; ++w) {
      best[w] = -kInf;
      hi[w] = r.highest[k0 + w];
      lo[w] = r.lowest[k0 + w];
    }
    const float threshold = threshold_, cap = cap_;
    for (int64_t j = 0; j < r.rows; ++j) {
      float x[W];
      const float* zr = r.z + j * r.units + k0;
      float* ar = r.a + j * r.units + k0;
      for (int w = 0; w < W; ++w) x[w] = zr[w] + r.bias[k0 + w];
      for (int w = 0; w < W; ++w) {
        const float v = std::fabs(x[w]);
        const float kept = PreactStatsOp::KeptOrZero(x[w], (v >= FLT_MIN) & (v <= FLT_MAX));
        hi[w] = hi[w] < kept ? kept : hi[w];
        lo[w] = kept < lo[w] ? kept : lo[w];
        const double d = kept;
        s1[w] += d;
        s2[w] += d * d;
        const float y = Relu<kThreshold, kCapped>(x[w], threshold, cap);
        ar[w] = y;
        // y is +0, a normal float, +inf or NaN: the last two make the block's sum non-finite, and
        // the block is measured again by `Remeasure` (as `SiteStatsOp` does).
        count[w] += y > 0.f;
        total[w] += y;
        best[w] = best[w] < y ? y : best[w];
        if (kCapped) at_cap[w] += y >= cap;
      }
    }
    for (int w = 0; w < W; ++w) {
      r.block->count[k0 + w] = count[w];
      r.block->at_cap[k0 + w] = at_cap[w];
      r.block->sum[k0 + w] = total[w];
      r.block->best[k0 + w] = best[w];
      r.highest[k0 + w] = hi[w];
      r.lowest[k0 + w] = lo[w];
      r.sum[k0 + w] += s1[w];
      r.square[k0 + w] += s2[w];
    }
  }

#if !defined(__clang__)
  // `Group<16>` written with GCC's vector types, so that the group's sixteen units are
  // one register per number whatever the compiler's unrolling decides: the same arithmetic, lane by
  // lane, in the same order (the same results as `Group`).
  typedef float F16 __attribute__((vector_size(64)));
  typedef int32_t I16 __attribute__((vector_size(64)));
  typedef float F8 __attribute__((vector_size(32)));
  typedef double D8 __attribute__((vector_size(64)));

  template <typename V, typename T>
  static V LoadV(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }

  template <typename V, typename T>
  static void StoreV(T* p, const V& v) {
    std::memcpy(p, &v, sizeof v);
  }

  template <bool kThreshold, bool kCapped>
  void Group16(const Rows& r, int64_t k0) const {
    const F16 zero = {};
    const F16 smallest = zero + FLT_MIN, largest = zero + FLT_MAX;
    const F16 threshold = zero + threshold_, cap = zero + cap_;
    const I16 magnitude = I16{} + 0x7fffffff;
    const F16 bias = LoadV<F16>(r.bias + k0);
    I16 count = {}, at_cap = {};
    F16 total = {}, best = zero - std::numeric_limits<float>::infinity();
    F16 hi = LoadV<F16>(r.highest + k0), lo = LoadV<F16>(r.lowest + k0);
    D8 s1a = {}, s1b = {}, s2a = {}, s2b = {};
    for (int64_t j = 0; j < r.rows; ++j) {
      const F16 x = LoadV<F16>(r.z + j * r.units + k0) + bias;  // read before `a` is written (maybe over it)
      const F16 v = (F16)((I16)x & magnitude);
      const F16 kept = (F16)((I16)x & ((v >= smallest) & (v <= largest)));
      hi = hi < kept ? kept : hi;
      lo = kept < lo ? kept : lo;
      const D8 da = __builtin_convertvector(__builtin_shufflevector(kept, kept, 0, 1, 2, 3, 4, 5, 6, 7), D8);
      const D8 db = __builtin_convertvector(__builtin_shufflevector(kept, kept, 8, 9, 10, 11, 12, 13, 14, 15), D8);
      s1a += da;
      s1b += db;
      s2a += da * da;
      s2b += db * db;
      F16 y = kThreshold ? (x > threshold ? x : zero) : (x >= smallest ? x : zero);
      if (kCapped) y = y < cap ? y : cap;
      if (!kThreshold) y = x != x ? x : y;
      StoreV(r.a + j * r.units + k0, y);
      count -= (y > zero);  // a true comparison is -1
      total += y;
      best = best < y ? y : best;
      if (kCapped) at_cap -= (y >= cap);
    }
    StoreV(r.block->count.data() + k0, count);
    StoreV(r.block->at_cap.data() + k0, at_cap);
    StoreV(r.block->sum.data() + k0, total);
    StoreV(r.block->best.data() + k0, best);
    StoreV(r.highest + k0, hi);
    StoreV(r.lowest + k0, lo);
    StoreV(r.sum + k0, LoadV<D8>(r.sum + k0) + s1a);
    StoreV(r.sum + k0 + 8, LoadV<D8>(r.sum + k0 + 8) + s1b);
    StoreV(r.square + k0, LoadV<D8>(r.square + k0) + s2a);
    StoreV(r.square + k0 + 8, LoadV<D8>(r.square + k0 + 8) + s2b);
  }
#endif

  template <bool kThreshold, bool kCapped>
  static float Relu(float x, float threshold, float cap) {
    float y = kThreshold ? (x > threshold ? x : 0.f) : (x >= FLT_MIN ? x : 0.f);
    if (kCapped) y = y < cap ? y : cap;
    if (!kThreshold) y = x != x ? x : y;
    return y;
  }

  // A padding sample's rows: its output only. Each value is read before its `a` is written, so
  // `a` may be z's own buffer.
  template <bool kThreshold, bool kCapped>
  void Apply(const float* z, const float* bias, float* a, int64_t rows, int64_t units) const {
    for (int64_t j = 0; j < rows; ++j, z += units, a += units) {
      for (int64_t k = 0; k < units; ++k) a[k] = Relu<kThreshold, kCapped>(z[k] + bias[k], threshold_, cap_);
    }
  }

  void ApplyRows(const float* z, const float* bias, float* a, int64_t rows, int64_t units) const {
    const bool threshold = threshold_ != 0.f;
    if (threshold && capped_) {
      Apply<true, true>(z, bias, a, rows, units);
    } else if (threshold) {
      Apply<true, false>(z, bias, a, rows, units);
    } else if (capped_) {
      Apply<false, true>(z, bias, a, rows, units);
    } else {
      Apply<false, false>(z, bias, a, rows, units);
    }
  }

  float threshold_;
};

REGISTER_KERNEL_BUILDER(Name("DeadreluSiteStats").Device(DEVICE_CPU), SiteStatsOp);
REGISTER_KERNEL_BUILDER(Name("DeadreluGradStats").Device(DEVICE_CPU), GradStatsOp);
REGISTER_KERNEL_BUILDER(Name("DeadreluPreactStats").Device(DEVICE_CPU), PreactStatsOp);
REGISTER_KERNEL_BUILDER(Name("DeadreluReluSiteStats").Device(DEVICE_CPU), ReluSiteStatsOp);

}  // namespace deadrelu
