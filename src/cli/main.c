/* main.c: the `tuna` command line. Subcommands parse their options with getopt_long from
 * one table each (the --help text is generated from it) and call the engine. This file and
 * ui/app.c are the only places the process may exit. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../kernels/backend.h"
#include "../../kernels/cpu/cpu_backend.h"
#include "../../ui/ui.h"
#include "../config.h"
#include "../err.h"
#include "../generate.h"
#include "../lf_config.h"
#include "../model.h"
#include "../template.h"
#include "../tokenizer.h"
#include "../train.h"
#include "../xalloc.h"
#include "cli.h"

// --- tuna generate

enum {
    OPT_PROMPT = 256,
    OPT_MAXNEW,
    OPT_TEMP,
    OPT_TOPK,
    OPT_TOPP,
    OPT_REP,
    OPT_SEED,
    OPT_STOP,
    OPT_IGNORE_EOS,
    OPT_THREADS,
    OPT_BACKEND,
    OPT_JSON,
    OPT_NO_ECHO,
    OPT_QUIET,
    OPT_HELP,
    OPT_PROMPT_FILE,
    OPT_LOOKUP,
    OPT_LOGPROBS
};

/* One row per flag: getopt_long and --help are built from it (src/cli/cli.h). */
static const CliOpt generate_opts[] = {
        {"prompt", 1, OPT_PROMPT, "TEXT", "prompt text (default: empty, i.e. just BOS)"},
        {"prompt-file", 1, OPT_PROMPT_FILE, "FILE", "read the prompt from FILE"},
        {"max-new-tokens", 1, OPT_MAXNEW, "N", "tokens to generate (default 256)"},
        {"temperature", 1, OPT_TEMP, "T", "0 = greedy; default from generation_config.json"},
        {"top-k", 1, OPT_TOPK, "K", "keep the K most likely tokens (0 = off)"},
        {"top-p", 1, OPT_TOPP, "P", "nucleus sampling mass (1 = off)"},
        {"repetition-penalty", 1, OPT_REP, "R", "HF repetition penalty (1 = off)"},
        {"seed", 1, OPT_SEED, "N", "sampling seed (default 42)"},
        {"stop", 1, OPT_STOP, "TEXT", "stop when TEXT appears (repeatable)"},
        {"ignore-eos", 0, OPT_IGNORE_EOS, NULL, "do not stop at the model's EOS tokens"},
        {"lookup", 1, OPT_LOOKUP, "N",
         "greedy only: check up to N tokens copied from earlier in the text per pass "
         "(prompt lookup; same output, fewer passes; 0 = off, the default; at most 15)"},
        {"threads", 1, OPT_THREADS, "N",
         "CPU threads (default: the cores not busy with other work)"},
        {"backend", 1, OPT_BACKEND, "NAME", "cpu (default), ref or cuda"},
        {"json", 0, OPT_JSON, NULL, "print one JSON object (ids, text, timing) instead of text"},
        {"logprobs", 1, OPT_LOGPROBS, "N",
         "with --json: each sampled token's log-probability and the N most likely (at most 20) "
         "under the model's own distribution (before temperature, penalty, top-k/p)"},
        {"no-echo", 0, OPT_NO_ECHO, NULL, "do not print the prompt before the continuation"},
        {"quiet", 0, OPT_QUIET, NULL, "no timing line on stderr"},
        CLI_PRECISION_OPTS,
        CLI_CACHE_OPTS,
        {"help", 0, OPT_HELP, NULL, "show this help"},
        {NULL, 0, 0, NULL, NULL},
};

static int print_piece(void *user, const char *text, size_t len) {
    (void)user;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0;
}

static void json_ids(FILE *f, const int32_t *ids, size_t n) {
    fputc('[', f);
    for (size_t i = 0; i < n; i++)
        fprintf(f, "%s%d", i ? ", " : "", ids[i]);
    fputc(']', f);
}

static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c == '\n')
            fputs("\\n", f);
        else if (c == '\t')
            fputs("\\t", f);
        else if (c == '\r')
            fputs("\\r", f);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

