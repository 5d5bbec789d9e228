/* template.c: JSON chat templates and the LLaMA-Factory-style train/prompt encoders. */
#include "template.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "jinja.h"
#include "xalloc.h"

// --- template data: a format is a list of elements (text with {{content}}, BOS or EOS)

enum { EL_TEXT, EL_BOS, EL_EOS };

typedef struct Elem {
    int kind;
    char *text; /* EL_TEXT only; may contain one {{content}} */
} Elem;

typedef struct Slot {
    Elem *el;
    int n;
} Slot;

struct Template {
    char *name;
    Slot prefix, system, user, assistant, observation, function, tools, separator;
    char *default_system;
    char *description; /* "" when the file has none */
    char **stop_words;
    int n_stop;
    int efficient_eos, replace_eos, merge_system, auto_bos;
};

#define MAX_TEMPLATE_BYTES (1 << 20)

static void slot_free(Slot *s) {
    for (int i = 0; i < s->n; i++)
        free(s->el[i].text);
    free(s->el);
    s->el = NULL;
    s->n = 0;
}

static void slot_push(Slot *s, int kind, const char *text, size_t len) {
    s->el = xrealloc(s->el, (size_t)(s->n + 1) * sizeof *s->el);
    s->el[s->n].kind = kind;
    s->el[s->n].text = kind == EL_TEXT ? xstrndup(text, len) : NULL;
    s->n++;
}

/* Splits one string on {{bos_token}} / {{eos_token}} into elements (empty text dropped). */
static void slot_add_string(Slot *s, const char *str) {
    const char *p = str;
    for (;;) {
        const char *b = strstr(p, "{{bos_token}}"), *e = strstr(p, "{{eos_token}}");
        const char *m = b && (!e || b < e) ? b : e;
        if (!m) break;
        if (m > p) slot_push(s, EL_TEXT, p, (size_t)(m - p));
        slot_push(s, m == b ? EL_BOS : EL_EOS, NULL, 0);
        p = m + strlen("{{bos_token}}");
    }
    if (*p) slot_push(s, EL_TEXT, p, strlen(p));
}

static void slot_copy(Slot *dst, const Slot *src) {
    for (int i = 0; i < src->n; i++)
        slot_push(dst, src->el[i].kind, src->el[i].text,
                  src->el[i].text ? strlen(src->el[i].text) : 0);
}

/* key absent -> *present = 0; string or array of strings -> slot. */
static int parse_slot(const cJSON *root, const char *key, Slot *s, int *present, const char *path,
                      TunaErr *err) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    *present = 0;
    if (!j || cJSON_IsNull(j)) return 0;
    *present = 1;
    if (cJSON_IsString(j)) {
        slot_add_string(s, j->valuestring);
        return 0;
    }
    if (cJSON_IsArray(j)) {
        const cJSON *it;
        int i = 0;
        cJSON_ArrayForEach(it, j) {
            if (!cJSON_IsString(it))
                return tuna_errf(err, TUNA_EFORMAT, "%s: \"%s\"[%d] must be a string", path, key,
                                 i);
            slot_add_string(s, it->valuestring);
            i++;
        }
        return 0;
    }
    return tuna_errf(err, TUNA_EFORMAT, "%s: \"%s\" must be a string or an array of strings", path,
                     key);
}

static int parse_bool(const cJSON *root, const char *key, int def, int *out, const char *path,
                      TunaErr *err) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    *out = def;
    if (!j) return 0;
    if (!cJSON_IsBool(j))
        return tuna_errf(err, TUNA_EFORMAT, "%s: \"%s\" must be true or false", path, key);
    *out = cJSON_IsTrue(j);
    return 0;
}

static int name_ok(const char *name) {
    if (!name || !*name || name[0] == '.') return 0;
    for (const char *p = name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '-' || *p == '.'))
            return 0;
    return 1;
}

static const char *const KNOWN_KEYS[] = {
        "name",          "description",      "format_prefix",          "format_system",
        "format_user",   "format_assistant", "format_observation",     "format_function",
        "format_tools",  "format_separator", "default_system",         "stop_words",
        "efficient_eos", "replace_eos",      "merge_system_into_user", "auto_bos",
        "comment"};

