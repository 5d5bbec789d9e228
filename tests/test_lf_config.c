/* test_lf_config.c: LLaMA-Factory's training YAML as `tuna train FILE.yaml` reads it
 * (src/lf_config.c).
 *  1. tests/fixtures/lf/lora_sft.yaml (LLaMA-Factory's qwen3_lora_sft.yaml example, on a model
 *     and datasets of this repository): every key lands on tuna's option with its value, the
 *     keys without effect are listed, and LLaMA-Factory's defaults fill the rest.
 *  2. LLaMA-Factory's and Hugging Face's defaults where tuna's differ, and the keys read
 *     together: finetuning_type, freeze_trainable_layers, (neat_)packing and its cutoff_len - 1,
 *     quantization_bit and double_quantization, disable_gradient_checkpointing, pissa, max_steps
 *     -1, warmup_steps below 1, eval/save strategies, lora_alpha 0, YAML 1.1 booleans and null,
 *     lists, tuna's own options.
 *  3. Every refusal is one line naming the file, the line and the key: what changes the math
 *     and tuna does not implement, unknown keys, malformed YAML, values out of range.
 *  4. The CLI: `tuna train FILE.yaml` (and --config FILE.yaml) trains exactly what the same
 *     settings given as flags train (losses equal to the last digit), flags override the file,
 *     an unset template resolves to the model's own or LLaMA-Factory's `empty`.
 *  5. llamafactory-cli's chat and export files: `tuna chat FILE.yaml` replies as the same flags
 *     do (greedy, and sampled with LLaMA-Factory's defaults), `tuna export FILE.yaml` writes
 *     the same file as the flags' merge, and their refusals name the line. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli_fixture.h"
#include "harness.h"
#include "src/lf_config.h"
#include "src/train.h"
#include "src/xalloc.h"

static char tmp[256];

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

/* text as a YAML file, loaded over tuna's defaults; returns lf_config_load's status */
static int load(const char *text, TrainConfig *c, char *notes, size_t cap, TunaErr *err) {
    char path[300];
    snprintf(path, sizeof path, "%s/t.yaml", tmp);
    write_text(path, text);
    train_config_defaults(c);
    memset(err, 0, sizeof *err);
    return lf_config_load(c, path, notes, cap, err);
}

static void test_example(void) {
    TrainConfig c;
    train_config_defaults(&c);
    TunaErr err = {0};
    char notes[2048];
    int rc = lf_config_load(&c, "tests/fixtures/lf/lora_sft.yaml", notes, sizeof notes, &err);
    CHECK(rc == 0, "lora_sft.yaml: %s", err.msg);
    CHECK(!strcmp(c.model, "models/stories260K") && !strcmp(c.method, "lora") &&
                  !strcmp(c.stage, "sft") && c.lora_rank == 8 && !strcmp(c.lora_target, "all") &&
                  !strcmp(c.dataset, "identity,alpaca_en_demo") &&
                  !strcmp(c.template_name, "vanilla") && c.cutoff_len == 2048 &&
                  c.max_samples == 1000,
          "model/method/data: %s %s %s r%d %s %s %s %d %d", c.model, c.method, c.stage, c.lora_rank,
          c.lora_target, c.dataset, c.template_name, c.cutoff_len, c.max_samples);
    CHECK(!strcmp(c.output, "saves/stories260k/lora/sft") && c.logging_steps == 10 &&
                  c.save_steps == 500,
          "output: %s %d %d", c.output, c.logging_steps, c.save_steps);
    CHECK(c.batch_size == 1 && c.grad_accum == 8 && c.lr == 1e-4 && c.epochs == 3.0 &&
                  !strcmp(c.lr_scheduler, "cosine") && c.warmup_ratio == 0.1 && c.bf16 == 1,
          "train: %d %d %g %g %s %g %d", c.batch_size, c.grad_accum, c.lr, c.epochs, c.lr_scheduler,
          c.warmup_ratio, c.bf16);
    /* LLaMA-Factory's defaults where tuna's differ */
    CHECK(c.lora_alpha == 16 && c.gradient_checkpointing == 1 && c.val_size == 0 &&
                  c.eval_steps == 0,
          "defaults: alpha %g ckpt %d val %g eval %d", c.lora_alpha, c.gradient_checkpointing,
          c.val_size, c.eval_steps);
    CHECK(strstr(notes, "report_to") && strstr(notes, "preprocessing_num_workers") &&
                  strstr(notes, "ignored") && strstr(notes, "lora_alpha 16"),
          "notes: %s", notes);
    printf("  lora_sft.yaml: %s\n", notes);
}

