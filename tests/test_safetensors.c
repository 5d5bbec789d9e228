/* test_safetensors.c: f16/bf16 conversions (exhaustive where cheap), writer/reader round trips,
 * header layout as HF writes it, sharded indexes, and the real stories260K checkpoint. */
#include "harness.h"

#include <float.h>
#include <ftw.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../src/safetensors.h"

// --- helpers --------------------------------------------------------------------------------

static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static uint32_t rng_state = 12345u;
static uint32_t rng_u32(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static void rm_tree(const char *dir) {
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Writes a raw safetensors file: u64 header length, header text, data. */
static void write_raw(const char *path, const char *header, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return;
    uint64_t hl = strlen(header);
    unsigned char len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (unsigned char)(hl >> (8 * i));
    fwrite(len8, 1, 8, f);
    fwrite(header, 1, (size_t)hl, f);
    if (n) fwrite(data, 1, n, f);
    fclose(f);
}

static int file_exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0;
}

/* Reference bf16 rounding: nearest of the two candidates by exact (double) distance, ties to
 * the even one. For finite, non-overflowing x only. */
static uint16_t ref_bf16(float x) {
    uint32_t u = f32_bits(x);
    uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1);
    double dl = fabs((double)x - (double)st_bf16_to_f32(lo));
    double dh = fabs((double)x - (double)st_bf16_to_f32(hi));
    if (dl < dh) return lo;
    if (dh < dl) return hi;
    return (lo & 1) ? hi : lo;
}

// --- conversions ----------------------------------------------------------------------------

static void test_f16(void) {
    int bad_rt = 0, bad_nan = 0, bad_hw = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = st_f16_to_f32((uint16_t)h);
        uint16_t back = st_f32_to_f16(f);
        int is_nan = ((h & 0x7C00u) == 0x7C00u) && (h & 0x3FFu);
        if (is_nan) {
            if (!isnan(f) || (signbit(f) != 0) != ((h & 0x8000u) != 0)) bad_nan++;
            if ((back & 0x7C00u) != 0x7C00u || !(back & 0x3FFu)) bad_nan++;
        } else if (back != h) {
            bad_rt++;
        }
#if defined(__FLT16_MAX__)
        _Float16 hv;
        uint16_t hb = (uint16_t)h;
        memcpy(&hv, &hb, 2);
        if (!is_nan && f32_bits((float)hv) != f32_bits(f)) bad_hw++;
#endif
    }
    CHECK(bad_rt == 0, "%d f16 values do not survive f16->f32->f16", bad_rt);
    CHECK(bad_nan == 0, "%d f16 NaN conversions lost NaN-ness or sign", bad_nan);
    CHECK(bad_hw == 0, "%d f16->f32 differ from the compiler's _Float16", bad_hw);

    /* Edges of f32 -> f16 rounding. */
    CHECK(st_f32_to_f16(0.0f) == 0x0000, "+0");
    CHECK(st_f32_to_f16(-0.0f) == 0x8000, "-0");
    CHECK(st_f32_to_f16(1.0f) == 0x3C00, "1.0");
    CHECK(st_f32_to_f16(-2.0f) == 0xC000, "-2.0");
    CHECK(st_f32_to_f16(65504.0f) == 0x7BFF, "max half");
    CHECK(st_f32_to_f16(65519.0f) == 0x7BFF, "just below the halfway to inf");
    CHECK(st_f32_to_f16(65520.0f) == 0x7C00, "halfway to inf rounds to even = inf");
    CHECK(st_f32_to_f16(1e10f) == 0x7C00, "overflow -> inf");
    CHECK(st_f32_to_f16(-1e10f) == 0xFC00, "overflow -> -inf");
    CHECK(st_f32_to_f16(INFINITY) == 0x7C00, "inf");
    CHECK(st_f32_to_f16(-INFINITY) == 0xFC00, "-inf");
    uint16_t qn = st_f32_to_f16(NAN);
    CHECK((qn & 0x7C00) == 0x7C00 && (qn & 0x3FF), "nan stays nan: 0x%04x", qn);
    CHECK(st_f32_to_f16(bits_f32(0xFF800001u)) & 0x8000, "negative snan keeps its sign");
    CHECK(st_f32_to_f16(ldexpf(1.0f, -24)) == 0x0001, "smallest subnormal");
    CHECK(st_f32_to_f16(ldexpf(1.0f, -25)) == 0x0000, "half the smallest subnormal ties to 0");
    CHECK(st_f32_to_f16(ldexpf(1.5f, -25)) == 0x0001, "0.75 of a subnormal step rounds up");
    CHECK(st_f32_to_f16(ldexpf(3.0f, -25)) == 0x0002, "1.5 steps ties to even 2");
    CHECK(st_f32_to_f16(ldexpf(5.0f, -25)) == 0x0002, "2.5 steps ties to even 2");
    CHECK(st_f32_to_f16(ldexpf(1.0f, -14)) == 0x0400, "smallest normal");
    CHECK(st_f32_to_f16(ldexpf(1023.5f, -24)) == 0x0400,
          "largest subnormal + half rounds to normal");
    CHECK(st_f32_to_f16(1.0f + ldexpf(1.0f, -11)) == 0x3C00, "1 + half ulp ties to even");
    CHECK(st_f32_to_f16(1.0f + ldexpf(3.0f, -11)) == 0x3C02, "1 + 1.5 ulp ties to even (up)");
    CHECK(st_f32_to_f16(bits_f32(0x00000001u)) == 0x0000, "f32 subnormal -> 0");
    CHECK(st_f16_to_f32(0x0001) == ldexpf(1.0f, -24), "f16 min subnormal");
    CHECK(st_f16_to_f32(0x03FF) == ldexpf(1023.0f, -24), "f16 max subnormal");
    CHECK(st_f16_to_f32(0x7BFF) == 65504.0f, "f16 max");
    CHECK(isinf(st_f16_to_f32(0xFC00)) && st_f16_to_f32(0xFC00) < 0, "f16 -inf");

