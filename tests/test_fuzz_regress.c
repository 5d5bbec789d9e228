/* test_fuzz_regress.c: one case per defect the libFuzzer targets (tests/fuzz/, make fuzz) found,
 * replayed in the normal gcc suite (and under ASan/UBSan in make test-san), plus the limit
 * messages of the loaders. Each case names its fuzz target and what went wrong before the fix.
 * Inputs are written into a temporary directory at run time. */
#include "harness.h"

#include <ftw.h>
#include <math.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../src/config.h"
#include "../src/dataset.h"
#include "../src/lf_config.h"
#include "../src/safetensors.h"
#include "../src/template.h"
#include "../src/tokenizer.h"
#include "../ui/source.h"

static char base[] = "/tmp/tuna_test_fuzz_regress_XXXXXX";

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

/* base/name/, created fresh. Returns a static buffer. */
static const char *mkcase(const char *name) {
    static char dir[1024];
    snprintf(dir, sizeof dir, "%s/%s", base, name);
    mkdir(dir, 0700);
    return dir;
}

static void write_file(const char *dir, const char *name, const void *data, size_t n) {
    char p[1200];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    if (!f) {
        CHECK(0, "cannot create %s", p);
        return;
    }
    if (n) fwrite(data, 1, n, f);
    fclose(f);
}

static void write_text(const char *dir, const char *name, const char *s) {
    write_file(dir, name, s, strlen(s));
}

/* The loader failed with a negative code and one line naming file and containing needle. */
static void expect_msg(const char *label, int rc, const TunaErr *err, const char *file,
                       const char *needle) {
    CHECK(rc < 0, "%s: expected an error, got %d", label, rc);
    CHECK(err->msg[0] && !strchr(err->msg, '\n'), "%s: message must be one line: \"%s\"", label,
          err->msg);
    CHECK(strstr(err->msg, file) != NULL, "%s: message must name %s: \"%s\"", label, file,
          err->msg);
    CHECK(strstr(err->msg, needle) != NULL, "%s: message must say \"%s\": \"%s\"", label, needle,
          err->msg);
    if (getenv("TUNA_TEST_VERBOSE")) printf("%s: %s\n", label, err->msg);
}

// --- tokenizer.json (fuzz_tokenizer) ---------------------------------------------------------

static int tok_load_text(const char *label, const char *text, Tokenizer **tok, TunaErr *err) {
    const char *dir = mkcase(label);
    write_text(dir, "tokenizer.json", text);
    *tok = NULL;
    memset(err, 0, sizeof *err);
    return tokenizer_load(dir, tok, err);
}

/* fuzz_tokenizer: an added token with "normalized": true, then a load error in the normalizer,
 * pre-tokenizer, post-processor or decoder. The normalized-match set still borrowed the added
 * tokens' strings and tokenizer_free freed them a second time (heap double free). */
static void test_tokenizer_double_free(void) {
    static const char *tails[] = {
            "\"normalizer\":{\"type\":\"NoSuchNormalizer\"}",
            "\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(\"},"
            "\"behavior\":\"Isolated\",\"invert\":false}",
            "\"post_processor\":{\"type\":\"BertProcessing\",\"cls\":[\"a\",1e300],"
            "\"sep\":[\"b\",1]}",
            "\"decoder\":{\"type\":\"NoSuchDecoder\"}",
    };
    for (size_t i = 0; i < sizeof tails / sizeof tails[0]; i++) {
        char text[1024], label[32];
        snprintf(text, sizeof text,
                 "{\"added_tokens\":[{\"id\":4,\"content\":\"<x>\",\"special\":false,"
                 "\"normalized\":true},{\"id\":5,\"content\":\"<y>\",\"normalized\":true}],"
                 "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2,\"c\":3},"
                 "\"merges\":[\"a b\"]},%s}",
                 tails[i]);
        snprintf(label, sizeof label, "tok_dfree_%zu", i);
        Tokenizer *tok;
        TunaErr err;
        int rc = tok_load_text(label, text, &tok, &err);
        CHECK(tok == NULL, "%s: *out stays NULL", label);
        expect_msg(label, rc, &err, "tokenizer.json", "tokenizer.json");
    }
    /* control: the same tokens with a valid pipeline load, and encode to the added ids */
    Tokenizer *tok;
    TunaErr err;
    int rc = tok_load_text("tok_dfree_ok",
                           "{\"added_tokens\":[{\"id\":4,\"content\":\"<x>\",\"normalized\":true}],"
                           "\"normalizer\":{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},"
                           "\"content\":\"c\"},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,"
                           "\"b\":1,\"ab\":2,\"c\":3},\"merges\":[\"a b\"]}}",
                           &tok, &err);
    CHECK(rc == 0, "control loads: %s", err.msg);
    if (!rc) {
        int32_t *ids = NULL;
        size_t n = 0;
        CHECK(tokenizer_encode(tok, "ab<x>", 5, 0, &ids, &n, &err) == 0 && n == 2 && ids[0] == 2 &&
                      ids[1] == 4,
              "control encodes \"ab<x>\" to [2, 4]");
        free(ids);
    }
    tokenizer_free(tok);
}

