/* The native backend's C kernels (AVX-512, OpenMP): the fused one-hot embedding gather + dot
 * interaction (below), and whole small-batch MLPs in int8 (dlrm_qmlp_small), float32
 * (dlrm_fmlp_small) and bfloat16 (dlrm_bmlp_small) further down; dlrm_forward_small runs a whole
 * forward in one call (on AMX tiles, for the amx_* plans, at every batch size).
 *
 * One call does, per sample b (rows of a batch in parallel):
 *   S = [x[b]; E_0[ids[0][b]]; ...; E_{T-1}[ids[T-1][b]]]            (T+1) x D, in L1
 *   out[b] = [x[b], dot(S_i, S_j) for i in 1..T, j in 0..i-1]          D + T(T+1)/2 values
 * i.e. exactly DotInteraction's output (strictly-lower triangle, row by row), without the
 * [B, T+1, D] operand, the full Gram matrix and the triangle gather that the torch ops need.
 *
 * Tables: kind 0 = float32 rows of D values; kind 1 = row-wise uint8 as written by
 * torch.ops.quantized.embedding_bag_byte_prepack (D bytes, then a float32 scale and bias);
 * kind 2 = bfloat16 rows. Dot products: with dots = 1, on the rows as stored (int8: integer dots
 * on AVX512-VNNI plus a float32 correction for the scales and biases; bf16: vdpbf16ps, float32
 * sums); with dots = 0 (or a CPU without those), on rows turned into float32 in L1; with
 * dots = 2 their Gram matrix on AMX tiles; with dots = 3 (float32 rows, amx_bfloat32: its
 * matmuls run in bf16) the rows rounded to bf16 in L1 and their Gram matrix on AMX tiles, as a
 * bmm in oneDNN's fp32 math mode bf16 computes it.
 * Output (out_kind): 0 float32; 1 uint8 quantized with one scale / zero point, which is what the
 * int8 top MLP's first layer reads (saves a float pass over the output); 2 bfloat16 (rounded to
 * nearest even), what a bf16 top MLP reads.
 *
 * Built by dlrm_bench/backends/fused.py (gcc with fused.CFLAGS: -O3, AVX-512 F/BW/VL/DQ, -fopenmp)
 * and linked against the OpenMP runtime torch already loaded, so the parallel loop uses the same
 * threads as torch's own ops. Loaded through ctypes, which releases the GIL during the call.
 */
#include <cpuid.h>
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_ROWS 64   /* T + 1 */
#define MAX_DIM 512
#define PREFETCH_AHEAD 2 /* samples: DRAM latency of random rows hides behind 2 samples' work */
#define VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#define BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define AMX __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512bf16,amx-tile,amx-int8,amx-bf16")))

int dlrm_kernel_abi(void) { return 12; }

static inline void dequantize_row(const uint8_t *row, int64_t dim, float *dst) {
    float scale, bias;
    memcpy(&scale, row + dim, 4);
    memcpy(&bias, row + dim + 4, 4);
    const __m512 vs = _mm512_set1_ps(scale), vb = _mm512_set1_ps(bias);
    for (int64_t d = 0; d < dim; d += 16) {
        __m128i q = _mm_loadu_si128((const __m128i *)(row + d));
        __m512 v = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(q));
        _mm512_storeu_ps(dst + d, _mm512_fmadd_ps(v, vs, vb));
    }
}

static inline void widen_bf16_row(const uint16_t *row, int64_t dim, float *dst) {
    for (int64_t d = 0; d < dim; d += 16) {
        __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(row + d)));
        _mm512_storeu_ps(dst + d, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
    }
}

/* float32 -> bfloat16, round to nearest even (the values are finite: sums of finite products) */
static inline void narrow_to_bf16(const float *src, int64_t n, uint16_t *dst) {
    int64_t k = 0;
    const __m512i one = _mm512_set1_epi32(1), half = _mm512_set1_epi32(0x7FFF);
    for (; k + 16 <= n; k += 16) {
        __m512i u = _mm512_castps_si512(_mm512_loadu_ps(src + k));
        __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), one);
        u = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(half, odd)), 16);
        _mm256_storeu_si256((__m256i *)(dst + k), _mm512_cvtepi32_epi16(u));
    }
    for (; k < n; k++) {
        uint32_t u;
        memcpy(&u, src + k, 4);
        dst[k] = (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
    }
}

/* Into L2 (T1) rather than L1 (T0): the row is read once, two samples later, when L2's latency
 * is cheap next to DRAM's; T1 measured faster (batch 2048, alternating in one process: amx_int8
 * +1.5-2.2%, amx_bfloat16 +0.9%, avx_fp32 +0.4%, batch 16 alike; NTA as T1 at int8, -0.4% at
 * bf16), perhaps as the T0 lines no longer displace the sample's own L1 working set. */
static inline void prefetch_row(const char *row, int64_t bytes) {
    for (int64_t o = 0; o < bytes; o += 64) _mm_prefetch(row + o, _MM_HINT_T1);
}

/* The four horizontal sums of a0..a3, in one tree: 13 shuffles and adds instead of four
 * separate reductions (~8 each), which were about as many ops as the dot products' FMAs. */
static inline __m128 sum4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
    /* per 128-bit lane: [a0 0+2, a1 0+2, a0 1+3, a1 1+3] and the same for a2, a3 */
    const __m512 x01 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
    const __m512 x23 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
    /* per lane: [a0, a1, a2, a3] partial sums of that lane's four elements */
    const __m512 y = _mm512_add_ps(_mm512_shuffle_ps(x01, x23, 0x44),
                                   _mm512_shuffle_ps(x01, x23, 0xEE));
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(y),
                                   _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(y), 1)));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/* dots of row i with rows 0..i-1, four at a time (one load of S_i feeds four FMAs) */
static inline void dots_of_row(const float *const *rows, int64_t i, int64_t dim, float *dst) {
    const float *si = rows[i];
    int64_t j = 0;
    for (; j + 4 <= i; j += 4) {
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        __m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
        const float *s0 = rows[j], *s1 = rows[j + 1], *s2 = rows[j + 2], *s3 = rows[j + 3];
        for (int64_t d = 0; d < dim; d += 16) {
            __m512 v = _mm512_loadu_ps(si + d);
            a0 = _mm512_fmadd_ps(v, _mm512_loadu_ps(s0 + d), a0);
            a1 = _mm512_fmadd_ps(v, _mm512_loadu_ps(s1 + d), a1);
            a2 = _mm512_fmadd_ps(v, _mm512_loadu_ps(s2 + d), a2);
            a3 = _mm512_fmadd_ps(v, _mm512_loadu_ps(s3 + d), a3);
        }
        _mm_storeu_ps(dst + j, sum4(a0, a1, a2, a3));
    }
    for (; j < i; j++) {
        __m512 a = _mm512_setzero_ps();
        const float *sj = rows[j];
        for (int64_t d = 0; d < dim; d += 16)
            a = _mm512_fmadd_ps(_mm512_loadu_ps(si + d), _mm512_loadu_ps(sj + d), a);
        dst[j] = _mm512_reduce_add_ps(a);
    }
}

/* The lanes of output block n0..n0+15 that exist of n. */
static inline __mmask16 keep_of(int64_t n, int64_t n0) {
    return n - n0 >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - n0)) - 1);
}

/* sum4 on int32 lanes: the four horizontal sums of a0..a3 (the same tree) */
static inline __m128i sum4_epi32(__m512i a0, __m512i a1, __m512i a2, __m512i a3) {
    const __m512i x01 = _mm512_add_epi32(_mm512_unpacklo_epi32(a0, a1),
                                         _mm512_unpackhi_epi32(a0, a1));
    const __m512i x23 = _mm512_add_epi32(_mm512_unpacklo_epi32(a2, a3),
                                         _mm512_unpackhi_epi32(a2, a3));
    const __m512 f01 = _mm512_castsi512_ps(x01), f23 = _mm512_castsi512_ps(x23);
    const __m512i y = _mm512_add_epi32(_mm512_castps_si512(_mm512_shuffle_ps(f01, f23, 0x44)),
                                       _mm512_castps_si512(_mm512_shuffle_ps(f01, f23, 0xEE)));
    const __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(y), _mm512_extracti64x4_epi64(y, 1));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

/* Per-sample scratch of the integer and bf16 dot products (in L1 with the rows). */
typedef struct {
    uint8_t qu[MAX_ROWS * MAX_DIM] __attribute__((aligned(64)));  /* uint8 rows q */
    int8_t qs[MAX_ROWS * MAX_DIM] __attribute__((aligned(64)));   /* q' = q - 128 */
    uint16_t xb[MAX_DIM] __attribute__((aligned(64)));            /* x in bf16 */
    int32_t dots[MAX_ROWS] __attribute__((aligned(64)));
    int32_t s_sum[MAX_ROWS] __attribute__((aligned(64)));         /* S' = sum q' */
    float s_sum_f[MAX_ROWS] __attribute__((aligned(64)));
    float scale[MAX_ROWS] __attribute__((aligned(64)));
    float center[MAX_ROWS] __attribute__((aligned(64)));          /* c = bias + 128 scale */
    float xq[MAX_ROWS] __attribute__((aligned(64)));              /* sum x q' */
    int32_t s_raw[MAX_ROWS] __attribute__((aligned(64)));         /* S = sum q */
    int32_t gram[32 * 32] __attribute__((aligned(64)));           /* AMX: Q Q^T (or float) */
    uint8_t packed[2 * (MAX_DIM / 32) * 1024] __attribute__((aligned(64)));
} dot_scratch;

/* AMX for the int8 interaction's Gram matrix (amx_int8 only: the caller passes dots = 2 only for
 * the amx_* precisions, whose ISA includes AMX). Linux hands out AMX state per process on
 * request; torch's oneDNN asks too, but only once it runs an AMX kernel itself. */
#define ARCH_REQ_XCOMP_PERM 0x1023
#define AMX_CHAIN_MIN_ROWS 8
#define AMX_ROW_SPLIT_MIN_ROWS 64 /* per thread: the chains' rows split (chain_rows_amx) */
#define XFEATURE_XTILEDATA 18

/* 1 when the CPU has AMX-TILE and AMX-INT8 and Linux lets this process use them. */
int dlrm_amx_ready(void) {
    static int ready = -1;
    if (ready < 0) {
        unsigned a, b, c, d;
        ready = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 24 & 1) && (d >> 25 & 1)
                && syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
    }
    return ready;
}

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

/* tiles 0-7: 16 rows of 64 bytes (C: 16 x 16 int32 / float32; A: 16 rows x 64 bytes; B: 16 x 64
 * bytes, packed).
 * A constant in memory: gcc 12 dropped the stores that filled a local config before ldtilecfg
 * (it does not see the instruction read them), leaving every tile unconfigured. */
static const tile_config TILES __attribute__((aligned(64))) = {
    .palette = 1,
    .colsb = {64, 64, 64, 64, 64, 64, 64, 64},
    .rows = {16, 16, 16, 16, 16, 16, 16, 16},
};

static AMX void amx_configure(void) { _tile_loadconfig(&TILES); }

static AMX void amx_release(void) { _tile_release(); }

/* dst row k = the k-th int32 of src rows 0..15 (src rows src_stride bytes apart): the transposed
 * 16 x 16 block of 4-byte groups that a TDPBUUD B tile wants (VNNI layout). */
static inline void transpose16_epi32(const uint8_t *src, int64_t src_stride, uint8_t *dst) {
    __m512i r[16], t[16];
    for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_si512(src + i * src_stride);
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int i = 0; i < 16; i += 8) {
        for (int j = 0; j < 4; j++) {
            t[i + j] = _mm512_shuffle_i32x4(r[i + j], r[i + j + 4], 0x88);
            t[i + j + 4] = _mm512_shuffle_i32x4(r[i + j], r[i + j + 4], 0xdd);
        }
    }
    for (int j = 0; j < 8; j++) {
        r[j] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0x88);
        r[j + 8] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0xdd);
    }
    for (int i = 0; i < 16; i++) _mm512_store_si512(dst + i * 64, r[i]);
}

/* The Gram matrix G = R R^T of one sample's (at most 32) rows on AMX, of its lower triangle only
 * the three 16 x 16 blocks (rows 0-15 x columns 0-15, rows 16-31 x columns 0-31). R: 32 rows of
 * row_bytes (rows past the real ones zero); gram: 32 x 32 int32 (uint8 rows, TDPBUUD: exact) or
 * float32 (bf16 rows, TDPBF16PS: float32 sums). The B tiles are R's 16-row blocks transposed by
 * 4-byte groups (4 uint8 or 2 bf16 of one row: the VNNI layout). */
#define GRAM_AMX(name, dot)                                                                    \
    static AMX void name(const uint8_t *r, int64_t row_bytes, uint8_t *packed, void *gram) {   \
        const int64_t chunks = row_bytes / 64;                                                 \
        for (int64_t nb = 0; nb < 2; nb++)                                                     \
            for (int64_t kc = 0; kc < chunks; kc++)                                            \
                transpose16_epi32(r + nb * 16 * row_bytes + kc * 64, row_bytes,                \
                                  packed + (nb * chunks + kc) * 1024);                         \
        _tile_zero(0);                                                                         \
        _tile_zero(1);                                                                         \
        _tile_zero(2);                                                                         \
        for (int64_t kc = 0; kc < chunks; kc++) {                                              \
            _tile_loadd(3, r + kc * 64, row_bytes);                                            \
            _tile_loadd(4, r + 16 * row_bytes + kc * 64, row_bytes);                           \
            _tile_loadd(5, packed + kc * 1024, 64);                                            \
            _tile_loadd(6, packed + (chunks + kc) * 1024, 64);                                 \
            dot(0, 3, 5);                                                                      \
            dot(1, 4, 5);                                                                      \
            dot(2, 4, 6);                                                                      \
        }                                                                                      \
        _tile_stored(0, gram, 128);                                                            \
        _tile_stored(1, (char *)gram + 16 * 128, 128);                                         \
        _tile_stored(2, (char *)gram + 16 * 128 + 64, 128);                                    \
    }
