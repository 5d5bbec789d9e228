/* train_out.c: everything a training run puts out (see train_run.h): the events in
 * metrics.jsonl, LLaMA-Factory's trainer_log.jsonl, train_config.json and train.pid, the
 * checkpoints and the final adapter or model, the folder's lock and clean-up, and the lines on
 * the terminal. */
#include "train_run.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "atomic_dir.h"
#include "control.h"
#include "generate.h"
#include "peft.h"
#include "safetensors.h"
#include "template.h"
#include "xalloc.h"

/* Notes the first failed write of a run file: the loop stops the run on it. */
static void note_write(Run *r, FILE *f, const char *name, int ok) {
    if (ok && fflush(f) == 0) return;
    if (!r->write_errno) {
        r->write_errno = errno ? errno : EIO;
        r->write_file_name = name;
    }
}

/* A line of LLaMA-Factory's trainer_log.jsonl: key (loss or eval_loss) = v, and lr unless
 * NaN. */
static void tlog_line(Run *r, const char *key, double v, double lr, double epoch, double elapsed,
                      double eta) {
    if (!r->tlog) return; /* data parallel: ranks but 0 write nothing */
    char lr_part[48] = "";
    if (!isnan(lr)) snprintf(lr_part, sizeof lr_part, ", \"lr\": %.6g", lr);
    errno = 0;
    note_write(r, r->tlog, "trainer_log.jsonl",
               fprintf(r->tlog,
                       "{\"current_steps\": %d, \"total_steps\": %d, \"%s\": %.6g%s, "
                       "\"epoch\": %.4f, \"percentage\": %.2f, \"elapsed_time\": \"%.0fs\", "
                       "\"remaining_time\": \"%.0fs\"}\n",
                       r->step, r->total, key, v, lr_part, epoch, 100.0 * r->step / r->total,
                       elapsed, eta > 0 ? eta : 0) >= 0);
}

/* Appends one event to metrics.jsonl (flushed: watchers follow the file) and the hook. */
void emit(Run *r, const Event *ev) {
    if (r->rank) return; /* data parallel: rank 0 speaks for the run */
    char *line = event_json(ev);
    if (!line) return;
    if (r->metrics) {
        errno = 0;
        note_write(r, r->metrics, "metrics.jsonl", fprintf(r->metrics, "%s\n", line) >= 0);
    } else if (r->n_pending < 256) {
        r->pending = xrealloc(r->pending, sizeof *r->pending * (size_t)(r->n_pending + 1));
        r->pending[r->n_pending++] = xstrdup(line);
    }
    if (r->hooks && r->hooks->on_line) r->hooks->on_line(r->hooks->user, line);
    free(line);
}

static int quiet(const Run *r) {
    return r->hooks && r->hooks->quiet;
}

void say(Run *r, const char *fmt, ...) {
    if (quiet(r) || r->rank) return;
    if (r->bar_shown) fputs("\r\033[K", stderr);
    r->bar_shown = 0;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* The last event of a run: status finished | stopped | error, the error's message, the best
 * eval loss (NaN: none) and the steps skipped. */
void emit_done(Run *r, const char *status, const char *msg, double best, int skipped) {
    static Event e;
    event_clear(&e, EV_DONE);
    e.step = r->step;
    event_str(e.name, sizeof e.name, status);
    event_str(e.text, sizeof e.text, msg);
    e.best_eval_loss = best;
    if (skipped) e.skipped_steps = skipped;
    emit(r, &e);
}

/* A log event: level "info" or "warn". */
void emit_note(Run *r, const char *level, const char *msg) {
    static Event e; /* one run per process at a time; 13 KB off the stack */
    event_clear(&e, EV_LOG);
    e.level = !strcmp(level, "warn");
    event_str(e.text, sizeof e.text, msg);
    emit(r, &e);
}

void emit_log(Run *r, const char *level, const char *msg) {
    emit_note(r, level, msg);
    say(r, "tuna: %s", msg);
}

static int mkdir_p(const char *path) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            if (mkdir(buf, 0755) && errno != EEXIST) return -1;
            *p = '/';
        }
    return mkdir(buf, 0755) && errno != EEXIST ? -1 : 0;
}