/* What `tuna generate` was asked for. */
typedef struct GenArgs {
    const char *prompt, *backend, *prompt_file, *dir;
    const char *stops[16];
    int n_stops, max_new, top_k, threads, ignore_eos;
    int json, echo, lookup, logprobs;
    int quiet, seed, sampling_asked;
    float temp, top_p, rep;
    CliPrecision prec;
} GenArgs;

/* Reads the options into a. Returns -1 to go on, else the exit code (--help, a bad option). */
static int generate_parse(int argc, char **argv, GenArgs *a) {
    const char *usage = "usage: tuna generate MODEL_DIR [options]\n"
                        "Generates text from a Hugging Face checkpoint (config.json, "
                        "model.safetensors, tokenizer.json),\nor from a run folder (a LoRA run "
                        "loads its base model and merges its adapter).";
    struct option lo[CLI_MAX_OPTS];
    cli_longopts(generate_opts, lo);
    *a = (GenArgs){.prompt = "",
                   .backend = "cpu",
                   .max_new = 256,
                   .top_k = -1,
                   .threads = BACKEND_THREADS_IDLE,
                   .echo = 1,
                   .seed = 42,
                   .temp = -1,
                   .top_p = -1,
                   .rep = -1,
                   .prec = CLI_PRECISION_INIT};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case OPT_PROMPT: a->prompt = optarg; break;
        case OPT_PROMPT_FILE: a->prompt_file = optarg; break;
        case OPT_MAXNEW:
            if (cli_parse_int(optarg, "max-new-tokens", 0, 1 << 24, &a->max_new)) return 2;
            break;
        case OPT_TEMP:
            if (cli_parse_float(optarg, "temperature", 0, 100, &a->temp)) return 2;
            break;
        case OPT_TOPK:
            if (cli_parse_int(optarg, "top-k", 0, 1 << 24, &a->top_k)) return 2;
            a->sampling_asked = 1;
            break;
        case OPT_TOPP:
            if (cli_parse_float(optarg, "top-p", 0, 1, &a->top_p)) return 2;
            a->sampling_asked = 1;
            break;
        case OPT_REP:
            if (cli_parse_float(optarg, "repetition-penalty", 0.01f, 100, &a->rep)) return 2;
            break;
        case OPT_SEED:
            if (cli_parse_int(optarg, "seed", 0, 2147483647, &a->seed)) return 2;
            a->sampling_asked = 1;
            break;
        case OPT_STOP:
            if (a->n_stops == 16) {
                fprintf(stderr, "tuna: --stop: at most 16 stop strings\n");
                return 2;
            }
            a->stops[a->n_stops++] = optarg;
            break;
        case OPT_IGNORE_EOS: a->ignore_eos = 1; break;
        case OPT_LOOKUP:
            if (cli_parse_int(optarg, "lookup", 0, LOOKUP_MAX, &a->lookup)) return 2;
            break;
        case OPT_THREADS:
            if (cli_parse_int(optarg, "threads", 1, 1024, &a->threads)) return 2;
            break;
        case OPT_BACKEND: a->backend = optarg; break;
        case OPT_JSON: a->json = 1; break;
        case OPT_LOGPROBS:
            if (cli_parse_int(optarg, "logprobs", 1, GEN_LOGPROBS_MAX, &a->logprobs)) return 2;
            break;
        case OPT_NO_ECHO: a->echo = 0; break;
        case OPT_QUIET: a->quiet = 1; break;
        case OPT_HELP: cli_help(stdout, usage, generate_opts); return 0;
        default: {
            int pc = cli_precision_opt(c, optarg, &a->prec);
            if (pc > 0) break;
            if (!pc) fprintf(stderr, "tuna generate: see --help\n");
            return 2;
        }
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "tuna generate: expected one MODEL_DIR (see --help)\n");
        return 2;
    }
    if (a->logprobs && !a->json) {
        fprintf(stderr, "tuna generate: --logprobs prints in the JSON object: add --json\n");
        return 2;
    }
    a->dir = argv[optind];
    return -1;
}

