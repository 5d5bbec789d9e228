/* cmd_eval.c: `tuna eval`, a model (+ LoRA adapter) scored on a dataset, as one JSON object:
 *   eval_loss, perplexity  mean cross-entropy of the assistant tokens under teacher forcing (the
 *                          training loss, forward only), and its exp;
 *   eval_accuracy          per example the share of its assistant tokens that are the most
 *                          likely token there, averaged over the examples (LLaMA-Factory's
 *                          compute_accuracy; null where the backend cannot say);
 *   exact_match, bleu-4, rouge-l  greedy generations against the references (textmetrics.h).
 * With --stage rm, a reward model (a run of --stage rm: its value_head.safetensors) on a ranking
 * dataset: the pairwise accuracy (chosen scored above rejected), the Bradley-Terry loss and the
 * mean scores.
 * The prompt and reference of an example come from its encoded ids: the prompt is everything
 * before its last trained (assistant) span, the reference is that span decoded without special
 * tokens and cut at the template's stop words. For single-turn data that is exactly the
 * conversation up to the answer; for multi-turn data the earlier answers are part of the prompt.
 * Runs on the calling thread. */
#include "cli.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../dataset.h"
#include "../evalloss.h"
#include "../generate.h"
#include "../model_train.h"
#include "../textmetrics.h"
#include "../value_head.h"
#include "../xalloc.h"

enum {
    OPT_MODEL = 256,
    OPT_ADAPTER,
    OPT_DATASET,
    OPT_DDIR,
    OPT_TEMPLATE,
    OPT_TDIR,
    OPT_MAXS,
    OPT_CUTOFF,
    OPT_PADTO,
    OPT_BATCH,
    OPT_MAXNEW,
    OPT_VARS,
    OPT_NOGEN,
    OPT_STAGE,
    OPT_OUTPUT,
    OPT_THREADS,
    OPT_BACKEND,
    OPT_QUIET,
    OPT_HELP
};

static const CliOpt eval_opts[] = {
        {"model", 1, OPT_MODEL, "DIR",
         "Hugging Face checkpoint folder, or a run folder (a LoRA run: its base model and "
         "adapter) (required)"},
        {"adapter", 1, OPT_ADAPTER, "DIR", "merge this PEFT LoRA adapter (e.g. a run folder)"},
        {"dataset", 1, OPT_DATASET, "NAMES", "dataset_info.json keys, comma-separated (required)"},
        {"dataset-dir", 1, OPT_DDIR, "DIR", "folder with dataset_info.json (default datasets)"},
        {"template", 1, OPT_TEMPLATE, "NAME",
         "chat template, or auto (default: the run's, else auto: the built-in matching the model's "
         "own)"},
        {"templates-dir", 1, OPT_TDIR, "DIR", "where templates live (default templates)"},
        {"max-samples", 1, OPT_MAXS, "N", "rows read per dataset (default 0 = all)"},
        {"cutoff-len", 1, OPT_CUTOFF, "N", "truncate examples to N tokens (default 512)"},
        {"pad-to", 1, OPT_PADTO, "HOW",
         "batch (default): each batch padded to its own longest example (rounded up to 8); max: "
         "every batch to the longest example of the data (the same loss, more work)"},
        {"batch-size", 1, OPT_BATCH, "N",
         "rows per forward pass for the loss, and answers generated together (default 8; up "
         "to 16 answer as one at a time would on the cpu backend)"},
        {"max-new-tokens", 1, OPT_MAXNEW, "N", "longest generated answer (default 64)"},
        {"vars", 1, OPT_VARS, "K=V,...", "fill {{K}} placeholders in the data"},
        {"no-generate", 0, OPT_NOGEN, NULL, "loss and perplexity only (metrics are null)"},
        {"stage", 1, OPT_STAGE, "STAGE",
         "sft (default) or rm: a reward model's pairwise accuracy on a ranking dataset (its "
         "value_head.safetensors beside the adapter or model)"},
        {"output", 1, OPT_OUTPUT, "FILE", "also write the JSON to FILE"},
        {"threads", 1, OPT_THREADS, "N",
         "CPU threads (default: the cores not busy with other work)"},
        {"backend", 1, OPT_BACKEND, "NAME", "cpu (default), ref or cuda"},
        {"quiet", 0, OPT_QUIET, NULL, "no progress or summary on stderr"},
        CLI_PRECISION_OPTS,
        CLI_CACHE_OPTS,
        {"help", 0, OPT_HELP, NULL, "show this help"},
        {NULL, 0, 0, NULL, NULL},
};

