/* cmd_train.c: `tuna train` and `tuna export`. The flags of train come from the TrainConfig
 * table in train.c (the same keys as train_config.json), so --help, the config file and
 * the flags cannot drift apart. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../kernels/backend.h"
#include "../atomic_dir.h"
#include "../dist.h"
#include "../export_gguf.h"
#include "../gguf.h"
#include "../gguf_model.h"
#include "../model.h"
#include "../modelfile.h"
#include "../peft.h"
#include "../template.h"
#include "../train.h"
#include "../xalloc.h"
#include "cli.h"

static volatile sig_atomic_t stop_flag, stop_signal;

static void on_sigint(int sig) {
    if (stop_flag) signal(sig, SIG_DFL); /* a second Ctrl-C interrupts for real */
    stop_flag = 1;
    stop_signal = sig;
}

enum { OPT_CONFIG = 1000, OPT_RESUME, OPT_HELP, OPT_QUIET, OPT_OVERWRITE, OPT_ALLOW };

/* Exit statuses: 0 finished, 1 a failed check or error, 2 usage, 3 stopped (control file),
 * 128 + the signal (130 SIGINT, 143 SIGTERM) when a signal stopped it. */
enum { EXIT_STOPPED = 3 };

/* A yes/no flag takes its word as the next argument too ("--packing neat", "--strict false"):
 * getopt's optional arguments only come as --flag=word, so such pairs are joined first. The
 * words are true, false and the option's own third word in the engine's table (packing: neat).
 * The joined copy stays reachable (static) for the life of the command. */
static char **join_flag_words(int *argc, char **argv) {
    static char **av;
    free(av);
    av = xcalloc((size_t)*argc + 1, sizeof *av);
    static char buf[64][112];
    int n = 0, nb = 0;
    for (int i = 0; i < *argc; i++) {
        const char *a = argv[i], *w = i + 1 < *argc ? argv[i + 1] : "";
        const TrainOption *o = NULL;
        char key[64];
        if (!strncmp(a, "--", 2) && strlen(a + 2) < sizeof key) {
            snprintf(key, sizeof key, "%s", a + 2);
            for (char *p = key; *p; p++)
                if (*p == '-') *p = '_';
            o = train_option_find(key);
        }
        int join = o && o->type == TRAIN_OPT_BOOL &&
                   (!strcmp(w, "true") || !strcmp(w, "false") || (o->alt && !strcmp(w, o->alt)));
        if (join && nb < 64) {
            snprintf(buf[nb], sizeof buf[nb], "%s=%s", a, w);
            av[n++] = buf[nb++];
            i++;
        } else
            av[n++] = argv[i];
    }
    *argc = n;
    return av;
}

/* --nproc N: the same command as N data-parallel processes on this host, `mpirun -np N` of this
 * binary with the arguments but --nproc (root in a container needs --allow-run-as-root; each
 * rank's threads are its share of the cores, so no binding; N may exceed the cores). Returns
 * only when it does not exec: -1 without --nproc (or N = 1, which is dropped), else the exit
 * status. */
