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

/* `passes` of Pillow's box pass (ImagingLineBoxBlur8) down every column of the n x m plane `a`
 * at once: out[i] = (sum(in[i-r..i+r]) ww + (in[i-r-1] + in[i+r+1]) fw + 2**23) >> 24, row
 * positions clamped to the plane. The work goes a row at a time along memory (the inner loops
 * vectorise), each pass from one buffer into the other; returns the buffer holding the result
 * (`a` or `b`). `acc`: m uint32. The integer arithmetic is Pillow's, so the bytes are its. */
static uint8_t *box_columns(uint8_t *a, uint8_t *b, int64_t n, int64_t m, int64_t r, uint32_t ww,
                            uint32_t fw, uint32_t *acc) {
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
 * horizontal passes run down the columns of the transposed plane. */
void ff_pil_box_blur(const uint8_t *src, uint8_t *dst, int64_t n, const int64_t *rows, int64_t C,
                     int64_t H, int64_t W, const int64_t *weights) {
    int64_t P = H * W;
    uint8_t *t1 = (uint8_t *)malloc((size_t)(2 * P));
    uint8_t *t2 = t1 + P;
    uint32_t *acc = (uint32_t *)malloc((size_t)(H > W ? H : W) * sizeof(uint32_t));
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
