/* test_tokenizer_gguf: tokenizers built from GGUF tokenizer.ggml.* metadata.
 *  - SmolLM2-135M-Instruct's GGUF (../shared): ids and decodes equal to the committed
 *    transformers fixture tests/fixtures/smollm2_tok.jsonl (gen_gguf_tok_fixtures.py);
 *  - GGUF files written here in memory, as llama.cpp's converter would, from
 *    ../shared/tokenizers: gpt2 (pre "gpt2"), llama3 ("llama-bpe"), qwen3 ("qwen2") from their
 *    tokenizer.json, llama2 (SentencePiece "llama": pieces, scores and types read from its
 *    tokenizer.model, no merges) -- ids equal to reference_public.jsonl's;
 *  - inconsistent metadata refused in one line; chat templates from tokenizer_config.json. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "harness.h"
#include "src/cli/cli.h"
#include "src/gguf.h"
#include "src/tokenizer.h"
#include "src/xalloc.h"

// --- an in-memory GGUF writer (metadata only, no tensors)

typedef struct {
    unsigned char *p;
    size_t len, cap;
    uint64_t n_kv;
} W;

static void w_raw(W *w, const void *s, size_t n) {
    if (w->len + n > w->cap) {
        w->cap = (w->len + n) * 2 + 64;
        w->p = xrealloc(w->p, w->cap);
    }
    if (n) memcpy(w->p + w->len, s, n);
    w->len += n;
}
static void w_u32(W *w, uint32_t v) {
    w_raw(w, &v, 4);
}
static void w_u64(W *w, uint64_t v) {
    w_raw(w, &v, 8);
}
static void w_str(W *w, const char *s, size_t n) {
    w_u64(w, n);
    w_raw(w, s, n);
}
static void w_key(W *w, const char *k, uint32_t type) {
    w_str(w, k, strlen(k));
    w_u32(w, type);
    w->n_kv++;
}
static void kv_str(W *w, const char *k, const char *v) {
    w_key(w, k, GGUF_STRING);
    w_str(w, v, strlen(v));
}
static void kv_u32(W *w, const char *k, uint32_t v) {
    w_key(w, k, GGUF_U32);
    w_u32(w, v);
}
static void kv_bool(W *w, const char *k, int v) {
    unsigned char b = (unsigned char)v;
    w_key(w, k, GGUF_BOOL);
    w_raw(w, &b, 1);
}
static void kv_strs(W *w, const char *k, char *const *v, size_t n) {
    w_key(w, k, GGUF_ARRAY);
    w_u32(w, GGUF_STRING);
    w_u64(w, n);
    for (size_t i = 0; i < n; i++)
        w_str(w, v[i], strlen(v[i]));
}
static void kv_i32s(W *w, const char *k, const int32_t *v, size_t n) {
    w_key(w, k, GGUF_ARRAY);
    w_u32(w, GGUF_I32);
    w_u64(w, n);
    w_raw(w, v, n * 4);
}
static void kv_f32s(W *w, const char *k, const float *v, size_t n) {
    w_key(w, k, GGUF_ARRAY);
    w_u32(w, GGUF_F32);
    w_u64(w, n);
    w_raw(w, v, n * 4);
}
/* header + the metadata written so far + padding to 32 */
static unsigned char *w_finish(W *w, size_t *len) {
    W o = {0};
    w_raw(&o, "GGUF", 4);
    w_u32(&o, 3);
    w_u64(&o, 0);
    w_u64(&o, w->n_kv);
    w_raw(&o, w->p, w->len);
    while (o.len % 32)
        w_raw(&o, "", 1);
    free(w->p);
    *len = o.len;
    return o.p;
}

/* The vocabulary of a tokenizer as GGUF metadata would hold it. */
typedef struct {
    char **tok;
    int32_t *type;
    float *score;
    size_t n;
    char **merges;
    size_t n_merges;
} Vocab;

static void vocab_free(Vocab *v) {
    for (size_t i = 0; i < v->n; i++)
        free(v->tok[i]);
    for (size_t i = 0; i < v->n_merges; i++)
        free(v->merges[i]);
    free(v->tok);
    free(v->type);
    free(v->score);
    free(v->merges);
    memset(v, 0, sizeof *v);
}

