// Depthwise 2-D convolution for XLA:CPU as typed-FFI custom calls (models/native/depthwise.py).
//
// Why: XLA:CPU runs a grouped convolution as a generic loop, and the pure-JAX formulations
// (k*k shifted multiply-adds) need k*k memory passes per layer for the kernel gradient. These
// kernels make one pass over NHWC float32 data per call, vectorised over channels (the
// contiguous axis), and split the work over XLA's intra-op thread pool.
//
// Geometry (all three calls): input [N, H, W, C], kernel [K, K, C], output [N, OH, OW, C] with
// input row = out_row * stride + tap_row - pad_top (the same for columns); taps that fall
// outside the input read zero. This is XLA's 'SAME' padding when pad_top/pad_left are its
// leading pads; the Python side computes them.
//
//   dw_forward         (x, kernel)        -> y
//   dw_input_grad      (g, kernel)        -> dx       [N, H, W, C]; H, W from the attributes
//   dw_kernel_grad     (x, g)             -> dk_part  [N, K, K, C]: one partial sum per image,
//                      so the call is independent per image (XLA sums over N and can split the
//                      batch over devices).
//
// And the weight gradient of a pointwise (or im2col) convolution, x [N, R, A], g [N, R, B]:
//   xtg                (x, g)             -> [N, A, B], sum over r of x[n, r, :]^T g[n, r, :]
// XLA:CPU computes this contraction over the long pixel axis by first transposing both
// operands; here it is one pass over both, per image.
//
// And a dense k x k convolution with few input channels (the 3x3 stride-2 stem on RGB), without
// im2col's k*k-times-larger patch tensor, x [N, H, W, Ci], kernel [K, K, Ci, Co]:
//   conv_forward       (x, kernel)        -> y        [N, OH, OW, Co]
//   conv_kernel_grad   (x, g)             -> [N, K, K, Ci, Co], one partial sum per image
//
// And per-channel sums for batch norm, x, y [N, R, C] (one partial per image):
//   channel_sums       (x)                -> [N, 2, C]: sum of x, sum of x*x
//   channel_sums2      (x, y)             -> [N, 2, C]: sum of x, sum of x*y
// XLA:CPU runs these column reductions through YNNPACK, which is slower on two threads than on
// one for activations this size; here each image is one pass on one thread.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Geometry {
  int64_t n, h, w, c, k, stride, pad_top, pad_left, oh, ow;
};

// Runs body(begin, end) over [0, units) in chunks, on the calling thread and on XLA's intra-op
// pool. The caller takes chunks too; once none are left it sleeps (not spins: on two cores a
// spinning caller would slow the helper it waits for) until the last chunk is done. Helpers
// that start late find nothing left (the shared state outlives them).
struct ParallelState {
  std::function<void(int64_t, int64_t)> body;
  int64_t units = 0, chunk = 1, chunks = 0;
  std::atomic<int64_t> next{0}, done{0};
  std::mutex mu;
  std::condition_variable all_done;

  void Work() {
    for (int64_t i = next.fetch_add(1); i < chunks; i = next.fetch_add(1)) {
      body(i * chunk, std::min(units, (i + 1) * chunk));
      if (done.fetch_add(1, std::memory_order_acq_rel) + 1 == chunks) {
        std::lock_guard<std::mutex> lock(mu);
        all_done.notify_all();
      }
    }
  }
};

void ParallelFor(ffi::ThreadPool& pool, int64_t units,
                 std::function<void(int64_t, int64_t)> body) {
  if (units <= 0) return;
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  if (threads == 1 || units == 1) {
    body(0, units);
    return;
  }
  auto state = std::make_shared<ParallelState>();
  state->body = std::move(body);
  state->units = units;
  // A few chunks per thread evens out uneven rows; more would only add overhead.
  state->chunks = std::min(units, threads * 4);
  state->chunk = (units + state->chunks - 1) / state->chunks;
  state->chunks = (units + state->chunk - 1) / state->chunk;
  for (int64_t t = 1; t < std::min(threads, state->chunks); ++t) {
    pool.Schedule([state] { state->Work(); });
  }
  state->Work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->all_done.wait(lock, [&] {
    return state->done.load(std::memory_order_acquire) >= state->chunks;
  });
}

