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
#include <sys/wait.h>
#include <unistd.h>

#include "../../kernels/backend.h"
#include "../atomic_dir.h"
#include "../dist.h"
#include "../export_gguf.h"
#include "../gguf.h"
#include "../gguf_model.h"
#include "../lf_config.h"
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

// --- --nproc: mpirun as a child, its exit summarised

/* Open MPI's help banners come between lines of dashes; what they say is read, not shown. */
typedef struct Banner {
    int in;        /* inside a banner */
    int rank, sig; /* "process rank R ... exited on signal S" (-1: none) */
    char signame[32];
    int abort_rank; /* "MPI_ABORT was invoked on rank R" */
    int exit_rank, exit_code;
    char line[400];         /* a rank's own fault line ("tuna: rank R of N: ...") */
    unsigned long seen[16]; /* hashes of the last "tuna..." lines shown: each rank says the same
                               error before the first step; it is shown once */
    int n_seen;
} Banner;

static unsigned long hash_line(const char *s) {
    unsigned long h = 5381;
    for (; *s && *s != '\n' && *s != '\r'; s++)
        h = h * 33 + (unsigned char)*s;
    return h;
}

static int is_dashes(const char *s) {
    size_t n = strspn(s, "-");
    return n >= 20 && (s[n] == '\0' || s[n] == '\n' || s[n] == '\r');
}

/* One line of mpirun's stderr: returns 1 when it is shown. */
static int banner_line(Banner *b, const char *s) {
    int r, sig;
    char name[32];
    const char *p;
    if (is_dashes(s)) {
        b->in = !b->in;
        return 0;
    }
    if ((p = strstr(s, "process rank ")) &&
        sscanf(p, "process rank %d with PID %*d on node %*s exited on signal %d (%31[^)])", &r,
               &sig, name) == 3) {
        b->rank = r, b->sig = sig;
        snprintf(b->signame, sizeof b->signame, "%s", name);
    }
    if ((p = strstr(s, "MPI_ABORT was invoked on rank ")) && sscanf(p + 30, "%d", &r) == 1)
        b->abort_rank = r;
    if ((p = strstr(s, "Process name: [[")) && (p = strstr(p, "],")) &&
        sscanf(p + 2, "%d", &r) == 1)
        b->exit_rank = r;
    if ((p = strstr(s, "Exit code:")) && sscanf(p + 10, "%d", &r) == 1) b->exit_code = r;
    if (!strncmp(s, "tuna: rank ", 11)) { /* dist.c's fault line: the summary says it */
        if (!b->line[0]) {
            snprintf(b->line, sizeof b->line, "%s", s + 6);
            b->line[strcspn(b->line, "\r\n")] = '\0';
        }
        return 0;
    }
    /* "[host:pid] 1 more process has sent help message ..." and the hint after it */
    if (s[0] == '[' && (strstr(s, "help message") || strstr(s, "orte_base_help_aggregate")))
        return 0;
    /* Open MPI's shared-memory copy from a peer that just died ("[host:pid] Read -1, expected
     * 184960, errno = 3": ESRCH), printed by a surviving rank before the job is torn down */
    if (s[0] == '[' && strstr(s, "] Read -1, expected ")) return 0;
    /* libevent inside mpirun, while it tears an aborted job down */
    if (!strncmp(s, "[warn] Epoll ", 13)) return 0;
    /* mpirun failing to show one of its help banners while it aborts the job (seen on a SIGSTOP
     * timeout: "ORTE_ERROR_LOG: Out of resource in file .../show_help.c"); other errors show */
    if (s[0] == '[' && strstr(s, "ORTE_ERROR_LOG") && strstr(s, "show_help.c")) return 0;
    if (b->in) return 0;
    if (!strncmp(s, "tuna", 4)) {
        unsigned long h = hash_line(s);
        for (int i = 0; i < b->n_seen && i < 16; i++)
            if (b->seen[i] == h) return 0;
        b->seen[b->n_seen++ % 16] = h;
    }
    return 1;
}

/* The step of the last step event in the run's metrics.jsonl, and 1 in *done when its last
 * event is a done (the run said how it ended). */