static cJSON *read_json(const char *path) {
    size_t len;
    char *text = xread_file(path, &len);
    if (!text) return NULL;
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    return j;
}

/* byte-level: tokens by id from tokenizer.json, added tokens typed 3 (special) or 4 */
static int vocab_from_json(const char *path, Vocab *v) {
    cJSON *j = read_json(path);
    if (!j) return -1;
    const cJSON *model = cJSON_GetObjectItem(j, "model");
    const cJSON *vocab = cJSON_GetObjectItem(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItem(model, "merges");
    const cJSON *added = cJSON_GetObjectItem(j, "added_tokens");
    size_t n = 0;
    for (const cJSON *c = vocab->child; c; c = c->next)
        if ((size_t)c->valueint + 1 > n) n = (size_t)c->valueint + 1;
    for (const cJSON *c = added->child; c; c = c->next)
        if ((size_t)cJSON_GetObjectItem(c, "id")->valueint + 1 > n)
            n = (size_t)cJSON_GetObjectItem(c, "id")->valueint + 1;
    v->n = n;
    v->tok = xcalloc(n, sizeof *v->tok);
    v->type = xcalloc(n, sizeof *v->type);
    for (const cJSON *c = vocab->child; c; c = c->next) {
        v->tok[c->valueint] = xstrdup(c->string);
        v->type[c->valueint] = 1;
    }
    for (const cJSON *c = added->child; c; c = c->next) {
        int id = cJSON_GetObjectItem(c, "id")->valueint;
        free(v->tok[id]);
        v->tok[id] = xstrdup(cJSON_GetObjectItem(c, "content")->valuestring);
        v->type[id] = cJSON_IsTrue(cJSON_GetObjectItem(c, "special")) ? 3 : 4;
    }
    for (size_t i = 0; i < n; i++)
        if (!v->tok[i]) {
            char b[32];
            snprintf(b, sizeof b, "[PAD%zu]", i);
            v->tok[i] = xstrdup(b);
            v->type[i] = 5;
        }
    v->n_merges = (size_t)cJSON_GetArraySize(merges);
    v->merges = xcalloc(v->n_merges + 1, sizeof *v->merges);
    size_t k = 0;
    for (const cJSON *m = merges->child; m; m = m->next, k++) {
        if (cJSON_IsString(m)) {
            v->merges[k] = xstrdup(m->valuestring);
        } else {
            const char *a = m->child->valuestring, *b = m->child->next->valuestring;
            v->merges[k] = xmalloc(strlen(a) + strlen(b) + 2);
            sprintf(v->merges[k], "%s %s", a, b);
        }
    }
    cJSON_Delete(j);
    return 0;
}

/* SentencePiece: ModelProto.pieces (field 1) = {piece (1), score (2, float), type (3)} */
static uint64_t pb_varint(const unsigned char *p, size_t len, size_t *i) {
    uint64_t v = 0;
    for (int sh = 0; *i < len && sh < 64; sh += 7) {
        unsigned char c = p[(*i)++];
        v |= (uint64_t)(c & 0x7F) << sh;
        if (!(c & 0x80)) break;
    }
    return v;
}

static int vocab_from_spm(const char *path, Vocab *v) {
    size_t len;
    unsigned char *p = (unsigned char *)xread_file(path, &len);
    if (!p) return -1;
    size_t cap = 0;
    for (size_t i = 0; i < len;) {
        uint64_t key = pb_varint(p, len, &i);
        unsigned wt = key & 7;
        if (wt == 0) {
            pb_varint(p, len, &i);
        } else if (wt == 5) {
            i += 4;
        } else if (wt == 1) {
            i += 8;
        } else if (wt == 2) {
            size_t l = (size_t)pb_varint(p, len, &i), end = i + l;
            if (key >> 3 == 1) {
                if (v->n == cap) {
                    cap = cap ? cap * 2 : 1024;
                    v->tok = xrealloc(v->tok, cap * sizeof *v->tok);
                    v->type = xrealloc(v->type, cap * sizeof *v->type);
                    v->score = xrealloc(v->score, cap * sizeof *v->score);
                }
                char *piece = NULL;
                float score = 0;
                int32_t type = 1;
                for (size_t j = i; j < end;) {
                    uint64_t k2 = pb_varint(p, end, &j);
                    if (k2 == ((1 << 3) | 2)) {
                        size_t l2 = (size_t)pb_varint(p, end, &j);
                        piece = xmalloc(l2 + 1);
                        memcpy(piece, p + j, l2);
                        piece[l2] = '\0';
                        j += l2;
                    } else if (k2 == ((2 << 3) | 5)) {
                        memcpy(&score, p + j, 4);
                        j += 4;
                    } else if (k2 == ((3 << 3) | 0)) {
                        type = (int32_t)pb_varint(p, end, &j);
                    } else {
                        break;
                    }
                }
                v->tok[v->n] = piece ? piece : xstrdup("");
                v->score[v->n] = score;
                v->type[v->n] = type;
                v->n++;
            }
            i = end;
        } else {
            break;
        }
    }
    free(p);
    return v->n ? 0 : -1;
}

static void write_vocab(W *w, const char *model, const char *pre, const Vocab *v) {
    kv_str(w, "general.architecture", "llama");
    kv_str(w, "tokenizer.ggml.model", model);
    if (pre) kv_str(w, "tokenizer.ggml.pre", pre);
    kv_strs(w, "tokenizer.ggml.tokens", v->tok, v->n);
    kv_i32s(w, "tokenizer.ggml.token_type", v->type, v->n);
    if (v->score) kv_f32s(w, "tokenizer.ggml.scores", v->score, v->n);
    if (v->n_merges) kv_strs(w, "tokenizer.ggml.merges", v->merges, v->n_merges);
}

static Tokenizer *load_mem(unsigned char *buf, size_t len, TunaErr *err) {
    Gguf *g = NULL;
    Tokenizer *t = NULL;
    if (gguf_open_mem(buf, len, "mem.gguf", &g, err) == 0) tokenizer_load_gguf(g, &t, err);
    gguf_free(g);
    return t;
}

static int ids_eq(const int32_t *ids, size_t n, const cJSON *ref) {
    if ((size_t)cJSON_GetArraySize(ref) != n) return 0;
    size_t k = 0;
    for (const cJSON *c = ref->child; c; c = c->next, k++)
        if (ids[k] != c->valueint) return 0;
    return 1;
}

/* every reference_public.jsonl line of tokenizer `name` (only add_special=false ones when
 * all_special is 0) encodes to its ids */
static void check_reference(const char *shared, const char *name, Tokenizer *t, int all_special) {
    char path[1024], line[65536];
    snprintf(path, sizeof path, "%s/tokenizers/reference_public.jsonl", shared);
    FILE *f = fopen(path, "r");
    if (!f) {
        SKIP("%s absent", path);
        return;
    }
    int ok = 0, total = 0;
    while (fgets(line, sizeof line, f)) {
        cJSON *r = cJSON_Parse(line);
        const cJSON *tn = cJSON_GetObjectItem(r, "tokenizer");
        int add = cJSON_IsTrue(cJSON_GetObjectItem(r, "add_special_tokens"));
        if (!cJSON_IsString(tn) || strcmp(tn->valuestring, name) || (add && !all_special)) {
            cJSON_Delete(r);
            continue;
        }
        const char *text = cJSON_GetObjectItem(r, "text")->valuestring;
        int32_t *ids = NULL;
        size_t n = 0;
        TunaErr err = {0};
        int rc = tokenizer_encode(t, text, strlen(text), add, &ids, &n, &err);
        int eq = rc == 0 && ids_eq(ids, n, cJSON_GetObjectItem(r, "ids"));
        CHECK(eq, "%s gguf: \"%.50s\" (add_special %d) ids differ from the reference", name, text,
              add);
        ok += eq;
        total++;
        free(ids);
        cJSON_Delete(r);
    }
    fclose(f);
    printf("  %s from GGUF metadata: %d/%d reference texts equal\n", name, ok, total);
}

static void test_from_json(const char *shared, const char *name, const char *pre) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tokenizers/%s/tokenizer.json", shared, name);
    Vocab v = {0};
    if (vocab_from_json(path, &v)) {
        SKIP("%s unreadable", path);
        return;
    }
    W w = {0};
    write_vocab(&w, "gpt2", pre, &v);
    size_t len;
    unsigned char *buf = w_finish(&w, &len);
    TunaErr err = {0};
    Tokenizer *t = load_mem(buf, len, &err);
    CHECK(t != NULL, "%s: %s", name, err.msg);
    if (t) {
        CHECK(tokenizer_vocab_size(t) == (int)v.n, "%s vocab %d", name, tokenizer_vocab_size(t));
        check_reference(shared, name, t, 0);
    }
    tokenizer_free(t);
    free(buf);
    vocab_free(&v);
}