int template_load(const char *templates_dir, const char *name, Template **out, TunaErr *err) {
    *out = NULL;
    char dirbuf[2100];
    if (!templates_dir || !strcmp(templates_dir, "templates"))
        templates_dir = bundled_path("templates", dirbuf, sizeof dirbuf);
    if (!name_ok(name))
        return tuna_errf(err, TUNA_EINVAL,
                         "template name \"%s\" must be a file stem [A-Za-z0-9_.-]",
                         name ? name : "");
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.json", templates_dir, name);
    size_t len = 0;
    char *text = xread_file(path, &len);
    if (!text) {
        if (errno != ENOENT) return tuna_errf(err, TUNA_EIO, "%s: %s", path, strerror(errno));
        char **names = NULL;
        int n = 0;
        char list[256] = "";
        if (template_list(templates_dir, &names, &n, NULL) == 0) {
            for (int i = 0; i < n; i++) {
                size_t l = strlen(list);
                snprintf(list + l, sizeof list - l, "%s%s", i ? ", " : "", names[i]);
            }
            template_list_free(names, n);
        }
        return tuna_errf(err, TUNA_ENOTFOUND, "%s: no such template (available: %s)", path,
                         list[0] ? list : "none");
    }
    Template *t = xcalloc(1, sizeof *t);
    int rc = 0, present;
    cJSON *root = NULL;
    if (len > MAX_TEMPLATE_BYTES) {
        rc = tuna_errf(err, TUNA_EFORMAT, "%s: %zu bytes, templates are limited to %d", path, len,
                       MAX_TEMPLATE_BYTES);
        goto fail;
    }
    root = cJSON_ParseWithLength(text, len);
    if (!root || !cJSON_IsObject(root)) {
        rc = tuna_errf(err, TUNA_EFORMAT, "%s: not a JSON object", path);
        goto fail;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, root) {
        size_t k = 0, nk = sizeof KNOWN_KEYS / sizeof KNOWN_KEYS[0];
        while (k < nk && strcmp(KNOWN_KEYS[k], it->string))
            k++;
        if (k == nk) {
            rc = tuna_errf(err, TUNA_EFORMAT, "%s: unknown key \"%s\" (see templates/README.md)",
                           path, it->string);
            goto fail;
        }
    }
    t->name = xstrdup(name);
    if ((rc = parse_bool(root, "efficient_eos", 0, &t->efficient_eos, path, err)) ||
        (rc = parse_bool(root, "replace_eos", 0, &t->replace_eos, path, err)) ||
        (rc = parse_bool(root, "merge_system_into_user", 0, &t->merge_system, path, err)) ||
        (rc = parse_bool(root, "auto_bos", 1, &t->auto_bos, path, err)))
        goto fail;
    if ((rc = parse_slot(root, "format_prefix", &t->prefix, &present, path, err))) goto fail;
    if ((rc = parse_slot(root, "format_separator", &t->separator, &present, path, err))) goto fail;
    if ((rc = parse_slot(root, "format_user", &t->user, &present, path, err))) goto fail;
    if (!present) slot_add_string(&t->user, "{{content}}");
    /* LLaMA-Factory: format_system defaults to "{{content}}", not to format_user. */
    if ((rc = parse_slot(root, "format_system", &t->system, &present, path, err))) goto fail;
    if (!present) slot_add_string(&t->system, "{{content}}");
    if ((rc = parse_slot(root, "format_assistant", &t->assistant, &present, path, err))) goto fail;
    if (!present)
        slot_add_string(&t->assistant,
                        t->efficient_eos ? "{{content}}" : "{{content}}{{eos_token}}");
    if ((rc = parse_slot(root, "format_observation", &t->observation, &present, path, err)))
        goto fail;
    if (!present) slot_copy(&t->observation, &t->user);
    if ((rc = parse_slot(root, "format_function", &t->function, &present, path, err))) goto fail;
    if (!present) slot_copy(&t->function, &t->assistant);
    if ((rc = parse_slot(root, "format_tools", &t->tools, &present, path, err))) goto fail;
    if (!present)
        slot_add_string(&t->tools, "You have access to the following tools (JSON schema):\n"
                                   "{{content}}\n");
    const cJSON *ds = cJSON_GetObjectItemCaseSensitive(root, "default_system");
    if (ds && !cJSON_IsString(ds) && !cJSON_IsNull(ds)) {
        rc = tuna_errf(err, TUNA_EFORMAT, "%s: \"default_system\" must be a string", path);
        goto fail;
    }
    t->default_system = xstrdup(cJSON_IsString(ds) ? ds->valuestring : "");
    const cJSON *desc = cJSON_GetObjectItemCaseSensitive(root, "description");
    if (desc && !cJSON_IsString(desc) && !cJSON_IsNull(desc)) {
        rc = tuna_errf(err, TUNA_EFORMAT, "%s: \"description\" must be a string", path);
        goto fail;
    }
    t->description = xstrdup(cJSON_IsString(desc) ? desc->valuestring : "");
    const cJSON *sw = cJSON_GetObjectItemCaseSensitive(root, "stop_words");
    if (sw && !cJSON_IsArray(sw)) {
        rc = tuna_errf(err, TUNA_EFORMAT, "%s: \"stop_words\" must be an array of strings", path);
        goto fail;
    }
    int nsw = sw ? cJSON_GetArraySize(sw) : 0;
    t->stop_words = xcalloc((size_t)nsw + 1, sizeof *t->stop_words);
    cJSON_ArrayForEach(it, sw) {
        if (!cJSON_IsString(it) || !it->valuestring[0]) {
            rc = tuna_errf(err, TUNA_EFORMAT, "%s: \"stop_words\"[%d] must be a non-empty string",
                           path, t->n_stop);
            goto fail;
        }
        t->stop_words[t->n_stop++] = xstrdup(it->valuestring);
    }
    if (t->replace_eos && t->n_stop == 0) {
        rc = tuna_errf(err, TUNA_EFORMAT, "%s: \"replace_eos\" needs at least one stop word", path);
        goto fail;
    }
    const Slot *need_content[] = {&t->user, &t->assistant, &t->system};
    const char *need_names[] = {"format_user", "format_assistant", "format_system"};
    for (int k = 0; k < 3; k++) {
        int found = 0;
        for (int i = 0; i < need_content[k]->n; i++)
            if (need_content[k]->el[i].text && strstr(need_content[k]->el[i].text, "{{content}}"))
                found = 1;
        if (!found) {
            rc = tuna_errf(err, TUNA_EFORMAT, "%s: \"%s\" has no {{content}}", path, need_names[k]);
            goto fail;
        }
    }
    cJSON_Delete(root);
    free(text);
    *out = t;
    return 0;
fail:
    cJSON_Delete(root);
    free(text);
    template_free(t);
    return rc;
}

/* The first {{identifier}} in s that is not a known one, or NULL; *len its length. */
static const char *unknown_in(const char *s, int *len) {
    static const char *const known[] = {"content", "name", "arguments", "bos_token", "eos_token"};
    for (const char *p = s; p && (p = strstr(p, "{{")); p += 2) {
        const char *q = p + 2;
        while ((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z') || (*q >= '0' && *q <= '9') ||
               *q == '_')
            q++;
        if (q == p + 2 || q[0] != '}' || q[1] != '}' || q - p > 60) continue;
        int k = 0, n = (int)(q - p - 2);
        for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
            k |= (int)strlen(known[i]) == n && !strncmp(known[i], p + 2, (size_t)n);
        if (!k) {
            *len = n + 4;
            return p;
        }
    }
    return NULL;
}

int template_unknown_placeholder(const Template *t, char *out, size_t cap) {
    const Slot *slots[] = {&t->prefix,      &t->system,   &t->user,  &t->assistant,
                           &t->observation, &t->function, &t->tools, &t->separator};
    for (size_t k = 0; k < sizeof slots / sizeof slots[0]; k++)
        for (int i = 0; i < slots[k]->n; i++) {
            int len = 0;
            const char *p = slots[k]->el[i].text ? unknown_in(slots[k]->el[i].text, &len) : NULL;
            if (p) {
                snprintf(out, cap, "%.*s", len, p);
                return 1;
            }
        }
    return 0;
}

void template_free(Template *t) {
    if (!t) return;
    Slot *slots[] = {&t->prefix,      &t->system,   &t->user,  &t->assistant,
                     &t->observation, &t->function, &t->tools, &t->separator};
    for (size_t i = 0; i < sizeof slots / sizeof slots[0]; i++)
        slot_free(slots[i]);
    for (int i = 0; i < t->n_stop; i++)
        free(t->stop_words[i]);
    free(t->stop_words);
    free(t->default_system);
    free(t->description);
    free(t->name);
    free(t);
}

const char *template_name(const Template *t) {
    return t->name;
}

const char *template_default_system(const Template *t) {
    return t->default_system;
}

void template_set_default_system(Template *t, const char *system) {
    free(t->default_system);
    t->default_system = xstrdup(system ? system : "");
}

const char *template_description(const Template *t) {
    return t->description;
}

int template_stop_words(const Template *t, const char *const **words) {
    *words = (const char *const *)t->stop_words;
    return t->n_stop;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int template_list(const char *templates_dir, char ***names, int *n, TunaErr *err) {
    *names = NULL;
    *n = 0;
    char dirbuf[2100];
    if (!templates_dir || !strcmp(templates_dir, "templates"))
        templates_dir = bundled_path("templates", dirbuf, sizeof dirbuf);
    DIR *d = opendir(templates_dir);
    if (!d) return tuna_errf(err, TUNA_EIO, "%s: %s", templates_dir, strerror(errno));
    struct dirent *e;
    char **v = NULL;
    int cnt = 0;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l <= 5 || strcmp(e->d_name + l - 5, ".json") || e->d_name[0] == '.') continue;
        v = xrealloc(v, (size_t)(cnt + 1) * sizeof *v);
        v[cnt++] = xstrndup(e->d_name, l - 5);
    }
    closedir(d);
    if (cnt) qsort(v, (size_t)cnt, sizeof *v, cmp_str);
    *names = v;
    *n = cnt;
    return 0;
}

