/* train_estimate.c: the parameters and memory a training run would take, from the model's
 * config.json alone (see train.h). The sizes are model_param_count_for's (the tensor table
 * model_load allocates by) and train_state_size's (the buffers train_state_init allocates), so
 * the Setup screen shows what the engine really allocates; tests/test_estimate.c checks them
 * against a real TrainState. */
#include <string.h>

#include "../kernels/wtype.h"

#include "model.h"
#include "model_train.h"
#include "train.h"

/* --quantization-bit / --quantization-type / --double-quantization as load options: the
 * linear layers the method keeps frozen (all for LoRA and P-tuning; freeze: those below its
 * trained layers) in the chosen type. */
int train_load_options(const TrainConfig *c, TrainMethod method, ModelLoadOptions *o,
                       TunaErr *err) {
    *o = (ModelLoadOptions){.qtype = WT_F32, .fp32_from_layer = 1 << 30};
    int bf16 = !strcmp(c->dtype, "bf16");
    if (!bf16 && strcmp(c->dtype, "fp32"))
        return tuna_errf(err, TUNA_EINVAL, "--dtype must be fp32 or bf16, got \"%s\"", c->dtype);
    if (!c->quantization_bit && bf16) {
        if (method == METHOD_FULL)
            return tuna_errf(err, TUNA_EUNSUP,
                             "--dtype bf16 keeps the frozen base in bf16: full fine-tuning trains "
                             "every weight in fp32; use lora, ptuning or freeze");
        o->qtype = WT_BF16;
        if (method == METHOD_FREEZE) o->fp32_from_layer = -c->freeze_layers;
        return 0;
    }
    if (!c->quantization_bit) {
        /* a frozen base keeps a GGUF file's stored types; full fine-tuning trains it in fp32 */
        if (method != METHOD_FULL)
            *o = model_load_frozen(method == METHOD_FREEZE ? -c->freeze_layers : 1 << 30,
                                   method == METHOD_LORA && c->lora_trainable_tokens[0]);
        return 0;
    }
    if (c->quantization_bit != 4 && c->quantization_bit != 8)
        return tuna_errf(err, TUNA_EINVAL, "--quantization-bit must be 0, 4 or 8, got %d",
                         c->quantization_bit);
    if (method == METHOD_FULL)
        return tuna_errf(err, TUNA_EUNSUP,
                         "--quantization-bit %d: full fine-tuning trains every weight in fp32; "
                         "use --method lora (QLoRA), ptuning or freeze",
                         c->quantization_bit);
    const char *name = c->quantization_bit == 8 ? "q8_0" : c->quantization_type;
    int t = wtype_by_name(name);
    int ok4 = t == WT_NF4 || t == WT_FP4 || t == WT_Q4_0 || t == WT_Q4_1;
    if (c->quantization_bit == 4 && !ok4)
        return tuna_errf(err, TUNA_EINVAL,
                         "--quantization-type \"%s\": want nf4, fp4, q4_0 or q4_1 with "
                         "--quantization-bit 4",
                         c->quantization_type);
    if (c->double_quantization && t != WT_NF4 && t != WT_FP4)
        return tuna_errf(err, TUNA_EINVAL, "--double-quantization applies to nf4 and fp4, not %s",
                         name);
    o->qtype = (WType)t;
    o->double_quant = c->double_quantization;
    if (method == METHOD_FREEZE) o->fp32_from_layer = -c->freeze_layers; /* resolved on load */
    return 0;
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
    default:
        return tuna_errf(err, TUNA_EINVAL,
                         "--method must be full, freeze, lora or ptuning, got \"%s\"", cfg->method);
    }
    /* the TrainSetup train_run builds (trainable tokens: one row per listed token) */
    TrainSetup setup = {.method = method,
                        .freeze_layers = cfg->freeze_layers,
                        .lora_rank = cfg->lora_rank,
                        .lora_alpha = (float)cfg->lora_alpha,
                        .lora_dropout = (float)cfg->lora_dropout,
                        .lora_rslora = cfg->use_rslora,
                        .lora_targets = cfg->lora_target,
                        .lora_tokens = cfg->lora_trainable_tokens,
                        .seed = (uint64_t)cfg->seed,
                        .prefix_tokens = cfg->prefix_tokens,
                        .prefix_projection = cfg->prefix_projection,
                        .prefix_hidden = cfg->prefix_hidden,
                        .grad_checkpoint = cfg->gradient_checkpointing};
    ModelLoadOptions lo;
    int rc = train_load_options(cfg, method, &lo, err);
    if (rc) return rc;
    size_t per_layer, n_typed = 0,
                      typed_bytes = model_typed_bytes_file(cfg->model, mc, &lo, &n_typed);
    out->total_params = model_param_count_for(mc, &per_layer);
    TrainSizes ts;
    rc = train_state_size(mc, out->total_params, per_layer, &setup, cfg->batch_size,
                          cfg->cutoff_len, &ts, err);
    if (rc) return rc;
    out->trainable_params = ts.trainable;
    out->lora_modules = ts.lora_modules;
    out->weight_bytes =
            (out->total_params - n_typed) * sizeof(float) + typed_bytes + ts.param_bytes;
    out->grad_bytes = ts.grad_bytes;
    out->optim_bytes = 2 * ts.trainable * sizeof(float); /* optim_init: m and v per tensor */
    out->act_bytes = ts.act_bytes;
    out->scratch_bytes = ts.scratch_bytes;
    out->total_bytes = out->weight_bytes + out->grad_bytes + out->optim_bytes + out->act_bytes +
                       out->scratch_bytes;
    return 0;
}