// --- loss

static void loss_progress(void *ctx, size_t done, size_t total) {
    (void)ctx;
    fprintf(stderr, "\reval: loss %zu/%zu", done, total);
}

/* Mean token cross-entropy over d (evalloss_run): rows of B examples, T = the longest example
 * (at most cutoff); pad_multiple > 0 pads each batch only to its longest row. */
static int eval_loss(Model *m, const Dataset *d, int batch_size, int cutoff, int pad_multiple,
                     int progress, double *loss, long *n_tokens, double *acc, TunaErr *err) {
    int maxlen = 2;
    for (size_t i = 0; i < d->n; i++)
        maxlen = d->ex[i].n > maxlen ? d->ex[i].n : maxlen;
    int T = maxlen < cutoff ? maxlen : cutoff;
    int B = (size_t)batch_size < d->n ? batch_size : (int)d->n;
    TrainSetup setup = {.method = METHOD_NONE};
    TrainState *ts = NULL;
    int rc = train_state_init(m, &setup, B, T, &ts, err);
    if (rc) return rc;
    rc = evalloss_run(ts, d, B, T, pad_multiple, progress ? loss_progress : NULL, NULL, loss,
                      n_tokens, acc, err);
    if (progress) fputc('\n', stderr);
    train_state_free(ts);
    return rc;
}

// --- generation metrics

typedef struct Sample {
    char *prompt, *reference, *prediction;
} Sample;

/* Decodes ids without special tokens, cuts at the first stop string, trims whitespace. */
static char *decode_answer(const Tokenizer *tok, const int32_t *ids, size_t n, const StopSet *st) {
    char *s = tokenizer_decode(tok, ids, n, 1);
    stopset_cut(s, st);
    size_t b = 0, e = strlen(s);
    while (b < e && strchr(" \t\r\n", s[b]))
        b++;
    while (e > b && strchr(" \t\r\n", s[e - 1]))
        e--;
    memmove(s, s + b, e - b);
    s[e - b] = '\0';
    return s;
}

/* Greedy answers of examples [0, n) (n <= 64), decoded together (generate_batch): prompt =
 * the ids before the last trained span. On the cpu backend a batch of up to 16 gives each
 * example the answer it gets alone. */
static int eval_examples(Model *m, const Tokenizer *tok, const Example *ex, int n,
                         const StopSet *st, int max_new, Sampler *s, Sample *out, TunaErr *err) {
    const int32_t *prompts[64];
    size_t n_prompts[64];
    int which[64], k = 0;
    int32_t bos = m->cfg.bos_id >= 0 ? m->cfg.bos_id : tokenizer_bos_id(tok);
    for (int i = 0; i < n; i++) {
        int e = ex[i].n;
        while (e > 0 && ex[i].labels[e - 1] == TEMPLATE_IGNORE)
            e--;
        int b = e;
        while (b > 0 && ex[i].labels[b - 1] != TEMPLATE_IGNORE)
            b--;
        out[i].reference = decode_answer(tok, ex[i].ids + b, (size_t)(e - b), st);
        out[i].prompt = tokenizer_decode(tok, ex[i].ids, (size_t)b, 1);
        if (!b && bos < 0) { /* nothing before the answer and no BOS to start from */
            out[i].prediction = xstrdup("");
            continue;
        }
        /* nothing before the answer: start from BOS as generate does */
        prompts[k] = b ? ex[i].ids : &bos;
        n_prompts[k] = b ? (size_t)b : 1;
        which[k++] = i;
    }
    if (!k) return 0;
    GenerateOptions opt = {.max_new_tokens = max_new};
    stopset_apply(st, &opt);
    GenerateResult res[64];
    int rc = generate_batch(m, tok, s, prompts, n_prompts, k, &opt, res, err);
    for (int j = 0; j < k; j++) {
        if (!rc) out[which[j]].prediction = decode_answer(tok, res[j].ids, res[j].n_ids, st);
        generate_result_free(&res[j]);
    }
    return rc;
}

// --- report