/* The prompt's ids; an empty one without a BOS in the tokenizer's template starts from BOS/EOS. */
static int generate_prompt_ids(const Model *m, const Tokenizer *tok, const char *prompt,
                               int32_t **ids, size_t *n_ids, TunaErr *err) {
    if (tokenizer_encode(tok, prompt, strlen(prompt), 1, ids, n_ids, err)) return 1;
    if (*n_ids == 0) {
        int start = m->cfg.bos_id >= 0 ? m->cfg.bos_id : tokenizer_bos_id(tok);
        if (start < 0) start = m->cfg.n_eos ? m->cfg.eos_ids[0] : tokenizer_eos_id(tok);
        if (start < 0)
            return tuna_errf(err, TUNA_EINVAL, "empty prompt and the model has no BOS token");
        free(*ids);
        *ids = xmalloc(sizeof(int32_t));
        (*ids)[0] = start;
        *n_ids = 1;
    }
    const ModelConfig *cfg = &m->cfg;
    if (cfg->max_pos > 0 && (long)*n_ids + m->prefix_len > cfg->max_pos) /* before the echo */
        return tuna_errf(err, TUNA_EINVAL, "prompt of %zu tokens exceeds the model's context (%d)",
                         *n_ids, cfg->max_pos - m->prefix_len);
    return 0;
}

/* The JSON object (--json) or the closing newline, then the timing line on stderr. */
static void generate_report(const GenArgs *a, const Model *m, const Backend *be, const int32_t *ids,
                            size_t n_ids, const GenerateResult *res, int sample) {
    double tps = res->n_ids > 1 && res->decode_s > 0 ? (double)(res->n_ids - 1) / res->decode_s : 0;
    if (a->json) {
        printf("{\"prompt_ids\": ");
        json_ids(stdout, ids, n_ids);
        printf(", \"ids\": ");
        json_ids(stdout, res->ids, res->n_ids);
        printf(", \"text\": ");
        json_str(stdout, res->text);
        static const char *why[] = {"max_new_tokens", "eos", "stop_string", "callback",
                                    "context_full"};
        printf(", \"stopped_by\": \"%s\", \"tokens_per_s\": %.1f, \"prefill_s\": %.6f, "
               "\"threads\": %d, \"kv_cache\": {\"type\": \"%s\", \"positions\": %d, "
               "\"bytes\": %zu}",
               why[res->stopped_by], tps, res->prefill_s, be->n_threads, kv_type_name(m->kv_type),
               m->cache_T, model_kv_bytes(m));
        if (a->lookup && !sample)
            printf(", \"lookup_drafted\": %zu, \"lookup_kept\": %zu", res->n_drafted,
                   res->n_accepted);
        if (a->logprobs) {
            printf(", \"logprobs\": [");
            for (size_t i = 0; i < res->n_lp; i++) {
                const GenLogprob *e = &res->lp[i];
                printf("%s{\"id\": %d, \"logprob\": %.9g, \"top\": [", i ? ", " : "", e->id,
                       (double)e->logprob);
                for (int j = 0; j < e->n; j++)
                    printf("%s[%d, %.9g]", j ? ", " : "", e->top_id[j], (double)e->top_logprob[j]);
                printf("]}");
            }
            printf("]");
        }
        printf("}\n");
    } else {
        fputc('\n', stdout);
    }
    fflush(stdout);
    if (!a->quiet) {
        fprintf(stderr,
                "generate: prompt %zu tokens, generated %zu tokens in %.3f s, %.1f tok/s, "
                "%d thread%s, KV cache %s %.1f MiB",
                n_ids, res->n_ids, res->prefill_s + res->decode_s, tps, be->n_threads,
                be->n_threads == 1 ? "" : "s", kv_type_name(m->kv_type),
                (double)model_kv_bytes(m) / (1 << 20));
        if (a->lookup && !sample)
            fprintf(stderr, ", lookup kept %zu of %zu drafted", res->n_accepted, res->n_drafted);
        fputc('\n', stderr);
    }
    if (res->stopped_by == 4)
        fprintf(stderr,
                "tuna generate: stopped at the model's context of %d tokens "
                "(max_position_embeddings) after %zu new tokens\n",
                m->cfg.max_pos, res->n_ids);
}