static int write_file(const char *path, const char *text) {
    char tmp[1200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return -1;
    int ok = fputs(text, f) >= 0;
    ok &= fclose(f) == 0;
    return ok && !rename(tmp, path) ? 0 : -1;
}

// --- checkpoints: trainable tensors + optimizer moments + trainer state, atomically

/* A checkpoint's tensors made as they are written (safetensors_write_fill), so that a save holds
 * one tensor at a time, not copies of the model and both moments: the trainable values (kind
 * 0), or the optimizer's m then v (kind 1; 2 np tensors), downloaded from backend memory, or
 * from the whole moments a sharded optimizer gathered (mm, vv) */
typedef struct CkptFill {
    const Optim *o; /* the moments' optimizer (its backend the tensors' too) */
    const TrainParam *tp;
    int np, kind;
    float **mm, **vv;
} CkptFill;

static void ckpt_fill(void *ctx, int i, float *dst) {
    const CkptFill *f = ctx;
    Backend *be = f->o->be;
    if (f->kind == 0) {
        be->ops->download(be, dst, f->tp[i].data, sizeof(float) * f->tp[i].n);
        return;
    }
    int k = i % f->np, v = i >= f->np;
    float **whole = v ? f->vv : f->mm;
    if (whole) /* gathered */
        memcpy(dst, whole[k], sizeof(float) * f->tp[k].n);
    else /* this process's moments are the whole tensors' (optim: first 0, len n) */
        be->ops->download(be, dst, v ? f->o->v[k] : f->o->m[k], sizeof(float) * f->tp[k].n);
}

/* Writes the np tensors (kind 0) or 2 np moments (kind 1) named prefix + name#i ("m.", "v."). */
static int save_tensors(const char *path, CkptFill *f, TunaErr *err) {
    int n = f->kind ? 2 * f->np : f->np;
    StWriteTensor *wt = xcalloc((size_t)(n ? n : 1), sizeof *wt);
    char(*names)[210] = xcalloc((size_t)(n ? n : 1), sizeof *names);
    for (int i = 0; i < n; i++) {
        const TrainParam *t = &f->tp[i % f->np];
        snprintf(names[i], sizeof names[i], "%s%s#%d", f->kind ? (i < f->np ? "m." : "v.") : "",
                 t->name, i % f->np); /* GPT-2 parts share a name */
        wt[i] = (StWriteTensor){
                .name = names[i], .dtype = ST_F32, .ndim = 1, .shape = {(int64_t)t->n}};
    }
    int rc = safetensors_write_fill(path, wt, n, NULL, 0, ckpt_fill, f, err);
    free(wt);
    free(names);
    return rc;
}

/* The tensors prefix + name#i of an open checkpoint file, each F32 of its tensor's size, as
 * pointers into the file's mapping (data): a resume copies them into backend memory with no host
 * copy of the model and its moments. */
static int find_tensors(const SafeTensors *st, const char *path, const TrainParam *tp, int np,
                        const float **data, const char *prefix, TunaErr *err) {
    for (int i = 0; i < np; i++) {
        char nm[220];
        snprintf(nm, sizeof nm, "%s%s#%d", prefix, tp[i].name, i);
        const StTensor *t = safetensors_find(st, nm);
        if (!t || st_tensor_numel(t) != tp[i].n)
            return tuna_errf(err, TUNA_EFORMAT,
                             "%s: \"%s\" missing or of the wrong size (another method or model?)",
                             path, nm);
        if (t->dtype != ST_F32 || (uintptr_t)t->data % sizeof(float))
            return tuna_errf(err, TUNA_EFORMAT, "%s: \"%s\" is %s, not the F32 tuna writes", path,
                             nm, st_dtype_name(t->dtype));
        data[i] = t->data;
    }
    return 0;
}

static float **host_bufs(const TrainParam *tp, int np) {
    float **h = xcalloc((size_t)np, sizeof *h);
    for (int i = 0; i < np; i++)
        h[i] = xmalloc(sizeof(float) * (tp[i].n ? tp[i].n : 1));
    return h;
}

static void free_bufs(float **h, int np) {
    if (!h) return;
    for (int i = 0; i < np; i++)
        free(h[i]);
    free(h);
}

static int cmp_ckpt(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* A full or freeze run's model as a Hugging Face checkpoint (fp32) in tmp, its tokenizer with the
 * run's chat template where that is not the model's own (template_export_jinja; a pt run,
 * trained on plain text, keeps the model's) */
static int run_write_hf(Run *r, const char *tmp, TunaErr *err) {
    if (!r->hf_template_made && strcmp(r->cfg->stage, "pt")) { /* once a run: it cannot change */
        int rc = template_export_jinja(r->cfg->templates_dir, r->cfg->model, r->cfg->template_name,
                                       r->cfg->default_system, r->tok, &r->hf_template, err);
        if (rc) return rc;
    }
    r->hf_template_made = 1;
    HfWriteOpts o = {ST_F32, HF_SHARD_BYTES, NULL, NULL, r->hf_template};
    return model_write_hf_as(r->m, tmp, &o, err);
}

int train_checkpoint_step(const char *name) {
    int s;
    char tail;
    return sscanf(name, "checkpoint-%d%c", &s, &tail) == 1 && s >= 1 ? s : 0;
}

int train_checkpoints(const char *dir, int *steps, int cap) {
    DIR *d = opendir(dir);
    int n = 0;
    if (!d) return 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < cap) {
        int s = train_checkpoint_step(e->d_name);
        if (s) steps[n++] = s;
    }
    closedir(d);
    qsort(steps, (size_t)n, sizeof *steps, cmp_ckpt);
    return n;
}

/* Whether checkpoint-STEP of this run is on disk. */
static int ckpt_exists(const Run *r, int step) {
    char dir[1200];
    struct stat sb;
    snprintf(dir, sizeof dir, "%s/checkpoint-%d", r->dir, step);
    return stat(dir, &sb) == 0 && S_ISDIR(sb.st_mode);
}

int save_checkpoint(Run *r, TunaErr *err) {
    char dir[1200], tmp[1300], path[1400];
    int np, rc;
    const TrainParam *tp = train_params(r->ts, &np);
    /* the moments whole on rank 0, as one process has them (sharded: each rank sends its slice,
     * so every rank is here, and before anything that could fail on rank 0 alone) */
    if (r->rank && r->opt.world == 1) return 0;
    /* sharded: rank 0 gathers the whole moments first (one process's are written as they are) */
    int gather = r->opt.world > 1;
    float **mm = gather && !r->rank ? host_bufs(tp, np) : NULL,
          **vv = gather && !r->rank ? host_bufs(tp, np) : NULL;
    rc = gather ? optim_gather(&r->opt, mm, vv, err) : 0;
    if (rc || r->rank || r->write_errno) { /* after a failed write nothing more is written */
        free_bufs(mm, np);
        free_bufs(vv, np);
        return rc;
    }
    snprintf(dir, sizeof dir, "%s/checkpoint-%d", r->dir, r->step);
    if ((rc = dir_begin(dir, tmp, sizeof tmp, err))) {
        free_bufs(mm, np);
        free_bufs(vv, np);
        return rc;
    }
    CkptFill f = {&r->opt, tp, np, 0, mm, vv};
    snprintf(path, sizeof path, "%s/trainable.safetensors", tmp);
    rc = save_tensors(path, &f, err);
    if (!rc) {
        snprintf(path, sizeof path, "%s/optimizer.safetensors", tmp);
        f.kind = 1;
        rc = save_tensors(path, &f, err);
    }
    if (!rc && r->have_vh) { /* rm: the value head and its own AdamW moments */
        rc = vhead_save(&r->vh, tmp, err);
        CkptFill fv = {&r->vh_opt, r->vh.tp, 2, 1, NULL, NULL};
        snprintf(path, sizeof path, "%s/" VHEAD_OPT_FILE, tmp);
        if (!rc) rc = save_tensors(path, &fv, err);
    }
    free_bufs(mm, np);
    free_bufs(vv, np);
    if (!rc) { /* a usable artifact in every checkpoint: the adapter, or the HF checkpoint */
        TrainMethod mt = train_setup(r->ts)->method;
        if (train_method_adapter(mt))
            rc = adapter_write(r->ts, tmp, r->cfg->model, err);
        else
            rc = run_write_hf(r, tmp, err);
    }
    /* load_best_model_at_end: the best checkpoint as Hugging Face's _save_checkpoint names it,
     * checkpoint-best_step where that is this one or still on disk (else the one before) */
    int best_ckpt = r->best_ckpt;
    double best_ckpt_eval = r->best_ckpt_eval;
    if (r->cfg->load_best_model_at_end && r->best_step > 0 &&
        (r->best_step == r->step || ckpt_exists(r, r->best_step))) {
        best_ckpt = r->best_step;
        best_ckpt_eval = r->best_eval;
    }
    if (!rc) {
        cJSON *s = cJSON_CreateObject();
        cJSON_AddNumberToObject(s, "global_step", r->step);
        cJSON_AddNumberToObject(s, "epoch", r->batcher.epoch);
        cJSON_AddNumberToObject(s, "cursor", (double)r->batcher.cursor);
        cJSON_AddNumberToObject(s, "optimizer_t", r->opt.t);
        cJSON_AddNumberToObject(s, "best_eval_loss", isfinite(r->best_eval) ? r->best_eval : -1);
        cJSON_AddNumberToObject(s, "best_global_step", r->best_step);
        cJSON_AddNumberToObject(s, "best_checkpoint", best_ckpt);
        cJSON_AddNumberToObject(s, "best_checkpoint_eval_loss", best_ckpt ? best_ckpt_eval : -1);
        cJSON_AddNumberToObject(s, "early_stopping_evals", r->es_evals);
        if (r->sched.type == SCHED_PLATEAU) { /* ReduceLROnPlateau's state */
            cJSON_AddNumberToObject(s, "plateau_lr", r->sched.p_lr);
            cJSON_AddNumberToObject(s, "plateau_best",
                                    isfinite(r->sched.p_best) ? r->sched.p_best : 0);
            cJSON_AddBoolToObject(s, "plateau_has_best", isfinite(r->sched.p_best));
            cJSON_AddNumberToObject(s, "plateau_bad", r->sched.p_bad);
            cJSON_AddNumberToObject(s, "plateau_cooldown", r->sched.p_cool);
        }
        cJSON_AddNumberToObject(s, "total_steps", r->total);
        cJSON_AddNumberToObject(s, "elapsed", time_now() - r->t0);
        char *txt = cJSON_Print(s);
        cJSON_Delete(s);
        snprintf(path, sizeof path, "%s/trainer_state.json", tmp);
        if (write_file(path, txt)) rc = tuna_errf(err, TUNA_EIO, "%s: cannot write", path);
        free(txt);
    }
    if (!rc) rc = dir_commit(tmp, dir, err);
    if (rc) {
        dir_remove(tmp);
        return rc;
    }
    r->best_ckpt = best_ckpt;
    r->best_ckpt_eval = best_ckpt_eval;
    /* rotation counts this run's checkpoints only: a checkpoint-N past the current step is
     * another run's (or a stray folder) and is neither counted nor deleted. As transformers'
     * rotate_checkpoints: the newest and the best (load_best_model_at_end) are kept, the oldest
     * others deleted down to save_total_limit (or to those two). */
    int steps[4096], n = train_checkpoints(r->dir, steps, 4096), limit = r->cfg->save_total_limit;
    while (n > 0 && steps[n - 1] > r->step)
        n--;
    int keep_best = n > 0 && best_ckpt > 0 && best_ckpt != steps[n - 1];
    int keep = limit > 1 + keep_best ? limit : 1 + keep_best;
    for (int i = 0, left = n; i < n && limit > 0 && left > keep; i++) {
        if (i == n - 1 || (keep_best && steps[i] == best_ckpt)) continue;
        snprintf(path, sizeof path, "%s/checkpoint-%d", r->dir, steps[i]);
        dir_remove(path);
        left--;
    }
    static Event e;
    event_clear(&e, EV_CHECKPOINT);
    e.step = r->step;
    snprintf(e.name, sizeof e.name, "checkpoint-%d", r->step);
    emit(r, &e);
    return 0;
}

/* One number of trainer_state.json, range-checked; integer: a whole number. */
static int state_num(const cJSON *s, const char *key, double lo, double hi, int integer,
                     double *out, const char *path, TunaErr *err) {
    const cJSON *v = cJSON_GetObjectItem(s, key);
    if (!cJSON_IsNumber(v)) return tuna_errf(err, TUNA_EFORMAT, "%s: \"%s\" is missing", path, key);
    double x = v->valuedouble;
    if (!isfinite(x) || x < lo || x > hi || (integer && x != floor(x)))
        return tuna_errf(err, TUNA_EFORMAT, "%s: \"%s\" must be %s from %g to %g, got %g", path,
                         key, integer ? "an integer" : "a number", lo, hi, x);
    *out = x;
    return 0;
}

/* Loads checkpoint-STEP after checking every field of its trainer_state.json; on an error
 * the run's step, optimizer count and clock are left as they were. */
static int load_checkpoint(Run *r, int step, TunaErr *err) {
    char dir[1200], path[1400];
    snprintf(dir, sizeof dir, "%s/checkpoint-%d", r->dir, step);
    snprintf(path, sizeof path, "%s/trainer_state.json", dir);
    char *txt = xread_file(path, NULL);
    if (!txt) return tuna_errf(err, TUNA_EIO, "%s: cannot read: %s", path, strerror(errno));
    cJSON *s = cJSON_Parse(txt);
    free(txt);
    if (!cJSON_IsObject(s)) {
        cJSON_Delete(s);
        return tuna_errf(err, TUNA_EFORMAT, "%s: invalid JSON", path);
    }
    double gs = 0, ep = 0, cu = 0, ot = 0, be = -1, el = 0, ts = 0, bs = 0, bc = 0, bce = -1,
           es = 0;
    double bpe = (double)batcher_batches_per_epoch(&r->batcher);
    int rc = state_num(s, "global_step", 1, 1e9, 1, &gs, path, err);
    if (!rc && gs != step)
        rc = tuna_errf(err, TUNA_EFORMAT, "%s: \"global_step\" is %.0f in checkpoint-%d", path, gs,
                       step);
    if (!rc) rc = state_num(s, "epoch", 0, 1e6, 1, &ep, path, err);
    if (!rc) rc = state_num(s, "cursor", 0, bpe, 1, &cu, path, err);
    if (!rc) rc = state_num(s, "optimizer_t", 0, gs, 1, &ot, path, err);
    if (!rc && cJSON_GetObjectItem(s, "best_eval_loss"))
        rc = state_num(s, "best_eval_loss", -1, 1e30, 0, &be, path, err);
    if (!rc && cJSON_GetObjectItem(s, "elapsed"))
        rc = state_num(s, "elapsed", 0, 1e10, 0, &el, path, err);
    if (!rc && cJSON_GetObjectItem(s, "total_steps"))
        rc = state_num(s, "total_steps", 1, 1e9, 1, &ts, path, err);
    if (!rc && cJSON_GetObjectItem(s, "best_global_step"))
        rc = state_num(s, "best_global_step", 0, gs, 1, &bs, path, err);
    if (!rc && cJSON_GetObjectItem(s, "best_checkpoint"))
        rc = state_num(s, "best_checkpoint", 0, gs, 1, &bc, path, err);
    if (!rc && cJSON_GetObjectItem(s, "best_checkpoint_eval_loss"))
        rc = state_num(s, "best_checkpoint_eval_loss", -1, 1e30, 0, &bce, path, err);
    if (!rc && cJSON_GetObjectItem(s, "early_stopping_evals"))
        rc = state_num(s, "early_stopping_evals", 0, 1e9, 1, &es, path, err);
    double plr = r->sched.p_lr, pbest = r->sched.p_best, pbad = 0, pcool = 0;
    if (!rc && r->sched.type == SCHED_PLATEAU && cJSON_GetObjectItem(s, "plateau_lr")) {
        rc = state_num(s, "plateau_lr", 0, 1e6, 0, &plr, path, err);
        if (!rc) rc = state_num(s, "plateau_best", -1e300, 1e300, 0, &pbest, path, err);
        if (!rc) rc = state_num(s, "plateau_bad", 0, 1e9, 1, &pbad, path, err);
        if (!rc) rc = state_num(s, "plateau_cooldown", 0, 1e9, 1, &pcool, path, err);
        if (!rc && !cJSON_IsTrue(cJSON_GetObjectItem(s, "plateau_has_best")))
            pbest = r->sched.p_max ? -INFINITY : INFINITY;
    }
    /* the epoch the cursor says it is in: at most one epoch past what the steps can reach */
    if (!rc && bpe > 0 && ep > floor(gs * r->cfg->grad_accum / bpe) + 1)
        rc = tuna_errf(err, TUNA_EFORMAT, "%s: \"epoch\" %.0f is past what %.0f steps reach", path,
                       ep, gs);
    cJSON_Delete(s);
    if (rc) return rc;
    int np;
    const TrainParam *tp = train_params(r->ts, &np);
    /* pointers into the two files' mappings, uploaded once all of them are found */
    const float **p = xcalloc((size_t)(np ? np : 1), sizeof *p),
                **mm = xcalloc((size_t)(np ? np : 1), sizeof *mm),
                **vv = xcalloc((size_t)(np ? np : 1), sizeof *vv);
    SafeTensors *stp = NULL, *sto = NULL;
    char opath[1400];
    snprintf(path, sizeof path, "%s/trainable.safetensors", dir);
    snprintf(opath, sizeof opath, "%s/optimizer.safetensors", dir);
    rc = safetensors_open(path, &stp, err);
    if (!rc) rc = find_tensors(stp, path, tp, np, p, "", err);
    if (!rc) rc = safetensors_open(opath, &sto, err);
    if (!rc) rc = find_tensors(sto, opath, tp, np, mm, "m.", err);
    if (!rc) rc = find_tensors(sto, opath, tp, np, vv, "v.", err);
    /* rm: the value head's moments (its weights: vhead_load below) */
    SafeTensors *stv = NULL;
    const float *vm[2], *vv2[2];
    if (!rc && r->have_vh) {
        snprintf(opath, sizeof opath, "%s/" VHEAD_OPT_FILE, dir);
        rc = safetensors_open(opath, &stv, err);
        if (!rc) rc = find_tensors(stv, opath, r->vh.tp, 2, vm, "m.", err);
        if (!rc) rc = find_tensors(stv, opath, r->vh.tp, 2, vv2, "v.", err);
        if (!rc) rc = vhead_load(&r->vh, dir, err);
    }
    if (!rc) rc = batcher_seek(&r->batcher, (int)ep, (size_t)cu, err);
    if (!rc) {
        train_upload_params(r->ts, p);
        optim_upload(&r->opt, mm, vv);
        if (r->have_vh) {
            optim_upload(&r->vh_opt, vm, vv2);
            r->vh_opt.t = (int)ot;
        }
        r->step = (int)gs;
        r->opt.t = (int)ot;
        r->best_eval = be >= 0 ? be : (double)INFINITY;
        r->best_step = (int)bs;
        r->best_ckpt = (int)bc;
        r->best_ckpt_eval = bce;
        r->es_evals = (int)es;
        r->sched.p_lr = plr;
        r->sched.p_best = pbest;
        r->sched.p_bad = (int)pbad;
        r->sched.p_cool = (int)pcool;
        r->t0 -= el;
    }
    safetensors_free(stp);
    safetensors_free(sto);
    safetensors_free(stv);
    free(p);
    free(mm);
    free(vv);
    return rc;
}

int load_best_result(Run *r, TunaErr *err) {
    char msg[600];
    /* the run's last save (the result) names the best as a checkpoint would: this step when its
     * eval was the best, checkpoint-best_step when saved, else the best saved before */
    if (r->best_step == r->step || r->best_step <= 0) return 0;
    int step = ckpt_exists(r, r->best_step) ? r->best_step : r->best_ckpt;
    double loss = step == r->best_step ? r->best_eval : r->best_ckpt_eval;
    if (step <= 0 || !ckpt_exists(r, step)) {
        snprintf(msg, sizeof msg,
                 "load_best_model_at_end: the lowest eval loss (step %d) was not saved in a "
                 "checkpoint: the result is the last step's",
                 r->best_step);
        emit_log(r, "warn", msg);
        return 0;
    }
    char dir[1200], path[1400];
    snprintf(dir, sizeof dir, "%s/checkpoint-%d", r->dir, step);
    snprintf(path, sizeof path, "%s/trainable.safetensors", dir);
    int np;
    const TrainParam *tp = train_params(r->ts, &np);
    const float **p = xcalloc((size_t)(np ? np : 1), sizeof *p);
    SafeTensors *st = NULL;
    int rc = safetensors_open(path, &st, err);
    if (!rc) rc = find_tensors(st, path, tp, np, p, "", err);
    if (!rc && r->have_vh) rc = vhead_load(&r->vh, dir, err);
    if (!rc) train_upload_params(r->ts, p);
    safetensors_free(st);
    free(p);
    if (rc) return rc;
    snprintf(msg, sizeof msg,
             "load_best_model_at_end: the result is checkpoint-%d's (eval loss %.6g), not step "
             "%d's",
             step, loss, r->step);
    emit_log(r, "info", msg);
    return 0;
}

/* Resume: the newest checkpoint-N that validates, older ones when it does not (each skip
 * is said and logged). Nothing on disk changes here. */
int resume_pick(Run *r, TunaErr *err) {
    int want = r->hooks ? r->hooks->resume_step : 0;
    if (want > 0) { /* that checkpoint, or nothing */
        char msg[200];
        int rc = load_checkpoint(r, want, err);
        if (rc) return rc;
        snprintf(msg, sizeof msg, "resumed from checkpoint-%d", r->step);
        emit_log(r, "info", msg);
        return 0;
    }
    int steps[4096], n = train_checkpoints(r->dir, steps, 4096);
    char first[700] = "", msg[900];
    for (int i = n - 1; i >= 0; i--) {
        TunaErr e = {0};
        if (!load_checkpoint(r, steps[i], &e)) {
            if (first[0]) {
                snprintf(msg, sizeof msg, "resumed from checkpoint-%d, the newest that validates",
                         steps[i]);
                emit_log(r, "warn", msg);
            } else {
                snprintf(msg, sizeof msg, "resumed from checkpoint-%d", r->step);
                emit_log(r, "info", msg);
            }
            return 0;
        }
        snprintf(msg, sizeof msg, "checkpoint-%d skipped: %s", steps[i], e.msg);
        emit_log(r, "warn", msg);
        if (!first[0]) snprintf(first, sizeof first, "%s", e.msg);
    }
    if (!n)
        return tuna_errf(err, TUNA_ENOTFOUND,
                         "%s: no checkpoint-N folder to resume from; nothing was changed", r->dir);
    return tuna_errf(err, TUNA_EFORMAT,
                     "%s: no checkpoint validates (newest: %s); nothing was changed", r->dir,
                     first);
}

/* On resume, metrics past the checkpoint came from the interrupted run: drop them. */
static int metrics_truncate(const char *path, int step, TunaErr *err) {
    char *text = xread_file(path, NULL);
    if (!text) return 0;
    char tmp[1200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        free(text);
        return tuna_errf(err, TUNA_EIO, "%s: cannot write: %s", tmp, strerror(errno));
    }
    int ok = 1;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        cJSON *j = cJSON_Parse(line);
        const cJSON *s = cJSON_GetObjectItem(j, "step"), *t = cJSON_GetObjectItem(j, "type");
        int keep = j && (!cJSON_IsNumber(s) || s->valueint <= step);
        if (cJSON_IsString(t) && !strcmp(t->valuestring, "done")) keep = 0;
        if (keep && fprintf(f, "%s\n", line) < 0) ok = 0;
        cJSON_Delete(j);
    }
    if (fclose(f)) ok = 0;
    free(text);
    if (!ok || rename(tmp, path)) {
        int e = errno;
        unlink(tmp);
        return tuna_errf(err, TUNA_EIO, "%s: cannot write: %s", path, strerror(e));
    }
    return 0;
}

/* Takes every command written to RUN/control since the last call: the file is renamed first,
 * so a writer appending meanwhile starts a new one (a writer that opened the file before the
 * rename writes its line again when the file is no longer RUN/control: ui/source.c
 * follow_command). Returns CTL_* bits
 * (control_parse); lines it does not know are one warning. */
int read_control(Run *r) {
    char path[1200], taken[1300];
    snprintf(path, sizeof path, "%s/control", r->dir);
    snprintf(taken, sizeof taken, "%s/control.reading", r->dir);
    if (rename(path, taken)) return 0;
    FILE *f = fopen(taken, "r");
    int bits = 0;
    if (f) {
        static char text[CONTROL_MAX_BYTES];
        size_t n = fread(text, 1, sizeof text, f);
        int more = fgetc(f) != EOF, bad = 0;
        fclose(f);
        char first[48];
        bits = control_parse(text, n, first, sizeof first, &bad);
        if (bad || more) {
            char msg[200];
            snprintf(msg, sizeof msg,
                     "control: %d unknown command%s (first: \"%s\"; pause, resume, save, stop)%s",
                     bad, bad == 1 ? "" : "s", first,
                     more ? "; past 64 KiB of the file was ignored" : "");
            emit_log(r, "warn", msg);
        }
    }
    unlink(taken);
    return bits;
}

/* Seconds as "42s", "3m05s" or "1h02m". */
void fmt_secs(double t, char *out, size_t cap) {
    if (!(t >= 0) || !isfinite(t)) {
        snprintf(out, cap, "?");
        return;
    }
    long x = (long)(t + 0.5);
    if (x < 60)
        snprintf(out, cap, "%lds", x);
    else if (x < 3600)
        snprintf(out, cap, "%ldm%02lds", x / 60, x % 60);
    else
        snprintf(out, cap, "%ldh%02ldm", x / 3600, x / 60 % 60);
}

/* The bar on a terminal; without one a line every progress_every seconds (and the last). */
void progress(Run *r, double loss, double lr_now, double tps, double real_tps, double eta,
              double *last_line) {
    if (quiet(r) || r->rank) return;
    char e[32];
    fmt_secs(eta, e, sizeof e);
    if (isatty(2)) {
        int w = 30, done = r->total ? (int)((double)w * r->step / r->total) : w;
        char bar[64];
        for (int i = 0; i < w; i++)
            bar[i] = i < done ? '#' : '.';
        bar[w] = '\0';
        fprintf(stderr, "\r[%s] %d/%d loss %.4f  %.0f tok/s (%.0f real)  eta %s\033[K", bar,
                r->step, r->total, loss, tps, real_tps, e);
        r->bar_shown = 1;
        if (r->step == r->total) {
            fputc('\n', stderr);
            r->bar_shown = 0;
        }
        return;
    }
    double every = r->hooks && r->hooks->progress_every > 0 ? r->hooks->progress_every : 10,
           now = time_now();
    if (now - *last_line < every && r->step != r->total && *last_line > 0) return;
    *last_line = now;
    say(r, "step %d/%d loss %.4f lr %.3g %.0f tok/s (%.0f real) eta %s", r->step, r->total, loss,
        lr_now, tps, real_tps, e);
}

/* Moves every file of tmp into dir (each rename is atomic). */
static int publish_files(const char *tmp, const char *dir, TunaErr *err) {
    DIR *d = opendir(tmp);
    if (!d) return tuna_errf(err, TUNA_EIO, "%s: cannot read", tmp);
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d)) && !rc) {
        if (e->d_name[0] == '.') continue;
        char a[1600], b[1600];
        snprintf(a, sizeof a, "%s/%s", tmp, e->d_name);
        snprintf(b, sizeof b, "%s/%s", dir, e->d_name);
        if (rename(a, b)) rc = tuna_errf(err, TUNA_EIO, "%s: cannot write: %s", b, strerror(errno));
    }
    closedir(d);
    return rc;
}

