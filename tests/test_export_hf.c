/* test_export_hf.c: the Hugging Face writer streams (safetensors_write_fill: a tensor made as it is
 * written, the same bytes as the whole model in memory) and `tuna export --format hf` writes what
 * transformers' save_pretrained would:
 * - --export-dtype fp32 | bf16 | f16: every tensor in that type, each value the fp32 export's
 *   rounded to nearest even (st_f32_to_bf16 / st_f32_to_f16), config.json's torch_dtype saying
 *   so; auto: the base checkpoint's own type (a bf16 base gives bf16, its values bit for bit; an
 *   fp32 one fp32, the bytes of the previous writer);
 * - --export-size GB: shards of at most that many bytes (a tensor larger than that alone), named
 *   model-0000i-of-0000n.safetensors in the tensors' order, with model.safetensors.index.json
 *   (total_size, every tensor in the weight_map once, in the file that holds it); tuna loads the
 *   shards back and decodes the same ids and log-probabilities as from one file; a re-export of
 *   the other form into the same folder leaves no file of the first behind;
 * - a GGUF model's export carries its tokenizer (tokenizer.json, tokenizer_config.json): stories260K
 *   to GGUF and back tokenizes and decodes as the original;
 * - the chat template: a model's own (chat_template.jinja too) is kept where the run trained with
 *   it (--template auto matched) or no run says one; a run with another template (or none on a
 *   model without one) writes that template's Jinja into tokenizer_config.json (and
 *   chat_template.jinja where the model had one), which renders every test conversation as the
 *   template does, with the BOS training's encoding prepends (so transformers' apply_chat_template
 *   gives training's text); a full run's model folder likewise, a pt run's not;
 * - bad values and --format gguf with these options: one line, exit 2, nothing written.
 * Runs ./tuna (or $TUNA_BIN) from the repo root on the bundled stories260K and a 2-step LoRA. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli_fixture.h"
#include "harness.h"
#include "src/jinja.h"
#include "src/model.h"
#include "src/safetensors.h"
#include "src/template.h"
#include "src/tokenizer.h"
#include "src/xalloc.h"

static char tmpdir[64], lora[128];

// --- the writer: filled as written == given

typedef struct Fill {
    const float *const *src;
    const size_t *numel;
    int calls[8], order[8], n;
} Fill;

static void fill_from(void *ctx, int i, float *dst) {
    Fill *f = ctx;
    f->calls[i]++;
    f->order[f->n++] = i;
    memcpy(dst, f->src[i], sizeof(float) * f->numel[i]);
}

static void test_writer(void) {
    /* five tensors of three types, one without elements; some filled, some given */
    size_t numel[5] = {6, 3, 0, 40, 5};
    float *src[5];
    for (int i = 0; i < 5; i++) {
        src[i] = xmalloc(sizeof(float) * (numel[i] ? numel[i] : 1));
        for (size_t j = 0; j < numel[i]; j++)
            src[i][j] = (float)(i + 1) * 0.37f * (float)j - 1.5f + 1e-3f * (float)(i * j);
    }
    StWriteTensor given[5] = {{"b.weight", ST_F32, 2, {2, 3}, src[0]},
                              {"a.norm", ST_BF16, 1, {3}, src[1]},
                              {"empty", ST_F32, 2, {0, 4}, NULL},
                              {"z.big", ST_F16, 2, {8, 5}, src[3]},
                              {"c.bias", ST_BF16, 1, {5}, src[4]}};
    StWriteTensor filled[5];
    memcpy(filled, given, sizeof given);
    for (int i = 0; i < 5; i += 2) /* 0, 2 (no elements: never filled), 4 */
        filled[i].data = NULL;
    filled[3].data = NULL;
    char p1[128], p2[128];
    snprintf(p1, sizeof p1, "%s/given.safetensors", tmpdir);
    snprintf(p2, sizeof p2, "%s/filled.safetensors", tmpdir);
    const char *meta[] = {"format", "pt"};
    TunaErr err = {0};
    CHECK(safetensors_write(p1, given, 5, meta, 1, &err) == 0, "write given: %s", err.msg);
    Fill f = {(const float *const *)src, numel, {0}, {0}, 0};
    CHECK(safetensors_write_fill(p2, filled, 5, meta, 1, fill_from, &f, &err) == 0,
          "write filled: %s", err.msg);
    CHECK(test_same_file(p1, p2), "a file filled as written differs from the one written whole");
    CHECK(f.calls[0] == 1 && f.calls[1] == 0 && f.calls[2] == 0 && f.calls[3] == 1 &&
                  f.calls[4] == 1 && f.n == 3,
          "fill calls %d %d %d %d %d: each data-less tensor with elements once", f.calls[0],
          f.calls[1], f.calls[2], f.calls[3], f.calls[4]);
    /* the write order (dtype size descending, then name): b.weight (F32) before c.bias and
     * z.big (2 bytes) */
    CHECK(f.n == 3 && f.order[0] == 0 && f.order[1] == 4 && f.order[2] == 3,
          "fill order %d %d %d: the file's order", f.order[0], f.order[1], f.order[2]);
    /* without a fill function a data-less tensor is refused, and nothing is written */
    char p3[128];
    snprintf(p3, sizeof p3, "%s/refused.safetensors", tmpdir);
    CHECK(safetensors_write(p3, filled, 5, meta, 1, &err) != 0 && strstr(err.msg, "NULL data") &&
                  access(p3, F_OK) != 0,
          "NULL data without fill: %s", err.msg);
    for (int i = 0; i < 5; i++)
        free(src[i]);
}

