/* fuzz_jinja.c: a chat template's source (any bytes) through jinja_parse, then jinja_render of a
 * fixed conversation with and without the generation prompt. An error must be one line naming
 * the position; a render never exceeds JINJA_MAX_OUTPUT. */
#include "fuzz_common.h"

#include <cjson/cJSON.h>

#include "../../src/jinja.h"

static cJSON *ctx_of(int gen) {
    static const char *json =
            "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"},"
            " {\"role\": \"user\", \"content\": \"Hi {{x}} <|im_end|> \\u00e9\"},"
            " {\"role\": \"assistant\", \"content\": \"<think>\\nhm\\n</think>\\n\\nHello.\","
            "  \"tool_calls\": [{\"name\": \"f\", \"arguments\": {\"a\": 1}}]},"
            " {\"role\": \"tool\", \"content\": \"42\"}, {\"role\": \"user\", \"content\": \"\"}],"
            " \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\"}}],"
            " \"bos_token\": \"<s>\", \"eos_token\": \"</s>\", \"add_generation_prompt\": false}";
    cJSON *c = cJSON_Parse(json);
    if (!c) abort();
    if (gen) cJSON_ReplaceItemInObject(c, "add_generation_prompt", cJSON_CreateTrue());
    return c;
}

static void check_err(const TunaErr *err) {
    if (!err->msg[0] || strchr(err->msg, '\n') || strncmp(err->msg, "fuzz:", 5) != 0) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static cJSON *ctx[2];
    if (!ctx[0]) {
        ctx[0] = ctx_of(0);
        ctx[1] = ctx_of(1);
    }
    JinjaTemplate *t = NULL;
    TunaErr err = {0};
    if (jinja_parse((const char *)data, size, "fuzz", &t, &err) != 0) {
        if (t) abort();
        check_err(&err);
        return 0;
    }
    for (int g = 0; g < 2; g++) {
        char *out = NULL;
        size_t n = 0;
        tuna_err_clear(&err);
        if (jinja_render(t, ctx[g], &out, &n, &err) == 0) {
            if (!out || n > JINJA_MAX_OUTPUT || strlen(out) > n) abort();
            free(out);
        } else {
            if (out) abort();
            check_err(&err);
        }
    }
    jinja_free(t);
    return 0;
}