// acc[0:C] += a[0:C] * b[0:C]. CC > 0: channel count known at compile time (fully vectorised).
template <int CC>
inline void Fma(float* __restrict acc, const float* __restrict a, const float* __restrict b,
                int64_t c) {
  const int64_t n = CC > 0 ? CC : c;
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) acc[i] += a[i] * b[i];
}

// Stride 1 works on whole rows: with NHWC rows flattened to (column, channel), a tap (i, j) is
// one contiguous multiply-add between two rows shifted by a whole number of pixels, with the
// tap's weights repeating every C floats. Rows are processed in blocks of Period<CC> floats (a
// multiple of both C and the 16-float vector), so even C = 8 runs full-width vector loops.
constexpr int64_t Gcd(int64_t a, int64_t b) { return b == 0 ? a : Gcd(b, a % b); }
template <int CC>
constexpr int64_t Period() { return CC > 0 ? CC / Gcd(CC, 16) * 16 : 0; }

// out[0:len) += in[0:len) * weights[l % C]; `tiled` holds the weights repeated to Period<CC>.
template <int CC>
inline void RowAxpy(float* __restrict out, const float* __restrict in,
                    const float* __restrict tiled, int64_t len, int64_t c) {
  const int64_t p = CC > 0 ? Period<CC>() : c;
  int64_t l = 0;
  for (; l + p <= len; l += p) {
#pragma GCC ivdep
    for (int64_t m = 0; m < p; ++m) out[l + m] += in[l + m] * tiled[m];
  }
  for (int64_t m = 0; l + m < len; ++m) out[l + m] += in[l + m] * tiled[m];
}

// tiled[0:Period) += sum over l of a[l] * b[l], folded by position modulo Period.
template <int CC>
inline void RowDot(float* __restrict tiled, const float* __restrict a,
                   const float* __restrict b, int64_t len, int64_t c) {
  const int64_t p = CC > 0 ? Period<CC>() : c;
  int64_t l = 0;
  for (; l + p <= len; l += p) {
#pragma GCC ivdep
    for (int64_t m = 0; m < p; ++m) tiled[m] += a[l + m] * b[l + m];
  }
  for (int64_t m = 0; l + m < len; ++m) tiled[m] += a[l + m] * b[l + m];
}

// The kernel's taps, each repeated to Period<CC> floats: [K*K][period].
template <int CC>
std::unique_ptr<float[]> TileKernel(const float* kern, int64_t taps, int64_t c) {
  const int64_t p = CC > 0 ? Period<CC>() : c;
  std::unique_ptr<float[]> tiled(new float[taps * p]);
  for (int64_t t = 0; t < taps; ++t)
    for (int64_t m = 0; m < p; ++m) tiled[t * p + m] = kern[t * c + m % c];
  return tiled;
}

// Columns [lo, hi) of the output row whose tap-j input column col*s + j - pl is inside [0, W).
inline void ValidColumns(const Geometry& g, int64_t j, int64_t* lo, int64_t* hi) {
  // col*s + j - pl >= 0  and  col*s + j - pl <= W - 1
  const int64_t a = g.pad_left - j, s = g.stride;
  *lo = a <= 0 ? 0 : (a + s - 1) / s;
  *hi = std::min<int64_t>(g.ow, (g.w - 1 + a) / s + 1);
  if (g.w - 1 + a < 0) *hi = 0;
}

