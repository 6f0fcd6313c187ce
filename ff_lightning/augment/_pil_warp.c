/* Native CPU affine warps with Pillow's arithmetic, for the PIL-semantics kernels (timm, DeepAA).
 *
 * Built and loaded like _native.c (see ff_lightning/augment/_pil_native.py). Images are
 * contiguous uint8 [B, C, H, W] (planar); `rows` lists the n batch rows a call touches (NULL:
 * rows 0..n-1); `dst` may be `src` (each image is copied to a scratch buffer first where the
 * loop reads neighbours). Every loop performs, operation by operation, the same IEEE arithmetic
 * as the torch kernels of ff_lightning/augment/pil_warp.py (compiled with -std=c99, so no
 * multiply-add contraction), so both give the same bytes; the torch kernels in turn reproduce
 * Pillow's C code (Geometry.c's transform filters) for the same matrices. The colour filters
 * live in _pil_filters.c.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ROW(j) ((rows) ? (rows)[(j)] : (int64_t)(j))

static inline int64_t clampi(int64_t v, int64_t hi) { return v < 0 ? 0 : (v > hi ? hi : v); }

/* Pillow's FLOOR for the coordinates (floor for both signs; |v| < 2**53 here), without a libm
 * call: truncate, then step down where truncation went up. */
static inline int64_t pil_floor(double v) {
    int64_t i = (int64_t)v;
    return ((double)i > v) ? i - 1 : i;
}

static inline uint8_t trunc_u8(double v) { return (uint8_t)v; }

static inline uint8_t clamp_trunc_u8(double v) {
    if (v <= 0.0) return 0;
    if (v >= 255.0) return 255;
    return (uint8_t)v;
}

/* Nearest, general affine: 16.16 fixed point from the host (fx[0..5] = FIX(a0), FIX(a1),
 * FIX(a3), FIX(a4), FIX(a2 + a0/2 + a1/2), FIX(a5 + a3/2 + a4/2)). */
static void near_fixed(const uint8_t *s, uint8_t *d, int64_t C, int64_t H, int64_t W,
                       const int64_t *fx, const uint8_t *fill) {
    int64_t P = H * W;
    for (int64_t y = 0; y < H; ++y) {
        int64_t xx = fx[4] + y * fx[1];
        int64_t yy = fx[5] + y * fx[3];
        for (int64_t x = 0; x < W; ++x, xx += fx[0], yy += fx[2]) {
            int64_t xi = xx >> 16, yi = yy >> 16; /* arithmetic shift: floor */
            int64_t o = y * W + x;
            if (xi >= 0 && xi < W && yi >= 0 && yi < H) {
                for (int64_t c = 0; c < C; ++c) d[c * P + o] = s[c * P + yi * W + xi];
            } else {
                for (int64_t c = 0; c < C; ++c) d[c * P + o] = fill[c];
            }
        }
    }
}

/* Nearest, axis-aligned (Pillow's ImagingScaleAffine): per-column and per-row source
 * positions from running sums, as the host tables of the torch kernel. */
static void near_scale(const uint8_t *s, uint8_t *d, int64_t C, int64_t H, int64_t W,
                       const double *a, const uint8_t *fill, int64_t *xtab) {
    int64_t P = H * W;
    double xo = a[2] + a[0] * 0.5;
    for (int64_t x = 0; x < W; ++x) {
        xtab[x] = (xo < 0.0) ? -1 : (int64_t)xo;
        if (xtab[x] >= W) xtab[x] = -1;
        xo += a[0];
    }
    double yo = a[5] + a[4] * 0.5;
    for (int64_t y = 0; y < H; ++y) {
        int64_t yi = (yo < 0.0) ? -1 : (int64_t)yo;
        if (yi >= H) yi = -1;
        yo += a[4];
        for (int64_t x = 0; x < W; ++x) {
            int64_t o = y * W + x;
            if (yi >= 0 && xtab[x] >= 0) {
                for (int64_t c = 0; c < C; ++c) d[c * P + o] = s[c * P + yi * W + xtab[x]];
            } else {
                for (int64_t c = 0; c < C; ++c) d[c * P + o] = fill[c];
            }
        }
    }
}

/* Pillow's cubic (a = -1) on four values, Horner form, in its operation order. */
static inline double cubic(double v1, double v2, double v3, double v4, double d) {
    double p1 = v2;
    double p2 = -v1 + v3;
    double p3 = 2 * (v1 - v2) + v3 - v4;
    double p4 = -v1 + v2 - v3 + v4;
    return p1 + d * (p2 + d * (p3 + d * p4));
}

/* The same on four pixel values of a row: p1..p4 are small integers, exact in int32 as in
 * float64. At d == 0 the result is the second value exactly (p1 + 0 * finite). */
