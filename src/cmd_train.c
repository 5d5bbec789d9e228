/* cmd_train.c: `tuna train` and `tuna export`. The flags of train come from the TrainConfig
 * table in train.c (the same keys as train_config.json), so --help, the config file and
 * the flags cannot drift apart. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/backend.h"
#include "model.h"
#include "peft.h"
#include "train.h"

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

int cmd_train(int argc, char **argv) {
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
    /* resume promises the same run step for step: changed settings are refused, or recorded */
    char changes[2048] = "";
    if (resume && train_config_diff(&saved, &cfg, changes, sizeof changes) && !allow) {
        fprintf(stderr,
                "tuna: %s: --resume with changed settings (%s); drop those flags, or add "
                "--allow-changes to record the change in the run\n",
                resume, changes);
        return 1;
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
        fprintf(stderr, "tuna: stopped; checkpoint saved (continue with --resume %s)\n",
                cfg.output[0] ? cfg.output : "RUN");
        return stop_signal ? 128 + stop_signal : EXIT_STOPPED;
    }
    return 0;
}

int cmd_export(int argc, char **argv) {
    static struct option lo[] = {{"model", required_argument, NULL, 'm'},
                                 {"adapter", required_argument, NULL, 'a'},
                                 {"out", required_argument, NULL, 'o'},
                                 {"help", no_argument, NULL, 'h'},
                                 {0, 0, 0, 0}};
    const char *model = NULL, *adapter = NULL, *out = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        if (c == 'm')
            model = optarg;
        else if (c == 'a')
            adapter = optarg;
        else if (c == 'o')
            out = optarg;
        else if (c == 'h') {
            printf("usage: tuna export --model DIR [--adapter RUN_OR_ADAPTER_DIR] --out DIR\n"
                   "Merges a PEFT LoRA adapter into the model and writes a Hugging Face "
                   "checkpoint.\n");
            return 0;
        } else {
            fprintf(stderr, "tuna export: see --help\n");
            return 2;
        }
    }
    if (!model || !out) {
        fprintf(stderr, "tuna export: --model and --out are required (see --help)\n");
        return 2;
    }
    TunaErr err = {0};
    Backend *be = backend_init("cpu", 0, &err);
    Model *m = NULL;
    int rc = !be || model_load(model, be, &m, &err) ||
             (adapter && adapter_load(m, adapter, &err)) || model_save_hf(m, out, &err);
    if (rc)
        fprintf(stderr, "tuna: %s\n", err.msg);
    else
        fprintf(stderr, "tuna: wrote %s (%zu parameters)\n", out, m->n_params);
    model_free(m);
    backend_free(be);
    return rc ? 1 : 0;
}