GRAM_AMX(gram_u8_amx, _tile_dpbuud)
GRAM_AMX(gram_bf16_amx, _tile_dpbf16ps)
#undef GRAM_AMX

/* One sample's triangle from row-wise uint8 rows with integer dot products (AVX512-VNNI)
 * instead of dequantized float rows: about half the instructions. Table row t is
 * v = s q + b (q in 0..255), written v = s q' + c with q' = q - 128 and c = b + 128 s; then
 *   dot(v_i, v_j) = s_j (s_i G'_ij + c_i S'_j) + (s_i S'_i + D c_i) c_j,
 *   G'_ij = sum q'_i q'_j, S'_i = sum q'_i,
 * G' exact in int32 and in float32 (|G'| <= D 2^14 <= 2^23), and the c terms small (c is the
 * middle of the row's range), so the float32 result is as close as the dequantized dots.
 * vpdpbusd multiplies u8 by s8: sum q_i q'_j = G'_ij + 128 S'_j. The dense row x meets the rows
 * in float32: dot(x, v_j) = s_j sum x q'_j + c_j sum x. tri: row i (1..T) holds dot(i, 0..i-1).
 * int8_triangle_out writes tri from the scratch's per-table sums (scale, center, S, S', xq) and
 * the rows' integer dots: from the Gram matrix gram (sum q_i q_j, AMX) or, without one, by
 * vpdpbusd on qu and qs. */
static VNNI void int8_triangle_out(dot_scratch *w, int64_t num_tables, int64_t dim, float x_sum,
                                   const int32_t *gram, float *tri) {
    const __m512i zero = _mm512_setzero_si512();
    for (int64_t i = 1; i <= num_tables; i++) {
        const int64_t ti = i - 1; /* table row of S row i; S rows 1..i-1 are table rows 0..i-2 */
        tri[0] = w->scale[ti] * w->xq[ti] + w->center[ti] * x_sum;
        const uint8_t *qi = w->qu + ti * dim;
        int64_t j = 0;
        if (gram) { /* sum q_i q'_j = G_ij - 128 S_i */
            const __m512i si128 = _mm512_set1_epi32(128 * w->s_raw[ti]);
            for (; j < ti; j += 16)
                _mm512_store_si512(w->dots + j, _mm512_sub_epi32(
                    _mm512_load_si512(gram + ti * 32 + j), si128));
        }
        for (; j + 4 <= ti; j += 4) {
            __m512i a0 = zero, a1 = zero, a2 = zero, a3 = zero;
            const int8_t *q0 = w->qs + j * dim;
            for (int64_t d = 0; d < dim; d += 64) {
                const __m512i v = _mm512_load_si512(qi + d);
                a0 = _mm512_dpbusd_epi32(a0, v, _mm512_load_si512(q0 + d));
                a1 = _mm512_dpbusd_epi32(a1, v, _mm512_load_si512(q0 + dim + d));
                a2 = _mm512_dpbusd_epi32(a2, v, _mm512_load_si512(q0 + 2 * dim + d));
                a3 = _mm512_dpbusd_epi32(a3, v, _mm512_load_si512(q0 + 3 * dim + d));
            }
            _mm_store_si128((__m128i *)(w->dots + j), sum4_epi32(a0, a1, a2, a3));
        }
        for (; j < ti; j++) {
            __m512i a = zero;
            for (int64_t d = 0; d < dim; d += 64)
                a = _mm512_dpbusd_epi32(a, _mm512_load_si512(qi + d),
                                        _mm512_load_si512(w->qs + j * dim + d));
            w->dots[j] = _mm512_reduce_add_epi32(a);
        }
        const __m512 si = _mm512_set1_ps(w->scale[ti]), ci = _mm512_set1_ps(w->center[ti]);
        const __m512 gi = _mm512_set1_ps(w->scale[ti] * w->s_sum_f[ti]
                                         + (float)dim * w->center[ti]);
        for (j = 0; j < ti; j += 16) {
            const __mmask16 keep = keep_of(ti, j);
            const __m512i sj = _mm512_maskz_load_epi32(keep, w->s_sum + j);
            const __m512i g = _mm512_sub_epi32(_mm512_maskz_load_epi32(keep, w->dots + j),
                                               _mm512_slli_epi32(sj, 7));
            const __m512 inner = _mm512_fmadd_ps(si, _mm512_cvtepi32_ps(g),
                                                 _mm512_mul_ps(ci, _mm512_cvtepi32_ps(sj)));
            const __m512 dot = _mm512_fmadd_ps(_mm512_maskz_load_ps(keep, w->scale + j), inner,
                                               _mm512_mul_ps(gi, _mm512_maskz_load_ps(
                                                   keep, w->center + j)));
            _mm512_mask_storeu_ps(tri + 1 + j, keep, dot);
        }
        tri += i;
    }
}

/* triangle_int8 on AVX512-VNNI: the per-table sums by vector code, the rows' dots by vpdpbusd */
static VNNI void triangle_int8(const uint8_t *const *trow, int64_t num_tables, int64_t dim,
                               const float *x, float *tri, dot_scratch *w) {
    const __m512i flip = _mm512_set1_epi8((char)0x80), zero = _mm512_setzero_si512();
    for (int64_t t = 0; t < num_tables; t++) {
        const uint8_t *row = trow[t];
        uint8_t *qu = w->qu + t * dim;
        int8_t *qs = w->qs + t * dim;
        __m512i sad = zero;
        for (int64_t d = 0; d < dim; d += 64) {
            const __m512i q = _mm512_loadu_si512(row + d);
            _mm512_store_si512(qu + d, q);
            _mm512_store_si512(qs + d, _mm512_xor_si512(q, flip));
            sad = _mm512_add_epi64(sad, _mm512_sad_epu8(q, zero));
        }
        float scale, bias;
        memcpy(&scale, row + dim, 4);
        memcpy(&bias, row + dim + 4, 4);
        w->s_raw[t] = (int32_t)_mm512_reduce_add_epi64(sad);
        w->s_sum[t] = w->s_raw[t] - 128 * (int32_t)dim;
        w->s_sum_f[t] = (float)w->s_sum[t];
        w->scale[t] = scale;
        w->center[t] = bias + 128.0f * scale;
    }
    /* sum x q'_t for every t, four rows at a time */
    __m512 xs = _mm512_setzero_ps();
    for (int64_t d = 0; d < dim; d += 16) xs = _mm512_add_ps(xs, _mm512_loadu_ps(x + d));
    const float x_sum = _mm512_reduce_add_ps(xs);
    int64_t t = 0;
#define QF(r, d) _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_load_si128( \
        (const __m128i *)(w->qs + (t + (r)) * dim + (d)))))
    for (; t + 4 <= num_tables; t += 4) {
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t d = 0; d < dim; d += 16) {
            const __m512 v = _mm512_loadu_ps(x + d);
            a0 = _mm512_fmadd_ps(v, QF(0, d), a0);
            a1 = _mm512_fmadd_ps(v, QF(1, d), a1);
            a2 = _mm512_fmadd_ps(v, QF(2, d), a2);
            a3 = _mm512_fmadd_ps(v, QF(3, d), a3);
        }
        _mm_store_ps(w->xq + t, sum4(a0, a1, a2, a3));
    }
    for (; t < num_tables; t++) {
        __m512 a = _mm512_setzero_ps();
        for (int64_t d = 0; d < dim; d += 16) a = _mm512_fmadd_ps(_mm512_loadu_ps(x + d), QF(0, d), a);
        w->xq[t] = _mm512_reduce_add_ps(a);
    }
#undef QF
    int8_triangle_out(w, num_tables, dim, x_sum, NULL, tri);
}

/* triangle_int8 with the per-table sums on AMX tiles too (amx_int8; num_tables + 4 <= 32): the
 * Gram matrix's 32 rows hold the tables' rows, then a row of ones (its dots with the rows: S),
 * then x in 24-bit fixed point as three byte planes, x^ = x_lo + x_step (2^16 a + 2^8 b + c):
 * their dots with the rows give sum x^ q exactly in integers, for the vector code's float32
 * products per table and row element (about a third of the sample's instructions). x^ is
 * within about range(x) 2^-24 of x, float32 rounding's order. The caller has put the ones row
 * in place and zeroed the rows past the planes. */
static AMX void triangle_int8_amx(const uint8_t *const *trow, int64_t num_tables, int64_t dim,
                                  const float *x, float *tri, dot_scratch *w) {
    for (int64_t t = 0; t < num_tables; t++) {
        const uint8_t *row = trow[t];
        for (int64_t d = 0; d < dim; d += 64)
            _mm512_store_si512(w->qu + t * dim + d, _mm512_loadu_si512(row + d));
        memcpy(w->scale + t, row + dim, 4);
        memcpy(w->center + t, row + dim + 4, 4); /* the bias, for now */
    }
    __m512 lo = _mm512_set1_ps(INFINITY), hi = _mm512_set1_ps(-INFINITY), xs = _mm512_setzero_ps();
    for (int64_t d = 0; d < dim; d += 16) {
        const __m512 v = _mm512_loadu_ps(x + d);
        lo = _mm512_min_ps(lo, v);
        hi = _mm512_max_ps(hi, v);
        xs = _mm512_add_ps(xs, v);
    }
    const float x_lo = _mm512_reduce_min_ps(lo), x_sum = _mm512_reduce_add_ps(xs);
    const float x_step = (_mm512_reduce_max_ps(hi) - x_lo) / 16777215.0f;
    const __m512 vlo = _mm512_set1_ps(x_lo), vinv = _mm512_set1_ps(x_step > 0 ? 1.0f / x_step : 0);
    const __m512i top = _mm512_set1_epi32((1 << 24) - 1);
    uint8_t *plane = w->qu + (num_tables + 1) * dim;
    for (int64_t d = 0; d < dim; d += 16) {
        __m512i u = _mm512_cvt_roundps_epi32(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + d),
                                                                         vlo), vinv),
                                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        u = _mm512_min_epi32(_mm512_max_epi32(u, _mm512_setzero_si512()), top);
        _mm512_mask_cvtepi32_storeu_epi8(plane + d, 0xFFFF, _mm512_srli_epi32(u, 16));
        _mm512_mask_cvtepi32_storeu_epi8(plane + dim + d, 0xFFFF, _mm512_srli_epi32(u, 8));
        _mm512_mask_cvtepi32_storeu_epi8(plane + 2 * dim + d, 0xFFFF, u);
    }
    gram_u8_amx(w->qu, dim, w->packed, w->gram);
    const int32_t *g = w->gram, *ones = g + num_tables * 32;
    const int32_t *ga = ones + 32, *gb = ga + 32, *gc = gb + 32;
    /* sum u = the planes' dots with the ones row; sum x^ q'_t = x_lo S'_t + x_step (sum u q_t -
     * 128 sum u), in double: the two sums are ~2^31 D and their difference can be far smaller */
    const double u_sum = 65536.0 * ga[num_tables] + 256.0 * gb[num_tables] + gc[num_tables];
    const __m512d dlo = _mm512_set1_pd(x_lo), dstep = _mm512_set1_pd(x_step);
    const __m512d du128 = _mm512_set1_pd(128.0 * u_sum);
    const __m512i d128 = _mm512_set1_epi32(128 * (int32_t)dim);
    for (int64_t t = 0; t < num_tables; t += 16) {
        const __mmask16 keep = keep_of(num_tables, t);
        const __m512i s = _mm512_maskz_loadu_epi32(keep, ones + t);
        const __m512i sp = _mm512_sub_epi32(s, d128);
        _mm512_mask_storeu_epi32(w->s_raw + t, keep, s);
        _mm512_mask_storeu_epi32(w->s_sum + t, keep, sp);
        _mm512_mask_storeu_ps(w->s_sum_f + t, keep, _mm512_cvtepi32_ps(sp));
        const __m512 scale = _mm512_maskz_loadu_ps(keep, w->scale + t);
        _mm512_mask_storeu_ps(w->center + t, keep, _mm512_fmadd_ps(
            scale, _mm512_set1_ps(128.0f), _mm512_maskz_loadu_ps(keep, w->center + t)));
        /* 8 tables at a time in double */
#define PD(p, o, k8) _mm512_cvtepi32_pd(_mm256_maskz_loadu_epi32(k8, (p) + (o)))
#define XQ8(o, k8, sp8)                                                                        \
    _mm256_mask_storeu_ps(w->xq + (o), k8, _mm512_cvtpd_ps(_mm512_fmadd_pd(                    \
        dlo, _mm512_cvtepi32_pd(sp8), _mm512_mul_pd(dstep, _mm512_sub_pd(_mm512_fmadd_pd(      \
            _mm512_set1_pd(65536.0), PD(ga, o, k8), _mm512_fmadd_pd(                           \
                _mm512_set1_pd(256.0), PD(gb, o, k8), PD(gc, o, k8))), du128)))))
        XQ8(t, (__mmask8)keep, _mm512_castsi512_si256(sp));
        if (keep >> 8) XQ8(t + 8, (__mmask8)(keep >> 8), _mm512_extracti64x4_epi64(sp, 1));
#undef XQ8
#undef PD
    }
    int8_triangle_out(w, num_tables, dim, x_sum, g, tri);
}

/* One sample's triangle from bf16 rows with vdpbf16ps (pairs of bf16 products summed in
 * float32) on the rows as stored, instead of rows widened to float32: half the multiply-adds
 * and no widening. x (float32) is rounded to bf16 first: exact for amx_bfloat16, whose dense
 * row is bf16 already. Needs dim % 32 == 0. */
