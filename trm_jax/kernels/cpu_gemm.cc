// bf16 GEMM for x86-64 CPUs as an XLA FFI custom call, built for one of two instruction sets:
//
//   TRM_GEMM_AMX=1  Intel AMX (tile registers, TDPBF16PS): Sapphire Rapids and later.
//   TRM_GEMM_AMX=0  AVX512-BF16 (VDPBF16PS on zmm registers): AMD Zen 4/5, Cooper Lake, and
//                   any AMX CPU (they all have it).
//
//   out[M, N] = A[M, K] @ B[K, N],  A, B bf16; fp32 accumulation; out bf16 (round to nearest
//   even, as XLA's convert) or fp32.  A may be given transposed ([K, M] in memory) and so may
//   B ([N, K]); the backward pass of a linear layer needs both, and transposing inside the
//   packing step costs nothing extra.
//
// Why this exists: XLA:CPU lowers bf16 dots to AVX-512 kernels (about 0.4 TFLOP/s on two
// Sapphire Rapids cores) and never to AMX, which PyTorch's oneDNN uses (about 2.5 TFLOP/s); on a
// CPU without AMX, oneDNN's VDPBF16PS kernels still beat XLA's dot, twice over for the weight
// gradients (A transposed). See BUILD_NOTES.md, "CPU speed" and "CPUs without AMX".
//
// Three FFI targets share the GEMM: trm_<isa>_matmul (above), trm_<isa>_swiglu (the SwiGLU
// gate/up projection with silu(g) * u applied in the epilogue, so [M, 2I] never round-trips
// through memory in the forward) and trm_<isa>_swiglu_bwd (that activation's backward in one
// pass). Both builds export the same symbols; cpu_gemm.py registers them under the ISA's names.
//
// Weight gradients (A and B both K-major, K long, small output) take a streaming variant that
// packs one K chunk at a time into L2 (GemmKMajorStream).
//
// Layout (Gemm). B is packed once per call into VNNI tiles: tile (nt, kb) holds k = kb*32 .. +32
// and n = nt*16 .. +16 as 16 rows (k pairs) x 16 columns x 2 bf16, zero padded. A is read in
// place with a row stride when it is row-major with K % 32 == 0, else packed into 16 x 32
// tiles. GemmKMajorStream packs both, the same tiles, one K chunk at a time. The layout is the
// AMX tile layout, and it is also what VDPBF16PS wants: a B tile row is one zmm register of 16
// column pairs, and an A row's k pair is one 32-bit broadcast.
// The micro-kernel (Block) computes a 32 x 32 block of `out`: with AMX in four accumulator tiles
// (tiles 0-3), two A tiles (4, 5) and two B tiles (6, 7); with AVX512-BF16 in groups of 8 rows
// (16 zmm accumulators, two B registers, one A broadcast).
//
// Threads: work is split into items pulled from an atomic counter by the calling thread and
// by helpers scheduled on XLA's intra-op thread pool. The caller never waits for an item no one
// has started, so this cannot deadlock however busy the pool is.

#ifndef TRM_GEMM_AMX
#error "build with -DTRM_GEMM_AMX=1 (AMX) or -DTRM_GEMM_AMX=0 (AVX512-BF16)"
#endif

#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <type_traits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kTileElems = 16 * 32;  // one 1 KiB tile of bf16
constexpr int64_t kBlock = 32;           // rows / columns of `out` per micro-kernel call
constexpr int64_t kKChunk = 16;          // K blocks (512 k) per chunk of a long contraction

#if TRM_GEMM_AMX
struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

void ConfigureTiles() {
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof(cfg));
  cfg.palette_id = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  // Not _tile_loadconfig: GCC 12's version tells the compiler it reads only the first 8 bytes,
  // so the row and column stores above can be dropped as dead (seen when not inlined: tiles
  // left unconfigured, SIGILL on the first tile instruction). This operand is all 64 bytes.
  asm volatile("ldtilecfg %0" : : "m"(cfg));
}

// Tile state for the lifetime of a work item: configured on entry, released on exit.
struct TileScope {
  TileScope() { ConfigureTiles(); }
  ~TileScope() { _tile_release(); }
};
#else
struct TileScope {};  // AVX512-BF16 keeps no state between instructions
#endif

inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Threads a kernel may use: XLA's intra-op pool, capped by $TRM_AMX_MAX_THREADS.
int64_t MaxThreads(ffi::ThreadPool& pool) {
  static const int64_t cap = [] {
    const char* env = std::getenv("TRM_AMX_MAX_THREADS");
    return env ? std::max<int64_t>(1, std::atoll(env)) : int64_t{1} << 30;
  }();
  return std::max<int64_t>(1, std::min<int64_t>(pool.num_threads(), cap));
}

