/* test_tokenizer.c: the tokenizer against Hugging Face `tokenizers` on every line of
 * shared/tokenizers/reference_public.jsonl (ids and decode), plus edge cases: empty input,
 * invalid UTF-8, added tokens, byte fallback, decode of odd ids, malformed tokenizer.json. */
#include <cjson/cJSON.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "src/cli/cli.h"
#include "src/tokenizer.h"
#include "src/xalloc.h"
#include "tests/harness.h"

static const char *const NAMES[] = {"gpt2",   "llama2", "mistral-7b-v0.1",
                                    "llama3", "qwen3",  "stories260K"};
#define N_TOK (sizeof NAMES / sizeof NAMES[0])

static Tokenizer *toks[N_TOK];

static void tok_dir(const char *shared, const char *name, char *out, size_t n) {
    if (!strcmp(name, "stories260K"))
        snprintf(out, n, "%s/models/stories260K", shared);
    else
        snprintf(out, n, "%s/tokenizers/%s", shared, name);
}

static Tokenizer *get_tok(const char *shared, const char *name) {
    for (size_t i = 0; i < N_TOK; i++) {
        if (strcmp(NAMES[i], name)) continue;
        if (!toks[i]) {
            char dir[1024];
            TunaErr err = {0};
            tok_dir(shared, name, dir, sizeof dir);
            int rc = tokenizer_load(dir, &toks[i], &err);
            CHECK(rc == 0, "load %s: %s", dir, err.msg);
        }
        return toks[i];
    }
    return NULL;
}

/* Encodes s and compares with the expected ids; returns 1 on match. */
static int enc_eq(const Tokenizer *t, const char *s, size_t len, int add, const int32_t *want,
                  size_t n_want) {
    int32_t *ids = NULL;
    size_t n = 0;
    TunaErr err = {0};
    int rc = tokenizer_encode(t, s, len, add, &ids, &n, &err);
    int ok = rc == 0 && n == n_want && (n == 0 || !memcmp(ids, want, n * sizeof *ids));
    if (!ok) {
        fprintf(stderr, "  got  [");
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, "%s%d", i ? "," : "", ids[i]);
        fprintf(stderr, "]\n  want [");
        for (size_t i = 0; i < n_want; i++)
            fprintf(stderr, "%s%d", i ? "," : "", want[i]);
        fprintf(stderr, "]\n");
    }
    free(ids);
    return ok;
}

static void test_reference(const char *shared) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tokenizers/reference_public.jsonl", shared);
    FILE *f = fopen(path, "r");
    if (!f) {
        SKIP("%s not found", path);
        return;
    }
    char *line = NULL;
    size_t cap = 0;
    int lineno = 0, enc_ok = 0, dec_ok = 0, total = 0;
    while (getline(&line, &cap, f) > 0) {
        lineno++;
        cJSON *j = cJSON_Parse(line);
        CHECK(j != NULL, "%s:%d: bad JSON", path, lineno);
        if (!j) continue;
        const cJSON *jt = cJSON_GetObjectItem(j, "tokenizer"), *jx = cJSON_GetObjectItem(j, "text");
        const cJSON *ji = cJSON_GetObjectItem(j, "ids"), *jd = cJSON_GetObjectItem(j, "decoded");
        const cJSON *ja = cJSON_GetObjectItem(j, "add_special_tokens");
        Tokenizer *t = get_tok(shared, jt->valuestring);
        total++;
        if (t) {
            size_t n = (size_t)cJSON_GetArraySize(ji), k = 0;
            int32_t *want = xmalloc((n + 1) * sizeof *want);
            for (const cJSON *x = ji->child; x; x = x->next)
                want[k++] = (int32_t)x->valueint;
            int ok = enc_eq(t, jx->valuestring, strlen(jx->valuestring), cJSON_IsTrue(ja), want, n);
            CHECK(ok, "%s:%d: %s encode of \"%.60s\"", path, lineno, jt->valuestring,
                  jx->valuestring);
            enc_ok += ok;
            char *dec = tokenizer_decode(t, want, n, 0);
            int dok = !strcmp(dec, jd->valuestring);
            CHECK(dok, "%s:%d: %s decode: got \"%.80s\" want \"%.80s\"", path, lineno,
                  jt->valuestring, dec, jd->valuestring);
            dec_ok += dok;
            free(dec);
            free(want);
        }
        cJSON_Delete(j);
    }
    free(line);
    fclose(f);
    printf("reference: %d lines, encode %d/%d exact, decode %d/%d exact\n", total, enc_ok, total,
           dec_ok, total);
}