// --- tuna export --format hf

static int tuna(const char *args, char **err_out) {
    char *o, *e;
    int rc = test_run_tuna(tmpdir, args, NULL, &o, &e);
    free(o);
    if (err_out)
        *err_out = e;
    else
        free(e);
    return rc;
}

/* Every tensor of the checkpoint in dir (one file or shards) as fp32, by name; *n tensors.
 * dtype: the one type they all have (-1 when mixed). */
typedef struct Tensors {
    int n, dtype;
    char **names;
    float **vals;
    size_t *numel;
} Tensors;

static int load_all(const char *dir, Tensors *t) {
    SafeTensors *st = NULL;
    TunaErr err = {0};
    memset(t, 0, sizeof *t);
    if (safetensors_open(dir, &st, &err)) {
        CHECK(0, "%s: %s", dir, err.msg);
        return -1;
    }
    t->n = safetensors_count(st);
    t->names = xcalloc((size_t)t->n, sizeof *t->names);
    t->vals = xcalloc((size_t)t->n, sizeof *t->vals);
    t->numel = xcalloc((size_t)t->n, sizeof *t->numel);
    for (int i = 0; i < t->n; i++) {
        const StTensor *x = safetensors_at(st, i);
        t->dtype = i == 0 ? (int)x->dtype : t->dtype == (int)x->dtype ? t->dtype : -1;
        t->names[i] = xstrdup(x->name);
        t->numel[i] = st_tensor_numel(x);
        t->vals[i] = xmalloc(sizeof(float) * (t->numel[i] ? t->numel[i] : 1));
        st_tensor_to_f32(x, t->vals[i], t->numel[i], &err);
    }
    safetensors_free(st);
    return 0;
}

static void free_all(Tensors *t) {
    for (int i = 0; i < t->n; i++) {
        free(t->names[i]);
        free(t->vals[i]);
    }
    free(t->names);
    free(t->vals);
    free(t->numel);
}

static int find(const Tensors *t, const char *name) {
    for (int i = 0; i < t->n; i++)
        if (!strcmp(t->names[i], name)) return i;
    return -1;
}

/* b's tensors are a's, rounded to dt (ST_F32: equal bits) */
static void check_rounded(const Tensors *a, const Tensors *b, StDtype dt, const char *what) {
    int bad = 0, n = 0;
    for (int i = 0; i < a->n; i++) {
        int j = find(b, a->names[i]);
        if (j < 0 || b->numel[j] != a->numel[i]) {
            bad++;
            continue;
        }
        for (size_t k = 0; k < a->numel[i]; k++, n++) {
            float x = a->vals[i][k], want = dt == ST_BF16  ? st_bf16_to_f32(st_f32_to_bf16(x))
                                            : dt == ST_F16 ? st_f16_to_f32(st_f32_to_f16(x))
                                                           : x;
            if (memcmp(&want, &b->vals[j][k], sizeof want)) bad++;
        }
    }
    CHECK(a->n == b->n && bad == 0 && n > 100000,
          "%s: %d of %d values not the rounding (%d vs %d tensors)", what, bad, n, a->n, b->n);
}