// Runs f(i) for i in [0, n) on the calling thread and up to num_threads - 1 pool helpers.
template <typename F>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, const F& f) {
  if (n <= 0) return;
  struct Shared {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto shared = std::make_shared<Shared>();
  const F* fn = &f;
  auto work = [shared, fn, n]() {
    int64_t finished = 0;
    for (int64_t i; (i = shared->next.fetch_add(1)) < n;) {
      (*fn)(i);
      ++finished;
    }
    if (finished > 0) {
      shared->done.fetch_add(finished);
      shared->done.notify_all();
    }
  };
  const int64_t helpers = std::min(MaxThreads(pool), n) - 1;
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule([work]() { work(); });
  int64_t finished = 0;
  for (int64_t i; (i = shared->next.fetch_add(1)) < n;) {
    f(i);
    ++finished;
  }
  // Every index is claimed; wait (asleep, not spinning: cores are few and XLA may run other
  // thunks beside this one) only for items other threads are running right now.
  int64_t seen = shared->done.fetch_add(finished) + finished;
  while (seen < n) {
    shared->done.wait(seen);
    seen = shared->done.load();
  }
}

struct Problem {
  const uint16_t* a;
  const uint16_t* b;
  int64_t M, N, K;
  bool trans_a, trans_b;
  int64_t KB;  // K blocks of 32
  int64_t Np;  // N padded to 32

  uint16_t B(int64_t k, int64_t n) const {
    if (k >= K || n >= N) return 0;
    return trans_b ? b[n * K + k] : b[k * N + n];
  }
};

// Bit mask of the first `n` of 32 lanes (n clamped to [0, 32]).
inline uint32_t FirstLanes(int64_t n) {
  return n <= 0 ? 0u : n >= 32 ? ~0u : (1u << n) - 1u;
}

// 16 bf16 of row `k` (columns [c0, c0 + 16) masked to those < `cols`), widened to 32-bit
// lanes; zero when k >= K.
inline __m512i LoadRow16(const uint16_t* base, int64_t stride, int64_t k, int64_t K,
                         int64_t c0, int64_t cols) {
  if (k >= K) return _mm512_setzero_si512();
  const __mmask16 mask = static_cast<__mmask16>(FirstLanes(cols - c0));
  return _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, base + k * stride + c0));
}

// VNNI pairs of rows k0 + 2j and k0 + 2j + 1 (j = 0 .. 15) of a K-major operand (row stride
// `stride`, `cols` valid columns), columns c0 .. c0 + 16: lane c of e[j] holds the pair for
// column c0 + c, row k0 + 2j in the low half.
inline void LoadPairs(const uint16_t* base, int64_t stride, int64_t K, int64_t k0, int64_t c0,
                      int64_t cols, __m512i e[16]) {
  for (int64_t j = 0; j < 16; ++j) {
    const __m512i lo = LoadRow16(base, stride, k0 + 2 * j, K, c0, cols);
    const __m512i hi = LoadRow16(base, stride, k0 + 2 * j + 1, K, c0, cols);
    e[j] = _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16));
  }
}

// In-place transpose of a 16 x 16 matrix of 32-bit lanes (row i = r[i]): swap the off-diagonal
// blocks of size 8, then of size 4, 2 and 1 inside every block.
// Permutation indices per block size b = 8, 4, 2, 1 (VPERMT2D: 0-15 first operand, 16-31
// second). kKeep: row i keeps its own lanes with (j & b) == 0 and takes row i+b's lanes j - b;
// kTake: row i+b takes row i's lanes j + b, then keeps its own.
struct TransposeIndices {
  alignas(64) int32_t keep[4][16], take[4][16];
  constexpr TransposeIndices() : keep{}, take{} {
    for (int s = 0, b = 8; s < 4; ++s, b /= 2)
      for (int j = 0; j < 16; ++j) {
        keep[s][j] = (j & b) ? 16 + j - b : j;
        take[s][j] = (j & b) ? 16 + j : j + b;
      }
  }
};
constexpr TransposeIndices kTransposeIndices;

inline void Transpose16x16(__m512i r[16]) {
  for (int s = 0, b = 8; s < 4; ++s, b /= 2) {
    const __m512i ik = _mm512_load_si512(kTransposeIndices.keep[s]);
    const __m512i it = _mm512_load_si512(kTransposeIndices.take[s]);
    for (int i = 0; i < 16; ++i) {
      if (i & b) continue;
      const __m512i lo = r[i], hi = r[i + b];
      r[i] = _mm512_permutex2var_epi32(lo, ik, hi);
      r[i + b] = _mm512_permutex2var_epi32(lo, it, hi);
    }
  }
}

// Where packed tiles go: tile (t, kb) of a packing call at out + ((t - t_lo) * per_tile +
// (kb - kb_lo) * per_kb) tiles.
struct TileLayout {
  uint16_t* out;
  int64_t per_tile, per_kb;
  uint16_t* at(int64_t t, int64_t kb) const { return out + (t * per_tile + kb * per_kb) * kTileElems; }
};