static int metrics_tail(const char *path, int *done) {
    FILE *f = fopen(path, "r");
    *done = 0;
    if (!f) return -1;
    char line[8192];
    int step = 0;
    while (fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "\"step\":");
        if (!strncmp(line, "{\"type\":\"step\"", 14) && p) step = atoi(p + 7);
        if (line[0] == '{') *done = !strncmp(line, "{\"type\":\"done\"", 14);
    }
    fclose(f);
    return step;
}

/* The one line that says why the job ended, without its "tuna: " (step: the last step done,
 * -1 unknown) */
static void job_summary(const Banner *b, int np, int status, int step, char *out, size_t cap) {
    char at[48] = "";
    if (step >= 0) snprintf(at, sizeof at, " after step %d", step);
    if (b->line[0])
        snprintf(out, cap, "%s", b->line);
    else if (b->sig >= 0)
        snprintf(out, cap, "rank %d of %d died (signal %d, %s)%s; the job stopped", b->rank, np,
                 b->sig, b->signame, at);
    else if (b->abort_rank >= 0)
        snprintf(out, cap, "rank %d of %d aborted the job%s", b->abort_rank, np, at);
    else if (b->exit_rank >= 0)
        snprintf(out, cap, "rank %d of %d exited with status %d%s; the job stopped", b->exit_rank,
                 np, b->exit_code, at);
    else
        snprintf(out, cap, "mpirun ended with status %d%s", status, at);
}

/* Appends {"type":"done","status":"error",...} to a run whose ranks could not say it. */
static void metrics_failed(const char *path, int step, const char *msg) {
    FILE *f = fopen(path, "a");
    if (!f) return;
    fprintf(f, "{\"type\":\"done\",\"step\":%d,\"status\":\"error\",\"msg\":\"", step);
    for (const char *p = msg; *p; p++)
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if ((unsigned char)*p >= 0x20)
            fputc(*p, f);
    fprintf(f, "\"}\n");
    fclose(f);
}

static volatile sig_atomic_t mpirun_pid;

static void forward_signal(int sig) {
    if (mpirun_pid > 0) kill((pid_t)mpirun_pid, sig);
}

/* Runs av (mpirun ...) with its stderr read here: Open MPI's banners are read, not shown, and
 * a job that failed leaves one line (which rank, why, where to resume) and, where rank 0 had a
 * run folder but no done event, a done event with status "error" in its metrics.jsonl. Returns
 * the exit status (mpirun's; 1 for a failure it ended with 0). */
