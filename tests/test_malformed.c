/* test_malformed.c: broken safetensors / index / config.json / tokenizer.json files, generated
 * into a temporary directory at run time. Every loader must fail with a negative TUNA_E* and a
 * single non-empty line that names the file; nothing may crash or read out of bounds (run it
 * under ASan/UBSan: make test-san). Each family also has a valid control, so a loader that
 * rejects everything cannot pass. At the end, if ./tuna is built, `tuna generate` runs on a few
 * broken model directories and must exit non-zero with exactly one line on stderr.
 * TUNA_TEST_VERBOSE=1 prints every message. */
#include "harness.h"

#include <ftw.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../src/config.h"
#include "../src/safetensors.h"
#include "../src/tokenizer.h"

static char base[] = "/tmp/tuna_test_malformed_XXXXXX";
static int n_cases, verbose;

// --- helpers --------------------------------------------------------------------------------

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static void write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        CHECK(0, "cannot create %s", path);
        return;
    }
    if (n) fwrite(data, 1, n, f);
    fclose(f);
}

static void write_text(const char *path, const char *s) {
    write_file(path, s, strlen(s));
}

/* Returns a malloc'd copy of a file (NULL if unreadable). */
static char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = len >= 0 ? malloc((size_t)len + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)len, f) != (size_t)len) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[len] = '\0';
        *n = (size_t)len;
    }
    return buf;
}

static char *mkcase(const char *name) {
    static char dir[1024];
    snprintf(dir, sizeof dir, "%s/%s", base, name);
    mkdir(dir, 0755);
    return dir;
}

/* The shared contract: non-zero negative code, one non-empty line naming `file`. */
static void expect_error(const char *label, int rc, const TunaErr *err, const char *file) {
    n_cases++;
    if (verbose) printf("  %-28s rc=%d  %s\n", label, rc, err->msg);
    CHECK(rc < 0, "%s: expected a negative TUNA_E* code, got %d", label, rc);
    CHECK(err->msg[0] != '\0', "%s: empty message", label);
    CHECK(strchr(err->msg, '\n') == NULL && strchr(err->msg, '\r') == NULL,
          "%s: message is not one line: %s", label, err->msg);
    CHECK(strstr(err->msg, file) != NULL, "%s: message does not name %s: %s", label, file,
          err->msg);
}

// --- safetensors ----------------------------------------------------------------------------

/* Opens bytes written to <label>.safetensors and expects an error naming that file. */
static void st_bytes(const char *label, const void *bytes, size_t n) {
    char path[1024], file[256];
    snprintf(file, sizeof file, "%s.safetensors", label);
    snprintf(path, sizeof path, "%s/%s", base, file);
    write_file(path, bytes, n);
    SafeTensors *st = NULL;
    TunaErr err = {0};
    int rc = safetensors_open(path, &st, &err);
    CHECK(st == NULL, "%s: *out must stay NULL on failure", label);
    safetensors_free(st);
    expect_error(label, rc, &err, file);
}

/* u64 header length + header + data_len bytes of data. hlen_override < 0: strlen(header). */
static unsigned char *st_build(const char *header, int64_t hlen_override, size_t data_len,
                               size_t *n) {
    size_t hl = strlen(header);
    *n = 8 + hl + data_len;
    unsigned char *b = calloc(1, *n);
    uint64_t v = hlen_override >= 0 ? (uint64_t)hlen_override : hl;
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(v >> (8 * i));
    memcpy(b + 8, header, hl);
    for (size_t i = 0; i < data_len; i++)
        b[8 + hl + i] = (unsigned char)(i * 7);
    return b;
}

static void st_header(const char *label, const char *header, size_t data_len) {
    size_t n;
    unsigned char *b = st_build(header, -1, data_len, &n);
    st_bytes(label, b, n);
    free(b);
}

static void st_hlen(const char *label, uint64_t hlen, const char *header, size_t data_len) {
    size_t n;
    unsigned char *b = st_build(header, 0, data_len, &n);
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(hlen >> (8 * i));
    st_bytes(label, b, n);
    free(b);
}

#define T1_BODY "\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}"
#define T1      "{" T1_BODY

