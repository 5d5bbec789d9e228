/* modelfile.h: an Ollama Modelfile for an exported GGUF: FROM, ADAPTER (the LoRA form), TEMPLATE
 * in Ollama's Go-template syntax that renders a conversation as tuna's chat template does,
 * PARAMETER stop for every stop word and SYSTEM for the template's default system prompt.
 *
 * The TEMPLATE uses Ollama's .Messages form (range over .Messages with .Role/.Content, .System
 * for the system text), which Ollama renders once over the whole conversation, so multi-turn
 * conversations come out exactly as template_render_text writes them (the .Prompt/.Response form
 * is rendered turn by turn and cannot express formats that depend on the turn, e.g. the
 * separator or merge_system_into_user). Roles: user, assistant, tool (tuna's observation).
 * BOS: a BOS that starts the rendered text is left out of the TEMPLATE; llama.cpp (Ollama's
 * runner) adds it when it tokenizes the prompt, as the GGUF's tokenizer.ggml.add_bos_token says,
 * so the exporter sets that key to true when template_starts_with_bos(). A BOS later in
 * the text (Llama 2's every user turn) is written as its text, which llama.cpp reads back as the
 * special token. Not covered: tool calls (tuna's function/tools roles). Tested against Go's
 * text/template by tests/test_modelfile.c with tests/gotmpl/. */
#ifndef TUNA_SRC_MODELFILE_H
#define TUNA_SRC_MODELFILE_H

#include "err.h"
#include "template.h"

/* The Modelfile text. from: the FROM value (a GGUF path, written as given); adapter: the
 * ADAPTER value or NULL for a merged model; bos/eos: the text of the model's BOS and EOS tokens
 * ("" when it has none; eos is only used by templates without replace_eos). *out malloc'd.
 * TUNA_EINVAL (one line) for a stop word or system prompt that a Modelfile cannot hold. */
int modelfile_render(const Template *t, const char *from, const char *adapter, const char *bos,
                     const char *eos, char **out, TunaErr *err);

/* Writes path (through path.tmp-PID and a rename: the old file or the new one, never half of
 * one). BOS/EOS text is read from from_gguf's tokenizer (tokenizer.ggml.*). FROM and ADAPTER
 * are written relative to the Modelfile's folder ("./NAME") when they lie in it, else as
 * given. adapter_gguf NULL: the merged form. One-line errors. */
int modelfile_write(const char *path, const Template *t, const char *from_gguf,
                    const char *adapter_gguf, TunaErr *err);

#endif