#if defined(__FLT16_MAX__)
    /* Random f32 patterns (all exponents) against the compiler's conversion. */
    int bad = 0;
    for (int i = 0; i < 2000000; i++) {
        float f = bits_f32(rng_u32());
        _Float16 hv = (_Float16)f;
        uint16_t want;
        memcpy(&want, &hv, 2);
        uint16_t got = st_f32_to_f16(f);
        if (isnan(f) ? !((got & 0x7C00) == 0x7C00 && (got & 0x3FF)) : got != want) {
            if (bad++ < 5)
                fprintf(stderr, "f32 0x%08x -> f16 got 0x%04x want 0x%04x\n", f32_bits(f), got,
                        want);
        }
    }
    CHECK(bad == 0, "%d random f32 -> f16 differ from the compiler's _Float16", bad);
#else
    SKIP("compiler has no _Float16: f32->f16 checked on edge cases only");
#endif
}

static void test_bf16(void) {
    int bad_rt = 0, bad_widen = 0;
    for (uint32_t b = 0; b < 65536; b++) {
        float f = st_bf16_to_f32((uint16_t)b);
        if (f32_bits(f) != b << 16) bad_widen++;
        int is_nan = ((b & 0x7F80u) == 0x7F80u) && (b & 0x7Fu);
        uint16_t back = st_f32_to_bf16(f);
        if (is_nan ? !(((back & 0x7F80u) == 0x7F80u) && (back & 0x7Fu) &&
                       ((back ^ b) & 0x8000u) == 0)
                   : back != b)
            bad_rt++;
    }
    CHECK(bad_widen == 0, "%d bf16 values do not widen exactly", bad_widen);
    CHECK(bad_rt == 0, "%d bf16 values do not survive bf16->f32->bf16", bad_rt);

    int bad = 0;
    for (int i = 0; i < 2000000; i++) {
        uint32_t u = rng_u32();
        if ((u & 0x7F800000u) == 0x7F800000u) continue; /* inf/nan: below */
        if ((u & 0x7FFFFFFFu) >= 0x7F7F8000u) continue; /* rounds to inf: below */
        if (st_f32_to_bf16(bits_f32(u)) != ref_bf16(bits_f32(u))) bad++;
    }
    CHECK(bad == 0, "%d random f32 -> bf16 differ from the nearest-even reference", bad);
    CHECK(st_f32_to_bf16(1.0f) == 0x3F80, "1.0");
    CHECK(st_f32_to_bf16(1.0f + ldexpf(1.0f, -8)) == 0x3F80, "1 + half ulp ties to even (down)");
    CHECK(st_f32_to_bf16(1.0f + ldexpf(3.0f, -8)) == 0x3F82, "1 + 1.5 ulp ties to even (up)");
    CHECK(st_f32_to_bf16(1.0f + ldexpf(1.0f, -8) + ldexpf(1.0f, -23)) == 0x3F81,
          "just above half ulp rounds up");
    CHECK(st_f32_to_bf16(FLT_MAX) == 0x7F80, "FLT_MAX rounds to inf");
    CHECK(st_f32_to_bf16(bits_f32(0x7F7F7FFFu)) == 0x7F7F, "below the inf threshold");
    CHECK(st_f32_to_bf16(INFINITY) == 0x7F80 && st_f32_to_bf16(-INFINITY) == 0xFF80, "inf");
    CHECK(st_f32_to_bf16(-0.0f) == 0x8000, "-0");
    uint16_t n1 = st_f32_to_bf16(bits_f32(0x7F800001u)); /* snan whose payload is all below */
    CHECK((n1 & 0x7F80) == 0x7F80 && (n1 & 0x7F), "snan with low payload stays nan: 0x%04x", n1);
    uint16_t n2 = st_f32_to_bf16(bits_f32(0xFFFFFFFFu));
    CHECK(n2 == 0xFFFF, "all-ones nan does not carry into the sign: 0x%04x", n2);
    CHECK(st_f32_to_bf16(bits_f32(0x00008000u)) == 0x0000, "subnormal tie to even 0");
    CHECK(st_f32_to_bf16(bits_f32(0x00018000u)) == 0x0002, "subnormal tie to even 2");
    CHECK(st_f32_to_bf16(bits_f32(0x00008001u)) == 0x0001, "subnormal above tie");
}