template <int CC>
void ForwardRows(const Geometry& g, const float* x, const float* kern, float* y, int64_t begin,
                 int64_t end) {
  const int64_t c = CC > 0 ? CC : g.c;
  const int64_t p = CC > 0 ? Period<CC>() : c;
  auto tiled = TileKernel<CC>(kern, g.k * g.k, c);
  for (int64_t r = begin; r < end; ++r) {  // r = image * OH + output row
    const int64_t b = r / g.oh, orow = r % g.oh;
    float* yrow = y + r * g.ow * c;
    std::memset(yrow, 0, sizeof(float) * g.ow * c);
    for (int64_t i = 0; i < g.k; ++i) {
      const int64_t row = orow * g.stride + i - g.pad_top;
      if (row < 0 || row >= g.h) continue;
      const float* xrow = x + ((b * g.h + row) * g.w) * c;
      for (int64_t j = 0; j < g.k; ++j) {
        int64_t lo, hi;
        ValidColumns(g, j, &lo, &hi);
        if (lo >= hi) continue;
        if (g.stride == 1) {
          RowAxpy<CC>(yrow + lo * c, xrow + (lo + j - g.pad_left) * c,
                      tiled.get() + (i * g.k + j) * p, (hi - lo) * c, c);
        } else {
          for (int64_t col = lo; col < hi; ++col)
            Fma<CC>(yrow + col * c, xrow + (col * g.stride + j - g.pad_left) * c,
                    kern + (i * g.k + j) * c, c);
        }
      }
    }
  }
}

// dx[b, row, col] = sum over taps (i, j) with row = orow*s + i - pt, col = ocol*s + j - pl of
// g[b, orow, ocol] * kernel[i, j]: gathered per input row, so rows are independent.
template <int CC>
void InputGradRows(const Geometry& g, const float* grad, const float* kern, float* dx,
                   int64_t begin, int64_t end) {
  const int64_t c = CC > 0 ? CC : g.c, s = g.stride;
  const int64_t p = CC > 0 ? Period<CC>() : c;
  auto tiled = TileKernel<CC>(kern, g.k * g.k, c);
  for (int64_t r = begin; r < end; ++r) {  // r = image * H + input row
    const int64_t b = r / g.h, row = r % g.h;
    float* dxrow = dx + r * g.w * c;
    std::memset(dxrow, 0, sizeof(float) * g.w * c);
    for (int64_t i = 0; i < g.k; ++i) {
      const int64_t num = row + g.pad_top - i;
      if (num < 0 || num % s != 0) continue;
      const int64_t orow = num / s;
      if (orow >= g.oh) continue;
      const float* grow = grad + ((b * g.oh + orow) * g.ow) * c;
      for (int64_t j = 0; j < g.k; ++j) {
        int64_t lo, hi;  // output columns whose tap j lands inside the row
        ValidColumns(g, j, &lo, &hi);
        if (lo >= hi) continue;
        if (s == 1) {
          RowAxpy<CC>(dxrow + (lo + j - g.pad_left) * c, grow + lo * c,
                      tiled.get() + (i * g.k + j) * p, (hi - lo) * c, c);
        } else {
          for (int64_t ocol = lo; ocol < hi; ++ocol)
            Fma<CC>(dxrow + (ocol * s + j - g.pad_left) * c, grow + ocol * c,
                    kern + (i * g.k + j) * c, c);
        }
      }
    }
  }
}

template <int CC>
void KernelGradImages(const Geometry& g, const float* x, const float* grad, float* dk,
                      int64_t begin, int64_t end) {
  const int64_t c = CC > 0 ? CC : g.c;
  const int64_t p = CC > 0 ? Period<CC>() : c;
  const int64_t taps = g.k * g.k;
  std::unique_ptr<float[]> tiled(new float[taps * p]);
  for (int64_t b = begin; b < end; ++b) {
    std::fill(tiled.get(), tiled.get() + taps * p, 0.0f);
    float* acc = dk + b * taps * c;
    std::memset(acc, 0, sizeof(float) * taps * c);
    for (int64_t orow = 0; orow < g.oh; ++orow) {
      const float* grow = grad + ((b * g.oh + orow) * g.ow) * c;
      for (int64_t i = 0; i < g.k; ++i) {
        const int64_t row = orow * g.stride + i - g.pad_top;
        if (row < 0 || row >= g.h) continue;
        const float* xrow = x + ((b * g.h + row) * g.w) * c;
        for (int64_t j = 0; j < g.k; ++j) {
          int64_t lo, hi;
          ValidColumns(g, j, &lo, &hi);
          if (lo >= hi) continue;
          if (g.stride == 1) {
            RowDot<CC>(tiled.get() + (i * g.k + j) * p, xrow + (lo + j - g.pad_left) * c,
                       grow + lo * c, (hi - lo) * c, c);
          } else {
            for (int64_t col = lo; col < hi; ++col)
              Fma<CC>(acc + (i * g.k + j) * c, xrow + (col * g.stride + j - g.pad_left) * c,
                      grow + col * c, c);
          }
        }
      }
    }
    for (int64_t t = 0; t < taps; ++t)  // fold the row sums' periods back onto channels
      for (int64_t m = 0; m < p; ++m) acc[t * c + m % c] += tiled[t * p + m];
  }
}


