/* Native CPU loops with Pillow's arithmetic for the colour filters of the PIL-semantics
 * kernels (timm, DeepAA): ImageEnhance.Color and Sharpness, GaussianBlur's box passes, and the
 * sums of Pillow's "L" values that Contrast needs.
 *
 * Built and loaded like _native.c (see ff_lightning/augment/_pil_native.py). Images are
 * contiguous uint8 [B, C, H, W] (planar); `rows` lists the n batch rows a call touches (NULL:
 * rows 0..n-1); `dst` may be `src`. Each loop performs the same IEEE (or integer) operations as
 * the torch kernels of ff_lightning/augment/pil_color.py (compiled with -std=c99: no
 * multiply-add contraction), so both give the same bytes, which are Pillow's.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ROW(j) ((rows) ? (rows)[(j)] : (int64_t)(j))

static inline int64_t clampi(int64_t v, int64_t hi) { return v < 0 ? 0 : (v > hi ? hi : v); }

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

/* The column loops here (box blur, resize) are integer multiply-adds along memory: x86-64's
 * baseline (SSE2) has no 32-bit vector multiply, so on x86-64 Linux (glibc's ifunc) with GCC or
 * Clang they are also built for AVX2 and the CPU's best runs (the same integer results). */
#if defined(__x86_64__) && defined(__GLIBC__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(FF_NO_CLONES)
#define FF_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FF_VECTOR_CLONES
#endif

/* `passes` of Pillow's box pass (ImagingLineBoxBlur8) down every column of the n x m plane `a`
 * at once: out[i] = (sum(in[i-r..i+r]) ww + (in[i-r-1] + in[i+r+1]) fw + 2**23) >> 24, row
 * positions clamped to the plane. The work goes a row at a time along memory (the inner loops
 * vectorise), each pass from one buffer into the other; returns the buffer holding the result
 * (`a` or `b`). `acc`: m uint32. The integer arithmetic is Pillow's, so the bytes are its. */
FF_VECTOR_CLONES static uint8_t *box_columns(uint8_t *a, uint8_t *b, int64_t n, int64_t m,
                                              int64_t r, uint32_t ww, uint32_t fw,
                                              uint32_t *acc) {
    int64_t last = n - 1;
    for (int pass = 0; pass < 3; ++pass) {
        /* the window of position -1: rows [-r-1, r-1], clamped */
        memset(acc, 0, (size_t)m * sizeof(uint32_t));
        for (int64_t k = -r - 1; k <= r - 1; ++k) {
            const uint8_t *row = a + clampi(k, last) * m;
            for (int64_t j = 0; j < m; ++j) acc[j] += row[j];
        }
        for (int64_t i = 0; i < n; ++i) {
            const uint8_t *add = a + clampi(i + r, last) * m;
            const uint8_t *sub = a + clampi(i - r - 1, last) * m;
            const uint8_t *far = a + clampi(i + r + 1, last) * m;
            uint8_t *out = b + i * m;
            for (int64_t j = 0; j < m; ++j) {
                uint32_t s = acc[j] + (uint32_t)add[j] - (uint32_t)sub[j];
                acc[j] = s;
                out[j] = (uint8_t)((s * ww + ((uint32_t)sub[j] + (uint32_t)far[j]) * fw +
                                    (1u << 23)) >> 24);
            }
        }
        uint8_t *t = a;
        a = b;
        b = t;
    }
    return a;
}

static void transpose(const uint8_t *src, uint8_t *dst, int64_t n, int64_t m) {
    for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < m; ++j) dst[j * n + i] = src[i * m + j];
}

/* ImageFilter.GaussianBlur: three horizontal passes, then three vertical ones (each rounded to
 * uint8, as Pillow's), per sample its (r, ww, fw) (weights[3j..3j+2]; ww == 0: a copy). The
 * horizontal passes run down the columns of the transposed plane. Returns 0, or -1 when out of
 * memory before anything is written. */
int ff_pil_box_blur(const uint8_t *src, uint8_t *dst, int64_t n, const int64_t *rows, int64_t C,
                    int64_t H, int64_t W, const int64_t *weights) {
    int64_t P = H * W;
    uint8_t *t1 = (uint8_t *)malloc((size_t)(2 * P));
    uint32_t *acc = (uint32_t *)malloc((size_t)(H > W ? H : W) * sizeof(uint32_t));
    if (!t1 || !acc) { /* nothing written: the caller runs the torch kernel */
        free(t1);
        free(acc);
        return -1;
    }
    uint8_t *t2 = t1 + P;
    for (int64_t j = 0; j < n; ++j) {
        const uint8_t *s = src + ROW(j) * C * P;
        uint8_t *d = dst + ROW(j) * C * P;
        if (d != s) memcpy(d, s, (size_t)(C * P));
        int64_t r = weights[3 * j];
        uint32_t ww = (uint32_t)weights[3 * j + 1], fw = (uint32_t)weights[3 * j + 2];
        if (ww == 0) continue;
        for (int64_t c = 0; c < C; ++c) {
            uint8_t *plane = d + c * P;
            transpose(plane, t1, H, W); /* W x H: the rows' values down its columns */
            uint8_t *done = box_columns(t1, t2, W, H, r, ww, fw, acc);
            transpose(done, plane, W, H);
            done = box_columns(plane, t1, H, W, r, ww, fw, acc);
            if (done != plane) memcpy(plane, done, (size_t)P);
        }
    }
    free(acc);
    free(t1);
    return 0;
}

