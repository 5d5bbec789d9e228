/* cli.h: the subcommands main.c dispatches to (chat, eval, template, tokenize, train, export), and the small
 * pieces they share: option tables that drive both getopt_long and the generated --help, number
 * parsing with one-line "tuna: ..." errors, loading model (+ merged LoRA adapter) with its
 * tokenizer (the stop set is the engine's: stopset_init, generate.h). Helpers are defined
 * in cmd_chat.c. Commands return the process exit code (0 ok, 1 error, 2 usage) and never exit;
 * they run on the calling thread. */
#ifndef TUNA_SRC_CLI_CLI_H
#define TUNA_SRC_CLI_CLI_H

#include <getopt.h>
#include <stdint.h>
#include <stdio.h>

#include "../../kernels/backend.h"
#include "../config.h"
#include "../err.h"
#include "../model.h"
#include "../template.h"
#include "../tokenizer.h"

/* `tuna chat MODEL_DIR [options]`: argv[0] is "chat". */
int cmd_chat(int argc, char **argv);

/* `tuna eval --model DIR --dataset NAMES [options]`: argv[0] is "eval". Prints one JSON object. */
int cmd_eval(int argc, char **argv);

/* `tuna template list [--templates-dir DIR]` and `tuna template show NAME [--dataset X]
 * (without --dataset: a built-in system + user + assistant conversation) [--dataset-dir DIR] [--templates-dir DIR] [--model DIR] [--index N] [--vars k=v,...]
 * [--cutoff-len N] [--stage pt|sft] [--color|--no-color]`. argv[0] is "template". Prints to
 * stdout; returns the process exit code (0 ok, 1 error, 2 usage). */
int cmd_template(int argc, char **argv);

/* `tuna tokenize DIR [--add-special-tokens] [--decode] [--skip-special-tokens]`: JSON lines
 * on stdin to JSON lines on stdout. argv[0] is "tokenize". Returns the process exit code. */
int cmd_tokenize(int argc, char **argv);

/* `tuna train ...` and `tuna export ...` (cmd_train.c). */
int cmd_train(int argc, char **argv);
int cmd_export(int argc, char **argv);

// --- shared by the commands

/* One option: getopt_long's fields plus its --help line. Tables end with a NULL name. */
typedef struct CliOpt {
    const char *name;
    int has_arg;
    int key;
    const char *arg; /* placeholder in --help ("N", "DIR"), NULL for flags */
    const char *help;
} CliOpt;

#define CLI_MAX_OPTS 48
struct CliPrecision;

/* Fills out (CLI_MAX_OPTS entries) from doc, terminated as getopt_long wants. */
void cli_longopts(const CliOpt *doc, struct option *out);
/* Call getopt_long with optstring CLI_OPTSTRING and opterr = 0, then, for the '?' or ':' it
 * returns, this prints the one-line error ("tuna CMD: unknown option ..." / "... needs a value")
 * for the option just read. */
#define CLI_OPTSTRING ":"
void cli_bad_option(const char *cmd, int c, char **argv);
/* Prints usage, then one line per option. */
void cli_help(FILE *f, const char *usage, const CliOpt *doc);
/* Parse s as a number in [lo, hi]; on failure print "tuna: --flag: ..." and return -1. */
int cli_parse_int(const char *s, const char *flag, int lo, int hi, int *out);
int cli_parse_float(const char *s, const char *flag, float lo, float hi, float *out);

/* 1 when model (given as flag, e.g. "--model", or NULL for a positional MODEL_DIR) is a local
 * folder or a .gguf file. Else prints one line "tuna CMD: [FLAG ]MODEL: expects a local folder
 * (or .gguf file) ..." (with the download command for something like a hub id) and returns 0.
 * Defined in cli.c, as are the run-folder helpers below. */
int cli_model_path_ok(const char *cmd, const char *flag, const char *model);

/* Adapter runs and their base: model_is_adapter_run and model_run_base (src/model.h). */
/* The template a run was trained with (train_config.json "template", and its "templates_dir"
 * into tdir, "" when not recorded), looked up in adapter_dir, then model_dir (either may be NULL
 * or not a run). 1 when found; tdir is "" unless that folder exists here. */
int cli_run_template(const char *model_dir, const char *adapter_dir, char *name, size_t cap,
                     char *tdir, size_t tcap);