void template_list_free(char **names, int n) {
    if (!names) return;
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

// --- encoding

typedef struct IdVec {
    int32_t *v;
    size_t n, cap;
} IdVec;

static void iv_push(IdVec *a, int32_t x) {
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 64;
        a->v = xrealloc(a->v, a->cap * sizeof *a->v);
    }
    a->v[a->n++] = x;
}

static void iv_append(IdVec *a, const int32_t *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        iv_push(a, x[i]);
}

int template_eos_id(const Template *t, const Tokenizer *tok) {
    if (t && t->replace_eos && t->n_stop > 0) {
        int id = tokenizer_token_id(tok, t->stop_words[0]);
        if (id >= 0) return id;
    }
    return tokenizer_eos_id(tok);
}

/* Replaces the first {{content}} (as LLaMA-Factory's str.replace(..., 1)). */
static char *fill(const char *text, const char *content) {
    const char *m = strstr(text, "{{content}}");
    if (!m) return xstrdup(text);
    size_t a = (size_t)(m - text), c = strlen(content), b = strlen(m + 11);
    char *s = xmalloc(a + c + b + 1);
    memcpy(s, text, a);
    memcpy(s + a, content, c);
    memcpy(s + a + c, m + 11, b + 1);
    return s;
}

static int encode_text(const Tokenizer *tok, const char *s, IdVec *out, TunaErr *err) {
    if (!*s) return 0;
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = tokenizer_encode(tok, s, strlen(s), 0, &ids, &n, err);
    if (rc == 0) iv_append(out, ids, n);
    free(ids);
    return rc;
}

/* Appends the elements of slot s with content filled in. */
static int apply_slot(const Template *t, const Tokenizer *tok, const Slot *s, const char *content,
                      IdVec *out, TunaErr *err) {
    for (int i = 0; i < s->n; i++) {
        const Elem *e = &s->el[i];
        if (e->kind == EL_BOS) {
            int id = tokenizer_bos_id(tok);
            if (id >= 0) iv_push(out, id);
        } else if (e->kind == EL_EOS) {
            int id = template_eos_id(t, tok);
            if (t->replace_eos && tokenizer_token_id(tok, t->stop_words[0]) < 0) {
                /* The stop word is not a token of this tokenizer (LLaMA-Factory would add it and
                 * resize the vocabulary): write it as text instead. */
                int rc = encode_text(tok, t->stop_words[0], out, err);
                if (rc) return rc;
            } else if (id >= 0) {
                iv_push(out, id);
            }
        } else {
            char *txt = fill(e->text, content ? content : "");
            int rc = encode_text(tok, txt, out, err);
            free(txt);
            if (rc) return rc;
        }
    }
    return 0;
}

/* Text of the first element of a slot with content filled (LLaMA-Factory's apply(...)[0]). */
static char *slot_first_text(const Slot *s, const char *content) {
    for (int i = 0; i < s->n; i++)
        if (s->el[i].kind == EL_TEXT) return fill(s->el[i].text, content);
    return xstrdup(content);
}

static int tokenizer_adds_bos(const Tokenizer *tok) {
    int bos = tokenizer_bos_id(tok);
    if (bos < 0) return 0;
    int32_t *ids = NULL;
    size_t n = 0;
    int adds = tokenizer_encode(tok, "", 0, 1, &ids, &n, NULL) == 0 && n >= 1 && ids[0] == bos;
    free(ids);
    return adds;
}

enum { R_USER, R_ASSISTANT, R_OBSERVATION, R_FUNCTION, R_SYSTEM, R_TOOLS, R_BAD };

static int role_of(const char *r) {
    static const char *const names[] = {"user",     "assistant", "observation",
                                        "function", "system",    "tools"};
    for (int i = 0; i < 6; i++)
        if (r && !strcmp(r, names[i])) return i;
    return R_BAD;
}

/* Renders each conversation message into its own id list (LLaMA-Factory Template._encode).
 * want_last_assistant: 1 for training, 0 for a prompt. On success *parts has *n_parts lists. */
