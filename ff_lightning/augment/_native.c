/* Native CPU loops for ff_lightning's batched uint8 augmentation kernels.
 *
 * Built when the package is built (setup.py), else on first use by
 * ff_lightning/augment/_native_load.py with the system C compiler, and loaded through ctypes
 * (no Python or torch headers). Every function works on
 * contiguous uint8 images [B, C, P] (P = H * W pixels per channel) and a list of the batch
 * rows it touches (`rows`, n entries; NULL: rows 0..n-1). Results are bit-identical to the
 * torch kernels they replace: tables and source indices are computed by the Python side with
 * torch's own arithmetic, these loops only look values up, count them or sum them.
 *
 * Why: on a CPU each torch kernel is a separate pass over memory with a dtype conversion or
 * a 64-bit index per byte; a table lookup or a gather written as one loop touches each byte
 * once (about 3x less time per pixel for the table ops at 224 px, measured with
 * recipes/benchmark_augment.py --vs-pil).
 */
#include <stdint.h>
#include <string.h>

#define ROW(j) ((rows) ? (rows)[(j)] : (int64_t)(j))

/* The hash of this file the library was built from (setup.py defines it): a packaged library
 * older than the source beside it is not used (the source is then compiled on first use). */
#ifndef FF_SOURCE_TAG
#define FF_SOURCE_TAG ""
#endif
const char *ff_source_tag(void) { return FF_SOURCE_TAG; }

/* One plane through one table: eight values read and written per step as one 64-bit word
 * (byte order does not matter: byte k of the word is looked up into byte k). */
static void ff_lut_plane(const uint8_t *s, uint8_t *d, int64_t P, const uint8_t *restrict lut) {
    int64_t p = 0;
    for (; p + 8 <= P; p += 8) {
        uint64_t in, out = 0;
        memcpy(&in, s + p, 8);
        for (int k = 0; k < 8; ++k) out |= (uint64_t)lut[(in >> (8 * k)) & 0xFF] << (8 * k);
        memcpy(d + p, &out, 8);
    }
    for (; p < P; ++p) d[p] = lut[s[p]];
}

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define FF_X86_SIMD 1
#endif

#ifdef FF_X86_SIMD
/* The same with AVX2 byte shuffles: the table as 16 rows of 16; each row looks up the low
 * nibble of every value (vpshufb) and is kept where the high nibble is that row's. */
__attribute__((target("avx2"))) static void ff_lut_plane_avx2(const uint8_t *s, uint8_t *d,
                                                               int64_t P, const uint8_t *lut) {
    __m256i row[16];
    for (int k = 0; k < 16; ++k)
        row[k] = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(lut + 16 * k)));
    const __m256i nib = _mm256_set1_epi8(0x0F);
    int64_t p = 0;
    for (; p + 32 <= P; p += 32) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(s + p));
        __m256i lo = _mm256_and_si256(v, nib);
        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
        __m256i acc = _mm256_setzero_si256();
        for (int k = 0; k < 16; ++k) {
            __m256i hit = _mm256_cmpeq_epi8(hi, _mm256_set1_epi8((char)k));
            acc = _mm256_or_si256(acc, _mm256_and_si256(_mm256_shuffle_epi8(row[k], lo), hit));
        }
        _mm256_storeu_si256((__m256i *)(d + p), acc);
    }
    ff_lut_plane(s + p, d + p, P - p, lut);
}
#endif

/* dst[b, c, p] = luts[j, c, src[b, c, p]] for b = rows[j]; dst may be src. */
void ff_lut_apply(const uint8_t *src, uint8_t *dst, int64_t n, const int64_t *rows, int64_t C,
                  int64_t P, const uint8_t *luts) {
#ifdef FF_X86_SIMD
    __builtin_cpu_init();
    const int avx2 = __builtin_cpu_supports("avx2");
#endif
    for (int64_t j = 0; j < n; ++j) {
        int64_t b = ROW(j);
        for (int64_t c = 0; c < C; ++c) {
            const uint8_t *lut = luts + (j * C + c) * 256;
            const uint8_t *s = src + (b * C + c) * P;
            uint8_t *d = dst + (b * C + c) * P;
#ifdef FF_X86_SIMD
            if (avx2) {
                ff_lut_plane_avx2(s, d, P, lut);
                continue;
            }
#endif
            ff_lut_plane(s, d, P, lut);
        }
    }
}

/* hist[j, c, v] = number of pixels of value v in channel c of image rows[j] (int64). */
void ff_hist(const uint8_t *src, int64_t n, const int64_t *rows, int64_t C, int64_t P,
             int64_t *hist) {
    uint32_t part[4][256];
    for (int64_t j = 0; j < n; ++j) {
        int64_t b = ROW(j);
        for (int64_t c = 0; c < C; ++c) {
            const uint8_t *s = src + (b * C + c) * P;
            int64_t *h = hist + (j * C + c) * 256;
            memset(h, 0, 256 * sizeof(int64_t));
            int64_t p = 0;
            while (p < P) {
                /* four partial histograms break the store-to-load chain of equal values;
                   uint32 counters flushed every 2^30 pixels never overflow */
                int64_t stop = P - p > (1LL << 30) ? p + (1LL << 30) : P;
                memset(part, 0, sizeof(part));
                for (; p + 4 <= stop; p += 4) {
                    ++part[0][s[p]];
                    ++part[1][s[p + 1]];
                    ++part[2][s[p + 2]];
                    ++part[3][s[p + 3]];
                }
                for (; p < stop; ++p) ++part[0][s[p]];
                for (int v = 0; v < 256; ++v)
                    h[v] += (int64_t)part[0][v] + part[1][v] + part[2][v] + part[3][v];
            }
        }
    }
}