static int cmd_generate(int argc, char **argv) {
    GenArgs a;
    int prc = generate_parse(argc, argv, &a);
    if (prc >= 0) return prc;
    if (!cli_model_path_ok("generate", NULL, a.dir)) return 1;
    const char *prompt = a.prompt;
    char *prompt_buf = NULL;
    if (a.prompt_file) {
        prompt_buf = xread_file(a.prompt_file, NULL);
        if (!prompt_buf) {
            fprintf(stderr, "tuna: %s: cannot read: %s\n", a.prompt_file, strerror(errno));
            return 1;
        }
        prompt = prompt_buf;
    }
    TunaErr err = {0};
    int rc = 1;
    Backend *be = NULL;
    Model *m = NULL;
    Tokenizer *tok = NULL;
    Sampler s = {0};
    GenerateResult res = {0};
    int32_t *ids = NULL;
    size_t n_ids = 0;
    if (cli_load_model(a.dir, NULL, a.backend, a.threads, &a.prec, &be, &m, &tok, &err)) goto fail;
    if (generate_prompt_ids(m, tok, prompt, &ids, &n_ids, &err)) goto fail;
    const ModelConfig *cfg = &m->cfg;
    int sample = a.temp > 0 || (a.temp < 0 && (cfg->gen_do_sample || a.sampling_asked));
    float t_use = !sample ? 0 : a.temp > 0 ? a.temp : cfg->gen_temperature;
    sampler_init(&s, cfg->V, (uint64_t)a.seed, t_use, a.top_k >= 0 ? a.top_k : cfg->gen_top_k,
                 a.top_p >= 0 ? a.top_p : cfg->gen_top_p,
                 a.rep > 0 ? a.rep : cfg->gen_repetition_penalty);
    StopSet ss; /* no template: the EOS ids only; the stop strings are --stop's */
    stopset_init(&ss, m, tok, NULL);
    GenerateOptions opt = {.max_new_tokens = a.max_new,
                           .ignore_eos = a.ignore_eos,
                           .eos_ids = ss.eos,
                           .n_eos = ss.n_eos,
                           .stops = a.stops,
                           .n_stops = a.n_stops,
                           .on_text = a.json ? NULL : print_piece,
                           .lookup = a.lookup,
                           .top_logprobs = a.logprobs};
    if (!a.json && a.echo) {
        char *p = tokenizer_decode(tok, ids, n_ids, 1);
        fputs(p, stdout);
        fflush(stdout);
        free(p);
    }
    if (generate_run(m, tok, &s, ids, n_ids, &opt, &res, &err)) goto fail;
    generate_report(&a, m, be, ids, n_ids, &res, sample);
    rc = 0;
fail:
    if (rc) fprintf(stderr, "tuna: %s\n", err.msg[0] ? err.msg : "generate failed");
    generate_result_free(&res);
    sampler_free(&s);
    free(ids);
    free(prompt_buf);
    tokenizer_free(tok);
    model_free(m);
    backend_free(be);
    return rc;
}

// --- info

/* `tuna info`: this CPU, the features tuna's kernels look for, and the kernels it runs here */
static int cmd_info(int argc, char **argv) {
    if (argc > 1) {
        int help = !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h");
        fprintf(help ? stdout : stderr,
                "usage: tuna info   (the CPU, its features and the kernels tuna runs on it)\n");
        return help ? 0 : 2;
    }
    char model[256] = "?", line[512];
    FILE *f = fopen("/proc/cpuinfo", "r");
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "model name", 10) && strchr(line, ':')) {
            snprintf(model, sizeof model, "%s", strchr(line, ':') + 2);
            model[strcspn(model, "\n")] = '\0';
            break;
        }
    if (f) fclose(f);
    printf("cpu: %s, %ld online\n", model, sysconf(_SC_NPROCESSORS_ONLN));
#if defined(__x86_64__) && defined(__GNUC__)
#define FEATURE(name)                                                                              \
    if (__builtin_cpu_supports(name)) printf(" %s", name)
    printf("features:");
    FEATURE("avx2");
    FEATURE("fma");
    FEATURE("f16c");
    FEATURE("avx512f");
    FEATURE("avx512bw");
    FEATURE("avx512vnni");
    FEATURE("avx512bf16");
    printf("\n");