static void test_defaults_and_specials(void) {
    TrainConfig c;
    TunaErr err;
    char notes[2048];
    CHECK(load("model_name_or_path: models/stories260K\n", &c, notes, sizeof notes, &err) == 0,
          "minimal: %s", err.msg);
    CHECK(c.lr == 5e-5 && !strcmp(c.lr_scheduler, "linear") && c.cutoff_len == 2048 &&
                  c.val_size == 0 && !strcmp(c.template_name, "auto:empty") && c.lora_alpha == 16 &&
                  c.gradient_checkpointing == 1 && c.save_steps == 500 && c.eval_steps == 0 &&
                  !strcmp(c.method, "lora") && c.packing == 0,
          "minimal: lr %g %s cutoff %d val %g template %s alpha %g ckpt %d save %d eval %d", c.lr,
          c.lr_scheduler, c.cutoff_len, c.val_size, c.template_name, c.lora_alpha,
          c.gradient_checkpointing, c.save_steps, c.eval_steps);
    CHECK(strstr(notes, "lr 5e-5") && strstr(notes, "auto:empty"), "notes: %s", notes);

    CHECK(load("finetuning_type: freeze\nfreeze_trainable_layers: 3\nlora_rank: 16\n", &c, NULL, 0,
               &err) == 0 &&
                  !strcmp(c.method, "freeze") && c.freeze_layers == 3 && c.lora_alpha == 32,
          "freeze: %s %s %d alpha %g", err.msg, c.method, c.freeze_layers, c.lora_alpha);
    CHECK(load("finetuning_type: full\nlora_alpha: 0\nlora_rank: 4\n", &c, NULL, 0, &err) == 0 &&
                  !strcmp(c.method, "full") && c.lora_alpha == 8,
          "full, alpha 0 is 2r: %s %s %g", err.msg, c.method, c.lora_alpha);
    CHECK(load("neat_packing: true\ncutoff_len: 1024\n", &c, notes, sizeof notes, &err) == 0 &&
                  c.packing == 2 && c.cutoff_len == 1023 && strstr(notes, "cutoff_len 1023"),
          "neat_packing: %s packing %d cutoff %d", err.msg, c.packing, c.cutoff_len);
    CHECK(load("packing: yes\n", &c, NULL, 0, &err) == 0 && c.packing == 1 && c.cutoff_len == 2047,
          "packing yes: %s %d %d", err.msg, c.packing, c.cutoff_len);
    CHECK(load("packing: false\nstage: pt\n", &c, NULL, 0, &err) == 0 && c.packing == 0 &&
                  c.cutoff_len == 2048 && !strcmp(c.stage, "pt"),
          "packing false: %s %d %d", err.msg, c.packing, c.cutoff_len);
    CHECK(load("quantization_bit: 4\n", &c, NULL, 0, &err) == 0 && c.quantization_bit == 4 &&
                  c.double_quantization == 1 && !strcmp(c.quantization_type, "nf4"),
          "4 bits: double quantization on: %s %d %d", err.msg, c.quantization_bit,
          c.double_quantization);
    CHECK(load("quantization_bit: 4\nquantization_type: fp4\ndouble_quantization: false\n", &c,
               NULL, 0, &err) == 0 &&
                  c.double_quantization == 0 && !strcmp(c.quantization_type, "fp4"),
          "fp4 without double quantization: %s %d", err.msg, c.double_quantization);
    CHECK(load("quantization_bit: 4\nquantization_type: q4_1\n", &c, NULL, 0, &err) == 0 &&
                  c.double_quantization == 0 && !strcmp(c.quantization_type, "q4_1"),
          "q4_1 (tuna's): no double quantization: %s %d", err.msg, c.double_quantization);
    CHECK(load("quantization_bit: 8\nquantization_type: q8_0\n", &c, NULL, 0, &err) == 0 &&
                  c.quantization_bit == 8,
          "8 bits as q8_0: %s %d", err.msg, c.quantization_bit);
    CHECK(load("disable_gradient_checkpointing: true\n", &c, NULL, 0, &err) == 0 &&
                  c.gradient_checkpointing == 0,
          "disable_gradient_checkpointing: %s %d", err.msg, c.gradient_checkpointing);
    CHECK(load("pissa_init: true\npissa_iter: -1\n", &c, NULL, 0, &err) == 0 &&
                  !strcmp(c.init_lora_weights, "pissa"),
          "pissa exact: %s %s", err.msg, c.init_lora_weights);
    CHECK(load("max_steps: -1\nwarmup_steps: 0.05\n", &c, NULL, 0, &err) == 0 && c.max_steps == 0 &&
                  c.warmup_ratio == 0.05 && c.warmup_steps == 0,
          "max_steps -1, warmup_steps as a ratio: %s %d %g %d", err.msg, c.max_steps,
          c.warmup_ratio, c.warmup_steps);
    CHECK(load("max_steps: 30\nwarmup_steps: 20\n", &c, NULL, 0, &err) == 0 && c.max_steps == 30 &&
                  c.warmup_steps == 20,
          "max_steps, warmup_steps: %s %d %d", err.msg, c.max_steps, c.warmup_steps);
    CHECK(load("eval_strategy: steps\neval_steps: 50\nval_size: 0.1\n", &c, NULL, 0, &err) == 0 &&
                  c.eval_steps == 50 && c.val_size == 0.1,
          "eval steps: %s %d %g", err.msg, c.eval_steps, c.val_size);
    CHECK(load("evaluation_strategy: steps\nlogging_steps: 7\n", &c, NULL, 0, &err) == 0 &&
                  c.eval_steps == 7,
          "eval_steps from logging_steps: %s %d", err.msg, c.eval_steps);
    CHECK(load("eval_steps: 50\n", &c, NULL, 0, &err) == 0 && c.eval_steps == 0,
          "eval_steps without a strategy (no): %s %d", err.msg, c.eval_steps);
    CHECK(load("save_strategy: 'no'\nsave_steps: 100\n", &c, NULL, 0, &err) == 0 &&
                  c.save_steps == 0,
          "save_strategy no: %s %d", err.msg, c.save_steps);
    CHECK(load("save_strategy: no\neval_strategy: no\neval_steps: 5\n", &c, NULL, 0, &err) == 0 &&
                  c.save_steps == 0 && c.eval_steps == 0,
          "plain no (YAML 1.1's false) as a strategy: %s %d %d", err.msg, c.save_steps,
          c.eval_steps);
    CHECK(load("save_strategy: best\nload_best_model_at_end: true\nmetric_for_best_model: "
               "eval_loss\ngreater_is_better: false\n",
               &c, NULL, 0, &err) == 0 &&
                  !strcmp(c.save_strategy, "best") && c.load_best_model_at_end == 1,
          "save_strategy best, load_best_model_at_end: %s %s %d", err.msg, c.save_strategy,
          c.load_best_model_at_end);
    /* what upcasting gives (fp32 norm weights and logits) tuna always does */
    CHECK(load("upcast_layernorm: true\nupcast_lmhead_output: true\n", &c, NULL, 0, &err) == 0,
          "upcast_layernorm, upcast_lmhead_output: %s", err.msg);
    CHECK(load("finetuning_type: freeze\nfreeze_trainable_modules: mlp,self_attn\n", &c, NULL, 0,
               &err) == 0 &&
                  !strcmp(c.freeze_trainable_modules, "mlp,self_attn"),
          "freeze_trainable_modules: %s %s", err.msg, c.freeze_trainable_modules);
    CHECK(load("dataset: identity,alpaca_en_demo\nmix_strategy: interleave_under\n"
               "interleave_probs: 0.2,0.8\n",
               &c, NULL, 0, &err) == 0 &&
                  !strcmp(c.mix_strategy, "interleave_under") &&
                  !strcmp(c.interleave_probs, "0.2,0.8"),
          "mix_strategy: %s %s %s", err.msg, c.mix_strategy, c.interleave_probs);
    CHECK(load("use_dft_loss: true\n", &c, NULL, 0, &err) == 0 && c.use_dft_loss == 1,
          "use_dft_loss: %s", err.msg);
    CHECK(load("use_eaft_loss: true\neaft_alpha: 0.5\n", &c, NULL, 0, &err) == 0 &&
                  c.use_eaft_loss == 1 && c.eaft_alpha == 0.5,
          "use_eaft_loss: %s", err.msg);
    CHECK(load("adam_beta1: 0.8\nadam_beta2: 0.95\nadam_epsilon: 1.0e-6\ndata_seed: 9\n"
               "disable_shuffling: true\ndataloader_drop_last: true\nearly_stopping_steps: 3\n",
               &c, NULL, 0, &err) == 0 &&
                  c.adam_beta1 == 0.8 && c.adam_beta2 == 0.95 && c.adam_epsilon == 1e-6 &&
                  c.data_seed == 9 && c.disable_shuffling && c.dataloader_drop_last &&
                  c.early_stopping_steps == 3,
          "Trainer arguments: %s", err.msg);
    CHECK(load("eval_strategy: epoch\nsave_strategy: epoch\neval_steps: 5\n", &c, NULL, 0, &err) ==
                          0 &&
                  !strcmp(c.eval_strategy, "epoch") && !strcmp(c.save_strategy, "epoch"),
          "epoch strategies: %s %s %s", err.msg, c.eval_strategy, c.save_strategy);
    CHECK(load("neftune_noise_alpha: 5\n", &c, NULL, 0, &err) == 0 && c.neftune_noise_alpha == 5,
          "neftune_noise_alpha: %s %g", err.msg, c.neftune_noise_alpha);
    CHECK(load("pissa_init: true\npissa_iter: -1\npissa_convert: true\n", &c, NULL, 0, &err) == 0 &&
                  c.pissa_convert == 1 && !strcmp(c.init_lora_weights, "pissa"),
          "pissa_convert: %s %d", err.msg, c.pissa_convert);
    CHECK(load("compute_accuracy: true\n", &c, NULL, 0, &err) == 0 && c.compute_accuracy == 1,
          "compute_accuracy: %s %d", err.msg, c.compute_accuracy);
    CHECK(load("label_smoothing_factor: 0.1\n", &c, NULL, 0, &err) == 0 &&
                  c.label_smoothing_factor == 0.1,
          "label_smoothing_factor: %s %g", err.msg, c.label_smoothing_factor);
    CHECK(load("seed: 1\n", &c, NULL, 0, &err) == 0 && !strcmp(c.eval_strategy, "steps") &&
                  !strcmp(c.save_strategy, "steps"),
          "strategies by default: %s %s", c.eval_strategy, c.save_strategy);
    CHECK(load("dataset: [identity, alpaca_en_demo]\ntemplate: null\nbf16: On\nseed: ~\n", &c, NULL,
               0, &err) == 0 &&
                  !strcmp(c.dataset, "identity,alpaca_en_demo") &&
                  !strcmp(c.template_name, "auto:empty") && c.bf16 == 1 && c.seed == 42,
          "list, null, YAML 1.1 boolean: %s %s %s %d %d", err.msg, c.dataset, c.template_name,
          c.bf16, c.seed);
    CHECK(load("threads: 1\nsample_prompts: \"Hi|Who are you?\"\nuse_dora: true\n"
               "lora_dropout: 0.05\n",
               &c, NULL, 0, &err) == 0 &&
                  c.threads == 1 && !strcmp(c.sample_prompts, "Hi|Who are you?") &&
                  c.use_dora == 1 && c.lora_dropout == 0.05,
          "tuna's own options: %s %d %s", err.msg, c.threads, c.sample_prompts);
    CHECK(load("stage: dpo\npref_beta: 0.2\npref_loss: simpo\nsimpo_gamma: 0.7\npref_ftx: 0.5\n"
               "learning_rate: 5.0e-6\n",
               &c, NULL, 0, &err) == 0 &&
                  !strcmp(c.stage, "dpo") && c.pref_beta == 0.2 && !strcmp(c.pref_loss, "simpo") &&
                  c.simpo_gamma == 0.7 && c.pref_ftx == 0.5 && c.lr == 5e-6,
          "dpo: %s %s %g %s %g %g %g", err.msg, c.stage, c.pref_beta, c.pref_loss, c.simpo_gamma,
          c.pref_ftx, c.lr);
    CHECK(load("lora_alpha: 0.0\nlora_rank: 2\n", &c, NULL, 0, &err) == 0 && c.lora_alpha == 4,
          "lora_alpha 0.0 is 2r: %s %g", err.msg, c.lora_alpha);
    /* a LLaMA-Factory checkout keeps its datasets in data/: the default dataset_dir there */
    char cwd[1024], dd[400];
    snprintf(dd, sizeof dd, "%s/data", tmp);
    mkdir(dd, 0755);
    snprintf(dd, sizeof dd, "%s/data/dataset_info.json", tmp);
    write_text(dd, "{}");
    if (getcwd(cwd, sizeof cwd) && !chdir(tmp)) {
        int rc = load("seed: 3\n", &c, NULL, 0, &err);
        CHECK(rc == 0 && !strcmp(c.dataset_dir, "data"), "data/ here: %s %s", err.msg,
              c.dataset_dir);
        rc = load("seed: 3\ndataset_dir: mine\n", &c, NULL, 0, &err);
        CHECK(rc == 0 && !strcmp(c.dataset_dir, "mine"), "dataset_dir set: %s", c.dataset_dir);
        CHECK(!chdir(cwd), "back to %s", cwd);
    }
    CHECK(load("seed: 3\n", &c, NULL, 0, &err) == 0 && !strcmp(c.dataset_dir, "datasets"),
          "no data/ here: tuna's datasets: %s", c.dataset_dir);
    CHECK(load("optim: adamw_torch\nadam_beta1: 0.9\nfp16: false\nuse_galore: false\n"
               "resume_from_checkpoint: null\ndo_train: true\nquantization_method: bnb\n",
               &c, NULL, 0, &err) == 0,
          "defaults of unimplemented features are accepted: %s", err.msg);
}