/* Nearest warp by source index: dst[b, c, p] = pad_c[index_j[p]] for b = rows[j], where
 * pad_c[0] = fill[c] and pad_c[1 + q] = src[b, c, q]. `index` holds n pointers to int32 [P]
 * arrays (entries in [0, P]). `scratch` holds C * (P + 1) bytes; dst may be src. */
void ff_gather(const uint8_t *src, uint8_t *dst, int64_t n, const int64_t *rows, int64_t C,
               int64_t P, const int32_t *const *index, const uint8_t *fill, uint8_t *scratch) {
    for (int64_t j = 0; j < n; ++j) {
        int64_t b = ROW(j);
        const int32_t *restrict ix = index[j];
        for (int64_t c = 0; c < C; ++c) {
            uint8_t *pad = scratch + c * (P + 1);
            pad[0] = fill[c];
            memcpy(pad + 1, src + (b * C + c) * P, (size_t)P);
        }
        if (C == 3) {
            const uint8_t *restrict p0 = scratch, *restrict p1 = scratch + (P + 1),
                          *restrict p2 = scratch + 2 * (P + 1);
            uint8_t *restrict d0 = dst + b * 3 * P, *restrict d1 = d0 + P, *restrict d2 = d1 + P;
            for (int64_t p = 0; p < P; ++p) {
                int32_t q = ix[p];
                d0[p] = p0[q];
                d1[p] = p1[q];
                d2[p] = p2[q];
            }
        } else {
            for (int64_t c = 0; c < C; ++c) {
                const uint8_t *restrict pad = scratch + c * (P + 1);
                uint8_t *restrict d = dst + (b * C + c) * P;
                for (int64_t p = 0; p < P; ++p) d[p] = pad[ix[p]];
            }
        }
    }
}

/* ---------------------------------------------------------------- luma (float32, fused)
 * torchvision's luma in torch's CPU arithmetic: r * 0.2989f, then two `add_(x, alpha=)`
 * steps, each one fused multiply-add in torch's AVX2/AVX-512 kernels, then floor. The fused
 * versions need the FMA instruction (ff_has_fma); the Python side uses these only where
 * torch's own kernels fuse (x86 with AVX2 or AVX-512). */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define FF_FMA_TARGET __attribute__((target("avx2,fma")))
int ff_has_fma(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("fma") && __builtin_cpu_supports("avx2");
}
#else
#define FF_FMA_TARGET
int ff_has_fma(void) { return 0; }
#endif

FF_FMA_TARGET static inline float ff_luma(float r, float g, float b) {
    float acc = r * 0.2989f;
    acc = __builtin_fmaf(g, 0.587f, acc);
    acc = __builtin_fmaf(b, 0.114f, acc);
    return __builtin_floorf(acc);
}

#ifdef FF_X86_SIMD
static inline __m256 ff_widen8(const uint8_t *p) __attribute__((target("avx2")));
static inline __m256 ff_widen8(const uint8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

/* The floored luma of 8 pixels, as ff_luma. */
FF_FMA_TARGET static inline __m256 ff_luma8(const uint8_t *r, const uint8_t *g, const uint8_t *b) {
    __m256 gray = _mm256_mul_ps(ff_widen8(r), _mm256_set1_ps(0.2989f));
    gray = _mm256_fmadd_ps(ff_widen8(g), _mm256_set1_ps(0.587f), gray);
    gray = _mm256_fmadd_ps(ff_widen8(b), _mm256_set1_ps(0.114f), gray);
    return _mm256_floor_ps(gray);
}
#endif

/* sums[j] = sum over pixels of the floored luma of image rows[j] (an exact integer);
 * one channel: the sum of its values. */
FF_FMA_TARGET void ff_luma_sum(const uint8_t *src, int64_t n, const int64_t *rows, int64_t C,
                               int64_t P, int64_t *sums) {
    for (int64_t j = 0; j < n; ++j) {
        int64_t b = ROW(j);
        const uint8_t *s = src + b * C * P;
        int64_t total = 0;
        if (C == 3) {
            const uint8_t *r = s, *g = s + P, *bl = s + 2 * P;
            int64_t p = 0;
#ifdef FF_X86_SIMD
            __m256i acc = _mm256_setzero_si256(); /* 8 int32 lanes, each < 2^31 for P < 2^23 */
            const int64_t lanes = P < (1LL << 23) ? P : (1LL << 23);
            for (; p + 8 <= lanes; p += 8)
                acc = _mm256_add_epi32(acc, _mm256_cvttps_epi32(ff_luma8(r + p, g + p, bl + p)));
            int32_t part8[8];
            _mm256_storeu_si256((__m256i *)part8, acc);
            for (int k = 0; k < 8; ++k) total += part8[k];
#endif
            while (p < P) { /* int32 partial sums: at most 2^23 pixels of 255 each */
                int64_t stop = P - p > (1LL << 23) ? p + (1LL << 23) : P;
                int32_t part = 0;
                for (; p < stop; ++p) part += (int32_t)ff_luma(r[p], g[p], bl[p]);
                total += part;
            }
        } else {
            for (int64_t p = 0; p < P; ++p) total += s[p];
        }
        sums[j] = total;
    }
}

/* adjust_saturation on 3-channel images: dst = trunc(clamp(fma(luma, alpha[j], x * ratio[j]),
 * 0, 255)) per channel, as torch's mul_ then addcmul_ (fused) do it. dst may be src. */
#ifdef FF_X86_SIMD
/* 8 pixels of each channel: widen to float32, blend with the luma, clamp, truncate. */
FF_FMA_TARGET static inline void ff_color8(const uint8_t *r, const uint8_t *g,
                                           const uint8_t *bl, uint8_t *d0, uint8_t *d1,
                                           uint8_t *d2, __m256 ra, __m256 al) {
    const __m256 zero = _mm256_setzero_ps(), top = _mm256_set1_ps(255.0f);
    __m256 x[3];
    const uint8_t *in[3] = {r, g, bl};
    uint8_t *out[3] = {d0, d1, d2};
    for (int c = 0; c < 3; ++c)
        x[c] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)in[c])));
    __m256 gray = _mm256_mul_ps(x[0], _mm256_set1_ps(0.2989f));
    gray = _mm256_fmadd_ps(x[1], _mm256_set1_ps(0.587f), gray);
    gray = _mm256_fmadd_ps(x[2], _mm256_set1_ps(0.114f), gray);
    gray = _mm256_floor_ps(gray);
    for (int c = 0; c < 3; ++c) {
        __m256 v = _mm256_fmadd_ps(gray, al, _mm256_mul_ps(x[c], ra));
        v = _mm256_min_ps(_mm256_max_ps(v, zero), top);
        __m256i i = _mm256_cvttps_epi32(v);
        __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
        _mm_storel_epi64((__m128i *)out[c], _mm_packus_epi16(w, w));
    }
}
#define FF_HAVE_COLOR8 1
#endif

