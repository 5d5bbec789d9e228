/* tokenizer.h: Hugging Face `tokenizers`-exact BPE (byte-level and SentencePiece-style with
 * byte fallback), loaded from DIR/tokenizer.json + optional DIR/tokenizer_config.json (bos/eos/
 * pad, chat template), or from a GGUF file's tokenizer.ggml.* metadata (tokenizer_gguf.c).
 * Supports normalizers Sequence/Prepend/Replace/NFC/Strip, pre-tokenizers Split/ByteLevel/
 * Metaspace/Digits, post-processors Template/ByteLevel/Bert/Roberta, decoders Replace/
 * ByteFallback/Fuse/Strip/ByteLevel/Metaspace (all with Sequence). No offsets, training,
 * truncation or padding. A loaded Tokenizer is immutable: any thread may use it concurrently;
 * the creator frees it with tokenizer_free. */
#ifndef TUNA_SRC_TOKENIZER_H
#define TUNA_SRC_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

typedef struct Tokenizer Tokenizer;

/* Loads dir/tokenizer.json (+ optional dir/tokenizer_config.json), or, where dir names a GGUF
 * model (gguf_model_path: a .gguf file, or a folder holding one and no config.json), the
 * tokenizer in the file's tokenizer.ggml.* metadata (tokenizer_gguf.c). On success *out is owned
 * by the caller. Bad files give TUNA_EIO/TUNA_EFORMAT/TUNA_EUNSUP with a one-line message. */
int tokenizer_load(const char *dir, Tokenizer **out, TunaErr *err);

/* The tokenizer of an open GGUF file (tokenizer_gguf.c), built as the model's own tokenizer.json
 * would be: byte-level BPE ("gpt2") with the pre-tokenizer named by tokenizer.ggml.pre (default,
 * gpt2, llama-bpe/llama3, qwen2, smollm), or a SentencePiece "llama" vocabulary (scores, byte
 * fallback, merges derived from the scores when the file has none). token_type 3 (control)
 * tokens become special added tokens, 4 (user-defined) plain added tokens; bos/eos/pad/unk ids,
 * add_bos_token/add_eos_token and the chat template come from the metadata. */
struct Gguf;
int tokenizer_load_gguf(const struct Gguf *g, Tokenizer **out, TunaErr *err);
int tokenizer_load_gguf_file(const char *path, Tokenizer **out, TunaErr *err);
/* The same tokenizer as Hugging Face files in dir: tokenizer.json (the document the GGUF's
 * tokenizer is built from) and tokenizer_config.json (bos, eos, unk and pad tokens, add_bos_token,
 * add_eos_token and the chat template): a GGUF model exported to Hugging Face format loads with
 * its tokenizer, in tuna and in transformers. A file without tokenizer.ggml.model: nothing. */
int tokenizer_gguf_write_hf(const char *path, const char *dir, TunaErr *err);
void tokenizer_free(Tokenizer *tok); /* NULL-safe */

/* Encodes len bytes of text (UTF-8; invalid sequences are read as U+FFFD, as Rust's
 * from_utf8_lossy does). add_special: apply the post-processor (HF add_special_tokens).
 * On success *ids is malloc'd (caller frees; non-NULL even when *n == 0). */
int tokenizer_encode(const Tokenizer *tok, const char *text, size_t len, int add_special,
                     int32_t **ids, size_t *n, TunaErr *err);

/* Decodes to a malloc'd NUL-terminated UTF-8 string (caller frees), following HF decode: ids
 * out of range are dropped, skip_special drops special added tokens, then the decoder chain
 * runs (no decoder: tokens joined by spaces). */
char *tokenizer_decode(const Tokenizer *tok, const int32_t *ids, size_t n, int skip_special);
/* Same, and *len (if not NULL) gets the byte length: the text may contain U+0000. */
char *tokenizer_decode_len(const Tokenizer *tok, const int32_t *ids, size_t n, int skip_special,
                           size_t *len);

int tokenizer_vocab_size(const Tokenizer *tok); /* max id + 1, added tokens incl. */
int tokenizer_token_id(const Tokenizer *tok, const char *piece); /* added tokens first; -1 absent */
const char *tokenizer_token_str(const Tokenizer *tok, int id);   /* borrowed; NULL out of range */
int tokenizer_bos_id(const Tokenizer *tok); /* tokenizer_config.json bos_token (GGUF: bos id); -1 */
int tokenizer_eos_id(const Tokenizer *tok); /* tokenizer_config.json eos_token (GGUF: eos id); -1 */
int tokenizer_pad_id(const Tokenizer *tok); /* tokenizer_config.json pad_token; -1 if none */
int tokenizer_is_special(const Tokenizer *tok, int id); /* 1 for special added tokens */
/* The model's chat template (Jinja source, borrowed), NULL when it has none: tokenizer_config.json's
 * "chat_template" (a string, or the "default" entry of a list of {name, template}), or the GGUF's
 * tokenizer.chat_template. */
const char *tokenizer_chat_template(const Tokenizer *tok);

/* Internal (tokenizer_gguf.c -> tokenizer.c): builds a tokenizer from a tokenizer.json document
 * already parsed; path names the source in messages; meta (may be NULL) overrides the special
 * token ids and carries the chat template. */
struct cJSON;
typedef struct TokMeta {
    int bos_id, eos_id, pad_id; /* -1: none */
    const char *chat_template;  /* NULL: none */
    const char *merges_key;     /* the key merge errors name */
} TokMeta;
int tokenizer_from_json(const char *path, const struct cJSON *root, const TokMeta *meta,
                        Tokenizer **out, TunaErr *err);

/* --- Unicode helpers (tokenizer_unicode.c), pure functions on valid UTF-8 */

/* 1 if s may change under NFC (quick check), 0 if it is certainly NFC already. */
int tokenizer_nfc_needed(const char *s, size_t len);
/* Returns the NFC form of s, malloc'd and NUL-terminated (caller frees); *out_len its length. */
char *tokenizer_nfc(const char *s, size_t len, size_t *out_len);
/* Writes code point c as UTF-8 into o (room for 4 bytes); returns the byte count. */
size_t tokenizer_utf8_put(uint32_t c, char *o);

#endif