static int run_mpirun(char **av, int np) {
    char status_path[] = "/tmp/tuna-nproc-XXXXXX";
    int sfd = mkstemp(status_path);
    if (sfd >= 0) {
        close(sfd);
        setenv("TUNA_NPROC_STATUS", status_path, 1);
    }
    int fds[2];
    if (pipe(fds)) {
        fprintf(stderr, "tuna train: --nproc: pipe: %s\n", strerror(errno));
        return 2;
    }
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        close(fds[1]);
        execvp("mpirun", av);
        fprintf(stderr,
                "tuna train: --nproc %d: cannot run mpirun: %s (apt-get install openmpi-bin)\n", np,
                strerror(errno));
        _exit(127);
    }
    close(fds[1]);
    if (pid < 0) {
        fprintf(stderr, "tuna train: --nproc: fork: %s\n", strerror(errno));
        close(fds[0]);
        return 2;
    }
    /* Ctrl-C reaches mpirun from the terminal (it stops the ranks, which save); a SIGTERM sent
     * to this launcher is passed on */
    mpirun_pid = pid;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = forward_signal;
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGINT, SIG_IGN);
    Banner b = {.rank = -1, .sig = -1, .abort_rank = -1, .exit_rank = -1};
    char line[4096];
    size_t n = 0;
    char c;
    ssize_t got;
    /* lines end at \n or \r (progress lines rewrite themselves); each is shown as it ends */
    while ((got = read(fds[0], &c, 1)) != 0) {
        if (got < 0) {
            if (errno == EINTR) continue;
            break;
        }
        line[n++] = c;
        if (c == '\n' || c == '\r' || n == sizeof line - 1) {
            line[n] = '\0';
            if (banner_line(&b, line)) fputs(line, stderr);
            n = 0;
        }
    }
    if (n) {
        line[n] = '\0';
        if (banner_line(&b, line)) fputs(line, stderr);
    }
    close(fds[0]);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    mpirun_pid = 0;
    int rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    char dir[1100] = "", metrics[1200];
    FILE *f = sfd >= 0 ? fopen(status_path, "r") : NULL;
    if (f && fgets(dir, sizeof dir, f)) dir[strcspn(dir, "\n")] = '\0';
    if (f) fclose(f);
    if (sfd >= 0) unlink(status_path);
    if (rc == 127 && !dir[0]) return 2; /* mpirun itself did not start: said above */
    int done = 0, step = -1;
    if (dir[0]) {
        snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", dir);
        step = metrics_tail(metrics, &done);
    }
    /* the run ended by itself (finished, stopped, an error rank 0 wrote down), or a failure
     * before any run folder: the ranks said why */
    /* ... except a rank killed after rank 0 wrote its done event: the one line still names it
     * (the killed rank is the cause, not what the others then saw; the event is there) */
    int killed = done && rc && b.sig >= 0;
    if (killed)
        b.line[0] = '\0';
    else if (done || (!dir[0] && b.sig < 0 && !b.line[0]))
        return rc;
    if (!rc && !b.line[0] && b.sig < 0) return 0;
    char msg[700];
    job_summary(&b, np, rc, step, msg, sizeof msg);
    if (dir[0] && step >= 0) {
        if (!done) metrics_failed(metrics, step, msg);
        fprintf(stderr, "tuna: %s; continue with --resume %s\n", msg, dir);
    } else
        fprintf(stderr, "tuna: %s\n", msg);
    return rc ? rc : 1;
}

/* --nproc N: the same command as N data-parallel processes on this host, `mpirun -np N` of this
 * binary with the arguments but --nproc (root in a container needs --allow-run-as-root; each
 * rank's threads are its share of the cores, so no binding; N may exceed the cores). mpirun
 * runs as a child (run_mpirun). Returns -1 without --nproc (or N = 1, which is dropped), else
 * the exit status. */
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
    int rc = run_mpirun(av, np);
    free(av);
    return rc;
}

/* RUN/checkpoint-N: *step N and run RUN (cap bytes) when path names a checkpoint folder of a run
 * (its parent holds train_config.json); 0 otherwise. */
static int split_checkpoint(const char *path, char *run, size_t cap, int *step) {
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/')
        n--;
    size_t b = n;
    while (b > 0 && path[b - 1] != '/')
        b--;
    char name[64];
    if (n - b >= sizeof name) return 0;
    memcpy(name, path + b, n - b);
    name[n - b] = '\0';
    int s = train_checkpoint_step(name);
    if (!s || b >= cap) return 0;
    snprintf(run, cap, "%.*s", b > 1 ? (int)(b - 1) : (int)b, path);
    char cfg[4200];
    snprintf(cfg, sizeof cfg, "%s/train_config.json", run);
    if (access(cfg, F_OK)) return 0;
    *step = s;
    return 1;
}

/* Whether dir holds a run with a checkpoint (RUN/train_config.json and a checkpoint-N). */
static int run_has_checkpoint(const char *dir) {
    char p[4200];
    snprintf(p, sizeof p, "%s/train_config.json", dir);
    int step;
    return !access(p, F_OK) && train_checkpoints(dir, &step, 1) > 0;
}