// out[n] = x[n]^T g[n] for x [N, R, A], g [N, R, B]. The [A, B] accumulator is walked in
// blocks of AT rows held in registers (AT * B floats) while a tile of pixels streams through;
// the tile (RT pixels of x and g) stays in L1 across the blocks.
template <int BB, int AT>
inline void XtgBlock(const float* __restrict x, const float* __restrict g, float* acc,
                     int64_t r0, int64_t r1, int64_t a_len, int64_t a0) {
  float reg[AT][BB];
#pragma GCC unroll 64
  for (int a = 0; a < AT; ++a)
#pragma GCC unroll 64
    for (int b = 0; b < BB; ++b) reg[a][b] = acc[(a0 + a) * BB + b];
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * a_len + a0;
    const float* gr = g + r * BB;
#pragma GCC unroll 64
    for (int a = 0; a < AT; ++a) {
      const float xa = xr[a];
#pragma GCC unroll 64
      for (int b = 0; b < BB; ++b) reg[a][b] += xa * gr[b];
    }
  }
#pragma GCC unroll 64
  for (int a = 0; a < AT; ++a)
#pragma GCC unroll 64
    for (int b = 0; b < BB; ++b) acc[(a0 + a) * BB + b] = reg[a][b];
}

// Rows of the accumulator kept in registers per block: about 16 vector registers' worth.
template <int BB>
constexpr int RowsPerBlock() { return BB >= 256 ? 1 : (BB >= 16 ? 256 / BB : 16); }

template <int BB>
void XtgImages(int64_t r_len, int64_t a_len, int64_t b_len, const float* x, const float* g,
               float* out, int64_t begin, int64_t end) {
  constexpr int64_t kTile = 256;  // pixels per tile
  for (int64_t n = begin; n < end; ++n) {
    float* acc = out + n * a_len * b_len;
    std::memset(acc, 0, sizeof(float) * a_len * b_len);
    const float* xn = x + n * r_len * a_len;
    const float* gn = g + n * r_len * b_len;
    for (int64_t r0 = 0; r0 < r_len; r0 += kTile) {
      const int64_t r1 = std::min(r_len, r0 + kTile);
      if constexpr (BB > 0) {
        // Blocks of the largest power of two rows that fit (27 rows: 16 + 8 + 2 + 1).
        constexpr int AT = RowsPerBlock<BB>();
        int64_t a0 = 0;
        for (; a0 + AT <= a_len; a0 += AT) XtgBlock<BB, AT>(xn, gn, acc, r0, r1, a_len, a0);
        if (AT > 8 && a0 + 8 <= a_len) { XtgBlock<BB, 8>(xn, gn, acc, r0, r1, a_len, a0); a0 += 8; }
        if (AT > 4 && a0 + 4 <= a_len) { XtgBlock<BB, 4>(xn, gn, acc, r0, r1, a_len, a0); a0 += 4; }
        if (AT > 2 && a0 + 2 <= a_len) { XtgBlock<BB, 2>(xn, gn, acc, r0, r1, a_len, a0); a0 += 2; }
        for (; a0 < a_len; ++a0) XtgBlock<BB, 1>(xn, gn, acc, r0, r1, a_len, a0);
      } else {
        for (int64_t r = r0; r < r1; ++r) {
          const float* __restrict xr = xn + r * a_len;
          const float* __restrict gr = gn + r * b_len;
          for (int64_t a = 0; a < a_len; ++a) {
            const float xa = xr[a];
            float* __restrict row = acc + a * b_len;
            for (int64_t b = 0; b < b_len; ++b) row[b] += xa * gr[b];
          }
        }
      }
    }
  }
}