// Packs the VNNI B tiles of column tiles [nt_lo, nt_hi) (16 columns each) and K blocks
// [kb_lo, kb_hi). A row-major B is read two whole rows (a k pair) at a time across all the
// column tiles, which keeps the reads sequential.
void PackBColumnTiles(const Problem& p, int64_t nt_lo, int64_t nt_hi, int64_t kb_lo,
                      int64_t kb_hi, const TileLayout& out) {
  for (int64_t kb = kb_lo; kb < kb_hi; ++kb) {
    const int64_t k0 = kb * 32;
    if (!p.trans_b) {  // B(k, n) = b[k*N + n]: interleave row pairs (masked at the edges)
      for (int64_t r = 0; r < 16; ++r)
        for (int64_t nt = nt_lo; nt < nt_hi; ++nt) {
          const __m512i lo = LoadRow16(p.b, p.N, k0 + 2 * r, p.K, nt * 16, p.N);
          const __m512i hi = LoadRow16(p.b, p.N, k0 + 2 * r + 1, p.K, nt * 16, p.N);
          _mm512_storeu_si512(out.at(nt - nt_lo, kb - kb_lo) + r * 32,
                              _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
        }
      continue;
    }
    for (int64_t nt = nt_lo; nt < nt_hi; ++nt) {
      const int64_t n0 = nt * 16;
      uint16_t* tile = out.at(nt - nt_lo, kb - kb_lo);
      if (k0 + 32 <= p.K && n0 + 16 <= p.N) {  // B(k, n) = b[n*K + k]: pairs adjacent
        uint32_t* t32 = reinterpret_cast<uint32_t*>(tile);
        for (int64_t j = 0; j < 16; ++j) {
          const uint16_t* src = p.b + (n0 + j) * p.K + k0;
          for (int64_t r = 0; r < 16; ++r) {
            uint32_t v;
            std::memcpy(&v, src + 2 * r, 4);
            t32[r * 16 + j] = v;
          }
        }
      } else {
        for (int64_t r = 0; r < 16; ++r)
          for (int64_t j = 0; j < 16; ++j) {
            tile[r * 32 + 2 * j] = p.B(k0 + 2 * r, n0 + j);
            tile[r * 32 + 2 * j + 1] = p.B(k0 + 2 * r + 1, n0 + j);
          }
      }
    }
  }
}

// Packs row tiles [t_lo, t_hi) of A (rows 16t .. 16t+16) and K blocks [kb_lo, kb_hi) into
// 16 x 32 tiles; K blocks outermost (a transposed A shares cache lines between neighbouring
// row tiles).
void PackARowTiles(const Problem& p, int64_t t_lo, int64_t t_hi, int64_t kb_lo, int64_t kb_hi,
                   const TileLayout& out) {
  for (int64_t kb = kb_lo; kb < kb_hi; ++kb) {
    for (int64_t t = t_lo; t < t_hi; ++t) {
      const int64_t m0 = t * 16;
      uint16_t* tile = out.at(t - t_lo, kb - kb_lo);
      const int64_t k0 = kb * 32;
      if (!p.trans_a) {  // rows of A are contiguous in k: copy (masked past K, zero past M)
        const __mmask32 mask = FirstLanes(p.K - k0);
        for (int64_t r = 0; r < 16; ++r) {
          const __m512i row = m0 + r < p.M
              ? _mm512_maskz_loadu_epi16(mask, p.a + (m0 + r) * p.K + k0)
              : _mm512_setzero_si512();
          _mm512_storeu_si512(tile + r * 32, row);
        }
      } else {  // A(m, k) = a[k*M + m]: VNNI pairs of k rows, then a 16 x 16 transpose
        __m512i e[16];
        LoadPairs(p.a, p.M, p.K, k0, m0, p.M, e);
        Transpose16x16(e);
        for (int64_t r = 0; r < 16; ++r) _mm512_storeu_si512(tile + r * 32, e[r]);
      }
    }
  }
}

// ---- epilogues: what happens to a finished 32 x 32 fp32 block `c` (row stride 32) ----

inline __m256i Bf16Bits(__m512 v) {  // 16 fp32 -> 16 bf16 (round to nearest even)
  return (__m256i)_mm512_cvtneps_pbh(v);
}
inline __m512 Bf16ToFloat(__m256i bits) {  // 16 bf16 -> 16 fp32 (exact)
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}
inline __m512 RoundThroughBf16(__m512 v) {  // the fp32 value of bf16(v)
  return Bf16ToFloat(Bf16Bits(v));
}
inline __m256i LoadBf16Bits(const uint16_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
inline __m512 LoadBf16(const uint16_t* p) { return Bf16ToFloat(LoadBf16Bits(p)); }
inline void StoreBf16Bits(uint16_t* p, __m256i bits) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), bits);
}
inline void StoreBf16(uint16_t* p, __m512 v) { StoreBf16Bits(p, Bf16Bits(v)); }

// SiLU by table. The activation sees g only after g is rounded to bf16, so silu(g) and its
// derivative take one of 65,536 values each: they are computed once, in double precision, and
// looked up with a gather (on 2 Sapphire Rapids cores the lookup runs the SwiGLU epilogue 2.3x
// faster than an AVX-512 exp and divide; BUILD_NOTES.md, "CPU speed"). Each value is rounded
// as a correctly rounded fp32 computation would be: to fp32, then (act) to bf16 as PyTorch's
// bf16 F.silu does (subnormal fp32 values flushed, as below). Specials follow x / (1 + exp(-x)):
// silu(-inf) and the derivative at +-inf are NaN, as in PyTorch.
struct SiluTables {
  // act[i] = bf16(silu(g)) for the bf16 g with bits i; two spare entries so that a 4-byte
  // gather at byte 2i (which puts entry i in the low half) stays inside the array.
  uint16_t act[65536 + 2];
  float dsilu[65536];  // d silu / dg = s (1 + g (1 - s)), s = sigmoid(g), rounded to fp32
};

// XLA:CPU runs with FTZ/DAZ set, so the fp32 arithmetic these tables replace flushed
// subnormal results to zero; flushing explicitly keeps the tables the same on any thread.
inline float FlushSubnormal(float v) {
  return std::fabs(v) < std::numeric_limits<float>::min() ? std::copysign(0.0f, v) : v;
}