/* fuzz_tokenizer: a vocab id of 2.5e123 was cast to long before its range was checked (UB:
 * float-cast-overflow). Now: "must be an integer in [0, N], got 2.5e+123". */
static void test_tokenizer_huge_ids(void) {
    static const char *vals[] = {"2.56667e123", "-1e300", "1e19", "4294967296", "0.5"};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        char text[512], label[32];
        snprintf(text, sizeof text,
                 "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":%s},\"merges\":[]}}",
                 vals[i]);
        snprintf(label, sizeof label, "tok_huge_%zu", i);
        Tokenizer *tok;
        TunaErr err;
        int rc = tok_load_text(label, text, &tok, &err);
        CHECK(tok == NULL, "%s: *out stays NULL", label);
        expect_msg(label, rc, &err, "tokenizer.json", "must be an integer in");
    }
}

/* fuzz_tokenizer: a vocab token, decoder content or added token holding a truncated UTF-8
 * sequence ("\xF0" alone; the loader checks added tokens, not vocab strings or decoder content). The character loops took its length from the lead byte (4) and read
 * past the string (heap-buffer-overflow in utf8_cp). A Strip decoder's content must now be one
 * character (as HF's char); the vocab cases load, encode and decode. */
static void test_tokenizer_truncated_utf8(void) {
    {
        Tokenizer *tok;
        TunaErr err;
        int rc = tok_load_text("tok_trunc_strip",
                               "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},"
                               "\"decoder\":{\"type\":\"Strip\",\"content\":\"\xF0\",\"start\":1,"
                               "\"stop\":1}}",
                               &tok, &err);
        CHECK(tok == NULL, "tok_trunc_strip: *out stays NULL");
        expect_msg("tok_trunc_strip", rc, &err, "tokenizer.json", "Strip.content must be one");
    }
    static const char *cases[] = {
            "\"decoder\":{\"type\":\"Strip\",\"content\":\" \",\"start\":2,\"stop\":2}",
            "\"decoder\":{\"type\":\"ByteLevel\"}",
            "\"decoder\":{\"type\":\"Metaspace\",\"replacement\":\"\xE2\x96\x81\","
            "\"prepend_scheme\":\"always\"}",
            "\"normalizer\":{\"type\":\"Strip\",\"strip_left\":true,\"strip_right\":true}",
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[1024], label[32];
        snprintf(text, sizeof text,
                 "{\"added_tokens\":[{\"id\":3,\"content\":\"b\",\"rstrip\":true,"
                 "\"single_word\":true}],\"model\":{\"type\":\"BPE\",\"vocab\":{\"\xF0\":0,"
                 "\"a\":1,\"\xE2\x96\":2},\"merges\":[]},%s}",
                 cases[i]);
        snprintf(label, sizeof label, "tok_trunc_%zu", i);
        Tokenizer *tok;
        TunaErr err;
        int rc = tok_load_text(label, text, &tok, &err);
        CHECK(rc == 0, "%s: loads: %s", label, err.msg);
        if (rc) continue;
        int32_t ids[] = {0, 1, 2, 3, 0};
        size_t len = 0;
        char *d = tokenizer_decode_len(tok, ids, 5, 1, &len);
        CHECK(d != NULL, "%s: decodes", label);
        free(d);
        int32_t *enc = NULL;
        size_t n = 0;
        static const char in[] = "a\xF0 b\xF0 a";
        CHECK(tokenizer_encode(tok, in, sizeof in - 1, 0, &enc, &n, &err) == 0, "%s: encodes: %s",
              label, err.msg);
        free(enc);
        tokenizer_free(tok);
    }
}