static void test_llama2(const char *shared) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tokenizers/llama2/tokenizer.model", shared);
    Vocab v = {0};
    if (vocab_from_spm(path, &v)) {
        SKIP("%s unreadable", path);
        return;
    }
    CHECK(v.n == 32000 && v.type[0] == 2 && v.type[1] == 3 && v.type[3] == 6,
          "llama2 tokenizer.model: %zu pieces", v.n);
    W w = {0};
    write_vocab(&w, "llama", "default", &v);
    kv_u32(&w, "tokenizer.ggml.bos_token_id", 1);
    kv_u32(&w, "tokenizer.ggml.eos_token_id", 2);
    kv_u32(&w, "tokenizer.ggml.unknown_token_id", 0);
    kv_str(&w, "tokenizer.chat_template", "{{ messages }}");
    size_t len;
    unsigned char *buf = w_finish(&w, &len);
    TunaErr err = {0};
    Tokenizer *t = load_mem(buf, len, &err);
    CHECK(t != NULL, "llama2: %s", err.msg);
    if (t) {
        check_reference(shared, "llama2", t, 1);
        CHECK(tokenizer_bos_id(t) == 1 && tokenizer_eos_id(t) == 2 && tokenizer_pad_id(t) == -1,
              "llama2 bos/eos/pad");
        CHECK(tokenizer_chat_template(t) && !strcmp(tokenizer_chat_template(t), "{{ messages }}"),
              "llama2 chat template");
        char *d = tokenizer_decode(t, (const int32_t[]){1, 15043, 2, 3186}, 4, 0);
        CHECK(!strcmp(d, "<s> Hello</s> world"), "llama2 decode specials: \"%s\"", d);
        free(d);
        d = tokenizer_decode(t, (const int32_t[]){1, 15043, 2, 3186}, 4, 1);
        CHECK(!strcmp(d, "Hello world"), "llama2 decode skip: \"%s\"", d);
        free(d);
    }
    tokenizer_free(t);
    free(buf);
    vocab_free(&v);
}