static const char *config_dtype(const char *dir) {
    static char buf[32];
    char path[256];
    snprintf(path, sizeof path, "%s/config.json", dir);
    size_t n;
    char *text = xread_file(path, &n);
    cJSON *j = text ? cJSON_Parse(text) : NULL;
    const char *v = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "torch_dtype"));
    snprintf(buf, sizeof buf, "%s", v ? v : "(none)");
    cJSON_Delete(j);
    free(text);
    return buf;
}

/* The greedy ids and log-probabilities `tuna generate` gives from dir (malloc'd JSON text) */
static char *decode(const char *dir) {
    char args[512], *o, *e;
    snprintf(args, sizeof args,
             "generate %s --prompt 'Once upon a time' --max-new-tokens 12 --temperature 0 --json "
             "--logprobs 2 --threads 1 --quiet",
             dir);
    int rc = test_run_tuna(tmpdir, args, NULL, &o, &e);
    CHECK(rc == 0, "generate %s: %s", dir, e);
    free(e);
    cJSON *j = cJSON_Parse(o);
    free(o);
    cJSON *keep = cJSON_CreateObject();
    cJSON_AddItemToObject(keep, "ids",
                          cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(j, "ids"), 1));
    cJSON_AddItemToObject(keep, "logprobs",
                          cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(j, "logprobs"), 1));
    char *s = cJSON_PrintUnformatted(keep);
    cJSON_Delete(keep);
    cJSON_Delete(j);
    return s;
}

static void test_dtypes(void) {
    char args[512], d32[128], d16[128], dh[128], base16[128], again[128], wide[128];
    snprintf(d32, sizeof d32, "%s/e-fp32", tmpdir);
    snprintf(d16, sizeof d16, "%s/e-bf16", tmpdir);
    snprintf(dh, sizeof dh, "%s/e-f16", tmpdir);
    snprintf(args, sizeof args, "export --model %s --out %s", lora, d32);
    CHECK(tuna(args, NULL) == 0, "export (auto) of a LoRA run on an fp32 base");
    snprintf(args, sizeof args, "export --model %s --out %s --export-dtype bf16", lora, d16);
    CHECK(tuna(args, NULL) == 0, "export --export-dtype bf16");
    snprintf(args, sizeof args, "export --model %s --out %s --export-dtype f16", lora, dh);
    CHECK(tuna(args, NULL) == 0, "export --export-dtype f16");
    Tensors a, b, h;
    load_all(d32, &a);
    load_all(d16, &b);
    load_all(dh, &h);
    CHECK(a.dtype == ST_F32 && !strcmp(config_dtype(d32), "float32"),
          "auto on an fp32 base: F32 tensors (%d), config %s", a.dtype, config_dtype(d32));
    CHECK(b.dtype == ST_BF16 && !strcmp(config_dtype(d16), "bfloat16"),
          "--export-dtype bf16: BF16 tensors (%d), config %s", b.dtype, config_dtype(d16));
    CHECK(h.dtype == ST_F16 && !strcmp(config_dtype(dh), "float16"),
          "--export-dtype f16: F16 tensors (%d), config %s", h.dtype, config_dtype(dh));
    check_rounded(&a, &b, ST_BF16, "bf16 export");
    check_rounded(&a, &h, ST_F16, "f16 export");

    /* the bf16 export as a base checkpoint: auto keeps bf16, its values bit for bit; fp32 widens
     * them exactly */
    snprintf(base16, sizeof base16, "%s/e-bf16", tmpdir);
    snprintf(again, sizeof again, "%s/e-bf16-again", tmpdir);
    snprintf(wide, sizeof wide, "%s/e-bf16-wide", tmpdir);
    char *e = NULL;
    snprintf(args, sizeof args, "export --model %s --out %s", base16, again);
    CHECK(tuna(args, &e) == 0 && strstr(e, "bfloat16, the base checkpoint's type"),
          "auto on a bf16 base says so: %s", e);
    free(e);
    snprintf(args, sizeof args, "export --model %s --out %s --export-dtype fp32", base16, wide);
    CHECK(tuna(args, NULL) == 0, "export a bf16 base --export-dtype fp32");
    Tensors c, w;
    load_all(again, &c);
    load_all(wide, &w);
    CHECK(c.dtype == ST_BF16 && !strcmp(config_dtype(again), "bfloat16"),
          "auto on a bf16 base: BF16 (%d), config %s", c.dtype, config_dtype(again));
    check_rounded(&b, &c, ST_F32, "bf16 base re-exported (auto)");
    CHECK(w.dtype == ST_F32 && !strcmp(config_dtype(wide), "float32"),
          "fp32 from a bf16 base: F32 (%d), config %s", w.dtype, config_dtype(wide));
    check_rounded(&b, &w, ST_F32, "bf16 base widened to fp32");
    free_all(&a);
    free_all(&b);
    free_all(&h);
    free_all(&c);
    free_all(&w);

    /* transformers 5 writes "dtype", not "torch_dtype": that key is the one set (and a config
     * that already says the written type is copied byte for byte) */
    char t5[128], t5a[128], t5b[128], cmd[1024], p1[256], p2[256];
    snprintf(t5, sizeof t5, "%s/t5base", tmpdir);
    snprintf(t5a, sizeof t5a, "%s/t5-fp32", tmpdir);
    snprintf(t5b, sizeof t5b, "%s/t5-bf16", tmpdir);
    snprintf(cmd, sizeof cmd,
             "cp -r models/stories260K %s && sed -i 's/\"torch_dtype\"/\"dtype\"/' %s/config.json",
             t5, t5);
    CHECK(system(cmd) == 0, "a transformers 5 style config");
    snprintf(args, sizeof args, "export --model %s --out %s", t5, t5a);
    CHECK(tuna(args, NULL) == 0, "export a dtype-keyed fp32 base");
    snprintf(p1, sizeof p1, "%s/config.json", t5);
    snprintf(p2, sizeof p2, "%s/config.json", t5a);
    CHECK(test_same_file(p1, p2), "config.json copied as it is when it says the written type");
    snprintf(args, sizeof args, "export --model %s --out %s --export-dtype bf16", t5, t5b);
    CHECK(tuna(args, NULL) == 0, "export a dtype-keyed base in bf16");
    snprintf(p2, sizeof p2, "%s/config.json", t5b);
    size_t n;
    char *text = xread_file(p2, &n);
    cJSON *j = text ? cJSON_Parse(text) : NULL;
    const char *v = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "dtype"));
    CHECK(v && !strcmp(v, "bfloat16") && !cJSON_HasObjectItem(j, "torch_dtype"),
          "dtype-keyed config: dtype %s, torch_dtype %s", v ? v : "(none)",
          cJSON_HasObjectItem(j, "torch_dtype") ? "added" : "absent");
    cJSON_Delete(j);
    free(text);
}