// --- writer / reader round trip --------------------------------------------------------------

static void test_roundtrip(const char *dir) {
    char path[512];
    snprintf(path, sizeof path, "%s/rt.safetensors", dir);
    float a[6] = {1.0f, -2.5f, 3.25f, 0.0f, -0.0f, 1e-30f};
    float b[4] = {1.0f, 65504.0f, 1e-7f, -3.14159265f};
    float c[6] = {0.1f, -0.2f, 3.0e38f, INFINITY, -INFINITY, 1e-40f};
    float s[1] = {42.0f};
    StWriteTensor ts[] = {
            {"zeta.f32", ST_F32, 2, {2, 3}, a},
            {"alpha.f16", ST_F16, 1, {4}, b},
            {"mid.bf16", ST_BF16, 3, {3, 1, 2}, c},
            {"scalar", ST_F32, 0, {0}, s},
            {"empty", ST_F32, 2, {0, 5}, NULL},
            {"odd \"name\"\\ with\ttab", ST_BF16, 1, {1}, s},
    };
    int nt = (int)(sizeof ts / sizeof ts[0]);
    const char *meta[] = {"format", "pt", "note", "quote \" slash \\ newline \n end", "empty", ""};
    TunaErr err = {0};
    int rc = safetensors_write(path, ts, nt, meta, 3, &err);
    CHECK(rc == 0, "write: %s", err.msg);
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    CHECK(!file_exists(tmp), "no %s left behind", tmp);

    /* Raw layout: padded header, HF order (F32 by name, then BF16, then F16). */
    FILE *f = fopen(path, "rb");
    unsigned char raw[4096] = {0};
    size_t got = f ? fread(raw, 1, sizeof raw, f) : 0;
    if (f) fclose(f);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--)
        hl = (hl << 8) | raw[i];
    CHECK(got > 8 && hl % 8 == 0 && hl + 8 <= got, "header length %llu padded to 8",
          (unsigned long long)hl);
    if (got > 8 && hl + 8 <= got) {
        char *h = (char *)raw + 8;
        char hdr[4096];
        memcpy(hdr, h, (size_t)hl);
        hdr[hl] = '\0';
        CHECK(strncmp(hdr, "{\"__metadata__\":{\"format\":\"pt\",", 31) == 0,
              "header starts with metadata: %.60s", hdr);
        const char *p_empty = strstr(hdr, "\"empty\":{"), *p_scalar = strstr(hdr, "\"scalar\""),
                   *p_zeta = strstr(hdr, "\"zeta.f32\""), *p_mid = strstr(hdr, "\"mid.bf16\""),
                   *p_odd = strstr(hdr, "\"odd \\\"name\\\"\\\\ with\\ttab\""),
                   *p_alpha = strstr(hdr, "\"alpha.f16\"");
        CHECK(p_empty && p_scalar && p_zeta && p_mid && p_odd && p_alpha, "all names present: %s",
              hdr);
        if (p_empty && p_scalar && p_zeta && p_mid && p_odd && p_alpha)
            CHECK(p_empty < p_scalar && p_scalar < p_zeta && p_zeta < p_mid && p_mid < p_odd &&
                          p_odd < p_alpha,
                  "HF order: F32 by name, BF16 by name, F16: %s", hdr);
        CHECK(strstr(hdr, "\"scalar\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}"),
              "scalar entry is compact JSON: %s", hdr);
        CHECK(hdr[hl - 1] == ' ' || hdr[hl - 1] == '}', "padding is spaces");
        size_t trimmed = strlen(hdr);
        while (trimmed && hdr[trimmed - 1] == ' ')
            trimmed--;
        CHECK(hdr[trimmed - 1] == '}' && hl - trimmed < 8, "at most 7 pad spaces");
    }

    SafeTensors *st = NULL;
    rc = safetensors_open(path, &st, &err);
    CHECK(rc == 0 && st, "open: %s", err.msg);
    if (!st) return;
    CHECK(safetensors_count(st) == nt, "count %d", safetensors_count(st));
    CHECK(safetensors_shard_count(st) == 1, "one shard");
    CHECK(safetensors_metadata(st, "format") && !strcmp(safetensors_metadata(st, "format"), "pt"),
          "metadata format");
    CHECK(safetensors_metadata(st, "note") &&
                  !strcmp(safetensors_metadata(st, "note"), "quote \" slash \\ newline \n end"),
          "metadata escapes survive");
    CHECK(safetensors_metadata(st, "empty") && !safetensors_metadata(st, "empty")[0],
          "empty value");
    CHECK(safetensors_metadata(st, "missing") == NULL, "absent key");
    CHECK(safetensors_find(st, "nope") == NULL, "absent tensor");
    CHECK(safetensors_at(st, -1) == NULL && safetensors_at(st, nt) == NULL, "at() bounds");

    for (int i = 0; i < nt; i++) {
        const StTensor *t = safetensors_find(st, ts[i].name);
        CHECK(t != NULL, "find %s", ts[i].name);
        if (!t) continue;
        CHECK(t->dtype == ts[i].dtype, "%s dtype %s", ts[i].name, st_dtype_name(t->dtype));
        CHECK(t->ndim == ts[i].ndim, "%s ndim %d", ts[i].name, t->ndim);
        size_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            CHECK(t->shape[d] == ts[i].shape[d], "%s shape[%d]", ts[i].name, d);
            numel *= (size_t)ts[i].shape[d];
        }
        CHECK(st_tensor_numel(t) == numel, "%s numel %zu", ts[i].name, st_tensor_numel(t));
        CHECK(t->nbytes == numel * st_dtype_size(t->dtype), "%s nbytes", ts[i].name);
        CHECK(((uintptr_t)t->data % st_dtype_size(t->dtype)) == 0, "%s data aligned", ts[i].name);
        float out[8] = {0};
        rc = st_tensor_to_f32(t, out, numel, &err);
        CHECK(rc == 0, "%s to_f32: %s", ts[i].name, err.msg);
        for (size_t k = 0; k < numel; k++) {
            float x = ts[i].data[k];
            float want = ts[i].dtype == ST_F32   ? x
                         : ts[i].dtype == ST_F16 ? st_f16_to_f32(st_f32_to_f16(x))
                                                 : st_bf16_to_f32(st_f32_to_bf16(x));
            CHECK(f32_bits(out[k]) == f32_bits(want), "%s[%zu] = %g, want %g", ts[i].name, k,
                  (double)out[k], (double)want);
        }
    }
    /* bf16 of 0.1f and f16 of 65504 exactly. */
    const StTensor *mid = safetensors_find(st, "mid.bf16");
    if (mid) {
        uint16_t v;
        memcpy(&v, mid->data, 2);
        CHECK(v == 0x3DCD, "bf16(0.1) = 0x%04x, want 0x3DCD", v);
    }
    /* Conversion errors name the tensor. */
    const StTensor *z = safetensors_find(st, "zeta.f32");
    if (z) {
        float out[8];
        tuna_err_clear(&err);
        rc = st_tensor_to_f32(z, out, 5, &err);
        CHECK(rc == TUNA_EINVAL && strstr(err.msg, "zeta.f32"), "n mismatch: %d %s", rc, err.msg);
    }
    safetensors_free(st);

    /* Overwrite in place with no tensors and no metadata: "{}" + 6 spaces. */
    rc = safetensors_write(path, NULL, 0, NULL, 0, &err);
    CHECK(rc == 0, "write empty: %s", err.msg);
    st = NULL;
    rc = safetensors_open(path, &st, &err);
    CHECK(rc == 0 && safetensors_count(st) == 0 && safetensors_find(st, "a") == NULL,
          "empty file reads: %s", err.msg);
    safetensors_free(st);
    safetensors_free(NULL);
}