static int encode_messages(const Template *t, const Tokenizer *tok, const ChatMessage *msgs,
                           int n_msgs, int want_last_assistant, IdVec **parts, int *n_parts,
                           TunaErr *err) {
    const char *system = NULL, *tools = NULL;
    int i = 0;
    *parts = NULL;
    *n_parts = 0;
    for (; i < n_msgs && i < 2; i++) {
        int r = role_of(msgs[i].role);
        if (r == R_SYSTEM && !system && !tools)
            system = msgs[i].content;
        else if (r == R_TOOLS && !tools)
            tools = msgs[i].content;
        else
            break;
    }
    int first = i, n = n_msgs - first;
    if (n <= 0) return tuna_errf(err, TUNA_EINVAL, "conversation has no user message");
    for (int k = 0; k < n; k++) {
        const ChatMessage *m = &msgs[first + k];
        int r = role_of(m->role);
        int ok = k % 2 == 0 ? (r == R_USER || r == R_OBSERVATION)
                            : (r == R_ASSISTANT || r == R_FUNCTION);
        if (!ok)
            return tuna_errf(err, TUNA_EINVAL, "message %d: role \"%s\" where %s was expected",
                             first + k, m->role ? m->role : "(null)",
                             k % 2 == 0 ? "user|observation" : "assistant|function");
        if (!m->content)
            return tuna_errf(err, TUNA_EINVAL, "message %d: content is NULL", first + k);
    }
    if (want_last_assistant && n % 2 != 0)
        return tuna_errf(err, TUNA_EINVAL,
                         "conversation ends with a %s message, training needs "
                         "an assistant reply last",
                         msgs[n_msgs - 1].role);
    if (!want_last_assistant && n % 2 != 1)
        return tuna_errf(err, TUNA_EINVAL, "a prompt must end with a user|observation message");
    if (!system || !*system) system = t->default_system;
    int has_system = (system && *system) || (tools && *tools);
    char *sys_text = NULL;
    if (has_system) {
        char *tool_text = tools && *tools ? slot_first_text(&t->tools, tools) : xstrdup("");
        size_t a = strlen(system), b = strlen(tool_text);
        sys_text = xmalloc(a + b + 1);
        memcpy(sys_text, system, a);
        memcpy(sys_text + a, tool_text, b + 1);
        free(tool_text);
    }
    IdVec *p = xcalloc((size_t)n, sizeof *p);
    int rc = 0;
    for (int k = 0; k < n && !rc; k++) {
        const ChatMessage *m = &msgs[first + k];
        int r = role_of(m->role);
        char *merged = NULL;
        const char *content = m->content;
        if (k == 0) {
            rc = apply_slot(t, tok, &t->prefix, "", &p[k], err);
            if (!rc && has_system) {
                if (t->merge_system) {
                    char *st = slot_first_text(&t->system, sys_text);
                    size_t a = strlen(st), b = strlen(content);
                    merged = xmalloc(a + b + 1);
                    memcpy(merged, st, a);
                    memcpy(merged + a, content, b + 1);
                    free(st);
                    content = merged;
                } else {
                    rc = apply_slot(t, tok, &t->system, sys_text, &p[k], err);
                }
            }
        } else if (k % 2 == 0) {
            rc = apply_slot(t, tok, &t->separator, "", &p[k], err);
        }
        const Slot *s = r == R_USER          ? &t->user
                        : r == R_ASSISTANT   ? &t->assistant
                        : r == R_OBSERVATION ? &t->observation
                                             : &t->function;
        if (!rc) rc = apply_slot(t, tok, s, content, &p[k], err);
        free(merged);
    }
    if (!rc && t->auto_bos && tokenizer_adds_bos(tok)) {
        int bos = tokenizer_bos_id(tok);
        if (p[0].n == 0 || p[0].v[0] != bos) {
            iv_push(&p[0], 0);
            memmove(p[0].v + 1, p[0].v, (p[0].n - 1) * sizeof *p[0].v);
            p[0].v[0] = bos;
        }
    }
    free(sys_text);
    if (rc) {
        for (int k = 0; k < n; k++)
            free(p[k].v);
        free(p);
        return rc;
    }
    *parts = p;
    *n_parts = n;
    return 0;
}

void template_infer_seqlen(size_t source_len, size_t target_len, size_t cutoff_len, size_t *new_src,
                           size_t *new_tgt) {
    size_t max_target;
    if (target_len * 2 < cutoff_len)
        max_target = cutoff_len;
    else if (source_len * 2 < cutoff_len)
        max_target = cutoff_len - source_len;
    else
        max_target = (size_t)((double)cutoff_len *
                              ((double)target_len / (double)(source_len + target_len)));
    *new_tgt = max_target < target_len ? max_target : target_len;
    size_t max_source = cutoff_len > *new_tgt ? cutoff_len - *new_tgt : 0;
    *new_src = max_source < source_len ? max_source : source_len;
}

/* The turn (source, target) as LLaMA-Factory's _encode_supervised_example labels it. */
static void label_turn(const IdVec *src, size_t sl, const IdVec *tgt, size_t tl, int turn,
                       int flags, int eff, int eos, IdVec *in, IdVec *lab) {
    for (size_t i = 0; i < sl; i++) {
        iv_push(in, src->v[i]);
        /* efficient_eos: the first prompt token of a later turn is labelled EOS, which teaches
         * the previous reply to end */
        iv_push(lab, flags & TEMPLATE_TRAIN_ON_PROMPT ? src->v[i]
                     : eff && turn != 0 && i == 0     ? eos
                                                      : TEMPLATE_IGNORE);
    }
    int hide = (flags & TEMPLATE_MASK_HISTORY) && turn != 0;
    for (size_t i = 0; i < tl; i++) {
        iv_push(in, tgt->v[i]);
        iv_push(lab, hide ? TEMPLATE_IGNORE : tgt->v[i]);
    }
}

int template_encode_train(const Template *t, const Tokenizer *tok, const ChatMessage *msgs,
                          int n_msgs, int cutoff_len, int flags, int32_t **ids, int32_t **labels,
                          size_t *n, TunaErr *err) {
    *ids = NULL;
    *labels = NULL;
    *n = 0;
    IdVec *parts;
    int np;
    int rc = encode_messages(t, tok, msgs, n_msgs, 1, &parts, &np, err);
    if (rc) return rc;
    IdVec in = {0}, lab = {0};
    int eos = template_eos_id(t, tok);
    int eff = t->efficient_eos && eos >= 0;
    size_t cutoff = cutoff_len > 0 ? (size_t)cutoff_len : (size_t)-1 / 4;
    size_t total = eff ? 1 : 0;
    int turns = np / 2, hist = flags & TEMPLATE_MASK_HISTORY;
    /* The budget goes to the turns in LLaMA-Factory's order (with mask_history from the last,
     * so truncation drops the oldest); turn_idx is that order's index. They are written in
     * conversation order. */
    size_t *sl = xcalloc((size_t)turns + 1, sizeof *sl),
           *tl = xcalloc((size_t)turns + 1, sizeof *tl);
    int *turn_idx = xcalloc((size_t)turns + 1, sizeof *turn_idx);
    for (int j = 0; j < turns && total < cutoff; j++) {
        int u = hist ? turns - 1 - j : j;
        template_infer_seqlen(parts[2 * u].n, parts[2 * u + 1].n, cutoff - total, &sl[u], &tl[u]);
        total += sl[u] + tl[u];
        turn_idx[u] = j;
    }
    for (int u = 0; u < turns; u++)
        if (sl[u] + tl[u])
            label_turn(&parts[2 * u], sl[u], &parts[2 * u + 1], tl[u], turn_idx[u], flags, eff, eos,
                       &in, &lab);
    free(sl);
    free(tl);
    free(turn_idx);
    if (eff) {
        iv_push(&in, eos);
        iv_push(&lab, eos);
    }
    for (int k = 0; k < np; k++)
        free(parts[k].v);
    free(parts);
    int any = 0;
    for (size_t i = 0; i < lab.n && !any; i++)
        any = lab.v[i] != TEMPLATE_IGNORE;
    if (!any) lab.n = in.n = 0;
    *ids = in.v ? in.v : xmalloc(sizeof(int32_t));
    *labels = lab.v ? lab.v : xmalloc(sizeof(int32_t));
    *n = in.n;
    return 0;
}