static void test_safetensors_files(void) {
    /* Control: the same shape of file, valid, opens. */
    {
        char path[1024];
        snprintf(path, sizeof path, "%s/control.safetensors", base);
        size_t n;
        unsigned char *b = st_build(T1, -1, 24, &n);
        write_file(path, b, n);
        free(b);
        SafeTensors *st = NULL;
        TunaErr err = {0};
        CHECK(safetensors_open(path, &st, &err) == 0 && safetensors_count(st) == 1,
              "control file must open: %s", err.msg);
        safetensors_free(st);
    }
    st_bytes("st_empty_file", "", 0);
    st_bytes("st_truncated_5_bytes", "\x10\x00\x00\x00\x00", 5);
    {
        size_t n;
        unsigned char *b = st_build(T1, -1, 24, &n);
        st_bytes("st_truncated_in_header", b, 30);
        st_bytes("st_truncated_in_data", b, n - 5);
        free(b);
    }
    st_hlen("st_hlen_beyond_file", 1000, T1, 24);
    st_hlen("st_hlen_absurd", (uint64_t)1 << 62, T1, 24);
    st_hlen("st_hlen_u64_max", UINT64_MAX, T1, 24);
    st_hlen("st_hlen_zero", 0, T1, 24);
    st_header("st_bad_json", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]",
              24);
    st_header("st_header_array", "[1,2,3]", 0);
    st_header("st_header_string", "\"F32\"", 0);
    st_header("st_trailing_garbage", "{} xyz", 0);
    {
        char h[] = "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
        size_t n;
        unsigned char *b = st_build(h, -1, 4, &n);
        b[8 + 10] = '\0'; /* a NUL inside the header */
        st_bytes("st_nul_in_header", b, n);
        free(b);
    }
    st_header("st_unknown_dtype",
              "{\"w\":{\"dtype\":\"F33\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", 24);
    st_header("st_dtype_number", "{\"w\":{\"dtype\":4,\"shape\":[2,3],\"data_offsets\":[0,24]}}",
              24);
    st_header("st_dtype_unsupported",
              "{\"w\":{\"dtype\":\"U32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", 24);
    st_header("st_shape_bytes_mismatch",
              "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}", 24);
    st_header("st_bf16_bytes_mismatch",
              "{\"w\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", 24);
    st_header("st_offsets_outside_data",
              "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[8,32]}}", 24);
    st_header("st_offsets_huge",
              "{\"w\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[9007199254740000,"
              "9007199254740004]}}",
              24);
    st_header("st_offsets_begin_gt_end",
              "{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[24,0]}}", 24);
    st_header("st_offsets_negative",
              "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 24);
    st_header("st_offsets_three",
              "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 24);
    st_header("st_offsets_strings",
              "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[\"0\",\"4\"]}}", 24);
    st_header("st_overlapping",
              "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
              "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}",
              24);
    st_header("st_overlapping_same_range",
              "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
              "\"b\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
              24);
    st_header("st_shape_negative",
              "{\"w\":{\"dtype\":\"F32\",\"shape\":[-2,-3],\"data_offsets\":[0,24]}}", 24);
    st_header("st_shape_fraction",
              "{\"w\":{\"dtype\":\"F32\",\"shape\":[2.5,2.4],\"data_offsets\":[0,24]}}", 24);
    st_header("st_shape_string",
              "{\"w\":{\"dtype\":\"F32\",\"shape\":[\"2\",3],\"data_offsets\":[0,24]}}", 24);
    st_header("st_shape_not_array",
              "{\"w\":{\"dtype\":\"F32\",\"shape\":6,\"data_offsets\":[0,24]}}", 24);
    st_header("st_shape_overflow",
              "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,"
              "0]}}",
              24);
    st_header("st_shape_9_dims",
              "{\"w\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}",
              24);
    st_header("st_missing_data_offsets", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3]}}", 24);
    st_header("st_missing_dtype", "{\"w\":{\"shape\":[2,3],\"data_offsets\":[0,24]}}", 24);
    st_header("st_missing_shape", "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,24]}}", 24);
    st_header("st_entry_not_object", "{\"w\":[\"F32\",[2,3],[0,24]]}", 24);
    st_header("st_duplicate_name",
              "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
              "\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
              24);
    st_header("st_metadata_not_object", "{\"__metadata__\":[\"pt\"]," T1_BODY, 24);
    st_header("st_metadata_value_number", "{\"__metadata__\":{\"format\":1}," T1_BODY, 24);
    st_header("st_name_with_newline",
              "{\"bad\\nname\":{\"dtype\":\"F33\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", 24);
    {
        /* Deeply nested JSON must not blow the stack. */
        size_t depth = 100000;
        char *h = malloc(2 * depth + 1);
        memset(h, '[', depth);
        memset(h + depth, ']', depth);
        h[2 * depth] = '\0';
        st_header("st_deep_nesting", h, 0);
        free(h);
    }
    {
        /* A FIFO must be refused, not block the open. */
        char path[1024];
        snprintf(path, sizeof path, "%s/st_fifo.safetensors", base);
        if (mkfifo(path, 0600) == 0) {
            TunaErr err = {0};
            SafeTensors *st = NULL;
            int rc = safetensors_open(path, &st, &err);
            expect_error("st_fifo", rc, &err, "st_fifo.safetensors");
            safetensors_free(st);
        }
        /* model.safetensors that is a directory. */
        char *dir = mkcase("st_model_is_dir");
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        mkdir(path, 0755);
        TunaErr err = {0};
        SafeTensors *st = NULL;
        int rc = safetensors_open(dir, &st, &err);
        expect_error("st_model_is_dir", rc, &err, "model.safetensors");
        safetensors_free(st);
    }
    {
        TunaErr err = {0};
        SafeTensors *st = NULL;
        char *dir = mkcase("st_empty_dir");
        int rc = safetensors_open(dir, &st, &err);
        expect_error("st_empty_dir", rc, &err, "st_empty_dir");
        safetensors_free(st);
        char missing[1100];
        snprintf(missing, sizeof missing, "%s/nope.safetensors", base);
        rc = safetensors_open(missing, &st, &err);
        expect_error("st_missing_file", rc, &err, "nope.safetensors");
        safetensors_free(st);
    }
}

