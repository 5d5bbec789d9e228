/* test_gguf.c: the GGUF reader (round trip of an in-memory file, typed getters, every malformed
 * field refused in one line), dequantization equal to gguf-py's bit for bit, GGUF metadata read
 * into a ModelConfig or refused, and SmolLM2-135M-Instruct Q4_1 loaded as transformers' GGUF
 * loader does (weights and logits; skipped without ../shared). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../kernels/backend.h"
#include "../src/config.h"
#include "../src/gguf.h"
#include "../src/gguf_model.h"
#include "../src/model.h"
#include "../src/peft.h"
#include "../src/safetensors.h"
#include "harness.h"

// --- an in-memory GGUF writer that remembers where each field went ------------------------

typedef struct Buf {
    uint8_t *p;
    size_t n, cap;
} Buf;

static void put(Buf *b, const void *v, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, v, n);
    b->n += n;
}
static size_t put32(Buf *b, uint32_t v) {
    size_t at = b->n;
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    put(b, x, 4);
    return at;
}
static size_t put64(Buf *b, uint64_t v) {
    size_t at = put32(b, (uint32_t)v);
    put32(b, (uint32_t)(v >> 32));
    return at;
}
static size_t putstr(Buf *b, const char *s) {
    size_t at = put64(b, strlen(s));
    put(b, s, strlen(s));
    return at;
}
static void pad_to(Buf *b, size_t align) {
    while (b->n % align)
        put(b, "", 1);
}
static void set32(Buf *b, size_t at, uint32_t v) {
    for (int i = 0; i < 4; i++)
        b->p[at + (size_t)i] = (uint8_t)(v >> (8 * i));
}
static void set64(Buf *b, size_t at, uint64_t v) {
    set32(b, at, (uint32_t)v);
    set32(b, at + 4, (uint32_t)(v >> 32));
}

/* where the fields of the base file are */
typedef struct Pos {
    size_t ver, nt, nkv;
    size_t key0, arch_val;         /* "general.architecture" key length, its value's length */
    size_t align_type, align_val;  /* general.alignment */
    size_t k1_type, k1_val, k2key; /* test.k1 (u8), test.k2's key length */
    size_t k3_etype, k3_n;         /* test.k3: array of i32 */
    size_t k4_n, k4_s0;            /* test.k4: array of strings, first string's length */
    size_t k5_val;                 /* test.k5: bool */
    size_t t_name[3], t_ndim[3], t_ne[3], t_type[3], t_off[3];
    size_t data, end;
} Pos;

/* tensors: a F32 [4,2] at 0, b Q8_0 [32] at 32, c F16 [8] at 96; 128 bytes of data */
static Buf base_file(Pos *p) {
    Buf b = {0};
    put(&b, "GGUF", 4);
    p->ver = put32(&b, 3);
    p->nt = put64(&b, 3);
    p->nkv = put64(&b, 8);
    p->key0 = putstr(&b, "general.architecture");
    put32(&b, GGUF_STRING);
    p->arch_val = putstr(&b, "llama");
    putstr(&b, "general.alignment");
    p->align_type = put32(&b, GGUF_U32);
    p->align_val = put32(&b, 32);
    putstr(&b, "test.k1");
    p->k1_type = put32(&b, GGUF_U8);
    p->k1_val = b.n;
    put(&b, "\x07", 1);
    p->k2key = putstr(&b, "test.k2");
    put32(&b, GGUF_F32);
    float f = 1.5f;
    put(&b, &f, 4);
    putstr(&b, "test.k3");
    put32(&b, GGUF_ARRAY);
    p->k3_etype = put32(&b, GGUF_I32);
    p->k3_n = put64(&b, 3);
    put32(&b, 1);
    put32(&b, (uint32_t)-2);
    put32(&b, 3);
    putstr(&b, "test.k4");
    put32(&b, GGUF_ARRAY);
    put32(&b, GGUF_STRING);
    p->k4_n = put64(&b, 2);
    p->k4_s0 = putstr(&b, "a");
    putstr(&b, "bc");
    putstr(&b, "test.k5");
    put32(&b, GGUF_BOOL);
    p->k5_val = b.n;
    put(&b, "\x01", 1);
    putstr(&b, "test.k6");
    put32(&b, GGUF_I64);
    put64(&b, (uint64_t)-5);
    const char *names[3] = {"a", "b", "c"};
    const int nd[3] = {2, 1, 1}, ty[3] = {GGML_F32, GGML_Q8_0, GGML_F16};
    const uint64_t ne[3][2] = {{4, 2}, {32, 0}, {8, 0}}, off[3] = {0, 32, 96};
    for (int i = 0; i < 3; i++) {
        p->t_name[i] = putstr(&b, names[i]);
        p->t_ndim[i] = put32(&b, (uint32_t)nd[i]);
        p->t_ne[i] = b.n;
        for (int d = 0; d < nd[i]; d++)
            put64(&b, ne[i][d]);
        p->t_type[i] = put32(&b, (uint32_t)ty[i]);
        p->t_off[i] = put64(&b, off[i]);
    }
    pad_to(&b, 32);
    p->data = b.n;
    for (int i = 0; i < 8; i++) {
        float v = (float)i - 2.25f;
        put(&b, &v, 4);
    }
    /* Q8_0: d = 0.5 (fp16 0x3800), q = -16..15 */
    put(&b, "\x00\x38", 2);
    for (int i = 0; i < 32; i++) {
        int8_t q = (int8_t)(i - 16);
        put(&b, &q, 1);
    }
    while (b.n < p->data + 96)
        put(&b, "", 1);
    for (int i = 0; i < 8; i++) {
        uint16_t h = st_f32_to_f16((float)i * 0.25f);
        put(&b, &h, 2);
    }
    pad_to(&b, 32);
    p->end = b.n;
    return b;
}

