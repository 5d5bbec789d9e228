/* train_estimate.c: the parameters and memory a training run would take, from the model's
 * config.json alone (see train.h). The sizes are model_param_count_for's (the tensor table
 * model_load allocates by) and train_state_size's (the buffers train_state_init allocates), so
 * the Setup screen shows what the engine really allocates; tests/test_estimate.c checks them
 * against a real TrainState. */
#include <string.h>

#include "../kernels/wtype.h"

#include "model.h"
#include "model_train.h"
#include "pref.h"
#include "train.h"

/* --quantization-bit / --quantization-type / --double-quantization / --dtype as load options:
 * the linear layers the method keeps frozen (all for LoRA and P-tuning; freeze: those below its
 * trained layers) in the chosen type, and under auto the frozen embedding and head as stored
 * (not when LoRA trains token rows); full fine-tuning loads fp32 under auto, refuses the rest. */
int train_load_options(const TrainConfig *c, TrainMethod method, ModelLoadOptions *o,
                       TunaErr *err) {
    int rc = model_load_options(c->quantization_bit, c->quantization_type, c->double_quantization,
                                c->dtype, o, err);
    if (rc || (o->qtype == WT_F32 && !o->keep_stored)) return rc;
    if (method == METHOD_FULL && o->qtype == WT_F32) { /* auto: full trains every weight in fp32 */
        *o = (ModelLoadOptions){.qtype = WT_F32, .fp32_from_layer = 1 << 30};
        return 0;
    }
    if (method == METHOD_FULL)
        return c->quantization_bit
                       ? tuna_errf(err, TUNA_EUNSUP,
                                   "--quantization-bit %d: full fine-tuning trains every weight in "
                                   "fp32; use --method lora (QLoRA), ptuning or freeze",
                                   c->quantization_bit)
                       : tuna_errf(
                                 err, TUNA_EUNSUP,
                                 "--dtype %s keeps the frozen base in %s: full fine-tuning trains "
                                 "every weight in fp32; use lora, ptuning or freeze",
                                 c->dtype, c->dtype);
    if (method == METHOD_FREEZE) o->fp32_from_layer = -c->freeze_layers; /* resolved on load */
    if (method == METHOD_LORA && c->lora_trainable_tokens[0]) o->typed_head = 0; /* it trains */
    return 0;
}

/* What the backend keeps beside the weights under --bf16 (the cpu backend's packed copies,
 * backend_bf16_extra_bytes, one budget for both): --dtype bf16's typed weights (and a tied head)
 * once more, and for full and freeze the trained linear layers (and the head under full) as bf16
 * once more (model_train.c track_weights). Not counted: a checkpoint's own BF16 kept as stored
 * under --dtype auto (the file's types). */
static size_t pack_bytes(const TrainConfig *cfg, const ModelConfig *mc, const ModelLoadOptions *lo,
                         size_t typed_bytes, TrainMethod method) {
    if (!cfg->bf16) return 0;
    size_t frozen = 0, trained = 0;
    if (lo->qtype == WT_BF16) {
        size_t emb = lo->typed_head && !mc->tie_embeddings ? (size_t)mc->V * mc->C * 2 : 0;
        frozen = typed_bytes > emb ? typed_bytes - emb : 0;
    }
    if (method == METHOD_FULL || method == METHOD_FREEZE) {
        size_t C = (size_t)mc->C, Q = (size_t)mc->NH * mc->HS, KV = (size_t)mc->KVH * mc->HS,
               FF = (size_t)mc->FF, mlp = mc->arch == ARCH_GPT2 ? 2 : 3;
        size_t layers = method == METHOD_FULL ? (size_t)mc->L : (size_t)cfg->freeze_layers;
        trained = layers * (2 * Q * C + 2 * KV * C + mlp * FF * C);
        if (method == METHOD_FULL) trained += (size_t)mc->V * C; /* the head, tied or not */
    }
    return backend_bf16_extra_bytes(cfg->backend, frozen + trained * 2);
}