/* Every truncation and many random byte flips of a valid two-tensor file: each open either
 * succeeds with in-bounds tensors or fails with a one-line message; ASan watches the reads. */
static void test_safetensors_fuzz(void) {
    const char *h = "{\"__metadata__\":{\"format\":\"pt\"},"
                    "\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
                    "\"b\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[16,22]}}";
    size_t n;
    unsigned char *good = st_build(h, -1, 24, &n);
    unsigned char *b = malloc(n);
    char path[1024];
    snprintf(path, sizeof path, "%s/fuzz.safetensors", base);
    int bad_msg = 0, bad_bounds = 0, opened = 0;
    uint32_t rng = 2463534242u;
    for (int iter = 0; iter < 3000; iter++) {
        size_t len = n;
        memcpy(b, good, n);
        if (iter <= (int)n) {
            len = (size_t)iter; /* every truncation */
        } else {
            int flips = 1 + iter % 4;
            for (int k = 0; k < flips; k++) {
                rng ^= rng << 13, rng ^= rng >> 17, rng ^= rng << 5;
                size_t at = rng % (n - 24); /* length bytes and header */
                static const char pool[] = "{}[]\",:-0123456789eE.\\ \x00\xff";
                b[at] = (rng >> 16) & 1 ? (unsigned char)pool[(rng >> 8) % (sizeof pool - 1)]
                                        : (unsigned char)(rng >> 8);
            }
        }
        write_file(path, b, len);
        SafeTensors *st = NULL;
        TunaErr err = {0};
        int rc = safetensors_open(path, &st, &err);
        if (rc) {
            if (!err.msg[0] || strchr(err.msg, '\n') || !strstr(err.msg, "fuzz.safetensors"))
                bad_msg++;
        } else {
            opened++;
            const unsigned char *lo = NULL;
            for (int i = 0; i < safetensors_count(st); i++) {
                const StTensor *t = safetensors_at(st, i);
                const unsigned char *d = t->data;
                if (!lo) lo = d; /* crude: all data sits in one mapping of len bytes */
                if (t->nbytes > len || st_tensor_numel(t) * st_dtype_size(t->dtype) != t->nbytes)
                    bad_bounds++;
                float tmp[64];
                size_t ne = st_tensor_numel(t);
                if (ne <= 64 && (t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16))
                    st_tensor_to_f32(t, tmp, ne, &err); /* ASan checks the reads */
            }
            safetensors_free(st);
        }
    }
    CHECK(bad_msg == 0, "%d fuzzed files failed without a proper one-line message", bad_msg);
    CHECK(bad_bounds == 0, "%d fuzzed files gave inconsistent tensors", bad_bounds);
    CHECK(opened > 0, "the unmodified file must open (opened %d)", opened);
    free(b);
    free(good);
}

// --- sharded index --------------------------------------------------------------------------

#define IDX "model.safetensors.index.json"
#define SH1 "model-00001-of-00002.safetensors"
#define SH2 "model-00002-of-00002.safetensors"