#undef FEATURE
#endif
    char blas[256];
    int inv = cpu_sgemm_shape_invariant();
    printf("fp32 products: %s; an element's bits %s on the product's shape%s%s\n",
           cpu_blas_name(blas, sizeof blas), inv ? "do not depend" : "depend",
           inv == 2 ? " past OpenBLAS's small-matrix kernel (M N K up to about 1e6)" : "",
           cpu_sgemm_rows_padded() ? " (rows padded to the kernel's groups)" : "");
    printf("bf16 products (--bf16): %s\n", cpu_bf16_path());
    printf("quantized weights, decoding: %s\n", cpu_matmul_w_path(WT_Q4_1, 4096, 1));
    return 0;
}

// --- dispatch

static const struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *help;
} commands[] = {
        {"generate", cmd_generate, "generate text from a checkpoint"},
        {"tokenize", cmd_tokenize, "encode JSON lines {\"text\"} to {\"ids\"} (or --decode)"},
        {"chat", cmd_chat, "chat with a model (and adapter) using a template"},
        {"eval", cmd_eval, "loss, perplexity, exact match, BLEU-4, ROUGE-L as one JSON object"},
        {"ui", cmd_ui, "the workbench: setup, train, chat, runs (also tuna, tuna --OPTION)"},
        {"watch", cmd_watch, "follow a run folder (live or finished) in the terminal UI"},
        {"train", cmd_train, "fine-tune (full, freeze, LoRA); --help lists every option"},
        {"export", cmd_export, "merge a LoRA adapter and write a Hugging Face checkpoint"},
        {"template", cmd_template,
         "list templates, or show one rendered example with its loss mask"},
        {"info", cmd_info, "this CPU, its features and the kernels tuna runs on it"},
};

/* `tuna chat|export FILE.yaml [flags]`: LLaMA-Factory's inference or merge_lora file as the
 * command's flags (lf_config.h), the flags given after it overriding them. */
static int lf_command(LfCommand cmd, int argc, char **argv) {
    char **fl = NULL, notes[1024];
    int nf = 0;
    TunaErr err = {0};
    if (lf_config_args(argv[1], cmd, &fl, &nf, notes, sizeof notes, &err)) {
        fprintf(stderr, "tuna: %s\n", err.msg);
        return 1;
    }
    if (notes[0]) fprintf(stderr, "tuna: %s (LLaMA-Factory): %s\n", argv[1], notes);
    char **args = xmalloc(sizeof(char *) * (size_t)(nf + argc + 1));
    int n = 0;
    args[n++] = argv[0];
    for (int i = 0; i < nf; i++)
        args[n++] = fl[i];
    for (int i = 2; i < argc; i++)
        args[n++] = argv[i];
    args[n] = NULL;
    int rc = cmd == LF_CMD_CHAT ? cmd_chat(n, args) : cmd_export(n, args);
    free(args);
    lf_config_args_free(fl, nf);
    return rc;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: tuna COMMAND [options]   (tuna COMMAND --help for its options)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].help);
}

int main(int argc, char **argv) {
    /* OpenBLAS picked its kernels when it loaded: where it took this CPU for an older one,
     * tuna starts again with OPENBLAS_CORETYPE naming the right core */
    cpu_blas_core_reexec(argv);
    if (argc < 2) return cmd_ui(argc, argv); /* the workbench */
    if (argv[1][0] == '-' && argv[1][1] == '-' && strcmp(argv[1], "--help")) {
        /* `tuna --no-color`, `tuna --screen chat`: options of the workbench */
        char **args = xmalloc(sizeof(char *) * (size_t)(argc + 1));
        args[0] = (char *)"ui";
        for (int i = 1; i <= argc; i++)
            args[i] = argv[i];
        int rc = cmd_ui(argc, args);
        free(args);
        return rc;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    int chat = !strcmp(argv[1], "chat");
    if ((chat || !strcmp(argv[1], "export")) && argc > 2 && lf_config_is_yaml(argv[2]))
        return lf_command(chat ? LF_CMD_CHAT : LF_CMD_EXPORT, argc - 1, argv + 1);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "tuna: unknown command \"%s\"\n", argv[1]);
    usage(stderr);
    return 2;
}