static int file_exists(const char *dir, const char *name) {
    char p[300];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return access(p, F_OK) == 0;
}

static void test_shards(void) {
    char args[512], one[128], sh[128], path[256];
    snprintf(one, sizeof one, "%s/e-fp32", tmpdir); /* test_dtypes' single-file export */
    snprintf(sh, sizeof sh, "%s/e-shards", tmpdir);
    /* stories260K in fp32 is about 1 MB: shards of at most 200 KB */
    snprintf(args, sizeof args, "export --model %s --out %s --export-size 0.0002", lora, sh);
    CHECK(tuna(args, NULL) == 0, "export --export-size 0.0002");
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", sh);
    size_t n;
    char *text = xread_file(path, &n);
    cJSON *idx = text ? cJSON_Parse(text) : NULL;
    free(text);
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(idx, "weight_map");
    double total = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(idx, "metadata"), "total_size"));
    CHECK(cJSON_IsObject(map) && !file_exists(sh, "model.safetensors"),
          "sharded: an index with a weight_map, no model.safetensors");
    /* the files: model-0000i-of-0000n, each at most 200 KB unless one tensor alone */
    int nfiles = 0, bad_size = 0;
    for (int i = 1; i < 100; i++) {
        char name[64];
        int found = 0;
        for (int of = 1; of < 100 && !found; of++) {
            snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", i, of);
            found = file_exists(sh, name);
        }
        if (!found) break;
        nfiles++;
        snprintf(path, sizeof path, "%s/%s", sh, name);
        SafeTensors *st = NULL;
        TunaErr err = {0};
        if (safetensors_open(path, &st, &err)) {
            CHECK(0, "%s: %s", path, err.msg);
            break;
        }
        size_t bytes = 0;
        for (int k = 0; k < safetensors_count(st); k++) {
            const StTensor *t = safetensors_at(st, k);
            bytes += t->nbytes;
            const char *where =
                    cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(map, t->name));
            CHECK(where && !strcmp(where, name), "%s in %s, the index says %s", t->name, name,
                  where ? where : "(nothing)");
        }
        if (bytes > 200000 && safetensors_count(st) > 1) bad_size++;
        safetensors_free(st);
    }
    CHECK(nfiles >= 4 && bad_size == 0, "%d shards, %d over 200 KB with more than one tensor",
          nfiles, bad_size);
    Tensors a, s;
    load_all(one, &a);
    load_all(sh, &s); /* the index, its shards */
    size_t sum = 0;
    for (int i = 0; i < s.n; i++)
        sum += s.numel[i] * sizeof(float);
    CHECK(cJSON_GetArraySize(map) == a.n && s.n == a.n && (double)sum == total,
          "index: %d names for %d tensors, total_size %.0f for %zu bytes", cJSON_GetArraySize(map),
          a.n, total, sum);
    check_rounded(&a, &s, ST_F32, "shards hold the single file's tensors");
    free_all(&a);
    free_all(&s);
    cJSON_Delete(idx);
    char *d1 = decode(one), *d2 = decode(sh);
    CHECK(d1 && d2 && !strcmp(d1, d2), "generate from the shards == from one file");
    /* the other form into the same folder: nothing of the first stays */
    snprintf(args, sizeof args, "export --model %s --out %s", lora, sh);
    CHECK(tuna(args, NULL) == 0, "one file over the shards");
    CHECK(file_exists(sh, "model.safetensors") &&
                  !file_exists(sh, "model.safetensors.index.json") &&
                  !file_exists(sh, "model-00001-of-00005.safetensors") &&
                  !file_exists(sh, "model-00002-of-00006.safetensors"),
          "one file over the shards: the index and shards gone");
    char *d3 = decode(sh);
    CHECK(d3 && d1 && !strcmp(d1, d3), "generate after the re-export");
    snprintf(args, sizeof args, "export --model %s --out %s --export-size 0.0002", lora, sh);
    CHECK(tuna(args, NULL) == 0 && !file_exists(sh, "model.safetensors") &&
                  file_exists(sh, "model.safetensors.index.json"),
          "shards over one file: model.safetensors gone");
    free(d1);
    free(d2);
    free(d3);
}