/* A directory with two valid shards (a,b in SH1; c in SH2) and the given index text. */
static void idx_case(const char *label, const char *index, int write_sh2, const char *mention) {
    char *dir = mkcase(label);
    char p[1200];
    float x[6] = {1, 2, 3, 4, 5, 6};
    StWriteTensor s1[] = {{"a", ST_F32, 1, {2}, x}, {"b", ST_F32, 1, {3}, x}};
    StWriteTensor s2[] = {{"c", ST_F32, 2, {2, 3}, x}};
    TunaErr err = {0};
    snprintf(p, sizeof p, "%s/" SH1, dir);
    CHECK(safetensors_write(p, s1, 2, NULL, 0, &err) == 0, "%s", err.msg);
    if (write_sh2) {
        snprintf(p, sizeof p, "%s/" SH2, dir);
        CHECK(safetensors_write(p, s2, 1, NULL, 0, &err) == 0, "%s", err.msg);
    }
    snprintf(p, sizeof p, "%s/" IDX, dir);
    write_text(p, index);
    SafeTensors *st = NULL;
    int rc = safetensors_open(dir, &st, &err);
    if (!mention) {
        CHECK(rc == 0 && safetensors_count(st) == 3, "%s: valid index must open: %s", label,
              err.msg);
    } else {
        CHECK(st == NULL, "%s: *out must stay NULL", label);
        expect_error(label, rc, &err, mention);
    }
    safetensors_free(st);
}

#define WM(body) "{\"metadata\":{\"total_size\":44},\"weight_map\":{" body "}}"
#define OK_MAP   "\"a\":\"" SH1 "\",\"b\":\"" SH1 "\",\"c\":\"" SH2 "\""

static void test_index_files(void) {
    idx_case("idx_control", WM(OK_MAP), 1, NULL);
    idx_case("idx_bad_json", "{\"weight_map\":{\"a\":", 1, IDX);
    idx_case("idx_not_object", "[\"" SH1 "\"]", 1, IDX);
    idx_case("idx_no_weight_map", "{\"metadata\":{}}", 1, IDX);
    idx_case("idx_weight_map_array", "{\"weight_map\":[\"" SH1 "\"]}", 1, IDX);
    idx_case("idx_weight_map_empty", "{\"weight_map\":{}}", 1, IDX);
    idx_case("idx_value_not_string", WM("\"a\":1"), 1, IDX);
    idx_case("idx_missing_shard", WM(OK_MAP), 0, SH2);
    idx_case("idx_dotdot_path", WM("\"a\":\"../" SH1 "\""), 1, IDX);
    idx_case("idx_dotdot_inner", WM("\"a\":\"sub/../../" SH1 "\""), 1, IDX);
    idx_case("idx_absolute_path", WM("\"a\":\"/etc/passwd\""), 1, IDX);
    idx_case("idx_empty_shard_name", WM("\"a\":\"\""), 1, IDX);
    idx_case("idx_shard_is_dir", WM("\"a\":\".\""), 1, "idx_shard_is_dir");
    idx_case("idx_tensor_not_in_shard", WM(OK_MAP ",\"zz\":\"" SH2 "\""), 1, IDX);
    idx_case("idx_tensor_wrong_shard", WM("\"a\":\"" SH2 "\",\"c\":\"" SH2 "\""), 1, IDX);
    {
        /* A shard that is itself broken: the message names the shard. */
        char *dir = mkcase("idx_broken_shard");
        char p[1200];
        snprintf(p, sizeof p, "%s/" SH2, dir);
        write_text(p, "\x08\x00\x00\x00");
        idx_case("idx_broken_shard", WM(OK_MAP), 0, SH2);
    }
    {
        /* The same tensor in two shards. */
        char *dir = mkcase("idx_dup_across_shards");
        char p[1200];
        float x[6] = {0};
        StWriteTensor s2[] = {{"a", ST_F32, 1, {2}, x}, {"c", ST_F32, 2, {2, 3}, x}};
        TunaErr err = {0};
        snprintf(p, sizeof p, "%s/" SH2, dir);
        CHECK(safetensors_write(p, s2, 2, NULL, 0, &err) == 0, "%s", err.msg);
        idx_case("idx_dup_across_shards", WM(OK_MAP), 0, "\"a\"");
    }
}

// --- config.json ----------------------------------------------------------------------------