// Dense conv, output channels CO in registers per output pixel.
template <int CI, int CO>
void ConvForwardRowsT(const Geometry& g, int64_t co_rt, const float* __restrict x,
                      const float* __restrict kern, float* __restrict y, int64_t begin,
                      int64_t end) {
  constexpr int64_t ci = CI;
  const int64_t co = CO > 0 ? CO : co_rt;
  for (int64_t r = begin; r < end; ++r) {  // r = image * OH + output row
    const int64_t b = r / g.oh, orow = r % g.oh;
    float* yrow = y + r * g.ow * co;
    for (int64_t ocol = 0; ocol < g.ow; ++ocol) {
      float acc[CO > 0 ? CO : 1024];
      for (int64_t o = 0; o < co; ++o) acc[o] = 0.0f;
      for (int64_t i = 0; i < g.k; ++i) {
        const int64_t row = orow * g.stride + i - g.pad_top;
        if (row < 0 || row >= g.h) continue;
        for (int64_t j = 0; j < g.k; ++j) {
          const int64_t col = ocol * g.stride + j - g.pad_left;
          if (col < 0 || col >= g.w) continue;
          const float* xp = x + ((b * g.h + row) * g.w + col) * ci;
          const float* wp = kern + (i * g.k + j) * ci * co;
          for (int64_t c = 0; c < ci; ++c) {
            const float xv = xp[c];
#pragma GCC ivdep
            for (int64_t o = 0; o < co; ++o) acc[o] += xv * wp[c * co + o];
          }
        }
      }
      std::memcpy(yrow + ocol * co, acc, sizeof(float) * co);
    }
  }
}

// Per image and per tap (i, j): the tap's [CI, CO] accumulator stays in registers while the
// image's output pixels stream through (the image's x and g stay in L2 across the taps).
template <int CI, int CO>
void ConvKernelGradImagesT(const Geometry& g, int64_t co_rt, const float* __restrict x,
                           const float* __restrict grad, float* __restrict dk, int64_t begin,
                           int64_t end) {
  constexpr int64_t ci = CI;
  const int64_t co = CO > 0 ? CO : co_rt;
  const int64_t size = g.k * g.k * ci * co;
  for (int64_t b = begin; b < end; ++b) {
    float* __restrict out = dk + b * size;
    for (int64_t i = 0; i < g.k; ++i) {
      for (int64_t j = 0; j < g.k; ++j) {
        float acc[CI][CO > 0 ? CO : 1024];
        for (int64_t c = 0; c < ci; ++c)
          for (int64_t o = 0; o < co; ++o) acc[c][o] = 0.0f;
        int64_t lo, hi;
        ValidColumns(g, j, &lo, &hi);
        for (int64_t orow = 0; orow < g.oh; ++orow) {
          const int64_t row = orow * g.stride + i - g.pad_top;
          if (row < 0 || row >= g.h) continue;
          const float* xrow = x + ((b * g.h + row) * g.w) * ci;
          const float* grow = grad + ((b * g.oh + orow) * g.ow) * co;
          for (int64_t ocol = lo; ocol < hi; ++ocol) {
            const float* xp = xrow + (ocol * g.stride + j - g.pad_left) * ci;
            const float* gp = grow + ocol * co;
            for (int64_t c = 0; c < ci; ++c) {
              const float xv = xp[c];
#pragma GCC ivdep
              for (int64_t o = 0; o < co; ++o) acc[c][o] += xv * gp[o];
            }
          }
        }
        float* ap = out + (i * g.k + j) * ci * co;
        for (int64_t c = 0; c < ci; ++c)
          for (int64_t o = 0; o < co; ++o) ap[c * co + o] = acc[c][o];
      }
    }
  }
}

// The input-channel count (1-4, see ops.DIRECT_CONV_MAX_IN) as a compile-time constant too.
template <int CO>
void ConvForwardRows(const Geometry& g, int64_t ci, int64_t co, const float* x,
                     const float* kern, float* y, int64_t begin, int64_t end) {
  switch (ci) {
    case 1: ConvForwardRowsT<1, CO>(g, co, x, kern, y, begin, end); break;
    case 2: ConvForwardRowsT<2, CO>(g, co, x, kern, y, begin, end); break;
    case 3: ConvForwardRowsT<3, CO>(g, co, x, kern, y, begin, end); break;
    default: ConvForwardRowsT<4, CO>(g, co, x, kern, y, begin, end); break;
  }
}

