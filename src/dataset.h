/* dataset.h: the dataset registry (DIR/dataset_info.json, LLaMA-Factory's schema), the row
 * loaders and the batcher. Turns rows into Examples (token ids + labels) through a Template.
 *
 * Registry entry: {"file_name", "formatting": "alpaca"|"sharegpt", "ranking", "columns":
 * {prompt, query, response, system, history, messages, tools}, "tags": {role_tag, content_tag,
 * user_tag, assistant_tag, observation_tag, function_tag, system_tag}}. Without "columns" the
 * defaults are LLaMA-Factory's (instruction/input/output, conversations); with "columns" the
 * keys it omits are unused, as in LLaMA-Factory. Files: .jsonl (one object per line, read line by
 * line), .json (a top-level array, scanned element by element so no whole-file cJSON tree is
 * built; a .json starting with '{' is read as JSON lines), .txt (one row per non-empty line,
 * column "text"; stage pt only). Ranking datasets ("ranking": true, columns chosen and
 * rejected: strings in alpaca form, messages in sharegpt form after a prompt that ends with a
 * user turn) load only with DatasetOptions.ranking, and then only they do: each row is a pair of
 * Examples, chosen then rejected, sharing the prompt (every token before the last reply,
 * masked), truncated together as LLaMA-Factory's pairwise processor (infer_seqlen of the prompt
 * and the longer answer). kto datasets (columns.kto_tag: a boolean column, LLaMA-Factory's
 * feedback data) load only with DatasetOptions.kto, and then only they do: each row is one
 * Example, the prompt (every message before the last, masked) and the last reply, truncated as
 * LLaMA-Factory's feedback processor (infer_seqlen of the prompt and the reply), its tag 1 when
 * the column is true (desirable), 0 when false; a tag that is not a boolean is a bad row.
 * A bad row is reported as `FILE:LINE: what` (the line where the element starts): fatal with
 * strict, else skipped and counted, the first DATASET_MAX_MSGS messages kept.
 * Single-threaded: a Dataset/Batcher is used by one thread (the trainer). */
#ifndef TUNA_SRC_DATASET_H
#define TUNA_SRC_DATASET_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "template.h"
#include "tokenizer.h"

typedef struct DatasetOptions {
    const char *names;       /* comma-separated dataset_info.json keys, concatenated in order */
    const char *dataset_dir; /* NULL -> "datasets" */
    const char *vars;        /* "name=Tuna,author=Ann": {{name}}, {{author}} replaced in all text */
    int cutoff_len;          /* > 0: truncate (sft) / block size (pt); 0: no limit */
    int max_samples;         /* rows read per dataset, 0 = all */
    int strict;              /* a bad row is fatal */
    int stage_pt;       /* plain text: text + EOS, every token trains, packed into cutoff_len */
    int template_flags; /* sft: TEMPLATE_TRAIN_ON_PROMPT | TEMPLATE_MASK_HISTORY */
    int ranking;        /* preference stages: ranking datasets only, loaded as pairs */
    int kto;            /* stage kto: kto_tag datasets only, examples with their tag */
    /* several datasets: LLaMA-Factory's mix_strategy as datasets.interleave_datasets does it
     * (DATASET_MIX_*; not for stage pt), with probabilities (n_probs of them, one a dataset;
     * 0: round-robin) drawn from seed */
    int mix;
    const double *probs;
    int n_probs;
    uint64_t mix_seed;
} DatasetOptions;

/* mix_strategy: concat (in order), interleave_under (until the first dataset runs out),
 * interleave_over (until every one has run out once, the others starting over) */
enum { DATASET_MIX_CONCAT, DATASET_MIX_UNDER, DATASET_MIX_OVER };

typedef struct Example {
    int32_t *ids;    /* (n) */
    int32_t *labels; /* (n) ids[i] or TEMPLATE_IGNORE (-100) */
    int n;
    int tag; /* kto: 1 desirable, 0 undesirable; -1 for other data */
} Example;

#define DATASET_MAX_MSGS 5