int cmd_train(int argc, char **argv) {
    int lrc = launch_nproc(&argc, argv);
    if (lrc >= 0) return lrc;
    /* every row of the engine's table a flag (a fixed cap here once dropped the last rows,
     * --dist-timeout and --zero, without a word), then the command's own */
    int n_keys = 0, n = 0, is_bool;
    while (train_config_key(n_keys, NULL, NULL))
        n_keys++;
    static struct option *lo;
    static char(*names)[48];
    free(lo);
    free(names);
    lo = xcalloc((size_t)n_keys + 7, sizeof *lo);
    names = xcalloc((size_t)n_keys, sizeof *names);
    for (int i = 0; i < n_keys; i++) {
        const char *key = train_config_key(i, &is_bool, NULL);
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
    int quiet = 0, overwrite = 0, allow = 0, lf_overwrite = 0, c;
    // pass 1: --config / --resume set the base, flags then override it
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        if (c == OPT_CONFIG)
            config = optarg;
        else if (c == OPT_QUIET)
            quiet = 1;
        else if (c == OPT_RESUME)
            resume = optarg;
        else if (c == OPT_HELP) {
            printf("usage: tuna train [FILE.yaml | --config FILE | --resume RUN_DIR] [options]\n"
                   "Fine-tunes a model (full, freeze or LoRA) and writes a run folder.\n\n"
                   "  FILE.yaml              a LLaMA-Factory training config (what "
                   "llamafactory-cli\n"
                   "                         train reads); flags override it\n"
                   "  --config FILE          start from a train_config.json, or a LLaMA-Factory "
                   ".yaml\n"
                   "                         (flags override it)\n"
                   "  --resume RUN_DIR       continue RUN_DIR from its newest checkpoint that "
                   "validates (RUN_DIR/checkpoint-N: from that one)\n"
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
    /* tuna train FILE.yaml, as llamafactory-cli train FILE.yaml (GNU getopt has moved the
     * operands after the options) */
    const char *operand = optind < argc ? argv[optind] : NULL;
    if (operand && lf_config_is_yaml(operand) && !config && !resume && optind + 1 == argc)
        config = operand;
    char path[1200], run_buf[1000];
    int resume_step = 0;
    if (resume && split_checkpoint(resume, run_buf, sizeof run_buf, &resume_step))
        resume = run_buf; /* --resume RUN/checkpoint-N: that checkpoint of RUN */
    if (resume) {
        snprintf(path, sizeof path, "%s/train_config.json", resume);
        config = path;
    }
    const char *yaml = config && lf_config_is_yaml(config) ? config : NULL;
    char lf_resume[1000] = "";
    int lf_resume_set = 0;
    if (config && lf_config_is_yaml(config)) {
        char notes[2048];
        if (lf_config_load(&cfg, config, notes, sizeof notes, &err)) {
            fprintf(stderr, "tuna: %s\n", err.msg);
            return 1;
        }
        if (notes[0] && !quiet) fprintf(stderr, "tuna: %s (LLaMA-Factory): %s\n", config, notes);
        if (lf_config_run_dir(config, &lf_overwrite, &lf_resume_set, lf_resume, sizeof lf_resume,
                              &err)) {
            fprintf(stderr, "tuna: %s\n", err.msg);
            return 1;
        }
    } else if (config && train_config_load(&cfg, config, &err)) {
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
    if (optind < argc && !(argv[optind] == config && optind + 1 == argc)) {
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
    /* a LLaMA-Factory file resumes as llamafactory-cli does: its resume_from_checkpoint, or
     * output_dir's newest checkpoint when overwrite_output_dir is not true; its settings are then
     * the run's (a difference is refused below, or recorded with --allow-changes) */
    if (yaml && !resume && !overwrite && !lf_overwrite &&
        (lf_resume_set || run_has_checkpoint(cfg.output))) {
        if (lf_resume_set && lf_resume[0]) {
            if (!split_checkpoint(lf_resume, run_buf, sizeof run_buf, &resume_step) ||
                strcmp(run_buf, cfg.output)) {
                fprintf(stderr,
                        "tuna: %s: resume_from_checkpoint %s: tuna resumes a checkpoint-N folder "
                        "of output_dir (%s)\n",
                        yaml, lf_resume, cfg.output);
                return 1;
            }
        }
        resume = cfg.output;
        snprintf(path, sizeof path, "%s/train_config.json", resume);
        train_config_defaults(&saved);
        if (train_config_load(&saved, path, &err)) {
            fprintf(stderr, "tuna: %s\n", err.msg);
            return 1;
        }
        if (!quiet)
            fprintf(stderr,
                    "tuna: %s: resuming the run in %s from %s, as LLaMA-Factory does "
                    "(overwrite_output_dir: true starts it over)\n",
                    yaml, resume, lf_resume[0] ? lf_resume : "its newest checkpoint");
    }
    /* resume promises the same run step for step: changed settings are refused, or recorded */
    char changes[2048] = "";
    if (resume && train_config_diff(&saved, &cfg, changes, sizeof changes) && !allow) {
        if (yaml)
            fprintf(stderr,
                    "tuna: %s: output_dir %s holds a run with other settings (%s): "
                    "overwrite_output_dir: true starts it over, --allow-changes resumes it with "
                    "these (recorded in the run)\n",
                    yaml, resume, changes);
        else
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
    if (lf_overwrite && !resume) overwrite = 1; /* overwrite_output_dir: true */
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
                        .stopped = &stopped,
                        .resume_step = resume_step};
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
                     const char *adapter, const HfWriteOpts *o, TunaErr *err) {
    struct stat sb;
    char tmp[4200], marker[4300];
    if (stat(out, &sb)) {
        int rc = dir_begin(out, tmp, sizeof tmp, err);
        if (!rc) rc = model_write_hf_as(m, tmp, o, err);
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
    int rc = model_write_hf_as(m, tmp, o, err);
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
 * GGUF FROM names; adapter: the gguf-lora file or NULL; system: the run's default_system (NULL:
 * the template's own). A Modelfile that cannot be written is a warning: the GGUF itself is
 * complete. */
static void export_modelfile(const char *out, const char *tdir, const char *tname, const char *from,
                             const char *adapter, const char *system) {
    char path[4200];
    snprintf(path, sizeof path, "%.*s.Modelfile", (int)(strlen(out) - 5), out);
    TunaErr err = {0};
    Template *t = NULL;
    int rc = template_load(tdir, tname, &t, &err);
    if (!rc && system) template_set_default_system(t, system);
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
        char tn[256], td[4096], sys[1024];
        const char *tname = tpl, *tdir = NULL;
        int run_tpl =
                cli_default_template(model, adapter, &tname, &tdir, tn, sizeof tn, td, sizeof td);
        if (g > 0)
            export_modelfile(out, tdir, tname, gpath, out,
                             run_tpl ? cli_run_system(model, adapter, sys, sizeof sys) : NULL);
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
    char *jinja = NULL, sys_buf[1024];
    const char *sys = run_tpl ? cli_run_system(model, adapter, sys_buf, sizeof sys_buf) : NULL;
    if ((tpl || run_tpl) && strcmp(tname, "auto")) {
        Template *t = NULL;
        if (template_load(tdir, tname, &t, &err)) {
            fprintf(stderr, "tuna: %s\n", err.msg);
            return 1;
        }
        if (sys) template_set_default_system(t, sys);
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
    if (!rc) export_modelfile(out, tdir, tname, out, NULL, sys);
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
             "the chat template the export carries (default: the run's, else the model's "
             "own)"},
            {"export-dtype", 1, 'D', "TYPE",
             "hf: the tensors' type, auto (default: the base checkpoint's torch_dtype; fp32 for "
             "a GGUF base), fp32, bf16 or f16"},
            {"export-size", 1, 'S', "GB",
             "hf: shards of at most GB gigabytes (10^9 bytes; default 5, as save_pretrained; 0: "
             "one file)"},
            CLI_PRECISION_OPTS,
            {"help", 0, 'h', NULL, "show this help"},
            {NULL, 0, 0, NULL, NULL}};
    struct option lo[CLI_MAX_OPTS];
    cli_longopts(export_opts, lo);
    const char *model = NULL, *adapter = NULL, *format = "hf", *quant = "f16", *tpl = NULL,
               *edtype = "auto";
    double esize = 5;
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
        else if (c == 'D')
            edtype = optarg;
        else if (c == 'S') {
            char *end;
            errno = 0;
            esize = strtod(optarg, &end);
            if (errno || end == optarg || *end || !(esize >= 0) || esize > 1e6) {
                fprintf(stderr,
                        "tuna export: --export-size \"%s\": expected gigabytes a shard, a number "
                        "from 0 (one file) up\n",
                        optarg);
                return 2;
            }
        } else if (c == 'h') {
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
                     "into the full-precision base instead); the tensors are written in "
                     "--export-dtype, one at a time (the model is not held twice), in shards of "
                     "--export-size GB with model.safetensors.index.json when larger.",
                     export_opts);
            return 0;
        } else if ((pc = cli_precision_opt(c, optarg, &prec))) {
            if (pc < 0) return 2;
        } else {
            fprintf(stderr, "tuna export: see --help\n");
            return 2;
        }
    }
    StDtype dt = ST_F32;
    int dt_auto = !strcmp(edtype, "auto");
    if (!dt_auto && strcmp(edtype, "fp32") && strcmp(edtype, "f32") && strcmp(edtype, "bf16") &&
        strcmp(edtype, "f16")) {
        fprintf(stderr, "tuna export: --export-dtype \"%s\": expected auto, fp32, bf16 or f16\n",
                edtype);
        return 2;
    }
    if (!dt_auto) dt = !strcmp(edtype, "bf16") ? ST_BF16 : !strcmp(edtype, "f16") ? ST_F16 : ST_F32;
    if (strcmp(format, "hf")) {
        if (!dt_auto || esize != 5) {
            fprintf(stderr, "tuna export: --export-dtype and --export-size are for --format hf "
                            "(a GGUF export's type is --quant)\n");
            return 2;
        }
        return cmd_export_gguf(model, adapter, format, quant, tpl, out, overwrite, &prec);
    }
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
    /* the chat template: the run's (or --template), as Jinja, where it is not the model's own
     * (a plain model's export keeps its own) */
    char tname_buf[256], tdir_buf[4096], *jinja = NULL, sys_buf[1024];
    const char *tname = tpl, *tdir = NULL, *sys = NULL;
    if (!rc && !tname &&
        cli_run_template(model, adapter, tname_buf, sizeof tname_buf, tdir_buf, sizeof tdir_buf)) {
        tname = tname_buf; /* the run's, read once, and its default_system */
        if (tdir_buf[0]) tdir = tdir_buf;
        sys = cli_run_system(model, adapter, sys_buf, sizeof sys_buf);
    }
    if (!rc && tname) {
        cli_default_template(model, adapter, &tname, &tdir, tname_buf, sizeof tname_buf, tdir_buf,
                             sizeof tdir_buf);
        rc = template_export_jinja(tdir, model, tname, sys, tok, &jinja, &err);
    }
    if (!rc && m->n_qparams && adapter)
        fprintf(stderr,
                "tuna: the base as %s: %zu weights in %s, dequantized to fp32 for the merge (as "
                "peft's merge_and_unload; --dtype fp32 merges into the full-precision base)\n",
                prec.given ? "asked" : "the run trained it", m->n_qparams,
                wtype_info[m->layers[0].qw[LORA_Q] ? m->layers[0].qw[LORA_Q]->type : WT_F32].name);
    if (!rc && dt_auto) /* the base checkpoint's own type, as LLaMA-Factory's export keeps it */
        dt = hf_dtype_by_name(m->cfg.torch_dtype);
    HfWriteOpts ho = {dt, (uint64_t)(esize * 1e9), getenv("TUNA_PROGRESS") ? print_progress : NULL,
                      NULL, jinja};
    rc = rc || export_to(m, out, overwrite, model, adapter, &ho, &err);
    if (rc)
        fprintf(stderr, "tuna: %s\n", err.msg);
    else
        fprintf(stderr, "tuna: wrote %s (%zu parameters in %s%s%s%s)\n", out,
                m->n_params + m->n_qparams, hf_dtype_name(dt),
                dt_auto && dt != ST_F32 ? ", the base checkpoint's type: --export-dtype fp32 "
                                          "keeps every bit of the merge"
                                        : "",
                jinja ? "; chat template " : "", jinja ? tname : "");
    free(jinja);
    tokenizer_free(tok);
    model_free(m);
    backend_free(be);
    return rc ? 1 : 0;
}