static inline double cubic_px(const uint8_t *r, const int32_t *xc, double d) {
    int32_t v1 = r[xc[0]], v2 = r[xc[1]];
    if (d == 0.0) return (double)v2;
    int32_t v3 = r[xc[2]], v4 = r[xc[3]];
    int32_t p2 = v3 - v1, p3 = 2 * (v1 - v2) + v3 - v4, p4 = v2 - v1 - v3 + v4;
    return (double)v2 + d * ((double)p2 + d * ((double)p3 + d * (double)p4));
}

/* Bilinear on two pixel values of a row (exactly the first at d == 0). */
static inline double linear_px(const uint8_t *r, const int32_t *xc, double d) {
    double a = r[xc[0]];
    if (d == 0.0) return a;
    return a + ((double)r[xc[1]] - a) * d;
}

/* One axis of a sample position: the clamped taps (row offsets scaled by `stride`), the
 * fraction, and whether Pillow counts the position inside. */
typedef struct {
    int32_t c[4];
    double f;
    int32_t inside;
} axis_t;

static void axis_taps(double pos, int64_t size, int64_t lo, int64_t span, int64_t stride,
                      axis_t *t) {
    t->inside = !(pos < 0.0 || pos >= (double)size);
    pos -= 0.5;
    int64_t i = pil_floor(pos);
    t->f = pos - (double)i;
    for (int64_t k = 0; k < span; ++k) t->c[k] = (int32_t)(clampi(i + lo + k, size - 1) * stride);
}

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define FF_PIL_AVX2 1

/* Four output pixels of one channel at once (lanes = pixels x..x+3, all inside): the same
 * float64 operations as cubic()/cubic_px() lane by lane (AVX2 without FMA: each multiply and
 * add rounds as the scalar code does), so the bytes are the scalar loop's. */
__attribute__((target("avx2"))) static inline __m256d cubic4(__m256d v1, __m256d v2, __m256d v3,
                                                              __m256d v4, __m256d d) {
    const __m256d two = _mm256_set1_pd(2.0);
    __m256d p2 = _mm256_sub_pd(v3, v1);
    __m256d p3 = _mm256_sub_pd(_mm256_add_pd(_mm256_mul_pd(two, _mm256_sub_pd(v1, v2)), v3), v4);
    __m256d p4 = _mm256_add_pd(_mm256_sub_pd(_mm256_sub_pd(v2, v1), v3), v4);
    __m256d t = _mm256_add_pd(p3, _mm256_mul_pd(d, p4));
    t = _mm256_add_pd(p2, _mm256_mul_pd(d, t));
    return _mm256_add_pd(v2, _mm256_mul_pd(d, t));
}

__attribute__((target("avx2"))) static inline __m128i tap4(const uint8_t *p, const axis_t *qx,
                                                            const axis_t *qy, int k, int j) {
    return _mm_set_epi32(p[qy[3].c[k] + qx[3].c[j]], p[qy[2].c[k] + qx[2].c[j]],
                         p[qy[1].c[k] + qx[1].c[j]], p[qy[0].c[k] + qx[0].c[j]]);
}

/* cubic_px on four lanes: p1..p4 in int32 (exact), then the float64 Horner form. */
__attribute__((target("avx2"))) static inline __m256d cubic4_px(const uint8_t *p, const axis_t *qx,
                                                                 const axis_t *qy, int k,
                                                                 __m256d d) {
    __m128i v1 = tap4(p, qx, qy, k, 0), v2 = tap4(p, qx, qy, k, 1);
    __m128i v3 = tap4(p, qx, qy, k, 2), v4 = tap4(p, qx, qy, k, 3);
    __m128i p2 = _mm_sub_epi32(v3, v1);
    __m128i p3 = _mm_sub_epi32(_mm_add_epi32(_mm_slli_epi32(_mm_sub_epi32(v1, v2), 1), v3), v4);
    __m128i p4 = _mm_add_epi32(_mm_sub_epi32(_mm_sub_epi32(v2, v1), v3), v4);
    __m256d t = _mm256_add_pd(_mm256_cvtepi32_pd(p3), _mm256_mul_pd(d, _mm256_cvtepi32_pd(p4)));
    t = _mm256_add_pd(_mm256_cvtepi32_pd(p2), _mm256_mul_pd(d, t));
    return _mm256_add_pd(_mm256_cvtepi32_pd(v2), _mm256_mul_pd(d, t));
}

__attribute__((target("avx2"))) static void store4(uint8_t *o, __m256d v) {
    v = _mm256_min_pd(_mm256_max_pd(v, _mm256_setzero_pd()), _mm256_set1_pd(255.0));
    __m128i i = _mm256_cvttpd_epi32(v); /* truncation, as the (uint8_t) casts */
    int32_t out[4];
    _mm_storeu_si128((__m128i *)out, i);
    for (int l = 0; l < 4; ++l) o[l] = (uint8_t)out[l];
}