static void test_writer_errors(const char *dir) {
    char path[512];
    snprintf(path, sizeof path, "%s/bad_w.safetensors", dir);
    float x[4] = {0};
    TunaErr err = {0};
    StWriteTensor dup[] = {{"w", ST_F32, 1, {4}, x}, {"w", ST_F16, 1, {4}, x}};
    CHECK(safetensors_write(path, dup, 2, NULL, 0, &err) == TUNA_EINVAL && strstr(err.msg, "\"w\""),
          "duplicate names (different dtypes): %s", err.msg);
    StWriteTensor i64[] = {{"w", ST_I64, 1, {4}, x}};
    CHECK(safetensors_write(path, i64, 1, NULL, 0, &err) == TUNA_EUNSUP, "I64: %s", err.msg);
    StWriteTensor neg[] = {{"w", ST_F32, 1, {-4}, x}};
    CHECK(safetensors_write(path, neg, 1, NULL, 0, &err) == TUNA_EINVAL, "negative: %s", err.msg);
    StWriteTensor nul[] = {{"w", ST_F32, 1, {4}, NULL}};
    CHECK(safetensors_write(path, nul, 1, NULL, 0, &err) == TUNA_EINVAL, "NULL data: %s", err.msg);
    StWriteTensor res[] = {{"__metadata__", ST_F32, 1, {4}, x}};
    CHECK(safetensors_write(path, res, 1, NULL, 0, &err) == TUNA_EINVAL, "reserved: %s", err.msg);
    const char *meta[] = {"k", "1", "k", "2"};
    StWriteTensor ok[] = {{"w", ST_F32, 1, {4}, x}};
    CHECK(safetensors_write(path, ok, 1, meta, 2, &err) == TUNA_EINVAL, "dup meta: %s", err.msg);
    char nodir[600];
    snprintf(nodir, sizeof nodir, "%s/no/such/dir/x.safetensors", dir);
    CHECK(safetensors_write(nodir, ok, 1, NULL, 0, &err) == TUNA_EIO && strstr(err.msg, nodir),
          "unwritable: %s", err.msg);
    CHECK(!file_exists(path), "failed writes leave nothing");
}

