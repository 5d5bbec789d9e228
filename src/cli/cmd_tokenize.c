/* cmd_tokenize.c: `tuna tokenize DIR [--add-special-tokens] [--decode] [--skip-special-tokens]`.
 * JSON lines on stdin -> JSON lines on stdout, one output line per input line, in order:
 * {"text": "..."} -> {"ids": [...]}, or with --decode {"ids": [...]} -> {"text": "..."}.
 * Blank lines are skipped. A bad line stops the run with `<stdin>:LINE: ...` on stderr. */
#include "../tokenizer.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "../xalloc.h"
#include "cli.h"

static const struct option TOKENIZE_OPTS[] = {
        {"add-special-tokens", no_argument, NULL, 'a'},
        {"decode", no_argument, NULL, 'd'},
        {"skip-special-tokens", no_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
};

static void tokenize_usage(FILE *f) {
    fputs("usage: tuna tokenize DIR [--add-special-tokens] [--decode] [--skip-special-tokens]\n"
          "  DIR: a model folder, or a LoRA run folder (its base model's tokenizer)\n"
          "  reads JSON lines from stdin: {\"text\": \"...\"} -> {\"ids\": [...]}\n"
          "  --add-special-tokens  apply the post-processor (BOS/EOS...) when encoding\n"
          "  --decode              read {\"ids\": [...]} and write {\"text\": \"...\"}\n"
          "  --skip-special-tokens drop special tokens when decoding\n",
          f);
}

/* Writes s[0..len) as a JSON string (UTF-8 kept; control chars escaped). */
static void put_json_string(FILE *f, const char *s, size_t len) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s, *e = p + len; p < e; p++) {
        switch (*p) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        default:
            if (*p < 0x20)
                fprintf(f, "\\u%04x", *p);
            else
                fputc(*p, f);
        }
    }
    fputc('"', f);
}

/* cJSON strings are NUL-terminated, so a "\u0000" escape is swapped for this sentinel
 * (U+10FFFF, a noncharacter) before parsing and back to a NUL byte afterwards. Lines that
 * already hold U+10FFFF keep it and get no NUL support. */
#define NUL_SENTINEL "\xF4\x8F\xBF\xBF"

/* Returns a copy of line with each \u0000 escape replaced by the sentinel's escape, or NULL
 * when there is none (or the line already holds the sentinel). */
static char *swap_nul_escapes(const char *line, size_t len, size_t *out_len) {
    if (memmem(line, len, NUL_SENTINEL, 4) || !memmem(line, len, "\\u0000", 6)) return NULL;
    char *o = xmalloc(len * 2 + 1);
    size_t k = 0;
    for (size_t i = 0; i < len; i++) {
        if (line[i] == '\\' && i + 6 <= len && line[i + 1] == 'u' &&
            !memcmp(line + i + 2, "0000", 4)) {
            memcpy(o + k, "\\uDBFF\\uDFFF", 12);
            k += 12;
            i += 5;
        } else if (line[i] == '\\' && i + 1 < len) { /* copy any other escape whole */
            o[k++] = line[i++];
            o[k++] = line[i];
        } else {
            o[k++] = line[i];
        }
    }
    o[k] = '\0';
    *out_len = k;
    return o;
}