// --- config.json (fuzz_config) ----------------------------------------------------------------

static const char *cfg_llama =
        "{\"model_type\":\"llama\",\"vocab_size\":64,\"hidden_size\":16,\"intermediate_size\":32,"
        "\"num_hidden_layers\":1,\"num_attention_heads\":2,";

/* head + extra + "}" */
static void cfg_case(const char *label, const char *head, const char *extra, const char *needle) {
    char text[1024];
    snprintf(text, sizeof text, "%s%s}", head, extra);
    ModelConfig cfg;
    TunaErr err = {0};
    int rc = config_parse(text, "config.json", &cfg, &err);
    expect_msg(label, rc, &err, "config.json", needle);
}

/* fuzz_config: float fields (rms_norm_eps, rope_theta, rope_scaling factors, generation
 * temperature/top_p) were cast to float from any double (1e300: UB, float-cast-overflow);
 * eos_token_id took cJSON's saturated valueint (1e300 -> INT_MAX) without a range check; GPT-2's
 * default n_inner = 4 * n_embd overflowed an int for n_embd > 2^29 before the limits ran. */
static void test_config_out_of_range(void) {
    cfg_case("cfg_eps_1e300", cfg_llama, "\"rms_norm_eps\":1e300", "out of range for a float");
    cfg_case("cfg_theta_-1e300", cfg_llama, "\"rope_theta\":-1e300", "out of range for a float");
    cfg_case("cfg_rope_factor", cfg_llama,
             "\"rope_scaling\":{\"rope_type\":\"linear\",\"factor\":3.5e38}",
             "out of range for a float");
    cfg_case("cfg_eos_1e300", cfg_llama, "\"eos_token_id\":1e300", "eos_token_id");
    cfg_case("cfg_eos_list", cfg_llama, "\"eos_token_id\":[2,-1e300]", "eos_token_id");
    cfg_case("cfg_eos_frac", cfg_llama, "\"eos_token_id\":2.5", "must be a token id");
    cfg_case("cfg_gpt2_1e9",
             "{\"model_type\":\"gpt2\",\"vocab_size\":64,\"n_embd\":1000000000,\"n_layer\":1,"
             "\"n_head\":",
             "1", "out of range");
    /* controls: the same keys in range */
    char text[1024];
    snprintf(text, sizeof text, "%s%s}", cfg_llama,
             "\"rms_norm_eps\":1e-5,\"rope_theta\":500000,\"eos_token_id\":[2,3]");
    ModelConfig cfg;
    TunaErr err = {0};
    CHECK(config_parse(text, "config.json", &cfg, &err) == 0 && cfg.n_eos == 2 &&
                  cfg.eos_ids[1] == 3 && cfg.rope_theta == 500000.0f,
          "control parses: %s", err.msg);
    /* generation_config.json: temperature 1e300 */
    const char *dir = mkcase("cfg_gen");
    snprintf(text, sizeof text, "%s%s}", cfg_llama, "\"rms_norm_eps\":1e-5");
    write_text(dir, "config.json", text);
    write_text(dir, "generation_config.json", "{\"temperature\":1e300}");
    memset(&err, 0, sizeof err);
    expect_msg("cfg_gen_temperature", config_load(dir, &cfg, &err), &err, "generation_config.json",
               "out of range for a float");
}

// --- limits -------------------------------------------------------------------------------------

/* A file of n bytes: "{" + spaces + "}" (sparse when big: the limits are checked before reading). */
static void write_big_json(const char *dir, const char *name, long long n) {
    char p[1200];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    if (!f) {
        CHECK(0, "cannot create %s", p);
        return;
    }
    fputc('{', f);
    fseeko(f, (off_t)n - 1, SEEK_SET);
    fputc('}', f);
    fclose(f);
}

