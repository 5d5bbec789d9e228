/* cmd_chat.c: `tuna chat`, a multi-turn conversation with a model (and an optional LoRA adapter)
 * through a chat template, streamed to stdout; plus the CLI helpers cli.h shares with
 * cmd_eval.c. */
#include "cli.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef TUNA_NO_LIBEDIT
#include <editline/readline.h>
#endif

#include "../generate.h"
#include "../peft.h"
#include "../xalloc.h"

// --- shared CLI helpers

void cli_longopts(const CliOpt *doc, struct option *out) {
    int i = 0;
    for (; doc[i].name && i < CLI_MAX_OPTS - 1; i++)
        out[i] = (struct option){doc[i].name, doc[i].has_arg, NULL, doc[i].key};
    out[i] = (struct option){0, 0, 0, 0};
}

void cli_bad_option(const char *cmd, int c, char **argv) {
    const char *arg = optind > 0 ? argv[optind - 1] : "?";
    if (c == ':')
        fprintf(stderr, "tuna %s: %s needs a value (see --help)\n", cmd, arg);
    else
        fprintf(stderr, "tuna %s: unknown option \"%s\" (see --help)\n", cmd, arg);
}

void cli_help(FILE *f, const char *usage, const CliOpt *doc) {
    fprintf(f, "%s\n\noptions:\n", usage);
    for (int i = 0; doc[i].name; i++) {
        char left[64];
        snprintf(left, sizeof left, "--%s%s%s", doc[i].name, doc[i].arg ? " " : "",
                 doc[i].arg ? doc[i].arg : "");
        fprintf(f, "  %-28s %s\n", left, doc[i].help);
    }
}