static BF16 void triangle_bf16(const uint16_t *const *brow, int64_t num_tables, int64_t dim,
                               const float *x, float *tri, dot_scratch *w) {
    for (int64_t d = 0; d < dim; d += 32)
        _mm512_store_si512(w->xb + d, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + d + 16),
                                                                   _mm512_loadu_ps(x + d)));
    const uint16_t *rows[MAX_ROWS];
    rows[0] = w->xb;
    for (int64_t t = 0; t < num_tables; t++) rows[t + 1] = brow[t];
#define BL(p, d) ((__m512bh)_mm512_loadu_si512((p) + (d)))
    for (int64_t i = 1; i <= num_tables; i++) {
        const uint16_t *ri = rows[i];
        int64_t j = 0;
        for (; j + 4 <= i; j += 4) {
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            const uint16_t *r0 = rows[j], *r1 = rows[j + 1], *r2 = rows[j + 2], *r3 = rows[j + 3];
            for (int64_t d = 0; d < dim; d += 32) {
                const __m512bh v = BL(ri, d);
                a0 = _mm512_dpbf16_ps(a0, v, BL(r0, d));
                a1 = _mm512_dpbf16_ps(a1, v, BL(r1, d));
                a2 = _mm512_dpbf16_ps(a2, v, BL(r2, d));
                a3 = _mm512_dpbf16_ps(a3, v, BL(r3, d));
            }
            _mm_storeu_ps(tri + j, sum4(a0, a1, a2, a3));
        }
        for (; j < i; j++) {
            __m512 a = _mm512_setzero_ps();
            for (int64_t d = 0; d < dim; d += 32) a = _mm512_dpbf16_ps(a, BL(ri, d), BL(rows[j], d));
            tri[j] = _mm512_reduce_add_ps(a);
        }
        tri += i;
    }
#undef BL
}

/* One sample's triangle from bf16 rows on AMX: x (rounded to bf16, exact for amx_bfloat16) and
 * the T <= 31 rows copied into 32 rows of a tile buffer (rows past them zero), their Gram matrix
 * by TDPBF16PS (float32 sums of the bf16 products, as vdpbf16ps), its lower triangle copied out.
 * f32_rows: row[t] are float32 rows, rounded to bf16 (nearest even) on the way in. */
static AMX void triangle_bf16_amx(const void *const *row, int f32_rows, int64_t num_tables,
                                  int64_t dim, const float *x, float *tri, dot_scratch *w) {
    uint16_t *r = (uint16_t *)w->qu;
#define ROUND32(src, d) \
    (__m512i) _mm512_cvtne2ps_pbh(_mm512_loadu_ps((src) + (d) + 16), _mm512_loadu_ps((src) + (d)))
    for (int64_t d = 0; d < dim; d += 32) _mm512_store_si512(r + d, ROUND32(x, d));
    for (int64_t t = 0; t < num_tables; t++)
        for (int64_t d = 0; d < dim; d += 32)
            _mm512_store_si512(r + (t + 1) * dim + d,
                               f32_rows ? ROUND32((const float *)row[t], d)
                                        : _mm512_loadu_si512((const uint16_t *)row[t] + d));
#undef ROUND32
    gram_bf16_amx((const uint8_t *)r, dim * 2, w->packed, w->gram);
    const float *g = (const float *)w->gram;
    for (int64_t i = 1; i <= num_tables; i++) {
        for (int64_t j = 0; j < i; j += 16) {
            const __mmask16 keep = keep_of(i, j);
            _mm512_mask_storeu_ps(tri + j, keep, _mm512_maskz_load_ps(keep, g + i * 32 + j));
        }
        tri += i;
    }
}

/* 16 floats -> uint8: round(v * inv_scale + zero_point), half to even as torch.round, clamped */
static inline __m128i quantize16(__m512 v, __m512 inv_scale, __m512 zero_point) {
    v = _mm512_fmadd_ps(v, inv_scale, zero_point);
    v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    v = _mm512_min_ps(_mm512_max_ps(v, _mm512_setzero_ps()), _mm512_set1_ps(255.0f));
    return _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v));
}

static inline void quantize_to(const float *src, int64_t n, float inv_scale, float zero_point,
                               uint8_t *dst) {
    const __m512 vi = _mm512_set1_ps(inv_scale), vz = _mm512_set1_ps(zero_point);
    int64_t k = 0;
    for (; k + 16 <= n; k += 16)
        _mm_storeu_si128((__m128i *)(dst + k), quantize16(_mm512_loadu_ps(src + k), vi, vz));
    if (k < n) { /* the tail masked (a 479-wide interaction row: 15 values, 1-2% of the gather
                  * in scalar code); the same fused multiply-add, rounding and clamp */
        const __mmask16 keep = (__mmask16)((1u << (n - k)) - 1);
        _mm_mask_storeu_epi8(dst + k, keep,
                             quantize16(_mm512_maskz_loadu_ps(keep, src + k), vi, vz));
    }
}

/* 1 when every bag of one table holds one id: its offsets (stride_b apart) are 0, 1, 2, ... */
static int table_one_hot(const int64_t *offsets, int64_t stride_b, int64_t batch) {
    for (int64_t b = 0; b < batch; b++)
        if (offsets[b * stride_b] != b) return 0;
    return 1;
}

/* 1 when every bag holds one id, i.e. offsets[t][b] == b for all t, b (the data's layout). */
int dlrm_one_hot(const int64_t *offsets, int64_t stride_t, int64_t stride_b, int64_t num_tables,
                 int64_t batch) {
    for (int64_t t = 0; t < num_tables; t++)
        if (!table_one_hot(offsets + t * stride_t, stride_b, batch)) return 0;
    return 1;
}

/* The rows of one gather + interaction, shared out by an orphaned `omp for`: called inside a
 * parallel region (dlrm_gather_interact's, or dlrm_forward_small's) or serially. Arguments as
 * dlrm_gather_interact's, checked there; sets *bad_id when an id is outside its table. */
static void gather_rows(
    int64_t batch, int64_t num_tables, int64_t dim, const float *x, int64_t x_stride,
    const int64_t *ids, int64_t ids_stride_t, int64_t ids_stride_b, const int64_t *table_addr,
    const int64_t *table_rows, int64_t row_bytes, int32_t kind, void *out, int64_t out_stride,
    int32_t out_kind, float inv_scale, float zero_point, int32_t dots, int *bad_id) {
    const int64_t n = num_tables + 1;
    const int64_t width = dim + n * (n - 1) / 2;
    /* dots 1: integer (int8 rows, VNNI) or bf16 (bf16 rows, AVX512-BF16) dot products on the
     * rows as stored; 0: rows in float32 (dequantized or widened in L1); 3: float32 rows rounded
     * to bf16, their Gram matrix on AMX tiles (amx_bfloat32) */
    const int rounded = dots == 3 && kind == 0 && dim % 32 == 0 && num_tables + 1 <= 32
                        && __builtin_cpu_supports("avx512bf16") && dlrm_amx_ready();
    const int narrow = rounded
                       || ((dots == 1 || dots == 2)
                           && ((kind == 1 && dim % 64 == 0 && __builtin_cpu_supports("avx512vnni"))
                               || (kind == 2 && dim % 32 == 0
                                   && __builtin_cpu_supports("avx512bf16"))));
    const int bf16_gram = kind == 2 || rounded; /* the tiles hold bf16 rows, x among them */
    /* dots 2: the Gram matrix on AMX tiles (int8: up to 28 tables, see triangle_int8_amx;
     * bf16: 31, with x). Not for a few int8 rows: the tiles' setup per call (config, zeroed pad
     * rows, release) is not repaid (batch 1 on an AMX Xeon: 56-59 us against 51-54 on VNNI);
     * the bf16 one-call chains use the tiles anyway. */
    const int64_t gram_rows = num_tables + (bf16_gram ? 1 : 4); /* of the tiles' 32 */
    const int amx = rounded || (narrow && dots == 2 && gram_rows <= 32
                                && (kind == 2 || batch >= 16) && dlrm_amx_ready());
    float deq[MAX_ROWS * MAX_DIM] __attribute__((aligned(64)));
    float zrow[MAX_DIM + MAX_ROWS * (MAX_ROWS - 1) / 2] __attribute__((aligned(64)));
    const float *rows[MAX_ROWS];
    const void *stored[MAX_ROWS];
    dot_scratch scratch;
    if (amx) { /* the A tiles read 32 rows: those past the tables and x (bf16: x; int8: a row
                * of ones and x's three planes, see triangle_int8_amx) stay zero */
        const int64_t tile_row = bf16_gram ? 2 * dim : dim;
        memset(scratch.qu + gram_rows * tile_row, 0, (32 - gram_rows) * tile_row);
        if (kind == 1) memset(scratch.qu + num_tables * dim, 1, dim);
        amx_configure();
    }

#pragma omp for schedule(static)
    for (int64_t b = 0; b < batch; b++) {
        if (b + PREFETCH_AHEAD < batch) {
            const int64_t p = b + PREFETCH_AHEAD;
            for (int64_t t = 0; t < num_tables; t++) {
                const int64_t id = ids[t * ids_stride_t + p * ids_stride_b];
                if ((uint64_t)id < (uint64_t)table_rows[t])
                    prefetch_row((const char *)table_addr[t] + id * row_bytes, row_bytes);
            }
        }
        rows[0] = x + b * x_stride;
        int ok = 1;
        for (int64_t t = 0; t < num_tables && ok; t++) {
            const int64_t id = ids[t * ids_stride_t + b * ids_stride_b];
            if ((uint64_t)id >= (uint64_t)table_rows[t]) {
                ok = 0;
                break;
            }
            const char *row = (const char *)table_addr[t] + id * row_bytes;
            if (narrow) {
                stored[t] = row;
            } else if (kind == 0) {
                rows[t + 1] = (const float *)row;
            } else {
                if (kind == 1) dequantize_row((const uint8_t *)row, dim, deq + (t + 1) * dim);
                else widen_bf16_row((const uint16_t *)row, dim, deq + (t + 1) * dim);
                rows[t + 1] = deq + (t + 1) * dim;
            }
        }
        if (!ok) {
#pragma omp atomic write
            *bad_id = 1;
            continue;
        }
        float *z = out_kind ? zrow : (float *)out + b * out_stride;
        memcpy(z, rows[0], dim * sizeof(float));
        float *tri = z + dim;
        if (narrow && kind == 1) {
            (amx ? triangle_int8_amx : triangle_int8)((const uint8_t *const *)stored,
                                                      num_tables, dim, rows[0], tri, &scratch);
        } else if (narrow && amx) {
            triangle_bf16_amx(stored, rounded, num_tables, dim, rows[0], tri, &scratch);
        } else if (narrow) {
            triangle_bf16((const uint16_t *const *)stored, num_tables, dim, rows[0], tri,
                          &scratch);
        } else {
            for (int64_t i = 1; i < n; i++) {
                dots_of_row(rows, i, dim, tri);
                tri += i;
            }
        }
        if (out_kind == 1)
            quantize_to(zrow, width, inv_scale, zero_point,
                        (uint8_t *)out + b * out_stride);
        else if (out_kind == 2)
            narrow_to_bf16(zrow, width, (uint16_t *)out + b * out_stride);
    }
    if (amx) amx_release();
}

/* Returns 0; -1 for arguments the kernel does not handle (the caller checks first); -2 when an
 * id is outside its table (those samples' outputs are left unwritten). */
int dlrm_gather_interact(
    int64_t batch, int64_t num_tables, int64_t dim,
    const float *x, int64_t x_stride,                       /* [B, D] */
    const int64_t *ids, int64_t ids_stride_t, int64_t ids_stride_b, /* [T, B] table-local */
    const int64_t *table_addr, const int64_t *table_rows,    /* [T] row-0 addresses, row counts */
    int64_t row_bytes, int32_t kind,
    void *out, int64_t out_stride, int32_t out_kind, float inv_scale, float zero_point,
    int32_t dots, int32_t threads) {
    if (num_tables + 1 > MAX_ROWS || dim > MAX_DIM || dim % 16 != 0 || kind < 0 || kind > 2
        || out_kind < 0 || out_kind > 2)
        return -1;
    int bad_id = 0;
#pragma omp parallel num_threads(threads) if (threads > 1 && batch >= 32)
    gather_rows(batch, num_tables, dim, x, x_stride, ids, ids_stride_t, ids_stride_b,
                table_addr, table_rows, row_bytes, kind, out, out_stride, out_kind, inv_scale,
                zero_point, dots, &bad_id);
    return bad_id ? -2 : 0;
}

/* Small-batch int8 MLP (u8 activations x s8 weights, AVX512-VNNI), for the few-row batches
 * (latency mode, the weight-sharing layout's batch 16) where oneDNN's per-call cost and the
 * Python between layers are most of the time. One call runs a chain of layers; layer l:
 *   y[m, n] = post(scale[n] * (sum_k x[m, k] * w[n, k] - x_zp * colsum[n]) + bias[n])
 * post = ReLU, sigmoid or none; then uint8 (round(y * out_inv_scale + out_zp), clamped: the next
 * layer's input; computed in one step, see qstore) or float32 (the chain's output). A float32
 * input is quantized first.
 * Weights packed as [N/16][K/4][16][4] (N and K padded with zero weights), so one 64-byte load
 * holds 4 k's of 16 outputs and one vpdpbusd adds them to 16 accumulators. */
#define MAX_LAYERS 16