/* Files that make a folder a run of ours (setup_config.json / train.log / train.pid, which the
 * workbench writes before it starts the trainer, do not). */
static const char *const run_files[] = {"train_config.json",         "metrics.jsonl",
                                        "trainer_log.jsonl",         "adapter_config.json",
                                        "adapter_model.safetensors", "model.safetensors"};

static int holds_run(const char *dir) {
    char path[1400];
    for (size_t i = 0; i < sizeof run_files / sizeof run_files[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, run_files[i]);
        if (access(path, F_OK) == 0) return 1;
    }
    int steps[4];
    return train_checkpoints(dir, steps, 4) > 0;
}

/* "NAME.tmp-PID" (or, with tag ".old-", NAME.old-PID) whose process is gone: an interrupted
 * atomic write. */
static int stale_tagged(const char *name, const char *tag) {
    const char *t = strstr(name, tag);
    if (!t) return 0;
    char *end;
    long pid = strtol(t + 5, &end, 10);
    if (end == t + 5 || *end || pid <= 0) return 0;
    return pid != (long)getpid() && kill((pid_t)pid, 0) && errno == ESRCH;
}

static int stale_tmp(const char *name) {
    return stale_tagged(name, ".tmp-");
}

/* Removes checkpoint-N.tmp-PID (and the like) left in dir by a trainer that died, and
 * RUN.tmp-PID beside it. */