__attribute__((target("avx2"))) static int64_t interp4(const uint8_t *p, uint8_t *o, int64_t W,
                                                        int64_t mode, const axis_t *tx,
                                                        const axis_t *ty) {
    int64_t x = 0;
    for (; x + 4 <= W; x += 4) {
        const axis_t *qx = tx + x, *qy = ty + x;
        if (!(qx[0].inside & qx[1].inside & qx[2].inside & qx[3].inside & qy[0].inside &
              qy[1].inside & qy[2].inside & qy[3].inside))
            break; /* the scalar loop takes over from here */
        __m256d dx = _mm256_set_pd(qx[3].f, qx[2].f, qx[1].f, qx[0].f);
        __m256d dy = _mm256_set_pd(qy[3].f, qy[2].f, qy[1].f, qy[0].f);
        if (mode == 2) {
            __m256d r[2];
            for (int k = 0; k < 2; ++k) {
                __m256d a = _mm256_cvtepi32_pd(tap4(p, qx, qy, k, 0));
                __m256d b = _mm256_cvtepi32_pd(tap4(p, qx, qy, k, 1));
                r[k] = _mm256_add_pd(a, _mm256_mul_pd(_mm256_sub_pd(b, a), dx));
            }
            store4(o + x, _mm256_add_pd(r[0], _mm256_mul_pd(_mm256_sub_pd(r[1], r[0]), dy)));
        } else if (qy[0].f == 0.0 && qy[1].f == 0.0 && qy[2].f == 0.0 && qy[3].f == 0.0) {
            store4(o + x, cubic4_px(p, qx, qy, 1, dx)); /* rows 0, 2, 3 get weight 0 */
        } else if (qx[0].f == 0.0 && qx[1].f == 0.0 && qx[2].f == 0.0 && qx[3].f == 0.0) {
            __m256d r[4]; /* each row's cubic at d == 0 is its second tap, exactly */
            for (int k = 0; k < 4; ++k) r[k] = _mm256_cvtepi32_pd(tap4(p, qx, qy, k, 1));
            store4(o + x, cubic4(r[0], r[1], r[2], r[3], dy));
        } else {
            __m256d r[4];
            for (int k = 0; k < 4; ++k) r[k] = cubic4_px(p, qx, qy, k, dx);
            store4(o + x, cubic4(r[0], r[1], r[2], r[3], dy));
        }
    }
    return x;
}
#endif

static int has_avx2(void) {
#ifdef FF_PIL_AVX2
    static int cached = -1;
    if (cached < 0) cached = __builtin_cpu_supports("avx2") ? 1 : 0;
    return cached;
#else
    return 0;
#endif
}

/* Bilinear (mode 2) or bicubic (mode 3), any matrix: Pillow's generic transform with its
 * filters; the positions of a row are computed once for every channel. A fraction of exactly 0
 * (shears keep one of them there) skips the taps it would multiply by 0: the same doubles. With
 * AVX2, runs of four inside pixels take the vector loop (same operations, same bytes). */
static void interp(const uint8_t *s, uint8_t *d, int64_t C, int64_t H, int64_t W,
                   const double *a, int64_t mode, const uint8_t *fill, axis_t *tx, axis_t *ty) {
    int64_t P = H * W;
    int64_t lo = (mode == 2) ? 0 : -1, span = (mode == 2) ? 2 : 4;
    int vector = has_avx2();
    for (int64_t y = 0; y < H; ++y) {
        double yin = (double)y + 0.5;
        for (int64_t x = 0; x < W; ++x) {
            double xin = (double)x + 0.5;
            axis_taps(a[0] * xin + a[1] * yin + a[2], W, lo, span, 1, tx + x);
            axis_taps(a[3] * xin + a[4] * yin + a[5], H, lo, span, W, ty + x);
        }
        for (int64_t c = 0; c < C; ++c) {
            const uint8_t *p = s + c * P;
            uint8_t *o = d + c * P + y * W;
            int64_t x = 0;
            while (x < W) {
#ifdef FF_PIL_AVX2
                if (vector) {
                    int64_t done = interp4(p, o + x, W - x, mode, tx + x, ty + x);
                    x += done;
                    if (x >= W) break;
                }
#endif
                const axis_t *qx = tx + x, *qy = ty + x;
                if (!(qx->inside && qy->inside)) {
                    o[x] = fill[c];
                } else if (mode == 2) {
                    double v1 = linear_px(p + qy->c[0], qx->c, qx->f);
                    double v2 = (qy->f == 0.0) ? v1 : linear_px(p + qy->c[1], qx->c, qx->f);
                    o[x] = trunc_u8(v1 + (v2 - v1) * qy->f);
                } else if (qy->f == 0.0) {
                    o[x] = clamp_trunc_u8(cubic_px(p + qy->c[1], qx->c, qx->f));
                } else {
                    double v[4];
                    for (int k = 0; k < 4; ++k) v[k] = cubic_px(p + qy->c[k], qx->c, qx->f);
                    o[x] = clamp_trunc_u8(cubic(v[0], v[1], v[2], v[3], qy->f));
                }
                ++x;
            }
        }
    }
}