/* `tuna tokenize DIR` of text: the ids' JSON (malloc'd) */
static char *tokenize(const char *dir, const char *text) {
    char args[512], in[256], *o, *e;
    snprintf(in, sizeof in, "%s/tok.in", tmpdir);
    FILE *f = fopen(in, "w");
    if (f) {
        fprintf(f, "{\"text\": \"%s\"}\n", text);
        fclose(f);
    }
    snprintf(args, sizeof args, "tokenize %s", dir);
    int rc = test_run_tuna(tmpdir, args, in, &o, &e);
    CHECK(rc == 0, "tokenize %s: %s", dir, e);
    free(e);
    return o;
}

/* A GGUF model exported to Hugging Face format carries its tokenizer (tokenizer.json and
 * tokenizer_config.json made from tokenizer.ggml.*): stories260K (SentencePiece) to a GGUF and
 * back tokenizes and decodes as the original */
static void test_gguf_tokenizer(void) {
    char args[512], g[128], hf[128], p[256];
    snprintf(g, sizeof g, "%s/st.gguf", tmpdir);
    snprintf(hf, sizeof hf, "%s/st-hf", tmpdir);
    snprintf(args, sizeof args,
             "export --format gguf --quant f32 --model models/stories260K --out %s", g);
    CHECK(tuna(args, NULL) == 0, "stories260K to GGUF");
    snprintf(args, sizeof args, "export --model %s --out %s", g, hf);
    CHECK(tuna(args, NULL) == 0, "the GGUF back to Hugging Face format");
    snprintf(p, sizeof p, "%s/tokenizer_config.json", hf);
    size_t n;
    char *text = xread_file(p, &n);
    cJSON *j = text ? cJSON_Parse(text) : NULL;
    const char *bos = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "bos_token")),
               *eos = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "eos_token"));
    CHECK(bos && eos && !strcmp(bos, "<s>") && !strcmp(eos, "</s>"),
          "tokenizer_config.json: bos %s eos %s", bos ? bos : "(none)", eos ? eos : "(none)");
    cJSON_Delete(j);
    free(text);
    const char *texts[] = {"Once upon a time, there was a little girl named Lily.",
                           "Digits 12345, punctuation!? and (brackets)", "caf\u00e9 na\u00efve"};
    for (int i = 0; i < 3; i++) {
        char *a = tokenize("models/stories260K", texts[i]), *b = tokenize(hf, texts[i]);
        CHECK(a && b && a[0] && !strcmp(a, b), "tokenize %s: %s vs the original %s", texts[i], b,
              a);
        free(a);
        free(b);
    }
    char *d1 = decode("models/stories260K"), *d2 = decode(hf);
    CHECK(d1 && d2 && !strcmp(d1, d2), "generate from the GGUF's HF export == from stories260K");
    free(d1);
    free(d2);
}