const SiluTables& Silu() {
  static const std::unique_ptr<SiluTables> tables = [] {
    auto t = std::make_unique<SiluTables>();
    alignas(64) float act[16];
    for (int64_t i = 0; i < 65536; i += 16) {
      for (int64_t j = 0; j < 16; ++j) {
        const uint32_t bits = static_cast<uint32_t>(i + j) << 16;
        float gf;
        std::memcpy(&gf, &bits, 4);
        const double g = gf, sig = 1.0 / (1.0 + std::exp(-g));
        act[j] = FlushSubnormal(static_cast<float>(g * sig));
        t->dsilu[i + j] = FlushSubnormal(static_cast<float>(sig * (1.0 + g * (1.0 - sig))));
      }
      StoreBf16(t->act + i, _mm512_load_ps(act));
    }
    t->act[65536] = t->act[65537] = 0;
    return t;
  }();
  return *tables;
}

inline __m512 SiluAct(const SiluTables& t, __m512i g_bits) {  // fp32 of bf16(silu(g))
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_i32gather_epi32(g_bits, t.act, 2), 16));
}
inline __m512 SiluGrad(const SiluTables& t, __m512i g_bits) {
  return _mm512_i32gather_ps(g_bits, t.dsilu, 4);
}

// Plain GEMM: step s covers output columns 32s .. 32s+32 (B column tiles 2s, 2s+1).
template <typename Out>
struct StorePlain {
  Out* out;
  int64_t M, N;
  int64_t Steps(const Problem& p) const { return p.Np / kBlock; }
  int64_t Tile0(int64_t s) const { return 2 * s; }
  int64_t Tile1(int64_t s) const { return 2 * s + 1; }
  void operator()(const float* c, int64_t m0, int64_t s) const {
    const int64_t rows = std::min<int64_t>(kBlock, M - m0), n0 = s * kBlock;
    const int64_t cols = std::min<int64_t>(kBlock, N - n0);
    Out* dst = out + m0 * N + n0;
    for (int64_t r = 0; r < rows; ++r) {
      const float* src = c + r * kBlock;
      if constexpr (std::is_same_v<Out, float>) {
        std::memcpy(dst + r * N, src, cols * 4);
      } else if (cols == kBlock) {
        StoreBf16(dst + r * N, _mm512_loadu_ps(src));
        StoreBf16(dst + r * N + 16, _mm512_loadu_ps(src + 16));
      } else {
        alignas(64) uint16_t tmp[kBlock];
        StoreBf16(tmp, _mm512_loadu_ps(src));
        StoreBf16(tmp + 16, _mm512_loadu_ps(src + 16));
        std::memcpy(dst + r * N, tmp, cols * 2);
      }
    }
  }
};

// SwiGLU: B = [W_gate | W_up] ([K, 2I]); step s pairs gate columns 16s .. 16s+16 (tile s)
// with the matching up columns (tile s + I/16), so c holds gate in columns 0-15 and up in
// 16-31. Writes h = silu(g) * u, rounding to bf16 where PyTorch's bf16 layer does (g, u,
// silu(g), the product), and, when `gu` is set, g and u themselves (the backward's residual).
struct StoreSwiGLU {
  uint16_t* h;
  uint16_t* gu;  // may be null
  int64_t M, I;
  int64_t Steps(const Problem&) const { return I / 16; }
  int64_t Tile0(int64_t s) const { return s; }
  int64_t Tile1(int64_t s) const { return s + I / 16; }
  void operator()(const float* c, int64_t m0, int64_t s) const {
    const int64_t rows = std::min<int64_t>(kBlock, M - m0);
    const SiluTables& silu = Silu();
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t m = m0 + r;
      // g and u are used only as bf16: rounded once, then indexed, widened and stored as bits.
      const __m256i g_bits = Bf16Bits(_mm512_loadu_ps(c + r * kBlock));
      const __m256i u_bits = Bf16Bits(_mm512_loadu_ps(c + r * kBlock + 16));
      __m512 act = SiluAct(silu, _mm512_cvtepu16_epi32(g_bits));
      StoreBf16(h + m * I + 16 * s, _mm512_mul_ps(act, Bf16ToFloat(u_bits)));
      if (gu != nullptr) {
        StoreBf16Bits(gu + m * 2 * I + 16 * s, g_bits);
        StoreBf16Bits(gu + m * 2 * I + I + 16 * s, u_bits);
      }
    }
  }
};

// Per-thread scratch that grows and is kept between calls: a fresh buffer per call would pay
// for zero-filling and first-touch page faults (tens of MiB for weight-gradient GEMMs).
// 64-byte aligned, so that each 64-byte tile row is one cache line: malloc aligns to 16 only,
// and tile loads whose rows straddle two lines made whole GEMMs ~30% slower in any process that
// drew such an address (3 in 4 on average; BUILD_NOTES.md, "CPU speed").
template <typename T, int kSlot>
T* Scratch(size_t n) {
  constexpr size_t kPad = 64 / sizeof(T);
  thread_local std::vector<T> buffer;
  if (buffer.size() < n + kPad) buffer.resize(n + kPad);
  const uintptr_t address = reinterpret_cast<uintptr_t>(buffer.data());
  return reinterpret_cast<T*>((address + 63) & ~uintptr_t{63});
}