FF_FMA_TARGET void ff_color(const uint8_t *src, uint8_t *dst, int64_t n, const int64_t *rows,
                            int64_t P, const float *ratio, const float *alpha) {
    for (int64_t j = 0; j < n; ++j) {
        int64_t b = ROW(j);
        const uint8_t *s = src + b * 3 * P;
        uint8_t *d = dst + b * 3 * P;
        const float ra = ratio[j], al = alpha[j];
        int64_t p = 0;
#ifdef FF_HAVE_COLOR8
        const __m256 ra8 = _mm256_set1_ps(ra), al8 = _mm256_set1_ps(al);
        for (; p + 8 <= P; p += 8)
            ff_color8(s + p, s + P + p, s + 2 * P + p, d + p, d + P + p, d + 2 * P + p, ra8, al8);
#endif
        for (; p < P; ++p) {
            float x0 = s[p], x1 = s[P + p], x2 = s[2 * P + p];
            float gray = ff_luma(x0, x1, x2);
            float v[3] = {__builtin_fmaf(gray, al, x0 * ra), __builtin_fmaf(gray, al, x1 * ra),
                          __builtin_fmaf(gray, al, x2 * ra)};
            for (int c = 0; c < 3; ++c) {
                float t = v[c] < 0.0f ? 0.0f : (v[c] > 255.0f ? 255.0f : v[c]);
                d[c * P + p] = (uint8_t)(int32_t)t;
            }
        }
    }
}

/* ---------------------------------------------------------------- sharpness
 * adjust_sharpness as the torch kernel computes it: S = 3x3 box sum + 4 * centre (exact
 * integers), blurred = round_half_even(float(S) * float(1/13)), out = trunc(clamp(
 * fma(blurred - centre, alpha, centre), 0, 255)) inside, borders kept. dst may be src
 * (`scratch`: H * W bytes). */
FF_FMA_TARGET static inline uint8_t ff_sharp1(const uint8_t *s, int64_t W, float al) {
    const float inv13 = (float)(1.0 / 13.0);
    int32_t S = 4 * (int32_t)s[0];
    for (int dy = -1; dy <= 1; ++dy)
        for (int dx = -1; dx <= 1; ++dx) S += s[dy * W + dx];
    float c = s[0];
    float blurred = __builtin_rintf((float)S * inv13);
    float v = __builtin_fmaf(blurred - c, al, c);
    v = v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v);
    return (uint8_t)(int32_t)v;
}

#ifdef FF_HAVE_COLOR8
FF_FMA_TARGET static inline __m256i ff_load16(const uint8_t *p) {
    return _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)p));
}