/* Files written by others: unpadded header (unaligned data), other dtypes, gaps. */
static void test_raw_reads(const char *dir) {
    char path[512];
    TunaErr err = {0};
    SafeTensors *st = NULL;
    snprintf(path, sizeof path, "%s/raw.safetensors", dir);
    unsigned char data[64];
    for (int i = 0; i < 64; i++)
        data[i] = (unsigned char)i;
    float one = 1.5f;
    memcpy(data + 8, &one, 4);
    /* Header length 121 (odd): data is unaligned. b is at [8,12), gap [12,16), c empty. */
    write_raw(path,
              "{\"a\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]},"
              "\"b\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[8,12]},"
              "\"c\":{\"dtype\":\"U8\",\"shape\":[0,3],\"data_offsets\":[12,12]}}",
              data, 16);
    int rc = safetensors_open(path, &st, &err);
    CHECK(rc == 0, "unaligned, gap, empty tensor: %s", err.msg);
    if (st) {
        const StTensor *a = safetensors_find(st, "a"), *b = safetensors_find(st, "b");
        CHECK(a && a->dtype == ST_I64 && a->nbytes == 8, "I64 entry");
        float out = 0;
        CHECK(b && st_tensor_to_f32(b, &out, 1, &err) == 0 && out == 1.5f, "unaligned F32 read");
        tuna_err_clear(&err);
        CHECK(a && st_tensor_to_f32(a, &out, 1, &err) == TUNA_EUNSUP && strstr(err.msg, "\"a\"") &&
                      strstr(err.msg, "I64"),
              "I64 to f32 unsupported: %s", err.msg);
        CHECK(!strcmp(safetensors_at(st, 0)->name, "a") &&
                      !strcmp(safetensors_at(st, 2)->name, "c"),
              "header order kept");
        safetensors_free(st);
    }
    CHECK(strcmp(st_dtype_name(ST_BF16), "BF16") == 0 && st_dtype_size(ST_BF16) == 2 &&
                  st_dtype_size(ST_F64) == 8 && st_dtype_size(ST_BOOL) == 1 &&
                  strcmp(st_dtype_name(ST_BOOL), "BOOL") == 0,
          "dtype table");
}