static void clean_stale(Run *r) {
    char path[1600], msg[1700];
    DIR *d = opendir(r->dir);
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (stale_tmp(e->d_name)) {
            snprintf(path, sizeof path, "%s/%s", r->dir, e->d_name);
            dir_remove(path);
            snprintf(msg, sizeof msg, "removed %s (left by an interrupted write)", e->d_name);
            emit_log(r, "info", msg);
        } else if (stale_tagged(e->d_name, ".old-")) {
            /* checkpoint-N.old-PID: the replaced copy; when the new one never arrived it is
             * the checkpoint, so it goes back under its name */
            char base[1600];
            snprintf(path, sizeof path, "%s/%s", r->dir, e->d_name);
            snprintf(base, sizeof base, "%s", path);
            *strstr(base + strlen(r->dir), ".old-") = '\0';
            if (access(base, F_OK) && !rename(path, base)) {
                snprintf(msg, sizeof msg, "restored %s (a replacement was interrupted)",
                         base + strlen(r->dir) + 1);
            } else {
                dir_remove(path);
                snprintf(msg, sizeof msg, "removed %s (left by an interrupted write)", e->d_name);
            }
            emit_log(r, "info", msg);
        }
    if (d) closedir(d);
    char parent[1100];
    snprintf(parent, sizeof parent, "%s", r->dir);
    char *slash = strrchr(parent, '/');
    const char *base = slash ? slash + 1 : parent;
    if (slash)
        *slash = '\0';
    else
        snprintf(parent, sizeof parent, ".");
    size_t bl = strlen(base);
    char b2[1100];
    snprintf(b2, sizeof b2, "%s", base);
    d = opendir(slash && !parent[0] ? "/" : parent);
    while (d && (e = readdir(d)))
        if (!strncmp(e->d_name, b2, bl) && !strncmp(e->d_name + bl, ".tmp-", 5) &&
            stale_tmp(e->d_name)) {
            snprintf(path, sizeof path, "%s/%s", slash && !parent[0] ? "" : parent, e->d_name);
            dir_remove(path);
        }
    if (d) closedir(d);
}

