/* jinja.h: a small, bounded Jinja2 subset interpreter for the chat templates models carry
 * (tokenizer_config.json "chat_template", GGUF tokenizer.chat_template), rendering as
 * transformers' apply_chat_template does: trim_blocks and lstrip_blocks on, one trailing newline
 * of the source dropped, undefined values print as "".
 * Supported: {{ }}, {% %}, {# #}, '-' and '+' whitespace control; for (loop.*, else, inline if,
 * tuple targets, break/continue), if/elif/else, set (incl. namespace() attributes and set blocks),
 * macros; literals, lists, dicts, attribute/item access, slices, ~ + - * / // % **, comparisons,
 * and/or/not, in/not in, is tests, x if c else y; the common filters and Python string/dict
 * methods chat templates use; range, namespace, raise_exception, strftime_now.
 * Not: autoescape, includes/extends/blocks, call blocks, string % formatting.
 * Bounded: nesting depth, output size, loop iterations and memory; an error is one line,
 * "NAME:LINE:COL: what". Pure function of its inputs (strftime_now aside); thread-safe. */
#ifndef TUNA_SRC_JINJA_H
#define TUNA_SRC_JINJA_H

#include <stddef.h>

#include "err.h"

struct cJSON;

#define JINJA_MAX_OUTPUT (4u << 20) /* bytes one render may produce */
#define JINJA_MAX_ITERS  100000     /* loop iterations (all loops) per render */
#define JINJA_MAX_DEPTH  200        /* nesting of expressions, blocks and macro calls */
#define JINJA_MAX_SOURCE (1u << 20) /* template source bytes */

typedef struct JinjaTemplate JinjaTemplate;

/* Parses src (len bytes, may contain NULs only as an error). name is used in error messages
 * (e.g. "tokenizer_config.json chat_template"). On success *out is owned by the caller. */
int jinja_parse(const char *src, size_t len, const char *name, JinjaTemplate **out, TunaErr *err);
void jinja_free(JinjaTemplate *t); /* NULL-safe */

/* Renders t with the variables of ctx (a JSON object: objects become dicts, arrays lists).
 * *out is malloc'd, NUL-terminated, *out_len bytes (out_len may be NULL); caller frees. */
int jinja_render(const JinjaTemplate *t, const struct cJSON *ctx, char **out, size_t *out_len,
                 TunaErr *err);

/* Parse + render in one call. */
int jinja_render_string(const char *src, size_t len, const char *name, const struct cJSON *ctx,
                        char **out, size_t *out_len, TunaErr *err);

#endif