static void test_round_trip(void) {
    Pos p;
    Buf b = base_file(&p);
    Gguf *g = NULL;
    TunaErr err = {0};
    int rc = gguf_open_mem(b.p, b.n, "mem.gguf", &g, &err);
    CHECK(rc == 0 && g, "open: %s", err.msg);
    if (!g) {
        free(b.p);
        return;
    }
    CHECK(gguf_version(g) == 3 && gguf_kv_count(g) == 8 && gguf_tensor_count(g) == 3,
          "counts %d %d %d", gguf_version(g), gguf_kv_count(g), gguf_tensor_count(g));
    CHECK(!strcmp(gguf_path(g), "mem.gguf"), "path %s", gguf_path(g));
    int64_t i64 = 0;
    double d = 0;
    int bl = 0;
    GgufStr s = {0};
    const GgufArr *a = NULL;
    CHECK(gguf_get_int(g, "test.k1", &i64, &err) == 1 && i64 == 7, "k1 %lld", (long long)i64);
    CHECK(gguf_get_int(g, "test.k6", &i64, &err) == 1 && i64 == -5, "k6 %lld", (long long)i64);
    CHECK(gguf_get_int(g, "test.k5", &i64, &err) == 1 && i64 == 1, "bool as int");
    CHECK(gguf_get_float(g, "test.k2", &d, &err) == 1 && d == 1.5, "k2 %g", d);
    CHECK(gguf_get_float(g, "test.k1", &d, &err) == 1 && d == 7.0, "k1 as float %g", d);
    CHECK(gguf_get_bool(g, "test.k5", &bl, &err) == 1 && bl == 1, "k5");
    CHECK(gguf_get_str(g, "general.architecture", &s, &err) == 1 && s.len == 5 &&
                  !memcmp(s.s, "llama", 5),
          "arch");
    CHECK(gguf_get_arr(g, "test.k3", &a, &err) == 1 && a->n == 3 && a->elem_type == GGUF_I32 &&
                  gguf_arr_int(a, 0) == 1 && gguf_arr_int(a, 1) == -2 &&
                  gguf_arr_float(a, 2) == 3.0 && gguf_arr_int(a, 3) == 0,
          "k3");
    CHECK(gguf_get_arr(g, "test.k4", &a, &err) == 1 && a->n == 2 && a->strs[1].len == 2 &&
                  !memcmp(a->strs[1].s, "bc", 2),
          "k4");
    CHECK(gguf_get_int(g, "absent", &i64, &err) == 0, "absent key");
    /* wrong types: one line naming the file and key */
    rc = gguf_get_int(g, "test.k2", &i64, &err);
    CHECK(rc < 0 && strstr(err.msg, "mem.gguf") && strstr(err.msg, "test.k2"), "%s", err.msg);
    CHECK(gguf_get_str(g, "test.k1", &s, &err) < 0, "str of u8");
    CHECK(gguf_get_bool(g, "test.k1", &bl, &err) < 0, "bool of u8");
    CHECK(gguf_get_arr(g, "test.k1", &a, &err) < 0, "arr of u8");
    CHECK(gguf_get_float(g, "general.architecture", &d, &err) < 0, "float of str");

    const GgufTensor *ta = gguf_find_tensor(g, "a"), *tb = gguf_find_tensor(g, "b"),
                     *tc = gguf_find_tensor(g, "c");
    CHECK(ta && tb && tc && !gguf_find_tensor(g, "d"), "find");
    if (ta && tb && tc) {
        CHECK(ta->ndim == 2 && ta->ne[0] == 4 && ta->ne[1] == 2 && gguf_tensor_numel(ta) == 8 &&
                      ta->nbytes == 32 && (const uint8_t *)ta->data == b.p + p.data,
              "a info");
        CHECK(tb->nbytes == 34 && (const uint8_t *)tb->data == b.p + p.data + 32, "b info");
        float out[32];
        CHECK(gguf_tensor_to_f32(g, ta, out, 8, &err) == 0 && out[0] == -2.25f && out[7] == 4.75f,
              "a values");
        CHECK(gguf_tensor_to_f32(g, tb, out, 32, &err) == 0 && out[0] == -8.0f && out[31] == 7.5f,
              "b values %g %g", (double)out[0], (double)out[31]);
        CHECK(gguf_tensor_to_f32(g, tc, out, 8, &err) == 0 && out[3] == 0.75f, "c values");
        CHECK(gguf_tensor_to_f32(g, ta, out, 7, &err) == TUNA_EINVAL, "n mismatch");
        gguf_tensor_release(ta);
        CHECK(gguf_tensor_to_f32(g, ta, out, 8, &err) == 0 && out[1] == -1.25f, "after release");
    }
    CHECK(!strcmp(ggml_type_name(GGML_Q4_K), "Q4_K") && !strcmp(ggml_type_name(4), "?") &&
                  ggml_type_supported(GGML_Q6_K) && !ggml_type_supported(6),
          "type names");
    gguf_free(g);

    /* v2, and a valid file with a type tuna does not read: open works, the conversion says
     * which tensor and type */
    set32(&b, p.ver, 2);
    set32(&b, p.t_type[2], 24); /* I8 [16] = 16 bytes, as F16 [8] */
    set64(&b, p.t_ne[2], 16);
    rc = gguf_open_mem(b.p, b.n, "mem.gguf", &g, &err);
    CHECK(rc == 0, "v2: %s", err.msg);
    if (g) {
        float out[16];
        rc = gguf_tensor_to_f32(g, gguf_find_tensor(g, "c"), out, 16, &err);
        CHECK(rc == TUNA_EUNSUP && strstr(err.msg, "\"c\"") && strstr(err.msg, "I8"), "%s",
              err.msg);
        gguf_free(g);
    }
    free(b.p);
    gguf_free(NULL);
}

// --- malformed files: each rejected with exactly one line ---------------------------------

static int n_malformed;

static void expect_bad(const Buf *b, size_t len, const char *what) {
    Gguf *g = NULL;
    TunaErr err = {0};
    int rc = gguf_open_mem(b->p, len, "bad.gguf", &g, &err);
    n_malformed++;
    CHECK(rc < 0 && g == NULL, "%s: accepted", what);
    CHECK(err.msg[0] && !strchr(err.msg, '\n') && !strncmp(err.msg, "bad.gguf: ", 10),
          "%s: message \"%s\"", what, err.msg);
    if (getenv("TUNA_TEST_VERBOSE")) printf("  %-34s %s\n", what, err.msg);
    gguf_free(g);
}