/* The sum of each row's "L" values (Pillow's ITU-R 601-2 conversion, rounded), for Contrast. */
void ff_pil_luma_sum(const uint8_t *src, int64_t n, const int64_t *rows, int64_t C, int64_t P,
                     int64_t *out) {
    for (int64_t j = 0; j < n; ++j) {
        const uint8_t *s = src + ROW(j) * C * P;
        int64_t sum = 0;
        if (C == 3) {
            for (int64_t p = 0; p < P; ++p)
                sum += (s[p] * 19595 + s[P + p] * 38470 + s[2 * P + p] * 7471 + 0x8000) >> 16;
        } else {
            for (int64_t p = 0; p < P; ++p) sum += s[p];
        }
        out[j] = sum;
    }
}

/* ------------------------------------------------------------------ Image.resize
 * Pillow's two-pass convolution resampling (Resample.c) of an 8-bit image with the bilinear
 * (support 1) or bicubic (a = -0.5, support 2) filter: per output position the taps are the
 * filter at the source pixel centres, widened by the scale when shrinking, normalised, and
 * rounded to 22-bit fixed point; a horizontal pass over the rows the vertical pass reads, then
 * the vertical pass, each rounded and clipped to uint8. The coefficients are computed with the
 * same double operations in the same order, the sums with the same integers, so the bytes are
 * Pillow's. The output is planar (channels first) and can be mirrored on the way out. */
#define RS_BITS 22
#define RS_BLOCK 256 /* source rows per block of the transposed horizontal pass */