int template_encode_prompt(const Template *t, const Tokenizer *tok, const ChatMessage *msgs,
                           int n_msgs, int32_t **ids, size_t *n, TunaErr *err) {
    *ids = NULL;
    *n = 0;
    IdVec *parts;
    int np;
    int rc = encode_messages(t, tok, msgs, n_msgs, 0, &parts, &np, err);
    if (rc) return rc;
    IdVec out = {0};
    for (int k = 0; k < np; k++) {
        iv_append(&out, parts[k].v, parts[k].n);
        free(parts[k].v);
    }
    free(parts);
    *ids = out.v ? out.v : xmalloc(sizeof(int32_t));
    *n = out.n;
    return 0;
}

// --- text rendering and `--template auto`

typedef struct TextBuf {
    char *s;
    size_t n, cap;
} TextBuf;

static void tb_add(TextBuf *b, const char *s) {
    size_t k = strlen(s);
    if (b->n + k + 1 > b->cap) {
        b->cap = (b->n + k + 1) * 2;
        b->s = xrealloc(b->s, b->cap);
    }
    memcpy(b->s + b->n, s, k + 1);
    b->n += k;
}

static void text_slot(const Template *t, const Slot *s, const char *content, const char *bos,
                      const char *eos, TextBuf *b) {
    for (int i = 0; i < s->n; i++) {
        const Elem *e = &s->el[i];
        if (e->kind == EL_BOS)
            tb_add(b, bos);
        else if (e->kind == EL_EOS)
            tb_add(b, t->replace_eos && t->n_stop > 0 ? t->stop_words[0] : eos);
        else {
            char *txt = fill(e->text, content ? content : "");
            tb_add(b, txt);
            free(txt);
        }
    }
}

int template_render_text(const Template *t, const ChatMessage *msgs, int n_msgs, const char *bos,
                         const char *eos, char **out, TunaErr *err) {
    *out = NULL;
    const char *system = NULL;
    int first = 0;
    if (n_msgs > 0 && role_of(msgs[0].role) == R_SYSTEM) {
        system = msgs[0].content;
        first = 1;
    }
    int n = n_msgs - first;
    if (n <= 0) return tuna_errf(err, TUNA_EINVAL, "conversation has no user message");
    for (int k = 0; k < n; k++) {
        int r = role_of(msgs[first + k].role);
        int ok = k % 2 == 0 ? (r == R_USER || r == R_OBSERVATION)
                            : (r == R_ASSISTANT || r == R_FUNCTION);
        if (!ok || !msgs[first + k].content)
            return tuna_errf(err, TUNA_EINVAL, "message %d: role \"%s\" out of turn", first + k,
                             msgs[first + k].role ? msgs[first + k].role : "(null)");
    }
    if (!system || !*system) system = t->default_system;
    int has_system = system && *system;
    TextBuf b = {0};
    tb_add(&b, "");
    for (int k = 0; k < n; k++) {
        const ChatMessage *m = &msgs[first + k];
        int r = role_of(m->role);
        char *merged = NULL;
        const char *content = m->content;
        if (k == 0) {
            text_slot(t, &t->prefix, "", bos, eos, &b);
            if (has_system) {
                if (t->merge_system) {
                    char *st = slot_first_text(&t->system, system);
                    size_t a = strlen(st), c = strlen(content);
                    merged = xmalloc(a + c + 1);
                    memcpy(merged, st, a);
                    memcpy(merged + a, content, c + 1);
                    free(st);
                    content = merged;
                } else {
                    text_slot(t, &t->system, system, bos, eos, &b);
                }
            }
        } else if (k % 2 == 0) {
            text_slot(t, &t->separator, "", bos, eos, &b);
        }
        const Slot *s = r == R_USER          ? &t->user
                        : r == R_ASSISTANT   ? &t->assistant
                        : r == R_OBSERVATION ? &t->observation
                                             : &t->function;
        text_slot(t, s, content, bos, eos, &b);
        free(merged);
    }
    *out = b.s;
    return 0;
}

char *template_format_text(const Template *t, int fmt, const char *content, const char *bos,
                           const char *eos) {
    const Slot *s = fmt == TEMPLATE_FMT_PREFIX        ? &t->prefix
                    : fmt == TEMPLATE_FMT_SYSTEM      ? &t->system
                    : fmt == TEMPLATE_FMT_USER        ? &t->user
                    : fmt == TEMPLATE_FMT_ASSISTANT   ? &t->assistant
                    : fmt == TEMPLATE_FMT_OBSERVATION ? &t->observation
                    : fmt == TEMPLATE_FMT_SEPARATOR   ? &t->separator
                                                      : NULL;
    if (fmt == TEMPLATE_FMT_SYSTEM_MERGED) return slot_first_text(&t->system, content);
    if (!s) return NULL;
    TextBuf b = {0};
    tb_add(&b, "");
    text_slot(t, s, content, bos, eos, &b);
    return b.s;
}

int template_merges_system(const Template *t) {
    return t->merge_system;
}

static int read_small_file(const char *path, char **out, size_t max) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    char *s = xmalloc(max + 1);
    size_t n = fread(s, 1, max + 1, f);
    fclose(f);
    if (n > max) {
        free(s);
        return -1;
    }
    s[n] = 0;
    *out = s;
    return 1;
}

static void token_text(const cJSON *v, char *out, size_t cap) {
    if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
    if (cJSON_IsString(v)) snprintf(out, cap, "%s", v->valuestring);
}