static void test_malformed(void) {
    Pos p;
    Buf base = base_file(&p);
    Buf b = {malloc(base.n), base.n, base.n};
#define RESET() memcpy(b.p, base.p, base.n)
#define BAD32(at, v, what)                                                                         \
    do {                                                                                           \
        RESET();                                                                                   \
        set32(&b, at, v);                                                                          \
        expect_bad(&b, b.n, what);                                                                 \
    } while (0)
#define BAD64(at, v, what)                                                                         \
    do {                                                                                           \
        RESET();                                                                                   \
        set64(&b, at, v);                                                                          \
        expect_bad(&b, b.n, what);                                                                 \
    } while (0)
#define BADBYTE(at, v, what)                                                                       \
    do {                                                                                           \
        RESET();                                                                                   \
        b.p[at] = (uint8_t)(v);                                                                    \
        expect_bad(&b, b.n, what);                                                                 \
    } while (0)
    RESET();
    /* truncations at every section */
    expect_bad(&b, 0, "empty file");
    expect_bad(&b, 3, "truncated magic");
    expect_bad(&b, 6, "truncated version");
    expect_bad(&b, 12, "truncated tensor count");
    expect_bad(&b, 20, "truncated metadata count");
    expect_bad(&b, p.key0 + 4, "truncated key length");
    expect_bad(&b, p.key0 + 12, "truncated key");
    expect_bad(&b, p.arch_val - 2, "truncated value type");
    expect_bad(&b, p.arch_val + 9, "truncated string value");
    expect_bad(&b, p.k1_val, "truncated u8 value");
    expect_bad(&b, p.k3_n + 4, "truncated array length");
    expect_bad(&b, p.k3_n + 14, "truncated array elements");
    expect_bad(&b, p.k4_s0 + 8, "truncated array string");
    expect_bad(&b, p.t_name[0] + 3, "truncated tensor name");
    expect_bad(&b, p.t_ne[0] + 11, "truncated tensor dims");
    expect_bad(&b, p.t_type[1] + 2, "truncated tensor type");
    expect_bad(&b, p.t_off[2] + 7, "truncated tensor offset");
    expect_bad(&b, p.t_off[2] + 8, "truncated before data section");
    expect_bad(&b, p.data + 100, "truncated data section");
    /* header */
    BADBYTE(0, 'X', "bad magic");
    RESET();
    memcpy(b.p, "FUGG", 4);
    expect_bad(&b, b.n, "big-endian magic");
    BAD32(p.ver, 1, "version 1");
    BAD32(p.ver, 4, "version 4");
    BAD64(p.nt, (uint64_t)1 << 62, "huge tensor count");
    BAD64(p.nkv, UINT64_MAX, "huge metadata count");
    BAD64(p.nt, 4, "tensor count one too many");
    BAD64(p.nkv, 9, "metadata count one too many");
    /* metadata */
    BAD64(p.key0, (uint64_t)1 << 62, "huge key length");
    BAD64(p.key0, 0, "empty key");
    BADBYTE(p.key0 + 8 + 3, 0, "NUL inside a key");
    BAD64(p.arch_val, (uint64_t)1 << 60, "huge string length");
    BAD32(p.k1_type, 99, "unknown value type");
    BAD32(p.k1_type, 13, "value type 13");
    BADBYTE(p.k5_val, 2, "bool value 2");
    BAD32(p.k3_etype, GGUF_ARRAY, "nested array");
    BAD32(p.k3_etype, 77, "unknown array element type");
    BAD64(p.k3_n, (uint64_t)1 << 61, "huge array count");
    BAD64(p.k4_n, (uint64_t)1 << 59, "huge string array count");
    BADBYTE(p.k2key + 8 + 6, '1', "duplicate key");
    BAD32(p.align_type, GGUF_I32, "alignment not a u32");
    BAD32(p.align_val, 0, "alignment 0");
    BAD32(p.align_val, 24, "alignment not a power of two");
    BAD32(p.align_val, 64, "offset misaligned for alignment 64");
    /* tensor infos */
    BAD32(p.t_ndim[0], 0, "ndim 0");
    BAD32(p.t_ndim[0], 5, "ndim 5");
    BAD64(p.t_ne[0], 0, "zero dimension");
    BAD64(p.t_ne[0], UINT64_MAX, "dimension above 2^63");
    RESET();
    set64(&b, p.t_ne[0], (uint64_t)1 << 40);
    set64(&b, p.t_ne[0] + 8, (uint64_t)1 << 40);
    expect_bad(&b, b.n, "element count overflow");
    BAD64(p.t_ne[0], (uint64_t)1 << 61, "byte size overflow");
    BAD32(p.t_type[0], 99, "unknown tensor type");
    BAD32(p.t_type[0], 4, "removed tensor type Q4_2");
    BAD32(p.t_type[0], 0x80000000u, "tensor type above INT_MAX");
    BAD64(p.t_ne[1], 16, "Q8_0 row not a multiple of 32");
    BAD64(p.t_off[1], 40, "misaligned offset");
    BAD64(p.t_off[2], (uint64_t)1 << 40, "offset out of bounds");
    BAD64(p.t_off[2], 128, "tensor runs past the data");
    BAD64(p.t_off[2], UINT64_MAX - 31, "offset + size wraps");
    BAD64(p.t_off[1], 0, "overlapping tensors");
    BADBYTE(p.t_name[1] + 8, 'a', "duplicate tensor name");
    BADBYTE(p.t_name[2] + 8, 0, "NUL tensor name");
    BAD64(p.t_name[2], 0, "empty tensor name");
    printf("malformed GGUF files rejected in one line: %d\n", n_malformed);
    CHECK(n_malformed >= 30, "%d", n_malformed);
    free(b.p);
    free(base.p);
}

// --- dequantization equals gguf-py bit for bit --------------------------------------------

static void test_dequant_fixture(void) {
    const char *path = "tests/fixtures/gguf/dequant.gguf";
    Gguf *g = NULL;
    TunaErr err = {0};
    if (gguf_open(path, &g, &err)) {
        CHECK(0, "%s", err.msg);
        return;
    }
    const char *types[] = {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q4_k", "q5_k", "q6_k"};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        char en[64];
        snprintf(en, sizeof en, "%s.expected", types[i]);
        const GgufTensor *t = gguf_find_tensor(g, types[i]), *e = gguf_find_tensor(g, en);
        CHECK(t && e && e->type == GGML_F32 && gguf_tensor_numel(t) == gguf_tensor_numel(e),
              "%s: tensors %s", path, types[i]);
        if (!t || !e) continue;
        size_t n = gguf_tensor_numel(t);
        float *got = malloc(n * sizeof *got), *want = malloc(n * sizeof *want);
        CHECK(gguf_tensor_to_f32(g, t, got, n, &err) == 0, "%s", err.msg);
        CHECK(gguf_tensor_to_f32(g, e, want, n, &err) == 0, "%s", err.msg);
        size_t diff = 0;
        for (size_t k = 0; k < n; k++)
            diff += memcmp(&got[k], &want[k], 4) != 0;
        CHECK(diff == 0, "%s: %zu of %zu values differ from gguf-py", types[i], diff, n);
        printf("dequant %-5s %s: %zu of %zu floats bit-equal to gguf.quants.dequantize\n", types[i],
               ggml_type_name(t->type), n - diff, n);
        free(got);
        free(want);
    }
    gguf_free(g);
}

