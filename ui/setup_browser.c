/* setup_browser.c: the Setup screen's folder browser for the model (Tab on the model row):
 * folders holding a config.json are marked; Enter picks one or opens a folder, Backspace goes
 * up. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "../src/model.h"
#include "../src/template.h"
#include "../src/train.h"
#include "../src/xalloc.h"
#include "curses_wrap.h"
#include "layout.h"
#include "setup_internal.h"

// --- the folder browser

static int cmp_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void browser_add(Browser *b, const char *name, int model) {
    b->names = xrealloc(b->names, (size_t)(b->n + 1) * sizeof *b->names);
    b->is_model = xrealloc(b->is_model, (size_t)(b->n + 1));
    b->names[b->n] = xstrdup(name);
    b->is_model[b->n] = (unsigned char)model;
    b->n++;
}

/* Lists dir into the browser; on failure keeps the old listing and returns -1 (errno set). */
static int browser_read(Browser *b, const char *dir) {
    char abs[PATH_MAX];
    if (!realpath(dir, abs)) return -1;
    DIR *d = opendir(abs);
    if (!d) return -1;
    setup_browser_clear(b);
    setup_copy_str(b->dir, sizeof b->dir, abs);
    if (strcmp(abs, "/")) browser_add(b, "..", 0);
    if (setup_is_model_dir(abs)) browser_add(b, ".", 1);
    int first = b->n;
    struct dirent *e;
    while ((e = readdir(d)) && b->n < MAX_BROWSE) {
        if (e->d_name[0] == '.') continue;
        char p[PATH_MAX + 260];
        struct stat st;
        if (setup_join_path(p, sizeof p, abs, e->d_name) || stat(p, &st) || !S_ISDIR(st.st_mode))
            continue;
        browser_add(b, e->d_name, setup_is_model_dir(p));
    }
    closedir(d);
    qsort(b->names + first, (size_t)(b->n - first), sizeof *b->names, cmp_names);
    for (int i = first; i < b->n; i++) { /* the flags were added unsorted: recompute */
        char p[PATH_MAX + 260];
        b->is_model[i] = !setup_join_path(p, sizeof p, abs, b->names[i]) && setup_is_model_dir(p);
    }
    b->cfg_for[0] = 0;
    return 0;
}

static void browser_path(const Browser *b, int i, char *out, size_t n) {
    if (!strcmp(b->names[i], "."))
        setup_copy_str(out, n, b->dir);
    else
        setup_join_path(out, n, b->dir, b->names[i]);
}

void setup_browser_open(App *app, SetupState *s) {
    Browser *b = &s->br;
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd)) snprintf(cwd, sizeof cwd, ".");
    if (browser_read(b, cwd)) {
        app_status(app, ROLE_ERROR, "%s: %s", cwd, strerror(errno));
        return;
    }
    b->open = 1;
    /* start on the folder that leads to the current model, else on the first model folder */
    const char *cur = setup_field(s, "model")->text;
    size_t k = strcspn(cur, "/");
    int hit = -1;
    for (int i = 0; i < b->n && cur[0] != '/'; i++)
        if (strlen(b->names[i]) == k && !strncmp(b->names[i], cur, k) && strcmp(b->names[i], ".."))
            hit = i;
    for (int i = 0; i < b->n && hit < 0; i++)
        if (b->is_model[i] && strcmp(b->names[i], ".")) hit = i;
    if (hit >= 0) b->sel = hit;
}

static void browser_go(App *app, Browser *b, const char *path, const char *select) {
    if (browser_read(b, path)) {
        app_status(app, ROLE_ERROR, "%s: %s", path, strerror(errno));
        return;
    }
    int hit = -1;
    for (int i = 0; select && i < b->n; i++)
        if (!strcmp(b->names[i], select)) hit = i;
    for (int i = 0; !select && hit < 0 && i < b->n; i++) /* else the first model folder */
        if (b->is_model[i]) hit = i;
    if (hit < 0 && !select && b->n > 1) hit = 1; /* else the first folder after ".." */
    if (hit >= 0) b->sel = hit;
}

static void browser_up(App *app, Browser *b) {
    if (!strcmp(b->dir, "/")) return;
    char here[PATH_MAX], *slash;
    setup_copy_str(here, sizeof here, b->dir);
    slash = strrchr(here, '/');
    char name[PATH_MAX];
    setup_copy_str(name, sizeof name, slash ? slash + 1 : "");
    if (slash == here)
        here[1] = 0;
    else if (slash)
        *slash = 0;
    browser_go(app, b, here, name);
}

/* Sets the model field to the folder (relative to the working directory when inside it). */
static void browser_pick(App *app, SetupState *s, const char *path) {
    char cwd[PATH_MAX], rel[PATH_MAX];
    const char *v = path;
    if (getcwd(cwd, sizeof cwd)) {
        size_t l = strlen(cwd);
        if (!strcmp(path, cwd))
            v = ".";
        else if (!strncmp(path, cwd, l) && path[l] == '/') {
            setup_copy_str(rel, sizeof rel, path + l + 1);
            v = rel;
        }
    }
    Field *m = setup_field(s, "model");
    snprintf(m->text, sizeof m->text, "%.500s", v);
    if (!setup_has_choice(m, m->text)) setup_add_choice(m, m->text);
    s->br.open = 0;
    setup_browser_clear(&s->br);
    setup_refresh_model(s);
    if (s->cfg_ok)
        app_status(app, ROLE_NORMAL, "model: %s", m->text);
    else
        app_status(app, ROLE_WARN, "%s", s->cfg_err);
}