/* The default_system a run was trained with (train_config.json, looked up as cli_run_template
 * looks): buf, or NULL when the run set none (the template's own then). */
const char *cli_run_system(const char *model_dir, const char *adapter_dir, char *buf, size_t cap);
/* Fills what the user left NULL: *tname with the run's template (cli_run_template) or
 * "vanilla", *tdir with the run's templates folder (when it exists) or "templates". nbuf and dbuf
 * hold the strings read. Returns 1 when the template is the run's. */
int cli_default_template(const char *model_dir, const char *adapter_dir, const char **tname,
                         const char **tdir, char *nbuf, size_t ncap, char *dbuf, size_t dcap);

/* Backend, model (with the PEFT LoRA adapter in adapter_dir merged in, if not NULL) and
 * tokenizer from model_dir. model_dir may be an adapter run (model_is_adapter_run): its base is
 * loaded (model_run_base) and the run's adapter merged; adapter_dir must then be NULL. On success
 * the caller owns all three (free tokenizer, model, then backend); on failure nothing is left
 * allocated. */
int cli_load_model(const char *model_dir, const char *adapter_dir, const char *backend, int threads,
                   const struct CliPrecision *prec, Backend **be, Model **m, Tokenizer **tok,
                   TunaErr *err);
/* cli_load_model, and *used (unless NULL) = the precision the base was loaded in: prec's, or
 * with none given, an adapter run's own (what eval reports) */
int cli_load_model_used(const char *model_dir, const char *adapter_dir, const char *backend,
                        int threads, const struct CliPrecision *prec, Backend **be, Model **m,
                        Tokenizer **tok, ModelPrecision *used, TunaErr *err);

/* The base's precision in chat, generate and eval, with `tuna train`'s names: the table rows
 * CLI_PRECISION_OPTS (keys from CLI_OPT_PREC on, clear of every command's own), parsed by
 * cli_precision_opt, applied by cli_load_model (model_load_options; bf16 sets Backend.mm_bf16).
 * CLI_PRECISION_INIT is --dtype auto (the checkpoint's own types); with none of the options given, an adapter run
 * loads its base as it was trained (its train_config.json: a QLoRA run's 4-bit base). */
typedef struct CliPrecision {
    int bits, double_quant, bf16;
    const char *qtype, *dtype;
    int given;   /* a precision option was on the command line: an adapter run's own is not used */
    int kv_type; /* --cache-type, a WType: F32, F16 or Q8_0 (CLI_CACHE_OPTS: the commands that
                    decode) */
} CliPrecision;
#define CLI_PRECISION_INIT                                                                         \
    { 0, 0, 0, "nf4", "auto", 0, 0 }
enum {
    CLI_OPT_PREC = 1000,
    CLI_OPT_PREC_TYPE,
    CLI_OPT_PREC_DQ,
    CLI_OPT_PREC_DTYPE,
    CLI_OPT_PREC_BF16,
    CLI_OPT_CACHE
};
#define CLI_CACHE_OPTS                                                                             \
    {                                                                                              \
        "cache-type", 1, CLI_OPT_CACHE, "T",                                                       \
                "the KV cache: f32 (default) | f16 (half the memory) | q8_0 (about a quarter)"     \
    }
#define CLI_PRECISION_OPTS                                                                         \
    {"quantization-bit", 1, CLI_OPT_PREC, "N",                                                     \
     "keep the base's linear layers in 8 (q8_0) or 4 bits (0 = off, the default)"},                \
            {"quantization-type", 1, CLI_OPT_PREC_TYPE, "T",                                       \
             "4 bits: nf4 (default) | fp4 | q4_0 | q4_1"},                                         \
            {"double-quantization", 0, CLI_OPT_PREC_DQ, NULL,                                      \
             "nf4/fp4: the block scales in 8 bits too"},                                           \
            {"dtype", 1, CLI_OPT_PREC_DTYPE, "D",                                                  \
             "auto (default: as the checkpoint stores them; GGUF types, bf16) | fp32 | bf16"},     \
    {                                                                                              \
        "bf16", 0, CLI_OPT_PREC_BF16, NULL,                                                        \
                "matrix products in bf16 with fp32 accumulation (as torch.autocast)"               \
    }
/* 1 when c is a precision option (stored in p), -1 when its value is bad (message printed), 0
 * when c is not one. */
int cli_precision_opt(int c, const char *arg, CliPrecision *p);

#endif
