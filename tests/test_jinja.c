/* test_jinja.c: src/jinja.c against transformers' own chat-template renderer
 * (tests/fixtures/jinja/cases.json, made by tests/gen_jinja_fixtures.py): byte-identical text
 * for every case, an error wherever Python raised one; plus the bounds and one-line errors. */
#include <cjson/cJSON.h>

#include "../src/jinja.h"
#include "harness.h"

#define FIX "tests/fixtures/jinja/"

static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) n = 0;
    if (s) s[n] = 0;
    fclose(f);
    if (len) *len = (size_t)n;
    return s;
}

/* an error message is one line "NAME:L:C: ..." */
static int one_line_with_pos(const char *msg, const char *name) {
    if (strchr(msg, '\n') || strncmp(msg, name, strlen(name)) != 0) return 0;
    int l = 0, c = 0;
    return sscanf(msg + strlen(name), ":%d:%d:", &l, &c) == 2 && l >= 1 && c >= 1;
}

static void fixture_cases(void) {
    char *js = read_all(FIX "cases.json", NULL);
    CHECK(js != NULL, "missing " FIX "cases.json");
    if (!js) return;
    cJSON *root = cJSON_Parse(js);
    CHECK(cJSON_IsArray(root), "cases.json is not an array");
    int n_ok = 0, n_err = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, root) {
        const char *tname = cJSON_GetStringValue(cJSON_GetObjectItem(c, "template"));
        const char *ttext = cJSON_GetStringValue(cJSON_GetObjectItem(c, "template_text"));
        const char *cname = cJSON_GetStringValue(cJSON_GetObjectItem(c, "case"));
        const char *expected = cJSON_GetStringValue(cJSON_GetObjectItem(c, "expected"));
        const cJSON *ctx = cJSON_GetObjectItem(c, "context");
        char *src = NULL;
        size_t len = 0;
        if (tname) {
            char path[256];
            snprintf(path, sizeof path, FIX "%s.jinja", tname);
            src = read_all(path, &len);
        } else if (ttext) {
            src = strdup(ttext);
            len = strlen(ttext);
        }
        CHECK(src != NULL, "case %s: no template", cname);
        if (!src) continue;
        char *out = NULL;
        size_t olen = 0;
        TunaErr err = {0};
        int rc = jinja_render_string(src, len, tname ? tname : "t", ctx, &out, &olen, &err);
        if (expected) {
            CHECK(rc == 0, "%s %s: %s", tname, cname, err.msg);
            if (rc == 0) {
                int same = olen == strlen(expected) && memcmp(out, expected, olen) == 0;
                CHECK(same, "%s %s: got\n%s\n--- want\n%s", tname, cname, out, expected);
                n_ok += same;
            }
        } else {
            CHECK(rc != 0, "%s %s: rendered, Python raised %s", tname ? tname : ttext, cname,
                  cJSON_GetStringValue(cJSON_GetObjectItem(c, "error")));
            if (rc) {
                CHECK(one_line_with_pos(err.msg, tname ? tname : "t"),
                      "%s: error not 'NAME:L:C: ...': %s", cname, err.msg);
                n_err++;
            }
        }
        free(out);
        free(src);
    }
    printf("jinja fixtures: %d texts identical to transformers, %d errors as in Python\n", n_ok,
           n_err);
    cJSON_Delete(root);
    free(js);
}

static int render(const char *src, const char *ctx_json, char **out, TunaErr *err) {
    cJSON *ctx = ctx_json ? cJSON_Parse(ctx_json) : NULL;
    int rc = jinja_render_string(src, strlen(src), "t", ctx, out, NULL, err);
    cJSON_Delete(ctx);
    return rc;
}

static void expect_text(const char *src, const char *ctx, const char *want) {
    char *out = NULL;
    TunaErr err = {0};
    int rc = render(src, ctx, &out, &err);
    CHECK(rc == 0 && strcmp(out, want) == 0, "%s -> %s (want %s) %s", src, out ? out : "(err)",
          want, err.msg);
    free(out);
}

static void expect_error(const char *src, const char *ctx, const char *needle) {
    char *out = NULL;
    TunaErr err = {0};
    int rc = render(src, ctx, &out, &err);
    CHECK(rc != 0 && out == NULL, "%s: expected an error", src);
    CHECK(one_line_with_pos(err.msg, "t"), "%s: error %s", src, err.msg);
    CHECK(strstr(err.msg, needle) != NULL, "%s: error '%s' lacks '%s'", src, err.msg, needle);
    free(out);
}

static void own_cases(void) {
    expect_text("{{ x }}", "{\"x\": [1, 2.5, \"a'b\", null, true]}",
                "[1, 2.5, \"a'b\", None, True]");
    expect_text("{% set ns = namespace(a=1) %}{% for i in [1,2,3] %}{% set ns.a = ns.a * i %}{% "
                "endfor %}{{ ns.a }}",
                NULL, "6");
    expect_text("{% set a = 1 %}{% for i in [5] %}{% set a = i %}{% endfor %}{{ a }}", NULL, "1");
    expect_text("{{ 'abc'[1:] }}{{ '日本語'[1] }}{{ '日本語'|length }}", NULL, "bc本3");
    expect_text("{{ x.y if x else 'none' }}", "{\"x\": null}", "none");
    expect_text("line1\n{% if true %}\n  kept\n{% endif %}\n", NULL, "line1\n  kept\n");
    expect_text("{{ 1 if false }}|", NULL, "|");
    expect_text("{{ [3,1] | tojson(indent=2) }}", NULL, "[\n  3,\n  1\n]");
    /* errors: one line with the position */
    expect_error("ab\n  {{ nothing.x }}", NULL, "t:2:");
    expect_error("{% for i in range(2000000) %}{% endfor %}", NULL, "range");
    expect_error("{% for i in range(1000) %}{% for j in range(1000) %}{% for k in range(2) %}{% "
                 "endfor %}{% endfor %}{% endfor %}",
                 NULL, "loop iterations");
    expect_error("{{ 'x' * 10000000 }}", NULL, "too large");
    expect_error("{% for i in range(100000) %}{{ "
                 "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' }}{% endfor %}",
                 NULL, "output larger");
    expect_error("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", NULL, "deeper");
    char deep[1200];
    size_t k = 0;
    k += (size_t)snprintf(deep + k, sizeof deep - k, "{{ ");
    for (int i = 0; i < 500; i++)
        deep[k++] = '(';
    deep[k++] = '1';
    for (int i = 0; i < 500; i++)
        deep[k++] = ')';
    snprintf(deep + k, sizeof deep - k, " }}");
    expect_error(deep, NULL, "deeper");
    expect_error("{{ 9223372036854775807 + 1 }}", NULL, "overflow");
    expect_error("{{ x", NULL, "not closed");
    expect_error("{{ 'abc }}", NULL, "unterminated");
    TunaErr err = {0};
    JinjaTemplate *t = NULL;
    CHECK(jinja_parse("a\0b", 3, "t", &t, &err) != 0 && t == NULL, "NUL accepted");
}

int main(void) {
    fixture_cases();
    own_cases();
    return test_report("test_jinja");
}