// The micro-kernel: one 32 x 32 fp32 block (row stride 32) `dst` = `init` (zero if null) +
// the sum over `nkb` K blocks of A (upper / lower 16 rows from a0 / a1: row stride `a_stride`
// bytes, `a_step` elements between K blocks) times B (packed tiles b0 / b1, `b_step` elements
// between K blocks). Accumulators in tiles 0-3, A in 4-5, B in 6-7.
#if TRM_GEMM_AMX
inline void Block(const uint16_t* a0, const uint16_t* a1, int64_t a_stride, int64_t a_step,
                  const uint16_t* b0, const uint16_t* b1, int64_t b_step, int64_t nkb,
                  const float* init, float* dst) {
  if (init == nullptr) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  } else {
    _tile_loadd(0, init, kBlock * 4);
    _tile_loadd(1, init + 16, kBlock * 4);
    _tile_loadd(2, init + 16 * kBlock, kBlock * 4);
    _tile_loadd(3, init + 16 * kBlock + 16, kBlock * 4);
  }
  for (int64_t kb = 0; kb < nkb; ++kb) {
    _tile_loadd(4, a0 + kb * a_step, a_stride);
    _tile_loadd(5, a1 + kb * a_step, a_stride);
    _tile_loadd(6, b0 + kb * b_step, 64);
    _tile_loadd(7, b1 + kb * b_step, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, dst, kBlock * 4);
  _tile_stored(1, dst + 16, kBlock * 4);
  _tile_stored(2, dst + 16 * kBlock, kBlock * 4);
  _tile_stored(3, dst + 16 * kBlock + 16, kBlock * 4);
}
#else
// Rows [r0, r0 + 8) of the block over `nkb` K blocks: 16 zmm accumulators (8 rows x 32
// columns) start from `from` (zero if null), stay in registers for the whole contraction and are
// stored to `dst` once. Per k pair: two B rows (one per column tile) and one 32-bit broadcast
// of the row's pair of A, 16 VDPBF16PS.
inline void Rows8(const char* a, int64_t a_step_bytes, const uint16_t* b0, const uint16_t* b1,
                  int64_t b_step, int64_t nkb, const float* from, float* dst) {
  constexpr int64_t a_stride = 64;  // packed A tiles: one 64-byte row per row of A
  __m512 c[8][2];
  for (int r = 0; r < 8; ++r) {
    c[r][0] = from == nullptr ? _mm512_setzero_ps() : _mm512_load_ps(from + r * kBlock);
    c[r][1] = from == nullptr ? _mm512_setzero_ps() : _mm512_load_ps(from + r * kBlock + 16);
  }
  for (int64_t kb = 0; kb < nkb; ++kb) {
    const char* ak = a + kb * a_step_bytes;
    const uint16_t* bk0 = b0 + kb * b_step;
    const uint16_t* bk1 = b1 + kb * b_step;
    for (int j = 0; j < 16; ++j) {
      const __m512bh w0 = (__m512bh)_mm512_load_si512(bk0 + j * 32);
      const __m512bh w1 = (__m512bh)_mm512_load_si512(bk1 + j * 32);
      for (int r = 0; r < 8; ++r) {
        int32_t pair;
        std::memcpy(&pair, ak + r * a_stride + j * 4, 4);
        const __m512bh x = (__m512bh)_mm512_set1_epi32(pair);
        c[r][0] = _mm512_dpbf16_ps(c[r][0], x, w0);
        c[r][1] = _mm512_dpbf16_ps(c[r][1], x, w1);
      }
    }
  }
  for (int r = 0; r < 8; ++r) {
    _mm512_store_ps(dst + r * kBlock, c[r][0]);
    _mm512_store_ps(dst + r * kBlock + 16, c[r][1]);
  }
}

// Same contract as the AMX Block, as four groups of 8 rows; each group streams the block's B
// tiles (2 KiB per K block) from L1/L2 and keeps its sums in registers.
inline void Block(const uint16_t* a0, const uint16_t* a1, int64_t a_stride, int64_t a_step,
                  const uint16_t* b0, const uint16_t* b1, int64_t b_step, int64_t nkb,
                  const float* init, float* dst) {
  (void)a_stride;  // always 64: A is packed into tiles for this build (see Gemm)
  for (int g = 0; g < 4; ++g) {
    const char* rows = reinterpret_cast<const char*>(g < 2 ? a0 : a1) + (g % 2) * 8 * 64;
    const int64_t off = g * 8 * kBlock;
    Rows8(rows, a_step * 2, b0, b1, b_step, nkb, init == nullptr ? nullptr : init + off,
          dst + off);
  }
}
#endif