// --- the chat template an export carries

static char *slurp(const char *dir, const char *name) {
    char p[400];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return xread_file(p, NULL);
}

/* tokenizer_config.json's "chat_template" in dir (malloc'd), or NULL */
static char *config_template(const char *dir) {
    char *text = slurp(dir, "tokenizer_config.json");
    cJSON *j = text ? cJSON_Parse(text) : NULL;
    const char *v = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "chat_template"));
    char *r = v ? xstrdup(v) : NULL;
    cJSON_Delete(j);
    free(text);
    return r;
}

/* jinja renders each conversation as "<s>" + template name renders it (the BOS auto_bos adds on
 * stories260K's tokenizer), with the generation prompt where it ends with the user */
static void check_renders(const char *jinja, const char *name, const char *what) {
    static const ChatMessage convs[][4] = {
            {{"user", "hi"}},
            {{"system", "be brief"}, {"user", "2+2?"}, {"assistant", "4"}},
            {{"user", "a"}, {"assistant", "b"}, {"user", "c"}},
    };
    static const int lens[] = {1, 3, 3};
    Template *t = NULL;
    TunaErr err = {0};
    CHECK(template_load("templates", name, &t, &err) == 0, "load %s: %s", name, err.msg);
    if (!t || !jinja) return;
    int bad = 0;
    for (size_t c = 0; c < sizeof lens / sizeof lens[0]; c++) {
        char *want = NULL, *got = NULL;
        if (template_render_text(t, convs[c], lens[c], "<s>", "</s>", &want, &err)) {
            CHECK(0, "render %s: %s", name, err.msg);
            continue;
        }
        cJSON *ctx = cJSON_CreateObject(), *msgs = cJSON_AddArrayToObject(ctx, "messages");
        for (int i = 0; i < lens[c]; i++) {
            cJSON *m = cJSON_CreateObject();
            cJSON_AddStringToObject(m, "role", convs[c][i].role);
            cJSON_AddStringToObject(m, "content", convs[c][i].content);
            cJSON_AddItemToArray(msgs, m);
        }
        cJSON_AddStringToObject(ctx, "bos_token", "<s>");
        cJSON_AddStringToObject(ctx, "eos_token", "</s>");
        cJSON_AddBoolToObject(ctx, "add_generation_prompt",
                              !strcmp(convs[c][lens[c] - 1].role, "user"));
        int rc = jinja_render_string(jinja, strlen(jinja), what, ctx, &got, NULL, &err);
        char *with_bos = xmalloc(strlen(want) + 4);
        sprintf(with_bos, "<s>%s", want);
        if (rc || strcmp(got, with_bos)) {
            bad++;
            fprintf(stderr, "  %s, conversation %zu: %s\n  got  %s\n  want %s\n", what, c,
                    rc ? err.msg : "differs", got ? got : "-", with_bos);
        }
        free(with_bos);
        free(want);
        free(got);
        cJSON_Delete(ctx);
    }
    CHECK(bad == 0, "%s renders as template %s with the BOS (%d conversations differ)", what, name,
          bad);
    template_free(t);
}

/* dir's chat_template.jinja is own and its tokenizer_config.json is cfg, byte for byte */
static void check_kept(const char *dir, const char *own, const char *cfg, const char *what) {
    char *j = slurp(dir, "chat_template.jinja"), *c = slurp(dir, "tokenizer_config.json");
    CHECK(j && own && !strcmp(j, own) && c && cfg && !strcmp(c, cfg),
          "%s keeps the model's chat_template.jinja and tokenizer_config.json", what);
    free(j);
    free(c);
}