static void test_edges(const char *shared) {
    Tokenizer *l2 = get_tok(shared, "llama2"), *g2 = get_tok(shared, "gpt2");
    Tokenizer *qw = get_tok(shared, "qwen3"), *l3 = get_tok(shared, "llama3");
    Tokenizer *st = get_tok(shared, "stories260K");
    if (!l2 || !g2 || !qw || !l3 || !st) return;
    int32_t *ids;
    size_t n;
    TunaErr err = {0};

    /* empty input, with and without specials */
    CHECK(tokenizer_encode(g2, "", 0, 0, &ids, &n, &err) == 0 && n == 0, "gpt2 empty");
    free(ids);
    CHECK(enc_eq(l2, "", 0, 1, (const int32_t[]){1}, 1), "llama2 empty + bos");
    CHECK(enc_eq(st, "   ", 3, 0, NULL, 0), "stories260K spaces only");

    /* invalid UTF-8 is read as U+FFFD and must not crash */
    const char bad[] = "a\xff\xfe\xc3(b\xe2\x82\xf0\x9f\x98";
    for (size_t i = 0; i < N_TOK; i++) {
        Tokenizer *t = get_tok(shared, NAMES[i]);
        int rc = tokenizer_encode(t, bad, sizeof bad - 1, 1, &ids, &n, &err);
        CHECK(rc == 0 && n > 0, "%s invalid utf-8", NAMES[i]);
        char *d = tokenizer_decode(t, ids, n, 1);
        CHECK(strstr(d, "\xEF\xBF\xBD") != NULL, "%s: U+FFFD in \"%s\"", NAMES[i], d);
        free(d);
        free(ids);
    }
    /* gpt2: same as encoding the lossy string (HF: from_utf8_lossy) */
    CHECK(enc_eq(g2, "\xff", 1, 0, (const int32_t[]){4210}, 1), "gpt2 lone 0xff -> U+FFFD");
    /* embedded NUL bytes are ordinary bytes */
    CHECK(enc_eq(g2, "a\0b", 3, 0, (const int32_t[]){64, 188, 65}, 3), "gpt2 NUL");

    /* added / special tokens split out before normalization (values from HF tokenizers) */
    const char *s1 = "Hello <s> world</s>x";
    CHECK(enc_eq(l2, s1, strlen(s1), 0, (const int32_t[]){15043, 29871, 1, 29871, 3186, 2, 921}, 7),
          "llama2 specials");
    const char *s2 = "<|im_start|>user\nhi<think>x</think><|im_end|>";
    CHECK(enc_eq(qw, s2, strlen(s2), 0,
                 (const int32_t[]){151644, 872, 198, 6023, 151667, 87, 151668, 151645}, 8),
          "qwen3 specials");
    const char *s3 = "<|endoftext|>Hi <|endoftext|>";
    CHECK(enc_eq(g2, s3, strlen(s3), 1, (const int32_t[]){50256, 17250, 220, 50256}, 4),
          "gpt2 endoftext");
    CHECK(enc_eq(st, "  <s>  a  ", 10, 0, (const int32_t[]){1, 261}, 2), "stories260K strip");
    /* NFC (qwen3): U+212B ANGSTROM SIGN -> U+00C5 */
    CHECK(enc_eq(qw, "\xE2\x84\xAB", 3, 0, (const int32_t[]){144044}, 1), "qwen3 NFC");
    /* byte fallback for characters outside the vocab */
    CHECK(enc_eq(st, "\xE6\x97\xA5", 3, 0, (const int32_t[]){410, 233, 154, 168}, 4),
          "stories260K byte fallback");

    /* decode: specials kept or skipped, invalid byte runs, out-of-range ids dropped */
    char *d = tokenizer_decode(l2, (const int32_t[]){1, 15043, 2, 3186}, 4, 0);
    CHECK(!strcmp(d, "<s> Hello</s> world"), "llama2 decode specials: \"%s\"", d);
    free(d);
    d = tokenizer_decode(l2, (const int32_t[]){1, 15043, 2, 3186}, 4, 1);
    CHECK(!strcmp(d, "Hello world"), "llama2 decode skip: \"%s\"", d);
    free(d);
    d = tokenizer_decode(l2, (const int32_t[]){0xE4 + 3, 0xBD + 3}, 2, 0);
    CHECK(!strcmp(d, "\xEF\xBF\xBD\xEF\xBF\xBD"), "llama2 bad bytes: \"%s\"", d);
    free(d);
    d = tokenizer_decode(g2, (const int32_t[]){220, 447}, 2, 0);
    CHECK(!strcmp(d, " \xEF\xBF\xBD"), "gpt2 partial char: \"%s\"", d);
    free(d);
    d = tokenizer_decode(qw, (const int32_t[]){-5, 9707, 1 << 30}, 3, 0);
    CHECK(!strcmp(d, "Hello"), "qwen3 out-of-range ids: \"%s\"", d);
    free(d);
    d = tokenizer_decode(qw, NULL, 0, 0);
    CHECK(!strcmp(d, ""), "empty decode");
    free(d);

    /* accessors */
    CHECK(tokenizer_token_id(qw, "<|im_end|>") == 151645, "qwen3 <|im_end|>");
    CHECK(tokenizer_eos_id(qw) == 151645 && tokenizer_bos_id(qw) == -1, "qwen3 bos/eos");
    CHECK(tokenizer_bos_id(l2) == 1 && tokenizer_eos_id(l2) == 2, "llama2 bos/eos");
    CHECK(tokenizer_bos_id(l3) == 128000 && tokenizer_eos_id(l3) == 128001, "llama3 bos/eos");
    CHECK(tokenizer_vocab_size(g2) == 50257 && tokenizer_vocab_size(l3) == 128256,
          "vocab sizes %d %d", tokenizer_vocab_size(g2), tokenizer_vocab_size(l3));
    CHECK(tokenizer_vocab_size(qw) == 151669, "qwen3 vocab %d", tokenizer_vocab_size(qw));
    CHECK(tokenizer_token_str(g2, 15496) && !strcmp(tokenizer_token_str(g2, 15496), "Hello"),
          "token_str");
    CHECK(tokenizer_token_str(g2, 50257) == NULL && tokenizer_token_str(g2, -1) == NULL,
          "token_str range");
    CHECK(tokenizer_is_special(qw, 151645) && !tokenizer_is_special(qw, 151667) &&
                  !tokenizer_is_special(qw, 9707),
          "is_special");
    CHECK(tokenizer_token_id(g2, "no such token at all") == -1, "absent token");

    /* a long run of spaces and a long word must not blow the regex stack */
    size_t big = 200000;
    char *sp = xmalloc(big + 2);
    memset(sp, ' ', big);
    sp[big] = 'x';
    for (size_t i = 0; i < N_TOK; i++) {
        Tokenizer *t = get_tok(shared, NAMES[i]);
        int rc = tokenizer_encode(t, sp, big + 1, 0, &ids, &n, &err);
        CHECK(rc == 0 && n > 0, "%s long spaces: %s", NAMES[i], err.msg);
        free(ids);
    }
    memset(sp, 'a', big);
    for (size_t i = 0; i < N_TOK; i++) {
        Tokenizer *t = get_tok(shared, NAMES[i]);
        int rc = tokenizer_encode(t, sp, big, 0, &ids, &n, &err);
        CHECK(rc == 0 && n > 0, "%s long word: %s", NAMES[i], err.msg);
        char *dd = tokenizer_decode(t, ids, n, 0);
        CHECK(strlen(dd) >= big && strspn(dd, " a") == strlen(dd), "%s long word roundtrip",
              NAMES[i]);
        free(dd);
        free(ids);
    }
    free(sp);
}