// Weight-gradient shape: A given as [K, M] and B as [K, N] (both K-major), K long, out small.
// Packing all of both first (as Gemm does) writes and re-reads them through memory, and that
// traffic, not the multiply, set the pace. Here each thread owns a slice of `out` (rows or
// columns, whichever has more blocks), keeps its fp32 sums in cache and, K chunk by K chunk,
// packs just the operand tiles its slice needs into L2-sized buffers and multiplies at once.
template <typename Epilogue>
void GemmKMajorStream(ffi::ThreadPool& pool, const Problem& p, const Epilogue& epilogue) {
  const int64_t MB = CeilDiv(p.M, kBlock), steps = epilogue.Steps(p);
  const int64_t threads = MaxThreads(pool);
  const int64_t split_m = MB >= steps ? std::min(threads, MB) : 1;
  const int64_t split_n = MB >= steps ? 1 : std::min(threads, steps);
  ParallelFor(pool, split_m * split_n, [&](int64_t item) {
    const int64_t im = item / split_n, in = item % split_n;
    const int64_t mb_lo = MB * im / split_m, mb_hi = MB * (im + 1) / split_m;
    const int64_t s_lo = steps * in / split_n, s_hi = steps * (in + 1) / split_n;
    const int64_t a_tiles = 2 * (mb_hi - mb_lo), b_tiles = 2 * (s_hi - s_lo);
    uint16_t* ap = Scratch<uint16_t, 3>(a_tiles * kKChunk * kTileElems);
    uint16_t* bp = Scratch<uint16_t, 4>(b_tiles * kKChunk * kTileElems);
    float* acc = Scratch<float, 5>((mb_hi - mb_lo) * (s_hi - s_lo) * kBlock * kBlock);
    alignas(64) float c[kBlock * kBlock];
    [[maybe_unused]] TileScope tiles;
    for (int64_t kb0 = 0; kb0 < p.KB; kb0 += kKChunk) {
      const int64_t kb1 = std::min(p.KB, kb0 + kKChunk), nkb = kb1 - kb0;
      const bool first = kb0 == 0, last = kb1 == p.KB;
      // K-block-major tiles: the tiles one K block writes are adjacent, not a power-of-two
      // stride apart (which would pile them into one L1 set).
      const TileLayout a_out{ap, 1, a_tiles}, b_out{bp, 1, b_tiles};
      PackARowTiles(p, 2 * mb_lo, 2 * mb_hi, kb0, kb1, a_out);
      PackBColumnTiles(p, 2 * s_lo, 2 * s_hi, kb0, kb1, b_out);
      for (int64_t mb = mb_lo; mb < mb_hi; ++mb) {
        const uint16_t* a0 = a_out.at(2 * (mb - mb_lo), 0);
        for (int64_t s = s_lo; s < s_hi; ++s) {
          const uint16_t* b0 = b_out.at(epilogue.Tile0(s) - 2 * s_lo, 0);
          const uint16_t* b1 = b_out.at(epilogue.Tile1(s) - 2 * s_lo, 0);
          float* part = acc + ((mb - mb_lo) * (s_hi - s_lo) + (s - s_lo)) * kBlock * kBlock;
          Block(a0, a0 + kTileElems, 64, a_tiles * kTileElems, b0, b1, b_tiles * kTileElems, nkb,
                first ? nullptr : part, last ? c : part);
          if (last) epilogue(c, mb * kBlock, s);
        }
      }
    }
  });
}

// Whether GemmKMajorStream suits `p`: both operands K-major, K long, and each thread's fp32
// slice of `out` small enough to stay in cache.
bool StreamsK(const Problem& p, int64_t threads) {
  const int64_t blocks = CeilDiv(p.M, kBlock) * (p.Np / kBlock);
  return p.trans_a && !p.trans_b && p.KB > 4 * kKChunk &&
         blocks * kBlock * kBlock * 4 <= threads * (512 << 10);
}