int template_model_chat_template(const char *model_path, char **src, char *bos, size_t bos_cap,
                                 char *eos, size_t eos_cap, TunaErr *err) {
    *src = NULL;
    bos[0] = eos[0] = 0;
    char gpath[4096];
    int g = gguf_model_path(model_path, gpath, sizeof gpath, err);
    if (g < 0) return g;
    if (g == 1) {
        Gguf *gf = NULL;
        int rc = gguf_open(gpath, &gf, err);
        if (rc) return rc;
        GgufStr s;
        rc = gguf_get_str(gf, "tokenizer.chat_template", &s, err);
        if (rc == 1) {
            *src = xmalloc(s.len + 1);
            memcpy(*src, s.s, s.len);
            (*src)[s.len] = 0;
            const GgufArr *toks = NULL;
            if (gguf_get_arr(gf, "tokenizer.ggml.tokens", &toks, NULL) == 1 &&
                toks->elem_type == GGUF_STRING) {
                const char *keys[2] = {"tokenizer.ggml.bos_token_id",
                                       "tokenizer.ggml.eos_token_id"};
                char *dst[2] = {bos, eos};
                size_t caps[2] = {bos_cap, eos_cap};
                for (int i = 0; i < 2; i++) {
                    int64_t id;
                    if (gguf_get_int(gf, keys[i], &id, NULL) == 1 && id >= 0 &&
                        (uint64_t)id < toks->n)
                        snprintf(dst[i], caps[i], "%.*s", (int)toks->strs[id].len,
                                 toks->strs[id].s);
                }
            }
        }
        gguf_free(gf);
        return rc < 0 ? rc : rc == 1;
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", model_path);
    char *js = NULL;
    int rd = read_small_file(path, &js, 64u << 20);
    if (rd < 0) return tuna_errf(err, TUNA_EFORMAT, "%s: larger than 64 MB", path);
    cJSON *root = NULL;
    if (rd == 1) {
        root = cJSON_Parse(js);
        free(js);
        if (!root) return tuna_errf(err, TUNA_EFORMAT, "%s: not valid JSON", path);
        token_text(cJSON_GetObjectItemCaseSensitive(root, "bos_token"), bos, bos_cap);
        token_text(cJSON_GetObjectItemCaseSensitive(root, "eos_token"), eos, eos_cap);
    }
    char jpath[4200];
    snprintf(jpath, sizeof jpath, "%s/chat_template.jinja", model_path);
    rd = read_small_file(jpath, src, 1u << 20);
    if (rd < 0) {
        cJSON_Delete(root);
        return tuna_errf(err, TUNA_EFORMAT, "%s: larger than 1 MB", jpath);
    }
    if (rd == 0 && root) {
        const cJSON *ct = cJSON_GetObjectItemCaseSensitive(root, "chat_template");
        if (cJSON_IsString(ct)) {
            *src = xstrdup(ct->valuestring);
        } else if (cJSON_IsArray(ct)) {
            const cJSON *e, *pick = NULL;
            cJSON_ArrayForEach(e, ct) {
                const cJSON *nm = cJSON_GetObjectItemCaseSensitive(e, "name");
                const cJSON *tt = cJSON_GetObjectItemCaseSensitive(e, "template");
                if (!cJSON_IsString(tt)) continue;
                if (!pick || (cJSON_IsString(nm) && !strcmp(nm->valuestring, "default"))) pick = tt;
            }
            if (pick) *src = xstrdup(pick->valuestring);
        } else if (ct && !cJSON_IsNull(ct)) {
            cJSON_Delete(root);
            return tuna_errf(err, TUNA_EFORMAT,
                             "%s: \"chat_template\" must be a string or a list of "
                             "{name, template}",
                             path);
        }
    }
    cJSON_Delete(root);
    return *src != NULL;
}

/* The test conversations (the generation prompt where one ends with the user). */
static const ChatMessage AUTO_C1[] = {{"user", "Hi!"}};
static const ChatMessage AUTO_C2[] = {{"system", "Be brief."}, {"user", "Hi!"}};
static const ChatMessage AUTO_C3[] = {
        {"user", "What is 2+2?"}, {"assistant", "4."}, {"user", "And 3+3?"}};
static const ChatMessage AUTO_C4[] = {
        {"system", "You are terse."}, {"user", "Name a color."}, {"assistant", "Blue."}};
static const ChatMessage AUTO_C5[] = {{"user", "Hello there"},
                                      {"assistant", "Hi. How can I help?"}};
static const struct {
    const ChatMessage *m;
    int n;
    const char *what;
} AUTO_CONVS[] = {{AUTO_C1, 1, "user"},
                  {AUTO_C2, 2, "system+user"},
                  {AUTO_C3, 3, "multi-turn"},
                  {AUTO_C4, 3, "system+user+reply"},
                  {AUTO_C5, 2, "user+reply"}};
#define N_AUTO (int)(sizeof AUTO_CONVS / sizeof AUTO_CONVS[0])

static cJSON *auto_ctx(const ChatMessage *m, int n, const char *bos, const char *eos) {
    cJSON *c = cJSON_CreateObject(), *msgs = cJSON_AddArrayToObject(c, "messages");
    for (int i = 0; i < n; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "role", m[i].role);
        cJSON_AddStringToObject(o, "content", m[i].content);
        cJSON_AddItemToArray(msgs, o);
    }
    cJSON_AddBoolToObject(c, "add_generation_prompt", !strcmp(m[n - 1].role, "user"));
    cJSON_AddStringToObject(c, "bos_token", bos);
    cJSON_AddStringToObject(c, "eos_token", eos);
    return c;
}

static size_t common_prefix(const char *a, const char *b) {
    size_t k = 0;
    while (a[k] && a[k] == b[k])
        k++;
    return k;
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return b <= a && !memcmp(s + a - b, suf, b);
}

typedef struct AutoScore {
    char name[64];
    int same;      /* identical conversations */
    double prefix; /* sum over conversations of common prefix / model text length */
    int tail_note; /* a finished conversation matched with the model's trailing header */
    int via_bos;   /* compared past the model's leading BOS (the built-in's auto_bos) */
} AutoScore;

static int score_cmp(const void *pa, const void *pb) {
    const AutoScore *a = pa, *b = pb;
    if (a->same != b->same) return b->same - a->same;
    if (a->via_bos != b->via_bos) return a->via_bos - b->via_bos; /* literal matches first */
    if (a->prefix != b->prefix) return b->prefix > a->prefix ? 1 : -1;
    return strcmp(a->name, b->name);
}