/* Axis-aligned matrices (a1 == a3 == 0: translations, crops): a column's position does not
 * depend on the row, nor a row's on the column, so each source row is filtered horizontally
 * once (`h`, the very doubles the generic path computes per output pixel) and the output is
 * the vertical filter of those rows. */
static void interp_axis(const uint8_t *s, uint8_t *d, int64_t C, int64_t H, int64_t W,
                        const double *a, int64_t mode, const uint8_t *fill, axis_t *tx,
                        axis_t *ty, double *h) {
    int64_t P = H * W;
    int64_t lo = (mode == 2) ? 0 : -1, span = (mode == 2) ? 2 : 4;
    for (int64_t x = 0; x < W; ++x)
        axis_taps(a[0] * ((double)x + 0.5) + a[1] * 0.5 + a[2], W, lo, span, 1, tx + x);
    for (int64_t y = 0; y < H; ++y)
        axis_taps(a[3] * 0.5 + a[4] * ((double)y + 0.5) + a[5], H, lo, span, 1, ty + y);
    for (int64_t c = 0; c < C; ++c) {
        const uint8_t *p = s + c * P;
        for (int64_t r = 0; r < H; ++r)
            for (int64_t x = 0; x < W; ++x)
                h[r * W + x] = (mode == 2) ? linear_px(p + r * W, tx[x].c, tx[x].f)
                                           : cubic_px(p + r * W, tx[x].c, tx[x].f);
        for (int64_t y = 0; y < H; ++y) {
            uint8_t *o = d + c * P + y * W;
            const axis_t *qy = ty + y;
            const double *r0 = h + qy->c[0] * W, *r1 = h + qy->c[1] * W;
            for (int64_t x = 0; x < W; ++x) {
                if (!(qy->inside && tx[x].inside)) {
                    o[x] = fill[c];
                } else if (mode == 2) {
                    o[x] = trunc_u8(r0[x] + (r1[x] - r0[x]) * qy->f);
                } else {
                    const double *r2 = h + qy->c[2] * W, *r3 = h + qy->c[3] * W;
                    o[x] = clamp_trunc_u8(cubic(r0[x], r1[x], r2[x], r3[x], qy->f));
                }
            }
        }
    }
}

/* dst[rows[j]] = affine(src[rows[j]]) with coef[6j..6j+5] (Pillow's data), mode[j] (0 nearest,
 * 2 bilinear, 3 bicubic), fixed[6j..] (nearest: 16.16 terms; fixed[6j] == INT64_MIN selects the
 * axis-aligned path). */
void ff_pil_affine(const uint8_t *src, uint8_t *dst, int64_t n, const int64_t *rows, int64_t C,
                   int64_t H, int64_t W, const double *coef, const int64_t *mode,
                   const int64_t *fixed, const uint8_t *fill) {
    int64_t img = C * H * W;
    uint8_t *scratch = (src == dst) ? (uint8_t *)malloc((size_t)img) : NULL;
    int64_t *xtab = (int64_t *)malloc((size_t)W * sizeof(int64_t));
    int64_t side = (W > H) ? W : H;
    axis_t *tx = (axis_t *)malloc((size_t)side * sizeof(axis_t));
    axis_t *ty = (axis_t *)malloc((size_t)side * sizeof(axis_t));
    double *hbuf = NULL;
    for (int64_t j = 0; j < n; ++j) {
        const uint8_t *s = src + ROW(j) * img;
        uint8_t *d = dst + ROW(j) * img;
        if (scratch) {
            memcpy(scratch, s, (size_t)img);
            s = scratch;
        }
        if (mode[j] == 0) {
            if (fixed[6 * j] == INT64_MIN)
                near_scale(s, d, C, H, W, coef + 6 * j, fill, xtab);
            else
                near_fixed(s, d, C, H, W, fixed + 6 * j, fill);
        } else if (coef[6 * j + 1] == 0.0 && coef[6 * j + 3] == 0.0) {
            if (!hbuf) hbuf = (double *)malloc((size_t)(H * W) * sizeof(double));
            interp_axis(s, d, C, H, W, coef + 6 * j, mode[j], fill, tx, ty, hbuf);
        } else {
            interp(s, d, C, H, W, coef + 6 * j, mode[j], fill, tx, ty);
        }
    }
    free(hbuf);
    free(ty);
    free(tx);
    free(xtab);
    free(scratch);
}