typedef struct {
    int64_t k, n;
    int64_t kw; /* groups of 4 k per 16-output block in w: K/4 rounded up to a multiple of 16 */
    const int8_t *w;
    const int32_t *zc;      /* x_zp * colsum[n]: the input zero point's share of the sums */
    const float *mul, *add; /* uint8 output: scale * out_inv_scale, bias * out_inv_scale +
                             * out_zp (the requantization folded in); float32: scale, bias */
    int32_t post;           /* 0 none, 1 relu, 2 sigmoid */
    int32_t out_u8;
    int32_t lo;             /* uint8 output: its least value (out_zp after a ReLU, else 0) */
} dlrm_qlayer;

static inline VNNI int32_t word_at(const uint8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline VNNI int32_t tail_word(const uint8_t *p, int64_t have) {
    int32_t v = 0;
    memcpy(&v, p, (size_t)have);
    return v;
}


/* The 1-wide sigmoid head's kept lanes, as scalars (a vector exp is not worth it for one). */
static inline void store_sigmoid(float *dst, __m512 y, __mmask16 keep) {
    float tmp[16];
    _mm512_storeu_ps(tmp, y);
    for (int j = 0; j < 16; j++)
        if (keep >> j & 1) dst[j] = 1.0f / (1.0f + expf(-tmp[j]));
}

static inline VNNI void qstore(const dlrm_qlayer *L, __m512i acc, int64_t n0, void *out,
                               int64_t m, int64_t out_stride) {
    const __mmask16 keep = keep_of(L->n, n0);
    const __m512 d = _mm512_cvtepi32_ps(
        _mm512_sub_epi32(acc, _mm512_maskz_loadu_epi32(keep, L->zc + n0)));
    __m512 y = _mm512_fmadd_ps(d, _mm512_maskz_loadu_ps(keep, L->mul + n0),
                               _mm512_maskz_loadu_ps(keep, L->add + n0));
    if (L->out_u8) {
        /* round(relu(scale d + bias) * out_inv_scale + out_zp) clamped to 0..255, as
         * max(round(mul d + add), lo) (out_inv_scale > 0): half the instructions of the two
         * steps, which cost as much as the AMX tiles' sums (measured on the top MLP's shapes) */
        __m512i q = _mm512_cvt_roundps_epi32(_mm512_min_ps(y, _mm512_set1_ps(255.0f)),
                                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        q = _mm512_max_epi32(q, _mm512_set1_epi32(L->lo));
        _mm_mask_storeu_epi8((uint8_t *)out + m * out_stride + n0, keep, _mm512_cvtepi32_epi8(q));
        return;
    }
    if (L->post == 1) y = _mm512_max_ps(y, _mm512_setzero_ps());
    float *dst = (float *)out + m * out_stride + n0;
    if (L->post == 2) store_sigmoid(dst, y, keep);
    else _mm512_mask_storeu_ps(dst, keep, y);
}

/* Tiles of 4 rows x 4 output blocks (16 vpdpbusd chains share each weight load and each
 * broadcast input word) and 1 row x 4 blocks. The accumulators are named variables, not an
 * array: with an array gcc 12 copied all 16 between registers on every k step (and spilled one),
 * which held the loop to ~57% of the vpdpbusd peak. A group with fewer than 4 blocks (the last
 * of a layer whose width is not a multiple of 64) reads its last block again in the missing
 * lanes and stores only the real ones. */
/* The VNNI and FMA chains' first row tiles of an output group stream the next group's weights
 * into L2 when this thread's share of the MLPs' weights is over STREAM_WEIGHTS_BYTES (3/4 of the
 * 2 MB L2 of the AMX Xeons measured): then they do not stay in L2 from one call to the next
 * (1 thread, batch 16: avx_int8 +7.7%, avx_fp32 +14.6%); where they do, the prefetches cost
 * (int8, 2 threads, 1.2 MB each: batch 16 -4%, 64 -1.6%). Set per thread by the entry points
 * (the whole forward's MLPs in dlrm_forward_small), read by qtile4, ftile4 and ftile8. */
#define STREAM_WEIGHTS_BYTES (3 << 19)
static __thread int stream_weights;

static inline void set_stream_weights(int64_t chain_bytes) {
    stream_weights = chain_bytes / omp_get_num_threads() > STREAM_WEIGHTS_BYTES;
}

/* Where a row tile at row m0 (of tile_rows rows) of the output group starting at block blk
 * (`width` blocks of block_bytes each, n outputs in all) streams the next group's weights from:
 * one block per row tile, the group's first width row tiles; NULL when not streaming. */
static inline const char *next_group_weights(const void *w, int64_t block_bytes, int64_t n,
                                             int64_t blk, int64_t width, int64_t m0,
                                             int64_t tile_rows) {
    const int64_t next = blk + width; /* the next group's first block */
    if (!stream_weights || next >= (n + 15) / 16 || m0 >= width * tile_rows) return NULL;
    return (const char *)w + (next + m0 / tile_rows) * block_bytes;
}

static int64_t qchain_bytes(const dlrm_qlayer *layers, int32_t n_layers) {
    int64_t bytes = 0;
    for (int32_t l = 0; l < n_layers; l++) bytes += (layers[l].n + 15) / 16 * layers[l].kw * 64;
    return bytes;
}

/* Shared by the int8, float32 and bf16 chains. STORE_BLOCKS: the nb (<= 4) accumulators a0..a3
 * of one row through store(). LAYER_GROUPS: one layer L, its output groups (4 blocks of 16
 * outputs) shared out by an orphaned omp for (whose implicit barrier orders the layers), each
 * group over every row: 4-row tiles, then single rows. */
#define STORE_BLOCKS(store, a, row) \
    for (int b = 0; b < nb; b++) \
        store(L, b == 0 ? a##0 : b == 1 ? a##1 : b == 2 ? a##2 : a##3, (blk + b) * 16, out, \
              row, out_stride)
#define LAYER_GROUPS(tile4, tile1, in, in_stride, rows, o, o_stride) \
    LAYER_GROUPS_OF(4, tile4, 4, tile1, in, in_stride, rows, o, o_stride)
/* The same with groups of `width` blocks and tiles of `tile_rows` rows (fchain's 8 x 2 tiles) */
#define LAYER_GROUPS_OF(width, tile, tile_rows, tile1, in, in_stride, rows, o, o_stride) \
    do { \
        const int64_t blocks_ = (L->n + 15) / 16, groups_ = (blocks_ + (width) - 1) / (width); \
        _Pragma("omp for schedule(static)") \
        for (int64_t g = 0; g < groups_; g++) { \
            const int nb = blocks_ - (width) * g < (width) ? (int)(blocks_ - (width) * g) : (width); \
            int64_t m = 0; \
            for (; m + (tile_rows) <= (rows); m += (tile_rows)) \
                tile(L, nb, (width) * g, in, in_stride, m, o, o_stride); \
            for (; m < (rows); m++) tile1(L, nb, (width) * g, in, in_stride, m, o, o_stride); \
        } \
    } while (0)

#define DP4(a, bx) \
    a##0 = _mm512_dpbusd_epi32(a##0, bx, v0); a##1 = _mm512_dpbusd_epi32(a##1, bx, v1); \
    a##2 = _mm512_dpbusd_epi32(a##2, bx, v2); a##3 = _mm512_dpbusd_epi32(a##3, bx, v3)
#define LOAD4(q) \
    const __m512i v0 = _mm512_loadu_si512(w0 + (q)), v1 = _mm512_loadu_si512(w1 + (q)); \
    const __m512i v2 = _mm512_loadu_si512(w2 + (q)), v3 = _mm512_loadu_si512(w3 + (q))
#define STORE4(a, row) STORE_BLOCKS(qstore, a, row)
#define BLOCK_POINTERS \
    const int64_t kw = L->kw, kfull = L->k / 4, have = L->k - 4 * kfull; \
    const __m512i *w0 = (const __m512i *)(L->w + blk * kw * 64); \
    const __m512i *w1 = w0 + (nb > 1 ? kw : 0), *w2 = w0 + (nb > 2 ? 2 * kw : 0); \
    const __m512i *w3 = w0 + (nb > 3 ? 3 * kw : 0)

static VNNI void qtile4(const dlrm_qlayer *L, int nb, int64_t blk, const uint8_t *x,
                        int64_t x_stride, int64_t m0, void *out, int64_t out_stride) {
    BLOCK_POINTERS;
    const uint8_t *x0 = x + m0 * x_stride, *x1 = x0 + x_stride, *x2 = x1 + x_stride;
    const uint8_t *x3 = x2 + x_stride;
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0;
    __m512i b3 = a0, c0 = a0, c1 = a0, c2 = a0, c3 = a0, d0 = a0, d1 = a0, d2 = a0, d3 = a0;
    if (have) { /* the last, partial word of k first (weights beyond k are zero): a
                  * tail after the loop made gcc copy the accumulators on every k step */
        LOAD4(kfull);
        __m512i bx = _mm512_set1_epi32(tail_word(x0 + 4 * kfull, have));
        DP4(a, bx);
        bx = _mm512_set1_epi32(tail_word(x1 + 4 * kfull, have));
        DP4(b, bx);
        bx = _mm512_set1_epi32(tail_word(x2 + 4 * kfull, have));
        DP4(c, bx);
        bx = _mm512_set1_epi32(tail_word(x3 + 4 * kfull, have));
        DP4(d, bx);
    }
    /* the next group's weights into L2 (see stream_weights), as ftile4 */
    const char *ahead = next_group_weights(L->w, kw * 64, L->n, blk, 4, m0, 4);
    for (int64_t q = 0; q < kfull; q++) {
        if (ahead) _mm_prefetch(ahead + q * 64, _MM_HINT_T1);
        LOAD4(q);
        __m512i bx = _mm512_set1_epi32(word_at(x0 + 4 * q));
        DP4(a, bx);
        bx = _mm512_set1_epi32(word_at(x1 + 4 * q));
        DP4(b, bx);
        bx = _mm512_set1_epi32(word_at(x2 + 4 * q));
        DP4(c, bx);
        bx = _mm512_set1_epi32(word_at(x3 + 4 * q));
        DP4(d, bx);
    }
    STORE4(a, m0);
    STORE4(b, m0 + 1);
    STORE4(c, m0 + 2);
    STORE4(d, m0 + 3);
}

static VNNI void qtile1(const dlrm_qlayer *L, int nb, int64_t blk, const uint8_t *x,
                        int64_t x_stride, int64_t m0, void *out, int64_t out_stride) {
    BLOCK_POINTERS;
    const uint8_t *x0 = x + m0 * x_stride;
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    if (have) {
        LOAD4(kfull);
        const __m512i bx = _mm512_set1_epi32(tail_word(x0 + 4 * kfull, have));
        DP4(a, bx);
    }
    for (int64_t q = 0; q < kfull; q++) {
        LOAD4(q);
        const __m512i bx = _mm512_set1_epi32(word_at(x0 + 4 * q));
        DP4(a, bx);
    }
    STORE4(a, m0);
}

/* The rows a chain's first layer reads: x itself (uint8), or float32 x quantized with its input
 * qparams into scratch (rows shared out by an orphaned `omp for`, whose barrier ends it). */
static const uint8_t *chain_input(int64_t rows, const dlrm_qlayer *first, const void *x,
                                  int64_t x_stride, int32_t x_float, float x_inv_scale,
                                  float x_zero_point, uint8_t *scratch, int64_t scratch_stride,
                                  int64_t *in_stride) {
    if (!x_float) {
        *in_stride = x_stride;
        return (const uint8_t *)x;
    }
#pragma omp for schedule(static)
    for (int64_t m = 0; m < rows; m++)
        quantize_to((const float *)x + m * x_stride, first->k, x_inv_scale, x_zero_point,
                    scratch + m * scratch_stride);
    *in_stride = scratch_stride;
    return scratch;
}

/* The chain's layers inside a parallel region (orphaned `omp for`s; their implicit barriers
 * order the layers), or serially. Arguments as dlrm_qmlp_small's, checked there. */
static VNNI void qchain(int64_t rows, const dlrm_qlayer *layers, int32_t n_layers, const void *x,
                        int64_t x_stride, int32_t x_float, float x_inv_scale, float x_zero_point,
                        uint8_t *scratch_a, uint8_t *scratch_b, int64_t scratch_stride,
                        void *out, int64_t out_stride) {
    int64_t in_stride;
    const uint8_t *in = chain_input(rows, layers, x, x_stride, x_float, x_inv_scale, x_zero_point,
                                    scratch_b, scratch_stride, &in_stride);
    for (int32_t l = 0; l < n_layers; l++) {
        const dlrm_qlayer *L = &layers[l];
        const int last = l + 1 == n_layers;
        uint8_t *dst = (l % 2 == 0) ? scratch_a : scratch_b;
        void *o = last ? out : (void *)dst;
        const int64_t o_stride = last ? out_stride : scratch_stride;
        LAYER_GROUPS(qtile4, qtile1, in, in_stride, rows, o, o_stride);
        in = dst;
        in_stride = scratch_stride;
    }
}

/* 16 rows of x (x_bytes apart) times nb <= 4 blocks of 16 outputs of packed weights (w, the
 * blocks block_bytes apart) on AMX, over chunks of 64 bytes of k: uint8 rows x int8 weights
 * (TDPBUSD, int32 sums) or bf16 x bf16 (bf16: TDPBF16PS, float32 sums). C tiles 0-3, the rows'
 * chunk in tile 4, the weights' 1 KB per block and chunk (16 groups of 4 int8 or 2 bf16 k x 16
 * outputs: the chains' packing, K padded to whole chunks with zero weights) in tiles 5-7.
 * c: 16 rows x 64 outputs. x must be readable for 16 rows and whole chunks; whatever it holds
 * past the rows and k's in use meets rows that are not stored or zero weights (finite values
 * for bf16). */
static AMX void tile_rows_amx(int bf16, const uint8_t *w, int64_t block_bytes, int64_t chunks,
                              int nb, const uint8_t *x, int64_t x_bytes, void *c) {
#define TILE_DOT(acc, b) \
    do { \
        if (bf16) _tile_dpbf16ps(acc, 4, b); \
        else _tile_dpbusd(acc, 4, b); \
    } while (0)
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t kc = 0; kc < chunks; kc++) {
        const uint8_t *wk = w + kc * 1024;
        _tile_loadd(4, x + kc * 64, x_bytes);
        _tile_loadd(5, wk, 64);
        TILE_DOT(0, 5);
        if (nb > 1) {
            _tile_loadd(6, wk + block_bytes, 64);
            TILE_DOT(1, 6);
        }
        if (nb > 2) {
            _tile_loadd(7, wk + 2 * block_bytes, 64);
            TILE_DOT(2, 7);
        }
        if (nb > 3) {
            _tile_loadd(5, wk + 3 * block_bytes, 64);
            TILE_DOT(3, 5);
        }
    }
#undef TILE_DOT
    _tile_stored(0, c, 256);
    _tile_stored(1, (char *)c + 64, 256);
    _tile_stored(2, (char *)c + 128, 256);
    _tile_stored(3, (char *)c + 192, 256);
}

/* qchain's group of nb <= 4 blocks of 16 outputs for all rows on AMX (TDPBUSD; see
 * tile_rows_amx), then qstore's epilogue per row. */
static AMX void qgroup_amx(const dlrm_qlayer *L, int nb, int64_t blk, const uint8_t *x,
                           int64_t x_stride, int64_t rows, void *out, int64_t out_stride) {
    int32_t c[16 * 64] __attribute__((aligned(64)));
    const uint8_t *w = (const uint8_t *)L->w + blk * L->kw * 64;
    for (int64_t m0 = 0; m0 < rows; m0 += 16) {
        tile_rows_amx(0, w, L->kw * 64, (L->k + 63) / 64, nb, x + m0 * x_stride, x_stride, c);
        for (int64_t m = m0; m < rows && m < m0 + 16; m++)
            for (int b = 0; b < nb; b++)
                qstore(L, _mm512_load_si512(c + (m - m0) * 64 + b * 16), (blk + b) * 16, out, m,
                       out_stride);
    }
}

/* qchain on AMX tiles (amx_int8's small batches in dlrm_forward_small, whose scratch has the
 * padding qgroup_amx reads). */
static AMX void qchain_amx(int64_t rows, const dlrm_qlayer *layers, int32_t n_layers,
                           const void *x, int64_t x_stride, int32_t x_float, float x_inv_scale,
                           float x_zero_point, uint8_t *scratch_a, uint8_t *scratch_b,
                           int64_t scratch_stride, void *out, int64_t out_stride) {
    int64_t in_stride;
    const uint8_t *in = chain_input(rows, layers, x, x_stride, x_float, x_inv_scale, x_zero_point,
                                    scratch_b, scratch_stride, &in_stride);
    amx_configure();
    for (int32_t l = 0; l < n_layers; l++) {
        const dlrm_qlayer *L = &layers[l];
        const int last = l + 1 == n_layers;
        uint8_t *dst = (l % 2 == 0) ? scratch_a : scratch_b;
        void *o = last ? out : (void *)dst;
        const int64_t o_stride = last ? out_stride : scratch_stride;
        const int64_t blocks = (L->n + 15) / 16, groups = (blocks + 3) / 4;
#pragma omp for schedule(static)
        for (int64_t g = 0; g < groups; g++) {
            const int nb = blocks - 4 * g < 4 ? (int)(blocks - 4 * g) : 4;
            qgroup_amx(L, nb, 4 * g, in, in_stride, rows, o, o_stride);
        }
        in = dst;
        in_stride = scratch_stride;
    }
    amx_release();
}

static int qchain_ok(const dlrm_qlayer *layers, int32_t n_layers, int32_t x_float,
                     int64_t scratch_stride) {
    if (n_layers <= 0 || n_layers > MAX_LAYERS) return 0;
    for (int32_t l = 0; l < n_layers; l++) {
        if (l + 1 < n_layers && (!layers[l].out_u8 || layers[l].n > scratch_stride)) return 0;
        if (l > 0 && layers[l].k != layers[l - 1].n) return 0;
    }
    return !(x_float && layers[0].k > scratch_stride);
}

/* Runs layers[0..n_layers) on rows of x (uint8 [rows, k0], or float32 quantized first with
 * x_inv_scale / x_zero_point); intermediate uint8 rows alternate between scratch_a/scratch_b
 * ([rows, scratch_stride] each); the last layer writes out. Returns 0, -1 on bad arguments. */
VNNI int dlrm_qmlp_small(
    int64_t rows, const dlrm_qlayer *layers, int32_t n_layers,
    const void *x, int64_t x_stride, int32_t x_float, float x_inv_scale, float x_zero_point,
    uint8_t *scratch_a, uint8_t *scratch_b, int64_t scratch_stride,
    void *out, int64_t out_stride, int32_t threads) {
    if (rows <= 0 || !qchain_ok(layers, n_layers, x_float, scratch_stride)) return -1;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        set_stream_weights(qchain_bytes(layers, n_layers));
        qchain(rows, layers, n_layers, x, x_stride, x_float, x_inv_scale, x_zero_point,
               scratch_a, scratch_b, scratch_stride, out, out_stride);
    }
    return 0;
}