/* `tuna tokenize DIR` (cmd_tokenize) on stdin/stdout redirected to temp files */
static int run_tokenize(char **argv, int argc, const char *input, char *out, size_t cap) {
    char in_path[] = "/tmp/tuna_tokg_in_XXXXXX", out_path[] = "/tmp/tuna_tokg_out_XXXXXX";
    int fi = mkstemp(in_path), fo = mkstemp(out_path);
    if (fi < 0 || fo < 0) return -100;
    if (write(fi, input, strlen(input)) != (ssize_t)strlen(input)) return -100;
    close(fi);
    fflush(stdout);
    int saved_in = dup(0), saved_out = dup(1), in_fd = open(in_path, O_RDONLY);
    dup2(in_fd, 0);
    dup2(fo, 1);
    close(in_fd);
    clearerr(stdin);
    int rc = cmd_tokenize(argc, argv);
    fflush(stdout);
    dup2(saved_in, 0);
    dup2(saved_out, 1);
    close(saved_in);
    close(saved_out);
    clearerr(stdin);
    ssize_t n = pread(fo, out, cap - 1, 0);
    out[n > 0 ? n : 0] = '\0';
    close(fo);
    unlink(in_path);
    unlink(out_path);
    return rc;
}

// --- SmolLM2 against transformers