typedef struct Dataset {
    Example *ex; /* (n) owned, each ids/labels malloc'd */
    int pairs;   /* ranking: ex[2i] is pair i's chosen, ex[2i + 1] its rejected */
    int kto;     /* kto: each example has its tag; batches carry the KL rows */
    size_t n, cap;
    size_t n_rows;         /* rows read (good + bad) */
    size_t n_skipped;      /* bad rows skipped (non-strict) */
    size_t n_dropped;      /* rows with nothing trainable left after cutoff */
    size_t n_truncated;    /* examples shortened by cutoff_len */
    size_t n_tokens;       /* sum of Example.n */
    size_t n_train_tokens; /* labels != -100 */
    int n_msgs;            /* first bad-row messages, for a summary */
    char msgs[DATASET_MAX_MSGS][TUNA_ERR_LEN];
    size_t n_unfilled; /* rows with a {{placeholder}} no --vars filled (kept; strict: fatal) */
    char unfilled[TUNA_ERR_LEN]; /* the first one: "FILE:LINE: {{name}}" */
} Dataset;

/* Loads and encodes opt->names. tpl may be NULL only with stage_pt. On success *out is owned by
 * the caller (dataset_free). Errors: unknown name (TUNA_ENOTFOUND), bad registry or, with strict,
 * bad row (TUNA_EFORMAT), ranking/kto or text data for sft (TUNA_EUNSUP), I/O (TUNA_EIO). */
int dataset_load(const DatasetOptions *opt, const Tokenizer *tok, const Template *tpl,
                 Dataset **out, TunaErr *err);
void dataset_free(Dataset *d); /* NULL-safe */

/* Deterministic split. Shuffles indices with seed; the first round(val_size*n) (or (size_t)
 * val_size when val_size >= 1) go to *val, the rest to *train, each keeping the original order.
 * The Examples are moved: afterwards `all` is empty (n == 0, counters kept) but must still be
 * freed; *train and *val own their examples (free each with dataset_free). val_size 0 gives an
 * empty *val. TUNA_EINVAL when val_size < 0 or would leave train empty. A dataset of pairs
 * splits by pair (val_size counts pairs), both halves keeping pairs. */
int dataset_split(Dataset *all, double val_size, uint64_t seed, Dataset **train, Dataset **val,
                  TunaErr *err);

// --- batching

typedef struct Batch {
    int B, T;         /* T: the Batcher's T, or with pad_multiple this batch's own row length */
    int32_t *ids;     /* (B, T) borrowed from the Batcher, valid until the next batcher_next */
    int32_t *targets; /* (B, T) targets[t] = labels[t+1]; -100 at pads, example ends, row end */
    int n_targets;    /* targets != -100 */
    /* kto (Dataset.kto): (B/2) row b's tag (1 desirable, 0 undesirable, -1 an empty row);
     * else NULL. Rows 0..B/2-1 are the examples, B/2..B-1 their KL rows (see Batcher). */
    const int32_t *tags;
    int n_tokens; /* non-pad positions */
    /* (B, T) with BATCH_PACK_NEAT, else NULL: the row position where the example holding each
     * position starts (pads after a row's last example start their own span). Positions
     * restart there and attention stays inside: train_set_spans. Borrowed like ids. */
    int32_t *seg_start;
    /* the whole global batch's counts (batcher_set_rank): what one process running all of it
     * would see, for the loss normalisation; = n_targets, n_tokens without a rank share */
    int n_targets_global, n_tokens_global;
} Batch;

/* Batcher flags (batcher_init's `flags`). */
#define BATCH_PACK            1 /* several examples per row, attending to each other (LLaMA-Factory packing) */
#define BATCH_PACK_NEAT       2  /* BATCH_PACK with each example kept to itself: neat_packing */
#define BATCH_GROUP_BY_LENGTH 4  /* rows of similar length in a batch (HF group_by_length) */
#define BATCH_NO_SHUFFLE      8  /* the units in dataset order every epoch (disable_shuffling) */
#define BATCH_DROP_LAST       16 /* an epoch's last partial batch dropped (drop_last) */