/* 16 interior pixels starting at s (a pointer into the source plane). */
FF_FMA_TARGET static inline void ff_sharp16(const uint8_t *s, int64_t W, uint8_t *d, __m256 al) {
    const __m256 inv13 = _mm256_set1_ps((float)(1.0 / 13.0));
    const __m256 zero = _mm256_setzero_ps(), top = _mm256_set1_ps(255.0f);
    __m256i c16 = ff_load16(s);
    __m256i S = _mm256_slli_epi16(c16, 2);
    for (int dy = -1; dy <= 1; ++dy) {
        const uint8_t *row = s + dy * W;
        S = _mm256_add_epi16(S, ff_load16(row - 1));
        S = _mm256_add_epi16(S, ff_load16(row));
        S = _mm256_add_epi16(S, ff_load16(row + 1));
    }
    __m128i out[2];
    for (int h = 0; h < 2; ++h) {
        __m128i s16 = h ? _mm256_extracti128_si256(S, 1) : _mm256_castsi256_si128(S);
        __m128i c8 = h ? _mm256_extracti128_si256(c16, 1) : _mm256_castsi256_si128(c16);
        __m256 sf = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(s16));
        __m256 cf = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(c8));
        __m256 blurred = _mm256_round_ps(_mm256_mul_ps(sf, inv13),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m256 v = _mm256_fmadd_ps(_mm256_sub_ps(blurred, cf), al, cf);
        v = _mm256_min_ps(_mm256_max_ps(v, zero), top);
        __m256i i = _mm256_cvttps_epi32(v);
        out[h] = _mm_packus_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
    }
    _mm_storeu_si128((__m128i *)d, _mm_packus_epi16(out[0], out[1]));
}
#endif

FF_FMA_TARGET void ff_sharpness(const uint8_t *src, uint8_t *dst, int64_t n, const int64_t *rows,
                                int64_t C, int64_t H, int64_t W, const float *alpha,
                                uint8_t *scratch) {
    const int64_t P = H * W;
    for (int64_t j = 0; j < n; ++j) {
        int64_t b = ROW(j);
        const float al = alpha[j];
        for (int64_t c = 0; c < C; ++c) {
            const uint8_t *plane = src + (b * C + c) * P;
            uint8_t *d = dst + (b * C + c) * P;
            memcpy(scratch, plane, (size_t)P); /* dst may be src */
            if (d != plane) memcpy(d, plane, (size_t)P); /* borders */
            if (H <= 2 || W <= 2) continue;
            for (int64_t y = 1; y < H - 1; ++y) {
                const uint8_t *s = scratch + y * W;
                uint8_t *o = d + y * W;
                int64_t x = 1;
#ifdef FF_HAVE_COLOR8
                const __m256 al8 = _mm256_set1_ps(al);
                for (; x + 16 <= W - 1; x += 16) ff_sharp16(s + x, W, o + x, al8);
#endif
                for (; x < W - 1; ++x) o[x] = ff_sharp1(s + x, W, al);
            }
        }
    }
}

/* ---------------------------------------------------------------- tables
 * The lookup tables of Equalize, AutoContrast and Contrast, as the torch builders in
 * _color.py compute them (integer arithmetic; float32 with the same operations). */

/* PIL's equalisation table per histogram row (hist: int64 [rows, 256]; npix per row). */
void ff_equalize_luts(const int64_t *hist, int64_t rows, int64_t npix, uint8_t *luts) {
    for (int64_t r = 0; r < rows; ++r) {
        const int64_t *h = hist + r * 256;
        uint8_t *lut = luts + r * 256;
        int last = 255;
        while (last > 0 && h[last] == 0) --last; /* last non-empty bin */
        int64_t step = (npix - h[last]) / 255;
        if (step == 0) {
            for (int v = 0; v < 256; ++v) lut[v] = (uint8_t)v;
            continue;
        }
        int64_t cum = 0;
        lut[0] = 0;
        for (int v = 1; v < 256; ++v) {
            cum += h[v - 1];
            int64_t q = (cum + step / 2) / step; /* non-negative: floor division */
            lut[v] = (uint8_t)(q > 255 ? 255 : q);
        }
    }
}

/* AutoContrast's table per row from its histogram: (v - lo) / ((hi - lo) * (1/255)) in
 * float32, clamped, truncated; the identity where hi == lo. */
void ff_autocontrast_luts(const int64_t *hist, int64_t rows, uint8_t *luts) {
    const float inv255 = (float)(1.0 / 255);
    for (int64_t r = 0; r < rows; ++r) {
        const int64_t *h = hist + r * 256;
        uint8_t *lut = luts + r * 256;
        int lo = 0, hi = 255;
        while (lo < 255 && h[lo] == 0) ++lo;
        while (hi > 0 && h[hi] == 0) --hi;
        if (hi <= lo) {
            for (int v = 0; v < 256; ++v) lut[v] = (uint8_t)v;
            continue;
        }
        const float flo = (float)lo, scale = ((float)hi - flo) * inv255;
        for (int v = 0; v < 256; ++v) {
            float t = ((float)v - flo) / scale;
            t = t < 0.0f ? 0.0f : (t > 255.0f ? 255.0f : t);
            lut[v] = (uint8_t)(int32_t)t;
        }
    }
}

/* Contrast's table per sample: trunc(clamp(fma(mean, alpha, v * factor), 0, 255)), the same
 * table for every channel (luts: [n, C, 256]). */
FF_FMA_TARGET void ff_contrast_luts(const float *mean, const float *factor, const float *alpha,
                                    int64_t n, int64_t C, uint8_t *luts) {
    for (int64_t j = 0; j < n; ++j) {
        uint8_t *lut = luts + j * C * 256;
        for (int v = 0; v < 256; ++v) {
            float t = __builtin_fmaf(mean[j], alpha[j], (float)v * factor[j]);
            t = t < 0.0f ? 0.0f : (t > 255.0f ? 255.0f : t);
            lut[v] = (uint8_t)(int32_t)t;
        }
        for (int64_t c = 1; c < C; ++c) memcpy(lut + c * 256, lut, 256);
    }
}