template <int CO>
void ConvKernelGradImages(const Geometry& g, int64_t ci, int64_t co, const float* x,
                          const float* grad, float* dk, int64_t begin, int64_t end) {
  switch (ci) {
    case 1: ConvKernelGradImagesT<1, CO>(g, co, x, grad, dk, begin, end); break;
    case 2: ConvKernelGradImagesT<2, CO>(g, co, x, grad, dk, begin, end); break;
    case 3: ConvKernelGradImagesT<3, CO>(g, co, x, grad, dk, begin, end); break;
    default: ConvKernelGradImagesT<4, CO>(g, co, x, grad, dk, begin, end); break;
  }
}


// out[n, 0] = sum over r of a[n, r]; out[n, 1] = sum over r of a[n, r] * b[n, r] (b = a when
// b is null). Channels vectorised; the two [C] accumulators live in L1.
template <int CC>
void ChannelSumsImages(int64_t r_len, int64_t c_rt, const float* a, const float* b, float* out,
                       int64_t begin, int64_t end) {
  const int64_t c = CC > 0 ? CC : c_rt;
  for (int64_t n = begin; n < end; ++n) {
    float* __restrict s1 = out + n * 2 * c;
    float* __restrict s2 = s1 + c;
    std::memset(s1, 0, sizeof(float) * 2 * c);
    const float* an = a + n * r_len * c;
    const float* bn = b ? b + n * r_len * c : an;
    for (int64_t r = 0; r < r_len; ++r) {
      const float* __restrict ar = an + r * c;
      const float* __restrict br = bn + r * c;
#pragma GCC ivdep
      for (int64_t i = 0; i < c; ++i) {
        s1[i] += ar[i];
        s2[i] += ar[i] * br[i];
      }
    }
  }
}

// Calls Kernel<CC> with CC = the channel count when it is a common one, else CC = 0 (runtime).
#define DISPATCH_CHANNELS(KERNEL, C, ...)                 \
  switch (C) {                                            \
    case 8: KERNEL<8>(__VA_ARGS__); break;                \
    case 16: KERNEL<16>(__VA_ARGS__); break;              \
    case 24: KERNEL<24>(__VA_ARGS__); break;              \
    case 32: KERNEL<32>(__VA_ARGS__); break;              \
    case 48: KERNEL<48>(__VA_ARGS__); break;              \
    case 64: KERNEL<64>(__VA_ARGS__); break;              \
    case 96: KERNEL<96>(__VA_ARGS__); break;              \
    case 128: KERNEL<128>(__VA_ARGS__); break;            \
    case 256: KERNEL<256>(__VA_ARGS__); break;            \
    default: KERNEL<0>(__VA_ARGS__); break;               \
  }

ffi::Error CheckGeometry(const Geometry& g) {
  if (g.k <= 0 || g.stride <= 0 || g.c <= 0 || g.oh <= 0 || g.ow <= 0) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "conv: bad geometry");
  }
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                   ffi::ResultBuffer<ffi::F32> y, int64_t stride, int64_t pad_top,
                   int64_t pad_left) {
  auto xd = x.dimensions(), yd = y->dimensions(), kd = kernel.dimensions();
  if (xd.size() != 4 || yd.size() != 4 || kd.size() != 3 || kd[2] != xd[3] || yd[3] != xd[3]) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "dw_forward: bad shapes");
  }
  Geometry g{xd[0], xd[1], xd[2], xd[3], kd[0], stride, pad_top, pad_left, yd[1], yd[2]};
  if (auto e = CheckGeometry(g); e.failure()) return e;
  const float* xp = x.typed_data();
  const float* kp = kernel.typed_data();
  float* yp = y->typed_data();
  ParallelFor(pool, g.n * g.oh, [&](int64_t b, int64_t e) {
    DISPATCH_CHANNELS(ForwardRows, g.c, g, xp, kp, yp, b, e);
  });
  return ffi::Error::Success();
}

