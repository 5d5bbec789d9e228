/* fuzz_dataset.c: dataset_info.json + dataset rows through dataset_load, the split and the
 * batcher. The first byte picks a built-in registry entry "d" (bits 0-2: alpaca/sharegpt/
 * OpenAI-style messages, .json or .jsonl, a .txt for stage pt) and options (bit 3 strict, bit 4
 * cutoff_len 12, bit 5 mask history / train on prompt, bit 6 {{vars}}); with bit 7 set the rest
 * up to the first NUL is the dataset_info.json itself. The rows are written as d.json, d.jsonl
 * and d.txt. */
#define TUNA_FUZZ_NEED_TOKENIZER
#include "fuzz_common.h"

#include "../../src/dataset.h"
#include "../../src/template.h"

static const char *const registries[8] = {
        "{\"d\":{\"file_name\":\"d.json\"}}",
        "{\"d\":{\"file_name\":\"d.jsonl\",\"columns\":{\"prompt\":\"instruction\",\"query\":"
        "\"input\",\"response\":\"output\",\"system\":\"system\",\"history\":\"history\"}}}",
        "{\"d\":{\"file_name\":\"d.json\",\"formatting\":\"sharegpt\"}}",
        "{\"d\":{\"file_name\":\"d.jsonl\",\"formatting\":\"sharegpt\",\"columns\":{\"messages\":"
        "\"conversations\",\"system\":\"system\",\"tools\":\"tools\"}}}",
        "{\"d\":{\"file_name\":\"d.json\",\"formatting\":\"sharegpt\",\"columns\":{\"messages\":"
        "\"messages\"},\"tags\":{\"role_tag\":\"role\",\"content_tag\":\"content\",\"user_tag\":"
        "\"user\",\"assistant_tag\":\"assistant\",\"system_tag\":\"system\"}}}",
        "{\"d\":{\"file_name\":\"d.jsonl\",\"formatting\":\"sharegpt\",\"columns\":{\"messages\":"
        "\"messages\"},\"tags\":{\"role_tag\":\"role\",\"content_tag\":\"content\",\"user_tag\":"
        "\"user\",\"assistant_tag\":\"assistant\",\"system_tag\":\"system\"}}}",
        "{\"d\":{\"file_name\":\"d.txt\",\"columns\":{\"prompt\":\"text\"}}}",
        "{\"d\":{\"file_name\":\"d.jsonl\",\"columns\":{\"prompt\":\"text\"}}}",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static Template *tpl;
    const Tokenizer *tok = fuzz_tokenizer();
    TunaErr err = {0};
    if (!tpl && template_load("templates", "default", &tpl, &err) != 0) {
        fprintf(stderr, "fuzz: run from the repository root: %s\n", err.msg);
        abort();
    }
    if (size < 1) return 0;
    unsigned sel = data[0];
    const uint8_t *rows = data + 1;
    size_t n_rows = size - 1;
    if (sel & 128) {
        const uint8_t *b;
        size_t na, nb;
        fuzz_split(rows, n_rows, &b, &na, &nb);
        fuzz_write("dataset_info.json", rows, na);
        rows = b, n_rows = nb;
    } else {
        const char *r = registries[sel & 7];
        fuzz_write("dataset_info.json", (const uint8_t *)r, strlen(r));
    }
    fuzz_write("d.json", rows, n_rows);
    fuzz_write("d.jsonl", rows, n_rows);
    fuzz_write("d.txt", rows, n_rows);
    DatasetOptions opt = {0};
    opt.names = "d";
    opt.dataset_dir = fuzz_scratch();
    opt.strict = (sel & 8) != 0;
    opt.cutoff_len = sel & 16 ? 12 : 0;
    opt.template_flags = sel & 32 ? TEMPLATE_MASK_HISTORY | TEMPLATE_TRAIN_ON_PROMPT : 0;
    opt.vars = sel & 64 ? "name=Tuna,author=Ann" : NULL;
    opt.stage_pt = (sel & 7) >= 6;
    /* a registry from the input: bit 1 loads it as a preference stage (ranking pairs) */
    opt.ranking = (sel & 128) && (sel & 2);
    if (opt.stage_pt && !opt.cutoff_len) opt.cutoff_len = 16;
    Dataset *d = NULL;
    if (dataset_load(&opt, tok, tpl, &d, &err) != 0) {
        if (d || !err.msg[0] || strchr(err.msg, '\n')) abort();
        return 0;
    }
    Dataset *train = NULL, *val = NULL;
    if (d->n >= 2 && dataset_split(d, 0.5, 7, &train, &val, &err) == 0) {
        Batcher bt;
        if (batcher_init(&bt, train, 2, 8, sel & 1, 3, &err) == 0) {
            Batch b;
            for (int i = 0; i < 4; i++)
                batcher_next(&bt, &b);
            batcher_free(&bt);
        }
        dataset_free(train);
        dataset_free(val);
    }
    dataset_free(d);
    return 0;
}