// --- sharded ----------------------------------------------------------------------------------

static void test_sharded(const char *dir) {
    char sub[512], p1[600], p2[600], idx[600];
    snprintf(sub, sizeof sub, "%s/sharded", dir);
    mkdir(sub, 0755);
    snprintf(p1, sizeof p1, "%s/model-00001-of-00002.safetensors", sub);
    snprintf(p2, sizeof p2, "%s/model-00002-of-00002.safetensors", sub);
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", sub);
    float wa[6] = {1, 2, 3, 4, 5, 6}, wb[2] = {7, 8}, wc[3] = {9, 10, 11};
    StWriteTensor s1[] = {{"model.a", ST_F32, 2, {2, 3}, wa}, {"model.b", ST_BF16, 1, {2}, wb}};
    StWriteTensor s2[] = {{"model.c", ST_F16, 1, {3}, wc}};
    const char *m1[] = {"format", "pt"}, *m2[] = {"format", "other", "shard", "2"};
    TunaErr err = {0};
    CHECK(safetensors_write(p1, s1, 2, m1, 1, &err) == 0, "shard 1: %s", err.msg);
    CHECK(safetensors_write(p2, s2, 1, m2, 2, &err) == 0, "shard 2: %s", err.msg);
    FILE *f = fopen(idx, "w");
    if (f) {
        fputs("{\"metadata\": {\"total_size\": 42},\n \"weight_map\": {\n"
              "  \"model.a\": \"model-00001-of-00002.safetensors\",\n"
              "  \"model.c\": \"model-00002-of-00002.safetensors\",\n"
              "  \"model.b\": \"model-00001-of-00002.safetensors\"}}\n",
              f);
        fclose(f);
    }
    for (int pass = 0; pass < 2; pass++) {
        SafeTensors *st = NULL;
        int rc = safetensors_open(pass ? idx : sub, &st, &err);
        CHECK(rc == 0, "open sharded via %s: %s", pass ? "index" : "dir", err.msg);
        if (!st) continue;
        CHECK(safetensors_count(st) == 3, "3 tensors");
        CHECK(safetensors_shard_count(st) == 2, "2 shards");
        const StTensor *a = safetensors_find(st, "model.a"), *b = safetensors_find(st, "model.b"),
                       *c = safetensors_find(st, "model.c");
        CHECK(a && b && c, "all found");
        if (a && b && c) {
            CHECK(a->shard == 0 && b->shard == 0 && c->shard == 1, "shard ids");
            CHECK(strstr(safetensors_shard_path(st, c->shard), "model-00002-of-00002"),
                  "shard path %s", safetensors_shard_path(st, c->shard));
            float out[6];
            CHECK(st_tensor_to_f32(c, out, 3, &err) == 0 && out[0] == 9 && out[2] == 11,
                  "c values");
            CHECK(st_tensor_to_f32(b, out, 2, &err) == 0 && out[1] == 8, "b values");
            CHECK(st_tensor_to_f32(a, out, 6, &err) == 0 && out[5] == 6, "a values");
        }
        CHECK(safetensors_metadata(st, "format") &&
                      !strcmp(safetensors_metadata(st, "format"), "pt"),
              "first shard's metadata wins");
        CHECK(safetensors_metadata(st, "shard") && !strcmp(safetensors_metadata(st, "shard"), "2"),
              "metadata merged from later shards");
        safetensors_free(st);
    }
    /* model.safetensors beside an index takes precedence (as in transformers). */
    char single[600];
    snprintf(single, sizeof single, "%s/model.safetensors", sub);
    CHECK(safetensors_write(single, s2, 1, NULL, 0, &err) == 0, "single: %s", err.msg);
    SafeTensors *st = NULL;
    CHECK(safetensors_open(sub, &st, &err) == 0 && safetensors_count(st) == 1,
          "model.safetensors preferred: %s", err.msg);
    safetensors_free(st);
    remove(single);
}

