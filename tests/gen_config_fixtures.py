#!/usr/bin/env python3
"""Generate the config.json variants of tests/test_config_variants.c.

    /opt/tuna-venv/bin/python tests/gen_config_fixtures.py tests/fixtures/config_variants

Writes one NAME.json per variant and cases.txt, one line per variant:
    NAME ok ROPE THETA FACTOR LOW HIGH ORIG HS QKV_BIAS O_BIAS MLP_BIAS WINDOW TIE MAXPOS EOS
    NAME refuse KEY
For "ok" lines every field is what transformers itself makes of the file: the config class reads
it (from_dict, as from_pretrained does), the model is built on the meta device, and the fields
come from the built modules (head_dim, which projections have a bias, each layer's sliding
window) and the standardized rope_parameters. A variant whose layers differ (a sliding window
on some layers only) or that uses something tuna lacks is a "refuse" line naming the key that
tuna's one-line error must name.

Variants:
- "5x_*": written by the installed transformers (5.x) with save_pretrained;
- "4x_*": config.json texts in the form transformers 4.x wrote them (keys, order, nulls as in
  the hub's Llama-3.2, SmolLM2, TinyLlama, Mistral-7B, Qwen2.5, Qwen3 and gpt2 files, with the
  sizes shrunk so the model builds in a moment);
- "*_both": both forms in one file, as transformers 5.0-5.23 wrote them;
- refusals: one key changed from a loadable variant.
rope_parameters keyed by layer type ({"full_attention": {...}}) is refused: the rotary embedding
of transformers' llama, mistral, qwen2 and qwen3 reads one flat dict and fails on it.
"""
import copy
import json
import os
import sys
import tempfile

import torch
import transformers
from transformers import (AutoModelForCausalLM, GPT2Config, LlamaConfig, MistralConfig,
                          Qwen2Config, Qwen3Config)

CLASSES = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config,
           "qwen3": Qwen3Config, "gpt2": GPT2Config}
SMALL = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64, "rope_theta": 500000.0}


def saved_5x(cls, **kw):
    """config.json as the installed transformers saves it."""
    with tempfile.TemporaryDirectory() as d:
        cls(**kw).save_pretrained(d)
        with open(os.path.join(d, "config.json")) as f:
            return json.load(f)


# --- transformers 4.x forms (top-level rope_theta, rope_scaling)
L4_COMMON = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 64,
    "initializer_range": 0.02, "intermediate_size": 128, "max_position_embeddings": 256,
    "mlp_bias": False, "model_type": "llama", "num_attention_heads": 4, "num_hidden_layers": 2,
    "num_key_value_heads": 2, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": None, "rope_theta": 10000.0, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "transformers_version": "4.45.0", "use_cache": True,
    "vocab_size": 256}