static int write_text(const char *path, const char *text, TunaErr *err) {
    FILE *f = fopen(path, "w");
    if (!f) return tuna_errf(err, TUNA_EIO, "%s: cannot write: %s", path, strerror(errno));
    int ok = fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    ok &= fclose(f) == 0;
    return ok ? 0 : tuna_errf(err, TUNA_EIO, "%s: cannot write", path);
}

static void add_num_or_null(cJSON *o, const char *key, int have, double v) {
    if (have && isfinite(v))
        cJSON_AddNumberToObject(o, key, v);
    else
        cJSON_AddNullToObject(o, key);
}

/* What `tuna eval` was asked. */
typedef struct EvalArgs {
    const char *model, *adapter, *dataset, *ddir, *tname, *tdir, *vars, *output, *backend;
    int max_samples, cutoff, batch, max_new, nogen, quiet, pad_multiple, threads, rm;
    CliPrecision prec;
} EvalArgs;

static const char eval_usage[] =
        "usage: tuna eval --model DIR --dataset NAMES [options]\n"
        "Scores a model (and adapter) on a dataset: loss and perplexity on the "
        "answers, and exact match,\nBLEU-4 and ROUGE-L (as LLaMA-Factory reports "
        "them) of greedy answers. Prints one JSON object.";

/* Fills a from the command line: -1 to go on, else the exit code (0 after --help). */
static int eval_parse(int argc, char **argv, EvalArgs *a) {
    *a = (EvalArgs){.ddir = "datasets",
                    .backend = "cpu",
                    .cutoff = 512,
                    .batch = 8,
                    .max_new = 64,
                    .pad_multiple = 8, /* --pad-to batch */
                    .threads = BACKEND_THREADS_IDLE,
                    .prec = CLI_PRECISION_INIT};
    struct option lo[CLI_MAX_OPTS];
    cli_longopts(eval_opts, lo);
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, CLI_OPTSTRING, lo, NULL)) != -1) {
        switch (c) {
        case OPT_MODEL: a->model = optarg; break;
        case OPT_ADAPTER: a->adapter = optarg; break;
        case OPT_DATASET: a->dataset = optarg; break;
        case OPT_DDIR: a->ddir = optarg; break;
        case OPT_TEMPLATE: a->tname = optarg; break;
        case OPT_TDIR: a->tdir = optarg; break;
        case OPT_MAXS:
            if (cli_parse_int(optarg, "max-samples", 0, 1 << 30, &a->max_samples)) return 2;
            break;
        case OPT_CUTOFF:
            if (cli_parse_int(optarg, "cutoff-len", 2, 1 << 24, &a->cutoff)) return 2;
            break;
        case OPT_PADTO:
            if (strcmp(optarg, "batch") && strcmp(optarg, "max")) {
                fprintf(stderr, "tuna eval: --pad-to: must be batch or max, got \"%s\"\n", optarg);
                return 2;
            }
            a->pad_multiple = !strcmp(optarg, "batch") ? 8 : 0;
            break;
        case OPT_BATCH:
            if (cli_parse_int(optarg, "batch-size", 1, 4096, &a->batch)) return 2;
            break;
        case OPT_MAXNEW:
            if (cli_parse_int(optarg, "max-new-tokens", 1, 1 << 24, &a->max_new)) return 2;
            break;
        case OPT_VARS: a->vars = optarg; break;
        case OPT_NOGEN: a->nogen = 1; break;
        case OPT_STAGE:
            if (strcmp(optarg, "sft") && strcmp(optarg, "rm")) {
                fprintf(stderr, "tuna eval: --stage: must be sft or rm, got \"%s\"\n", optarg);
                return 2;
            }
            a->rm = !strcmp(optarg, "rm");
            break;
        case OPT_OUTPUT: a->output = optarg; break;
        case OPT_THREADS:
            if (cli_parse_int(optarg, "threads", 1, 1024, &a->threads)) return 2;
            break;
        case OPT_BACKEND: a->backend = optarg; break;
        case OPT_QUIET: a->quiet = 1; break;
        case OPT_HELP: cli_help(stdout, eval_usage, eval_opts); return 0;
        default: {
            int pc = cli_precision_opt(c, optarg, &a->prec);
            if (pc > 0) break;
            if (!pc) cli_bad_option("eval", c, argv);
            return 2;
        }
        }
    }
    opterr = 1;
    if (optind < argc) {
        fprintf(stderr, "tuna eval: unexpected argument \"%s\" (see --help)\n", argv[optind]);
        return 2;
    }
    if (!a->model || !a->dataset) {
        fprintf(stderr, "tuna eval: --model and --dataset are required (see --help)\n");
        return 2;
    }
    return -1;
}