/* text must be refused with a message holding each of the needles (NULL-ended) */
static void refused(const char *text, const char *n1, const char *n2) {
    TrainConfig c;
    TunaErr err;
    int rc = load(text, &c, NULL, 0, &err);
    char first[80];
    snprintf(first, sizeof first, "%.*s", (int)strcspn(text, "\n"), text);
    CHECK(rc != 0 && strstr(err.msg, "/t.yaml") && strstr(err.msg, n1) &&
                  (!n2 || strstr(err.msg, n2)) && !strchr(err.msg, '\n'),
          "[%s]: %d %s", first, rc, err.msg);
}

static void test_refusals(void) {
    refused("quantization_bit: 8\n", ":1: quantization_bit 8", "LLM.int8");
    refused("use_galore: true\n", ":1: use_galore", "GaLore");
    refused("galore_rank: 16\n", ":1: galore_rank", "GaLore");
    refused("fp16: true\n", ":1: fp16", "bf16");
    refused("fp8: true\n", ":1: fp8 true", "FP8");
    refused("fp8_backend: te\n", ":1: fp8_backend", "FP8");
    refused("tensor_model_parallel_size: 2\n", ":1: tensor_model_parallel_size", "Megatron");
    refused("pure_bf16: true\n", "pure_bf16", NULL);
    refused("optim: sgd\n", ":1: optim sgd", "AdamW");
    refused("rope_scaling: linear\n", "rope_scaling", NULL);
    refused("finetuning_type: oft\n", "finetuning_type oft", NULL);
    refused("freeze_trainable_layers: -2\n", "freeze_trainable_layers -2", "first");
    refused("freeze_extra_modules: embed_tokens\n", "freeze_extra_modules", NULL);
    refused("additional_target: embed_tokens\n", "additional_target", NULL);
    refused("pissa_init: true\n", ":1: pissa_init", "pissa_niter_16");
    refused("pissa_init: true\npissa_iter: 4\n", "pissa_niter_4", NULL);
    refused("adapter_name_or_path: a,b\n", "adapter_name_or_path", "several");
    refused("eval_strategy: sometimes\n", "eval_strategy sometimes", "steps or epoch");
    refused("adam_beta2: 1.5\n", ":1: adam_beta2", NULL);
    refused("metric_for_best_model: accuracy\n", ":1: metric_for_best_model accuracy",
            "lowest eval loss");
    refused("greater_is_better: true\n", ":1: greater_is_better true", "lowest eval loss");
    refused("save_strategy: often\n", "save_strategy often", NULL);
    refused("eval_dataset: alpaca_en_demo\nval_size: 0.1\n", ":1: eval_dataset", "line 2");
    refused("do_predict: true\n", "do_predict", NULL);
    refused("enable_thinking: false\n", "enable_thinking", NULL);
    refused("stage: sft\nlearning_rat: 1e-4\n", ":2: learning_rat", "not a LLaMA-Factory");
    refused("lr: 1\nlearning_rate: 2\n", ":2: learning_rate", "line 1");
    refused("seed: 1\nseed: 2\n", ":2: seed", "twice");
    refused("per_device_train_batch_size: 0\n", ":1: per_device_train_batch_size", NULL);
    refused("num_train_epochs: lots\n", ":1: num_train_epochs", NULL);
    refused("lr_scheduler_type: greedy\n", ":1: lr_scheduler_type", NULL);
    refused("stage: ppo\n", ":1: stage", NULL);
    refused("warmup_steps: abc\n", "warmup_steps", "not a number");
    /* the YAML itself */
    refused("model_name_or_path: [a\n", "t.yaml:2:1: YAML", NULL);
    refused("a:\n  b: 1\n", ":2:3:", "nested mapping");
    refused("x: &a 1\ny: *a\n", "alias", NULL);
    refused("seed: !!int 3\n", "tags", NULL);
    refused("seed: 1\n---\nseed: 2\n", "second YAML document", NULL);
    refused("- a\n- b\n", "mapping of key: value", NULL);
    refused("", "no settings", NULL);
    refused("# only a comment\n", "no settings", NULL);
    refused("dataset: [a, [b]]\n", "plain values", NULL);
    TrainConfig c;
    TunaErr err = {0};
    CHECK(lf_config_load(&c, "tests/fixtures/lf/missing.yaml", NULL, 0, &err) != 0 &&
                  strstr(err.msg, "missing.yaml: cannot read"),
          "missing file: %s", err.msg);
}