static void test_chat_template(void) {
    char args[768], base[128], path[300], run_a[128], run_auto[128], e[128], cmd[512];
    /* stories260K with a chat template of its own: chatml's, in chat_template.jinja */
    snprintf(base, sizeof base, "%s/base-ct", tmpdir);
    snprintf(cmd, sizeof cmd, "cp -r models/stories260K %s", base);
    CHECK(system(cmd) == 0, "copy stories260K");
    Template *cml = NULL;
    TunaErr err = {0};
    CHECK(template_load("templates", "chatml", &cml, &err) == 0, "chatml: %s", err.msg);
    char *own = cml ? template_to_jinja(cml) : NULL;
    template_free(cml);
    snprintf(path, sizeof path, "%s/chat_template.jinja", base);
    FILE *f = fopen(path, "w");
    CHECK(f && own && fputs(own, f) >= 0 && fclose(f) == 0, "write %s", path);
    char *base_cfg = slurp(base, "tokenizer_config.json");

    /* a plain model's export, and a run that trained with the model's own (auto -> chatml) */
    snprintf(e, sizeof e, "%s/ct-plain", tmpdir);
    snprintf(args, sizeof args, "export --model %s --out %s", base, e);
    CHECK(tuna(args, NULL) == 0, "export a model with chat_template.jinja");
    check_kept(e, own, base_cfg, "a plain model's export");
    snprintf(run_auto, sizeof run_auto, "%s/ct-auto", tmpdir);
    snprintf(args, sizeof args,
             "train --model %s --dataset identity --dataset-dir datasets --vars name=T,author=A "
             "--method lora --max-steps 1 --quiet --output %s",
             base, run_auto);
    CHECK(tuna(args, NULL) == 0, "train with --template auto on the chatml model");
    char tn[64] = "";
    model_run_string(run_auto, "train_config.json", "template", tn, sizeof tn);
    CHECK(!strcmp(tn, "chatml"), "auto resolved to %s (want chatml)", tn);
    snprintf(e, sizeof e, "%s/ct-auto-e", tmpdir);
    snprintf(args, sizeof args, "export --model %s --out %s", run_auto, e);
    char *msg = NULL;
    CHECK(tuna(args, &msg) == 0 && msg && !strstr(msg, "chat template"), "export the auto run: %s",
          msg ? msg : "");
    free(msg);
    check_kept(e, own, base_cfg, "a run with the model's own template");

    /* a run with another template: its Jinja, in both places */
    snprintf(run_a, sizeof run_a, "%s/ct-alpaca", tmpdir);
    snprintf(args, sizeof args,
             "train --model %s --dataset identity --dataset-dir datasets --vars name=T,author=A "
             "--method lora --max-steps 1 --quiet --template alpaca --output %s",
             base, run_a);
    CHECK(tuna(args, NULL) == 0, "train with --template alpaca on the chatml model");
    snprintf(e, sizeof e, "%s/ct-alpaca-e", tmpdir);
    snprintf(args, sizeof args, "export --model %s --out %s", run_a, e);
    msg = NULL;
    CHECK(tuna(args, &msg) == 0 && msg && strstr(msg, "chat template alpaca"),
          "export the alpaca run: %s", msg ? msg : "");
    free(msg);
    char *j1 = slurp(e, "chat_template.jinja"), *c1 = config_template(e);
    CHECK(j1 && c1 && !strcmp(j1, c1) && !strncmp(c1, "{{ bos_token }}", 15),
          "chat_template.jinja == tokenizer_config.json's chat_template, BOS first");
    check_renders(c1, "alpaca", "the alpaca run's export");
    free(j1);
    free(c1);
    /* and tuna reads it back as alpaca (--template auto on the export: its BOS first is the
     * built-in's auto_bos on this tokenizer) */
    TemplateAuto ta;
    CHECK(template_auto("templates", e, "vanilla", &ta, &err) == 0 && ta.matched &&
                  !strcmp(ta.name, "alpaca"),
          "auto on the alpaca run's export: %s (%s)", ta.name, ta.why);
    /* --template names it on the export: chatml is the model's own again */
    snprintf(e, sizeof e, "%s/ct-alpaca-chatml", tmpdir);
    snprintf(args, sizeof args, "export --model %s --out %s --template chatml", run_a, e);
    CHECK(tuna(args, NULL) == 0, "export --template chatml");
    j1 = slurp(e, "chat_template.jinja");
    CHECK(j1 && own && !strcmp(j1, own), "--template chatml keeps the model's own");
    free(j1);

    /* the identity run on stories260K, which has no chat template: the run's (vanilla) */
    snprintf(e, sizeof e, "%s/ct-vanilla", tmpdir);
    snprintf(args, sizeof args, "export --model %s --out %s", lora, e);
    CHECK(tuna(args, NULL) == 0, "export the run on stories260K");
    c1 = config_template(e);
    CHECK(c1 && !file_exists(e, "chat_template.jinja"), "a model without a chat template gets one");
    check_renders(c1, "vanilla", "the stories260K run's export");
    free(c1);
    CHECK(template_auto("templates", e, "alpaca", &ta, &err) == 0 && ta.matched &&
                  !strcmp(ta.name, "vanilla"),
          "auto on the stories260K run's export: %s (%s)", ta.name, ta.why);

    /* full fine-tuning: the run's own model folder carries it; a pt run's does not */
    char full[128];
    snprintf(full, sizeof full, "%s/ct-full", tmpdir);
    snprintf(args, sizeof args,
             "train --model %s --dataset identity --dataset-dir datasets --vars name=T,author=A "
             "--method full --max-steps 1 --quiet --template alpaca --output %s",
             base, full);
    CHECK(tuna(args, NULL) == 0, "a full run with --template alpaca");
    c1 = config_template(full);
    j1 = slurp(full, "chat_template.jinja");
    CHECK(c1 && j1 && !strcmp(c1, j1), "the full run's model carries its template");
    check_renders(c1, "alpaca", "the full run's model");
    free(c1);
    free(j1);
    snprintf(full, sizeof full, "%s/ct-pt", tmpdir);
    snprintf(args, sizeof args,
             "train --model %s --dataset c4_demo --dataset-dir datasets --stage pt --method full "
             "--max-steps 1 --quiet --template alpaca --cutoff-len 64 --output %s",
             base, full);
    CHECK(tuna(args, NULL) == 0, "a full pt run");
    check_kept(full, own, base_cfg, "a pt run's model");
    free(base_cfg);
    free(own);
}