/* Reads the pid in a held lock file (0 if none). */
static long lock_holder(int fd) {
    char buf[32] = "";
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    buf[n > 0 ? n : 0] = '\0';
    return strtol(buf, NULL, 10);
}

static int lock_busy(Run *r, int fd, TunaErr *err) {
    long pid = lock_holder(fd);
    close(fd);
    r->lock_fd = -1;
    return tuna_errf(err, TUNA_EINVAL, "another tuna train (pid %ld) is writing %s", pid, r->dir);
}

/* Takes the run folder: refuses a folder another trainer holds, and one that holds a run
 * unless resuming or overwriting; creates it, locks RUN/.lock, cleans stale temporaries. */
int run_claim(Run *r, int resume, TunaErr *err) {
    char path[1200];
    struct stat sb;
    int exists = stat(r->dir, &sb) == 0;
    if (exists && !S_ISDIR(sb.st_mode))
        return tuna_errf(err, TUNA_EINVAL, "%s: exists and is not a folder", r->dir);
    if (resume && !exists)
        return tuna_errf(err, TUNA_ENOTFOUND, "%s: no such run folder to resume", r->dir);
    snprintf(path, sizeof path, "%s/.lock", r->dir);
    r->lock_fd = -1;
    if (exists) { /* a held lock first: that answer is the one that helps */
        int fd = open(path, O_RDWR | O_CLOEXEC);
        if (fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) && errno == EWOULDBLOCK)
            return lock_busy(r, fd, err);
        r->lock_fd = fd;
    }
    int overwrite = r->hooks && r->hooks->overwrite;
    if (exists && !resume && !overwrite && holds_run(r->dir)) {
        if (r->lock_fd >= 0) close(r->lock_fd);
        r->lock_fd = -1;
        return tuna_errf(err, TUNA_EINVAL,
                         "%s already holds a run: continue it with --resume %s, or replace it "
                         "with --overwrite",
                         r->dir, r->dir);
    }
    if (!exists && mkdir_p(r->dir))
        return tuna_errf(err, TUNA_EIO, "%s: cannot create: %s", r->dir, strerror(errno));
    if (r->lock_fd < 0) {
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) return tuna_errf(err, TUNA_EIO, "%s: cannot create: %s", path, strerror(errno));
        if (flock(fd, LOCK_EX | LOCK_NB)) {
            if (errno == EWOULDBLOCK) return lock_busy(r, fd, err);
            emit_log(r, "warn",
                     "this file system does not lock files: nothing stops a second "
                     "trainer writing this run");
        }
        r->lock_fd = fd;
    }
    char pid[32];
    int pl = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(r->lock_fd, 0) || pwrite(r->lock_fd, pid, (size_t)pl, 0) != pl) {
        /* the lock holds without the pid; only the message loses it */
    }
    clean_stale(r);
    if (overwrite && !resume && exists) { /* the old run's files and checkpoints, not others */
        static const char *const more[] = {"config.json",     "generation_config.json",
                                           "tokenizer.json",  "tokenizer_config.json",
                                           "tokenizer.model", "control"};
        for (size_t i = 0; i < sizeof run_files / sizeof run_files[0] + 6; i++) {
            const char *f = i < sizeof run_files / sizeof run_files[0]
                                    ? run_files[i]
                                    : more[i - sizeof run_files / sizeof run_files[0]];
            snprintf(path, sizeof path, "%s/%s", r->dir, f);
            unlink(path);
        }
        int steps[4096], n = train_checkpoints(r->dir, steps, 4096);
        for (int i = 0; i < n; i++) {
            snprintf(path, sizeof path, "%s/checkpoint-%d", r->dir, steps[i]);
            dir_remove(path);
        }
        if (n) {
            char msg[1300];
            snprintf(msg, sizeof msg, "--overwrite: replaced the run in %s (%d old checkpoints)",
                     r->dir, n);
            emit_log(r, "info", msg);
        }
    }
    return 0;
}