// --- the real checkpoint ----------------------------------------------------------------------

static void test_stories(void) {
    const char *shared = test_shared_dir();
    if (!shared) {
        SKIP("shared data dir not found (../shared or $TUNA_SHARED): stories260K not checked");
        return;
    }
    char dir[512];
    snprintf(dir, sizeof dir, "%s/models/stories260K", shared);
    char file[600];
    snprintf(file, sizeof file, "%s/model.safetensors", dir);
    if (!file_exists(file)) {
        SKIP("%s absent: stories260K not checked", file);
        return;
    }
    TunaErr err = {0};
    for (int pass = 0; pass < 2; pass++) {
        SafeTensors *st = NULL;
        int rc = safetensors_open(pass ? file : dir, &st, &err);
        CHECK(rc == 0, "open stories260K: %s", err.msg);
        if (!st) continue;
        /* 5 layers x 9 tensors + embed_tokens + final norm; tied, so no lm_head. */
        CHECK(safetensors_count(st) == 47, "tensor count %d, want 47", safetensors_count(st));
        CHECK(safetensors_find(st, "lm_head.weight") == NULL, "no lm_head (tied embeddings)");
        const StTensor *emb = safetensors_find(st, "model.embed_tokens.weight");
        CHECK(emb && emb->dtype == ST_F32 && emb->ndim == 2 && emb->shape[0] == 512 &&
                      emb->shape[1] == 64,
              "embed_tokens [512,64] F32");
        const StTensor *q = safetensors_find(st, "model.layers.4.self_attn.q_proj.weight");
        CHECK(q && q->ndim == 2 && q->shape[0] == 64 && q->shape[1] == 64, "q_proj [64,64]");
        const StTensor *k = safetensors_find(st, "model.layers.0.self_attn.k_proj.weight");
        CHECK(k && k->ndim == 2 && k->shape[0] == 32 && k->shape[1] == 64, "k_proj [32,64]");
        const StTensor *dn = safetensors_find(st, "model.layers.2.mlp.down_proj.weight");
        CHECK(dn && dn->shape[0] == 64 && dn->shape[1] == 172, "down_proj [64,172]");
        CHECK(safetensors_find(st, "model.norm.weight") != NULL, "final norm");
        CHECK(safetensors_metadata(st, "format") &&
                      !strcmp(safetensors_metadata(st, "format"), "pt"),
              "metadata format=pt");
        size_t total = 0;
        int nonfinite = 0, nonzero = 0;
        for (int i = 0; i < safetensors_count(st); i++) {
            const StTensor *t = safetensors_at(st, i);
            size_t n = st_tensor_numel(t);
            float *buf = malloc(n * sizeof *buf);
            if (!buf) continue;
            CHECK(st_tensor_to_f32(t, buf, n, &err) == 0, "%s: %s", t->name, err.msg);
            for (size_t j = 0; j < n; j++) {
                if (!isfinite(buf[j])) nonfinite++;
                if (buf[j] != 0) nonzero++;
            }
            total += n;
            /* released pages read back the same (from the file again) */
            float *again = malloc(n * sizeof *again);
            st_tensor_release(t);
            CHECK(again && st_tensor_to_f32(t, again, n, &err) == 0 &&
                          !memcmp(buf, again, n * sizeof *buf),
                  "%s: different after st_tensor_release", t->name);
            free(again);
            free(buf);
        }
        CHECK(nonfinite == 0, "%d non-finite weights", nonfinite);
        CHECK(nonzero > 0 && total > 250000 && total < 270000, "%zu params, %d non-zero", total,
              nonzero);
        safetensors_free(st);
    }
}

int main(void) {
    char dir[] = "/tmp/tuna_test_st_XXXXXX";
    if (!mkdtemp(dir)) {
        CHECK(0, "mkdtemp failed");
        return test_report("test_safetensors");
    }
    test_f16();
    test_bf16();
    test_roundtrip(dir);
    test_writer_errors(dir);
    test_raw_reads(dir);
    test_sharded(dir);
    test_stories();
    rm_tree(dir);
    return test_report("test_safetensors");
}