// --- metadata -> ModelConfig ---------------------------------------------------------------

typedef struct KV {
    const char *key;
    int type; /* GGUF_U32, GGUF_F32, GGUF_STRING */
    double num;
    const char *str;
} KV;

/* A tensorless file holding the given metadata. */
static Buf meta_file(const KV *kv, int n) {
    Buf b = {0};
    put(&b, "GGUF", 4);
    put32(&b, 3);
    put64(&b, 0);
    put64(&b, (uint64_t)n);
    for (int i = 0; i < n; i++) {
        putstr(&b, kv[i].key);
        put32(&b, (uint32_t)kv[i].type);
        if (kv[i].type == GGUF_STRING)
            putstr(&b, kv[i].str);
        else if (kv[i].type == GGUF_F32) {
            float f = (float)kv[i].num;
            put(&b, &f, 4);
        } else if (kv[i].type == GGUF_BOOL) {
            uint8_t v = (uint8_t)kv[i].num;
            put(&b, &v, 1);
        } else
            put32(&b, (uint32_t)kv[i].num);
    }
    return b;
}

static int config_of(const KV *kv, int n, ModelConfig *cfg, TunaErr *err) {
    Buf b = meta_file(kv, n);
    Gguf *g = NULL;
    int rc = gguf_open_mem(b.p, b.n, "m.gguf", &g, err);
    if (!rc) rc = gguf_config_from(g, cfg, err);
    gguf_free(g);
    free(b.p);
    return rc;
}