static const char *config_ok =
        "{\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\",\"hidden_size\":64,"
        "\"intermediate_size\":172,\"num_hidden_layers\":5,\"num_attention_heads\":8,"
        "\"num_key_value_heads\":4,\"head_dim\":8,\"hidden_act\":\"silu\",\"vocab_size\":512,"
        "\"max_position_embeddings\":512,\"rms_norm_eps\":1e-05,\"rope_theta\":10000.0,"
        "\"tie_word_embeddings\":true,\"bos_token_id\":1,\"eos_token_id\":2,"
        "\"torch_dtype\":\"float32\"}";

/* config_ok with `from` replaced by `to` (from must occur). */
static char *subst(const char *s, const char *from, const char *to) {
    const char *at = strstr(s, from);
    CHECK(at != NULL, "template lacks %s", from);
    if (!at) return strdup(s);
    size_t n = strlen(s) - strlen(from) + strlen(to);
    char *out = malloc(n + 1);
    size_t pre = (size_t)(at - s);
    memcpy(out, s, pre);
    strcpy(out + pre, to);
    strcat(out, at + strlen(from));
    return out;
}

static void cfg_case(const char *label, const char *text) {
    char *dir = mkcase(label);
    char p[1200];
    snprintf(p, sizeof p, "%s/config.json", dir);
    if (text) write_text(p, text);
    ModelConfig cfg;
    TunaErr err = {0};
    int rc = config_load(dir, &cfg, &err);
    expect_error(label, rc, &err, "config.json");
}

static void cfg_subst(const char *label, const char *from, const char *to) {
    char *t = subst(config_ok, from, to);
    cfg_case(label, t);
    free(t);
}

static void test_config_files(void) {
    {
        char *dir = mkcase("cfg_control");
        char p[1200];
        snprintf(p, sizeof p, "%s/config.json", dir);
        write_text(p, config_ok);
        ModelConfig cfg;
        TunaErr err = {0};
        CHECK(config_load(dir, &cfg, &err) == 0 && cfg.C == 64 && cfg.NH == 8 && cfg.V == 512,
              "control config must load: %s", err.msg);
    }
    cfg_case("cfg_missing_file", NULL);
    cfg_case("cfg_bad_json", "{\"model_type\":\"llama\",\"hidden_size\":64,");
    cfg_case("cfg_empty", "");
    cfg_case("cfg_array", "[1,2]");
    cfg_subst("cfg_missing_hidden_size", "\"hidden_size\":64,", "");
    cfg_subst("cfg_unknown_model_type", "\"model_type\":\"llama\"", "\"model_type\":\"bert\"");
    cfg_subst("cfg_model_type_newline", "\"model_type\":\"llama\"", "\"model_type\":\"x\\ny\"");
    cfg_subst("cfg_missing_model_type", "\"model_type\":\"llama\",", "");
    cfg_subst("cfg_heads_not_dividing",
              "\"num_attention_heads\":8,\"num_key_value_heads\":4,\"head_dim\":8,",
              "\"num_attention_heads\":7,\"num_key_value_heads\":7,");
    cfg_subst("cfg_kv_heads_not_dividing", "\"num_key_value_heads\":4",
              "\"num_key_value_heads\":3");
    cfg_subst("cfg_negative_vocab", "\"vocab_size\":512", "\"vocab_size\":-512");
    cfg_subst("cfg_zero_layers", "\"num_hidden_layers\":5", "\"num_hidden_layers\":0");
    cfg_subst("cfg_hidden_size_string", "\"hidden_size\":64", "\"hidden_size\":\"64\"");
    cfg_subst("cfg_hidden_size_fraction", "\"hidden_size\":64", "\"hidden_size\":64.5");
    cfg_subst("cfg_hidden_size_huge", "\"hidden_size\":64", "\"hidden_size\":1e300");
    cfg_subst("cfg_zero_heads", "\"num_attention_heads\":8", "\"num_attention_heads\":0");
    cfg_subst("cfg_tie_string", "\"tie_word_embeddings\":true", "\"tie_word_embeddings\":\"yes\"");
    cfg_subst("cfg_eps_string", "\"rms_norm_eps\":1e-05", "\"rms_norm_eps\":\"small\"");
}

// --- tokenizer.json -------------------------------------------------------------------------

static const char *tok_ok =
        "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\"added_tokens\":[],"
        "\"normalizer\":null,\"pre_tokenizer\":null,\"post_processor\":null,\"decoder\":null,"
        "\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":null,"
        "\"continuing_subword_prefix\":null,\"end_of_word_suffix\":null,\"fuse_unk\":false,"
        "\"byte_fallback\":false,\"vocab\":{\"a\":0,\"b\":1,\"ab\":2,\"c\":3},"
        "\"merges\":[\"a b\"]}}";