static int launch_nproc(int *argc, char **argv) {
    int np = 0, at = -1, width = 0;
    for (int i = 1; i < *argc && at < 0; i++) {
        if (!strcmp(argv[i], "--nproc") && i + 1 < *argc) {
            at = i, width = 2;
            if (cli_parse_int(argv[i + 1], "nproc", 1, 4096, &np)) return 2;
        } else if (!strncmp(argv[i], "--nproc=", 8)) {
            at = i, width = 1;
            if (cli_parse_int(argv[i] + 8, "nproc", 1, 4096, &np)) return 2;
        }
    }
    if (at < 0) return -1;
    for (int i = at; i + width <= *argc; i++) /* drop it, the NULL too */
        argv[i] = argv[i + width];
    *argc -= width;
    if (np == 1) return -1;
    if (!dist_available()) {
        fprintf(stderr,
                "tuna train: --nproc %d: this tuna is built without MPI (make MPI=1, "
                "with libopenmpi-dev)\n",
                np);
        return 2;
    }
    static char self[4096];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    if (sl <= 0) {
        fprintf(stderr, "tuna train: --nproc: cannot find this binary: %s\n", strerror(errno));
        return 2;
    }
    self[sl] = '\0';
    char **av = xcalloc((size_t)*argc + 12, sizeof *av), nps[16];
    static char mpirun[] = "mpirun", root[] = "--allow-run-as-root", bind[] = "--bind-to",
                none[] = "none", over[] = "--oversubscribe", npf[] = "-np";
    int k = 0;
    snprintf(nps, sizeof nps, "%d", np);
    av[k++] = mpirun;
    if (getuid() == 0) av[k++] = root;
    av[k++] = bind;
    av[k++] = none;
    av[k++] = over; /* N above the cores (slots) is the user's call */
    av[k++] = npf;
    av[k++] = nps;
    av[k++] = self;
    for (int i = 0; i < *argc; i++) /* "train" and its arguments */
        av[k++] = argv[i];
    av[k] = NULL;
    execvp("mpirun", av);
    fprintf(stderr, "tuna train: --nproc %d: cannot run mpirun: %s (apt-get install openmpi-bin)\n",
            np, strerror(errno));
    free(av);
    return 2;
}