ffi::Error InputGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> grad,
                     ffi::Buffer<ffi::F32> kernel, ffi::ResultBuffer<ffi::F32> dx,
                     int64_t stride, int64_t pad_top, int64_t pad_left) {
  auto gd = grad.dimensions(), xd = dx->dimensions(), kd = kernel.dimensions();
  if (gd.size() != 4 || xd.size() != 4 || kd.size() != 3 || kd[2] != gd[3] || xd[3] != gd[3]) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "dw_input_grad: bad shapes");
  }
  Geometry g{xd[0], xd[1], xd[2], xd[3], kd[0], stride, pad_top, pad_left, gd[1], gd[2]};
  if (auto e = CheckGeometry(g); e.failure()) return e;
  const float* gp = grad.typed_data();
  const float* kp = kernel.typed_data();
  float* dxp = dx->typed_data();
  ParallelFor(pool, g.n * g.h, [&](int64_t b, int64_t e) {
    DISPATCH_CHANNELS(InputGradRows, g.c, g, gp, kp, dxp, b, e);
  });
  return ffi::Error::Success();
}

ffi::Error KernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> grad,
                      ffi::ResultBuffer<ffi::F32> dk, int64_t stride, int64_t pad_top,
                      int64_t pad_left) {
  auto xd = x.dimensions(), gd = grad.dimensions(), kd = dk->dimensions();
  if (xd.size() != 4 || gd.size() != 4 || kd.size() != 4 || kd[0] != xd[0] ||
      kd[3] != xd[3] || gd[3] != xd[3] || kd[1] != kd[2]) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "dw_kernel_grad: bad shapes");
  }
  Geometry g{xd[0], xd[1], xd[2], xd[3], kd[1], stride, pad_top, pad_left, gd[1], gd[2]};
  if (auto e = CheckGeometry(g); e.failure()) return e;
  const float* xp = x.typed_data();
  const float* gp = grad.typed_data();
  float* dkp = dk->typed_data();
  ParallelFor(pool, g.n, [&](int64_t b, int64_t e) {
    DISPATCH_CHANNELS(KernelGradImages, g.c, g, xp, gp, dkp, b, e);
  });
  return ffi::Error::Success();
}

ffi::Error Xtg(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> grad,
               ffi::ResultBuffer<ffi::F32> out) {
  auto xd = x.dimensions(), gd = grad.dimensions(), od = out->dimensions();
  if (xd.size() != 3 || gd.size() != 3 || od.size() != 3 || xd[0] != gd[0] || xd[1] != gd[1] ||
      od[0] != xd[0] || od[1] != xd[2] || od[2] != gd[2]) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "xtg: bad shapes");
  }
  const int64_t r = xd[1], a = xd[2], b = gd[2];
  const float* xp = x.typed_data();
  const float* gp = grad.typed_data();
  float* op = out->typed_data();
  ParallelFor(pool, xd[0], [&](int64_t lo, int64_t hi) {
    DISPATCH_CHANNELS(XtgImages, b, r, a, b, xp, gp, op, lo, hi);
  });
  return ffi::Error::Success();
}

ffi::Error ConvForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                       ffi::Buffer<ffi::F32> kernel, ffi::ResultBuffer<ffi::F32> y,
                       int64_t stride, int64_t pad_top, int64_t pad_left) {
  auto xd = x.dimensions(), yd = y->dimensions(), kd = kernel.dimensions();
  if (xd.size() != 4 || yd.size() != 4 || kd.size() != 4 || kd[0] != kd[1] || kd[2] != xd[3] ||
      kd[3] != yd[3] || yd[0] != xd[0] || kd[3] > 1024 || xd[3] > 4) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "conv_forward: bad shapes");
  }
  Geometry g{xd[0], xd[1], xd[2], xd[3], kd[0], stride, pad_top, pad_left, yd[1], yd[2]};
  if (auto e = CheckGeometry(g); e.failure()) return e;
  const int64_t ci = xd[3], co = kd[3];
  const float* xp = x.typed_data();
  const float* kp = kernel.typed_data();
  float* yp = y->typed_data();
  ParallelFor(pool, g.n * g.oh, [&](int64_t b, int64_t e) {
    DISPATCH_CHANNELS(ConvForwardRows, co, g, ci, co, xp, kp, yp, b, e);
  });
  return ffi::Error::Success();
}