/* the step losses (full precision) of a run's metrics.jsonl, "" when none */
static void losses(const char *run, char *out, size_t cap) {
    char path[400], line[8192];
    snprintf(path, sizeof path, "%s/metrics.jsonl", run);
    out[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f) return;
    while (fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "\"loss\":");
        if (strncmp(line, "{\"type\":\"step\"", 14) || !p) continue;
        size_t len = strlen(out);
        snprintf(out + len, cap - len, "%.*s ", (int)strcspn(p + 7, ",}"), p + 7);
    }
    fclose(f);
}

static void test_cli(void) {
    char yaml[300], cmd[2048], a[2048], b[2048], c2[2048];
    snprintf(yaml, sizeof yaml, "%s/run.yaml", tmp);
    char text[1024];
    snprintf(text, sizeof text,
             "model_name_or_path: models/stories260K\n"
             "stage: sft\ndo_train: true\nfinetuning_type: lora\nlora_rank: 4\n"
             "lora_target: all\ndataset: identity\ntemplate: vanilla\ncutoff_len: 96\n"
             "max_samples: 24\noutput_dir: %s/lf-run\nlogging_steps: 1\nsave_steps: 500\n"
             "report_to: none\nper_device_train_batch_size: 4\ngradient_accumulation_steps: 2\n"
             "learning_rate: 1.0e-3\nnum_train_epochs: 3.0\nlr_scheduler_type: cosine\n"
             "warmup_ratio: 0.1\nmax_steps: 3\nseed: 7\n",
             tmp);
    write_text(yaml, text);
    snprintf(cmd, sizeof cmd, "%s train %s --threads 1 --quiet --sample-prompts '' 2>%s/lf.err",
             test_tuna_bin(), yaml, tmp);
    int rc = test_system(cmd);
    CHECK(rc == 0, "tuna train run.yaml: exit %d", rc);
    /* the same settings as flags (LLaMA-Factory's defaults spelled out) */
    snprintf(cmd, sizeof cmd,
             "%s train --model models/stories260K --stage sft --method lora --lora-rank 4 "
             "--lora-alpha 8 --lora-target all --dataset identity --template vanilla "
             "--cutoff-len 96 --max-samples 24 --output %s/flags-run --logging-steps 1 "
             "--save-steps 500 --batch-size 4 --grad-accum 2 --lr 1e-3 --epochs 3 "
             "--lr-scheduler cosine --warmup-ratio 0.1 --max-steps 3 --seed 7 "
             "--gradient-checkpointing --val-size 0 --eval-steps 0 --threads 1 --quiet "
             "--sample-prompts '' 2>%s/flags.err",
             test_tuna_bin(), tmp, tmp);
    rc = test_system(cmd);
    CHECK(rc == 0, "the same as flags: exit %d", rc);
    char ra[400], rb[400];
    snprintf(ra, sizeof ra, "%s/lf-run", tmp);
    snprintf(rb, sizeof rb, "%s/flags-run", tmp);
    losses(ra, a, sizeof a);
    losses(rb, b, sizeof b);
    CHECK(a[0] && !strcmp(a, b), "losses: yaml [%s] flags [%s]", a, b);
    printf("  run.yaml and its flags: losses %s\n", a);
    /* output_dir holds the run now: refused as tuna refuses it (overwrite_output_dir absent),
     * replaced with overwrite_output_dir: true (LLaMA-Factory's examples say so), the same run */
    snprintf(cmd, sizeof cmd, "%s train %s --threads 1 --quiet --sample-prompts '' 2>%s/lf2.err",
             test_tuna_bin(), yaml, tmp);
    rc = test_system(cmd);
    snprintf(c2, sizeof c2, "%s/lf2.err", tmp);
    char *said = xread_file(c2, NULL);
    CHECK(rc == 1 && said && strstr(said, "already holds a run"),
          "run.yaml again without overwrite_output_dir: exit %d: %s", rc, said ? said : "");
    free(said);
    char yaml_ow[300];
    snprintf(yaml_ow, sizeof yaml_ow, "%s/run-ow.yaml", tmp);
    char text_ow[1200];
    snprintf(text_ow, sizeof text_ow, "%soverwrite_output_dir: true\n", text);
    write_text(yaml_ow, text_ow);
    snprintf(cmd, sizeof cmd, "%s train %s --threads 1 --quiet --sample-prompts '' 2>%s/lf3.err",
             test_tuna_bin(), yaml_ow, tmp);
    rc = test_system(cmd);
    losses(ra, c2, sizeof c2);
    CHECK(rc == 0 && c2[0] && !strcmp(c2, a),
          "overwrite_output_dir: true replaces the run: exit %d, losses [%s]", rc, c2);
    snprintf(text_ow, sizeof text_ow, "%soverwrite_output_dir: false\n", text);
    write_text(yaml_ow, text_ow);
    rc = test_system(cmd);
    CHECK(rc == 1, "overwrite_output_dir: false keeps the run: exit %d", rc);
    /* --config FILE.yaml, and a flag overriding the file */
    snprintf(cmd, sizeof cmd,
             "%s train --config %s --output %s/cfg-run --lr 5e-4 --threads 1 --quiet "
             "--sample-prompts '' 2>/dev/null",
             test_tuna_bin(), yaml, tmp);
    rc = test_system(cmd);
    char rcp[400], path[500];
    snprintf(rcp, sizeof rcp, "%s/cfg-run", tmp);
    losses(rcp, c2, sizeof c2);
    snprintf(path, sizeof path, "%s/train_config.json", rcp);
    TrainConfig got;
    TunaErr err = {0};
    train_config_defaults(&got);
    int lrc = train_config_load(&got, path, &err);
    CHECK(rc == 0 && !lrc && got.lr == 5e-4 && got.lora_rank == 4 && c2[0] && strcmp(c2, a),
          "--config run.yaml --lr 5e-4: exit %d, %s lr %g, losses [%s]", rc, err.msg, got.lr, c2);
    /* an unset template: stories260K has no chat template, so LLaMA-Factory's empty */
    char yaml2[300];
    snprintf(yaml2, sizeof yaml2, "%s/notemplate.yaml", tmp);
    snprintf(text, sizeof text,
             "model_name_or_path: models/stories260K\ndataset: identity\nmax_steps: 1\n"
             "per_device_train_batch_size: 2\noutput_dir: %s/empty-run\ncutoff_len: 64\n",
             tmp);
    write_text(yaml2, text);
    snprintf(cmd, sizeof cmd, "%s train %s --threads 1 --quiet --sample-prompts '' 2>/dev/null",
             test_tuna_bin(), yaml2);
    rc = test_system(cmd);
    snprintf(path, sizeof path, "%s/empty-run/train_config.json", tmp);
    train_config_defaults(&got);
    lrc = train_config_load(&got, path, &err);
    CHECK(rc == 0 && !lrc && !strcmp(got.template_name, "empty"),
          "unset template: exit %d, %s template %s", rc, err.msg, got.template_name);
    /* eval_dataset: evaluated on it (prepared as the training data), the last eval == tuna eval
     * of the result on the same rows; compute_accuracy: its eval_accuracy too */
    char yaml3[300];
    snprintf(yaml3, sizeof yaml3, "%s/evalds.yaml", tmp);
    snprintf(text, sizeof text,
             "model_name_or_path: models/stories260K\ndataset: identity\ntemplate: vanilla\n"
             "eval_dataset: alpaca_en_demo\nmax_samples: 20\nmax_steps: 4\n"
             "eval_strategy: steps\neval_steps: 2\nper_device_train_batch_size: 4\n"
             "cutoff_len: 256\noutput_dir: %s/evalds-run\nlearning_rate: 1.0e-2\n"
             "compute_accuracy: true\n",
             tmp);
    write_text(yaml3, text);
    snprintf(cmd, sizeof cmd, "%s train %s --threads 1 --quiet --sample-prompts '' 2>/dev/null",
             test_tuna_bin(), yaml3);
    rc = test_system(cmd);
    snprintf(path, sizeof path, "%s/evalds-run/metrics.jsonl", tmp);
    FILE *mf = fopen(path, "r");
    char line[8192];
    int n_eval = 0, n_acc = 0;
    double last = (double)NAN, last_acc = (double)NAN;
    while (mf && fgets(line, sizeof line, mf)) {
        double e = test_json_number(line, "eval_loss"),
               ac = test_json_number(line, "eval_accuracy");
        if (!strncmp(line, "{\"type\":\"eval\"", 14) && isfinite(e)) {
            n_eval++;
            last = e;
            n_acc += isfinite(ac);
            last_acc = ac;
        }
    }
    if (mf) fclose(mf);
    char *eout = NULL, *eerr = NULL;
    snprintf(cmd, sizeof cmd,
             "eval --model %s/evalds-run --dataset alpaca_en_demo --max-samples 20 --no-generate "
             "--batch-size 4 --cutoff-len 256 --threads 1",
             tmp);
    int erc = test_run_tuna(tmp, cmd, NULL, &eout, &eerr);
    double want = test_json_number(eout, "eval_loss");
    CHECK(rc == 0 && erc == 0 && n_eval == 3 && fabs(last - want) <= 1e-5 * fabs(want),
          "eval_dataset: exit %d/%d, %d evals, last %.9g vs tuna eval %.9g", rc, erc, n_eval, last,
          want);
    double want_acc = test_json_number(eout, "eval_accuracy");
    CHECK(n_acc == 3 && last_acc > 0 && last_acc < 1 && fabs(last_acc - want_acc) <= 1e-9,
          "compute_accuracy: %d of 3 evals with eval_accuracy, last %.9g vs tuna eval %.9g", n_acc,
          last_acc, want_acc);
    printf("  compute_accuracy: last eval_accuracy %.9g, tuna eval of the result %.9g\n", last_acc,
           want_acc);
    printf("  eval_dataset alpaca_en_demo: last eval %.9g, tuna eval of the result %.9g\n", last,
           want);
    free(eout);
    free(eerr);
    /* one config only; a refusal exits 1 with its line */
    snprintf(cmd, sizeof cmd, "%s train %s %s 2>/dev/null", test_tuna_bin(), yaml, yaml2);
    CHECK(test_system(cmd) == 2, "two config operands are refused");
    char bad[300];
    snprintf(bad, sizeof bad, "%s/bad.yaml", tmp);
    write_text(bad, "model_name_or_path: models/stories260K\nuse_galore: true\n");
    char *out = NULL, *errs = NULL;
    snprintf(cmd, sizeof cmd, "train %s", bad);
    rc = test_run_tuna(tmp, cmd, NULL, &out, &errs);
    CHECK(rc == 1 && strstr(errs, "bad.yaml:2: use_galore true: GaLore is not implemented") &&
                  !strchr(strchr(errs, '\n') + 1, '\n'),
          "a refusal: exit %d, said: %s", rc, errs);
    free(out);
    free(errs);
}