static void test_smollm2(const char *shared) {
    char dir[1024], file[1200];
    snprintf(dir, sizeof dir, "%s/models/smollm2-135m-instruct", shared);
    snprintf(file, sizeof file, "%s/SmolLM2-135M-Instruct.Q4_1.gguf", dir);
    if (access(file, R_OK)) {
        SKIP("%s absent: SmolLM2 tokenizer tests not run", file);
        return;
    }
    Tokenizer *t = NULL, *t2 = NULL;
    TunaErr err = {0};
    CHECK(tokenizer_load(dir, &t, &err) == 0, "smollm2 folder: %s", err.msg);
    CHECK(tokenizer_load(file, &t2, &err) == 0, "smollm2 file: %s", err.msg);
    tokenizer_free(t2);
    if (!t) return;
    char out[4096];
    char *enc[] = {(char[]){"tokenize"}, dir, NULL};
    int rc = run_tokenize(enc, 2, "{\"text\": \"<|im_start|>user\\nHi<|im_end|>\"}\n", out,
                          sizeof out);
    CHECK(rc == 0 && !strcmp(out, "{\"ids\": [1, 4093, 198, 26843, 2]}\n"),
          "tuna tokenize smollm2 rc=%d out=%s", rc, out);
    CHECK(tokenizer_vocab_size(t) == 49152, "smollm2 vocab %d", tokenizer_vocab_size(t));
    CHECK(tokenizer_bos_id(t) == 1 && tokenizer_eos_id(t) == 2 && tokenizer_pad_id(t) == 2,
          "smollm2 bos %d eos %d pad %d", tokenizer_bos_id(t), tokenizer_eos_id(t),
          tokenizer_pad_id(t));
    CHECK(tokenizer_is_special(t, 1) && tokenizer_is_special(t, 16) && !tokenizer_is_special(t, 17),
          "smollm2 control tokens special");
    const char *tpl = tokenizer_chat_template(t);
    CHECK(tpl && strstr(tpl, "named SmolLM") && strstr(tpl, "<|im_start|>"),
          "smollm2 chat template");

    FILE *f = fopen("tests/fixtures/smollm2_tok.jsonl", "r");
    if (!f) {
        CHECK(0, "tests/fixtures/smollm2_tok.jsonl missing (run from the repository root)");
        tokenizer_free(t);
        return;
    }
    static char line[1 << 16];
    int n_rec = 0, ok_ids = 0, ok_dec = 0, n_hf_diff = 0;
    while (fgets(line, sizeof line, f)) {
        cJSON *r = cJSON_Parse(line);
        if (!r) continue;
        const char *text = cJSON_GetObjectItem(r, "text")->valuestring;
        int add = cJSON_IsTrue(cJSON_GetObjectItem(r, "add_special"));
        const cJSON *ref = cJSON_GetObjectItem(r, "ids");
        n_hf_diff += cJSON_GetObjectItem(r, "hf_gguf_ids") != NULL;
        int32_t *ids = NULL;
        size_t n = 0;
        int erc = tokenizer_encode(t, text, strlen(text), add, &ids, &n, &err);
        int eq = erc == 0 && ids_eq(ids, n, ref);
        CHECK(eq, "smollm2: \"%.60s\" (add_special %d): ids differ from transformers'", text, add);
        ok_ids += eq;
        /* decode transformers' ids, specials kept and skipped */
        size_t nr = (size_t)cJSON_GetArraySize(ref), k = 0;
        int32_t *rid = xmalloc((nr ? nr : 1) * sizeof *rid);
        for (const cJSON *c = ref->child; c; c = c->next)
            rid[k++] = c->valueint;
        char *d0 = tokenizer_decode(t, rid, nr, 0), *d1 = tokenizer_decode(t, rid, nr, 1);
        const char *e0 = cJSON_GetObjectItem(r, "decoded")->valuestring;
        const char *e1 = cJSON_GetObjectItem(r, "decoded_skip")->valuestring;
        int deq = !strcmp(d0, e0) && !strcmp(d1, e1);
        CHECK(deq, "smollm2: decode of \"%.60s\": \"%.60s\" / \"%.60s\"", text, d0, d1);
        ok_dec += deq;
        n_rec++;
        free(d0);
        free(d1);
        free(rid);
        free(ids);
        cJSON_Delete(r);
    }
    fclose(f);
    CHECK(n_rec >= 100, "smollm2 fixture has %d records", n_rec);
    printf("  smollm2 GGUF tokenizer vs transformers: ids %d/%d, decodes %d/%d (%d records where "
           "transformers' own GGUF converter, without SmolLM2's digit split, would differ)\n",
           ok_ids, n_rec, ok_dec, n_rec, n_hf_diff);
    tokenizer_free(t);
}