static void browser_enter(App *app, SetupState *s, int descend_only) {
    Browser *b = &s->br;
    if (!b->n) return;
    const char *nm = b->names[b->sel];
    char p[PATH_MAX + 260];
    browser_path(b, b->sel, p, sizeof p);
    if (!strcmp(nm, ".."))
        browser_up(app, b);
    else if (!strcmp(nm, "."))
        browser_pick(app, s, p);
    else if (b->is_model[b->sel] && !descend_only)
        browser_pick(app, s, p);
    else
        browser_go(app, b, p, NULL);
}

void setup_browser_refresh_cfg(Browser *b) {
    char p[PATH_MAX + 260];
    if (!b->n) return;
    browser_path(b, b->sel, p, sizeof p);
    if (!strcmp(p, b->cfg_for)) return;
    setup_copy_str(b->cfg_for, sizeof b->cfg_for, p);
    b->cfg_ok = 0;
    b->cfg_err[0] = 0;
    if (b->is_model[b->sel]) {
        TunaErr e = {0};
        b->cfg_ok = config_load(p, &b->cfg, &e) == 0;
        snprintf(b->cfg_err, sizeof b->cfg_err, "%s", e.msg);
    }
}

int setup_browser_action(App *app, SetupState *s, Action a) {
    Browser *b = &s->br;
    int page = app->rows > 8 ? app->rows - 6 : 4;
    switch (a) {
    case ACT_UP:
        if (b->sel > 0) b->sel--;
        break;
    case ACT_DOWN:
        if (b->sel < b->n - 1) b->sel++;
        break;
    case ACT_PGUP: b->sel = b->sel > page ? b->sel - page : 0; break;
    case ACT_PGDN: b->sel = b->sel + page < b->n ? b->sel + page : b->n - 1; break;
    case ACT_HOME: b->sel = 0; break;
    case ACT_END: b->sel = b->n - 1; break;
    case ACT_LEFT: browser_up(app, b); break;
    case ACT_RIGHT: browser_enter(app, s, 1); break;
    case ACT_OPEN: browser_enter(app, s, 0); break;
    default: return 0;
    }
    if (b->sel < 0) b->sel = 0;
    return UI_REDRAW;
}

int setup_browser_key(App *app, SetupState *s, int ch) {
    Browser *b = &s->br;
    if (ch == 27) {
        b->open = 0;
        setup_browser_clear(b);
        return UI_REDRAW;
    }
    if (ch == KEY_BACKSPACE || ch == 127 || ch == 8) {
        browser_up(app, b);
        return UI_REDRAW;
    }
    if (ch > 32 && ch < 127) { /* jump to the next folder starting with that letter */
        for (int k = 1; k <= b->n; k++) {
            int i = (b->sel + k) % b->n;
            if (tolower((unsigned char)b->names[i][0]) == tolower(ch)) {
                b->sel = i;
                break;
            }
        }
        return UI_REDRAW;
    }
    return 0;
}

void setup_draw_browser(App *app, SetupState *s, Rect list) {
    (void)app;
    Browser *b = &s->br;
    char title[PATH_MAX + 32];
    int tw = list.w - 22;
    size_t dl = strlen(b->dir);
    const char *d = b->dir;
    if (tw > 8 && (int)dl > tw) d = b->dir + dl - tw; /* keep the end of a long path */
    snprintf(title, sizeof title, "model folder: %s%s", d != b->dir ? theme_glyphs()->ellipsis : "",
             d);
    ui_frame(list, title, 1);
    Rect in = ui_inner(list);
    if (b->sel >= b->n) b->sel = b->n - 1;
    if (b->sel < 0) b->sel = 0;
    if (b->sel < b->top) b->top = b->sel;
    if (b->sel >= b->top + in.h) b->top = b->sel - in.h + 1;
    if (!b->n) ui_str(in.y, in.x + 1, in.w - 2, ROLE_DIM, "(no folders here)");
    for (int k = 0; k < in.h && b->top + k < b->n; k++) {
        int i = b->top + k, y = in.y + k, sel = i == b->sel;
        const char *nm = b->names[i];
        char line[600];
        if (!strcmp(nm, ".."))
            snprintf(line, sizeof line, "../  (up)");
        else if (!strcmp(nm, "."))
            snprintf(line, sizeof line, "./  (this folder is a model: pick it)");
        else
            snprintf(line, sizeof line, "%.500s/", nm);
        Role r = sel ? ROLE_SELECTED : b->is_model[i] ? ROLE_OK : ROLE_VALUE;
        if (sel) ui_fill((Rect){y, in.x, 1, in.w}, ROLE_SELECTED);
        int used = ui_str(y, in.x + 1, in.w - 2, r, line);
        if (b->is_model[i] && strcmp(nm, "."))
            ui_str(y, in.x + 1 + used, in.w - 2 - used, sel ? ROLE_SELECTED : ROLE_OK, "  [model]");
    }
}

/* The help line while the folder browser is open (its keys are not in the key table). */
void setup_browse_help(Rect r) {
    static const char *keys[][2] = {{"F1", "Help"}, {"Enter", "Pick/Open"}, {"Right", "Open"},
                                    {"Bksp", "Up"}, {"a-z", "Jump"},        {"Esc", "Cancel"}};
    ui_fill(r, ROLE_KEY_LABEL);
    int x = r.x;
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        int need = (int)(strlen(keys[i][0]) + strlen(keys[i][1])) + 1;
        if (x + need > r.x + r.w) break;
        x += ui_str(r.y, x, r.x + r.w - x, ROLE_KEY, keys[i][0]);
        x += ui_str(r.y, x, r.x + r.w - x, ROLE_KEY_LABEL, keys[i][1]);
        x += ui_str(r.y, x, r.x + r.w - x, ROLE_KEY_LABEL, " ");
    }
}