/* the flags lf_config_args makes of text, space-joined into out ("" on error, err set) */
static int args_of(const char *text, LfCommand cmd, char *out, size_t cap, TunaErr *err) {
    char path[300];
    snprintf(path, sizeof path, "%s/a.yaml", tmp);
    write_text(path, text);
    char **v = NULL;
    int n = 0;
    memset(err, 0, sizeof *err);
    out[0] = '\0';
    int rc = lf_config_args(path, cmd, &v, &n, NULL, 0, err);
    for (int i = 0; !rc && i < n; i++) {
        size_t len = strlen(out);
        snprintf(out + len, cap - len, "%s%s", i ? " " : "", v[i]);
    }
    if (!rc) lf_config_args_free(v, n);
    return rc;
}

/* llamafactory-cli chat and export files (examples/inference, examples/merge_lora) */
static void test_chat_export(void) {
    char a[1024], b[4096], cmd[2048];
    TunaErr err;
    int rc = args_of("model_name_or_path: models/stories260K\ntemplate: vanilla\n"
                     "infer_backend: huggingface\ntrust_remote_code: true\n",
                     LF_CMD_CHAT, a, sizeof a, &err);
    CHECK(rc == 0 && !strcmp(a, "models/stories260K --template vanilla --temperature 0.95 "
                                "--top-p 0.7 --top-k 50 --max-new-tokens 1024"),
          "chat: %s [%s]", err.msg, a);
    rc = args_of("model_name_or_path: m\nadapter_name_or_path: runs/x\ndo_sample: false\n"
                 "max_new_tokens: 64\ndefault_system: Be brief.\nquantization_bit: 4\n"
                 "infer_dtype: bfloat16\n",
                 LF_CMD_CHAT, a, sizeof a, &err);
    CHECK(rc == 0 && !strcmp(a, "m --max-new-tokens 64 --system Be brief. --adapter runs/x "
                                "--dtype bf16 --template auto:empty --temperature 0 "
                                "--quantization-bit 4 --double-quantization"),
          "chat, greedy, 4 bits: %s [%s]", err.msg, a);
    rc = args_of("model_name_or_path: m\nadapter_name_or_path: r\nexport_dir: out\n"
                 "export_size: 2\nexport_device: cpu\nexport_legacy_format: false\n"
                 "infer_dtype: bfloat16\ntemplate: llama3\n",
                 LF_CMD_EXPORT, a, sizeof a, &err);
    CHECK(rc == 0 && !strcmp(a, "--model m --out out --export-size 2 --adapter r "
                                "--export-dtype bf16"),
          "export: %s [%s]", err.msg, a);
    static const struct {
        LfCommand cmd;
        const char *text, *needle;
    } bad[] = {
            {LF_CMD_EXPORT, "model_name_or_path: m\nexport_quantization_bit: 4\n",
             ":2: export_quantization_bit 4: GPTQ"},
            {LF_CMD_EXPORT, "model_name_or_path: m\nexport_legacy_format: true\n", ".bin"},
            {LF_CMD_EXPORT, "model_name_or_path: m\nquantization_bit: 4\n", "quantized"},
            {LF_CMD_EXPORT, "model_name_or_path: m\nlearning_rate: 1\n",
             ":2: learning_rate: not an argument of llamafactory-cli export"},
            {LF_CMD_EXPORT, "export_dir: out\n", "model_name_or_path is missing"},
            {LF_CMD_CHAT, "model_name_or_path: m\nnum_beams: 4\n", ":2: num_beams 4: beam"},
            {LF_CMD_CHAT, "model_name_or_path: m\nrepetition_penalty: 1.1\n", "repetition"},
            {LF_CMD_CHAT, "model_name_or_path: m\nquantization_bit: 8\n", "LLM.int8"},
            {LF_CMD_CHAT, "model_name_or_path: m\ninfer_dtype: float16\n", "f16"},
            {LF_CMD_CHAT, "model_name_or_path: m\nadapter_name_or_path: a,b\n", "several"},
            {LF_CMD_CHAT, "model_name_or_path: m\nvideo_fps: 2\n", "multimodal"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        rc = args_of(bad[i].text, bad[i].cmd, a, sizeof a, &err);
        CHECK(rc != 0 && strstr(err.msg, "a.yaml") && strstr(err.msg, bad[i].needle) &&
                      !strchr(err.msg, '\n'),
              "refused [%s]: %s", bad[i].needle, err.msg);
    }
    /* the CLI: the file's chat == the same as flags, greedy and sampled (LLaMA-Factory's
     * sampling defaults spelled out) */
    char yaml[300];
    snprintf(yaml, sizeof yaml, "%s/chat.yaml", tmp);
    write_text(yaml, "model_name_or_path: models/stories260K\ntemplate: vanilla\n"
                     "infer_backend: huggingface\n");
    char *o1 = NULL, *o2 = NULL, *e1 = NULL, *e2 = NULL;
    const char *tail[] = {"--temperature 0 --max-new-tokens 24", "--seed 3 --max-new-tokens 24"};
    const char *same[] = {"", "--temperature 0.95 --top-p 0.7 --top-k 50"};
    for (int k = 0; k < 2; k++) {
        snprintf(cmd, sizeof cmd, "chat %s --message 'Once upon a time' --threads 1 %s", yaml,
                 tail[k]);
        int r1 = test_run_tuna(tmp, cmd, NULL, &o1, &e1);
        snprintf(cmd, sizeof cmd,
                 "chat models/stories260K --template vanilla %s --message 'Once upon a time' "
                 "--threads 1 %s",
                 same[k], tail[k]);
        int r2 = test_run_tuna(tmp, cmd, NULL, &o2, &e2);
        CHECK(r1 == 0 && r2 == 0 && strlen(o1) > 30 && !strcmp(o1, o2),
              "chat.yaml %s: exit %d/%d [%s] vs flags [%s] (%s)", tail[k], r1, r2, o1, o2, e1);
        free(o1), free(o2), free(e1), free(e2);
    }
    /* export: the file's merge == the flags' merge, byte for byte (test_cli's run) */
    char merge[300];
    snprintf(merge, sizeof merge, "%s/merge.yaml", tmp);
    snprintf(b, sizeof b,
             "model_name_or_path: models/stories260K\nadapter_name_or_path: %s/lf-run\n"
             "template: vanilla\ntrust_remote_code: true\nexport_dir: %s/merged-yaml\n"
             "export_size: 5\nexport_device: cpu\nexport_legacy_format: false\n",
             tmp, tmp);
    write_text(merge, b);
    snprintf(cmd, sizeof cmd, "%s export %s 2>/dev/null", test_tuna_bin(), merge);
    int r1 = test_system(cmd);
    snprintf(cmd, sizeof cmd,
             "%s export --model models/stories260K --adapter %s/lf-run --out %s/merged-flags "
             "2>/dev/null",
             test_tuna_bin(), tmp, tmp);
    int r2 = test_system(cmd);
    char f1[400], f2[400];
    snprintf(f1, sizeof f1, "%s/merged-yaml/model.safetensors", tmp);
    snprintf(f2, sizeof f2, "%s/merged-flags/model.safetensors", tmp);
    CHECK(r1 == 0 && r2 == 0 && test_same_file(f1, f2), "merge.yaml: exit %d/%d, same file", r1,
          r2);
}

/* lr_scheduler_kwargs as Hugging Face takes it: a YAML mapping (flow or block) or JSON text;
 * a run's lrs are transformers' (tests/fixtures/train/schedules.json: warmup_stable_decay with
 * num_decay_steps 10, lr 2e-4, 5 warmup steps of 30) */
static void test_sched_kwargs(void) {
    static const char *const forms[][2] = {
            {"lr_scheduler_kwargs: {min_lr_rate: 0.1, num_cycles: 1}\n",
             "{\"min_lr_rate\":0.1,\"num_cycles\":1}"},
            {"lr_scheduler_kwargs:\n  min_lr_rate: 1.0e-1\n  num_cycles: 1\n",
             "{\"min_lr_rate\":0.1,\"num_cycles\":1}"},
            {"lr_scheduler_kwargs: '{\"min_lr_rate\": 0.1}'\n", "{\"min_lr_rate\": 0.1}"},
            {"lr_scheduler_kwargs: {decay_type: '1-sqrt', min_lr: null, x: yes}\n",
             "{\"decay_type\":\"1-sqrt\",\"min_lr\":null,\"x\":true}"},
    };
    for (size_t i = 0; i < sizeof forms / sizeof *forms; i++) {
        TrainConfig c;
        TunaErr err;
        int rc = load(forms[i][0], &c, NULL, 0, &err);
        CHECK(rc == 0 && !strcmp(c.lr_scheduler_kwargs, forms[i][1]), "[%s]: %d %s -> %s",
              forms[i][0], rc, err.msg, c.lr_scheduler_kwargs);
    }
    refused("lr_scheduler_kwargs: {a: [1, 2]}\n", ":1:", "lr_scheduler_kwargs: a: a plain value");
    refused("optim_args: {a: 1}\n", "optim_args: a nested mapping is not read", NULL);
    refused("lr_scheduler_type: greedy\n", ":1: lr_scheduler_type", "greedy schedule");
    /* a run: the lr of each step is transformers' */
    char yaml[300], text[1024], cmd[1024], path[400];
    snprintf(yaml, sizeof yaml, "%s/wsd.yaml", tmp);
    snprintf(text, sizeof text,
             "model_name_or_path: models/stories260K\nstage: sft\nfinetuning_type: lora\n"
             "dataset: identity\ntemplate: vanilla\ncutoff_len: 32\nmax_samples: 8\n"
             "output_dir: %s/wsd-run\nlogging_steps: 1\nsave_steps: 500\n"
             "per_device_train_batch_size: 1\nlearning_rate: 2.0e-4\nmax_steps: 30\n"
             "warmup_steps: 5\nlr_scheduler_type: warmup_stable_decay\n"
             "lr_scheduler_kwargs: {num_decay_steps: 10}\n",
             tmp);
    write_text(yaml, text);
    snprintf(cmd, sizeof cmd, "%s train %s --threads 1 --quiet --sample-prompts '' 2>/dev/null",
             test_tuna_bin(), yaml);
    int rc = test_system(cmd);
    CHECK(rc == 0, "wsd.yaml: exit %d", rc);
    char *fx = xread_file("tests/fixtures/train/schedules.json", NULL);
    const char *at = fx ? strstr(fx, "{\"name\": \"warmup_stable_decay\", \"kwargs\": "
                                     "{\"num_decay_steps\": 10}, \"lr\": 0.0002, \"warmup\": 5, "
                                     "\"total\": 30, \"factors\": [")
                        : NULL;
    CHECK(at != NULL, "schedules.json: the wsd case");
    snprintf(path, sizeof path, "%s/wsd-run/metrics.jsonl", tmp);
    FILE *f = fopen(path, "r");
    char line[8192];
    int k = 0, bad = 0;
    const char *want = at ? strchr(strstr(at, "\"factors\": ["), '[') + 1 : NULL;
    while (f && want && fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "\"lr\":");
        if (strncmp(line, "{\"type\":\"step\"", 14) || !p) continue;
        char *end;
        double factor = strtod(want, &end);
        want = end + 1;
        double lr = strtod(p + 5, NULL);
        if (fabs(lr - 2e-4 * factor) > 1e-18)
            bad++, printf("  step %d: lr %.17g, want %.17g\n", k, lr, 2e-4 * factor);
        k++;
    }
    if (f) fclose(f);
    free(fx);
    CHECK(k == 30 && !bad, "wsd run: %d steps, %d lrs off transformers'", k, bad);
    printf("  lr_scheduler_kwargs: mapping, block and JSON forms; a wsd run's %d lrs == "
           "transformers'\n",
           k);
}