static void tok_case(const char *label, const char *text) {
    char *dir = mkcase(label);
    char p[1200];
    snprintf(p, sizeof p, "%s/tokenizer.json", dir);
    if (text) write_text(p, text);
    Tokenizer *tok = NULL;
    TunaErr err = {0};
    int rc = tokenizer_load(dir, &tok, &err);
    CHECK(tok == NULL, "%s: *out must stay NULL on failure", label);
    tokenizer_free(tok);
    expect_error(label, rc, &err, "tokenizer.json");
}

static void tok_subst(const char *label, const char *from, const char *to) {
    char *t = subst(tok_ok, from, to);
    tok_case(label, t);
    free(t);
}

static void test_tokenizer_files(void) {
    {
        char *dir = mkcase("tok_control");
        char p[1200];
        snprintf(p, sizeof p, "%s/tokenizer.json", dir);
        write_text(p, tok_ok);
        Tokenizer *tok = NULL;
        TunaErr err = {0};
        CHECK(tokenizer_load(dir, &tok, &err) == 0 && tok, "control tokenizer must load: %s",
              err.msg);
        tokenizer_free(tok);
    }
    tok_case("tok_missing_file", NULL);
    {
        char t[64];
        snprintf(t, sizeof t, "%.40s", tok_ok);
        tok_case("tok_truncated", t);
    }
    tok_case("tok_empty", "");
    tok_case("tok_array", "[]");
    tok_subst("tok_missing_model", ",\"model\":{", ",\"not_model\":{");
    tok_subst("tok_model_not_object", "\"model\":{\"type\":\"BPE\",",
              "\"model\":7,\"x\":{\"type\":\"BPE\",");
    tok_subst("tok_unknown_model_type", "\"type\":\"BPE\"", "\"type\":\"Frobnicate\"");
    tok_subst("tok_model_type_newline", "\"type\":\"BPE\"", "\"type\":\"B\\nPE\"");
    tok_subst("tok_merge_no_space", "\"merges\":[\"a b\"]", "\"merges\":[\"ab\"]");
    tok_subst("tok_merge_number", "\"merges\":[\"a b\"]", "\"merges\":[17]");
    tok_subst("tok_merge_list_short", "\"merges\":[\"a b\"]", "\"merges\":[[\"a\"]]");
    tok_subst("tok_merges_not_array", "\"merges\":[\"a b\"]", "\"merges\":\"a b\"");
    tok_subst("tok_vocab_array", "\"vocab\":{\"a\":0,\"b\":1,\"ab\":2,\"c\":3}",
              "\"vocab\":[\"a\",\"b\",\"ab\",\"c\"]");
    tok_subst("tok_vocab_id_string", "\"ab\":2", "\"ab\":\"2\"");
    tok_subst("tok_vocab_id_negative", "\"ab\":2", "\"ab\":-2");
    tok_subst("tok_added_tokens_object", "\"added_tokens\":[]", "\"added_tokens\":{}");
}

// --- the CLI on broken model directories ----------------------------------------------------

static int copy_file(const char *from, const char *to, size_t limit) {
    size_t n = 0;
    char *buf = slurp(from, &n);
    if (!buf) return -1;
    write_file(to, buf, n < limit ? n : limit);
    free(buf);
    return 0;
}

static const char *model_files[] = {"config.json", "generation_config.json", "tokenizer.json",
                                    "tokenizer_config.json", "model.safetensors"};

/* A copy of stories260K in base/label; `skip` is not copied. 0 on success. */
static int model_copy(const char *shared_model, const char *label, const char *skip, char *dir,
                      size_t cap) {
    snprintf(dir, cap, "%s/%s", base, label);
    mkdir(dir, 0755);
    for (size_t i = 0; i < sizeof model_files / sizeof model_files[0]; i++) {
        if (skip && !strcmp(skip, model_files[i])) continue;
        char a[1200], b[1200];
        snprintf(a, sizeof a, "%s/%s", shared_model, model_files[i]);
        snprintf(b, sizeof b, "%s/%s", dir, model_files[i]);
        if (copy_file(a, b, SIZE_MAX)) return -1;
    }
    return 0;
}

/* The binary under test: $TUNA_BIN (make test-san sets the sanitizer build), else ./tuna. */
static const char *tuna_bin(void) {
    const char *b = getenv("TUNA_BIN");
    return b && *b ? b : "./tuna";
}