/* Small-batch float32 MLP (AVX-512 FMA), the avx_fp32 counterpart of dlrm_qmlp_small: at 1-64
 * rows oneDNN's per-layer call cost and blocking for big M leave much of the FMA peak unused.
 * Layer l: y[m, n] = post(sum_k x[m, k] * w[n, k] + bias[n]), post = ReLU, sigmoid or none.
 * Weights packed as [N/16][K][16] (N padded with zero rows): one 64-byte load holds one k of 16
 * outputs, multiplied by a broadcast x[m, k]. Tiles of 4 rows x 4 output blocks (16 FMA chains
 * per weight load and broadcast) and 1 row x 4 blocks, as the int8 kernel. */
typedef struct {
    int64_t k, n;
    const float *w;
    const float *bias;
    int32_t post; /* 0 none, 1 relu, 2 sigmoid */
} dlrm_flayer;

static int64_t fchain_bytes(const dlrm_flayer *layers, int32_t n_layers) {
    int64_t bytes = 0;
    for (int32_t l = 0; l < n_layers; l++) bytes += (layers[l].n + 15) / 16 * layers[l].k * 64;
    return bytes;
}

static inline void fstore(const dlrm_flayer *L, __m512 acc, int64_t n0, float *out, int64_t m,
                          int64_t out_stride) {
    const __mmask16 keep = keep_of(L->n, n0);
    __m512 y = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(keep, L->bias + n0));
    float *dst = out + m * out_stride + n0;
    if (L->post == 2) {
        store_sigmoid(dst, y, keep);
        return;
    }
    if (L->post == 1) y = _mm512_max_ps(y, _mm512_setzero_ps());
    _mm512_mask_storeu_ps(dst, keep, y);
}

#define FMA4(a, bx) \
    a##0 = _mm512_fmadd_ps(bx, v0, a##0); a##1 = _mm512_fmadd_ps(bx, v1, a##1); \
    a##2 = _mm512_fmadd_ps(bx, v2, a##2); a##3 = _mm512_fmadd_ps(bx, v3, a##3)
#define FLOAD4(k) \
    const __m512 v0 = _mm512_loadu_ps(w0 + 16 * (k)), v1 = _mm512_loadu_ps(w1 + 16 * (k)); \
    const __m512 v2 = _mm512_loadu_ps(w2 + 16 * (k)), v3 = _mm512_loadu_ps(w3 + 16 * (k))
#define FSTORE4(a, row) STORE_BLOCKS(fstore, a, row)
#define FBLOCK_POINTERS \
    const int64_t K = L->k; \
    const float *w0 = L->w + blk * K * 16; \
    const float *w1 = w0 + (nb > 1 ? K * 16 : 0), *w2 = w0 + (nb > 2 ? 2 * K * 16 : 0); \
    const float *w3 = w0 + (nb > 3 ? 3 * K * 16 : 0)

/* 4 rows x 4 output blocks. The first four row tiles of a group also stream the next group's
 * weights (contiguous after this group's) into L2, one line per k: at 16 rows (the
 * weight-sharing layout's batch) every group's weights otherwise came from L3 during its first
 * row tile with the FMAs waiting (avx_fp32, 1 thread, batch 16: +14.6%, alternating in one
 * process; into L1 instead: the same). A last group of fewer than 4 blocks is prefetched as if
 * whole: prefetches past the weights do not fault. */
static void ftile4(const dlrm_flayer *L, int nb, int64_t blk, const float *x, int64_t x_stride,
                   int64_t m0, float *out, int64_t out_stride) {
    FBLOCK_POINTERS;
    const float *x0 = x + m0 * x_stride, *x1 = x0 + x_stride, *x2 = x1 + x_stride;
    const float *x3 = x2 + x_stride;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0;
    __m512 b3 = a0, c0 = a0, c1 = a0, c2 = a0, c3 = a0, d0 = a0, d1 = a0, d2 = a0, d3 = a0;
    const char *ahead = next_group_weights(L->w, K * 64, L->n, blk, 4, m0, 4);
    for (int64_t k = 0; k < K; k++) {
        if (ahead) _mm_prefetch(ahead + k * 64, _MM_HINT_T1);
        FLOAD4(k);
        __m512 bx = _mm512_set1_ps(x0[k]);
        FMA4(a, bx);
        bx = _mm512_set1_ps(x1[k]);
        FMA4(b, bx);
        bx = _mm512_set1_ps(x2[k]);
        FMA4(c, bx);
        bx = _mm512_set1_ps(x3[k]);
        FMA4(d, bx);
    }
    FSTORE4(a, m0);
    FSTORE4(b, m0 + 1);
    FSTORE4(c, m0 + 2);
    FSTORE4(d, m0 + 3);
}

static void ftile1(const dlrm_flayer *L, int nb, int64_t blk, const float *x, int64_t x_stride,
                   int64_t m0, float *out, int64_t out_stride) {
    FBLOCK_POINTERS;
    const float *x0 = x + m0 * x_stride;
    /* two chains per block: four alone wait on the FMA latency at one row */
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, e0 = a0, e1 = a0, e2 = a0;
    __m512 e3 = a0;
    int64_t k = 0;
    for (; k + 2 <= K; k += 2) {
        {
            FLOAD4(k);
            const __m512 bx = _mm512_set1_ps(x0[k]);
            FMA4(a, bx);
        }
        {
            FLOAD4(k + 1);
            const __m512 bx = _mm512_set1_ps(x0[k + 1]);
            FMA4(e, bx);
        }
    }
    if (k < K) {
        FLOAD4(k);
        const __m512 bx = _mm512_set1_ps(x0[k]);
        FMA4(a, bx);
    }
    a0 = _mm512_add_ps(a0, e0);
    a1 = _mm512_add_ps(a1, e1);
    a2 = _mm512_add_ps(a2, e2);
    a3 = _mm512_add_ps(a3, e3);
    FSTORE4(a, m0);
}

/* 8 rows x 2 output blocks, for 8 rows and more (fchain): per k two weight loads and eight
 * broadcasts for 16 FMAs, so each weight line comes from L2 once per 8 rows (ftile4: once per 4
 * rows; a group's 4 blocks, K x 256 bytes, do not stay in L1). The first two row tiles of a
 * group stream the next group's weights into L2 as ftile4's do. Same sums in the same order as
 * ftile4 (same bits); avx_fp32, alternating in one process: 1 thread, batch 16 +15.5%, 2 threads,
 * batch 2048 +7% (12 rows x 2 blocks: -2%, spills). */