// --- malformed metadata

static void expect_error(const char *what, W *w, const char *needle) {
    size_t len;
    unsigned char *buf = w_finish(w, &len);
    TunaErr err = {0};
    Tokenizer *t = load_mem(buf, len, &err);
    CHECK(t == NULL && strstr(err.msg, needle) && strstr(err.msg, "mem.gguf") &&
                  !strchr(err.msg, '\n'),
          "%s: got \"%s\", wanted \"%s\"", what, err.msg, needle);
    tokenizer_free(t);
    free(buf);
}

static void test_malformed(void) {
    static char t_a[] = "a", t_b[] = "b", t_ab[] = "ab", t_s[] = "<s>", m_ab[] = "a b",
                m_ac[] = "a c";
    char *tok[] = {t_a, t_b, t_ab, t_s};
    int32_t types[] = {1, 1, 1, 3}, bad_types[] = {1, 1, 9, 3};
    float scores[] = {0, 0, -1, 0};
    char *merges[] = {m_ab}, *bad_merges[] = {m_ac}, *nospace[] = {t_ab};
    W w;
#define BASE(model)                                                                                \
    w = (W){0};                                                                                    \
    kv_str(&w, "tokenizer.ggml.model", model);                                                     \
    kv_strs(&w, "tokenizer.ggml.tokens", tok, 4)

    /* a well-formed one first */
    BASE("gpt2");
    kv_strs(&w, "tokenizer.ggml.merges", merges, 1);
    kv_i32s(&w, "tokenizer.ggml.token_type", types, 4);
    kv_u32(&w, "tokenizer.ggml.bos_token_id", 3);
    kv_bool(&w, "tokenizer.ggml.add_bos_token", 1);
    size_t len;
    unsigned char *buf = w_finish(&w, &len);
    TunaErr err = {0};
    Tokenizer *t = load_mem(buf, len, &err);
    CHECK(t != NULL, "tiny gguf tokenizer: %s", err.msg);
    if (t) {
        int32_t *ids = NULL;
        size_t n = 0;
        int rc = tokenizer_encode(t, "ab<s>b", 6, 1, &ids, &n, &err);
        CHECK(rc == 0 && n == 4 && ids[0] == 3 && ids[1] == 2 && ids[2] == 3 && ids[3] == 1,
              "tiny encode (%zu ids)", n);
        free(ids);
    }
    tokenizer_free(t);
    free(buf);

    w = (W){0};
    kv_strs(&w, "tokenizer.ggml.tokens", tok, 4);
    expect_error("no model", &w, "tokenizer.ggml.model");
    BASE("bert");
    expect_error("unknown model", &w, "tokenizer.ggml.model \"bert\" is not supported");
    BASE("gpt2");
    kv_strs(&w, "tokenizer.ggml.merges", merges, 1);
    kv_str(&w, "tokenizer.ggml.pre", "deepseek-coder");
    expect_error("unknown pre", &w, "tokenizer.ggml.pre \"deepseek-coder\" is not supported");
    BASE("gpt2");
    expect_error("no merges", &w, "tokenizer.ggml.merges");
    BASE("gpt2");
    kv_strs(&w, "tokenizer.ggml.merges", bad_merges, 1);
    expect_error("merge of an unknown token", &w, "tokenizer.ggml.merges[0]: token \"c\"");
    BASE("gpt2");
    kv_strs(&w, "tokenizer.ggml.merges", nospace, 1);
    expect_error("merge without a space", &w, "tokenizer.ggml.merges[0]");
    BASE("llama");
    kv_f32s(&w, "tokenizer.ggml.scores", scores, 3);
    expect_error("scores length", &w, "tokenizer.ggml.scores has 3 entries for 4 tokens");
    BASE("llama");
    expect_error("llama without scores", &w, "tokenizer.ggml.scores");
    BASE("llama");
    kv_f32s(&w, "tokenizer.ggml.scores", scores, 4);
    kv_i32s(&w, "tokenizer.ggml.token_type", types, 3);
    expect_error("token_type length", &w, "tokenizer.ggml.token_type has 3 entries");
    BASE("llama");
    kv_f32s(&w, "tokenizer.ggml.scores", scores, 4);
    kv_i32s(&w, "tokenizer.ggml.token_type", bad_types, 4);
    expect_error("token_type value", &w, "tokenizer.ggml.token_type[2] is 9");
    BASE("llama");
    kv_f32s(&w, "tokenizer.ggml.scores", scores, 4);
    kv_u32(&w, "tokenizer.ggml.bos_token_id", 4);
    expect_error("bos out of range", &w, "tokenizer.ggml.bos_token_id 4 is out of range");
    BASE("llama");
    kv_f32s(&w, "tokenizer.ggml.scores", scores, 4);
    kv_u32(&w, "tokenizer.ggml.padding_token_id", 99);
    expect_error("pad out of range", &w, "tokenizer.ggml.padding_token_id 99");
    BASE("llama");
    kv_str(&w, "tokenizer.ggml.scores", "x");
    expect_error("scores not an array", &w, "tokenizer.ggml.scores");
    BASE("llama");
    kv_f32s(&w, "tokenizer.ggml.scores", scores, 4);
    kv_str(&w, "tokenizer.ggml.add_bos_token", "yes");
    expect_error("add_bos not a bool", &w, "tokenizer.ggml.add_bos_token");
    w = (W){0};
    kv_str(&w, "tokenizer.ggml.model", "gpt2");
    kv_i32s(&w, "tokenizer.ggml.tokens", types, 4);
    expect_error("tokens not strings", &w, "tokenizer.ggml.tokens must be an array of strings");
    w = (W){0};
    kv_str(&w, "tokenizer.ggml.model", "gpt2");
    kv_strs(&w, "tokenizer.ggml.tokens", tok, 0);
    expect_error("no tokens", &w, "tokenizer.ggml.tokens has 0 entries");
#undef BASE
}