/* default_system: the run trains with it in place of the template's (qwen's "You are Qwen...");
 * `tuna eval` of the run reads it (its eval loss == the run's last; with --template qwen, the
 * template's own system, another loss), and the exports carry it: the HF tokenizer's chat
 * template and the GGUF's Modelfile. An explicit empty one is refused. */
static void test_default_system(void) {
    TrainConfig c;
    TunaErr err;
    CHECK(load("default_system: You are Tuna.\n", &c, NULL, 0, &err) == 0 &&
                  !strcmp(c.default_system, "You are Tuna."),
          "default_system: %s [%s]", err.msg, c.default_system);
    refused("default_system: \"\"\n", ":1: default_system", "drop the key");
    char yaml[300], text[1024], cmd[1024], path[400];
    const char *sys = "You are Tuna, a fish who answers in one line.";
    snprintf(yaml, sizeof yaml, "%s/sys.yaml", tmp);
    snprintf(text, sizeof text,
             "model_name_or_path: models/stories260K\ndataset: identity\ntemplate: qwen\n"
             "default_system: %s\neval_dataset: alpaca_en_demo\nmax_samples: 12\nmax_steps: 2\n"
             "per_device_train_batch_size: 4\ncutoff_len: 256\noutput_dir: %s/sys-run\n"
             "learning_rate: 1.0e-2\n",
             sys, tmp);
    write_text(yaml, text);
    snprintf(cmd, sizeof cmd, "%s train %s --threads 1 --quiet --sample-prompts '' 2>/dev/null",
             test_tuna_bin(), yaml);
    int rc = test_system(cmd);
    snprintf(path, sizeof path, "%s/sys-run/metrics.jsonl", tmp);
    FILE *mf = fopen(path, "r");
    char line[8192];
    double last = (double)NAN;
    while (mf && fgets(line, sizeof line, mf))
        if (!strncmp(line, "{\"type\":\"eval\"", 14)) last = test_json_number(line, "eval_loss");
    if (mf) fclose(mf);
    double want[2];
    for (int i = 0; i < 2; i++) {
        char *eout = NULL, *eerr = NULL;
        snprintf(cmd, sizeof cmd,
                 "eval --model %s/sys-run --dataset alpaca_en_demo --max-samples 12 --no-generate "
                 "--batch-size 4 --cutoff-len 256 --threads 1%s",
                 tmp, i ? " --template qwen" : "");
        int erc = test_run_tuna(tmp, cmd, NULL, &eout, &eerr);
        want[i] = erc ? (double)NAN : test_json_number(eout, "eval_loss");
        free(eout);
        free(eerr);
    }
    CHECK(rc == 0 && fabs(last - want[0]) <= 1e-5 * fabs(want[0]) &&
                  fabs(last - want[1]) > 1e-3 * fabs(want[1]),
          "default_system: exit %d, last eval %.9g, tuna eval of the run %.9g, with the "
          "template's own system %.9g",
          rc, last, want[0], want[1]);
    printf("  default_system: the run's last eval %.9g, tuna eval of the run %.9g (the template's "
           "own system: %.9g)\n",
           last, want[0], want[1]);
    /* the exports: the merged HF checkpoint's chat template, the GGUF's Modelfile */
    char *out = NULL, *errs = NULL;
    snprintf(cmd, sizeof cmd, "export --model %s/sys-run --out %s/sys-hf", tmp, tmp);
    rc = test_run_tuna(tmp, cmd, NULL, &out, &errs);
    free(out);
    free(errs);
    snprintf(path, sizeof path, "%s/sys-hf/tokenizer_config.json", tmp);
    char *tc = xread_file(path, NULL);
    CHECK(rc == 0 && tc && strstr(tc, sys) && !strstr(tc, "You are Qwen"),
          "export --format hf: exit %d, tokenizer_config.json %s the run's default_system", rc,
          tc ? "without" : "missing,");
    free(tc);
    snprintf(cmd, sizeof cmd, "export --format gguf --model %s/sys-run --out %s/sys.gguf", tmp,
             tmp);
    rc = test_run_tuna(tmp, cmd, NULL, &out, &errs);
    free(out);
    free(errs);
    snprintf(path, sizeof path, "%s/sys.Modelfile", tmp);
    char *mfile = xread_file(path, NULL), want_sys[200];
    snprintf(want_sys, sizeof want_sys, "SYSTEM \"\"\"%s\"\"\"", sys);
    CHECK(rc == 0 && mfile && strstr(mfile, want_sys), "export --format gguf: exit %d, %s", rc,
          mfile ? mfile : "no Modelfile");
    free(mfile);
}