int cmd_train(int argc, char **argv) {
    int lrc = launch_nproc(&argc, argv);
    if (lrc >= 0) return lrc;
    struct option lo[96];
    int n = 0;
    const char *key;
    int is_bool;
    for (int i = 0; (key = train_config_key(i, &is_bool, NULL)) && n < 80; i++) {
        static char names[96][48];
        snprintf(names[n], sizeof names[n], "%s", key);
        for (char *p = names[n]; *p; p++)
            if (*p == '_') *p = '-';
        lo[n] = (struct option){names[n], is_bool ? optional_argument : required_argument, NULL,
                                2000 + i};
        n++;
    }
    lo[n++] = (struct option){"config", required_argument, NULL, OPT_CONFIG};
    lo[n++] = (struct option){"resume", required_argument, NULL, OPT_RESUME};
    lo[n++] = (struct option){"quiet", no_argument, NULL, OPT_QUIET};
    lo[n++] = (struct option){"overwrite", no_argument, NULL, OPT_OVERWRITE};
    lo[n++] = (struct option){"allow-changes", no_argument, NULL, OPT_ALLOW};
    lo[n++] = (struct option){"help", no_argument, NULL, OPT_HELP};
    lo[n] = (struct option){0, 0, 0, 0};
    argv = join_flag_words(&argc, argv);
    TrainConfig cfg;
    train_config_defaults(&cfg);
    TunaErr err = {0};
    const char *config = NULL, *resume = NULL;
    int quiet = 0, overwrite = 0, allow = 0, c;
    // pass 1: --config / --resume set the base, flags then override it
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        if (c == OPT_CONFIG)
            config = optarg;
        else if (c == OPT_RESUME)
            resume = optarg;
        else if (c == OPT_HELP) {
            printf("usage: tuna train [--config FILE | --resume RUN_DIR] [options]\n"
                   "Fine-tunes a model (full, freeze or LoRA) and writes a run folder.\n\n"
                   "  --config FILE          start from a train_config.json (flags override it)\n"
                   "  --resume RUN_DIR       continue RUN_DIR from its newest checkpoint that "
                   "validates\n"
                   "  --overwrite            replace the run already in --output (its "
                   "checkpoints too)\n"
                   "  --allow-changes        --resume with changed settings (recorded in the "
                   "run)\n"
                   "  --quiet                no progress on stderr\n"
                   "exit status: 0 finished, 1 error, 2 usage, 3 stopped (control file), "
                   "130/143 SIGINT/SIGTERM\n");
            train_config_help(stdout);
            return 0;
        }
    }
    char path[1200];
    if (resume) {
        snprintf(path, sizeof path, "%s/train_config.json", resume);
        config = path;
    }
    if (config && train_config_load(&cfg, config, &err)) {
        fprintf(stderr, "tuna: %s\n", err.msg);
        return 1;
    }
    if (resume) snprintf(cfg.output, sizeof cfg.output, "%s", resume);
    TrainConfig saved = cfg;
    optind = 1;
    opterr = 1;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        if (c >= 2000) {
            const char *k = train_config_key(c - 2000, &is_bool, NULL);
            const char *v = optarg ? optarg : "true";
            if (train_config_set(&cfg, k, v, &err)) {
                fprintf(stderr, "tuna: %s\n", err.msg);
                return 2;
            }
        } else if (c == OPT_QUIET)
            quiet = 1;
        else if (c == OPT_OVERWRITE)
            overwrite = 1;
        else if (c == OPT_ALLOW)
            allow = 1;
        else if (c == '?') {
            fprintf(stderr, "tuna train: see --help\n");
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "tuna train: unexpected argument \"%s\" (see --help)\n", argv[optind]);
        return 2;
    }
    if (train_config_check(&cfg, &err)) {
        fprintf(stderr, "tuna: %s\n", err.msg);
        return 2;
    }
    if (!resume) { /* the bundled defaults are found beside the binary too, as templates/ is */
        char buf[2100];
        const char *p = bundled_path(cfg.model, buf, sizeof buf);
        if (!strcmp(cfg.model, "models/stories260K") && p != cfg.model &&
            strlen(p) < sizeof cfg.model)
            snprintf(cfg.model, sizeof cfg.model, "%s", p);
        p = bundled_path(cfg.dataset_dir, buf, sizeof buf);
        if (!strcmp(cfg.dataset_dir, "datasets") && p != cfg.dataset_dir &&
            strlen(p) < sizeof cfg.dataset_dir)
            snprintf(cfg.dataset_dir, sizeof cfg.dataset_dir, "%s", p);
    }
    if (!cli_model_path_ok("train", "--model", cfg.model)) return 1;
    /* resume promises the same run step for step: changed settings are refused, or recorded */
    char changes[2048] = "";
    if (resume && train_config_diff(&saved, &cfg, changes, sizeof changes) && !allow) {
        fprintf(stderr,
                "tuna: %s: --resume with changed settings (%s); drop those flags, or add "
                "--allow-changes to record the change in the run\n",
                resume, changes);
        return 1;
    }
    if (resume && strcmp(cfg.output, resume)) {
        fprintf(stderr, "tuna train: --resume %s writes into %s; drop --output\n", resume, resume);
        return 2;
    }
    if (resume && overwrite) {
        fprintf(stderr, "tuna train: --resume and --overwrite exclude each other\n");
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGXFSZ, SIG_IGN); /* a file size limit: the write fails with EFBIG and is reported */
    int stopped = 0;
    TrainHooks hooks = {.stop = &stop_flag,
                        .quiet = quiet,
                        .overwrite = overwrite,
                        .changes = changes,
                        .stopped = &stopped};
    int rc = train_run(&cfg, resume != NULL, &hooks, &err);
    if (rc) {
        fprintf(stderr, "tuna: %s\n", err.msg);
        return stop_signal ? 128 + stop_signal : 1;
    }
    if (stopped) {
        if (dist_rank()) return EXIT_STOPPED; /* data parallel: rank 0 says it */
        fprintf(stderr, "tuna: stopped; checkpoint saved (continue with --resume %s)\n",
                cfg.output[0] ? cfg.output : "RUN");
        return stop_signal ? 128 + stop_signal : EXIT_STOPPED;
    }
    return 0;
}

/* The marker a tuna export leaves in its folder: a first line, then the files it wrote. A
 * folder with it may be exported into again; other non-empty folders need --overwrite. */
#define EXPORT_MARKER ".tuna-export"