int train_estimate(const ModelConfig *mc, const TrainConfig *cfg, TrainEstimate *out,
                   TunaErr *err) {
    memset(out, 0, sizeof *out);
    TrainMethod method;
    switch (train_method_bit(cfg->method)) {
    case TRAIN_M_FULL: method = METHOD_FULL; break;
    case TRAIN_M_FREEZE: method = METHOD_FREEZE; break;
    case TRAIN_M_LORA: method = METHOD_LORA; break;
    case TRAIN_M_PTUNING: method = METHOD_PTUNING; break;
    case TRAIN_M_PROMPT: method = METHOD_PROMPT; break;
    case TRAIN_M_PTUNING_V1: method = METHOD_PTUNING_V1; break;
    default:
        return tuna_errf(err, TUNA_EINVAL,
                         "--method must be full, freeze, lora, ptuning, prompt or ptuning-v1, got "
                         "\"%s\"",
                         cfg->method);
    }
    /* the TrainSetup train_run builds (trainable tokens: one row per listed token) */
    TrainSetup setup = {.method = method,
                        .freeze_layers = cfg->freeze_layers,
                        .freeze_modules = cfg->freeze_trainable_modules,
                        .lora_rank = cfg->lora_rank,
                        .lora_alpha = (float)cfg->lora_alpha,
                        .lora_dropout = (float)cfg->lora_dropout,
                        .lora_rslora = cfg->use_rslora,
                        .lora_dora = cfg->use_dora,
                        .lora_targets = cfg->lora_target,
                        .lora_tokens = cfg->lora_trainable_tokens,
                        .seed = (uint64_t)cfg->seed,
                        .prefix_tokens = cfg->prefix_tokens,
                        .prefix_projection = cfg->prefix_projection,
                        .prefix_hidden = cfg->prefix_hidden,
                        .prompt_lstm = !strcmp(cfg->prompt_encoder, "lstm"),
                        .prompt_layers = cfg->prompt_encoder_layers,
                        .grad_checkpoint = cfg->gradient_checkpointing};
    ModelLoadOptions lo;
    int rc = train_load_options(cfg, method, &lo, err);
    if (rc) return rc;
    size_t per_layer, n_typed = 0,
                      typed_bytes = model_typed_bytes_file(cfg->model, mc, &lo, &n_typed);
    out->total_params = model_param_count_for(mc, &per_layer);
    /* dpo and rm: each batch row is a pair, chosen and rejected; kto: each example and its KL
     * row (train_run's rows = 2 B) */
    int dpo = !strcmp(cfg->stage, "dpo"), kto = !strcmp(cfg->stage, "kto"),
        rm = !strcmp(cfg->stage, "rm"), pairs = dpo || kto || rm;
    int rows = pairs ? 2 * cfg->batch_size : cfg->batch_size;
    TrainSizes ts;
    rc = train_state_size(mc, out->total_params, per_layer, &setup, rows, cfg->cutoff_len, &ts,
                          err);
    if (rc) return rc;
    PrefLossType pt;
    if ((dpo && !pref_loss_parse(cfg->pref_loss, &pt) && pref_uses_ref(pt)) || kto) {
        /* the reference train_run builds: a state without training (or the starting adapter,
         * frozen, for a run from --adapter) over the same Model, or over a frozen copy of the
         * weights for full and freeze */
        TrainSetup none = {.method = METHOD_NONE, .seed = setup.seed};
        if (cfg->adapter[0]) {
            none = setup;
            none.lora_dropout = 0;
        }
        TrainSizes rs;
        rc = train_state_size(mc, out->total_params, per_layer, &none, rows, cfg->cutoff_len, &rs,
                              err);
        if (rc) return rc;
        out->ref_bytes = rs.param_bytes + rs.grad_bytes + rs.act_bytes + rs.scratch_bytes;
        if (method == METHOD_FULL || method == METHOD_FREEZE)
            out->ref_bytes += (out->total_params - n_typed) * sizeof(float) + typed_bytes;
    }
    out->trainable_params = ts.trainable;
    out->lora_modules = ts.lora_modules;
    out->weight_bytes = (out->total_params - n_typed) * sizeof(float) + typed_bytes +
                        ts.param_bytes + pack_bytes(cfg, mc, &lo, typed_bytes, method);
    out->grad_bytes = ts.grad_bytes;
    out->optim_bytes = 2 * ts.trainable * sizeof(float); /* optim_init: m and v per tensor */
    if (rm) { /* the value head (C weights and a bias), its gradient and its AdamW state */
        size_t vh = ((size_t)mc->C + 1) * sizeof(float);
        out->weight_bytes += vh;
        out->grad_bytes += vh;
        out->optim_bytes += 2 * vh;
    }
    out->act_bytes = ts.act_bytes;
    out->scratch_bytes = ts.scratch_bytes;
    out->total_bytes = out->weight_bytes + out->grad_bytes + out->optim_bytes + out->act_bytes +
                       out->scratch_bytes + out->ref_bytes;
    return 0;
}