/* Writes train_config.json (on resume keeping its history, plus this resume's changes) and
 * opens the metrics files; the events held back until now go first. */
int run_files_open(Run *r, int resume, TunaErr *err) {
    const TrainConfig *c = r->cfg;
    char path[1200];
    int rc = 0;
    snprintf(path, sizeof path, "%s/train.pid", r->dir);
    char pid[32];
    snprintf(pid, sizeof pid, "%d\n", (int)getpid());
    write_file(path, pid);
    snprintf(path, sizeof path, "%s/train_config.json", r->dir);
    cJSON *hist = NULL;
    if (resume) {
        char *old = xread_file(path, NULL);
        cJSON *o = old ? cJSON_Parse(old) : NULL;
        hist = cJSON_DetachItemFromObject(o, "history");
        cJSON_Delete(o);
        free(old);
    }
    const char *changes = r->hooks ? r->hooks->changes : NULL;
    char *cj = train_config_json(c);
    cJSON *conf = cJSON_Parse(cj);
    free(cj);
    if (changes && *changes) {
        if (!cJSON_IsArray(hist)) {
            cJSON_Delete(hist);
            hist = cJSON_CreateArray();
        }
        cJSON *h = cJSON_CreateObject();
        cJSON_AddNumberToObject(h, "time", (double)time(NULL));
        cJSON_AddNumberToObject(h, "step", r->step);
        cJSON_AddStringToObject(h, "changes", changes);
        cJSON_AddItemToArray(hist, h);
    }
    if (hist) cJSON_AddItemToObject(conf, "history", hist);
    char *json = cJSON_Print(conf);
    cJSON_Delete(conf);
    if (write_file(path, json))
        rc = tuna_errf(err, TUNA_EIO, "%s: cannot write: %s", path, strerror(errno));
    free(json);
    if (rc) return rc;
    snprintf(path, sizeof path, "%s/metrics.jsonl", r->dir);
    if (resume && (rc = metrics_truncate(path, r->step, err))) return rc;
    if (!resume) unlink(path);
    if (!(r->metrics = fopen(path, "a")))
        return tuna_errf(err, TUNA_EIO, "%s: cannot write: %s", path, strerror(errno));
    snprintf(path, sizeof path, "%s/trainer_log.jsonl", r->dir);
    if (resume && (rc = metrics_truncate(path, r->step, err))) return rc;
    if (!resume) unlink(path);
    if (!(r->tlog = fopen(path, "a")))
        return tuna_errf(err, TUNA_EIO, "%s: cannot write: %s", path, strerror(errno));
    for (int i = 0; i < r->n_pending; i++) {
        errno = 0;
        note_write(r, r->metrics, "metrics.jsonl", fprintf(r->metrics, "%s\n", r->pending[i]) >= 0);
        free(r->pending[i]);
    }
    r->n_pending = 0;
    if (changes && *changes) {
        char msg[1300];
        snprintf(msg, sizeof msg, "resumed with changed settings (--allow-changes): %.1200s",
                 changes);
        emit_log(r, "warn", msg);
    }
    return 0;
}