/* ---------------------------------------------------------------- normalisation
 * out[b, c, p] = fma(src[b, c, p], scale[c], shift[c]) in float32: torch's
 * addcmul(shift, src, scale) with its fused multiply-add, in one pass. */
FF_FMA_TARGET void ff_normalize(const uint8_t *src, float *out, int64_t B, int64_t C, int64_t P,
                                const float *scale, const float *shift) {
    for (int64_t b = 0; b < B; ++b)
        for (int64_t c = 0; c < C; ++c) {
            const uint8_t *s = src + (b * C + c) * P;
            float *o = out + (b * C + c) * P;
            const float sc = scale[c], sh = shift[c];
            int64_t p = 0;
#ifdef FF_X86_SIMD
            const __m256 sc8 = _mm256_set1_ps(sc), sh8 = _mm256_set1_ps(sh);
            for (; p + 8 <= P; p += 8)
                _mm256_storeu_ps(o + p, _mm256_fmadd_ps(ff_widen8(s + p), sc8, sh8));
#endif
            for (; p < P; ++p) o[p] = __builtin_fmaf((float)s[p], sc, sh);
        }
}

/* ---------------------------------------------------------------- grayscale
 * rgb_to_grayscale keeping three channels, in place: every channel of image j becomes the
 * truncated luma (ff_luma: torch's fused arithmetic, so only where fused() holds). */
FF_FMA_TARGET void ff_grayscale(uint8_t *img, int64_t n, int64_t P) {
    for (int64_t j = 0; j < n; ++j) {
        uint8_t *r = img + j * 3 * P, *g = r + P, *b = g + P;
        int64_t p = 0;
#ifdef FF_HAVE_COLOR8
        for (; p + 8 <= P; p += 8) {
            __m256i i = _mm256_cvttps_epi32(ff_luma8(r + p, g + p, b + p));
            __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
            __m128i v = _mm_packus_epi16(w, w);
            _mm_storel_epi64((__m128i *)(r + p), v);
            _mm_storel_epi64((__m128i *)(g + p), v);
            _mm_storel_epi64((__m128i *)(b + p), v);
        }
#endif
        for (; p < P; ++p) {
            uint8_t v = (uint8_t)(int32_t)ff_luma(r[p], g[p], b[p]);
            r[p] = g[p] = b[p] = v;
        }
    }
}

/* ---------------------------------------------------------------- hue
 * adjust_hue as the torch kernel computes it (RGB -> HSV, h = remainder(h + factor, 1),
 * HSV -> RGB, times 255.999 truncated): the same float32 operations per pixel, each product
 * and sum its own statement (no contraction), so the results are bit-identical. fmod(a, 1)
 * is a - trunc(a) (exact for every finite float). dst may be src. */
static void ff_hue_px(const uint8_t *s, uint8_t *d, int64_t P, int64_t count, float factor) {
    const float inv255 = (float)(1.0 / 255.0), sixth = (float)(1.0 / 6.0);
    const float scale = (float)(255.0 + 1.0 - 1e-3);
    for (int64_t p = 0; p < count; ++p) {
        float r = (float)s[p], g = (float)s[P + p], b = (float)s[2 * P + p];
        r = r * inv255;
        g = g * inv255;
        b = b * inv255;
        float maxc = r > g ? r : g;
        maxc = maxc > b ? maxc : b;
        float minc = r < g ? r : g;
        minc = minc < b ? minc : b;
        const int eqc = maxc == minc;
        float crange = maxc - minc;
        float sat = crange / (eqc ? 1.0f : maxc);
        float div = eqc ? 1.0f : crange;
        float rc = maxc - r, gc = maxc - g, bc = maxc - b;
        rc = rc / div;
        gc = gc / div;
        bc = bc / div;
        const int neq_r = maxc != r, eq_g = maxc == g;
        float hr = bc - gc;
        hr = hr * (float)(!neq_r);
        float hg = rc + 2.0f;
        hg = hg - bc;
        hg = hg * (float)(eq_g && neq_r);
        float hb = gc + 4.0f;
        hb = hb - rc;
        hb = hb * (float)(neq_r && !eq_g);
        float h = hr + hg;
        h = h + hb;
        h = h * sixth;
        h = h + 1.0f;
        h = h - __builtin_truncf(h);
        h = h + factor;
        h = h - __builtin_truncf(h);
        if (h < 0.0f) h = h + 1.0f;
        float h6 = h * 6.0f;
        float sector = __builtin_floorf(h6);
        float f = h6 - sector;
        float sxf = sat * f;
        float oms = 1.0f - sat;
        float q = 1.0f - sxf;
        q = q * maxc;
        q = q < 0.0f ? 0.0f : (q > 1.0f ? 1.0f : q);
        float t = sxf + oms;
        t = t * maxc;
        t = t < 0.0f ? 0.0f : (t > 1.0f ? 1.0f : t);
        float pv = oms * maxc;
        pv = pv < 0.0f ? 0.0f : (pv > 1.0f ? 1.0f : pv);
        int i = (int)sector % 6;
        if (i < 0) i += 6;
        float ro = i == 0 || i == 5 ? maxc : (i == 1 ? q : (i == 4 ? t : pv));
        float go = i == 0 ? t : (i == 1 || i == 2 ? maxc : (i == 3 ? q : pv));
        float bo = i == 0 || i == 1 ? pv : (i == 2 ? t : (i == 5 ? q : maxc));
        ro = ro * scale;
        go = go * scale;
        bo = bo * scale;
        d[p] = (uint8_t)(int32_t)ro;
        d[P + p] = (uint8_t)(int32_t)go;
        d[2 * P + p] = (uint8_t)(int32_t)bo;
    }
}