/* Greedy answers to every example, batch by batch, into samples[0..d->n) (*n_gen: how many
 * are filled, also after an error), and their mean exact match, BLEU-4 and ROUGE-L. */
static int eval_generate(Model *m, const Tokenizer *tok, const Template *tpl, const Dataset *d,
                         const EvalArgs *a, int progress, Sampler *s, Sample *samples,
                         size_t *n_gen, double score[3], TunaErr *err) {
    StopSet st;
    stopset_init(&st, m, tok, tpl);
    sampler_init(s, m->cfg.V, 0, 0, 0, 1, 1); /* greedy */
    int gb = a->batch < 64 ? a->batch : 64;   /* sequences decoded together */
    score[0] = score[1] = score[2] = 0;
    for (size_t i0 = 0; i0 < d->n; i0 += (size_t)gb) {
        int nb = d->n - i0 < (size_t)gb ? (int)(d->n - i0) : gb;
        *n_gen = i0 + (size_t)nb; /* what samples[] holds, for the report and free */
        if (eval_examples(m, tok, &d->ex[i0], nb, &st, a->max_new, s, &samples[i0], err)) return -1;
        for (size_t i = i0; i < *n_gen; i++) {
            score[0] += textmetrics_exact_match(samples[i].prediction, samples[i].reference);
            score[1] += textmetrics_bleu4(samples[i].prediction, samples[i].reference);
            score[2] += textmetrics_rouge_l(samples[i].prediction, samples[i].reference);
        }
        if (progress) fprintf(stderr, "\reval: generating %zu/%zu", *n_gen, d->n);
    }
    if (progress) fputc('\n', stderr);
    for (int i = 0; i < 3; i++)
        score[i] /= (double)d->n;
    return 0;
}

/* root.precision: how the numbers were computed: the base as loaded (an adapter run's own
 * precision unless options said otherwise), the products, the KV cache */
static void add_precision(cJSON *root, const ModelPrecision *p, WType kv) {
    cJSON *pr = cJSON_AddObjectToObject(root, "precision");
    cJSON_AddNumberToObject(pr, "quantization_bit", p->bits);
    if (p->bits == 4)
        cJSON_AddStringToObject(pr, "quantization_type", p->qtype);
    else
        cJSON_AddNullToObject(pr, "quantization_type");
    cJSON_AddBoolToObject(pr, "double_quantization", p->bits == 4 && p->double_quant);
    cJSON_AddStringToObject(pr, "dtype", p->dtype);
    cJSON_AddBoolToObject(pr, "bf16", p->bf16);
    cJSON_AddStringToObject(pr, "cache_type", kv_type_name(kv));
}

/* The JSON report (caller deletes): loss, perplexity, scores (null without generation), what
 * was scored, and the first three samples. */
static cJSON *eval_report(const EvalArgs *a, const Dataset *d, double loss, double acc,
                          long n_tokens, const double score[3], const Sample *samples, size_t n_gen,
                          const ModelPrecision *p, WType kv) {
    cJSON *root = cJSON_CreateObject();
    add_num_or_null(root, "eval_loss", 1, loss);
    add_num_or_null(root, "perplexity", 1, exp(loss));
    add_num_or_null(root, "eval_accuracy", isfinite(acc), acc);
    cJSON_AddNumberToObject(root, "n_samples", (double)d->n);
    cJSON_AddNumberToObject(root, "n_tokens", (double)n_tokens);
    add_num_or_null(root, "exact_match", !a->nogen, score[0]);
    add_num_or_null(root, "bleu-4", !a->nogen, score[1]);
    add_num_or_null(root, "rouge-l", !a->nogen, score[2]);
    cJSON_AddStringToObject(root, "model", a->model);
    if (a->adapter)
        cJSON_AddStringToObject(root, "adapter", a->adapter);
    else
        cJSON_AddNullToObject(root, "adapter");
    cJSON_AddStringToObject(root, "dataset", a->dataset);
    cJSON_AddStringToObject(root, "template", a->tname);
    add_precision(root, p, kv);
    cJSON *arr = cJSON_AddArrayToObject(root, "samples");
    for (size_t i = 0; i < n_gen && i < 3; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "prompt", samples[i].prompt);
        cJSON_AddStringToObject(o, "reference", samples[i].reference);
        cJSON_AddStringToObject(o, "prediction", samples[i].prediction);
        cJSON_AddItemToArray(arr, o);
    }
    return root;
}