/* Runs ./tuna generate on dir. Returns the exit code (-1 if killed by a signal, -2 timeout)
 * and leaves stderr in *err_text (malloc'd). */
static int run_tuna(const char *dir, char **err_text) {
    char errf[1200], cmd[4096];
    snprintf(errf, sizeof errf, "%s/stderr.txt", base);
    snprintf(cmd, sizeof cmd,
             "exec timeout 120 %s generate '%s' --prompt hi --max-new-tokens 1 "
             "</dev/null >/dev/null 2>'%s'",
             tuna_bin(), dir, errf);
    int st = system(cmd);
    size_t n = 0;
    *err_text = slurp(errf, &n);
    if (!*err_text) *err_text = strdup("");
    if (st == -1) return -3;
    if (WIFSIGNALED(st)) return -1;
    int code = WEXITSTATUS(st);
    if (code == 124) return -2; /* timeout */
    if (code > 128) return -1;  /* a shell reporting a signal */
    return code;
}

static void cli_case(const char *label, const char *dir) {
    char *e = NULL;
    int code = run_tuna(dir, &e);
    n_cases++;
    size_t len = strlen(e);
    int lines = 0;
    for (size_t i = 0; i < len; i++)
        lines += e[i] == '\n';
    if (verbose) printf("  %-28s exit=%d  %s", label, code, e);
    CHECK(code != -1, "%s: tuna was killed by a signal; stderr: %s", label, e);
    CHECK(code != -2, "%s: tuna timed out", label);
    CHECK(code > 0, "%s: expected a non-zero exit, got %d", label, code);
    CHECK(len > 1 && lines == 1 && e[len - 1] == '\n',
          "%s: stderr must be exactly one line, got %d lines: %s", label, lines, e);
    free(e);
}