#ifdef FF_X86_SIMD
#define FF_AVX2 __attribute__((target("avx2")))
FF_AVX2 static inline __m256 ff_clamp01(__m256 x) {
    return _mm256_min_ps(_mm256_max_ps(x, _mm256_setzero_ps()), _mm256_set1_ps(1.0f));
}

FF_AVX2 static inline __m256 ff_is(__m256i sector, int k) {
    return _mm256_castsi256_ps(_mm256_cmpeq_epi32(sector, _mm256_set1_epi32(k)));
}

/* ff_hue_px on 8 pixels per step, the same operations in the same order (vector lanes). */
FF_AVX2 static void ff_hue_avx2(const uint8_t *s, uint8_t *d, int64_t P, float factor) {
    const __m256 inv255 = _mm256_set1_ps((float)(1.0 / 255.0));
    const __m256 sixth = _mm256_set1_ps((float)(1.0 / 6.0));
    const __m256 scale = _mm256_set1_ps((float)(255.0 + 1.0 - 1e-3));
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    const __m256 two = _mm256_set1_ps(2.0f), four = _mm256_set1_ps(4.0f);
    const __m256 six = _mm256_set1_ps(6.0f), fac = _mm256_set1_ps(factor);
        int64_t p = 0;
    for (; p + 8 <= P; p += 8) {
        __m256 r = _mm256_mul_ps(ff_widen8(s + p), inv255);
        __m256 g = _mm256_mul_ps(ff_widen8(s + P + p), inv255);
        __m256 b = _mm256_mul_ps(ff_widen8(s + 2 * P + p), inv255);
        __m256 maxc = _mm256_max_ps(_mm256_max_ps(r, g), b);
        __m256 minc = _mm256_min_ps(_mm256_min_ps(r, g), b);
        __m256 eqc = _mm256_cmp_ps(maxc, minc, _CMP_EQ_OQ);
        __m256 crange = _mm256_sub_ps(maxc, minc);
        __m256 sat = _mm256_div_ps(crange, _mm256_blendv_ps(maxc, one, eqc));
        __m256 dv = _mm256_blendv_ps(crange, one, eqc);
        __m256 rc = _mm256_div_ps(_mm256_sub_ps(maxc, r), dv);
        __m256 gc = _mm256_div_ps(_mm256_sub_ps(maxc, g), dv);
        __m256 bc = _mm256_div_ps(_mm256_sub_ps(maxc, b), dv);
        __m256 eq_r = _mm256_cmp_ps(maxc, r, _CMP_EQ_OQ);
        __m256 eq_g = _mm256_cmp_ps(maxc, g, _CMP_EQ_OQ);
        __m256 m_r = _mm256_and_ps(eq_r, one);
        __m256 m_g = _mm256_and_ps(_mm256_andnot_ps(eq_r, eq_g), one);
        __m256 m_b = _mm256_andnot_ps(eq_g, _mm256_andnot_ps(eq_r, one));
        __m256 hr = _mm256_mul_ps(_mm256_sub_ps(bc, gc), m_r);
        __m256 hg = _mm256_mul_ps(_mm256_sub_ps(_mm256_add_ps(rc, two), bc), m_g);
        __m256 hb = _mm256_mul_ps(_mm256_sub_ps(_mm256_add_ps(gc, four), rc), m_b);
        __m256 h = _mm256_add_ps(_mm256_add_ps(hr, hg), hb);
        h = _mm256_add_ps(_mm256_mul_ps(h, sixth), one);
        h = _mm256_sub_ps(h, _mm256_round_ps(h, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC));
        h = _mm256_add_ps(h, fac);
        h = _mm256_sub_ps(h, _mm256_round_ps(h, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC));
        h = _mm256_blendv_ps(h, _mm256_add_ps(h, one), _mm256_cmp_ps(h, zero, _CMP_LT_OQ));
        __m256 h6 = _mm256_mul_ps(h, six);
        __m256 sector = _mm256_round_ps(h6, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
        __m256 f = _mm256_sub_ps(h6, sector);
        __m256 sxf = _mm256_mul_ps(sat, f);
        __m256 oms = _mm256_sub_ps(one, sat);
        __m256 q = ff_clamp01(_mm256_mul_ps(_mm256_sub_ps(one, sxf), maxc));
        __m256 t = ff_clamp01(_mm256_mul_ps(_mm256_add_ps(sxf, oms), maxc));
        __m256 pv = ff_clamp01(_mm256_mul_ps(oms, maxc));
        __m256i i = _mm256_cvttps_epi32(sector);
        i = _mm256_andnot_si256(_mm256_cmpeq_epi32(i, _mm256_set1_epi32(6)), i); /* 6 -> 0 */
        __m256 s1 = ff_is(i, 1), s2 = ff_is(i, 2), s3 = ff_is(i, 3), s4 = ff_is(i, 4),
               s5 = ff_is(i, 5);
        /* sectors 0..5: r = v q p p t v, g = t v v q p p, b = p p t v v q */
        __m256 ro = _mm256_blendv_ps(maxc, q, s1);
        ro = _mm256_blendv_ps(ro, pv, _mm256_or_ps(s2, s3));
        ro = _mm256_blendv_ps(ro, t, s4);
        __m256 go = _mm256_blendv_ps(t, maxc, _mm256_or_ps(s1, s2));
        go = _mm256_blendv_ps(go, q, s3);
        go = _mm256_blendv_ps(go, pv, _mm256_or_ps(s4, s5));
        __m256 bo = _mm256_blendv_ps(pv, t, s2);
        bo = _mm256_blendv_ps(bo, maxc, _mm256_or_ps(s3, s4));
        bo = _mm256_blendv_ps(bo, q, s5);
        __m256 outs[3] = {ro, go, bo};
        for (int c = 0; c < 3; ++c) {
            __m256i v = _mm256_cvttps_epi32(_mm256_mul_ps(outs[c], scale));
            __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
            _mm_storel_epi64((__m128i *)(d + c * P + p), _mm_packus_epi16(w, w));
        }
    }
    ff_hue_px(s + p, d + p, P, P - p, factor);
}
#endif

/* adjust_hue of 3-channel images src[rows[j]] into dst[rows[j]] with factor[j]. */
void ff_hue(const uint8_t *src, uint8_t *dst, int64_t n, const int64_t *rows, int64_t P,
            const float *factor) {
#ifdef FF_X86_SIMD
    __builtin_cpu_init();
    const int avx2 = __builtin_cpu_supports("avx2");
#endif
    for (int64_t j = 0; j < n; ++j) {
        int64_t b = ROW(j);
#ifdef FF_X86_SIMD
        if (avx2) {
            ff_hue_avx2(src + b * 3 * P, dst + b * 3 * P, P, factor[j]);
            continue;
        }
#endif
        ff_hue_px(src + b * 3 * P, dst + b * 3 * P, P, P, factor[j]);
    }
}

/* ---------------------------------------------------------------- gaussian blur
 * Separable blur with reflect padding, as the torch kernel: along the width, then the
 * height, acc = w[0] * x[0], then acc += w[k] * x[k] for k = 1.. (a multiply, then an add:
 * no contraction), then round half to even, clamp and store. Taps that are exactly zero
 * change nothing (0 * x = 0 and acc + 0 = acc for finite x), so only the non-zero span
 * [k0, k - 1 - k0] of each (symmetric) kernel is summed. `scratch`: floats for one padded
 * row (W + kx - 1), the horizontal result of one plane (H * W) and one row of sums (W).
 * dst may be src. */
static int64_t ff_first_tap(const float *w, int64_t k) {
    int64_t k0 = 0;
    while (k0 < k / 2 && w[k0] == 0.0f) ++k0;
    return k0;
}

static inline int64_t ff_reflect(int64_t i, int64_t n) {
    return i < 0 ? -i : (i >= n ? 2 * (n - 1) - i : i);
}

static void ff_pad_row(const uint8_t *in, float *row, int64_t W, int64_t rx) {
    for (int64_t x = 0; x < W; ++x) row[rx + x] = (float)in[x];
    for (int64_t i = 0; i < rx; ++i) {
        row[rx - 1 - i] = (float)in[i + 1];
        row[rx + W + i] = (float)in[W - 2 - i];
    }
}

static inline uint8_t ff_round_u8(float v) {
    v = __builtin_rintf(v);
    v = v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v);
    return (uint8_t)(int32_t)v;
}