/* A safetensors file: u64 header length, header, data bytes (zeros). */
static void write_st(const char *dir, const char *name, const char *hdr, size_t hlen,
                     uint64_t hlen_field, size_t data) {
    char p[1200];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    if (!f) {
        CHECK(0, "cannot create %s", p);
        return;
    }
    unsigned char le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (unsigned char)(hlen_field >> (8 * i));
    fwrite(le, 1, 8, f);
    fwrite(hdr, 1, hlen, f);
    for (size_t i = 0; i < data; i++)
        fputc(0, f);
    fclose(f);
}

static void st_expect(const char *label, const char *dir, const char *needle) {
    char p[1200];
    snprintf(p, sizeof p, "%s/x.safetensors", dir);
    SafeTensors *st = NULL;
    TunaErr err = {0};
    int rc = safetensors_open(p, &st, &err);
    CHECK(st == NULL, "%s: *out stays NULL", label);
    safetensors_free(st);
    expect_msg(label, rc, &err, "x.safetensors", needle);
}

static void test_limits(void) {
    TunaErr err = {0};
    /* config.json / generation_config.json: 1 MB */
    const char *dir = mkcase("lim_config");
    write_big_json(dir, "config.json", (1 << 20) + 1);
    ModelConfig cfg;
    expect_msg("lim_config", config_load(dir, &cfg, &err), &err, "config.json", "file too large");
    /* tokenizer.json: 1 GB, checked before reading (a sparse file) */
    dir = mkcase("lim_tok_file");
    write_big_json(dir, "tokenizer.json", (1LL << 30) + 1);
    Tokenizer *tok = NULL;
    memset(&err, 0, sizeof err);
    expect_msg("lim_tok_file", tokenizer_load(dir, &tok, &err), &err, "tokenizer.json",
               "file too large");
    /* vocabulary: ids < 2^24, and not far sparser than the token count */
    int rc = tok_load_text("lim_tok_ids",
                           "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":16777216},"
                           "\"merges\":[]}}",
                           &tok, &err);
    expect_msg("lim_tok_ids", rc, &err, "tokenizer.json", "[0, 16777215]");
    rc = tok_load_text("lim_tok_sparse",
                       "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":16777215},"
                       "\"merges\":[]}}",
                       &tok, &err);
    expect_msg("lim_tok_sparse", rc, &err, "tokenizer.json", "too sparse");
    rc = tok_load_text("lim_tok_sparse_ok",
                       "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1000},"
                       "\"merges\":[]}}",
                       &tok, &err);
    CHECK(rc == 0 && tokenizer_vocab_size(tok) == 1001, "a small gap loads: %s", err.msg);
    tokenizer_free(tok);
    /* safetensors: header length, shape overflow, data past the end, tensor count */
    dir = mkcase("lim_st_hlen");
    write_st(dir, "x.safetensors", "{}", 2, (uint64_t)ST_MAX_HEADER + 1, 0);
    st_expect("lim_st_hlen", dir, "larger than the 100000000-byte limit");
    dir = mkcase("lim_st_shape");
    const char *h = "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],"
                    "\"data_offsets\":[0,4]}}";
    write_st(dir, "x.safetensors", h, strlen(h), strlen(h), 4);
    st_expect("lim_st_shape", dir, "overflows");
    dir = mkcase("lim_st_count");
    size_t cap = (size_t)ST_MAX_TENSORS * 64 + 64, n = 0;
    char *big = malloc(cap);
    n += (size_t)snprintf(big + n, cap - n, "{");
    for (int i = 0; i <= ST_MAX_TENSORS; i++)
        n += (size_t)snprintf(big + n, cap - n,
                              "%s\"t%d\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}",
                              i ? "," : "", i);
    n += (size_t)snprintf(big + n, cap - n, "}");
    write_st(dir, "x.safetensors", big, n, n, 0);
    free(big);
    st_expect("lim_st_count", dir, "tensors (limit)");
    /* template: 1 MB */
    dir = mkcase("lim_tpl");
    write_big_json(dir, "big.json", (1 << 20) + 1);
    Template *t = NULL;
    memset(&err, 0, sizeof err);
    expect_msg("lim_tpl", template_load(dir, "big", &t, &err), &err, "big.json",
               "templates are limited to");
}