static void ftile8(const dlrm_flayer *L, int nb, int64_t blk, const float *x, int64_t x_stride,
                   int64_t m0, float *out, int64_t out_stride) {
    const int64_t K = L->k;
    const float *w0 = L->w + blk * K * 16, *w1 = w0 + (nb > 1 ? K * 16 : 0);
    const float *x0 = x + m0 * x_stride;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, b0 = a0, b1 = a0, c0 = a0, c1 = a0, d0 = a0;
    __m512 d1 = a0, e0 = a0, e1 = a0, f0 = a0, f1 = a0, g0 = a0, g1 = a0, h0 = a0, h1 = a0;
    const char *ahead = next_group_weights(L->w, K * 64, L->n, blk, 2, m0, 8);
#define FMA2(a, r)                                                                             \
    do {                                                                                       \
        const __m512 bx = _mm512_set1_ps(x0[(r) * x_stride + k]);                              \
        a##0 = _mm512_fmadd_ps(bx, v0, a##0);                                                  \
        a##1 = _mm512_fmadd_ps(bx, v1, a##1);                                                  \
    } while (0)
    for (int64_t k = 0; k < K; k++) {
        if (ahead) _mm_prefetch(ahead + k * 64, _MM_HINT_T1);
        const __m512 v0 = _mm512_loadu_ps(w0 + 16 * k), v1 = _mm512_loadu_ps(w1 + 16 * k);
        FMA2(a, 0);
        FMA2(b, 1);
        FMA2(c, 2);
        FMA2(d, 3);
        FMA2(e, 4);
        FMA2(f, 5);
        FMA2(g, 6);
        FMA2(h, 7);
    }
#undef FMA2
#define STORE2(a, r)                                                                           \
    do {                                                                                       \
        fstore(L, a##0, blk * 16, out, m0 + (r), out_stride);                                  \
        if (nb > 1) fstore(L, a##1, (blk + 1) * 16, out, m0 + (r), out_stride);                \
    } while (0)
    STORE2(a, 0);
    STORE2(b, 1);
    STORE2(c, 2);
    STORE2(d, 3);
    STORE2(e, 4);
    STORE2(f, 5);
    STORE2(g, 6);
    STORE2(h, 7);
#undef STORE2
}

/* The float chain inside a parallel region, as qchain. Arguments as dlrm_fmlp_small's. */
static void fchain(int64_t rows, const dlrm_flayer *layers, int32_t n_layers, const float *x,
                   int64_t x_stride, float *scratch_a, float *scratch_b, int64_t scratch_stride,
                   float *out, int64_t out_stride) {
    const float *in = x;
    int64_t in_stride = x_stride;
    for (int32_t l = 0; l < n_layers; l++) {
        const dlrm_flayer *L = &layers[l];
        const int last = l + 1 == n_layers;
        float *dst = last ? out : (l % 2 == 0) ? scratch_a : scratch_b;
        const int64_t dst_stride = last ? out_stride : scratch_stride;
        if (rows < 8) /* groups of 4 blocks, 4-row tiles; else 2 blocks, 8-row tiles */
            LAYER_GROUPS(ftile4, ftile1, in, in_stride, rows, dst, dst_stride);
        else
            LAYER_GROUPS_OF(2, ftile8, 8, ftile1, in, in_stride, rows, dst, dst_stride);
        in = dst;
        in_stride = scratch_stride;
    }
}

static int fchain_ok(const dlrm_flayer *layers, int32_t n_layers, int64_t scratch_stride) {
    if (n_layers <= 0 || n_layers > MAX_LAYERS) return 0;
    for (int32_t l = 0; l < n_layers; l++) {
        if (l + 1 < n_layers && layers[l].n > scratch_stride) return 0;
        if (l > 0 && layers[l].k != layers[l - 1].n) return 0;
    }
    return 1;
}

/* Runs layers[0..n_layers) on float32 rows x [rows, k0]; intermediate rows alternate between
 * scratch_a / scratch_b ([rows, scratch_stride] each); the last layer writes out. Returns 0, -1
 * on bad arguments. */
int dlrm_fmlp_small(int64_t rows, const dlrm_flayer *layers, int32_t n_layers, const float *x,
                    int64_t x_stride, float *scratch_a, float *scratch_b, int64_t scratch_stride,
                    float *out, int64_t out_stride, int32_t threads) {
    if (rows <= 0 || !fchain_ok(layers, n_layers, scratch_stride)) return -1;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        set_stream_weights(fchain_bytes(layers, n_layers));
        fchain(rows, layers, n_layers, x, x_stride, scratch_a, scratch_b, scratch_stride, out,
               out_stride);
    }
    return 0;
}

/* Small-batch bfloat16 MLP (AVX512-BF16 vdpbf16ps), the amx_bfloat16 counterpart of
 * dlrm_fmlp_small: bf16 activations and weights, float32 sums, as oneDNN's bf16 linears.
 * Layer l: y[m, n] = post(sum_k x[m, k] * w[n, k] + bias[n]), then (out): 0 rounded to bf16 (the
 * next layer's input), 1 rounded to bf16 and stored widened to float32 (the bottom MLP's output,
 * which the interaction reads as float32), 2 float32 as summed (the head: a bf16 sigmoid would
 * put the probabilities on a 2^-8 grid). Weights packed as [N/16][ceil(K/2)][16][2] (N and K
 * padded with zero weights): one 64-byte load holds 2 k's of 16 outputs, multiplied by a
 * broadcast pair of inputs; an odd K's last input goes in alone (its pair's other half 0), so
 * rows need no padding. Tiles as the fp32 kernel's. */

typedef struct {
    int64_t k, n;
    int64_t kp; /* pairs of k per 16-output block in w: K/2 rounded up to a multiple of 16 */
    const uint16_t *w;
    const float *bias;
    int32_t post; /* 0 none, 1 relu, 2 sigmoid */
    int32_t out;  /* 0 bf16, 1 bf16 widened to float32, 2 float32 */
} dlrm_blayer;

static inline BF16 __m512bh pair_at(const uint16_t *x, int64_t j) {
    uint32_t v;
    memcpy(&v, x + 2 * j, 4);
    return (__m512bh)_mm512_set1_epi32((int32_t)v);
}

static inline BF16 __m512bh last_alone(const uint16_t *x, int64_t k) {
    return (__m512bh)_mm512_set1_epi32((int32_t)x[k - 1]);
}

static inline BF16 void bstore(const dlrm_blayer *L, __m512 acc, int64_t n0, void *out, int64_t m,
                               int64_t out_stride) {
    const __mmask16 keep = keep_of(L->n, n0);
    __m512 y = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(keep, L->bias + n0));
    if (L->post == 1) {
        y = _mm512_max_ps(y, _mm512_setzero_ps());
    } else if (L->post == 2) { /* before any rounding, as a bf16 linear's fused sigmoid */
        float tmp[16];
        store_sigmoid(tmp, y, keep);
        y = _mm512_maskz_loadu_ps(keep, tmp);
    }
    if (L->out == 0) {
        _mm256_mask_storeu_epi16((uint16_t *)out + m * out_stride + n0, keep,
                                 (__m256i)_mm512_cvtneps_pbh(y));
        return;
    }
    if (L->out == 1) {
        const __m256i h = (__m256i)_mm512_cvtneps_pbh(y);
        y = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    _mm512_mask_storeu_ps((float *)out + m * out_stride + n0, keep, y);
}

#define BDP4(a, bx) \
    a##0 = _mm512_dpbf16_ps(a##0, v0, bx); a##1 = _mm512_dpbf16_ps(a##1, v1, bx); \
    a##2 = _mm512_dpbf16_ps(a##2, v2, bx); a##3 = _mm512_dpbf16_ps(a##3, v3, bx)
#define BLOAD4(j) \
    const __m512bh v0 = (__m512bh)_mm512_loadu_si512(w0 + 32 * (j)); \
    const __m512bh v1 = (__m512bh)_mm512_loadu_si512(w1 + 32 * (j)); \
    const __m512bh v2 = (__m512bh)_mm512_loadu_si512(w2 + 32 * (j)); \
    const __m512bh v3 = (__m512bh)_mm512_loadu_si512(w3 + 32 * (j))
#define BSTORE4(a, row) STORE_BLOCKS(bstore, a, row)
#define BBLOCK_POINTERS \
    const int64_t K = L->k, P = K / 2, KP = L->kp; \
    const uint16_t *w0 = L->w + blk * KP * 32; \
    const uint16_t *w1 = w0 + (nb > 1 ? KP * 32 : 0), *w2 = w0 + (nb > 2 ? 2 * KP * 32 : 0); \
    const uint16_t *w3 = w0 + (nb > 3 ? 3 * KP * 32 : 0)

static BF16 void btile4(const dlrm_blayer *L, int nb, int64_t blk, const uint16_t *x,
                        int64_t x_stride, int64_t m0, void *out, int64_t out_stride) {
    BBLOCK_POINTERS;
    const uint16_t *x0 = x + m0 * x_stride, *x1 = x0 + x_stride, *x2 = x1 + x_stride;
    const uint16_t *x3 = x2 + x_stride;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0;
    __m512 b3 = a0, c0 = a0, c1 = a0, c2 = a0, c3 = a0, d0 = a0, d1 = a0, d2 = a0, d3 = a0;
    for (int64_t j = 0; j < P; j++) {
        BLOAD4(j);
        __m512bh bx = pair_at(x0, j);
        BDP4(a, bx);
        bx = pair_at(x1, j);
        BDP4(b, bx);
        bx = pair_at(x2, j);
        BDP4(c, bx);
        bx = pair_at(x3, j);
        BDP4(d, bx);
    }
    if (K % 2) {
        BLOAD4(P);
        __m512bh bx = last_alone(x0, K);
        BDP4(a, bx);
        bx = last_alone(x1, K);
        BDP4(b, bx);
        bx = last_alone(x2, K);
        BDP4(c, bx);
        bx = last_alone(x3, K);
        BDP4(d, bx);
    }
    BSTORE4(a, m0);
    BSTORE4(b, m0 + 1);
    BSTORE4(c, m0 + 2);
    BSTORE4(d, m0 + 3);
}

static BF16 void btile1(const dlrm_blayer *L, int nb, int64_t blk, const uint16_t *x,
                        int64_t x_stride, int64_t m0, void *out, int64_t out_stride) {
    BBLOCK_POINTERS;
    const uint16_t *x0 = x + m0 * x_stride;
    /* two chains per block, as ftile1 */
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, e0 = a0, e1 = a0, e2 = a0;
    __m512 e3 = a0;
    int64_t j = 0;
    for (; j + 2 <= P; j += 2) {
        {
            BLOAD4(j);
            const __m512bh bx = pair_at(x0, j);
            BDP4(a, bx);
        }
        {
            BLOAD4(j + 1);
            const __m512bh bx = pair_at(x0, j + 1);
            BDP4(e, bx);
        }
    }
    if (j < P) {
        BLOAD4(j);
        const __m512bh bx = pair_at(x0, j);
        BDP4(a, bx);
    }
    if (K % 2) {
        BLOAD4(P);
        const __m512bh bx = last_alone(x0, K);
        BDP4(e, bx);
    }
    a0 = _mm512_add_ps(a0, e0);
    a1 = _mm512_add_ps(a1, e1);
    a2 = _mm512_add_ps(a2, e2);
    a3 = _mm512_add_ps(a3, e3);
    BSTORE4(a, m0);
}

/* The bf16 chain inside a parallel region, as fchain; intermediate rows are bf16 in scratch. */
static BF16 void bchain(int64_t rows, const dlrm_blayer *layers, int32_t n_layers,
                        const uint16_t *x, int64_t x_stride, uint16_t *scratch_a,
                        uint16_t *scratch_b, int64_t scratch_stride, void *out,
                        int64_t out_stride) {
    const uint16_t *in = x;
    int64_t in_stride = x_stride;
    for (int32_t l = 0; l < n_layers; l++) {
        const dlrm_blayer *L = &layers[l];
        const int last = l + 1 == n_layers;
        void *dst = last ? out : (l % 2 == 0) ? scratch_a : scratch_b;
        const int64_t dst_stride = last ? out_stride : scratch_stride;
        LAYER_GROUPS(btile4, btile1, in, in_stride, rows, dst, dst_stride);
        in = (const uint16_t *)dst;
        in_stride = scratch_stride;
    }
}

/* bchain's group of nb <= 4 blocks of 16 outputs for all rows on AMX (TDPBF16PS; see
 * tile_rows_amx), then bstore per row. */
static AMX void bgroup_amx(const dlrm_blayer *L, int nb, int64_t blk, const uint16_t *x,
                           int64_t x_stride, int64_t rows, void *out, int64_t out_stride) {
    float c[16 * 64] __attribute__((aligned(64)));
    const uint8_t *w = (const uint8_t *)(L->w + blk * L->kp * 32);
    for (int64_t m0 = 0; m0 < rows; m0 += 16) {
        tile_rows_amx(1, w, L->kp * 64, (L->k + 31) / 32, nb, (const uint8_t *)(x + m0 * x_stride),
                      x_stride * 2, c);
        for (int64_t m = m0; m < rows && m < m0 + 16; m++)
            for (int b = 0; b < nb; b++)
                bstore(L, _mm512_load_ps(c + (m - m0) * 64 + b * 16), (blk + b) * 16, out, m,
                       out_stride);
    }
}

/* bchain on AMX tiles (amx_bfloat16's small batches): the same layers, packing and rounding;
 * the groups of 64 outputs shared out as bchain's. */
static AMX void bchain_amx(int64_t rows, const dlrm_blayer *layers, int32_t n_layers,
                           const uint16_t *x, int64_t x_stride, uint16_t *scratch_a,
                           uint16_t *scratch_b, int64_t scratch_stride, void *out,
                           int64_t out_stride) {
    amx_configure();
    const uint16_t *in = x;
    int64_t in_stride = x_stride;
    for (int32_t l = 0; l < n_layers; l++) {
        const dlrm_blayer *L = &layers[l];
        const int last = l + 1 == n_layers;
        void *dst = last ? out : (l % 2 == 0) ? scratch_a : scratch_b;
        const int64_t dst_stride = last ? out_stride : scratch_stride;
        const int64_t blocks = (L->n + 15) / 16, groups = (blocks + 3) / 4;
#pragma omp for schedule(static)
        for (int64_t g = 0; g < groups; g++) {
            const int nb = blocks - 4 * g < 4 ? (int)(blocks - 4 * g) : 4;
            bgroup_amx(L, nb, 4 * g, in, in_stride, rows, dst, dst_stride);
        }
        in = (const uint16_t *)dst;
        in_stride = scratch_stride;
    }
    amx_release();
}

/* Many rows: the chains' rows split between the threads in 32-row blocks, each thread running
 * every layer on its own rows (no barrier between layers), 2 x 2 tiles per block: 32 rows (A
 * tiles 4, 5) x 32 outputs (B tiles 6, 7), four TDPBUSD / TDPBF16PS per 64-byte k chunk for four
 * tile loads (tile_rows_amx: five loads per four), the rows' 32 x K bytes staying in L1 across
 * the output blocks. The epilogue (store_rows: measured to cost as much as the sums themselves
 * when run after them) of one block runs a few rows per chunk while the tiles of the next
 * compute. The same layers, packing, sums and rounding as the other chains. */

/* The epilogue of rows r0..r1 of a 32 x 32 block of sums c (output blocks blk, blk + 1). The
 * common cases (an int8 layer with uint8 or float32 output, a bf16 layer with bf16 output; no
 * sigmoid) hold the two blocks' constants in registers across the rows: qstore / bstore reload
 * them and the layer's fields for every 16 outputs (their byte and bf16 stores may alias the
 * layer), and the epilogue cost more than the tiles' sums on the top MLP's shapes. Same
 * arithmetic as qstore / bstore, so the same codes and bits. */
static inline AMX void store_rows(int bf16, const void *layer, const int32_t *c, int64_t blk,
                                  int two, int64_t m, int64_t r0, int64_t r1, void *out,
                                  int64_t out_stride) {
    const int64_t n0 = blk * 16;
    const dlrm_qlayer *ql = (const dlrm_qlayer *)layer; /* the one bf16 says it is */
    const dlrm_blayer *bl = (const dlrm_blayer *)layer;
    if (!bf16 && (ql->out_u8 || ql->post != 2)) {
        const dlrm_qlayer *L = ql;
        const __mmask16 k0 = keep_of(L->n, n0), k1 = two ? keep_of(L->n, n0 + 16) : 0;
        const __m512i zc0 = _mm512_maskz_loadu_epi32(k0, L->zc + n0);
        const __m512i zc1 = _mm512_maskz_loadu_epi32(k1, L->zc + n0 + 16);
        const __m512 mul0 = _mm512_maskz_loadu_ps(k0, L->mul + n0);
        const __m512 mul1 = _mm512_maskz_loadu_ps(k1, L->mul + n0 + 16);
        const __m512 add0 = _mm512_maskz_loadu_ps(k0, L->add + n0);
        const __m512 add1 = _mm512_maskz_loadu_ps(k1, L->add + n0 + 16);
#define AFFINE(v, zc, mul, add) \
    _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(v, zc)), mul, add)
        if (L->out_u8) {
            /* qstore's max(round(min(y, 255)), lo) as usat(round(max(lo, y))): lo is an integer,
             * and y >= 2^31 or NaN convert to 0x80000000, which saturates to 255 as min(y, 255)
             * did */
            const __m512 lo = _mm512_set1_ps((float)L->lo);
            uint8_t *o = (uint8_t *)out + n0;
#define REQUANT(v, zc, mul, add)                                               \
    _mm512_cvt_roundps_epi32(_mm512_max_ps(lo, AFFINE(v, zc, mul, add)),       \
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
            for (int64_t r = r0; r < r1; r++) {
                uint8_t *dst = o + (m + r) * out_stride;
                _mm512_mask_cvtusepi32_storeu_epi8(dst, k0, REQUANT(
                    _mm512_load_si512(c + r * 32), zc0, mul0, add0));
                if (two)
                    _mm512_mask_cvtusepi32_storeu_epi8(dst + 16, k1, REQUANT(
                        _mm512_load_si512(c + r * 32 + 16), zc1, mul1, add1));
            }
#undef REQUANT
        } else { /* float32 output (the bottom's last layer), no sigmoid */
            const int relu = L->post == 1;
            float *o = (float *)out + n0;
#define DEQUANT(v, zc, mul, add)                                                          \
    (relu ? _mm512_max_ps(AFFINE(v, zc, mul, add), _mm512_setzero_ps())                   \
          : AFFINE(v, zc, mul, add))
            for (int64_t r = r0; r < r1; r++) {
                float *dst = o + (m + r) * out_stride;
                _mm512_mask_storeu_ps(dst, k0, DEQUANT(_mm512_load_si512(c + r * 32), zc0,
                                                       mul0, add0));
                if (two)
                    _mm512_mask_storeu_ps(dst + 16, k1, DEQUANT(
                        _mm512_load_si512(c + r * 32 + 16), zc1, mul1, add1));
            }
#undef DEQUANT
        }
#undef AFFINE
        return;
    }
    if (bf16 && bl->out == 0 && bl->post != 2) {
        const dlrm_blayer *L = bl;
        const __mmask16 k0 = keep_of(L->n, n0), k1 = two ? keep_of(L->n, n0 + 16) : 0;
        const __m512 b0 = _mm512_maskz_loadu_ps(k0, L->bias + n0);
        const __m512 b1 = _mm512_maskz_loadu_ps(k1, L->bias + n0 + 16);
        const int relu = L->post == 1;
        uint16_t *o = (uint16_t *)out + n0;
        const float *cf = (const float *)c;
#define BIAS_POST(v, b) (relu ? _mm512_max_ps(_mm512_add_ps(v, b), _mm512_setzero_ps()) \
                              : _mm512_add_ps(v, b))
        for (int64_t r = r0; r < r1; r++) {
            uint16_t *dst = o + (m + r) * out_stride;
            _mm256_mask_storeu_epi16(dst, k0, (__m256i)_mm512_cvtneps_pbh(
                BIAS_POST(_mm512_load_ps(cf + r * 32), b0)));
            if (two)
                _mm256_mask_storeu_epi16(dst + 16, k1, (__m256i)_mm512_cvtneps_pbh(
                    BIAS_POST(_mm512_load_ps(cf + r * 32 + 16), b1)));
        }
#undef BIAS_POST
        return;
    }
    for (int64_t r = r0; r < r1; r++)
        for (int b = 0; b <= two; b++) {
            const int32_t *v = c + r * 32 + b * 16;
            if (bf16)
                bstore(bl, _mm512_load_ps((const float *)v), (blk + b) * 16, out, m + r,
                       out_stride);
            else
                qstore(ql, _mm512_load_si512(v), (blk + b) * 16, out, m + r, out_stride);
        }
}