int template_auto_select(const char *templates_dir, const char *src, const char *bos,
                         const char *eos, int tok_adds_bos, const char *fallback, TemplateAuto *out,
                         TunaErr *err) {
    memset(out, 0, sizeof *out);
    if (!src) {
        snprintf(out->name, sizeof out->name, "%s", fallback);
        snprintf(out->why, sizeof out->why, "the model has no chat template: using %s", fallback);
        return 0;
    }
    out->has_model_template = 1;
    JinjaTemplate *jt = NULL;
    int rc = jinja_parse(src, strlen(src), "chat_template", &jt, err);
    if (rc) return rc;
    char *ref[N_AUTO] = {0};
    char jerr[N_AUTO][160];
    int n_ref = 0;
    for (int i = 0; i < N_AUTO; i++) {
        cJSON *ctx = auto_ctx(AUTO_CONVS[i].m, AUTO_CONVS[i].n, bos, eos);
        TunaErr e = {0};
        if (jinja_render(jt, ctx, &ref[i], NULL, &e) == 0)
            n_ref++;
        else
            snprintf(jerr[i], sizeof jerr[i], "%.150s", e.msg);
        cJSON_Delete(ctx);
    }
    jinja_free(jt);
    if (n_ref == 0) {
        rc = tuna_errf(err, TUNA_EFORMAT,
                       "the model's chat template fails on every test conversation: %s", jerr[0]);
        return rc;
    }
    char **names = NULL;
    int nn = 0;
    if ((rc = template_list(templates_dir, &names, &nn, err))) {
        for (int i = 0; i < N_AUTO; i++)
            free(ref[i]);
        return rc;
    }
    AutoScore *sc = xcalloc((size_t)(nn ? nn : 1), sizeof *sc);
    int ns = 0;
    for (int k = 0; k < nn; k++) {
        Template *t = NULL;
        if (template_load(templates_dir, names[k], &t, NULL)) continue;
        AutoScore *s = &sc[ns++];
        snprintf(s->name, sizeof s->name, "%s", names[k]);
        char *prompt1 = NULL;
        template_render_text(t, AUTO_C1, 1, bos, eos, &prompt1, NULL);
        /* a built-in whose encoding prepends the BOS (auto_bos, the tokenizer adding one) is the
         * model's template that writes {{ bos_token }} first (tuna's own HF exports do) */
        size_t bl = strlen(bos);
        int bos_rule = tok_adds_bos && bl && t->auto_bos && !template_starts_with_bos(t);
        for (int i = 0; i < N_AUTO; i++) {
            if (!ref[i]) continue;
            char *txt = NULL;
            if (template_render_text(t, AUTO_CONVS[i].m, AUTO_CONVS[i].n, bos, eos, &txt, NULL))
                continue;
            const char *r = ref[i];
            if (bos_rule && !strncmp(r, bos, bl) && strncmp(txt, bos, bl)) {
                r += bl;
                s->via_bos = 1;
            }
            size_t cp = common_prefix(txt, r);
            int same = !strcmp(txt, r);
            if (!same && cp == strlen(txt) &&
                strcmp(AUTO_CONVS[i].m[AUTO_CONVS[i].n - 1].role, "user") && prompt1 &&
                ends_with(prompt1, r + cp)) {
                same = 1; /* the model's template appends the assistant header after a reply */
                s->tail_note = 1;
            }
            s->same += same;
            size_t rl = strlen(r);
            s->prefix += rl ? (double)(same ? rl : cp) / (double)rl : 1.0;
            free(txt);
        }
        free(prompt1);
        template_free(t);
    }
    template_list_free(names, nn);
    qsort(sc, (size_t)ns, sizeof *sc, score_cmp);
    char skipped[200] = "";
    for (int i = 0; i < N_AUTO; i++)
        if (!ref[i]) {
            size_t l = strlen(skipped);
            snprintf(skipped + l, sizeof skipped - l, "%s%s", l ? ", " : "", AUTO_CONVS[i].what);
        }
    if (ns > 0 && sc[0].same == n_ref) {
        snprintf(out->name, sizeof out->name, "%s", sc[0].name);
        out->matched = 1;
        snprintf(out->why, sizeof out->why,
                 "the model's chat template renders exactly as %s on %d of %d test "
                 "conversations%s%s%s%s",
                 sc[0].name, n_ref, N_AUTO, skipped[0] ? " (it refuses: " : "", skipped,
                 skipped[0] ? ")" : "",
                 sc[0].tail_note ? "; it also appends the assistant header after a finished "
                                   "conversation, which training leaves out"
                                 : "");
    } else {
        const char *pick = ns > 0 && sc[0].same > 0 ? sc[0].name : fallback;
        snprintf(out->name, sizeof out->name, "%s", pick);
        char close[400] = "";
        for (int i = 0; i < ns && i < 3; i++) {
            size_t l = strlen(close);
            snprintf(close + l, sizeof close - l, "%s%s (%d/%d identical, %.0f%% common prefix)",
                     i ? ", " : "", sc[i].name, sc[i].same, n_ref, 100.0 * sc[i].prefix / n_ref);
        }
        snprintf(out->why, sizeof out->why,
                 "no built-in template renders as the model's chat template; closest: %s; using %s "
                 "(check the output, or write a templates/NAME.json for this model)",
                 ns ? close : "none", pick);
    }
    free(sc);
    for (int i = 0; i < N_AUTO; i++)
        free(ref[i]);
    return 0;
}

const char *template_auto_fallback(const char *name) {
    if (!name || strncmp(name, "auto", 4)) return NULL;
    if (!name[4]) return "vanilla";
    return name[4] == ':' && name[5] ? name + 5 : NULL;
}

/* Whether the model's tokenizer prepends a BOS when encoding (as training's auto_bos asks it):
 * loaded only for a template that writes bos_token; 0 when it cannot be read */
static int model_adds_bos(const char *model_path) {
    char gpath[4096];
    Tokenizer *tok = NULL;
    int g = gguf_model_path(model_path, gpath, sizeof gpath, NULL);
    if (g < 0 || (g == 1 ? tokenizer_load_gguf_file(gpath, &tok, NULL)
                         : tokenizer_load(model_path, &tok, NULL)))
        return 0;
    int adds = tokenizer_adds_bos(tok);
    tokenizer_free(tok);
    return adds;
}

/* template_auto, with the model's tokenizer where the caller holds it (NULL: loaded if needed) */
static int auto_match(const char *templates_dir, const char *model_path, const char *fallback,
                      const Tokenizer *tok, TemplateAuto *out, TunaErr *err) {
    char *src = NULL, bos[256], eos[256];
    int rc = template_model_chat_template(model_path, &src, bos, sizeof bos, eos, sizeof eos, err);
    if (rc < 0) return rc;
    rc = template_auto_select(templates_dir, src, bos, eos, 0, fallback, out, err);
    /* no literal match, and a template that writes the BOS: the tokenizer decides (loaded only
     * then: a big tokenizer.json takes a moment, and the Setup screen asks on every change) */
    if (!rc && src && !out->matched && bos[0] && strstr(src, "bos_token") &&
        (tok ? tokenizer_adds_bos(tok) : model_adds_bos(model_path)))
        rc = template_auto_select(templates_dir, src, bos, eos, 1, fallback, out, err);
    free(src);
    return rc;
}

int template_auto(const char *templates_dir, const char *model_path, const char *fallback,
                  TemplateAuto *out, TunaErr *err) {
    return auto_match(templates_dir, model_path, fallback, NULL, out, err);
}

int template_starts_with_bos(const Template *t) {
    ChatMessage m = {"user", "x"};
    char *s = NULL;
    if (template_render_text(t, &m, 1, "\x02", "", &s, NULL)) return 0;
    int r = s[0] == '\x02';
    free(s);
    return r;
}