// --- metrics.jsonl reader (fuzz_metrics) ------------------------------------------------------

/* fuzz_metrics: a run with an empty metrics.jsonl (no metrics yet): follow_poll called
 * memmove(NULL, NULL + 0, 0) (ui/source.c), UB reported by clang's UBSan. */
static void test_metrics_empty_file(void) {
    const char *dir = mkcase("metrics_empty");
    write_text(dir, "metrics.jsonl", "");
    EventSource *src = source_file_open(dir);
    Event ev[4];
    CHECK(source_poll(src, ev, 4) == 0, "empty metrics.jsonl gives no events");
    CHECK(source_poll(src, ev, 4) == 0, "twice");
    write_text(dir, "metrics.jsonl", "{\"type\":\"step\",\"step\":3,\"loss\":1.5}\n");
    CHECK(source_poll(src, ev, 4) == 1 && ev[0].type == EV_STEP && ev[0].step == 3,
          "the first line after the empty start is read");
    source_free(src);
    /* a run folder whose metrics.jsonl does not exist yet */
    src = source_file_open(mkcase("metrics_missing"));
    CHECK(source_poll(src, ev, 4) == 0, "missing metrics.jsonl gives no events");
    source_free(src);
}

/* fuzz_metrics: "step": 1e300 was cast to long (UB: float-cast-overflow). Out-of-range steps now
 * read as -1 (unknown), as NaN and missing ones do. */
static void test_metrics_huge_numbers(void) {
    static const char *lines[] = {"{\"type\":\"step\",\"step\":1e300,\"total_steps\":-1e300}",
                                  "{\"type\":\"eval\",\"step\":9.3e18,\"eval_loss\":1e308}",
                                  "{\"type\":\"checkpoint\",\"step\":-9.3e18,\"path\":\"x\"}"};
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        Event ev;
        CHECK(event_parse(lines[i], strlen(lines[i]), &ev) == 0, "line %zu parses", i);
        CHECK(ev.step == -1, "line %zu: out-of-range step reads as -1, got %ld", i, ev.step);
    }
    Event ev;
    const char *ok = "{\"type\":\"step\",\"step\":12,\"total_steps\":40}";
    CHECK(event_parse(ok, strlen(ok), &ev) == 0 && ev.step == 12 && ev.total_steps == 40,
          "in-range steps are kept");
}

/* fuzz_lfyaml: a lora_rank past int's range (read with atoi, doubled for LLaMA-Factory's
 * lora_alpha default: a signed overflow, UBSan's report) and a cutoff_len past it with packing
 * (its - 1); now read within +-1e9 or left to the option's own check, which names the line */
static void test_lfyaml_huge_ints(void) {
    const char *dir = mkcase("lfyaml");
    static const struct {
        const char *text, *needle;
    } cases[] = {
            {" \nlora_rank: 900719199925\"F16\"39254740993", ":2: lora_rank"},
            {"lora_rank: -1223932235\n", ":1: lora_rank"},
            {"packing: true\ncutoff_len: -2147483648\n", ":2: cutoff_len"},
            {"neat_packing: true\ncutoff_len: 99999999999999999999\n", ":2: cutoff_len"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        write_text(dir, "t.yaml", cases[i].text);
        char path[1200];
        snprintf(path, sizeof path, "%s/t.yaml", dir);
        TrainConfig c;
        train_config_defaults(&c);
        TunaErr err = {0};
        int rc = lf_config_load(&c, path, NULL, 0, &err);
        expect_msg("lfyaml huge int", rc, &err, "t.yaml", cases[i].needle);
    }
}

int main(void) {
    if (!mkdtemp(base)) {
        perror("mkdtemp");
        return 1;
    }
    test_tokenizer_double_free();
    test_tokenizer_huge_ids();
    test_tokenizer_truncated_utf8();
    test_config_out_of_range();
    test_limits();
    test_metrics_empty_file();
    test_metrics_huge_numbers();
    test_lfyaml_huge_ints();
    nftw(base, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return test_report("test_fuzz_regress");
}
