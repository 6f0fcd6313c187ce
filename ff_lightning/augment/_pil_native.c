/* Native CPU loops with Pillow's arithmetic, for the PIL-semantics kernels (timm, DeepAA).
 *
 * Built and loaded like _native.c (see ff_lightning/augment/_pil_native.py). Images are
 * contiguous uint8 [B, C, H, W] (planar); `rows` lists the n batch rows a call touches (NULL:
 * rows 0..n-1); `dst` may be `src` (each image is copied to a scratch buffer first where the
 * loop reads neighbours). Every loop performs, operation by operation, the same IEEE arithmetic
 * as the torch kernels of ff_lightning/augment/pil_warp.py and pil_color.py (compiled with
 * -std=c99, so no multiply-add contraction), so both give the same bytes; the torch kernels in
 * turn reproduce Pillow's C code (Geometry.c transform filters, Blend.c, the SMOOTH filter and
 * the RGB -> L conversion) for the same parameters.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ROW(j) ((rows) ? (rows)[(j)] : (int64_t)(j))

static inline int64_t clampi(int64_t v, int64_t hi) { return v < 0 ? 0 : (v > hi ? hi : v); }

/* Pillow's FLOOR for the coordinates (floor for both signs). */
static inline int64_t pil_floor(double v) { return (int64_t)floor(v); }

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

/* Bilinear (mode 2) or bicubic (mode 3), any matrix: Pillow's generic transform with its
 * filters; the positions of a row are computed once for every channel. A fraction of exactly 0
 * (shears keep one of them there) skips the taps it would multiply by 0: the same doubles. */
static void interp(const uint8_t *s, uint8_t *d, int64_t C, int64_t H, int64_t W,
                   const double *a, int64_t mode, const uint8_t *fill, axis_t *tx, axis_t *ty) {
    int64_t P = H * W;
    int64_t lo = (mode == 2) ? 0 : -1, span = (mode == 2) ? 2 : 4;
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
            for (int64_t x = 0; x < W; ++x) {
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

/* Pillow's Image.blend(deg, img, alpha) for one value: float32 arithmetic, clamped, truncated
 * (inside [0, 1] Pillow does not clamp, but its value never leaves [0, 255] there). */
static inline uint8_t pil_blend(int32_t deg, int32_t img, float alpha) {
    float v = (float)deg + alpha * (float)(img - deg);
    if (v <= 0.0f) return 0;
    if (v >= 255.0f) return 255;
    return (uint8_t)v;
}

/* ImageEnhance.Color: blend with the image's "L" conversion (ITU-R 601-2 in 16-bit fixed
 * point, rounded). Three-channel images. */
void ff_pil_color(const uint8_t *src, uint8_t *dst, int64_t n, const int64_t *rows, int64_t P,
                  const float *alpha) {
    for (int64_t j = 0; j < n; ++j) {
        const uint8_t *s = src + ROW(j) * 3 * P;
        uint8_t *d = dst + ROW(j) * 3 * P;
        float a = alpha[j];
        for (int64_t p = 0; p < P; ++p) {
            int32_t r = s[p], g = s[P + p], b = s[2 * P + p];
            int32_t l = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;
            d[p] = pil_blend(l, r, a);
            d[P + p] = pil_blend(l, g, a);
            d[2 * P + p] = pil_blend(l, b, a);
        }
    }
}

/* ImageEnhance.Sharpness: blend with the SMOOTH filter (3x3 [1 1 1; 1 5 1; 1 1 1] / 13,
 * rounded; border pixels kept). Interior: round(S / 13) = (2 S + 13) / 26 exactly. */
void ff_pil_sharpness(const uint8_t *src, uint8_t *dst, int64_t n, const int64_t *rows, int64_t C,
                      int64_t H, int64_t W, const float *alpha) {
    int64_t P = H * W;
    uint8_t *line = (uint8_t *)malloc((size_t)(3 * W));
    for (int64_t j = 0; j < n; ++j) {
        float a = alpha[j];
        for (int64_t c = 0; c < C; ++c) {
            const uint8_t *s = src + (ROW(j) * C + c) * P;
            uint8_t *d = dst + (ROW(j) * C + c) * P;
            if (H <= 2 || W <= 2) {
                if (d != s) memcpy(d, s, (size_t)P);
                continue;
            }
            /* rows y-1, y, y+1 of the source kept in `line` (d may be s) */
            memcpy(line, s, (size_t)W);
            memcpy(line + W, s + W, (size_t)W);
            for (int64_t y = 1; y < H - 1; ++y) {
                uint8_t *up = line + ((y - 1) % 3) * W, *mid = line + (y % 3) * W;
                uint8_t *dn = line + ((y + 1) % 3) * W;
                memcpy(dn, s + (y + 1) * W, (size_t)W);
                uint8_t *o = d + y * W;
                for (int64_t x = 1; x < W - 1; ++x) {
                    int32_t sum = up[x - 1] + up[x] + up[x + 1] + mid[x - 1] + 5 * mid[x] +
                                  mid[x + 1] + dn[x - 1] + dn[x] + dn[x + 1];
                    int32_t blur = (2 * sum + 13) / 26;
                    o[x] = pil_blend(blur, mid[x], a);
                }
                o[0] = mid[0];
                o[W - 1] = mid[W - 1];
            }
            if (d != s) {
                memcpy(d, s, (size_t)W);
                memcpy(d + (H - 1) * W, s + (H - 1) * W, (size_t)W);
            }
        }
    }
    free(line);
}
