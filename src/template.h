/* template.h: chat templates loaded from JSON data files (templates/NAME.json, schema in
 * templates/README.md) and the encoders that turn a conversation into token ids and labels,
 * mirroring LLaMA-Factory's template.py + supervised.py: every message is rendered from its
 * format slot, each slot element is tokenized on its own (add_special off) and concatenated,
 * so label boundaries are exact at message level. User/system/scaffolding labels are -100;
 * each assistant message (content plus its end marker) trains.
 * Does not do: jinja, multimodal, LLaMA-Factory's per-model tool formatters (tools are inserted
 * as raw JSON text through format_tools). A loaded Template is immutable: any thread may use it;
 * the creator frees it with template_free. */
#ifndef TUNA_SRC_TEMPLATE_H
#define TUNA_SRC_TEMPLATE_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "tokenizer.h"

#define TEMPLATE_IGNORE (-100) /* label of a position that does not train */

typedef struct Template Template;

/* LLaMA-Factory's infer_seqlen: how much of a (source, target) pair of these lengths fits in
 * cutoff_len (the target counts more). The supervised encoder and the preference pairs' share. */
void template_infer_seqlen(size_t source_len, size_t target_len, size_t cutoff_len, size_t *new_src,
                           size_t *new_tgt);

/* Loads templates_dir/name.json. name must be a plain file stem ([A-Za-z0-9_.-], no '/').
 * TUNA_ENOTFOUND (with the list of available names) if the file is missing, TUNA_EFORMAT with
 * file and key for a bad file. On success *out is owned by the caller. */
int template_load(const char *templates_dir, const char *name, Template **out, TunaErr *err);
void template_free(Template *t); /* NULL-safe */
/* The first {{word}} in t's formats that nothing fills (not content, name, arguments, bos_token
 * or eos_token): a misspelling such as {{contnet}}. Copied into out; 0 if there is none. */
int template_unknown_placeholder(const Template *t, char *out, size_t cap);
const char *template_name(const Template *t);           /* borrowed */
const char *template_default_system(const Template *t); /* borrowed, "" when none */
/* Replaces t's default system prompt (LLaMA-Factory's default_system: the system of every
 * conversation that has none, in training and in the template's exports). */
void template_set_default_system(Template *t, const char *system);
const char *template_description(const Template *t); /* borrowed, "" when none */

/* Sorted names of templates_dir/ *.json (without ".json"). *names is malloc'd, each name too;
 * free with template_list_free. */
int template_list(const char *templates_dir, char ***names, int *n, TunaErr *err);
void template_list_free(char **names, int n); /* NULL-safe */

/* One message. role: "system" (first only), "tools" (optional, before the first user message:
 * its content, usually a JSON array of function schemas, goes through format_tools and is
 * appended to the system text), "user", "assistant", "observation", "function". Strings are
 * borrowed. After system/tools the roles alternate: user|observation, then assistant|function. */
typedef struct ChatMessage {
    const char *role;
    const char *content;
} ChatMessage;

/* Flags of template_encode_train, LLaMA-Factory's data arguments of the same names. */
enum {
    TEMPLATE_TRAIN_ON_PROMPT = 1, /* prompt tokens train too (train_on_prompt) */
    TEMPLATE_MASK_HISTORY = 2,    /* only the last reply trains; truncation keeps the last turns */
};

/* Encodes a conversation for training. The conversation (after system/tools) must end with an
 * assistant|function message. *ids and *labels are malloc'd, (n) each, caller frees (non-NULL
 * even when *n == 0). labels[i] is ids[i] where the token trains, TEMPLATE_IGNORE elsewhere.
 * BOS: the template's {{bos_token}} elements; with "auto_bos" (default true) the tokenizer's BOS
 * is prepended when its post-processor adds one (stories260K, Llama 2) and the template did not.
 * cutoff_len > 0 truncates as LLaMA-Factory's infer_seqlen (turn by turn, keeping the start);
 * if nothing trainable is left, *n = 0 (success). Bad roles -> TUNA_EINVAL. */
int template_encode_train(const Template *t, const Tokenizer *tok, const ChatMessage *msgs,
                          int n_msgs, int cutoff_len, int flags, int32_t **ids, int32_t **labels,
                          size_t *n, TunaErr *err);

/* Encodes a prompt for generation: all messages (the last one a user|observation turn, whose
 * format ends with the assistant header). *ids malloc'd (n), caller frees. Stop strings for
 * generation: template_stop_words() plus the text of template_eos_id(). */
int template_encode_prompt(const Template *t, const Tokenizer *tok, const ChatMessage *msgs,
                           int n_msgs, int32_t **ids, size_t *n, TunaErr *err);

/* The template's stop words (borrowed array, valid while t lives); returns the count. */
int template_stop_words(const Template *t, const char *const **words);

/* The id written for {{eos_token}}: with replace_eos the id of stop_words[0] when it is one token,
 * else the tokenizer's EOS; -1 if neither exists. */
int template_eos_id(const Template *t, const Tokenizer *tok);