static void test_cli(void) {
    if (access(tuna_bin(), X_OK) != 0) {
        SKIP("%s not built (run from the repo root after make): CLI checks skipped", tuna_bin());
        return;
    }
    const char *model = "models/stories260K"; /* the bundled copy */
    char probe[1200];
    snprintf(probe, sizeof probe, "%s/model.safetensors", model);
    if (access(probe, R_OK) != 0) {
        SKIP("%s not found (run from the repo root): CLI checks skipped", probe);
        return;
    }
    char dir[1200], p[1300], src[1300];

    /* Control: the intact copy generates and exits 0. */
    if (model_copy(model, "cli_control", NULL, dir, sizeof dir) == 0) {
        char *e = NULL;
        int code = run_tuna(dir, &e);
        CHECK(code == 0, "control: tuna generate on an intact copy exited %d: %s", code, e);
        free(e);
    }
    if (model_copy(model, "cli_st_truncated", "model.safetensors", dir, sizeof dir) == 0) {
        snprintf(src, sizeof src, "%s/model.safetensors", model);
        snprintf(p, sizeof p, "%s/model.safetensors", dir);
        copy_file(src, p, 100000);
        cli_case("cli_st_truncated", dir);
    }
    if (model_copy(model, "cli_st_missing", "model.safetensors", dir, sizeof dir) == 0)
        cli_case("cli_st_missing", dir);
    if (model_copy(model, "cli_st_bad_header", "model.safetensors", dir, sizeof dir) == 0) {
        snprintf(p, sizeof p, "%s/model.safetensors", dir);
        size_t n;
        unsigned char *b = st_build(
                "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,99]}}", -1, 16, &n);
        write_file(p, b, n);
        free(b);
        cli_case("cli_st_bad_header", dir);
    }
    if (model_copy(model, "cli_st_missing_tensor", "model.safetensors", dir, sizeof dir) == 0) {
        /* Structurally valid file without model.norm.weight, and embed_tokens reshaped. */
        SafeTensors *st = NULL;
        TunaErr err = {0};
        snprintf(src, sizeof src, "%s/model.safetensors", model);
        int rc = safetensors_open(src, &st, &err);
        CHECK(rc == 0, "open %s: %s", src, err.msg);
        if (rc == 0) {
            int n = safetensors_count(st);
            StWriteTensor *w = calloc((size_t)n, sizeof *w);
            float **bufs = calloc((size_t)n, sizeof *bufs);
            int m = 0;
            for (int i = 0; i < n; i++) {
                const StTensor *t = safetensors_at(st, i);
                if (!strcmp(t->name, "model.norm.weight")) continue;
                size_t ne = st_tensor_numel(t);
                bufs[m] = malloc((ne ? ne : 1) * sizeof(float));
                st_tensor_to_f32(t, bufs[m], ne, &err);
                w[m] = (StWriteTensor){t->name, ST_F32, t->ndim, {0}, bufs[m]};
                memcpy(w[m].shape, t->shape, sizeof w[m].shape);
                m++;
            }
            snprintf(p, sizeof p, "%s/cli_st_missing_tensor/model.safetensors", base);
            CHECK(safetensors_write(p, w, m, NULL, 0, &err) == 0, "%s", err.msg);
            snprintf(dir, sizeof dir, "%s/cli_st_missing_tensor", base);
            cli_case("cli_st_missing_tensor", dir);

            /* Put norm back, but give embed_tokens [256,128]: same bytes, wrong shape. */
            if (model_copy(model, "cli_st_wrong_shape", "model.safetensors", dir, sizeof dir) ==
                0) {
                const StTensor *nt = safetensors_find(st, "model.norm.weight");
                float nb[64] = {0};
                if (nt) st_tensor_to_f32(nt, nb, 64, &err);
                w[m] = (StWriteTensor){"model.norm.weight", ST_F32, 1, {64}, nb};
                for (int i = 0; i < m; i++)
                    if (!strcmp(w[i].name, "model.embed_tokens.weight")) {
                        w[i].shape[0] = 256;
                        w[i].shape[1] = 128;
                    }
                snprintf(p, sizeof p, "%s/model.safetensors", dir);
                CHECK(safetensors_write(p, w, m + 1, NULL, 0, &err) == 0, "%s", err.msg);
                cli_case("cli_st_wrong_shape", dir);
            }
            for (int i = 0; i < m; i++)
                free(bufs[i]);
            free(bufs);
            free(w);
            safetensors_free(st);
        }
    }
    if (model_copy(model, "cli_index_dotdot", "model.safetensors", dir, sizeof dir) == 0) {
        snprintf(p, sizeof p, "%s/" IDX, dir);
        write_text(p, WM("\"model.embed_tokens.weight\":\"../cli_control/model.safetensors\""));
        cli_case("cli_index_dotdot", dir);
    }
    if (model_copy(model, "cli_config_string", "config.json", dir, sizeof dir) == 0) {
        snprintf(src, sizeof src, "%s/config.json", model);
        size_t n = 0;
        char *t = slurp(src, &n);
        if (t) {
            char *u = subst(t, "\"hidden_size\": 64", "\"hidden_size\": \"64\"");
            snprintf(p, sizeof p, "%s/config.json", dir);
            write_text(p, u);
            free(u);
            free(t);
        }
        cli_case("cli_config_string", dir);
    }
    if (model_copy(model, "cli_config_missing", "config.json", dir, sizeof dir) == 0)
        cli_case("cli_config_missing", dir);
    if (model_copy(model, "cli_config_vocab_mismatch", "config.json", dir, sizeof dir) == 0) {
        snprintf(src, sizeof src, "%s/config.json", model);
        size_t n = 0;
        char *t = slurp(src, &n);
        if (t) {
            char *u = subst(t, "\"vocab_size\": 512", "\"vocab_size\": 1000");
            snprintf(p, sizeof p, "%s/config.json", dir);
            write_text(p, u);
            free(u);
            free(t);
        }
        cli_case("cli_config_vocab_mismatch", dir);
    }
    if (model_copy(model, "cli_tokenizer_truncated", "tokenizer.json", dir, sizeof dir) == 0) {
        snprintf(src, sizeof src, "%s/tokenizer.json", model);
        snprintf(p, sizeof p, "%s/tokenizer.json", dir);
        copy_file(src, p, 5000);
        cli_case("cli_tokenizer_truncated", dir);
    }
    cli_case("cli_no_such_dir", "/nonexistent/tuna/model");
}

int main(void) {
    verbose = getenv("TUNA_TEST_VERBOSE") != NULL;
    if (!mkdtemp(base)) {
        CHECK(0, "mkdtemp failed");
        return test_report("test_malformed");
    }
    test_safetensors_files();
    test_safetensors_fuzz();
    test_index_files();
    test_config_files();
    test_tokenizer_files();
    int before = n_cases;
    test_cli();
    printf("test_malformed: %d malformed inputs through the loaders, %d through ./tuna\n", before,
           n_cases - before);
    nftw(base, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return test_report("test_malformed");
}