static void one_line(const char *args, const char *want) {
    char *e = NULL;
    int rc = tuna(args, &e);
    int lines = 0;
    for (const char *p = e; p && *p; p++)
        lines += *p == '\n';
    CHECK(rc == 2 && lines == 1 && strstr(e, want), "%s: exit %d, said: %s", args, rc, e);
    free(e);
}

static void test_errors(void) {
    char args[512], out[128];
    snprintf(out, sizeof out, "%s/never", tmpdir);
    snprintf(args, sizeof args, "export --model %s --out %s --export-dtype q4_0", lora, out);
    one_line(args, "--export-dtype \"q4_0\": expected auto, fp32, bf16 or f16");
    snprintf(args, sizeof args, "export --model %s --out %s --export-size -1", lora, out);
    one_line(args, "--export-size \"-1\"");
    snprintf(args, sizeof args, "export --model %s --out %s --export-size 5GB", lora, out);
    one_line(args, "--export-size \"5GB\"");
    snprintf(args, sizeof args, "export --model %s --format gguf --out %s.gguf --export-dtype bf16",
             lora, out);
    one_line(args, "are for --format hf");
    struct stat sb;
    char g[160];
    snprintf(g, sizeof g, "%s.gguf", out);
    CHECK(stat(out, &sb) != 0 && stat(g, &sb) != 0, "refused exports wrote nothing");
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/tuna-export-hf-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_writer();
    struct stat sb;
    if (stat("models/stories260K/model.safetensors", &sb)) {
        SKIP("run from the repo root (models/stories260K missing)");
        return test_report("test_export_hf");
    }
    char args[512];
    snprintf(lora, sizeof lora, "%s/lora", tmpdir);
    snprintf(args, sizeof args,
             "train --model models/stories260K --dataset identity --dataset-dir datasets "
             "--vars name=Tuna,author=Ann --method lora --lora-target all --max-steps 2 --lr 1e-2 "
             "--quiet --output %s",
             lora);
    int trained = tuna(args, NULL) == 0;
    CHECK(trained, "train a LoRA run");
    if (trained) {
        test_dtypes();
        test_shards();
        test_gguf_tokenizer();
        test_chat_template();
        test_errors();
    }
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    CHECK(system(cmd) == 0, "cleanup");
    return test_report("test_export_hf");
}