template <typename Epilogue>
void Gemm(ffi::ThreadPool& pool, const Problem& p, const Epilogue& epilogue) {
  const int64_t NT = p.Np / 16;
  uint16_t* bp = Scratch<uint16_t, 0>(NT * p.KB * kTileElems);
  constexpr int64_t kPackChunk = 4;  // row / column tiles per packing item: 128 B of a row
  ParallelFor(pool, CeilDiv(NT, kPackChunk), [&](int64_t i) {
    const int64_t lo = i * kPackChunk;
    PackBColumnTiles(p, lo, std::min(NT, lo + kPackChunk), 0, p.KB,
                     TileLayout{bp + lo * p.KB * kTileElems, p.KB, 1});
  });

  // A in place (row stride K) for whole 32-row blocks of a row-major A with K % 32 == 0;
  // otherwise (and for the last partial block) from packed tiles.
  const bool direct = TRM_GEMM_AMX && !p.trans_a && p.K % 32 == 0;
  const int64_t MB = CeilDiv(p.M, kBlock);
  const int64_t first_packed = direct ? p.M / kBlock : 0;  // blocks before it are read in place
  uint16_t* ap = Scratch<uint16_t, 1>((MB - first_packed) * 2 * p.KB * kTileElems);
  const int64_t a_tiles = (MB - first_packed) * 2;
  ParallelFor(pool, CeilDiv(a_tiles, kPackChunk), [&](int64_t i) {
    const int64_t lo = i * kPackChunk, hi = std::min(a_tiles, lo + kPackChunk);
    PackARowTiles(p, first_packed * 2 + lo, first_packed * 2 + hi, 0, p.KB,
                  TileLayout{ap + lo * p.KB * kTileElems, p.KB, 1});
  });

  // Items: column-step chunks (a B panel of about 256 KiB, kept in L2) x row chunks. A long
  // contraction (weight gradients: K = batch x positions) is cut into chunks of kKChunk blocks
  // so that each chunk's A rows and B panel stay in L2; partial sums then live in `acc`.
  const int64_t kc = p.KB > 4 * kKChunk ? kKChunk : p.KB;
  const int64_t steps = epilogue.Steps(p);
  const int64_t step_bytes = 2 * kc * 1024;  // two B column tiles
  const int64_t panel = std::clamp<int64_t>((256 * 1024) / step_bytes, 1, steps);
  const int64_t row_blocks = std::max<int64_t>(1, (256 * 1024) / (kc * 64 * kBlock));
  const int64_t NC = CeilDiv(steps, panel), RC = CeilDiv(MB, row_blocks);
  ParallelFor(pool, NC * RC, [&](int64_t item) {
    const int64_t nc = item / RC, rc = item % RC;
    const int64_t mb_lo = rc * row_blocks, mb_hi = std::min(MB, (rc + 1) * row_blocks);
    const int64_t s_lo = nc * panel, s_hi = std::min(steps, (nc + 1) * panel);
    float* acc = kc < p.KB ? Scratch<float, 2>((mb_hi - mb_lo) * (s_hi - s_lo) * kBlock * kBlock)
                           : nullptr;
    alignas(64) float c[kBlock * kBlock];
    [[maybe_unused]] TileScope tiles;
    for (int64_t kb0 = 0; kb0 < p.KB; kb0 += kc) {
      const int64_t kb1 = std::min(p.KB, kb0 + kc);
      const bool first = kb0 == 0, last = kb1 == p.KB;
      for (int64_t mb = mb_lo; mb < mb_hi; ++mb) {
        const uint16_t *a0, *a1;
        int64_t a_stride, a_step;  // bytes between rows; elements between K blocks
        if (mb < first_packed) {
          a0 = p.a + mb * kBlock * p.K;
          a1 = a0 + 16 * p.K;
          a_stride = p.K * 2;
          a_step = 32;
        } else {
          a0 = ap + (mb - first_packed) * 2 * p.KB * kTileElems;
          a1 = a0 + p.KB * kTileElems;
          a_stride = 64;
          a_step = kTileElems;
        }
        for (int64_t s = s_lo; s < s_hi; ++s) {
          const uint16_t* b0 = bp + epilogue.Tile0(s) * p.KB * kTileElems;
          const uint16_t* b1 = bp + epilogue.Tile1(s) * p.KB * kTileElems;
          float* part = acc == nullptr ? nullptr
              : acc + ((mb - mb_lo) * (s_hi - s_lo) + (s - s_lo)) * kBlock * kBlock;
          Block(a0 + kb0 * a_step, a1 + kb0 * a_step, a_stride, a_step, b0 + kb0 * kTileElems,
                b1 + kb0 * kTileElems, kTileElems, kb1 - kb0, first ? nullptr : part,
                last ? c : part);
          if (last) epilogue(c, mb * kBlock, s);
        }
      }
    }
  });
}

// Fills `p` from rank-2 operands (A [M, K] or [K, M] if trans_a; B [K, N] or [N, K]).
std::optional<ffi::Error> MakeProblem(const ffi::Buffer<ffi::BF16>& a,
                                      const ffi::Buffer<ffi::BF16>& b, bool trans_a,
                                      bool trans_b, Problem& p) {
  auto ad = a.dimensions(), bd = b.dimensions();
  if (ad.size() != 2 || bd.size() != 2)
    return ffi::Error::InvalidArgument("trm_cpu_gemm: operands must be rank 2");
  p.a = static_cast<const uint16_t*>(a.untyped_data());
  p.b = static_cast<const uint16_t*>(b.untyped_data());
  p.trans_a = trans_a;
  p.trans_b = trans_b;
  p.M = trans_a ? ad[1] : ad[0];
  p.K = trans_a ? ad[0] : ad[1];
  p.N = trans_b ? bd[0] : bd[1];
  if ((trans_b ? bd[1] : bd[0]) != p.K)
    return ffi::Error::InvalidArgument("trm_cpu_gemm: contraction sizes differ");
  p.KB = CeilDiv(p.K, 32);
  p.Np = CeilDiv(p.N, kBlock) * kBlock;
  return std::nullopt;
}

template <typename Out>
void PlainGemm(ffi::ThreadPool& pool, const Problem& p, const StorePlain<Out>& store) {
  if (StreamsK(p, MaxThreads(pool)))
    GemmKMajorStream(pool, p, store);
  else
    Gemm(pool, p, store);
}

ffi::Error MatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::BF16> a, ffi::Buffer<ffi::BF16> b,
                      ffi::Result<ffi::AnyBuffer> out, bool trans_a, bool trans_b) {
  Problem p;
  if (auto err = MakeProblem(a, b, trans_a, trans_b, p)) return *err;
  auto od = out->dimensions();
  if (od.size() != 2 || od[0] != p.M || od[1] != p.N)
    return ffi::Error::InvalidArgument("trm_cpu_gemm matmul: output shape is not [M, N]");
  if (p.M == 0 || p.N == 0) return ffi::Error::Success();
  void* data = out->untyped_data();
  if (p.K == 0) {  // an empty sum (e.g. the weight gradient of an empty batch)
    std::memset(data, 0, out->size_bytes());
    return ffi::Error::Success();
  }
  switch (out->element_type()) {
    case ffi::DataType::BF16:
      PlainGemm(pool, p, StorePlain<uint16_t>{static_cast<uint16_t*>(data), p.M, p.N});
      return ffi::Error::Success();
    case ffi::DataType::F32:
      PlainGemm(pool, p, StorePlain<float>{static_cast<float*>(data), p.M, p.N});
      return ffi::Error::Success();
    default:
      return ffi::Error::InvalidArgument("trm_cpu_gemm matmul: output must be bf16 or f32");
  }
}