int cli_parse_int(const char *s, const char *flag, int lo, int hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "tuna: --%s: expected an integer in [%d, %d], got \"%s\"\n", flag, lo, hi,
                s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

int cli_parse_float(const char *s, const char *flag, float lo, float hi, float *out) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || *end || end == s || !(v >= lo && v <= hi)) {
        fprintf(stderr, "tuna: --%s: expected a number in [%g, %g], got \"%s\"\n", flag, (double)lo,
                (double)hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_precision_opt(int c, const char *arg, CliPrecision *p) {
    if (c >= CLI_OPT_PREC && c <= CLI_OPT_PREC_BF16) p->given = 1;
    switch (c) {
    case CLI_OPT_PREC: return cli_parse_int(arg, "quantization-bit", 0, 8, &p->bits) ? -1 : 1;
    case CLI_OPT_PREC_TYPE: p->qtype = arg; return 1;
    case CLI_OPT_PREC_DQ: p->double_quant = 1; return 1;
    case CLI_OPT_PREC_DTYPE: p->dtype = arg; return 1;
    case CLI_OPT_PREC_BF16: p->bf16 = 1; return 1;
    case CLI_OPT_CACHE:
        if ((p->kv_type = kv_type_by_name(arg)) < 0) {
            fprintf(stderr, "tuna: --cache-type: expected f32, f16 or q8_0, got \"%s\"\n", arg);
            return -1;
        }
        return 1;
    default: return 0;
    }
}

int cli_load_model(const char *model_dir, const char *adapter_dir, const char *backend, int threads,
                   const CliPrecision *prec, Backend **be, Model **m, Tokenizer **tok,
                   TunaErr *err) {
    return cli_load_model_used(model_dir, adapter_dir, backend, threads, prec, be, m, tok, NULL,
                               err);
}

int cli_load_model_used(const char *model_dir, const char *adapter_dir, const char *backend,
                        int threads, const CliPrecision *prec, Backend **be, Model **m,
                        Tokenizer **tok, ModelPrecision *used, TunaErr *err) {
    *be = NULL;
    *m = NULL;
    *tok = NULL;
    int rc;
    char base[4096];
    snprintf(base, sizeof base, "%s", model_dir);
    if (model_is_adapter_run(model_dir)) { /* a LoRA run: its base, then its adapter */
        if (adapter_dir)
            return tuna_errf(err, TUNA_EINVAL,
                             "%s is an adapter run (it names its own base model); to merge "
                             "--adapter %s give a base model folder instead",
                             model_dir, adapter_dir);
        if ((rc = model_run_base(model_dir, base, sizeof base, err))) return rc;
        adapter_dir = model_dir;
    }
    ModelPrecision p = {prec->bits, prec->double_quant, prec->bf16, "", ""};
    snprintf(p.qtype, sizeof p.qtype, "%s", prec->qtype);
    snprintf(p.dtype, sizeof p.dtype, "%s", prec->dtype);
    /* the base as the adapter was trained on it (the TUI's Chat: the same, model_load_any) */
    if (adapter_dir && !prec->given) model_run_precision(adapter_dir, &p);
    if (used) *used = p;
    ModelLoadOptions lo;
    if ((rc = model_load_options(p.bits, p.qtype, p.double_quant, p.dtype, &lo, err))) return rc;
    if (!(*be = backend_init(backend, threads, err)))
        return err && err->code ? err->code : TUNA_EINVAL;
    (*be)->mm_bf16 = p.bf16;
    if ((rc = model_load_opts(base, *be, &lo, m, err))) goto fail;
    if (adapter_dir && (rc = adapter_load(*m, adapter_dir, err))) goto fail;
    if ((rc = model_set_kv_type(*m, (WType)prec->kv_type, err))) goto fail;
    if ((rc = tokenizer_load(base, tok, err))) goto fail;
    return 0;
fail:
    tokenizer_free(*tok);
    model_free(*m);
    backend_free(*be);
    *tok = NULL;
    *m = NULL;
    *be = NULL;
    return rc;
}

// --- tuna chat

enum {
    OPT_ADAPTER = 256,
    OPT_TEMPLATE,
    OPT_TDIR,
    OPT_SYSTEM,
    OPT_MESSAGE,
    OPT_TEMP,
    OPT_TOPP,
    OPT_TOPK,
    OPT_MAXNEW,
    OPT_SEED,
    OPT_THREADS,
    OPT_BACKEND,
    OPT_LOOKUP,
    OPT_PLAIN,
    OPT_HELP
};

static const CliOpt chat_opts[] = {
        {"adapter", 1, OPT_ADAPTER, "DIR", "merge this PEFT LoRA adapter (e.g. a run folder)"},
        {"template", 1, OPT_TEMPLATE, "NAME",
         "chat template, or auto (default: the run's, else auto: the built-in matching the model's "
         "own)"},
        {"templates-dir", 1, OPT_TDIR, "DIR", "where templates live (default templates)"},
        {"system", 1, OPT_SYSTEM, "TEXT", "system prompt (default: the template's)"},
        {"message", 1, OPT_MESSAGE, "TEXT",
         "send TEXT, print the reply; repeatable (a scripted conversation); no stdin"},
        {"temperature", 1, OPT_TEMP, "T", "0 = greedy; default from generation_config.json"},
        {"top-p", 1, OPT_TOPP, "P", "nucleus sampling mass (1 = off)"},
        {"top-k", 1, OPT_TOPK, "K", "keep the K most likely tokens (0 = off)"},
        {"max-new-tokens", 1, OPT_MAXNEW, "N", "longest reply in tokens (default 256)"},
        {"seed", 1, OPT_SEED, "N", "sampling seed (default 42)"},
        {"threads", 1, OPT_THREADS, "N",
         "CPU threads (default: the cores not busy with other work)"},
        {"backend", 1, OPT_BACKEND, "NAME", "cpu (default), ref or cuda"},
        {"lookup", 1, OPT_LOOKUP, "N",
         "greedy only: check up to N tokens copied from earlier in the conversation per pass "
         "(same replies, fewer passes; 0 = off, the default)"},
        {"plain", 0, OPT_PLAIN, NULL,
         "scripted: print the replies alone, without the \"user: \" and \"assistant: \" "
         "lines"},
        CLI_PRECISION_OPTS,
        CLI_CACHE_OPTS,
        {"help", 0, OPT_HELP, NULL, "show this help"},
        {NULL, 0, 0, NULL, NULL},
};

static volatile sig_atomic_t chat_interrupted;

static void chat_on_sigint(int sig) {
    (void)sig;
    chat_interrupted = 1;
}

typedef struct Chat {
    Model *m;
    const Tokenizer *tok;
    const Template *tpl;
    Sampler s;
    StopSet st;
    int max_new;
    int lookup;        /* GenerateOptions.lookup */
    int threads;       /* as asked: re-resolved before each reply (BACKEND_THREADS_IDLE) */
    ChatMessage *msgs; /* (cap) role literal, content owned */
    int n, cap;
    int n_keep; /* leading messages /reset keeps (the system prompt) */
    int labels; /* scripted: print "user: ..." and "assistant: " before the reply */
} Chat;

static void chat_push(Chat *c, const char *role, const char *content) {
    if (c->n == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 8;
        c->msgs = xrealloc(c->msgs, sizeof(ChatMessage) * (size_t)c->cap);
    }
    c->msgs[c->n++] = (ChatMessage){role, xstrdup(content)};
}

static void chat_truncate(Chat *c, int n) {
    for (int i = n; i < c->n; i++)
        free((char *)c->msgs[i].content);
    c->n = n < c->n ? n : c->n;
}

/* Forgets the k messages after the kept prefix (the exchanges chat_prompt left out). */
static void chat_forget(Chat *c, int k) {
    int from = c->n_keep;
    for (int i = from; i < from + k; i++)
        free((char *)c->msgs[i].content);
    memmove(&c->msgs[from], &c->msgs[from + k], sizeof(ChatMessage) * (size_t)(c->n - from - k));
    c->n -= k;
}

/* Streams the reply; whitespace before its first visible character is not printed. */
static int chat_print(void *user, const char *text, size_t len) {
    int *started = user;
    while (!*started && len && (*text == ' ' || *text == '\t' || *text == '\r' || *text == '\n')) {
        text++;
        len--;
    }
    if (len) *started = 1;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return chat_interrupted != 0;
}

/* One turn: appends the user message, generates and streams the reply, appends it. On error the
 * user message is taken back so the conversation stays well-formed. */
static int chat_turn(Chat *c, const char *text, TunaErr *err) {
    chat_push(c, "user", text);
    int32_t *ids = NULL;
    size_t n = 0;
    int ctx = c->m->cfg.max_pos, dropped = 0, max_new = c->max_new;
    int rc = chat_prompt(c->tpl, c->tok, c->msgs, c->n, c->n_keep, ctx, c->max_new, &ids, &n,
                         &dropped, &max_new, err);
    if (rc) goto fail;
    chat_forget(c, dropped);
    int clipped = max_new < c->max_new;
    int started = 0;
    if (c->labels) {
        printf("user: %s\nassistant: ", text);
        fflush(stdout);
    }
    GenerateOptions opt = {.max_new_tokens = max_new,
                           .on_text = chat_print,
                           .user = &started,
                           .lookup = c->lookup};
    stopset_apply(&c->st, &opt);
    GenerateResult res = {0};
    chat_interrupted = 0;
    backend_set_threads(c->m->be, c->threads); /* a run may have started since the last reply */
    rc = generate_run(c->m, c->tok, &c->s, ids, n, &opt, &res, err);
    if (!rc) {
        fputc('\n', stdout);
        fflush(stdout);
        chat_push(c, "assistant", res.text);
        if (res.stopped_by == 4 || (clipped && res.stopped_by == 0))
            fprintf(stderr,
                    "tuna chat: the reply stopped at the model's context of %d tokens "
                    "(max_position_embeddings); /reset starts over\n",
                    ctx);
    }
    generate_result_free(&res);
    if (rc) goto fail;
    free(ids);
    return 0;
fail:
    free(ids);
    chat_truncate(c, c->n - 1);
    return rc;
}

static char *trim_line(char *s) {
    size_t n = strlen(s);
    while (n && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t'))
        s[--n] = '\0';
    while (*s == ' ' || *s == '\t')
        s++;
    return s;
}

/* One user line: on a terminal through libedit (line editing, Up/Down through this session's
 * lines; plain lines where tuna was built without it), else getline. NULL at EOF (or Ctrl-C at
 * the prompt); *line is reused. */
static char *chat_read(int tty, char **line, size_t *cap) {
#ifndef TUNA_NO_LIBEDIT
    if (tty) {
        free(*line);
        *line = readline("> ");
        *cap = 0;
        if (*line && **line) add_history(*line);
        return *line;
    }
#else
    if (tty) { /* built without libedit: plain lines */
        fputs("> ", stdout);
        fflush(stdout);
    }
#endif
    return getline(line, cap, stdin) < 0 ? NULL : *line;
}

/* Reads user lines from stdin until EOF or /quit. Errors of one turn are reported and the
 * conversation goes on; returns 0, or 130 when Ctrl-C at the prompt ended it (the exit status
 * of a SIGINT, as everywhere else in tuna). */
static int chat_loop(Chat *c, const char *tname, int run_tpl) {
    int tty = isatty(STDIN_FILENO);
    struct sigaction sa, old;
    if (tty) {
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = chat_on_sigint; /* no SA_RESTART: Ctrl-C at the prompt ends the chat */
        sigaction(SIGINT, &sa, &old);
        fprintf(stderr,
                "tuna chat: template %s%s; type a message and Enter (Up/Down: earlier lines); "
                "/reset clears the history, /quit or Ctrl-D ends, Ctrl-C stops a reply\n",
                tname, run_tpl ? " (the run's)" : "");
#ifndef TUNA_NO_LIBEDIT
        using_history();
#endif
    }
    char *line = NULL;
    size_t cap = 0;
    int rc = 0;
    for (;;) {
        chat_interrupted = 0;
        if (!chat_read(tty, &line, &cap)) {
            if (tty) fputc('\n', stdout);
            if (chat_interrupted) rc = 130;
            break;
        }
        char *t = trim_line(line);
        if (!*t) continue;
        if (!strcmp(t, "/quit") || !strcmp(t, "/exit")) break;
        if (!strcmp(t, "/reset")) {
            chat_truncate(c, c->n_keep);
            if (tty) fprintf(stderr, "(history cleared)\n");
            continue;
        }
        TunaErr err = {0};
        if (chat_turn(c, t, &err))
            fprintf(stderr, "tuna: %s\n", err.msg[0] ? err.msg : "chat failed");
    }
    free(line);
    if (tty) {
        sigaction(SIGINT, &old, NULL);
#ifndef TUNA_NO_LIBEDIT
        clear_history();
#endif
    }
    return rc;
}

int cmd_chat(int argc, char **argv) {
    const char *usage =
            "usage: tuna chat MODEL_DIR [options]\n"
            "Talks with a model through a chat template. MODEL_DIR may be a run folder (a LoRA "
            "run loads its\nbase model; its template is the default). Without --message it "
            "reads one user message per line\nfrom stdin (a \"> \" prompt with line editing "
            "on a terminal; /reset, /quit).";
    struct option lo[CLI_MAX_OPTS];
    cli_longopts(chat_opts, lo);
    const char *adapter = NULL, *tname = NULL, *tdir = NULL, *system = NULL;
    const char *backend = "cpu";
    int n_messages = 0, max_new = 256, top_k = -1, threads = BACKEND_THREADS_IDLE, seed = 42;
    int sampling_asked = 0, lookup = 0, plain = 0;
    float temp = -1, top_p = -1;
    CliPrecision prec = CLI_PRECISION_INIT;
    int c, pc;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, CLI_OPTSTRING, lo, NULL)) != -1) {
        switch (c) {
        case OPT_ADAPTER: adapter = optarg; break;
        case OPT_TEMPLATE: tname = optarg; break;
        case OPT_TDIR: tdir = optarg; break;
        case OPT_SYSTEM: system = optarg; break;
        case OPT_MESSAGE: n_messages++; break; /* collected in order below */
        case OPT_TEMP:
            if (cli_parse_float(optarg, "temperature", 0, 100, &temp)) return 2;
            break;
        case OPT_TOPP:
            if (cli_parse_float(optarg, "top-p", 0, 1, &top_p)) return 2;
            sampling_asked = 1;
            break;
        case OPT_TOPK:
            if (cli_parse_int(optarg, "top-k", 0, 1 << 24, &top_k)) return 2;
            sampling_asked = 1;
            break;
        case OPT_MAXNEW:
            if (cli_parse_int(optarg, "max-new-tokens", 1, 1 << 24, &max_new)) return 2;
            break;
        case OPT_LOOKUP:
            if (cli_parse_int(optarg, "lookup", 0, LOOKUP_MAX, &lookup)) return 2;
            break;
        case OPT_SEED:
            if (cli_parse_int(optarg, "seed", 0, 2147483647, &seed)) return 2;
            sampling_asked = 1;
            break;
        case OPT_THREADS:
            if (cli_parse_int(optarg, "threads", 1, 1024, &threads)) return 2;
            break;
        case OPT_BACKEND: backend = optarg; break;
        case OPT_PLAIN: plain = 1; break;
        case OPT_HELP: cli_help(stdout, usage, chat_opts); return 0;
        default:
            if ((pc = cli_precision_opt(c, optarg, &prec))) {
                if (pc < 0) return 2;
                break;
            }
            cli_bad_option("chat", c, argv);
            return 2;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "tuna chat: expected one MODEL_DIR (see --help)\n");
        return 2;
    }
    const char *dir = argv[optind];
    if (!cli_model_path_ok("chat", NULL, dir)) return 1;
    char tname_buf[256], tdir_buf[4096];
    int run_tpl = cli_default_template(dir, adapter, &tname, &tdir, tname_buf, sizeof tname_buf,
                                       tdir_buf, sizeof tdir_buf);
    // second pass: the --message values, in order
    const char **messages = xmalloc(sizeof(char *) * (size_t)(n_messages ? n_messages : 1));
    int k = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, CLI_OPTSTRING, lo, NULL)) != -1)
        if (c == OPT_MESSAGE) messages[k++] = optarg;
    opterr = 1;

    TunaErr err = {0};
    int rc = 1;
    Backend *be = NULL;
    Model *m = NULL;
    Tokenizer *tok = NULL;
    Template *tpl = NULL;
    Chat ch;
    memset(&ch, 0, sizeof ch);
    if (template_load(tdir, tname, &tpl, &err)) goto fail; /* cheap: fail before the model */
    char run_sys[1024]; /* the run's default_system, where the template is the run's */
    if (run_tpl && cli_run_system(dir, adapter, run_sys, sizeof run_sys))
        template_set_default_system(tpl, run_sys);
    if (cli_load_model(dir, adapter, backend, threads, &prec, &be, &m, &tok, &err)) goto fail;
    const ModelConfig *cfg = &m->cfg;
    int sample = temp > 0 || (temp < 0 && (cfg->gen_do_sample || sampling_asked));
    float t_use = !sample ? 0 : temp > 0 ? temp : cfg->gen_temperature;
    sampler_init(&ch.s, cfg->V, (uint64_t)seed, t_use, top_k >= 0 ? top_k : cfg->gen_top_k,
                 top_p >= 0 ? top_p : cfg->gen_top_p, cfg->gen_repetition_penalty);
    ch.m = m;
    ch.tok = tok;
    ch.tpl = tpl;
    ch.max_new = max_new;
    ch.lookup = lookup;
    ch.threads = threads;
    ch.labels = !plain && (n_messages || !isatty(STDIN_FILENO));
    stopset_init(&ch.st, m, tok, tpl);
    if (system) chat_push(&ch, "system", system);
    ch.n_keep = ch.n;
    if (n_messages) {
        for (int i = 0; i < n_messages; i++)
            if (chat_turn(&ch, messages[i], &err)) goto fail;
    } else if ((rc = chat_loop(&ch, tname, run_tpl)) != 0) {
        goto done; /* Ctrl-C at the prompt: 130, nothing else to say */
    }
    rc = 0;
fail:
    if (rc) fprintf(stderr, "tuna: %s\n", err.msg[0] ? err.msg : "chat failed");
done:
    chat_truncate(&ch, 0);
    free(ch.msgs);
    if (ch.s.probs) sampler_free(&ch.s);
    free(messages);
    template_free(tpl);
    tokenizer_free(tok);
    model_free(m);
    backend_free(be);
    return rc;
}