/* One layer (a dlrm_qlayer, or a dlrm_blayer with bf16) on rows m0..m1: x holds rows from
 * x_first on (x_bytes apart, readable for whole 32-row blocks and 64-byte chunks), out from
 * out_first on; w: its packed weights, the 16-output blocks block_bytes apart, each 1 KB per
 * chunk. The weights' tiles load with the streaming hint (TILELOADDT1): each is read once per 32
 * rows, and kept out of L1 they leave it to the rows, which all output blocks read again (at K =
 * 1024 rows and weights together overflowed L1; the top MLP at 2048 rows: 2.1 -> 1.7 ms). Tiles
 * are not renamed: a load into a tile waits for the last product reading it, so each input tile
 * of the next chunk is loaded right after its last reader, not at the top of the next chunk
 * (amx_int8 forward +3%, measured alternating in one process). */
static AMX void layer_rows_amx(int bf16, const void *layer, const uint8_t *w, int64_t block_bytes,
                               int64_t chunks, int64_t n, const uint8_t *x, int64_t x_bytes,
                               int64_t x_first, int64_t m0, int64_t m1, void *out,
                               int64_t out_stride, int64_t out_first) {
    int32_t c[2][32 * 32] __attribute__((aligned(64)));
    const int64_t blocks = (n + 15) / 16;
#define PRODUCT(acc, a, b)                   \
    do {                                     \
        if (bf16) _tile_dpbf16ps(acc, a, b); \
        else _tile_dpbusd(acc, a, b);        \
    } while (0)
    for (int64_t m = m0; m < m1; m += 32) {
        const uint8_t *xa = x + (m - x_first) * x_bytes, *xb = xa + 16 * x_bytes;
        const int64_t valid = m1 - m < 32 ? m1 - m : 32, out_m = m - out_first;
        const int64_t per_chunk = (valid + chunks - 1) / chunks;
        int64_t prev = -1;
        int prev_two = 0;
        for (int64_t blk = 0; blk < blocks; blk += 2) {
            const int two = blk + 1 < blocks;
            const int32_t *done = c[((blk / 2) & 1) ^ 1];
            const uint8_t *w0 = w + blk * block_bytes, *w1 = w0 + block_bytes;
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            _tile_stream_loadd(6, w0, 64);
            _tile_loadd(4, xa, x_bytes);
            _tile_loadd(5, xb, x_bytes);
            if (two) _tile_stream_loadd(7, w1, 64);
            for (int64_t kc = 0; kc < chunks; kc++) {
                const int more = kc + 1 < chunks;
                PRODUCT(0, 4, 6);
                PRODUCT(2, 5, 6);
                if (more) _tile_stream_loadd(6, w0 + (kc + 1) * 1024, 64);
                if (two) PRODUCT(1, 4, 7);
                if (more) _tile_loadd(4, xa + (kc + 1) * 64, x_bytes);
                if (two) PRODUCT(3, 5, 7);
                if (more) {
                    _tile_loadd(5, xb + (kc + 1) * 64, x_bytes);
                    if (two) _tile_stream_loadd(7, w1 + (kc + 1) * 1024, 64);
                }
                if (prev >= 0) { /* the previous block's epilogue, while the tiles compute */
                    const int64_t r0 = kc * per_chunk;
                    const int64_t r1 = r0 + per_chunk < valid ? r0 + per_chunk : valid;
                    if (r0 < r1)
                        store_rows(bf16, layer, done, prev, prev_two, out_m, r0, r1, out,
                                   out_stride);
                }
            }
            int32_t *cc = c[(blk / 2) & 1];
            _tile_stored(0, cc, 128);
            _tile_stored(1, cc + 16, 128);
            _tile_stored(2, cc + 16 * 32, 128);
            _tile_stored(3, cc + 16 * 32 + 16, 128);
            prev = blk;
            prev_two = two;
        }
        store_rows(bf16, layer, c[(prev / 2) & 1], prev, prev_two, out_m, 0, valid, out,
                   out_stride);
    }
#undef PRODUCT
}

/* Layer groups: consecutive layers whose packed weights together fit group_bytes run on
 * GROUP_ROWS rows at a time, all layers of the group before the next rows, their intermediate
 * rows in two small per-thread buffers (L1 / L2) instead of the rows x width scratch (written
 * out to L3 and read back by the next layer). A layer alone in its group runs on all the
 * thread's rows at once: a group's weights must stay in L2 across its row blocks, and the top
 * MLP's first two layers together (1.5 MB in int8) did not (slower). amx_int8 forward,
 * alternating in one process: groups up to 300 KB +1.2%, 700 KB +2.1%, 1.5 MB +0%; 32, 64
 * or 128 rows alike. */
#define GROUP_ROWS 64
static int64_t group_bytes = 700 * 1024;

/* Bytes of one thread's group buffers for chains of layers at most width elements wide. */
static int64_t group_buffer_bytes(int64_t width) { return 2 * GROUP_ROWS * width * 2 + 64; }

/* Sets the weight budget of a layer group (0: every layer alone) and returns the previous one:
 * a tuning and testing knob (the results do not depend on it). */
int64_t dlrm_set_group_bytes(int64_t bytes) {
    const int64_t previous = group_bytes;
    if (bytes >= 0) group_bytes = bytes;
    return previous;
}

typedef struct {
    const void *layer;
    const uint8_t *w;
    int64_t block_bytes, chunks, n, weight_bytes;
} tile_layer;

static tile_layer tile_layer_of(int bf16, const void *layers, int32_t l) {
    tile_layer t;
    if (bf16) {
        const dlrm_blayer *L = (const dlrm_blayer *)layers + l;
        t.layer = L, t.w = (const uint8_t *)L->w, t.block_bytes = L->kp * 64;
        t.chunks = (L->k + 31) / 32, t.n = L->n;
    } else {
        const dlrm_qlayer *L = (const dlrm_qlayer *)layers + l;
        t.layer = L, t.w = (const uint8_t *)L->w, t.block_bytes = L->kw * 64;
        t.chunks = (L->k + 63) / 64, t.n = L->n;
    }
    t.weight_bytes = (t.n + 15) / 16 * t.block_bytes;
    return t;
}

/* A chain (dlrm_qlayer or, with bf16, dlrm_blayer layers) on this thread's rows of x: uint8 or
 * bf16 rows x_stride elements apart, or (int8, x_float) float32 rows quantized first, the
 * thread's own. Between layer groups the rows alternate between scratch_a / scratch_b
 * (scratch_stride elements); inside a group they go through group, this thread's
 * group_buffer_bytes(scratch_stride) (NULL: every layer alone). Called inside a parallel region;
 * ends with a barrier (all rows written). */
static AMX void chain_rows_amx(int bf16, int64_t rows, const void *layers, int32_t n_layers,
                               const void *x, int64_t x_stride, int32_t x_float,
                               float x_inv_scale, float x_zero_point, void *scratch_a,
                               void *scratch_b, int64_t scratch_stride, void *group,
                               void *out, int64_t out_stride) {
    const int nt = omp_get_num_threads(), id = omp_get_thread_num();
    const int64_t blocks = (rows + 31) / 32, esize = bf16 ? 2 : 1;
    const int64_t m0 = blocks * id / nt * 32, b1 = blocks * (id + 1) / nt * 32;
    const int64_t m1 = b1 < rows ? b1 : rows;
    if (m0 < m1) {
        const uint8_t *in = (const uint8_t *)x;
        int64_t in_bytes = x_stride * esize;
        if (x_float && !bf16) {
            const dlrm_qlayer *first = (const dlrm_qlayer *)layers;
            for (int64_t m = m0; m < m1; m++)
                quantize_to((const float *)x + m * x_stride, first->k, x_inv_scale,
                            x_zero_point, (uint8_t *)scratch_b + m * scratch_stride);
            in = (const uint8_t *)scratch_b;
            in_bytes = scratch_stride;
        }
        const int64_t budget = group ? group_bytes : 0, small_bytes = scratch_stride * esize;
        uint8_t *small[2] = {(uint8_t *)group, (uint8_t *)group + GROUP_ROWS * small_bytes};
        amx_configure();
        int parity = 0;
        for (int32_t first = 0, end; first < n_layers; first = end, parity ^= 1) {
            int64_t bytes = tile_layer_of(bf16, layers, first).weight_bytes;
            for (end = first + 1; end < n_layers; end++) {
                const int64_t more = tile_layer_of(bf16, layers, end).weight_bytes;
                if (bytes + more > budget) break;
                bytes += more;
            }
            const int last_group = end == n_layers;
            void *dst = last_group ? out : parity == 0 ? scratch_a : scratch_b;
            const int64_t dst_stride = last_group ? out_stride : scratch_stride;
            const int64_t step = end - first == 1 ? m1 - m0 : GROUP_ROWS;
            for (int64_t mc = m0; mc < m1; mc += step) {
                const int64_t mc1 = mc + step < m1 ? mc + step : m1;
                const uint8_t *src = in;
                int64_t src_bytes = in_bytes, src_first = 0;
                for (int32_t l = first; l < end; l++) {
                    const tile_layer t = tile_layer_of(bf16, layers, l);
                    const int inner = l + 1 < end;
                    uint8_t *to = inner ? small[(l - first) & 1] : (uint8_t *)dst;
                    layer_rows_amx(bf16, t.layer, t.w, t.block_bytes, t.chunks, t.n, src,
                                   src_bytes, src_first, mc, mc1, to,
                                   inner ? scratch_stride : dst_stride, inner ? mc : 0);
                    src = to;
                    src_bytes = small_bytes;
                    src_first = mc;
                }
            }
            in = (const uint8_t *)dst;
            in_bytes = scratch_stride * esize;
        }
        amx_release();
    }
#pragma omp barrier
}