// h = silu(x @ Wg) * (x @ Wu) for w = [Wg | Wu] ([K, 2I]); gu = x @ w when with_gu.
ffi::Error SwiGLUImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::BF16> x, ffi::Buffer<ffi::BF16> w,
                      ffi::Result<ffi::Buffer<ffi::BF16>> h,
                      ffi::Result<ffi::Buffer<ffi::BF16>> gu, bool with_gu) {
  Problem p;
  if (auto err = MakeProblem(x, w, false, false, p)) return *err;
  const int64_t I = p.N / 2;
  if (p.N % 32 != 0)
    return ffi::Error::InvalidArgument("trm_cpu_gemm swiglu: 2I must be a multiple of 32");
  auto hd = h->dimensions(), gd = gu->dimensions();
  if (hd.size() != 2 || hd[0] != p.M || hd[1] != I)
    return ffi::Error::InvalidArgument("trm_cpu_gemm swiglu: h must be [M, I]");
  if (with_gu && (gd.size() != 2 || gd[0] != p.M || gd[1] != 2 * I))
    return ffi::Error::InvalidArgument("trm_cpu_gemm swiglu: gu must be [M, 2I]");
  if (p.M == 0) return ffi::Error::Success();
  if (p.K == 0) {  // g = u = 0, so h = silu(0) * 0 = 0
    std::memset(h->untyped_data(), 0, h->size_bytes());
    if (with_gu) std::memset(gu->untyped_data(), 0, gu->size_bytes());
    return ffi::Error::Success();
  }
  Gemm(pool, p, StoreSwiGLU{static_cast<uint16_t*>(h->untyped_data()),
                            with_gu ? static_cast<uint16_t*>(gu->untyped_data()) : nullptr, p.M, I});
  return ffi::Error::Success();
}

// Backward of h = silu(g) * u with PyTorch's bf16 autograd roundings:
// d_gu = [bf16(dh * u) * silu'(g) | dh * bf16(silu(g))], silu'(g) = s (1 + g (1 - s)),
// s = sigmoid(g), each product in fp32 and rounded once.
ffi::Error SwiGLUBwdImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::BF16> dh,
                         ffi::Buffer<ffi::BF16> gu, ffi::Result<ffi::Buffer<ffi::BF16>> dgu) {
  auto d = dh.dimensions(), gd = gu.dimensions(), od = dgu->dimensions();
  if (d.size() != 2 || gd.size() != 2 || od.size() != 2 || d[1] % 16 != 0 ||
      gd[0] != d[0] || gd[1] != 2 * d[1] || od[0] != d[0] || od[1] != 2 * d[1])
    return ffi::Error::InvalidArgument(
        "trm_cpu_gemm swiglu_bwd: want dh [M, I], gu and d_gu [M, 2I], I % 16 == 0");
  const int64_t M = d[0], I = d[1];
  if (M == 0 || I == 0) return ffi::Error::Success();
  const uint16_t* pdh = static_cast<const uint16_t*>(dh.untyped_data());
  const uint16_t* pgu = static_cast<const uint16_t*>(gu.untyped_data());
  uint16_t* out = static_cast<uint16_t*>(dgu->untyped_data());
  const int64_t rows_per_item = std::max<int64_t>(1, 16384 / I);
  const SiluTables& silu = Silu();
  ParallelFor(pool, CeilDiv(M, rows_per_item), [&](int64_t item) {
    for (int64_t m = item * rows_per_item; m < std::min(M, (item + 1) * rows_per_item); ++m) {
      for (int64_t j = 0; j < I; j += 16) {
        __m512 dv = LoadBf16(pdh + m * I + j);
        __m512i g_bits = _mm512_cvtepu16_epi32(LoadBf16Bits(pgu + m * 2 * I + j));
        __m512 u = LoadBf16(pgu + m * 2 * I + I + j);
        __m512 act = SiluAct(silu, g_bits);
        __m512 dact = RoundThroughBf16(_mm512_mul_ps(dv, u));
        __m512 dsilu = SiluGrad(silu, g_bits);
        StoreBf16(out + m * 2 * I + j, _mm512_mul_ps(dact, dsilu));
        StoreBf16(out + m * 2 * I + I + j, _mm512_mul_ps(dv, act));
      }
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(TrmMatmul, MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<bool>("trans_a")
                                  .Attr<bool>("trans_b"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(TrmSwiGLU, SwiGLUImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::BF16>>()
                                  .Attr<bool>("with_gu"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(TrmSwiGLUBwd, SwiGLUBwdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::BF16>>());

#if TRM_GEMM_AMX
// Asks Linux for permission to use the AMX tile data state in this process (needed once per
// process before any tile instruction). Returns 0 on success.
extern "C" __attribute__((visibility("default"))) int trm_amx_request_permission() {
  constexpr long kArchReqXcompPerm = 0x1023;
  constexpr long kXfeatureXtiledata = 18;
  return static_cast<int>(syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata));
}
#endif