/* Output x of one 1-D pass: taps k0..k1 of w over src[x + k * stride]. */
static inline float ff_taps1(const float *src, int64_t stride, const float *w, int64_t k0,
                             int64_t k1) {
    float acc = w[k0] * src[k0 * stride];
    for (int64_t k = k0 + 1; k <= k1; ++k) {
        float prod = w[k] * src[k * stride];
        acc = acc + prod;
    }
    return acc;
}

static void ff_blur_plane(const uint8_t *s, uint8_t *d, int64_t H, int64_t W, const float *wx,
                          int64_t kx, const float *wy, int64_t ky, float *scratch) {
    const int64_t rx = kx / 2, ry = ky / 2;
    const int64_t x0 = ff_first_tap(wx, kx), x1 = kx - 1 - x0;
    const int64_t y0 = ff_first_tap(wy, ky), y1 = ky - 1 - y0;
    float *row = scratch, *tmp = scratch + (W + kx - 1), *col = tmp + H * W;
    for (int64_t y = 0; y < H; ++y) {
        ff_pad_row(s + y * W, row, W, rx);
        for (int64_t x = 0; x < W; ++x) tmp[y * W + x] = ff_taps1(row + x, 1, wx, x0, x1);
    }
    for (int64_t x = 0; x < W; ++x) {
        for (int64_t i = 0; i < H + ky - 1; ++i) col[i] = tmp[ff_reflect(i - ry, H) * W + x];
        for (int64_t y = 0; y < H; ++y) d[y * W + x] = ff_round_u8(ff_taps1(col + y, 1, wy, y0, y1));
    }
}

