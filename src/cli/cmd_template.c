/* cmd_template.c: `tuna template list|show`: list the template files with their descriptions,
 * and show how one dataset example (or a built-in conversation) is rendered and which tokens
 * train. `tuna template NAME --modelfile` prints the Ollama Modelfile for it (modelfile.h). */
#include "../template.h"
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../dataset.h"
#include "../modelfile.h"
#include "../tokenizer.h"
#include "../xalloc.h"

// --- options

enum {
    OPT_TDIR = 256,
    OPT_DATASET,
    OPT_DDIR,
    OPT_MODEL,
    OPT_INDEX,
    OPT_VARS,
    OPT_CUTOFF,
    OPT_STAGE,
    OPT_TRAIN_ON_PROMPT,
    OPT_MASK_HISTORY,
    OPT_MODELFILE,
    OPT_FROM,
    OPT_ADAPTER,
    OPT_COLOR,
    OPT_NO_COLOR,
    OPT_HELP
};

typedef struct TplOpt {
    const char *name;
    int has_arg;
    int key;
    const char *arg;
    const char *help;
} TplOpt;

static const TplOpt tpl_opts[] = {
        {"templates-dir", 1, OPT_TDIR, "DIR", "template files (default: templates)"},
        {"dataset", 1, OPT_DATASET, "NAME", "show: dataset_info.json key"},
        {"dataset-dir", 1, OPT_DDIR, "DIR", "show: dataset directory (default: datasets)"},
        {"model", 1, OPT_MODEL, "DIR", "show: tokenizer directory (default: models/stories260K)"},
        {"index", 1, OPT_INDEX, "N", "show: example index (default: 0)"},
        {"vars", 1, OPT_VARS, "K=V,...", "show: replace {{K}} with V (identity: name, author)"},
        {"cutoff-len", 1, OPT_CUTOFF, "N", "show: truncate as training would (default: 0, none)"},
        {"stage", 1, OPT_STAGE, "sft|pt", "show: sft (default) or pt (plain text, all trains)"},
        {"train-on-prompt", 0, OPT_TRAIN_ON_PROMPT, NULL, "show: the prompt tokens train too"},
        {"mask-history", 0, OPT_MASK_HISTORY, NULL, "show: only the last reply trains"},
        {"modelfile", 0, OPT_MODELFILE, NULL,
         "NAME --modelfile: print the Ollama Modelfile (BOS/EOS text from --model)"},
        {"from", 1, OPT_FROM, "GGUF", "modelfile: the FROM path (default: model.gguf)"},
        {"adapter", 1, OPT_ADAPTER, "GGUF", "modelfile: the ADAPTER path (LoRA form)"},
        {"color", 0, OPT_COLOR, NULL, "dim masked text with ANSI even when not a tty"},
        {"no-color", 0, OPT_NO_COLOR, NULL, "plain output: masked text in «...»"},
        {"help", 0, OPT_HELP, NULL, "this help"},
        {NULL, 0, 0, NULL, NULL}};

static void tpl_help(FILE *f) {
    fprintf(f, "usage: tuna template list [--templates-dir DIR]\n"
               "       tuna template show NAME [--dataset X] [options]\n"
               "       tuna template show auto --model M   (the built-in that matches M's own chat "
               "template, and why)\n"
               "       tuna template NAME --modelfile [--model M] [--from GGUF] [--adapter GGUF]\n"
               "(show without --dataset: a built-in system + user + assistant conversation)\n"
               "\noptions:\n");
    for (int i = 0; tpl_opts[i].name; i++) {
        char left[64];
        snprintf(left, sizeof left, "--%s%s%s", tpl_opts[i].name, tpl_opts[i].arg ? " " : "",
                 tpl_opts[i].arg ? tpl_opts[i].arg : "");
        fprintf(f, "  %-28s %s\n", left, tpl_opts[i].help);
    }
}

// --- rendering

/* Prints s with control characters made visible (\n shown as "\n" then a real newline). */
static void put_visible(FILE *f, const char *s) {
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '\n')
            fputs("\\n\n", f);
        else if (c == '\t')
            fputs("\\t", f);
        else if (c < 0x20 || c == 0x7f)
            fprintf(f, "\\x%02x", c);
        else
            fputc(c, f);
    }
}