/* Writes text to dir/tokenizer.json and checks that loading fails with a message. */
static void expect_load_error(const char *dir, const char *text, const char *needle) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    FILE *f = fopen(path, "w");
    if (!f) {
        SKIP("cannot write %s", path);
        return;
    }
    fputs(text, f);
    fclose(f);
    Tokenizer *t = NULL;
    TunaErr err = {0};
    int rc = tokenizer_load(dir, &t, &err);
    CHECK(rc < 0 && t == NULL, "load of bad file \"%.40s\" succeeded", text);
    CHECK(strstr(err.msg, "tokenizer.json") && strstr(err.msg, needle) && !strchr(err.msg, '\n'),
          "message \"%s\" lacks \"%s\"", err.msg, needle);
    tokenizer_free(t);
}

static void test_malformed(void) {
    char dir[] = "/tmp/tuna_tok_XXXXXX";
    if (!mkdtemp(dir)) {
        SKIP("mkdtemp failed");
        return;
    }
    Tokenizer *t = NULL;
    TunaErr err = {0};
    CHECK(tokenizer_load(dir, &t, &err) == TUNA_ENOTFOUND && t == NULL, "missing file: %s",
          err.msg);
    const char *ok_model = "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, "
                           "\"ab\": 2}, \"merges\": [\"a b\"]}";
    char buf[1024];
    expect_load_error(dir, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0", "JSON");
    expect_load_error(dir, "[1, 2]", "object");
    expect_load_error(dir, "{\"version\": \"1.0\"}", "model");
    expect_load_error(dir, "{\"model\": {\"type\": \"BPE\", \"vocab\": [], \"merges\": []}}",
                      "model.vocab");
    expect_load_error(dir,
                      "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": \"x\"}, "
                      "\"merges\": []}}",
                      "integer");
    expect_load_error(dir,
                      "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, "
                      "\"merges\": [\"ab\"]}}",
                      "merges[0]");
    expect_load_error(dir,
                      "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, "
                      "\"merges\": [\"a q\"]}}",
                      "not in the vocab");
    /* both parts known, their concatenation not: the message quotes the merged token */
    expect_load_error(dir,
                      "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, "
                      "\"merges\": [\"a b\"]}}",
                      "merged token \"ab\" is not in the vocab");
    expect_load_error(dir,
                      "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, "
                      "\"merges\": [[\"a\", 3]]}}",
                      "merges[0]");
    expect_load_error(dir, "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", "WordPiece");
    snprintf(buf, sizeof buf, "{%s, \"normalizer\": {\"type\": \"Lowercase\"}}", ok_model);
    expect_load_error(dir, buf, "Lowercase");
    snprintf(buf, sizeof buf,
             "{%s, \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": "
             "{\"Regex\": \"(\"}, \"behavior\": \"Isolated\", \"invert\": false}}",
             ok_model);
    expect_load_error(dir, buf, "regex");
    snprintf(buf, sizeof buf, "{%s, \"added_tokens\": [{\"id\": \"x\", \"content\": \"a\"}]}",
             ok_model);
    expect_load_error(dir, buf, "added_tokens[0].id");

    /* a minimal valid file works, with no decoder: tokens joined by spaces */
    snprintf(buf, sizeof buf, "%s/tokenizer.json", dir);
    FILE *f = fopen(buf, "w");
    if (f) {
        fprintf(f, "{%s}", ok_model);
        fclose(f);
        int rc = tokenizer_load(dir, &t, &err);
        CHECK(rc == 0, "minimal load: %s", err.msg);
        if (!rc) {
            CHECK(enc_eq(t, "abba", 4, 1, (const int32_t[]){2, 1, 2 - 2}, 3), "minimal encode");
            char *d = tokenizer_decode(t, (const int32_t[]){2, 1, 0}, 3, 0);
            CHECK(!strcmp(d, "ab b a"), "minimal decode \"%s\"", d);
            free(d);
            CHECK(tokenizer_bos_id(t) == -1, "no config -> no bos");
        }
        tokenizer_free(t);
    }
    unlink(buf);
    rmdir(dir);
}

/* Runs cmd_tokenize with stdin from `input`; returns its exit code and the output in out. */
static int run_cli(char **argv, int argc, const char *input, char *out, size_t out_cap) {
    char in_path[] = "/tmp/tuna_tok_in_XXXXXX", out_path[] = "/tmp/tuna_tok_out_XXXXXX";
    int fi = mkstemp(in_path), fo = mkstemp(out_path);
    if (fi < 0 || fo < 0) return -100;
    if (write(fi, input, strlen(input)) != (ssize_t)strlen(input)) return -100;
    close(fi);
    fflush(stdout);
    int saved_in = dup(0), saved_out = dup(1);
    int in_fd = open(in_path, O_RDONLY);
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
    ssize_t n = pread(fo, out, out_cap - 1, 0);
    out[n > 0 ? n : 0] = '\0';
    close(fo);
    unlink(in_path);
    unlink(out_path);
    return rc;
}

static void test_cli(const char *shared) {
    char dir[1024], out[4096];
    tok_dir(shared, "llama2", dir, sizeof dir);
    char *enc[] = {(char[]){"tokenize"}, dir, (char[]){"--add-special-tokens"}, NULL};
    int rc = run_cli(enc, 3, "{\"text\": \"Hello world\"}\n\n{\"text\": \"a\\u0000b\"}\n", out,
                     sizeof out);
    CHECK(rc == 0 && !strcmp(out, "{\"ids\": [1, 15043, 3186]}\n{\"ids\": [1, 263, 3, 29890]}\n"),
          "cli encode rc=%d out=%s", rc, out);
    char *dec[] = {(char[]){"tokenize"}, (char[]){"--decode"}, dir, NULL};
    rc = run_cli(dec, 3, "{\"ids\": [1, 15043, 3186]}\n{\"ids\": [263, 3, 29890]}\n", out,
                 sizeof out);
    CHECK(rc == 0 && !strcmp(out, "{\"text\": \"<s> Hello world\"}\n{\"text\": \"a\\u0000b\"}\n"),
          "cli decode rc=%d out=%s", rc, out);
    char *skip[] = {(char[]){"tokenize"}, (char[]){"--decode"}, (char[]){"--skip-special-tokens"},
                    dir, NULL};
    rc = run_cli(skip, 4, "{\"ids\": [1, 15043, 3186]}\n", out, sizeof out);
    CHECK(rc == 0 && !strcmp(out, "{\"text\": \"Hello world\"}\n"), "cli skip out=%s", out);
    rc = run_cli(enc, 3, "{\"text\": \"ok\"}\n{\"text\": 5}\n", out, sizeof out);
    CHECK(rc != 0 && strstr(out, "\"ids\"") != NULL, "cli bad line rc=%d", rc);
    char *bad[] = {(char[]){"tokenize"}, (char[]){"/nonexistent/dir"}, NULL};
    CHECK(run_cli(bad, 2, "", out, sizeof out) != 0, "cli missing dir");
    char *none[] = {(char[]){"tokenize"}, NULL};
    CHECK(run_cli(none, 1, "", out, sizeof out) == 2, "cli usage");
}

int main(void) {
    tokenizer_free(NULL);
    test_malformed();
    const char *shared = test_shared_dir();
    if (!shared) {
        SKIP("shared data dir not found (set TUNA_SHARED): reference tokenizer tests not run");
        return test_report("test_tokenizer");
    }
    test_reference(shared);
    test_edges(shared);
    test_cli(shared);
    for (size_t i = 0; i < N_TOK; i++)
        tokenizer_free(toks[i]);
    return test_report("test_tokenizer");
}