ffi::Error ConvKernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                          ffi::Buffer<ffi::F32> grad, ffi::ResultBuffer<ffi::F32> dk,
                          int64_t stride, int64_t pad_top, int64_t pad_left) {
  auto xd = x.dimensions(), gd = grad.dimensions(), kd = dk->dimensions();
  if (xd.size() != 4 || gd.size() != 4 || kd.size() != 5 || kd[0] != xd[0] || kd[1] != kd[2] ||
      kd[3] != xd[3] || kd[4] != gd[3] || gd[0] != xd[0] || xd[3] > 4) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "conv_kernel_grad: bad shapes");
  }
  Geometry g{xd[0], xd[1], xd[2], xd[3], kd[1], stride, pad_top, pad_left, gd[1], gd[2]};
  if (auto e = CheckGeometry(g); e.failure()) return e;
  const int64_t ci = xd[3], co = gd[3];
  const float* xp = x.typed_data();
  const float* gp = grad.typed_data();
  float* dkp = dk->typed_data();
  ParallelFor(pool, g.n, [&](int64_t b, int64_t e) {
    DISPATCH_CHANNELS(ConvKernelGradImages, co, g, ci, co, xp, gp, dkp, b, e);
  });
  return ffi::Error::Success();
}

ffi::Error ChannelSumsImpl(ffi::ThreadPool& pool, const float* a, const float* b,
                           ffi::Span<const int64_t> ad, ffi::Span<const int64_t> od,
                           float* out) {
  if (ad.size() != 3 || od.size() != 3 || od[0] != ad[0] || od[1] != 2 || od[2] != ad[2]) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "channel_sums: bad shapes");
  }
  const int64_t r = ad[1], c = ad[2];
  ParallelFor(pool, ad[0], [&](int64_t lo, int64_t hi) {
    DISPATCH_CHANNELS(ChannelSumsImages, c, r, c, a, b, out, lo, hi);
  });
  return ffi::Error::Success();
}

ffi::Error ChannelSums(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                       ffi::ResultBuffer<ffi::F32> out) {
  return ChannelSumsImpl(pool, x.typed_data(), nullptr, x.dimensions(), out->dimensions(),
                         out->typed_data());
}

ffi::Error ChannelSums2(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> y,
                        ffi::ResultBuffer<ffi::F32> out) {
  auto xd = x.dimensions(), yd = y.dimensions();
  if (xd.size() != yd.size() || !std::equal(xd.begin(), xd.end(), yd.begin())) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "channel_sums2: shapes differ");
  }
  return ChannelSumsImpl(pool, x.typed_data(), y.typed_data(), xd, out->dimensions(),
                         out->typed_data());
}

}  // namespace

// Every handler takes XLA's intra-op pool and float32 buffers; the geometry attributes where the
// kernel has a window.
#define BIND_ATTRS                                                               \
  .Attr<int64_t>("stride").Attr<int64_t>("pad_top").Attr<int64_t>("pad_left")
#define F32_IN .Arg<ffi::Buffer<ffi::F32>>()
#define F32_OUT .Ret<ffi::Buffer<ffi::F32>>()
#define POOL ffi::Ffi::Bind().Ctx<ffi::ThreadPool>()

XLA_FFI_DEFINE_HANDLER_SYMBOL(DwForward, Forward, POOL F32_IN F32_IN F32_OUT BIND_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(DwInputGrad, InputGrad, POOL F32_IN F32_IN F32_OUT BIND_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(DwKernelGrad, KernelGrad, POOL F32_IN F32_IN F32_OUT BIND_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(PixelXtg, Xtg, POOL F32_IN F32_IN F32_OUT);
XLA_FFI_DEFINE_HANDLER_SYMBOL(ConvForwardHandler, ConvForward,
                              POOL F32_IN F32_IN F32_OUT BIND_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(ConvKernelGradHandler, ConvKernelGrad,
                              POOL F32_IN F32_IN F32_OUT BIND_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(ChannelSumsHandler, ChannelSums, POOL F32_IN F32_OUT);
XLA_FFI_DEFINE_HANDLER_SYMBOL(ChannelSums2Handler, ChannelSums2, POOL F32_IN F32_IN F32_OUT);