static void test_config(void) {
    KV base[] = {
            {"general.architecture", GGUF_STRING, 0, "llama"},
            {"llama.context_length", GGUF_U32, 8192, NULL},
            {"llama.embedding_length", GGUF_U32, 576, NULL},
            {"llama.block_count", GGUF_U32, 30, NULL},
            {"llama.feed_forward_length", GGUF_U32, 1536, NULL},
            {"llama.attention.head_count", GGUF_U32, 9, NULL},
            {"llama.attention.head_count_kv", GGUF_U32, 3, NULL},
            {"llama.attention.layer_norm_rms_epsilon", GGUF_F32, 1e-5, NULL},
            {"llama.rope.freq_base", GGUF_F32, 100000, NULL},
            {"llama.rope.dimension_count", GGUF_U32, 64, NULL},
            {"llama.vocab_size", GGUF_U32, 49152, NULL},
            {"tokenizer.ggml.bos_token_id", GGUF_U32, 1, NULL},
            {"tokenizer.ggml.eos_token_id", GGUF_U32, 2, NULL},
            {"", 0, 0, NULL}, /* the variant's extra key */
    };
    int n = (int)(sizeof base / sizeof base[0]);
    ModelConfig c;
    TunaErr err = {0};
    int rc = config_of(base, n - 1, &c, &err);
    CHECK(rc == 0, "%s", err.msg);
    CHECK(c.arch == ARCH_LLAMA && c.C == 576 && c.L == 30 && c.FF == 1536 && c.NH == 9 &&
                  c.KVH == 3 && c.HS == 64 && c.V == 49152 && c.max_pos == 8192 &&
                  c.rope_theta == 100000.0f && c.norm_eps == 1e-5f && c.bos_id == 1 &&
                  c.n_eos == 1 && c.eos_ids[0] == 2 && c.tie_embeddings &&
                  c.rope_type == ROPE_DEFAULT && c.norm == NORM_RMS && !c.qkv_bias,
          "llama config");
    /* accepted variants */
    base[n - 1] = (KV){"llama.rope.scaling.type", GGUF_STRING, 0, "linear"};
    base[n - 2] = (KV){"llama.rope.scaling.factor", GGUF_F32, 2.0, NULL};
    rc = config_of(base, n, &c, &err);
    CHECK(rc == 0 && c.rope_type == ROPE_LINEAR && c.rope_factor == 2.0f, "linear: %s", err.msg);
    base[n - 2] = (KV){"tokenizer.ggml.eos_token_id", GGUF_U32, 2, NULL};
    /* refused: one line naming the key and the file */
    const struct {
        KV kv;
        const char *needle;
    } bad[] = {
            {{"llama.attn_logit_softcapping", GGUF_F32, 50, NULL}, "llama.attn_logit_softcapping"},
            {{"llama.final_logit_softcapping", GGUF_F32, 30, NULL},
             "llama.final_logit_softcapping"},
            {{"llama.attention.sliding_window", GGUF_U32, 4096, NULL},
             "llama.attention.sliding_window"},
            {{"llama.expert_count", GGUF_U32, 8, NULL}, "llama.expert_count"},
            {{"llama.rope.scaling.type", GGUF_STRING, 0, "yarn"}, "llama.rope.scaling.type"},
            {{"llama.rope.dimension_count", GGUF_U32, 32, NULL}, "llama.rope.dimension_count"},
            {{"llama.attention.value_length", GGUF_U32, 32, NULL}, "llama.attention.value_length"},
            {{"llama.attention.causal", GGUF_BOOL, 0, NULL}, "llama.attention.causal"},
            {{"llama.some_new_key", GGUF_U32, 1, NULL}, "llama.some_new_key"},
            {{"general.architecture", GGUF_STRING, 0, "gemma2"}, "gemma2"},
            {{"llama.block_count", GGUF_STRING, 0, "30"}, "llama.block_count"},
            {{"tokenizer.ggml.eos_token_id", GGUF_U32, 99999, NULL}, "eos_token_id"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        KV v[sizeof base / sizeof base[0]];
        memcpy(v, base, sizeof base);
        int m = n - 1, replaced = 0;
        for (int k = 0; k < m; k++)
            if (!strcmp(v[k].key, bad[i].kv.key)) v[k] = bad[i].kv, replaced = 1;
        if (!replaced) v[m++] = bad[i].kv;
        memset(&err, 0, sizeof err);
        rc = config_of(v, m, &c, &err);
        CHECK(rc < 0 && strstr(err.msg, "m.gguf") && strstr(err.msg, bad[i].needle) &&
                      !strchr(err.msg, '\n'),
              "%s: rc %d \"%s\"", bad[i].needle, rc, err.msg);
    }
    KV qwen[] = {
            {"general.architecture", GGUF_STRING, 0, "qwen3"},
            {"qwen3.embedding_length", GGUF_U32, 64, NULL},
            {"qwen3.block_count", GGUF_U32, 2, NULL},
            {"qwen3.feed_forward_length", GGUF_U32, 128, NULL},
            {"qwen3.attention.head_count", GGUF_U32, 4, NULL},
            {"qwen3.attention.head_count_kv", GGUF_U32, 2, NULL},
            {"qwen3.attention.key_length", GGUF_U32, 32, NULL},
            {"qwen3.attention.value_length", GGUF_U32, 32, NULL},
            {"qwen3.attention.layer_norm_rms_epsilon", GGUF_F32, 1e-6, NULL},
            {"qwen3.vocab_size", GGUF_U32, 100, NULL},
    };
    rc = config_of(qwen, 10, &c, &err);
    CHECK(rc == 0 && c.arch == ARCH_QWEN3 && c.HS == 32 && c.qk_norm && c.rope_theta == 10000.0f,
          "qwen3: %s", err.msg);
    KV gpt2[] = {
            {"general.architecture", GGUF_STRING, 0, "gpt2"},
            {"gpt2.embedding_length", GGUF_U32, 64, NULL},
            {"gpt2.block_count", GGUF_U32, 2, NULL},
            {"gpt2.context_length", GGUF_U32, 128, NULL},
            {"gpt2.attention.head_count", GGUF_U32, 4, NULL},
            {"gpt2.attention.layer_norm_epsilon", GGUF_F32, 1e-5, NULL},
            {"gpt2.vocab_size", GGUF_U32, 100, NULL},
    };
    rc = config_of(gpt2, 7, &c, &err);
    CHECK(rc == 0 && c.arch == ARCH_GPT2 && c.FF == 256 && c.learned_pos && c.norm == NORM_LAYER &&
                  c.max_pos == 128 && c.qkv_bias && c.HS == 16,
          "gpt2: %s", err.msg);

    /* HF name -> GGUF name and layout */
    char nm[160];
    GgufXform x;
    int heads;
    c.arch = ARCH_LLAMA;
    c.NH = 9;
    c.KVH = 3;
    CHECK(gguf_name_for(&c, "model.layers.7.self_attn.k_proj.weight", nm, sizeof nm, &x, &heads) ==
                          0 &&
                  !strcmp(nm, "blk.7.attn_k.weight") && x == GGUF_X_UNPERMUTE && heads == 3,
          "k name %s", nm);
    CHECK(gguf_name_for(&c, "model.embed_tokens.weight", nm, sizeof nm, &x, &heads) == 0 &&
                  !strcmp(nm, "token_embd.weight") && x == GGUF_X_NONE,
          "embed name");
    c.arch = ARCH_QWEN2;
    CHECK(gguf_name_for(&c, "model.layers.0.self_attn.q_proj.bias", nm, sizeof nm, &x, &heads) ==
                          0 &&
                  !strcmp(nm, "blk.0.attn_q.bias") && x == GGUF_X_NONE,
          "qwen2 q bias not permuted");
    c.arch = ARCH_GPT2;
    CHECK(gguf_name_for(&c, "h.3.attn.c_attn.weight", nm, sizeof nm, &x, &heads) == 0 &&
                  !strcmp(nm, "blk.3.attn_qkv.weight") && x == GGUF_X_TRANSPOSE,
          "gpt2 qkv");
    CHECK(gguf_name_for(&c, "model.layers.0.foo", nm, sizeof nm, &x, &heads) < 0, "unknown");
}

// --- gguf_model_path -----------------------------------------------------------------------

static void touch(const char *path) {
    FILE *f = fopen(path, "w");
    if (f) fclose(f);
}

static void test_model_path(void) {
    char dir[] = "/tmp/tuna_gguf_XXXXXX", p[512], out[1024];
    TunaErr err = {0};
    if (!mkdtemp(dir)) {
        CHECK(0, "mkdtemp");
        return;
    }
    CHECK(gguf_model_path(dir, out, sizeof out, &err) == 0, "empty folder");
    snprintf(p, sizeof p, "%s/m.Q4_K.GGUF", dir);
    touch(p);
    CHECK(gguf_model_path(p, out, sizeof out, &err) == 1 && !strcmp(out, p), "file path");
    CHECK(gguf_model_path(dir, out, sizeof out, &err) == 1 && !strcmp(out, p), "folder: %s", out);
    snprintf(p, sizeof p, "%s/other.gguf", dir);
    touch(p);
    int rc = gguf_model_path(dir, out, sizeof out, &err);
    CHECK(rc == TUNA_EFORMAT && strstr(err.msg, ".gguf") && !strchr(err.msg, '\n'), "two: %s",
          err.msg);
    snprintf(p, sizeof p, "%s/config.json", dir);
    touch(p);
    CHECK(gguf_model_path(dir, out, sizeof out, &err) == 0, "config.json wins");
    CHECK(gguf_model_path("/nonexistent/x", out, sizeof out, &err) == 0, "absent");
    /* an empty .gguf as a model: one line */
    ModelConfig c;
    snprintf(p, sizeof p, "%s/other.gguf", dir);
    rc = config_load(p, &c, &err);
    CHECK(rc < 0 && strstr(err.msg, "other.gguf") && !strchr(err.msg, '\n'), "empty: %s", err.msg);
    const char *names[] = {"m.Q4_K.GGUF", "other.gguf", "config.json"};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
}

// --- the tiny HF fixtures written as GGUF (llama.cpp's names and layouts) load the same -----

/* Writes the HF checkpoint in dir as a GGUF file at out, the way llama.cpp's converter lays it
 * out: llama.cpp tensor names, dims innermost first, q/k rows permuted for llama and mistral,
 * GPT-2's Conv1D weights transposed. F32 throughout, so both loads must agree bit for bit. */
static int hf_to_gguf_typed(const char *dir, const char *out, ModelConfig *cfg, WType qt) {
    TunaErr err = {0};
    SafeTensors *st = NULL;
    if (config_load(dir, cfg, &err) || safetensors_open(dir, &st, &err)) {
        CHECK(0, "%s: %s", dir, err.msg);
        return -1;
    }
    const char *arch = config_arch_name(cfg->arch);
    char k[128];
    Buf h = {0}, d = {0};
    int nkv = 0, nt = 0;
    put(&h, "GGUF", 4);
    put32(&h, 3);
    size_t at_nt = put64(&h, 0), at_nkv = put64(&h, 0);
#define KEY_U32(name, v)                                                                           \
    do {                                                                                           \
        snprintf(k, sizeof k, "%s.%s", arch, name);                                                \
        putstr(&h, k);                                                                             \
        put32(&h, GGUF_U32);                                                                       \
        put32(&h, (uint32_t)(v));                                                                  \
        nkv++;                                                                                     \
    } while (0)
#define KEY_F32(name, v)                                                                           \
    do {                                                                                           \
        float f_ = (v);                                                                            \
        snprintf(k, sizeof k, "%s.%s", arch, name);                                                \
        putstr(&h, k);                                                                             \
        put32(&h, GGUF_F32);                                                                       \
        put(&h, &f_, 4);                                                                           \
        nkv++;                                                                                     \
    } while (0)
    putstr(&h, "general.architecture");
    put32(&h, GGUF_STRING);
    putstr(&h, arch);
    nkv++;
    KEY_U32("context_length", cfg->max_pos);
    KEY_U32("embedding_length", cfg->C);
    KEY_U32("block_count", cfg->L);
    KEY_U32("feed_forward_length", cfg->FF);
    KEY_U32("attention.head_count", cfg->NH);
    KEY_U32("vocab_size", cfg->V);
    if (cfg->arch == ARCH_GPT2) {
        KEY_F32("attention.layer_norm_epsilon", cfg->norm_eps);
    } else {
        KEY_U32("attention.head_count_kv", cfg->KVH);
        KEY_F32("attention.layer_norm_rms_epsilon", cfg->norm_eps);
        KEY_F32("rope.freq_base", cfg->rope_theta);
        KEY_U32("attention.key_length", cfg->HS);
        KEY_U32("attention.value_length", cfg->HS);
        KEY_U32("rope.dimension_count", cfg->HS);
        if (cfg->sliding_window) KEY_U32("attention.sliding_window", cfg->sliding_window);
    }
    if (cfg->bos_id >= 0) {
        putstr(&h, "tokenizer.ggml.bos_token_id");
        put32(&h, GGUF_U32);
        put32(&h, (uint32_t)cfg->bos_id);
        nkv++;
    }
    for (int i = 0; i < safetensors_count(st); i++) {
        const StTensor *t = safetensors_at(st, i);
        const char *name = t->name;
        if (!strncmp(name, "transformer.", 12)) name += 12;
        char gn[160];
        GgufXform x;
        int heads;
        if (gguf_name_for(cfg, name, gn, sizeof gn, &x, &heads)) continue; /* buffers */
        size_t n = st_tensor_numel(t);
        float *src = malloc(n * sizeof *src), *dst = malloc(n * sizeof *dst);
        st_tensor_to_f32(t, src, n, &err);
        size_t rows = (size_t)t->shape[0], cols = t->ndim == 2 ? (size_t)t->shape[1] : 1;
        uint64_t ne[2] = {t->ndim == 2 ? cols : rows, rows};
        if (x == GGUF_X_TRANSPOSE) {
            for (size_t r = 0; r < rows; r++)
                for (size_t c = 0; c < cols; c++)
                    dst[c * rows + r] = src[r * cols + c];
            ne[0] = rows;
            ne[1] = cols;
        } else if (x == GGUF_X_UNPERMUTE) { /* llama.cpp's permute */
            size_t hs = rows / (size_t)heads, half = hs / 2;
            for (size_t hh = 0; hh < (size_t)heads; hh++)
                for (size_t i2 = 0; i2 < half; i2++)
                    for (size_t j = 0; j < 2; j++)
                        memcpy(dst + (hh * hs + 2 * i2 + j) * cols,
                               src + (hh * hs + j * half + i2) * cols, cols * sizeof(float));
        } else {
            memcpy(dst, src, n * sizeof *dst);
        }
        putstr(&h, gn);
        put32(&h, (uint32_t)t->ndim);
        for (int dd = 0; dd < t->ndim; dd++)
            put64(&h, ne[dd]);
        /* qt: every matrix whose rows are whole blocks in qt's blocks, as llama.cpp quantizes */
        Weight q;
        if (qt != WT_F32 && t->ndim == 2 && ne[0] % (uint64_t)wtype_info[qt].block == 0 &&
            weight_quantize(&q, dst, (int)ne[1], (int)ne[0], qt, 0, &err) == 0) {
            put32(&h, (uint32_t)wtype_info[qt].ggml);
            put64(&h, d.n);
            put(&d, q.data, weight_bytes(&q));
            weight_free(&q);
        } else {
            put32(&h, GGML_F32);
            put64(&h, d.n);
            put(&d, dst, n * sizeof(float));
        }
        pad_to(&d, 32);
        nt++;
        free(src);
        free(dst);
    }
#undef KEY_U32
#undef KEY_F32
    set64(&h, at_nt, (uint64_t)nt);
    set64(&h, at_nkv, (uint64_t)nkv);
    pad_to(&h, 32);
    FILE *f = fopen(out, "wb");
    int ok = f && fwrite(h.p, 1, h.n, f) == h.n && fwrite(d.p, 1, d.n, f) == d.n;
    if (f) fclose(f);
    free(h.p);
    free(d.p);
    safetensors_free(st);
    CHECK(ok, "cannot write %s", out);
    return ok ? 0 : -1;
}

static int hf_to_gguf(const char *dir, const char *out, ModelConfig *cfg) {
    return hf_to_gguf_typed(dir, out, cfg, WT_F32);
}

/* The logits (T, V) of ids on m, from a fresh cache. */
static float *logits_of(Model *m, const int32_t *ids, int T) {
    TunaErr err = {0};
    float *lg = malloc(sizeof(float) * (size_t)T * (size_t)m->cfg.V);
    model_reset(m);
    CHECK(model_forward(m, ids, T, lg, 1, &err) == 0, "%s", err.msg);
    return lg;
}

/* A GGUF file whose matrices are typed (Q8_0, Q4_0, Q4_1, F16, BF16), loaded as stored
 * (model_load_frozen: the linear layers, token embedding and LM head keep the file's type, q
 * and k rows un-permuted as rows of blocks) against the same file dequantized to fp32
 * (model_load): on ref, where a typed matmul is the fp32 one on the dequantized weight,
 * the logits are bit-identical; on cpu within 1e-4 of the largest logit (the fused kernels
 * sum in another order). The memory estimate equals what the load kept. */
static void test_typed_gguf(void) {
    const char *dirs[] = {"tests/fixtures/llama",   "tests/fixtures/llama_tied",
                          "tests/fixtures/mistral", "tests/fixtures/qwen2",
                          "tests/fixtures/qwen3",   "tests/fixtures/gpt2"};
    const WType types[] = {WT_Q8_0, WT_Q4_1, WT_Q4_0, WT_F16, WT_BF16};
    const char *bes[] = {"ref", "cpu"};
    const int32_t ids[12] = {1, 17, 200, 3, 99, 42, 5, 250, 7, 128, 64, 11};
    int n_cases = 0;
    double worst = 0;
    for (size_t bi = 0; bi < 2; bi++) {
        TunaErr err = {0};
        Backend *be = backend_init(bes[bi], 2, &err);
        CHECK(be != NULL, "%s", err.msg);
        if (!be) continue;
        for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++)
            for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
                char out[] = "/tmp/tuna_gguf_typed_XXXXXX.gguf";
                int fd = mkstemps(out, 5);
                if (fd < 0) continue;
                close(fd);
                ModelConfig hc;
                Model *a = NULL, *b = NULL;
                ModelLoadOptions lo = model_load_frozen(1 << 30, 0);
                if (hf_to_gguf_typed(dirs[i], out, &hc, types[ti]) == 0 &&
                    model_load(out, be, &a, &err) == 0 &&
                    model_load_opts(out, be, &lo, &b, &err) == 0) {
                    /* GPT-2's Conv1D matrices are stored transposed: they load fp32 */
                    size_t n_typed, bytes = model_typed_bytes_file(out, &hc, &lo, &n_typed);
                    CHECK(b->n_qparams > 0 && bytes == b->n_qbytes && n_typed == b->n_qparams,
                          "%s %s: typed %zu (%zu bytes), estimate %zu (%zu bytes)", dirs[i],
                          wtype_info[types[ti]].name, b->n_qparams, b->n_qbytes, n_typed, bytes);
                    CHECK(b->wte_q && b->head_q && !b->wte &&
                                  (b->head_q == b->wte_q) == hc.tie_embeddings,
                          "%s: token embedding / LM head not kept typed", dirs[i]);
                    CHECK(a->n_qparams == 0, "model_load kept %zu typed", a->n_qparams);
                    CHECK(model_reserve(a, 32, 16, &err) == 0 &&
                                  model_reserve(b, 32, 16, &err) == 0,
                          "%s", err.msg);
                    for (int T = 5; T <= 12; T += 7) { /* the direct and the tiled paths */
                        float *la = logits_of(a, ids, T), *lb = logits_of(b, ids, T);
                        size_t n = (size_t)T * (size_t)hc.V;
                        double d = test_max_abs_diff(la, lb, n), s = 1.0;
                        for (size_t k = 0; k < n; k++)
                            s = fmax(s, fabs((double)la[k]));
                        if (bi == 0)
                            CHECK(!memcmp(la, lb, n * sizeof(float)),
                                  "%s %s T=%d on ref: typed logits differ from fp32 by %.3g",
                                  dirs[i], wtype_info[types[ti]].name, T, d);
                        else
                            CHECK(d <= 1e-4 * s, "%s %s T=%d on cpu: |dlogit| %.3g (max %.3g)",
                                  dirs[i], wtype_info[types[ti]].name, T, d, s);
                        worst = fmax(worst, d / s);
                        free(la);
                        free(lb);
                        n_cases++;
                    }
                } else {
                    CHECK(0, "%s %s: %s", dirs[i], wtype_info[types[ti]].name, err.msg);
                }
                model_free(a);
                model_free(b);
                unlink(out);
            }
        backend_free(be);
    }
    printf("typed GGUF: %d loads as stored match fp32 (ref bit for bit; cpu worst %.3g of the "
           "largest logit)\n",
           n_cases, worst);
}