/* Random byte flips in two small valid tokenizer GGUFs (byte-level with merges; SentencePiece
 * with scores): each load fails in one line or gives a tokenizer that encodes and decodes. */
static void test_mutations(void) {
    static char t_a[] = "a", t_b[] = "b", t_ab[] = "ab", t_s[] = "<s>", t_u[] = "<unk>",
                m_ab[] = "a b",
                t_m[] = "\xE2\x96\x81"
                        "a";
    char *tok[] = {t_a, t_b, t_ab, t_s, t_u, t_m};
    char *merges[] = {m_ab};
    int32_t types[] = {1, 1, 1, 3, 2, 1};
    float scores[] = {-1, -2, -0.5f, 0, 0, -0.25f};
    uint64_t x = 0x9E3779B97F4A7C15ull;
    int loaded = 0, refused = 0, bad_msg = 0;
    for (int kind = 0; kind < 2; kind++) {
        W w = {0};
        kv_str(&w, "tokenizer.ggml.model", kind ? "llama" : "gpt2");
        kv_str(&w, "tokenizer.ggml.pre", kind ? "default" : "smollm");
        kv_strs(&w, "tokenizer.ggml.tokens", tok, 6);
        kv_i32s(&w, "tokenizer.ggml.token_type", types, 6);
        if (kind)
            kv_f32s(&w, "tokenizer.ggml.scores", scores, 6);
        else
            kv_strs(&w, "tokenizer.ggml.merges", merges, 1);
        kv_u32(&w, "tokenizer.ggml.bos_token_id", 3);
        kv_u32(&w, "tokenizer.ggml.unknown_token_id", 4);
        size_t len;
        unsigned char *orig = w_finish(&w, &len), *buf = xmalloc(len);
        for (int it = 0; it < 1500; it++) {
            memcpy(buf, orig, len);
            int flips = 1 + it % 3;
            for (int f = 0; f < flips; f++) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                buf[(x >> 8) % len] ^= (unsigned char)(1u << (x % 8));
            }
            TunaErr err = {0};
            Tokenizer *t = load_mem(buf, len, &err);
            if (!t) {
                refused++;
                bad_msg += !err.msg[0] || strchr(err.msg, '\n') != NULL;
                continue;
            }
            loaded++;
            int32_t *ids = NULL;
            size_t n = 0;
            if (tokenizer_encode(t, "ab <s>ba a", 10, 1, &ids, &n, &err) == 0) {
                free(tokenizer_decode(t, ids, n, 0));
                free(tokenizer_decode(t, ids, n, 1));
            }
            free(ids);
            tokenizer_free(t);
        }
        free(orig);
        free(buf);
    }
    CHECK(loaded > 0 && refused > 0 && bad_msg == 0,
          "mutations: %d loaded, %d refused, %d without a one-line message", loaded, refused,
          bad_msg);
    printf("  3000 mutated tokenizer GGUFs: %d loaded and ran, %d refused in one line\n", loaded,
           refused);
}