/* One format as template_render_text writes it, for writers of the same template in another
 * language (src/modelfile.c): content fills {{content}}, bos/eos as in template_render_text.
 * TEMPLATE_FMT_SYSTEM_MERGED is the text merge_system_into_user puts before the first user
 * message's content. malloc'd; NULL for an unknown fmt. */
enum {
    TEMPLATE_FMT_PREFIX,
    TEMPLATE_FMT_SYSTEM,
    TEMPLATE_FMT_SYSTEM_MERGED,
    TEMPLATE_FMT_USER,
    TEMPLATE_FMT_ASSISTANT,
    TEMPLATE_FMT_OBSERVATION,
    TEMPLATE_FMT_SEPARATOR,
};
char *template_format_text(const Template *t, int fmt, const char *content, const char *bos,
                           const char *eos);
int template_merges_system(const Template *t); /* merge_system_into_user */

// --- the model's own template (`--template auto`)

/* Renders a conversation as text, as template_encode_train (conversation ending with an
 * assistant|function turn) or template_encode_prompt (ending with a user turn) would before
 * tokenizing: {{bos_token}} is bos, {{eos_token}} the template's EOS text (stop_words[0] with
 * replace_eos, else eos). auto_bos is not applied (it is a tokenizer matter). *out malloc'd. */
int template_render_text(const Template *t, const ChatMessage *msgs, int n_msgs, const char *bos,
                         const char *eos, char **out, TunaErr *err);

/* The template as a Jinja chat template (HF/llama.cpp conventions: messages with role and
 * content, bos_token, eos_token) that renders every conversation template_render_text accepts
 * byte for byte as it does (role "tool" is read as "observation"). Malloc'd; caller frees. */
char *template_to_jinja(const Template *t);
/* The chat template a model carries: model_path is a .gguf file or a folder of one
 * (tokenizer.chat_template; BOS/EOS text from tokenizer.ggml.*), or an HF folder
 * (chat_template.jinja, else tokenizer_config.json "chat_template": a string, or a list of
 * {name, template} where "default" or the first is used; bos_token/eos_token). Returns 1 with
 * *src malloc'd (caller frees) and bos/eos filled ("" when unknown), 0 when the model has none,
 * or an error code for an unreadable or malformed file. */
int template_model_chat_template(const char *model_path, char **src, char *bos, size_t bos_cap,
                                 char *eos, size_t eos_cap, TunaErr *err);

typedef struct TemplateAuto {
    char name[64]; /* the chosen built-in template */
    int matched;   /* 1: it renders exactly as the model's template on every test conversation */
    int has_model_template; /* 0: the model carries no chat template */
    char why[1024];         /* one line: what matched, or which came close and what was chosen */
} TemplateAuto;

/* `--template auto`: renders the model's chat template (src, with bos/eos text) on a fixed set
 * of conversations (user only, system + user, multi-turn, finished conversations with and
 * without a system message; the generation prompt where the conversation ends with the user) and
 * picks the built-in template of templates_dir that renders the same text on every one of them.
 * Conversations the model's template refuses (raise_exception, e.g. no system role) are skipped.
 * A finished conversation also matches when the model's template appends (part of) the assistant
 * header after it (early Llama 3 templates always do). No match: the closest (most identical
 * conversations, then longest common prefix) when one conversation or more is identical, else
 * fallback; out->why names the closest ones. src NULL: no template, fallback with a note.
 * tok_adds_bos: the model's tokenizer prepends a BOS, so a model template that writes
 * {{ bos_token }} first also matches a built-in whose encoding prepends it (auto_bos, no BOS of
 * its own): what template_export_jinja writes (a literal match is preferred). */
int template_auto_select(const char *templates_dir, const char *src, const char *bos,
                         const char *eos, int tok_adds_bos, const char *fallback, TemplateAuto *out,
                         TunaErr *err);

/* The fallback of a template name asking for auto: "auto" -> "vanilla", "auto:NAME" -> NAME
 * (LLaMA-Factory's files: auto:empty); NULL for any other name. */
const char *template_auto_fallback(const char *name);

/* template_model_chat_template + template_auto_select. */
int template_auto(const char *templates_dir, const char *model_path, const char *fallback,
                  TemplateAuto *out, TunaErr *err);

/* 1 when the template's rendering of a conversation starts with the BOS token (its own
 * {{bos_token}}, not auto_bos). */
int template_starts_with_bos(const Template *t);

/* The chat template a Hugging Face checkpoint of a model trained with template name should carry
 * (an export, a full run's model): *out NULL when name is the built-in that matches the model's
 * own chat template exactly (the model's source is kept: it may say more, tools say, than the
 * built-in), else the template as Jinja (template_to_jinja; malloc'd), as LLaMA-Factory writes
 * its template into the tokenizer it saves, with {{ bos_token }} first where training's encoding
 * prepends the BOS (auto_bos, tok's post-processor adding one): transformers' apply_chat_template
 * tokenizes without special tokens, so its ids are then training's. system: the run's default
 * system prompt (template_set_default_system; NULL or "": the template's own), always written.
 * Errors: the template cannot be loaded. */
int template_export_jinja(const char *templates_dir, const char *model_path, const char *name,
                          const char *system, const Tokenizer *tok, char **out, TunaErr *err);

#endif