static void test_hf_fixtures_as_gguf(void) {
    const char *dirs[] = {"tests/fixtures/llama",   "tests/fixtures/llama_tied",
                          "tests/fixtures/mistral", "tests/fixtures/qwen2",
                          "tests/fixtures/qwen3",   "tests/fixtures/gpt2"};
    TunaErr err = {0};
    Backend *be = backend_init("cpu", 1, &err);
    CHECK(be != NULL, "%s", err.msg);
    if (!be) return;
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
        char out[] = "/tmp/tuna_gguf_model_XXXXXX.gguf";
        int fd = mkstemps(out, 5);
        if (fd < 0) continue;
        close(fd);
        ModelConfig hc;
        Model *a = NULL, *b = NULL;
        if (hf_to_gguf(dirs[i], out, &hc) == 0) {
            int ra = model_load(dirs[i], be, &a, &err);
            CHECK(ra == 0, "%s", err.msg);
            int rb = model_load(out, be, &b, &err);
            CHECK(rb == 0, "%s as GGUF: %s", dirs[i], err.msg);
            if (!ra && !rb) {
                const ModelConfig *x = &a->cfg, *y = &b->cfg;
                CHECK(x->arch == y->arch && x->C == y->C && x->L == y->L && x->NH == y->NH &&
                              x->KVH == y->KVH && x->HS == y->HS && x->FF == y->FF &&
                              x->V == y->V && x->max_pos == y->max_pos &&
                              x->norm_eps == y->norm_eps && x->rope_theta == y->rope_theta &&
                              x->tie_embeddings == y->tie_embeddings &&
                              x->qkv_bias == y->qkv_bias && x->o_bias == y->o_bias &&
                              x->mlp_bias == y->mlp_bias && x->qk_norm == y->qk_norm &&
                              x->norm == y->norm && x->act == y->act &&
                              x->learned_pos == y->learned_pos &&
                              x->sliding_window == y->sliding_window,
                      "%s: config from GGUF metadata differs", dirs[i]);
                CHECK(a->n_params == b->n_params &&
                              !memcmp(a->params, b->params, a->n_params * sizeof(float)),
                      "%s: weights loaded from GGUF differ from safetensors", dirs[i]);
                CHECK(!strcmp(b->dir, out), "m->dir %s", b->dir);
                /* exported as a HF checkpoint (config.json written from the metadata), it loads
                 * back to the same model */
                char ex[] = "/tmp/tuna_gguf_export_XXXXXX";
                Model *e = NULL;
                if (mkdtemp(ex)) {
                    rmdir(ex);
                    int re = model_save_hf(b, ex, &err);
                    CHECK(re == 0, "%s: export: %s", dirs[i], err.msg);
                    if (!re) re = model_load(ex, be, &e, &err);
                    CHECK(re == 0 && e && e->cfg.HS == x->HS &&
                                  e->cfg.rope_theta == x->rope_theta &&
                                  e->cfg.norm_eps == x->norm_eps &&
                                  e->cfg.tie_embeddings == x->tie_embeddings &&
                                  e->n_params == a->n_params &&
                                  !memcmp(e->params, a->params, a->n_params * sizeof(float)),
                          "%s: GGUF exported and reloaded differs: %s", dirs[i], err.msg);
                    model_free(e);
                    char cmd[256];
                    snprintf(cmd, sizeof cmd, "rm -rf %s", ex);
                    CHECK(system(cmd) == 0, "rm");
                }
            }
        }
        model_free(a);
        model_free(b);
        unlink(out);
    }
    backend_free(be);
}