// --- chat templates of HF folders

static void write_file(const char *dir, const char *name, const char *text) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static void test_hf_template(void) {
    char dir[] = "/tmp/tuna_tokg_XXXXXX";
    if (!mkdtemp(dir)) {
        SKIP("mkdtemp failed");
        return;
    }
    write_file(dir, "tokenizer.json",
               "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"<pad>\": 1}, \"merges\": "
               "[]}, \"added_tokens\": [{\"id\": 1, \"content\": \"<pad>\", \"special\": true}]}");
    Tokenizer *t = NULL;
    TunaErr err = {0};
    CHECK(tokenizer_load(dir, &t, &err) == 0 && tokenizer_chat_template(t) == NULL,
          "no config: no template (%s)", err.msg);
    tokenizer_free(t);
    write_file(dir, "tokenizer_config.json",
               "{\"chat_template\": \"{{ bos }}x\", \"pad_token\": \"<pad>\"}");
    CHECK(tokenizer_load(dir, &t, &err) == 0 && tokenizer_chat_template(t) &&
                  !strcmp(tokenizer_chat_template(t), "{{ bos }}x") && tokenizer_pad_id(t) == 1,
          "string template, pad (%s)", err.msg);
    tokenizer_free(t);
    write_file(dir, "tokenizer_config.json",
               "{\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"T\"}, {\"name\": "
               "\"default\", \"template\": \"D\"}]}");
    CHECK(tokenizer_load(dir, &t, &err) == 0 && tokenizer_chat_template(t) &&
                  !strcmp(tokenizer_chat_template(t), "D"),
          "list template (%s)", err.msg);
    tokenizer_free(t);
    write_file(dir, "tokenizer_config.json", "{\"chat_template\": 5}");
    t = NULL;
    CHECK(tokenizer_load(dir, &t, &err) < 0 && t == NULL && strstr(err.msg, "chat_template") &&
                  strstr(err.msg, "tokenizer_config.json"),
          "bad template: %s", err.msg);
    tokenizer_free(t);
    char path[1100];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    unlink(path);
    rmdir(dir);
}

int main(void) {
    test_malformed();
    test_mutations();
    test_hf_template();
    const char *shared = test_shared_dir();
    if (!shared) {
        SKIP("shared data dir not found (set TUNA_SHARED): GGUF tokenizer reference tests not "
             "run");
        return test_report("test_tokenizer_gguf");
    }
    test_smollm2(shared);
    test_from_json(shared, "gpt2", "gpt2");
    test_from_json(shared, "llama3", "llama-bpe");
    test_from_json(shared, "qwen3", "qwen2");
    test_llama2(shared);
    return test_report("test_tokenizer_gguf");
}