int write_error(Run *r, TunaErr *err) {
    return tuna_errf(err, TUNA_EIO,
                     "%s/%s: cannot write: %s; the run stopped (its last "
                     "checkpoint is kept)",
                     r->dir, r->write_file_name, strerror(r->write_errno));
}

/* The start event (with the resolved config) and the one-line summary of the setup. */
void emit_start(Run *r) {
    const TrainConfig *cfg = r->cfg;
    static Event e;
    event_clear(&e, EV_START);
    e.time = (double)time(NULL);
    const char *slash = strrchr(r->dir, '/');
    event_str(e.run, sizeof e.run, slash ? slash + 1 : r->dir);
    event_str(e.model, sizeof e.model, cfg->model);
    event_str(e.method, sizeof e.method, cfg->method);
    event_str(e.dataset, sizeof e.dataset, cfg->dataset);
    e.total_steps = r->total;
    e.epochs = cfg->epochs;
    e.start_step = r->step;
    e.train_examples = (long)r->train->n;
    e.val_examples = (long)r->val->n;
    e.trainable_params = (long)train_param_count(r->ts);
    e.total_params = (long)(r->m->n_params + r->m->n_qparams);
    e.seq_len = r->T;
    e.lr = r->lr;                             /* the peak: config's "auto" resolved */
    event_metric(&e, "world_size", r->world); /* processes (ranks) of a data-parallel run */
    /* this rank's AdamW moments: all of them, or its slice with --zero 1 over several ranks */
    event_metric(&e, "optimizer_state_bytes", (double)optim_state_bytes(&r->opt));
    char *cj = train_config_json(cfg);
    e.config = cj;
    emit(r, &e);
    free(cj);
    char msg[700], opt[120];
    if (r->opt.world > 1)
        snprintf(opt, sizeof opt, ", optimizer state %.2f MiB a process (--zero 1: 1/%d each)",
                 (double)optim_state_bytes(&r->opt) / (1 << 20), r->opt.world);
    else
        snprintf(opt, sizeof opt, ", optimizer state %.2f MiB%s",
                 (double)optim_state_bytes(&r->opt) / (1 << 20), r->world > 1 ? " a process" : "");
    snprintf(
            msg, sizeof msg,
            "%s: %zu train / %zu val examples, %d steps, %zu trainable of %zu params, rows of %s%d "
            "tokens%s, lr %.3g%s%s",
            cfg->method, r->train->n, r->val->n, r->total, train_param_count(r->ts),
            r->m->n_params + r->m->n_qparams, r->pad_multiple ? "up to " : "", r->T,
            r->pad_multiple ? " (each batch padded to its longest, a multiple of 8)" : "", r->lr,
            cfg->lr > 0 ? "" : " (auto)", opt);
    emit_log(r, "info", msg);
}