/* 1: dir has nothing in it but . and .. */
static int dir_empty(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *e;
    int empty = 1;
    while (empty && (e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) empty = 0;
    closedir(d);
    return empty;
}

/* Writes the marker listing the files of tmp (the new export). */
static int write_marker(const char *tmp, const char *dir, const char *model, const char *adapter) {
    char path[4400];
    snprintf(path, sizeof path, "%s/" EXPORT_MARKER, dir);
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fprintf(f, "tuna export of %s%s%s\n", model, adapter ? " + " : "", adapter ? adapter : "");
    DIR *d = opendir(tmp);
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.') fprintf(f, "%s\n", e->d_name);
    if (d) closedir(d);
    return fclose(f) ? -1 : 0;
}

/* Moves the files of tmp into dir one by one (each rename atomic), after removing the files
 * the previous export listed that this one does not write; other files stay. */
static int move_into(const char *tmp, const char *dir, TunaErr *err) {
    char a[4800], b[4800], line[512];
    snprintf(a, sizeof a, "%s/" EXPORT_MARKER, dir);
    FILE *m = fopen(a, "r");
    if (m && fgets(line, sizeof line, m))
        while (fgets(line, sizeof line, m)) {
            line[strcspn(line, "\r\n")] = '\0';
            if (!line[0] || line[0] == '.' || strchr(line, '/')) continue;
            snprintf(a, sizeof a, "%s/%s", tmp, line);
            snprintf(b, sizeof b, "%s/%s", dir, line);
            if (access(a, F_OK)) unlink(b);
        }
    if (m) fclose(m);
    DIR *d = opendir(tmp);
    if (!d) return tuna_errf(err, TUNA_EIO, "%s: cannot read", tmp);
    struct dirent *e;
    int rc = 0;
    while (!rc && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        snprintf(a, sizeof a, "%s/%s", tmp, e->d_name);
        snprintf(b, sizeof b, "%s/%s", dir, e->d_name);
        if (rename(a, b)) rc = tuna_errf(err, TUNA_EIO, "%s: cannot write: %s", b, strerror(errno));
    }
    closedir(d);
    return rc;
}

/* Writes the merged model to out: a new folder appears whole (written beside it, renamed);
 * into an existing one (empty, a previous export, or --overwrite) the files move in one by
 * one from a temporary folder inside it. Nothing but the export's own files is replaced. */
static int export_to(const Model *m, const char *out, int overwrite, const char *model,
                     const char *adapter, TunaErr *err) {
    struct stat sb;
    char tmp[4200], marker[4300];
    if (stat(out, &sb)) {
        int rc = dir_begin(out, tmp, sizeof tmp, err);
        if (!rc) rc = model_write_hf(m, tmp, err);
        if (!rc && write_marker(tmp, tmp, model, adapter))
            rc = tuna_errf(err, TUNA_EIO, "%s/" EXPORT_MARKER ": cannot write", tmp);
        if (!rc && rename(tmp, out))
            rc = tuna_errf(err, TUNA_EIO, "%s: cannot create: %s", out, strerror(errno));
        if (rc) dir_remove(tmp);
        return rc;
    }
    if (!S_ISDIR(sb.st_mode))
        return tuna_errf(err, TUNA_EINVAL, "--out %s: exists and is not a folder", out);
    snprintf(marker, sizeof marker, "%s/" EXPORT_MARKER, out);
    if (!overwrite && !dir_empty(out) && access(marker, F_OK))
        return tuna_errf(err, TUNA_EINVAL,
                         "--out %s: the folder is not empty and not a tuna export; choose a new "
                         "folder, or add --overwrite (files of the export's names are replaced, "
                         "others kept)",
                         out);
    snprintf(tmp, sizeof tmp, "%s/.tuna-export-tmp-%d", out, (int)getpid());
    dir_remove(tmp);
    if (mkdir(tmp, 0755))
        return tuna_errf(err, TUNA_EIO, "%s: cannot create: %s", tmp, strerror(errno));
    int rc = model_write_hf(m, tmp, err);
    if (!rc) rc = move_into(tmp, out, err);
    if (!rc && write_marker(out, out, model, adapter))
        rc = tuna_errf(err, TUNA_EIO, "%s: cannot write", marker);
    dir_remove(tmp);
    return rc;
}

/* TUNA_PROGRESS=1 (the workbench's Export action): a "progress K/N" line per tensor. */
static void print_progress(void *ctx, int done, int total) {
    (void)ctx;
    fprintf(stderr, "progress %d/%d\n", done, total);
}

/* The Ollama Modelfile beside an exported GGUF: out's name with .Modelfile for .gguf. from: the
 * GGUF FROM names; adapter: the gguf-lora file or NULL. A Modelfile that cannot be written is a
 * warning: the GGUF itself is complete. */
static void export_modelfile(const char *out, const char *tdir, const char *tname, const char *from,
                             const char *adapter) {
    char path[4200];
    snprintf(path, sizeof path, "%.*s.Modelfile", (int)(strlen(out) - 5), out);
    TunaErr err = {0};
    Template *t = NULL;
    int rc = template_load(tdir, tname, &t, &err);
    if (!rc) rc = modelfile_write(path, t, from, adapter, &err);
    template_free(t);
    if (rc)
        fprintf(stderr, "tuna: warning: no Modelfile: %s\n", err.msg);
    else
        fprintf(stderr, "tuna: wrote %s (template %s): ollama create NAME -f %s\n", path, tname,
                path);
}

/* tuna export --format gguf|gguf-lora: one .gguf file (export_gguf.c), and its Modelfile. */
static int cmd_export_gguf(const char *model, const char *adapter, const char *format,
                           const char *quant, const char *tpl, char *out, int overwrite,
                           CliPrecision *prec) {
    int lora = !strcmp(format, "gguf-lora");
    if (!lora && strcmp(format, "gguf")) {
        fprintf(stderr, "tuna export: --format \"%s\": expected hf, gguf or gguf-lora\n", format);
        return 2;
    }
    int wt = export_gguf_quant(quant);
    if (wt < 0) {
        fprintf(stderr,
                "tuna export: --quant \"%s\": expected f16, bf16, f32, q8_0, q4_0, q4_1 or q4_k\n",
                quant);
        return 2;
    }
    if (!model) {
        fprintf(stderr, "tuna export: --model is required (see --help)\n");
        return 2;
    }
    if (!cli_model_path_ok("export", "--model", model)) return 1;
    struct stat sb;
    if (!out[0]) { /* default: beside the run's files */
        if (stat(model, &sb) || !S_ISDIR(sb.st_mode)) {
            fprintf(stderr, "tuna export: --out FILE.gguf is required for a model file\n");
            return 2;
        }
        snprintf(out, 4000, "%s/%s.gguf", model, lora ? "adapter-lora" : quant);
    }
    size_t ol = strlen(out);
    if (ol < 5 || strcasecmp(out + ol - 5, ".gguf")) {
        fprintf(stderr, "tuna export: --out %s: a GGUF export is one file ending in .gguf\n", out);
        return 2;
    }
    if (!stat(out, &sb) && !overwrite) {
        fprintf(stderr, "tuna export: --out %s: exists; choose a new name or add --overwrite\n",
                out);
        return 1;
    }
    TunaErr err = {0};
    char base[4096];
    if (model_is_adapter_run(model)) {
        if (adapter) {
            fprintf(stderr, "tuna: %s is an adapter run; give --adapter with a base model\n",
                    model);
            return 2;
        }
        if (model_run_base(model, base, sizeof base, &err)) {
            fprintf(stderr, "tuna: %s\n", err.msg);
            return 1;
        }
        adapter = model;
        model = base;
    }
    if (lora && !adapter) {
        fprintf(stderr, "tuna export: --format gguf-lora needs a LoRA run (or --adapter DIR)\n");
        return 2;
    }
    if (lora) {
        ModelConfig cfg;
        char gpath[4096];
        int g = gguf_model_path(model, gpath, sizeof gpath, &err), rc = g < 0 ? g : 0;
        if (!rc) rc = g ? gguf_config_load(gpath, &cfg, &err) : config_load(model, &cfg, &err);
        if (!rc) rc = export_gguf_lora(&cfg, adapter, out, &err);
        if (rc) {
            fprintf(stderr, "tuna: %s\n", err.msg);
            return 1;
        }
        fprintf(stderr, "tuna: wrote %s (LoRA adapter for %s)\n", out, model);
        char tn[256], td[4096];
        const char *tname = tpl, *tdir = NULL;
        cli_default_template(model, adapter, &tname, &tdir, tn, sizeof tn, td, sizeof td);
        if (g > 0)
            export_modelfile(out, tdir, tname, gpath, out);
        else /* Ollama's ADAPTER goes over a GGUF base */
            fprintf(stderr,
                    "tuna: no Modelfile: the base %s is not a GGUF file; export it with --format "
                    "gguf and use that as FROM\n",
                    model);
        return 0;
    }
    /* the chat template: the run's (as Jinja), else the model's own */
    char tname_buf[256], tdir_buf[4096];
    const char *tname = tpl, *tdir = NULL;
    int run_tpl = cli_default_template(model, adapter, &tname, &tdir, tname_buf, sizeof tname_buf,
                                       tdir_buf, sizeof tdir_buf);
    char *jinja = NULL;
    if ((tpl || run_tpl) && strcmp(tname, "auto")) {
        Template *t = NULL;
        if (template_load(tdir, tname, &t, &err)) {
            fprintf(stderr, "tuna: %s\n", err.msg);
            return 1;
        }
        jinja = template_to_jinja(t);
        template_free(t);
    }
    Backend *be = NULL;
    Model *m = NULL;
    Tokenizer *tok = NULL;
    int rc = cli_load_model(model, adapter, "cpu", 0, prec, &be, &m, &tok, &err);
    GgufExportOpts o = {wt, jinja, NULL, getenv("TUNA_PROGRESS") ? print_progress : NULL, NULL};
    if (!rc) rc = export_gguf(m, &o, out, 1, &err);
    if (rc)
        fprintf(stderr, "tuna: %s\n", err.msg);
    else
        fprintf(stderr, "tuna: wrote %s (%s%s%s)\n", out, wtype_info[wt].name,
                jinja ? ", chat template " : "", jinja ? tname : "");
    if (!rc) export_modelfile(out, tdir, tname, out, NULL);
    free(jinja);
    tokenizer_free(tok);
    model_free(m);
    backend_free(be);
    return rc ? 1 : 0;
}

int cmd_export(int argc, char **argv) {
    static const CliOpt export_opts[] = {
            {"model", 1, 'm', "DIR", "the base model, or a LoRA run (its base and adapter)"},
            {"adapter", 1, 'a', "DIR", "the PEFT LoRA adapter or run to merge"},
            {"out", 1, 'o', "DIR", "where the Hugging Face checkpoint goes"},
            {"overwrite", 0, 'w', NULL, "write into a folder that is not an earlier export"},
            {"format", 1, 'f', "FMT", "hf (default), gguf (merged, for llama.cpp) or gguf-lora"},
            {"quant", 1, 'q', "TYPE", "gguf: f16 (default), bf16, f32, q8_0, q4_0, q4_1, q4_k"},
            {"template", 1, 'T', "NAME",
             "gguf: the chat template (default: the run's, else the "
             "model's own)"},
            CLI_PRECISION_OPTS,
            {"help", 0, 'h', NULL, "show this help"},
            {NULL, 0, 0, NULL, NULL}};
    struct option lo[CLI_MAX_OPTS];
    cli_longopts(export_opts, lo);
    const char *model = NULL, *adapter = NULL, *format = "hf", *quant = "f16", *tpl = NULL;
    char out[4000] = "";
    int c, overwrite = 0, pc;
    CliPrecision prec = CLI_PRECISION_INIT;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        if (c == 'm')
            model = optarg;
        else if (c == 'a')
            adapter = optarg;
        else if (c == 'o')
            snprintf(out, sizeof out, "%s", optarg);
        else if (c == 'w')
            overwrite = 1;
        else if (c == 'f')
            format = optarg;
        else if (c == 'q')
            quant = optarg;
        else if (c == 'T')
            tpl = optarg;
        else if (c == 'h') {
            cli_help(stdout,
                     "usage: tuna export --model DIR [--adapter RUN_OR_ADAPTER_DIR] --out DIR "
                     "[--overwrite]\n"
                     "       tuna export --format gguf|gguf-lora --model RUN_OR_MODEL "
                     "[--quant TYPE] [--out FILE.gguf]\n"
                     "Merges a PEFT LoRA adapter into the model and writes a Hugging Face "
                     "checkpoint.\n"
                     "--out must be new, empty or a previous export; --overwrite writes into "
                     "another folder (files of the same names replaced, others kept).\n"
                     "A run trained on a quantized or bf16 base merges into that base "
                     "dequantized to fp32, as peft's merge_and_unload does (--dtype fp32: "
                     "into the full-precision base instead).",
                     export_opts);
            return 0;
        } else if ((pc = cli_precision_opt(c, optarg, &prec))) {
            if (pc < 0) return 2;
        } else {
            fprintf(stderr, "tuna export: see --help\n");
            return 2;
        }
    }
    if (strcmp(format, "hf"))
        return cmd_export_gguf(model, adapter, format, quant, tpl, out, overwrite, &prec);
    if (!model || !out[0]) {
        fprintf(stderr, "tuna export: --model and --out are required (see --help)\n");
        return 2;
    }
    if (optind < argc) {
        fprintf(stderr, "tuna export: unexpected argument \"%s\" (see --help)\n", argv[optind]);
        return 2;
    }
    if (!cli_model_path_ok("export", "--model", model)) return 1;
    size_t ol = strlen(out);
    while (ol > 1 && out[ol - 1] == '/') /* merged/ is merged */
        out[--ol] = '\0';
    TunaErr err = {0};
    char base[4096];
    if (model_is_adapter_run(model)) { /* --model RUN of a LoRA run: its base, with its adapter */
        if (adapter) {
            fprintf(stderr,
                    "tuna: %s is an adapter run (it names its own base model); to merge "
                    "--adapter %s give a base model folder instead\n",
                    model, adapter);
            return 2;
        }
        if (model_run_base(model, base, sizeof base, &err)) {
            fprintf(stderr, "tuna: %s\n", err.msg);
            return 1;
        }
        adapter = model;
        model = base;
    }
    Backend *be = NULL;
    Model *m = NULL;
    Tokenizer *tok = NULL;
    /* the model and adapter load before --out is looked at: a failure touches nothing */
    int rc = cli_load_model(model, adapter, "cpu", 0, &prec, &be, &m, &tok, &err);
    if (!rc && m->n_qparams)
        fprintf(stderr,
                "tuna: the base as %s: %zu weights in %s, dequantized to fp32 for the export%s "
                "(as peft's merge_and_unload; --dtype fp32 merges into the full-precision base)\n",
                prec.given ? "asked" : "the run trained it", m->n_qparams,
                wtype_info[m->layers[0].qw[LORA_Q] ? m->layers[0].qw[LORA_Q]->type : WT_F32].name,
                adapter ? " with the adapter merged in" : "");
    rc = rc || export_to(m, out, overwrite, model, adapter, &err);
    if (rc)
        fprintf(stderr, "tuna: %s\n", err.msg);
    else
        fprintf(stderr, "tuna: wrote %s (%zu parameters)\n", out, m->n_params + m->n_qparams);
    tokenizer_free(tok);
    model_free(m);
    backend_free(be);
    return rc ? 1 : 0;
}