#ifdef FF_X86_SIMD
/* The same sums, 32 outputs per step in four vectors (each lane the same operations). */
FF_AVX2 static void ff_blur_plane_avx2(const uint8_t *s, uint8_t *d, int64_t H, int64_t W,
                                       const float *wx, int64_t kx, const float *wy, int64_t ky,
                                       float *scratch, const float **rows) {
    const int64_t rx = kx / 2, ry = ky / 2;
    const int64_t x0 = ff_first_tap(wx, kx), x1 = kx - 1 - x0;
    const int64_t y0 = ff_first_tap(wy, ky), y1 = ky - 1 - y0;
    float *row = scratch, *tmp = scratch + (W + kx - 1);
    for (int64_t y = 0; y < H; ++y) {
        ff_pad_row(s + y * W, row, W, rx);
        float *o = tmp + y * W;
        int64_t x = 0;
        for (; x + 32 <= W; x += 32) {
            const float *r = row + x;
            __m256 w = _mm256_set1_ps(wx[x0]);
            __m256 a0 = _mm256_mul_ps(w, _mm256_loadu_ps(r + x0));
            __m256 a1 = _mm256_mul_ps(w, _mm256_loadu_ps(r + x0 + 8));
            __m256 a2 = _mm256_mul_ps(w, _mm256_loadu_ps(r + x0 + 16));
            __m256 a3 = _mm256_mul_ps(w, _mm256_loadu_ps(r + x0 + 24));
            for (int64_t k = x0 + 1; k <= x1; ++k) {
                w = _mm256_set1_ps(wx[k]);
                a0 = _mm256_add_ps(a0, _mm256_mul_ps(w, _mm256_loadu_ps(r + k)));
                a1 = _mm256_add_ps(a1, _mm256_mul_ps(w, _mm256_loadu_ps(r + k + 8)));
                a2 = _mm256_add_ps(a2, _mm256_mul_ps(w, _mm256_loadu_ps(r + k + 16)));
                a3 = _mm256_add_ps(a3, _mm256_mul_ps(w, _mm256_loadu_ps(r + k + 24)));
            }
            _mm256_storeu_ps(o + x, a0);
            _mm256_storeu_ps(o + x + 8, a1);
            _mm256_storeu_ps(o + x + 16, a2);
            _mm256_storeu_ps(o + x + 24, a3);
        }
        for (; x < W; ++x) o[x] = ff_taps1(row + x, 1, wx, x0, x1);
    }
    const __m256 lo = _mm256_setzero_ps(), hi = _mm256_set1_ps(255.0f);
    const int nearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    for (int64_t y = 0; y < H; ++y) {
        for (int64_t k = y0; k <= y1; ++k) rows[k] = tmp + ff_reflect(y - ry + k, H) * W;
        uint8_t *out = d + y * W;
        int64_t x = 0;
        for (; x + 32 <= W; x += 32) {
            __m256 w = _mm256_set1_ps(wy[y0]);
            const float *r = rows[y0] + x;
            __m256 a[4];
            for (int v = 0; v < 4; ++v) a[v] = _mm256_mul_ps(w, _mm256_loadu_ps(r + 8 * v));
            for (int64_t k = y0 + 1; k <= y1; ++k) {
                w = _mm256_set1_ps(wy[k]);
                r = rows[k] + x;
                for (int v = 0; v < 4; ++v)
                    a[v] = _mm256_add_ps(a[v], _mm256_mul_ps(w, _mm256_loadu_ps(r + 8 * v)));
            }
            __m256i i[4];
            for (int v = 0; v < 4; ++v)
                i[v] = _mm256_cvttps_epi32(
                    _mm256_min_ps(_mm256_max_ps(_mm256_round_ps(a[v], nearest), lo), hi));
            /* pack 32 int32 to 32 bytes; packs interleave 128-bit lanes, the permute restores
             * the order */
            __m256i w01 = _mm256_packus_epi32(i[0], i[1]), w23 = _mm256_packus_epi32(i[2], i[3]);
            __m256i b = _mm256_packus_epi16(w01, w23);
            b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256((__m256i *)(out + x), b);
        }
        for (; x < W; ++x) {
            float acc = wy[y0] * rows[y0][x];
            for (int64_t k = y0 + 1; k <= y1; ++k) {
                float prod = wy[k] * rows[k][x];
                acc = acc + prod;
            }
            out[x] = ff_round_u8(acc);
        }
    }
}
#endif

/* Blur every channel of src[rows[j]] into dst[rows[j]] with the taps wx[j] ([kx]) along the
 * width and wy[j] ([ky]) along the height. */
void ff_blur(const uint8_t *src, uint8_t *dst, int64_t n, const int64_t *rows, int64_t C,
             int64_t H, int64_t W, const float *wx, int64_t kx, const float *wy, int64_t ky,
             float *scratch) {
#ifdef FF_X86_SIMD
    __builtin_cpu_init();
    const int avx2 = __builtin_cpu_supports("avx2");
    const float *row_ptrs[ky];
#endif
    const int64_t P = H * W;
    for (int64_t j = 0; j < n; ++j) {
        int64_t b = ROW(j);
        for (int64_t c = 0; c < C; ++c) {
            const uint8_t *s = src + (b * C + c) * P;
            uint8_t *d = dst + (b * C + c) * P;
#ifdef FF_X86_SIMD
            if (avx2) {
                ff_blur_plane_avx2(s, d, H, W, wx + j * kx, kx, wy + j * ky, ky, scratch,
                                   row_ptrs);
                continue;
            }
#endif
            ff_blur_plane(s, d, H, W, wx + j * kx, kx, wy + j * ky, ky, scratch);
        }
    }
}