/* An eval event (and its trainer_log.jsonl line when tlog_too). */
void emit_eval(Run *r, double el, double epoch, double elapsed, double eta, int tlog_too) {
    static Event e;
    event_clear(&e, EV_EVAL);
    e.step = r->step;
    e.epoch = epoch;
    e.eval_loss = el;
    e.perplexity = exp(el);
    const PrefSums *s = &r->eval_pref;
    if (r->pref_on && s->n) { /* LLaMA-Factory's eval_ names of TRL's metrics, then the policy's
                                 own preference accuracy (pref.h PrefSums) */
        const char *names[] = {"eval_rewards/chosen",     "eval_rewards/rejected",
                               "eval_rewards/accuracies", "eval_rewards/margins",
                               "eval_logps/chosen",       "eval_logps/rejected",
                               "eval_logps/accuracies",   "eval_logps/mean_accuracies"};
        double v[] = {s->rewards_chosen, s->rewards_rejected, s->accuracies, s->margins,
                      s->logps_chosen,   s->logps_rejected,   s->logp_wins,  s->mean_logp_wins};
        for (int k = 0; k < 8; k++)
            event_metric(&e, names[k], v[k] / s->n);
    }
    const char *kn[10];
    double kv[10];
    for (int k = 0, n = run_eval_metrics(r, kn, kv); k < n; k++) /* rm, kto; eval_logits/... */
        event_metric(&e, kn[k], kv[k]);
    emit(r, &e);
    if (!tlog_too) return;
    tlog_line(r, "eval_loss", el, (double)NAN, epoch, elapsed, eta);
}

void emit_state(Run *r, int paused) {
    static Event e;
    event_clear(&e, EV_STATE);
    e.paused = paused;
    emit(r, &e);
}
/* Closes the run's files and gives the folder back (train.pid removed, the lock released). */
void run_files_close(Run *r) {
    if (r->metrics) fclose(r->metrics);
    if (r->tlog) fclose(r->tlog);
    r->metrics = r->tlog = NULL;
    for (int i = 0; i < r->n_pending; i++)
        free(r->pending[i]);
    free(r->pending);
    r->pending = NULL;
    r->n_pending = 0;
    if (r->lock_fd >= 0) { /* the folder was ours: train.pid too */
        char path[1200];
        snprintf(path, sizeof path, "%s/train.pid", r->dir);
        unlink(path);
        close(r->lock_fd); /* releases the flock; the file stays (unlinking it would race) */
        r->lock_fd = -1;
    }
}

/* A run that failed before its first step: the workbench's fresh folder (setup_config.json,
 * no run in it yet) gets a metrics.jsonl with the events so far, so the Train screen shows
 * why; then the done event with the error. */
void run_files_failed(Run *r, int resume, const TunaErr *err) {
    if (!r->metrics && !resume) {
        char path[1200];
        snprintf(path, sizeof path, "%s/setup_config.json", r->dir);
        if (access(path, F_OK) == 0 && !holds_run(r->dir)) {
            snprintf(path, sizeof path, "%s/metrics.jsonl", r->dir);
            r->metrics = fopen(path, "w");
            for (int i = 0; r->metrics && i < r->n_pending; i++)
                fprintf(r->metrics, "%s\n", r->pending[i]);
        }
    }
    if (r->metrics) emit_done(r, "error", err ? err->msg : "", (double)NAN, 0);
}

/* After too many non-finite steps: the checkpoint saved just before the first of them (step
 * suspect, -1 for none) holds the weights that gave it, and is set aside (renamed
 * checkpoint-N.nonfinite, not deleted). keep says which checkpoint the run leaves to resume. */
void ckpt_set_aside(Run *r, int suspect, char *keep, size_t cap) {
    char set_aside[80] = "";
    if (suspect >= 0) {
        char a[1200], b2[1300];
        snprintf(a, sizeof a, "%s/checkpoint-%d", r->dir, suspect);
        snprintf(b2, sizeof b2, "%s.nonfinite", a);
        if (!rename(a, b2))
            snprintf(set_aside, sizeof set_aside,
                     " (checkpoint-%d, just before, is now checkpoint-%d.nonfinite)", suspect,
                     suspect);
    }
    int cks[4096], nck = train_checkpoints(r->dir, cks, 4096);
    while (nck > 0 && cks[nck - 1] > r->step)
        nck--;
    if (nck > 0)
        snprintf(keep, cap, "checkpoint-%d is kept%s", cks[nck - 1], set_aside);
    else
        snprintf(keep, cap, "no checkpoint was saved");
}

/* A step's line of LLaMA-Factory's trainer_log.jsonl. */
void tlog_step(Run *r, double loss, double lr, double epoch, double elapsed, double eta) {
    tlog_line(r, "loss", loss, lr, epoch, elapsed, eta);
}

/* The finished run's result at the root of its folder: the adapter (PEFT) or the model (HF),
 * written in a temporary folder and moved in file by file. */
int write_result(Run *r, int adapter, TunaErr *err) {
    char tmp[1300];
    int rc = dir_begin(r->dir, tmp, sizeof tmp, err);
    if (!rc)
        rc = adapter ? adapter_write(r->ts, tmp, r->cfg->model, err) : run_write_hf(r, tmp, err);
    if (!rc && r->have_vh) rc = vhead_save(&r->vh, tmp, err); /* rm: LLaMA-Factory's file */
    if (!rc) rc = publish_files(tmp, r->dir, err);
    dir_remove(tmp);
    if (!rc && r->cfg->pissa_convert) { /* LLaMA-Factory's pissa_converted folder beside it */
        char conv[1300];
        snprintf(conv, sizeof conv, "%s/pissa_converted", r->dir);
        rc = adapter_save_pissa_converted(r->ts, conv, r->cfg->model, err);
    }
    return rc;
}