/* --stage rm: the pairs of d through the model and the value head in vdir, forward only. */
static int eval_rm(Model *m, Backend *be, const Dataset *d, const EvalArgs *a, const char *vdir,
                   RmSums *s, TunaErr *err) {
    int maxlen = 2;
    for (size_t i = 0; i < d->n; i++)
        maxlen = d->ex[i].n > maxlen ? d->ex[i].n : maxlen;
    int T = maxlen < a->cutoff ? maxlen : a->cutoff, B = a->batch, rc;
    ValueHead vh = {0};
    TrainState *ts = NULL;
    Batcher b;
    /* the training forward scores the pairs: it sees merged LoRA weights, not an adapter kept
     * unmerged (a quantized base) or a P-tuning prefix */
    if (m->prefix_len || m->lora)
        return tuna_errf(err, TUNA_EUNSUP,
                         "--stage rm: not for a %s yet (a LoRA or full reward model on an "
                         "unquantized base)",
                         m->prefix_len ? "P-tuning run" : "LoRA run on a quantized base");
    if ((rc = vhead_init(&vh, be, m->cfg.C, 0, err))) return rc;
    if ((rc = vhead_load(&vh, vdir, err))) goto out;
    TrainSetup none = {.method = METHOD_NONE};
    if ((rc = train_state_init(m, &none, 2 * B, T, &ts, err))) goto out;
    if ((rc = batcher_init(&b, d, B, T, 0, 0, err))) goto out;
    b.pad_multiple = a->pad_multiple;
    int *last = xmalloc(sizeof(int) * 2 * (size_t)B);
    RmBatch rb = {.vh = &vh, .pairs = B, .last = last};
    size_t nb = batcher_batches_per_epoch(&b);
    for (size_t i = 0; i < nb && !rc; i++) {
        Batch bt;
        batcher_next(&b, &bt);
        rm_last_positions(bt.targets, bt.B, bt.T, last);
        rc = train_set_seq_len(ts, bt.T, err);
        if (!rc) rc = train_step_hidden(ts, bt.ids, bt.B, rm_hidden, &rb, 0, err);
    }
    *s = rb.sums;
    free(last);
    batcher_free(&b);
out:
    train_state_free(ts);
    vhead_free(&vh);
    return rc;
}