/* Resuming as llamafactory-cli does: output_dir's newest checkpoint when overwrite_output_dir
 * is not true (a run with other settings refused, or resumed with --allow-changes), and
 * resume_from_checkpoint naming one; --resume RUN/checkpoint-N the same from the CLI. The
 * resumed losses are the uninterrupted run's (constant lr: the schedule does not depend on
 * max_steps), bit for bit. */
static void test_resume(void) {
    char yaml[300], text[2048], cmd[1200], ref[400], out[400];
    const char *common = "model_name_or_path: models/stories260K\ndataset: identity\n"
                         "template: vanilla\ncutoff_len: 64\nmax_samples: 32\n"
                         "per_device_train_batch_size: 2\nlearning_rate: 1.0e-3\n"
                         "lr_scheduler_type: constant\nmax_steps: 6\nsave_steps: 2\n"
                         "logging_steps: 1\nseed: 5\n";
    snprintf(yaml, sizeof yaml, "%s/res.yaml", tmp);
    snprintf(ref, sizeof ref, "%s/res-ref", tmp);
    snprintf(text, sizeof text, "%soutput_dir: %s\n", common, ref);
    write_text(yaml, text);
    snprintf(cmd, sizeof cmd, "%s train %s --threads 1 --quiet --sample-prompts '' 2>/dev/null",
             test_tuna_bin(), yaml);
    int rc = test_system(cmd);
    char a[2048], b[2048];
    losses(ref, a, sizeof a);
    CHECK(rc == 0 && a[0], "the uninterrupted run: exit %d", rc);
    /* a run that ended at step 4 (checkpoint-2 written, the end its result) */
    snprintf(out, sizeof out, "%s/res-run", tmp);
    snprintf(text, sizeof text, "%soutput_dir: %s\n", common, out);
    write_text(yaml, text);
    snprintf(cmd, sizeof cmd,
             "%s train %s --max-steps 4 --threads 1 --quiet --sample-prompts '' 2>/dev/null",
             test_tuna_bin(), yaml);
    rc = test_system(cmd);
    char *o = NULL, *e = NULL, args[1200];
    snprintf(args, sizeof args, "train %s --threads 1 --quiet --sample-prompts ''", yaml);
    int rc2 = test_run_tuna(tmp, args, NULL, &o, &e);
    CHECK(rc == 0 && rc2 == 1 && strstr(e, "holds a run with other settings (max_steps 4 -> 6)") &&
                  !strchr(strchr(e, '\n') + 1, '\n'),
          "the file again, max_steps 6 over the run's 4: exit %d/%d: %s", rc, rc2, e);
    free(o);
    free(e);
    snprintf(args, sizeof args, "train %s --allow-changes --threads 1 --sample-prompts ''", yaml);
    rc = test_run_tuna(tmp, args, NULL, &o, &e);
    losses(out, b, sizeof b);
    CHECK(rc == 0 && strstr(e, "resuming the run in") && !strcmp(a, b),
          "resumed with --allow-changes: exit %d, losses [%s] vs [%s]: %s", rc, b, a, e);
    free(o);
    free(e);
    /* resume_from_checkpoint: that checkpoint, though checkpoint-4 is newer */
    char yaml2[300];
    snprintf(yaml2, sizeof yaml2, "%s/res2.yaml", tmp);
    snprintf(text, sizeof text, "%soutput_dir: %s\nresume_from_checkpoint: %s/checkpoint-2\n",
             common, ref, ref);
    write_text(yaml2, text);
    snprintf(args, sizeof args, "train %s --threads 1 --sample-prompts ''", yaml2);
    rc = test_run_tuna(tmp, args, NULL, &o, &e);
    losses(ref, b, sizeof b);
    char mpath[500];
    snprintf(mpath, sizeof mpath, "%s/metrics.jsonl", ref);
    char *mj = xread_file(mpath, NULL);
    CHECK(rc == 0 && !strcmp(a, b) && mj && strstr(mj, "resumed from checkpoint-2"),
          "resume_from_checkpoint checkpoint-2: exit %d, losses [%s] vs [%s]: %s", rc, b, a, e);
    free(mj);
    free(o);
    free(e);
    /* the CLI: --resume RUN/checkpoint-N */
    snprintf(args, sizeof args, "train --resume %s/checkpoint-4 --threads 1 --quiet", ref);
    rc = test_run_tuna(tmp, args, NULL, &o, &e);
    losses(ref, b, sizeof b);
    mj = xread_file(mpath, NULL);
    CHECK(rc == 0 && !strcmp(a, b) && mj && strstr(mj, "resumed from checkpoint-4"),
          "--resume RUN/checkpoint-4: exit %d, losses [%s] vs [%s]: %s", rc, b, a, e);
    free(mj);
    free(o);
    free(e);
    snprintf(text, sizeof text, "%soutput_dir: %s\nresume_from_checkpoint: %s/checkpoint-2\n",
             common, ref, out);
    write_text(yaml2, text);
    snprintf(args, sizeof args, "train %s --threads 1", yaml2);
    rc = test_run_tuna(tmp, args, NULL, &o, &e);
    CHECK(rc == 1 && strstr(e, "a checkpoint-N folder of output_dir"),
          "resume_from_checkpoint of another run: exit %d: %s", rc, e);
    free(o);
    free(e);
    printf("  resume as LLaMA-Factory does: output_dir's newest, resume_from_checkpoint, --resume "
           "RUN/checkpoint-N: the uninterrupted losses [%s]\n",
           a);
}

int main(void) {
    snprintf(tmp, sizeof tmp, "/tmp/tuna_lf_config.%d", (int)getpid());
    mkdir(tmp, 0755);
    test_example();
    test_defaults_and_specials();
    test_refusals();
    test_cli();
    test_sched_kwargs();
    test_default_system();
    test_resume();
    test_chat_export();
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    (void)test_system(cmd);
    return test_report("test_lf_config");
}