V4 = {
    # Llama-3.2-1B (4.45): llama3 scaling in rope_scaling, theta at the top level
    "4x_llama32": dict(L4_COMMON, head_dim=16, rope_theta=500000.0, tie_word_embeddings=True,
                       eos_token_id=[2, 3], rope_scaling={
                           "factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                           "original_max_position_embeddings": 64, "rope_type": "llama3"}),
    # SmolLM2-135M (4.42): theta 100000, no scaling
    "4x_smollm2": dict(L4_COMMON, rope_theta=100000.0, tie_word_embeddings=True,
                       transformers_version="4.42.3"),
    # TinyLlama / Llama-2 (4.3x): no rope_theta key at all (10000), no head_dim, no mlp_bias
    "4x_tinyllama": {k: v for k, v in L4_COMMON.items()
                     if k not in ("rope_theta", "mlp_bias", "attention_bias", "head_dim")},
    # linear scaling with the old "type" key (4.3x)
    "4x_linear_type": dict(L4_COMMON, rope_scaling={"type": "linear", "factor": 4.0}),
    # Mistral-7B-v0.1 (4.34): sliding_window 4096, rope_theta 10000
    "4x_mistral7b": {
        "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
        "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02,
        "intermediate_size": 128, "max_position_embeddings": 32768, "model_type": "mistral",
        "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.34.0.dev0", "use_cache": True, "vocab_size": 256},
    # Mistral-7B-v0.3 (4.42): sliding_window null, theta 1e6, head_dim absent
    "4x_mistral_v03": {
        "architectures": ["MistralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1,
        "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02,
        "intermediate_size": 128, "max_position_embeddings": 32768, "model_type": "mistral",
        "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "sliding_window": None,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.42.0.dev0", "use_cache": True, "vocab_size": 256},
    # Qwen2.5-0.5B-Instruct (4.43): use_sliding_window false, window and max_window_layers set
    "4x_qwen25": {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
        "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 64,
        "initializer_range": 0.02, "intermediate_size": 128, "max_position_embeddings": 32768,
        "max_window_layers": 21, "model_type": "qwen2", "num_attention_heads": 4,
        "num_hidden_layers": 2, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16", "transformers_version": "4.43.1", "use_cache": True,
        "use_sliding_window": False, "vocab_size": 256},
    # Qwen3-0.6B (4.51): head_dim 128 > hidden/heads, attention_bias false, rope_scaling null
    "4x_qwen3": {
        "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
        "hidden_size": 64, "initializer_range": 0.02, "intermediate_size": 128,
        "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
        "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000,
        "sliding_window": None, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0", "use_cache": True, "use_sliding_window": False,
        "vocab_size": 256},
    # gpt2 (the hub's original file): n_ctx, task_specific_params, no n_inner
    "4x_gpt2": {
        "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.1, "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256,
        "initializer_range": 0.02, "layer_norm_epsilon": 1e-05, "model_type": "gpt2",
        "n_ctx": 1024, "n_embd": 64, "n_head": 4, "n_layer": 2, "n_positions": 1024,
        "resid_pdrop": 0.1, "summary_activation": None, "summary_first_dropout": 0.1,
        "summary_proj_to_labels": True, "summary_type": "cls_index", "summary_use_proj": True,
        "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
        "vocab_size": 50257},
}


def variants():
    v = dict(V4)
    v["5x_llama"] = saved_5x(LlamaConfig, **SMALL, max_position_embeddings=256)
    # SmolLM2-135M-Instruct as transformers 5 wrote it: the file of issue 11
    v["5x_smollm2"] = saved_5x(LlamaConfig, **SMALL, tie_word_embeddings=True,
                               rope_parameters={"rope_theta": 100000.0, "rope_type": "default"})
    v["5x_llama3"] = saved_5x(LlamaConfig, **SMALL, max_position_embeddings=256,
                              rope_parameters=dict(LLAMA3))
    v["5x_llama3_noorig"] = saved_5x(LlamaConfig, **SMALL, max_position_embeddings=256,
                                     rope_parameters={k: x for k, x in LLAMA3.items()
                                                      if k != "original_max_position_embeddings"})
    v["5x_linear"] = saved_5x(LlamaConfig, **SMALL,
                              rope_parameters={"rope_type": "linear", "factor": 2.0,
                                               "rope_theta": 10000.0})
    v["5x_llama_bias"] = saved_5x(LlamaConfig, **SMALL, attention_bias=True, mlp_bias=True)
    v["5x_llama_hd32"] = saved_5x(LlamaConfig, **SMALL, head_dim=32)
    v["5x_mistral"] = saved_5x(MistralConfig, **SMALL)
    v["5x_mistral_nosw"] = saved_5x(MistralConfig, **SMALL, sliding_window=None)
    v["5x_qwen2"] = saved_5x(Qwen2Config, **SMALL, eos_token_id=2)
    v["5x_qwen2_sw_all"] = saved_5x(Qwen2Config, **SMALL, use_sliding_window=True,
                                    sliding_window=16, max_window_layers=0)
    v["5x_qwen3"] = saved_5x(Qwen3Config, **SMALL)
    v["5x_qwen3_bias"] = saved_5x(Qwen3Config, **SMALL, attention_bias=True, head_dim=16)
    v["5x_gpt2"] = saved_5x(GPT2Config, vocab_size=256, n_embd=64, n_layer=2, n_head=4)
    v["5x_gpt2_gelu"] = saved_5x(GPT2Config, vocab_size=256, n_embd=64, n_layer=2, n_head=4,
                                 n_inner=96, activation_function="gelu")
    # as transformers 5.0-5.23 wrote them: rope_parameters, rope_scaling and rope_theta
    both = copy.deepcopy(v["5x_llama3"])
    both["rope_scaling"] = {k: x for k, x in LLAMA3.items() if k != "rope_theta"}
    both["rope_theta"] = 500000.0
    v["5x_llama3_both"] = both
    both = copy.deepcopy(v["5x_qwen2"])
    both["rope_scaling"], both["rope_theta"] = None, 10000.0
    v["5x_qwen2_both"] = both
    qwen3_nohd = copy.deepcopy(v["4x_qwen3"])
    del qwen3_nohd["head_dim"]
    v["4x_qwen3_nohd"] = qwen3_nohd  # Qwen3Config's head_dim default is 128
    return v


# name -> (base variant, changes (None deletes), key tuna's error must name)
REFUSED = {
    "r_yarn": ("4x_qwen25", {"rope_scaling": {"factor": 4.0, "original_max_position_embeddings":
                                              32768, "type": "yarn"}}, "yarn"),
    "r_dynamic": ("4x_llama32", {"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "dynamic"),
    "r_longrope": ("5x_llama", {"rope_parameters": {
        "rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 8,
        "long_factor": [2.0] * 8, "original_max_position_embeddings": 128}}, "longrope"),
    "r_su": ("4x_llama32", {"rope_scaling": {"type": "su", "short_factor": [1.0] * 8,
                                             "long_factor": [2.0] * 8}}, "su"),
    "r_mrope": ("4x_qwen25", {"rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}},
                "mrope"),
    "r_mrope_section": ("5x_qwen2", {"rope_parameters": {
        "rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}}, "mrope_section"),
    "r_yarn_key": ("5x_llama", {"rope_parameters": {
        "rope_type": "default", "rope_theta": 1e4, "attention_factor": 1.2}}, "attention_factor"),
    "r_prf_top": ("4x_smollm2", {"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    "r_prf_dict": ("5x_llama", {"rope_parameters": {
        "rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.25}},
        "partial_rotary_factor"),
    "r_llama3_nolow": ("5x_llama", {"rope_parameters": {
        "rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "high_freq_factor": 4.0}},
        "low_freq_factor"),
    "r_linear_nofactor": ("4x_smollm2", {"rope_scaling": {"type": "linear"}}, "factor"),
    "r_both_theta": ("5x_smollm2", {"rope_theta": 10000.0}, "rope_theta"),
    "r_both_type": ("5x_llama3_both", {"rope_scaling": {"type": "linear", "factor": 8.0}},
                    "rope_type"),
    "r_both_factor": ("5x_llama3_both", {"rope_scaling": dict(
        {k: x for k, x in LLAMA3.items() if k != "rope_theta"}, factor=16.0)}, "factor"),
    # keyed by layer type, as 5.x models with per-layer RoPE write it: Qwen3's rotary embedding
    # reads rope_parameters["rope_type"] and fails on this (KeyError)
    "r_rope_by_layer": ("5x_qwen3", {"rope_parameters": {
        "full_attention": {"rope_type": "default", "rope_theta": 5e5}}}, "rope_parameters"),
    "r_attn_softcap": ("5x_llama", {"attn_logit_softcapping": 50.0}, "attn_logit_softcapping"),
    "r_final_softcap": ("4x_qwen3", {"final_logit_softcapping": 30.0},
                        "final_logit_softcapping"),
    "r_quant": ("4x_qwen25", {"quantization_config": {"quant_method": "gptq", "bits": 4}},
                "quantization_config"),
    "r_quant_gpt2": ("4x_gpt2", {"quantization_config": {"quant_method": "bitsandbytes"}},
                     "quantization_config"),
    "r_experts": ("5x_qwen2", {"num_experts": 8, "num_experts_per_tok": 2}, "num_experts"),
    "r_local_experts": ("4x_mistral7b", {"num_local_experts": 8}, "num_local_experts"),
    "r_query_scalar": ("5x_llama", {"query_pre_attn_scalar": 256}, "query_pre_attn_scalar"),
    "r_act_gelu": ("5x_llama", {"hidden_act": "gelu_pytorch_tanh"}, "hidden_act"),
    "r_gpt2_act_relu": ("5x_gpt2", {"activation_function": "relu"}, "activation_function"),
    "r_gpt2_noscale": ("5x_gpt2", {"scale_attn_weights": False}, "scale_attn_weights"),
    "r_gpt2_invlayer": ("4x_gpt2", {"scale_attn_by_inverse_layer_idx": True},
                        "scale_attn_by_inverse_layer_idx"),
    "r_llama_layer_sliding": ("5x_llama", {"layer_types": ["full_attention", "sliding_attention"],
                                           "sliding_window": 16}, "layer_types"),
    "r_layer_chunked": ("5x_qwen3", {"layer_types": ["full_attention", "chunked_attention"]},
                        "layer_types"),
    "r_layer_count": ("5x_qwen3", {"layer_types": ["full_attention"]}, "layer_types"),
    "r_mistral_mixed": ("5x_mistral", {"layer_types": ["sliding_attention", "full_attention"]},
                        "layer_types"),
    "r_mistral_attn_bias": ("5x_mistral", {"attention_bias": True}, "attention_bias"),
    "r_mistral_mlp_bias": ("4x_mistral7b", {"mlp_bias": True}, "mlp_bias"),
    "r_qwen2_attn_bias": ("4x_qwen25", {"attention_bias": True}, "attention_bias"),
    "r_qwen2_mlp_bias": ("5x_qwen2", {"mlp_bias": True}, "mlp_bias"),
    "r_qwen3_mlp_bias": ("4x_qwen3", {"mlp_bias": True}, "mlp_bias"),
    "r_qwen2_window_layers": ("4x_qwen25", {"use_sliding_window": True, "max_window_layers": 1},
                              "max_window_layers"),
    "r_qwen3_layer_types_mixed": ("5x_qwen3", {"use_sliding_window": True, "sliding_window": 16,
                                               "layer_types": ["full_attention",
                                                               "sliding_attention"]},
                                  "layer_types"),
    "r_qwen2_sliding_unused": ("5x_qwen2", {"layer_types": ["sliding_attention"] * 2},
                               "layer_types"),
    "r_head_dim_odd": ("5x_llama", {"head_dim": 15}, "head_dim"),
    "r_head_dim_big": ("5x_qwen3", {"head_dim": 2048}, "head_dim"),
}


def expected(cfg_json):
    """What transformers makes of a config.json: the fields tuna must match."""
    mt = cfg_json["model_type"]
    cfg = CLASSES[mt].from_dict(copy.deepcopy(cfg_json))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    eos = cfg.eos_token_id
    eos = (eos[0] if isinstance(eos, list) else eos) if eos is not None else -1
    tie = int(bool(cfg.tie_word_embeddings))
    if mt == "gpt2":
        attn = model.transformer.h[0].attn
        return ["none", 0, 0, 0, 0, 0, attn.head_dim, 1, 1, 1, 0, tie, cfg.n_positions, eos]
    rp = cfg.rope_parameters
    if "full_attention" in rp and isinstance(rp["full_attention"], dict):
        rp = rp["full_attention"]
    kind = rp.get("rope_type", "default")
    layers = model.model.layers
    attn, mlp = layers[0].self_attn, layers[0].mlp
    windows = {getattr(layer.self_attn, "sliding_window", None) for layer in layers}
    if mt == "mistral":
        windows = {cfg.sliding_window}  # MistralAttention reads config.sliding_window
    assert len(windows) == 1, "a per-layer window is a refusal, not an ok case"
    window = windows.pop() or 0
    factor = rp.get("factor", 0) if kind in ("linear", "llama3") else 0
    low = rp.get("low_freq_factor", 0) if kind == "llama3" else 0
    high = rp.get("high_freq_factor", 0) if kind == "llama3" else 0
    orig = rp.get("original_max_position_embeddings", 0) if kind == "llama3" else 0
    return [kind, rp["rope_theta"], factor, low, high, orig, attn.head_dim,
            int(attn.q_proj.bias is not None), int(attn.o_proj.bias is not None),
            int(mlp.gate_proj.bias is not None), window, tie, cfg.max_position_embeddings, eos]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/config_variants"
    os.makedirs(out, exist_ok=True)
    v = variants()
    lines = [f"# made by tests/gen_config_fixtures.py with transformers {transformers.__version__}"]
    for name in sorted(v):
        lines.append(" ".join([name, "ok"] + [f"{x:g}" if isinstance(x, float) else str(x)
                                              for x in expected(v[name])]))
    for name, (base, change, key) in REFUSED.items():
        c = copy.deepcopy(v[base])
        for k, x in change.items():
            if x is None:
                c.pop(k, None)
            else:
                c[k] = x
        v[name] = c
        lines.append(f"{name} refuse {key}")
    for name, c in v.items():
        with open(os.path.join(out, name + ".json"), "w") as f:
            json.dump(c, f, indent=2)
            f.write("\n")
    with open(os.path.join(out, "cases.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"{len(v)} variants ({len(v) - len(REFUSED)} ok, {len(REFUSED)} refused) in {out}")


if __name__ == "__main__":
    main()