/* One layer (a dlrm_qlayer, or with bf16 a dlrm_blayer) on rows of x through chain_rows_amx:
 * the one-call path's MLP kernel as a GEMM (benchmarks/harness_peaks.py). rows a multiple of 32
 * and x's rows at least as wide as the k chunks the tiles read. -1 when they are not or AMX tiles
 * are not usable. */
int dlrm_layer_tiles(int32_t bf16, const void *layer, int64_t rows, const void *x,
                     int64_t x_stride, void *out, int64_t out_stride, int32_t threads) {
    const int64_t k = bf16 ? ((const dlrm_blayer *)layer)->k : ((const dlrm_qlayer *)layer)->k;
    const int64_t chunk_bytes = bf16 ? (k + 31) / 32 * 64 : (k + 63) / 64 * 64;
    if (rows <= 0 || rows % 32 || chunk_bytes > x_stride * (bf16 ? 2 : 1) || !dlrm_amx_ready())
        return -1;
#pragma omp parallel num_threads(threads) if (threads > 1)
    chain_rows_amx(bf16, rows, layer, 1, x, x_stride, 0, 1.0f, 0.0f, NULL, NULL, 0, NULL, out,
                   out_stride);
    return 0;
}

/* Inner layers emit bf16, the last one float32 (out 1 or 2). */
static int bchain_ok(const dlrm_blayer *layers, int32_t n_layers, int64_t scratch_stride) {
    if (n_layers <= 0 || n_layers > MAX_LAYERS) return 0;
    for (int32_t l = 0; l < n_layers; l++) {
        const int last = l + 1 == n_layers;
        if (last ? layers[l].out == 0 : (layers[l].out != 0 || layers[l].n > scratch_stride))
            return 0;
        if (layers[l].out < 0 || layers[l].out > 2) return 0;
        if (l > 0 && layers[l].k != layers[l - 1].n) return 0;
    }
    return 1;
}

/* float32 rows -> bfloat16 rows (nearest even), shared out by an orphaned omp for. */
static void rows_to_bf16(int64_t rows, int64_t k, const float *x, int64_t x_stride, uint16_t *dst) {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < rows; m++) narrow_to_bf16(x + m * x_stride, k, dst + m * k);
}

/* Runs layers[0..n_layers) on bf16 rows x [rows, k0], or on float32 rows (x_float) rounded to
 * bf16 first into scratch_x ([rows, k0]); intermediate rows alternate between scratch_a /
 * scratch_b ([rows, scratch_stride] bf16 each); the last layer writes float32 out. Returns 0, -1
 * on bad arguments. */
int dlrm_bmlp_small(int64_t rows, const dlrm_blayer *layers, int32_t n_layers, const void *x,
                    int64_t x_stride, int32_t x_float, uint16_t *scratch_a, uint16_t *scratch_b,
                    uint16_t *scratch_x, int64_t scratch_stride, float *out, int64_t out_stride,
                    int32_t threads) {
    if (rows <= 0 || !bchain_ok(layers, n_layers, scratch_stride)) return -1;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        const uint16_t *in = (const uint16_t *)x;
        int64_t in_stride = x_stride;
        if (x_float) {
            rows_to_bf16(rows, layers[0].k, (const float *)x, x_stride, scratch_x);
            in = scratch_x;
            in_stride = layers[0].k;
        }
        bchain(rows, layers, n_layers, in, in_stride, scratch_a, scratch_b, scratch_stride, out,
               out_stride);
    }
    return 0;
}

/* A whole forward in one call and one parallel region: bottom MLP, gather + interaction, top MLP
 * (+ sigmoid), float32 [rows, 1] probabilities in out. Instead of three calls from Python, each
 * with its own region: at batch 1 their fixed costs were ~1/4 of the time (on AMX tiles, with the
 * rows split between threads, it also beats oneDNN's linears for big batches). mlp_kind 0:
 * dlrm_flayer chains, float32 interaction; 1: dlrm_qlayer chains (the bottom
 * quantizes the dense input), the interaction quantized for the top's uint8 input; 2:
 * dlrm_blayer chains (the dense input rounded to bf16, the bottom's output bf16 values widened to
 * float32, the interaction rounded to bf16 for the top). */
typedef struct {
    int32_t mlp_kind, n_bottom, n_top;
    const void *bottom, *top;
    float x_inv_scale, x_zp, z_inv_scale, z_zp; /* int8: dense input / top input qparams */
    int64_t width;                              /* widest bottom / top layer */
    int64_t num_tables, dim, row_bytes;
    int32_t table_kind, dots; /* dots: as dlrm_gather_interact's */
    const int64_t *table_addr, *table_rows;
    int32_t amx; /* the chains on AMX tiles: mlp_kind 1 qchain_amx, 2 bchain_amx; from
                  * AMX_ROW_SPLIT_MIN_ROWS rows per thread chain_rows_amx for both */
} dlrm_small_model;

static int64_t align64(int64_t bytes) { return (bytes + 63) / 64 * 64; }

/* The interaction rows' stride in elements: whole 64-element groups, so that every row starts
 * on a cache line (479-wide rows made half the top MLP's A-tile rows straddle two lines). */
static int64_t z_stride(int64_t width) { return (width + 63) / 64 * 64; }

/* Bytes of scratch dlrm_forward_small needs for rows on threads threads. */
int64_t dlrm_small_scratch_bytes(const dlrm_small_model *m, int64_t rows, int32_t threads) {
    const int64_t n = m->num_tables + 1, width = m->dim + n * (n - 1) / 2;
    rows = (rows + 31) / 32 * 32 + 1; /* the AMX chains read whole 16- or 32-row blocks, and
                                       * whole 32- or 64-byte k chunks */
    return 2 * align64(rows * m->width * 4) + align64(rows * m->dim * 4)
           + align64(rows * z_stride(width) * 4)
           + (threads > 0 ? threads : 1) * align64(group_buffer_bytes(m->width));
}

/* Returns 0; 1 when a bag holds other than one id (offsets[t][b] != b: nothing was computed, the
 * caller takes its general path); -1 bad arguments; -2 an id outside its table. */
int dlrm_forward_small(const dlrm_small_model *m, int64_t rows, const float *dense,
                       int64_t dense_stride, const int64_t *offsets, int64_t off_stride_t,
                       int64_t off_stride_b, const int64_t *ids, int64_t ids_stride_t,
                       int64_t ids_stride_b, char *scratch, float *out, int32_t threads) {
    const int64_t n = m->num_tables + 1, zwidth = m->dim + n * (n - 1) / 2;
    const int q8 = m->mlp_kind == 1, bf = m->mlp_kind == 2;
    if (rows <= 0 || n > MAX_ROWS || m->dim > MAX_DIM || m->dim % 16 || m->table_kind < 0
        || m->table_kind > 2 || m->mlp_kind < 0 || m->mlp_kind > 2)
        return -1;
    if (q8 ? !(qchain_ok(m->bottom, m->n_bottom, 1, m->width)
               && qchain_ok(m->top, m->n_top, 0, m->width))
        : bf ? !(bchain_ok(m->bottom, m->n_bottom, m->width)
                 && bchain_ok(m->top, m->n_top, m->width))
           : !(fchain_ok(m->bottom, m->n_bottom, m->width)
               && fchain_ok(m->top, m->n_top, m->width)))
        return -1;
#define CHAIN_SHAPE(type)                                                               \
    (((const type *)m->bottom)[m->n_bottom - 1].n == m->dim                             \
     && ((const type *)m->top)[0].k == zwidth && ((const type *)m->top)[m->n_top - 1].n == 1)
    if (q8 ? !CHAIN_SHAPE(dlrm_qlayer)
        : bf ? !CHAIN_SHAPE(dlrm_blayer) : !CHAIN_SHAPE(dlrm_flayer))
        return -1;
    if (q8 && (((const dlrm_qlayer *)m->bottom)[m->n_bottom - 1].out_u8
               || ((const dlrm_qlayer *)m->top)[m->n_top - 1].out_u8))
        return -1; /* the bottom's output and the probabilities are float32 */
    if (bf && (((const dlrm_blayer *)m->bottom)[m->n_bottom - 1].out != 1
               || ((const dlrm_blayer *)m->top)[m->n_top - 1].out != 2))
        return -1; /* the bottom's output: bf16 values as float32; the probabilities float32 */
#undef CHAIN_SHAPE
    const int64_t padded = (rows + 31) / 32 * 32 + 1; /* as dlrm_small_scratch_bytes */
    char *a = scratch, *b = a + align64(padded * m->width * 4);
    float *x = (float *)(b + align64(padded * m->width * 4));
    void *z = (char *)x + align64(padded * m->dim * 4);
    const int64_t zs = z_stride(zwidth);
    char *groups = (char *)z + align64(padded * zs * 4); /* a group_buffer_bytes per thread */
    /* the chains on AMX tiles from 8 rows: below, a 16-row tile is mostly padding and the
     * AVX-512 chains were as fast or faster (amx_int8, 2 threads, us: 1 row 42 against 59,
     * 4 rows 62 / 66, 8 rows 93 / 74, 16 rows 160 / 89) */
    const int tiles = m->amx && rows >= AMX_CHAIN_MIN_ROWS && dlrm_amx_ready();
    const int bamx = bf && tiles, qamx = q8 && tiles;
    /* many rows: the chains' rows split between the threads (chain_rows_amx) */
    const int row_split = (qamx || bamx) && rows >= AMX_ROW_SPLIT_MIN_ROWS * threads;
    int bad_id = 0, multi_id = 0;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        /* one id per bag, checked by all threads (a batch's offsets are cold: 2048 rows, 26
         * tables: 426 KB, ~60 us on one thread) */
#pragma omp for schedule(static) reduction(| : multi_id)
        for (int64_t t = 0; t < m->num_tables; t++)
            multi_id |= !table_one_hot(offsets + t * off_stride_t, off_stride_b, rows);
        if (multi_id) goto done; /* every thread, after the loop's barrier: the caller's path */
        if (q8 && !tiles)
            set_stream_weights(qchain_bytes(m->bottom, m->n_bottom)
                               + qchain_bytes(m->top, m->n_top));
        else if (!q8 && !bf)
            set_stream_weights(fchain_bytes(m->bottom, m->n_bottom)
                               + fchain_bytes(m->top, m->n_top));
        void *group = groups + omp_get_thread_num() * align64(group_buffer_bytes(m->width));
        if (q8 && row_split) {
            chain_rows_amx(0, rows, m->bottom, m->n_bottom, dense, dense_stride, 1,
                           m->x_inv_scale, m->x_zp, a, b, m->width, group, x, m->dim);
        } else if (q8) {
            (qamx ? qchain_amx : qchain)(rows, m->bottom, m->n_bottom, dense, dense_stride, 1,
                                         m->x_inv_scale, m->x_zp, (uint8_t *)a, (uint8_t *)b,
                                         m->width, x, m->dim);
        } else if (bf) { /* the dense rows in bf16 go where z will be (free until the gather) */
            const int64_t k0 = ((const dlrm_blayer *)m->bottom)[0].k;
            rows_to_bf16(rows, k0, dense, dense_stride, (uint16_t *)z);
            if (row_split)
                chain_rows_amx(1, rows, m->bottom, m->n_bottom, z, k0, 0, 1.0f, 0.0f, a, b,
                               m->width, group, x, m->dim);
            else
                (bamx ? bchain_amx : bchain)(rows, m->bottom, m->n_bottom, (const uint16_t *)z,
                                             k0, (uint16_t *)a, (uint16_t *)b, m->width, x,
                                             m->dim);
        } else {
            fchain(rows, m->bottom, m->n_bottom, dense, dense_stride, (float *)a, (float *)b,
                   m->width, x, m->dim);
        }
        gather_rows(rows, m->num_tables, m->dim, x, m->dim, ids, ids_stride_t, ids_stride_b,
                    m->table_addr, m->table_rows, m->row_bytes, m->table_kind, z, zs,
                    q8 ? 1 : bf ? 2 : 0, m->z_inv_scale, m->z_zp, m->dots, &bad_id);

        if (row_split) {
            chain_rows_amx(bf, rows, m->top, m->n_top, z, zs, 0, 1.0f, 0.0f, a, b, m->width,
                           group, out, 1);
        } else if (q8) {
            (qamx ? qchain_amx : qchain)(rows, m->top, m->n_top, z, zs, 0, 1.0f, 0.0f,
                                         (uint8_t *)a, (uint8_t *)b, m->width, out, 1);
        } else if (bf) {
            (bamx ? bchain_amx : bchain)(rows, m->top, m->n_top, (const uint16_t *)z, zs,
                                         (uint16_t *)a, (uint16_t *)b, m->width, out, 1);
        } else {
            fchain(rows, m->top, m->n_top, z, zs, (float *)a, (float *)b, m->width, out, 1);
        }
    done:;
    }
    return multi_id ? 1 : bad_id ? -2 : 0;
}