int template_export_jinja(const char *templates_dir, const char *model_path, const char *name,
                          const char *system, const Tokenizer *tok, char **out, TunaErr *err) {
    *out = NULL;
    TemplateAuto a;
    TunaErr e = {0};
    int own_system = !system || !*system;
    /* the model's own: keep its source (an unreadable one is the loader's matter, not ours) */
    if (own_system && auto_match(templates_dir, model_path, "vanilla", tok, &a, &e) == 0 &&
        a.has_model_template && a.matched && !strcmp(a.name, name))
        return 0;
    Template *t = NULL;
    int rc = template_load(templates_dir, name, &t, err);
    if (rc) return rc;
    if (!own_system) template_set_default_system(t, system);
    char *j = template_to_jinja(t);
    /* the BOS that training's encoding prepends (auto_bos), which apply_chat_template's
     * tokenizing (no special tokens) would not add */
    if (tok && t->auto_bos && tokenizer_adds_bos(tok) && !template_starts_with_bos(t)) {
        *out = xmalloc(strlen(j) + 16);
        sprintf(*out, "{{ bos_token }}%s", j);
        free(j);
    } else {
        *out = j;
    }
    template_free(t);
    return 0;
}

// --- the template as Jinja (GGUF tokenizer.chat_template, for llama.cpp)

/* Appends s (n bytes) escaped for a single-quoted Jinja string. */
static void jj_quote(TextBuf *b, const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        char e[8] = {s[i], 0};
        if (s[i] == '\'' || s[i] == '\\') snprintf(e, sizeof e, "\\%c", s[i]);
        if (s[i] == '\n') snprintf(e, sizeof e, "\\n");
        if (s[i] == '\r') snprintf(e, sizeof e, "\\r");
        tb_add(b, e);
    }
}

/* Appends literal text: raw where it holds no Jinja delimiter, else as a quoted string. */
static void jj_text(TextBuf *b, const char *s, size_t n) {
    if (!n) return;
    int raw = 1;
    for (size_t i = 0; i + 1 < n; i++)
        if (s[i] == '{' && (s[i + 1] == '{' || s[i + 1] == '%' || s[i + 1] == '#')) raw = 0;
    if (n && s[n - 1] == '{') raw = 0; /* would join the next tag */
    if (raw) {
        char *c = xstrndup(s, n);
        tb_add(b, c);
        free(c);
        return;
    }
    tb_add(b, "{{ '");
    jj_quote(b, s, n);
    tb_add(b, "' }}");
}

/* A slot with {{content}} as the Jinja expression content_expr. */
static void jj_slot(const Template *t, const Slot *s, const char *content_expr, TextBuf *b) {
    for (int i = 0; i < s->n; i++) {
        const Elem *e = &s->el[i];
        if (e->kind == EL_BOS) {
            tb_add(b, "{{ bos_token }}");
        } else if (e->kind == EL_EOS) {
            if (t->replace_eos && t->n_stop > 0)
                jj_text(b, t->stop_words[0], strlen(t->stop_words[0]));
            else
                tb_add(b, "{{ eos_token }}");
        } else {
            const char *m = strstr(e->text, "{{content}}");
            if (!m) {
                jj_text(b, e->text, strlen(e->text));
                continue;
            }
            jj_text(b, e->text, (size_t)(m - e->text));
            tb_add(b, "{{ ");
            tb_add(b, content_expr);
            tb_add(b, " }}");
            jj_text(b, m + 11, strlen(m + 11));
        }
    }
}

char *template_to_jinja(const Template *t) {
    TextBuf b = {0};
    tb_add(&b, "");
    /* the system text: the conversation's own when not empty, else the default */
    tb_add(&b, "{% set ns = namespace(sys='', first=0, merged='') %}");
    if (t->default_system && *t->default_system) {
        tb_add(&b, "{% set ns.sys = '");
        jj_quote(&b, t->default_system, strlen(t->default_system));
        tb_add(&b, "' %}");
    }
    tb_add(&b, "{% if messages and messages[0]['role'] == 'system' %}{% set ns.first = 1 %}"
               "{% if messages[0]['content'] %}{% set ns.sys = messages[0]['content'] %}"
               "{% endif %}{% endif %}");
    tb_add(&b, "{% for message in messages %}{% set k = loop.index0 - ns.first %}"
               "{% if k >= 0 %}");
    tb_add(&b, "{% if k == 0 %}");
    jj_slot(t, &t->prefix, "''", &b);
    const char *first_content = "message['content']";
    if (t->merge_system) {
        /* the system slot's first text, filled, goes in front of the first message */
        tb_add(&b, "{% set ns.merged = message['content'] %}{% if ns.sys %}");
        const Elem *st = NULL;
        for (int i = 0; i < t->system.n && !st; i++)
            if (t->system.el[i].kind == EL_TEXT) st = &t->system.el[i];
        tb_add(&b, "{% set ns.merged = ");
        if (st) {
            const char *m = strstr(st->text, "{{content}}");
            size_t pre = m ? (size_t)(m - st->text) : strlen(st->text);
            tb_add(&b, "'");
            jj_quote(&b, st->text, pre);
            tb_add(&b, "'");
            if (m) {
                tb_add(&b, " ~ ns.sys ~ '");
                jj_quote(&b, m + 11, strlen(m + 11));
                tb_add(&b, "'");
            }
        } else {
            tb_add(&b, "ns.sys");
        }
        tb_add(&b, " ~ message['content'] %}{% endif %}");
        first_content = "ns.merged";
    } else {
        tb_add(&b, "{% if ns.sys %}");
        jj_slot(t, &t->system, "ns.sys", &b);
        tb_add(&b, "{% endif %}");
    }
    tb_add(&b, "{% elif k % 2 == 0 %}");
    jj_slot(t, &t->separator, "''", &b);
    tb_add(&b, "{% endif %}");
    /* the message's own slot */
    static const struct {
        const char *cond;
        int slot; /* 0 user, 1 assistant, 2 observation, 3 function */
    } roles[] = {{"message['role'] == 'user'", 0},
                 {"message['role'] == 'assistant'", 1},
                 {"message['role'] == 'observation' or message['role'] == 'tool'", 2},
                 {"message['role'] == 'function'", 3}};
    for (int i = 0; i < 4; i++) {
        tb_add(&b, i == 0 ? "{% if " : "{% elif ");
        tb_add(&b, roles[i].cond);
        tb_add(&b, " %}");
        const Slot *s = roles[i].slot == 0   ? &t->user
                        : roles[i].slot == 1 ? &t->assistant
                        : roles[i].slot == 2 ? &t->observation
                                             : &t->function;
        tb_add(&b, "{% if k == 0 %}");
        jj_slot(t, s, first_content, &b);
        tb_add(&b, "{% else %}");
        jj_slot(t, s, "message['content']", &b);
        tb_add(&b, "{% endif %}");
    }
    tb_add(&b, "{% endif %}{% endif %}{% endfor %}");
    return b.s;
}