static double rs_filter(int bicubic, double x) {
    if (x < 0.0) x = -x;
    if (!bicubic) return x < 1.0 ? 1.0 - x : 0.0;
    if (x < 1.0) return ((-0.5 + 2.0) * x - (-0.5 + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * -0.5;
    return 0.0;
}

/* Taps of every output position: bounds[2o] = first source pixel, bounds[2o+1] = count, and
 * kk[o * ksize + t] the fixed-point weights. Returns ksize (0: out of memory). */
static int rs_coeffs(int64_t in_size, int64_t out_size, int bicubic, int **bounds_out,
                     int32_t **kk_out) {
    float in0 = 0.0f, in1 = (float)in_size;
    double scale = (double)(in1 - in0) / (double)out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = (bicubic ? 2.0 : 1.0) * filterscale;
    int up = (int)support; /* ceil(support), support > 0 */
    if (up < support) ++up;
    int ksize = up * 2 + 1;
    double *k = (double *)malloc((size_t)ksize * sizeof(double));
    int *bounds = (int *)malloc((size_t)out_size * 2 * sizeof(int));
    int32_t *kk = (int32_t *)calloc((size_t)(out_size * ksize), sizeof(int32_t));
    if (!k || !bounds || !kk) {
        free(k);
        free(bounds);
        free(kk);
        return 0;
    }
    for (int64_t o = 0; o < out_size; ++o) {
        double center = in0 + (o + 0.5) * scale;
        double ww = 0.0, ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = (int)in_size;
        xmax -= xmin;
        for (int x = 0; x < xmax; ++x) {
            double w = rs_filter(bicubic, (x + xmin - center + 0.5) * ss);
            k[x] = w;
            ww += w;
        }
        for (int x = 0; x < xmax; ++x) {
            if (ww != 0.0) k[x] /= ww;
            kk[o * ksize + x] = k[x] < 0 ? (int32_t)(-0.5 + k[x] * (1 << RS_BITS))
                                         : (int32_t)(0.5 + k[x] * (1 << RS_BITS));
        }
        bounds[2 * o] = xmin;
        bounds[2 * o + 1] = xmax;
    }
    free(k);
    *bounds_out = bounds;
    *kk_out = kk;
    return ksize;
}

static inline uint8_t rs_clip8(int32_t ss) {
    int32_t v = ss >> RS_BITS;
    return (uint8_t)(v < 0 ? 0 : (v > 255 ? 255 : v));
}

/* One output row of the horizontal pass for channel c of an interleaved line (C channels):
 * out[o] (or out[n - 1 - o] when mirrored) = clip8(sum_t line[(first_o + t) C + c] k_o[t]). */
static void rs_row(const uint8_t *line, int64_t C, int64_t c, const int *bounds,
                   const int32_t *kk, int ksize, int64_t n, uint8_t *out, int mirror) {
    for (int64_t o = 0; o < n; ++o) {
        const int32_t *k = kk + o * ksize;
        const uint8_t *p = line + (int64_t)bounds[2 * o] * C + c;
        int32_t ss = 1 << (RS_BITS - 1);
        for (int t = 0; t < bounds[2 * o + 1]; ++t) ss += (int32_t)p[t * C] * k[t];
        out[mirror ? n - 1 - o : o] = rs_clip8(ss);
    }
}

/* One output row of the vertical pass over `width` values of rows `stride` apart starting at
 * `base` (every column at once: the inner loop runs along memory and vectorises). */
FF_VECTOR_CLONES static void rs_column_row(const uint8_t *base, int64_t stride, int64_t width,
                                           const int32_t *k, int taps, int32_t *acc,
                                           uint8_t *out) {
    for (int64_t x = 0; x < width; ++x) acc[x] = 1 << (RS_BITS - 1);
    for (int t = 0; t < taps; ++t) {
        const uint8_t *row = base + t * stride;
        int32_t kt = k[t];
        for (int64_t x = 0; x < width; ++x) acc[x] += (int32_t)row[x] * kt;
    }
    for (int64_t x = 0; x < width; ++x) out[x] = rs_clip8(acc[x]);
}

static void rs_copy_row(const uint8_t *row, int64_t n, uint8_t *out, int mirror) {
    if (!mirror) {
        memcpy(out, row, (size_t)n);
        return;
    }
    for (int64_t x = 0; x < n; ++x) out[n - 1 - x] = row[x];
}

/* `src`: the top-left pixel of an in_h x in_w region of an interleaved (HWC) uint8 image whose
 * rows are `stride` bytes apart, C channels; `dst`: planar [C, out_h, out_w], mirrored left to
 * right when `mirror`. `filter`: 2 bilinear, 3 bicubic (Pillow's ids). `vertical_first_rule`:
 * run the vertical pass first when the height shrinks by more than twice the width's shrink
 * (Pillow 13's order; older Pillow always goes horizontal first). Returns 0, or -1 when out of
 * memory (nothing written). */
int ff_pil_resize(const uint8_t *src, int64_t stride, int64_t in_h, int64_t in_w, int64_t C,
                  uint8_t *dst, int64_t out_h, int64_t out_w, int64_t filter, int64_t mirror,
                  int64_t vertical_first_rule) {
    if (in_h < 1 || in_w < 1 || out_h < 1 || out_w < 1 || C < 1) return -1;
    int bicubic = filter == 3, flip = mirror != 0;
    int need_h = out_w != in_w, need_v = out_h != in_h;
    int horizontal_first =
        !(vertical_first_rule && (in_h - out_h) > 0 && (in_h - out_h) > (in_w - out_w) * 2);
    int *bv = NULL, *bh = NULL;
    int32_t *kv = NULL, *kh = NULL;
    int ksv = need_v || (need_h && horizontal_first) ? rs_coeffs(in_h, out_h, bicubic, &bv, &kv)
                                                      : 1;
    int ksh = need_h ? rs_coeffs(in_w, out_w, bicubic, &bh, &kh) : 1;
    if (!ksv || !ksh) {
        free(bv), free(kv), free(bh), free(kh);
        return -1;
    }
    int64_t first = 0, rows = in_h;
    if (need_h && horizontal_first) { /* the source rows the vertical pass reads */
        first = bv[0];
        rows = bv[2 * (out_h - 1)] + bv[2 * (out_h - 1) + 1] - first;
    }
    int64_t tmp_size = horizontal_first ? C * rows * (need_h ? out_w : in_w) : out_h * in_w * C;
    int64_t acc_size = horizontal_first ? (need_h ? out_w : in_w) : in_w * C;
    uint8_t *tmp = (uint8_t *)malloc((size_t)(tmp_size + acc_size)); /* + a row to mirror */
    int32_t *acc = (int32_t *)malloc((size_t)acc_size * sizeof(int32_t));
    if (!tmp || !acc) {
        free(bv), free(kv), free(bh), free(kh), free(tmp), free(acc);
        return -1;
    }
    uint8_t *spare = tmp + tmp_size;
    if (horizontal_first) {
        /* The horizontal pass runs as a vertical one on the transposed rows (every read row
         * of a source column at once: vectorised), then the vertical pass on the rows. */
        int64_t width = need_h ? out_w : in_w;
        uint8_t *rowsT = NULL, *outT = NULL;
        if (need_h) {
            /* in blocks of RS_BLOCK rows: the transposed copies stay small for large photos */
            int64_t blk = rows < RS_BLOCK ? rows : RS_BLOCK;
            rowsT = (uint8_t *)malloc((size_t)(C * in_w * blk));
            outT = (uint8_t *)malloc((size_t)(out_w * blk));
            int32_t *accT = (int32_t *)malloc((size_t)blk * sizeof(int32_t));
            if (!rowsT || !outT || !accT) {
                free(rowsT), free(outT), free(accT);
                free(bv), free(kv), free(bh), free(kh), free(tmp), free(acc);
                return -1;
            }
            for (int64_t b0 = 0; b0 < rows; b0 += blk) {
                int64_t n = b0 + blk < rows ? blk : rows - b0;
                /* [C][in_w][n], in tiles of 16 x 16 pixels (both sides stay in cache) */
                for (int64_t r0 = 0; r0 < n; r0 += 16) {
                    int64_t r1 = r0 + 16 < n ? r0 + 16 : n;
                    for (int64_t x0 = 0; x0 < in_w; x0 += 16) {
                        int64_t x1 = x0 + 16 < in_w ? x0 + 16 : in_w;
                        for (int64_t c = 0; c < C; ++c)
                            for (int64_t x = x0; x < x1; ++x) {
                                uint8_t *to = rowsT + (c * in_w + x) * n;
                                const uint8_t *from = src + (first + b0 + r0) * stride + x * C + c;
                                for (int64_t r = r0; r < r1; ++r, from += stride) to[r] = *from;
                            }
                    }
                }
                for (int64_t c = 0; c < C; ++c) {
                    const uint8_t *colsT = rowsT + c * in_w * n;
                    for (int64_t o = 0; o < out_w; ++o)
                        rs_column_row(colsT + (int64_t)bh[2 * o] * n, n, n, kh + o * ksh,
                                      bh[2 * o + 1], accT, outT + o * n);
                    /* back to rows b0.. of [rows][out_w], tiled */
                    uint8_t *plane = tmp + (c * rows + b0) * width;
                    for (int64_t r0 = 0; r0 < n; r0 += 16) {
                        int64_t r1 = r0 + 16 < n ? r0 + 16 : n;
                        for (int64_t o0 = 0; o0 < out_w; o0 += 16) {
                            int64_t o1 = o0 + 16 < out_w ? o0 + 16 : out_w;
                            for (int64_t r = r0; r < r1; ++r)
                                for (int64_t o = o0; o < o1; ++o)
                                    plane[r * width + o] = outT[o * n + r];
                        }
                    }
                }
            }
            free(rowsT), free(outT), free(accT);
        } else {
            for (int64_t r = 0; r < rows; ++r) {
                const uint8_t *line = src + (first + r) * stride;
                for (int64_t c = 0; c < C; ++c) {
                    uint8_t *out = tmp + (c * rows + r) * width;
                    for (int64_t x = 0; x < in_w; ++x) out[x] = line[x * C + c];
                }
            }
        }
        for (int64_t c = 0; c < C; ++c) {
            const uint8_t *plane = tmp + c * rows * width;
            for (int64_t o = 0; o < out_h; ++o) {
                uint8_t *out = dst + (c * out_h + o) * out_w;
                if (!need_v) {
                    rs_copy_row(plane + o * width, width, out, flip);
                    continue;
                }
                const uint8_t *base = plane + (bv[2 * o] - first) * width;
                rs_column_row(base, width, width, kv + o * ksv, bv[2 * o + 1], acc,
                              flip ? spare : out);
                if (flip) rs_copy_row(spare, width, out, 1);
            }
        }
    } else {
        /* the vertical pass on the interleaved rows (every value of a row at once), then the
         * horizontal pass (or the values as they are) into the planar rows */
        int64_t values = in_w * C;
        for (int64_t o = 0; o < out_h; ++o)
            rs_column_row(src + (int64_t)bv[2 * o] * stride, stride, values, kv + o * ksv,
                          bv[2 * o + 1], acc, tmp + o * values);
        for (int64_t o = 0; o < out_h; ++o) {
            const uint8_t *line = tmp + o * values;
            for (int64_t c = 0; c < C; ++c) {
                uint8_t *out = dst + (c * out_h + o) * out_w;
                if (need_h) {
                    rs_row(line, C, c, bh, kh, ksh, out_w, out, flip);
                } else {
                    for (int64_t x = 0; x < in_w; ++x)
                        out[flip ? in_w - 1 - x : x] = line[x * C + c];
                }
            }
        }
    }
    free(bv), free(kv), free(bh), free(kh), free(tmp), free(acc);
    return 0;
}