/* Processes one input line; returns 0 or writes the error into msg. */
static int tokenize_line(const Tokenizer *tok, const char *line, size_t len, int decode,
                         int add_special, int skip_special, char *msg, size_t msg_len) {
    size_t swapped_len = 0;
    char *swapped = decode ? NULL : swap_nul_escapes(line, len, &swapped_len);
    cJSON *j = swapped ? cJSON_ParseWithLength(swapped, swapped_len)
                       : cJSON_ParseWithLength(line, len);
    int had_nul = swapped != NULL;
    free(swapped);
    int rc = 0;
    if (!cJSON_IsObject(j)) {
        snprintf(msg, msg_len, "expected a JSON object%s", j ? "" : " (invalid JSON)");
        rc = -1;
        goto done;
    }
    if (decode) {
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(j, "ids");
        if (!cJSON_IsArray(ids)) {
            snprintf(msg, msg_len, "\"ids\" must be an array of integers");
            rc = -1;
            goto done;
        }
        size_t n = (size_t)cJSON_GetArraySize(ids), k = 0;
        int32_t *v = xmalloc((n ? n : 1) * sizeof *v);
        for (const cJSON *x = ids->child; x; x = x->next, k++) {
            if (!cJSON_IsNumber(x) || x->valuedouble != (double)(int32_t)x->valuedouble) {
                snprintf(msg, msg_len, "\"ids\"[%zu] must be an integer", k);
                free(v);
                rc = -1;
                goto done;
            }
            v[k] = (int32_t)x->valuedouble;
        }
        size_t tl;
        char *text = tokenizer_decode_len(tok, v, n, skip_special, &tl);
        fputs("{\"text\": ", stdout);
        put_json_string(stdout, text, tl);
        fputs("}\n", stdout);
        free(text);
        free(v);
    } else {
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(j, "text");
        if (!cJSON_IsString(text)) {
            snprintf(msg, msg_len, "\"text\" must be a string");
            rc = -1;
            goto done;
        }
        int32_t *ids;
        size_t n, tl = strlen(text->valuestring);
        TunaErr err = {0};
        if (had_nul) { /* put back the U+0000 that cJSON strings cannot hold */
            char *q = text->valuestring;
            size_t k = 0;
            for (size_t i = 0; i < tl; i++) {
                if (i + 4 <= tl && !memcmp(q + i, NUL_SENTINEL, 4))
                    q[k++] = '\0', i += 3;
                else
                    q[k++] = q[i];
            }
            tl = k;
        }
        if (tokenizer_encode(tok, text->valuestring, tl, add_special, &ids, &n, &err)) {
            snprintf(msg, msg_len, "%s", err.msg);
            rc = -1;
            goto done;
        }
        fputs("{\"ids\": [", stdout);
        for (size_t i = 0; i < n; i++)
            printf(i ? ", %d" : "%d", ids[i]);
        fputs("]}\n", stdout);
        free(ids);
    }
done:
    cJSON_Delete(j);
    return rc;
}

int cmd_tokenize(int argc, char **argv) {
    int add_special = 0, decode = 0, skip_special = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", TOKENIZE_OPTS, NULL)) != -1) {
        switch (c) {
        case 'a': add_special = 1; break;
        case 'd': decode = 1; break;
        case 's': skip_special = 1; break;
        case 'h': tokenize_usage(stdout); return 0;
        default: tokenize_usage(stderr); return 2;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "tuna tokenize: expected one tokenizer directory\n");
        tokenize_usage(stderr);
        return 2;
    }
    const char *dir = argv[optind];
    if (!cli_model_path_ok("tokenize", NULL, dir)) return 1;
    Tokenizer *tok;
    TunaErr err = {0};
    char base[4096];
    if (model_is_adapter_run(dir)) { /* a LoRA run: its base model's tokenizer */
        if (model_run_base(dir, base, sizeof base, &err)) {
            fprintf(stderr, "tuna tokenize: %s\n", err.msg);
            return 1;
        }
        dir = base;
    }
    if (tokenizer_load(dir, &tok, &err)) {
        fprintf(stderr, "tuna tokenize: %s\n", err.msg);
        return 1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long lineno = 0;
    int rc = 0;
    char msg[TUNA_ERR_LEN];
    while ((len = getline(&line, &cap, stdin)) >= 0) {
        lineno++;
        if (strspn(line, " \t\r\n") == (size_t)len) continue;
        if (tokenize_line(tok, line, (size_t)len, decode, add_special, skip_special, msg,
                          sizeof msg)) {
            fflush(stdout);
            fprintf(stderr, "tuna tokenize: <stdin>:%ld: %s\n", lineno, msg);
            rc = 1;
            break;
        }
    }
    if (fflush(stdout) != 0 && !rc) {
        fprintf(stderr, "tuna tokenize: write error on stdout\n");
        rc = 1;
    }
    free(line);
    tokenizer_free(tok);
    return rc;
}