int cmd_eval(int argc, char **argv) {
    EvalArgs a;
    int prc = eval_parse(argc, argv, &a);
    if (prc >= 0) return prc;
    if (!cli_model_path_ok("eval", "--model", a.model)) return 1;
    char base[4096];
    if (!a.adapter && model_is_adapter_run(a.model)) { /* a LoRA run: its base, then its adapter */
        TunaErr e = {0};
        if (model_run_base(a.model, base, sizeof base, &e)) {
            fprintf(stderr, "tuna: %s\n", e.msg);
            return 1;
        }
        a.adapter = a.model;
        a.model = base;
    }
    char tname_buf[256], tdir_buf[4096];
    int run_tpl = cli_default_template(a.model, a.adapter, &a.tname, &a.tdir, tname_buf,
                                       sizeof tname_buf, tdir_buf, sizeof tdir_buf);
    int progress = !a.quiet && isatty(STDERR_FILENO);
    TunaErr err = {0};
    int rc = 1;
    Backend *be = NULL;
    Model *m = NULL;
    Tokenizer *tok = NULL;
    Template *tpl = NULL;
    Dataset *d = NULL;
    Sample *samples = NULL;
    Sampler s = {0};
    cJSON *root = NULL;
    char *json = NULL;
    size_t n_gen = 0;
    double t0 = time_now();
    if (template_load(a.tdir, a.tname, &tpl, &err)) goto fail;
    char run_sys[1024]; /* the run's default_system, where the template is the run's */
    if (run_tpl && cli_run_system(a.model, a.adapter, run_sys, sizeof run_sys))
        template_set_default_system(tpl, run_sys);
    ModelPrecision used;
    if (cli_load_model_used(a.model, a.adapter, a.backend, a.threads, &a.prec, &be, &m, &tok, &used,
                            &err))
        goto fail;
    DatasetOptions dopt = {.names = a.dataset,
                           .dataset_dir = a.ddir,
                           .vars = a.vars,
                           .cutoff_len = a.cutoff,
                           .max_samples = a.max_samples,
                           .ranking = a.rm};
    if (dataset_load(&dopt, tok, tpl, &d, &err)) goto fail;
    if (a.rm) { /* a reward model: pairwise accuracy */
        RmSums rs = {0};
        if (d->n == 0) {
            tuna_errf(&err, TUNA_EINVAL, "%s: no pairs to score", a.dataset);
            goto fail;
        }
        if (eval_rm(m, be, d, &a, a.adapter ? a.adapter : a.model, &rs, &err)) goto fail;
        double n = rs.n ? rs.n : 1;
        root = cJSON_CreateObject();
        cJSON_AddStringToObject(root, "stage", "rm");
        cJSON_AddNumberToObject(root, "accuracy", rs.accuracy / n);
        cJSON_AddNumberToObject(root, "eval_loss", rs.loss / n);
        cJSON_AddNumberToObject(root, "rewards/chosen", rs.chosen / n);
        cJSON_AddNumberToObject(root, "rewards/rejected", rs.rejected / n);
        cJSON_AddNumberToObject(root, "n_pairs", rs.n);
        add_precision(root, &used, m->kv_type);
        cJSON_AddStringToObject(root, "model", a.model);
        if (a.adapter)
            cJSON_AddStringToObject(root, "adapter", a.adapter);
        else
            cJSON_AddNullToObject(root, "adapter");
        cJSON_AddStringToObject(root, "dataset", a.dataset);
        json = cJSON_Print(root);
        if (a.output && write_text(a.output, json, &err)) goto fail;
        puts(json);
        fflush(stdout);
        if (!a.quiet)
            fprintf(stderr, "eval: %d pairs, accuracy %.4f, loss %.4f (%.1f s)\n", rs.n,
                    rs.accuracy / n, rs.loss / n, time_now() - t0);
        rc = 0;
        goto fail;
    }
    if (d->n_skipped && !a.quiet)
        fprintf(stderr, "eval: skipped %zu bad rows (first: %s)\n", d->n_skipped,
                d->n_msgs ? d->msgs[0] : "?");
    if (d->n == 0) {
        tuna_errf(&err, TUNA_EINVAL, "%s: no examples with an answer to score", a.dataset);
        goto fail;
    }

    double loss, acc;
    long n_tokens;
    if (eval_loss(m, d, a.batch, a.cutoff, a.pad_multiple, progress, &loss, &n_tokens, &acc, &err))
        goto fail;
    double t_loss = time_now();

    double score[3] = {0, 0, 0}; /* exact match, BLEU-4, ROUGE-L */
    if (!a.nogen) {
        samples = xcalloc(d->n, sizeof(Sample));
        if (eval_generate(m, tok, tpl, d, &a, progress, &s, samples, &n_gen, score, &err))
            goto fail;
    }
    root = eval_report(&a, d, loss, acc, n_tokens, score, samples, n_gen, &used, m->kv_type);
    json = cJSON_Print(root);
    if (a.output && write_text(a.output, json, &err)) goto fail;
    puts(json);
    fflush(stdout);
    if (!a.quiet && a.nogen)
        fprintf(stderr, "eval: %zu samples, %ld answer tokens, loss %.4f (%.1f s)\n", d->n,
                n_tokens, loss, t_loss - t0);
    else if (!a.quiet)
        fprintf(stderr,
                "eval: %zu samples, %ld answer tokens, loss %.4f (%.1f s), exact match "
                "%.3f, generation %.1f s\n",
                d->n, n_tokens, loss, t_loss - t0, score[0], time_now() - t_loss);
    rc = 0;
fail:
    if (rc) fprintf(stderr, "tuna: %s\n", err.msg[0] ? err.msg : "eval failed");
    for (size_t i = 0; samples && i < d->n; i++) { /* xcalloc'd: unfilled entries are NULL */
        free(samples[i].prompt);
        free(samples[i].reference);
        free(samples[i].prediction);
    }
    free(samples);
    free(json);
    cJSON_Delete(root);
    if (s.probs) sampler_free(&s);
    dataset_free(d);
    template_free(tpl);
    tokenizer_free(tok);
    model_free(m);
    backend_free(be);
    return rc;
}