/* Rows are filled from a per-epoch permutation (seed, epoch). Without packing each row holds
 * one example (longer ones truncated to T); with BATCH_PACK, consecutive examples of the
 * permutation are put in one row while they fit (no attention mask between them: as
 * LLaMA-Factory's packing without neat_packing); BATCH_PACK_NEAT packs the same rows and
 * gives each batch seg_start, so that positions restart and attention stays inside each
 * example (neat_packing). BATCH_GROUP_BY_LENGTH: the permutation is cut into mega-batches of
 * B * min(50, max(1, n / 4B)) examples and each is sorted by length, longest first (stable),
 * as Hugging Face's LengthGroupedSampler does, so a batch's rows have similar lengths.
 * Pads are pad_id (0) with target -100. An epoch is
 * ceil(rows / B) batches; a short last batch is padded with empty rows (BATCH_DROP_LAST: floor
 * (rows / B), the short one dropped). BATCH_NO_SHUFFLE: the permutation is the identity.
 * Row length: every batch has rows of T (pad_multiple 0, the default), or with pad_multiple > 0
 * (set after batcher_init) each batch is padded only to its own longest row rounded up to a
 * multiple of pad_multiple, at most T; the rows, their order and their contents are the same.
 * Resume: save (epoch, cursor) and call batcher_seek after batcher_init.
 * Pairs (Dataset.pairs): the permutation is over pairs and a batch of B pairs has 2B rows, the
 * chosen answers in rows 0..B-1 and the rejected in B..2B-1 (TRL's concatenated forward;
 * Batch.B is 2B); a pair counts the longer of its two for pad_multiple. No packing, no
 * grouping by length, no rank shares with pairs (TUNA_EUNSUP).
 * kto (Dataset.kto): a batch of B examples has 2B rows: the examples in rows 0..B-1 and in row
 * B + r the KL sequence of row r, TRL's mismatched pair: row r's prompt followed by the
 * completion of the batch's previous example (r - 1; row 0 takes the last, cycling over the
 * rows with an example, as TRL's KTOTrainer builds KL_completion_ids within a batch), masked
 * the same way, truncated to T; Batch.tags the examples' tags. The row length (pad_multiple)
 * counts both halves. No packing or grouping, no rank shares (TUNA_EUNSUP). */
typedef struct Batcher {
    const Dataset *d; /* borrowed */
    int B, T, pack;   /* pack: the BATCH_* flags */
    int pad_multiple; /* 0: rows of T; > 0: per-batch rows (see above) */
    int32_t pad_id;
    uint64_t seed;
    int epoch;                 /* current epoch, from 0 */
    size_t cursor;             /* next batch index within the epoch */
    size_t *order;             /* (d->n) this epoch's permutation */
    size_t *row_start, n_rows; /* (n_rows + 1) row r = order[row_start[r] .. row_start[r+1]) */
    int32_t *ids, *targets;    /* (B, T); pairs: (2B, T) */
    int32_t *seg_start;        /* (B, T) with BATCH_PACK_NEAT, else NULL */
    int32_t *tags;             /* (B) kto, else NULL */
    int rank, world;           /* batcher_set_rank: this process's share (0 of 1: all) */
} Batcher;

/* flags: 0, or BATCH_* ORed (1 is BATCH_PACK, so a packing boolean may be passed). */
int batcher_init(Batcher *b, const Dataset *d, int B, int T, int flags, uint64_t seed,
                 TunaErr *err);
/* Positions the batcher at batch `cursor` of `epoch` (cursor past the end wraps to the next
 * epoch). */
int batcher_seek(Batcher *b, int epoch, size_t cursor, TunaErr *err);
/* Fills *out with the next batch; returns 1 when this call wrapped to a new epoch first, else
 * 0. */
int batcher_next(Batcher *b, Batch *out);
/* Makes batcher_next give rank `rank` of `world` processes its share of each global batch of B
 * rows: the B / world rows rank * B / world .. (rank + 1) * B / world - 1, with the global
 * batch's row length and, in n_targets_global / n_tokens_global, its counts. The rows, their
 * order and their contents are those of one process (world 1): the shares of ranks 0..world-1
 * in order are its batch. world must divide B. */
int batcher_set_rank(Batcher *b, int rank, int world, TunaErr *err);
size_t batcher_batches_per_epoch(const Batcher *b);
void batcher_free(Batcher *b); /* NULL-safe; b itself is not freed */

#endif