// --- SmolLM2-135M-Instruct Q4_1 against transformers' GGUF loader -------------------------

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static const float *ref_f32(const SafeTensors *ref, const char *name, size_t *n) {
    const StTensor *t = safetensors_find(ref, name);
    if (!t || t->dtype != ST_F32) return NULL;
    *n = st_tensor_numel(t);
    return t->data;
}

static void test_smollm2(void) {
    const char *shared = test_shared_dir();
    char dir[512];
    if (!shared) {
        SKIP("../shared is absent: SmolLM2 GGUF load not checked");
        return;
    }
    snprintf(dir, sizeof dir, "%s/models/smollm2-135m-instruct", shared);
    struct stat sb;
    if (stat(dir, &sb) != 0) {
        SKIP("%s is absent: SmolLM2 GGUF load not checked", dir);
        return;
    }
    TunaErr err = {0};
    SafeTensors *ref = NULL;
    if (safetensors_open("tests/fixtures/gguf/smollm2_ref.safetensors", &ref, &err)) {
        CHECK(0, "%s", err.msg);
        return;
    }
    Backend *be = backend_init("cpu", 2, &err);
    CHECK(be != NULL, "%s", err.msg);
    Model *m = NULL;
    double t0 = now_s();
    int rc = be ? model_load(dir, be, &m, &err) : -1;
    double load_s = now_s() - t0;
    CHECK(rc == 0, "%s", err.msg);
    if (rc) goto done;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("SmolLM2 Q4_1 GGUF: loaded in %.2f s, peak RSS %.0f MiB (weights %.0f MiB float32)\n",
           load_s, (double)ru.ru_maxrss / 1024.0, (double)m->n_params * 4 / 1048576.0);
    CHECK(strstr(m->dir, ".gguf") != NULL, "m->dir %s", m->dir);
    CHECK(m->cfg.tie_embeddings && m->cfg.V == 49152 && m->cfg.HS == 64, "config");
    /* sampled weights equal transformers' (the same gguf-py dequantization, un-permuted) */
    int compared = 0;
    for (int i = 0; i < safetensors_count(ref); i++) {
        const StTensor *t = safetensors_at(ref, i);
        const char *name = t->name;
        size_t nl = strlen(name);
        if (nl < 7 || strcmp(name + nl - 7, ".weight")) continue;
        const ParamInfo *pi = NULL;
        for (int k = 0; k < m->n_pinfo; k++)
            if (!strcmp(m->pinfo[k].name, name)) pi = &m->pinfo[k];
        CHECK(pi != NULL, "%s not in the model", name);
        if (!pi) continue;
        const float *mine = m->params + pi->off, *want = t->data;
        if (t->ndim == 1) {
            CHECK(test_max_abs_diff(mine, want, pi->n) == 0, "%s differs", name);
            compared++;
            continue;
        }
        char rn[200];
        snprintf(rn, sizeof rn, "%s.rows", name);
        size_t nrows = 0;
        const float *rows = ref_f32(ref, rn, &nrows);
        size_t cols = (size_t)t->shape[1], C = (size_t)pi->shape[1];
        CHECK(rows && nrows == (size_t)t->shape[0], "%s rows", name);
        if (!rows) continue;
        double worst = 0;
        for (size_t r = 0; r < nrows; r++) {
            double d = test_max_abs_diff(mine + (size_t)rows[r] * C, want + r * cols, cols);
            if (d > worst) worst = d;
        }
        CHECK(worst == 0, "%s: max |delta| %g vs transformers", name, worst);
        compared++;
    }
    printf("SmolLM2: %d sampled weights bit-equal to transformers' GGUF loader\n", compared);
    CHECK(compared >= 10, "%d", compared);
    /* last-position logits of one prompt */
    size_t n_ids = 0, n_idx = 0, n_lg = 0;
    const float *idsf = ref_f32(ref, "ids", &n_ids), *idx = ref_f32(ref, "logits.index", &n_idx),
                *lg = ref_f32(ref, "logits", &n_lg);
    CHECK(idsf && idx && lg && n_idx == n_lg, "reference logits");
    if (!idsf || !idx || !lg) goto done;
    int32_t ids[64];
    int T = (int)n_ids;
    for (int i = 0; i < T && i < 64; i++)
        ids[i] = (int32_t)idsf[i];
    float *logits = malloc(sizeof(float) * (size_t)m->cfg.V);
    CHECK(model_reserve(m, 64, 64, &err) == 0, "%s", err.msg);
    rc = model_forward(m, ids, T, logits, 0, &err);
    CHECK(rc == 0, "%s", err.msg);
    double worst = 0;
    for (size_t i = 0; i < n_idx; i++) {
        double d = fabs((double)logits[(size_t)idx[i]] - (double)lg[i]);
        if (d > worst || d != d) worst = d;
    }
    printf("SmolLM2: last-position logits of a %d-token prompt, %zu sampled: max |delta| %.3g vs "
           "transformers fp32\n",
           T, n_idx, worst);
    CHECK(worst <= 1e-3, "logits max |delta| %g", worst);
    free(logits);
done:
    model_free(m);
    if (be) backend_free(be);
    safetensors_free(ref);
}

int main(void) {
    test_round_trip();
    test_malformed();
    test_dequant_fixture();
    test_config();
    test_model_path();
    test_hf_fixtures_as_gguf();
    test_typed_gguf();
    test_smollm2();
    return test_report("test_gguf");
}