static void put_escaped(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '\n')
            fputs("\\n", f);
        else if (c == '\t')
            fputs("\\t", f);
        else if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            fprintf(f, "\\x%02x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

/* Prints the example as runs of masked / trained tokens. */
static void show_example(FILE *f, const Tokenizer *tok, const Example *e, int color) {
    int n_train = 0;
    for (int i = 0; i < e->n; i++)
        n_train += e->labels[i] != TEMPLATE_IGNORE;
    fprintf(f, "tokens: %d (train %d, masked %d)\n\n", e->n, n_train, e->n - n_train);
    /* the text, masked runs dimmed or in «» */
    for (int i = 0; i < e->n;) {
        int masked = e->labels[i] == TEMPLATE_IGNORE, j = i;
        while (j < e->n && (e->labels[j] == TEMPLATE_IGNORE) == masked)
            j++;
        char *s = tokenizer_decode(tok, e->ids + i, (size_t)(j - i), 0);
        if (masked) fputs(color ? "\033[2m" : "«", f);
        put_visible(f, s ? s : "");
        if (masked) fputs(color ? "\033[0m" : "»", f);
        free(s);
        i = j;
    }
    fputs("\n\nsegments:\n", f);
    for (int i = 0; i < e->n;) {
        int masked = e->labels[i] == TEMPLATE_IGNORE, j = i;
        while (j < e->n && (e->labels[j] == TEMPLATE_IGNORE) == masked)
            j++;
        char *s = tokenizer_decode(tok, e->ids + i, (size_t)(j - i), 0);
        fprintf(f, "  %-8s %4d tokens  ", masked ? "[masked]" : "[train]", j - i);
        put_escaped(f, s ? s : "");
        fputc('\n', f);
        free(s);
        i = j;
    }
}

/* The eos and stop words line of template t. */
static void show_stops(const Template *t, const Tokenizer *tok) {
    const char *const *sw;
    int nsw = template_stop_words(t, &sw);
    int eos = template_eos_id(t, tok);
    const char *eos_s = eos >= 0 ? tokenizer_token_str(tok, eos) : NULL;
    printf("eos: %s (%d)  stop words:", eos_s ? eos_s : "none", eos);
    for (int i = 0; i < nsw; i++)
        printf(" %s", sw[i]);
    printf("%s\n", nsw ? "" : " none");
}

/* Without --dataset: a built-in conversation (system, user, assistant) through the template. */
static int template_show_builtin(const char *tdir, const char *name, const char *model, int flags,
                                 int color) {
    Template *t = NULL;
    Tokenizer *tok = NULL;
    TunaErr err = {0};
    Example e = {0};
    size_t n = 0;
    int rc = 1;
    static const ChatMessage conv[] = {
            {"system", "You are a helpful assistant."},
            {"user", "What is the capital of France?"},
            {"assistant", "The capital of France is Paris."},
    };
    if (template_load(tdir, name, &t, &err)) goto fail;
    if (tokenizer_load(model, &tok, &err)) goto fail;
    if (template_encode_train(t, tok, conv, 3, 0, flags, &e.ids, &e.labels, &n, &err)) goto fail;
    e.n = (int)n;
    printf("template: %s  example: built-in (system, user, assistant; --dataset NAME shows a "
           "dataset's)  tokenizer: %s\n",
           template_name(t), model);
    show_stops(t, tok);
    show_example(stdout, tok, &e, color);
    rc = 0;
fail:
    if (rc) fprintf(stderr, "tuna template show: %s\n", err.msg);
    free(e.ids);
    free(e.labels);
    tokenizer_free(tok);
    template_free(t);
    return rc;
}

static int template_show(const char *tdir, const char *name, const DatasetOptions *base,
                         const char *model, int index, int color) {
    Template *t = NULL;
    Tokenizer *tok = NULL;
    Dataset *d = NULL;
    TunaErr err = {0};
    int rc = 1;
    if (!base->stage_pt && template_load(tdir, name, &t, &err)) goto fail;
    if (tokenizer_load(model, &tok, &err)) goto fail;
    DatasetOptions o = *base;
    o.max_samples = index + 1;
    if (dataset_load(&o, tok, t, &d, &err)) goto fail;
    if (d->n <= (size_t)index) { /* bad rows were skipped: read everything */
        dataset_free(d);
        d = NULL;
        o.max_samples = 0;
        if (dataset_load(&o, tok, t, &d, &err)) goto fail;
    }
    if (d->n <= (size_t)index) {
        tuna_errf(&err, TUNA_EINVAL, "--index %d: dataset \"%s\" has %zu examples", index,
                  base->names, d->n);
        goto fail;
    }
    printf("template: %s  dataset: %s  example: %d  tokenizer: %s\n", t ? template_name(t) : "(pt)",
           base->names, index, model);
    if (t) show_stops(t, tok);
    show_example(stdout, tok, &d->ex[index], color);
    if (d->n_skipped) {
        printf("\n%zu bad rows skipped in the rows read, e.g.\n", d->n_skipped);
        for (int i = 0; i < d->n_msgs; i++)
            printf("  %s\n", d->msgs[i]);
    }
    rc = 0;
fail:
    if (rc) fprintf(stderr, "tuna template show: %s\n", err.msg);
    dataset_free(d);
    tokenizer_free(tok);
    template_free(t);
    return rc;
}

/* `tuna template NAME --modelfile`: BOS/EOS text from the model's tokenizer (a folder or a
 * .gguf file). */
static int template_print_modelfile(const char *tdir, const char *name, const char *model,
                                    const char *from, const char *adapter) {
    Template *t = NULL;
    Tokenizer *tok = NULL;
    TunaErr err = {0};
    char *text = NULL;
    size_t ml = strlen(model);
    int gguf = ml > 5 && !strcmp(model + ml - 5, ".gguf");
    int rc = template_load(tdir, name, &t, &err);
    if (!rc)
        rc = gguf ? tokenizer_load_gguf_file(model, &tok, &err) : tokenizer_load(model, &tok, &err);
    if (!rc) {
        const char *bos = tokenizer_token_str(tok, tokenizer_bos_id(tok));
        const char *eos = tokenizer_token_str(tok, tokenizer_eos_id(tok));
        rc = modelfile_render(t, from, adapter, bos ? bos : "", eos ? eos : "", &text, &err);
    }
    if (!rc) fputs(text, stdout);
    if (rc) fprintf(stderr, "tuna template %s --modelfile: %s\n", name, err.msg);
    free(text);
    tokenizer_free(tok);
    template_free(t);
    return rc ? 1 : 0;
}

int cmd_template(int argc, char **argv) {
    struct option lo[sizeof tpl_opts / sizeof tpl_opts[0]];
    int nopt = 0;
    for (; tpl_opts[nopt].name; nopt++)
        lo[nopt] = (struct option){tpl_opts[nopt].name, tpl_opts[nopt].has_arg, NULL,
                                   tpl_opts[nopt].key};
    lo[nopt] = (struct option){0, 0, 0, 0};
    const char *tdir = "templates", *model = "models/stories260K";
    DatasetOptions o = {0};
    const char *mf_from = "model.gguf", *mf_adapter = NULL;
    int index = 0, color = isatty(STDOUT_FILENO), modelfile = 0;
    optind = 0; /* glibc: full re-initialisation, argv[0] is skipped */
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        char *end;
        switch (c) {
        case OPT_TDIR: tdir = optarg; break;
        case OPT_DATASET: o.names = optarg; break;
        case OPT_DDIR: o.dataset_dir = optarg; break;
        case OPT_MODEL: model = optarg; break;
        case OPT_VARS: o.vars = optarg; break;
        case OPT_MODELFILE: modelfile = 1; break;
        case OPT_FROM: mf_from = optarg; break;
        case OPT_ADAPTER: mf_adapter = optarg; break;
        case OPT_COLOR: color = 1; break;
        case OPT_NO_COLOR: color = 0; break;
        case OPT_INDEX:
        case OPT_CUTOFF: {
            errno = 0;
            long v = strtol(optarg, &end, 10);
            if (errno || *end || end == optarg || v < 0 || v > 1000000000) {
                fprintf(stderr,
                        "tuna template: --%s: expected a non-negative integer, got \"%s\"\n",
                        c == OPT_INDEX ? "index" : "cutoff-len", optarg);
                return 2;
            }
            if (c == OPT_INDEX)
                index = (int)v;
            else
                o.cutoff_len = (int)v;
            break;
        }
        case OPT_STAGE:
            if (!strcmp(optarg, "pt"))
                o.stage_pt = 1;
            else if (!strcmp(optarg, "sft"))
                o.stage_pt = 0;
            else {
                fprintf(stderr, "tuna template: --stage: expected sft or pt, got \"%s\"\n", optarg);
                return 2;
            }
            break;
        case OPT_TRAIN_ON_PROMPT: o.template_flags |= TEMPLATE_TRAIN_ON_PROMPT; break;
        case OPT_MASK_HISTORY: o.template_flags |= TEMPLATE_MASK_HISTORY; break;
        case OPT_HELP:
        case 'h': tpl_help(stdout); return 0;
        default:
            fprintf(stderr, "tuna template: unknown option \"%s\"\n", argv[optind - 1]);
            tpl_help(stderr);
            return 2;
        }
    }
    if (optind >= argc) {
        tpl_help(stderr);
        return 2;
    }
    char model_buf[2100];
    if (!strcmp(model, "models/stories260K")) /* the bundled default, also from elsewhere */
        model = bundled_path(model, model_buf, sizeof model_buf);
    const char *sub = argv[optind++];
    if (modelfile) {
        if (!strcmp(sub, "show") && optind < argc) sub = argv[optind++];
        if (optind < argc) {
            fprintf(stderr, "tuna template: unexpected argument \"%s\"\n", argv[optind]);
            return 2;
        }
        return template_print_modelfile(tdir, sub, model, mf_from, mf_adapter);
    }
    if (!strcmp(sub, "list")) {
        char **names = NULL;
        int n = 0;
        TunaErr err = {0};
        if (template_list(tdir, &names, &n, &err)) {
            fprintf(stderr, "tuna template list: %s\n", err.msg);
            return 1;
        }
        int rc = 0;
        for (int i = 0; i < n; i++) {
            Template *t = NULL;
            if (template_load(tdir, names[i], &t, &err)) {
                printf("%-12s  (bad: %s)\n", names[i], err.msg);
                rc = 1;
            } else {
                const char *desc = template_description(t), *sys = template_default_system(t);
                printf("%-10s  %s\n", names[i], *desc ? desc : "(no \"description\" in the file)");
                if (*sys)
                    printf("%-10s  default system prompt: %.50s%s\n", "", sys,
                           strlen(sys) > 50 ? "..." : "");
            }
            template_free(t);
        }
        template_list_free(names, n);
        return rc;
    }
    if (!strcmp(sub, "show")) {
        if (optind >= argc && !o.stage_pt) {
            fprintf(stderr, "tuna template show: missing template NAME\n");
            return 2;
        }
        if (!o.names && o.stage_pt) {
            fprintf(stderr, "tuna template show: --stage pt needs --dataset\n");
            return 2;
        }
        const char *name = optind < argc ? argv[optind++] : NULL;
        if (optind < argc) {
            fprintf(stderr, "tuna template show: unexpected argument \"%s\"\n", argv[optind]);
            return 2;
        }
        char auto_name[64];
        if (name && !strcmp(name, "auto")) {
            TemplateAuto a;
            TunaErr err = {0};
            if (template_auto(tdir, model, "vanilla", &a, &err)) {
                fprintf(stderr, "tuna template show auto: %s: %s\n", model, err.msg);
                return 1;
            }
            printf("auto: %s (%s)\n  %s\n\n", a.name,
                   a.matched              ? "matches the model's chat template"
                   : a.has_model_template ? "closest, NOT an exact match"
                                          : "fallback",
                   a.why);
            snprintf(auto_name, sizeof auto_name, "%s", a.name);
            name = auto_name;
        }
        if (!o.names) return template_show_builtin(tdir, name, model, o.template_flags, color);
        return template_show(tdir, name, &o, model, index, color);
    }
    fprintf(stderr, "tuna template: unknown subcommand \"%s\" (list, show)\n", sub);
    return 2;
}
