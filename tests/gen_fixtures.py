#!/usr/bin/env python3
"""Generate tiny random-weight Hugging Face checkpoints + PyTorch reference outputs.

    /opt/tuna-venv/bin/python tests/gen_fixtures.py tests/fixtures

For every architecture ARCH this writes three checkpoints, ARCH/ (fp32), ARCH_bf16/ and
ARCH_f16/, each with config.json, generation_config.json, model.safetensors and
reference.safetensors:
    input_ids     I32 [2, 12]   two fixed random sequences
    logits        F32 [2, 12, V] eager attention, fp32 math on the stored (rounded) weights
    greedy_prompt I32 [5]
    greedy_ids    I32 [20]      model.generate(do_sample=False, max_new_tokens=20), EOS ignored
Deterministic: fixed seeds, CPU only, the same bytes on every run with the pinned versions.
"""
import copy
import json
import os
import shutil
import struct
import sys

import torch
import transformers
from safetensors.torch import load_file
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
                          MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM,
                          Qwen3Config, Qwen3ForCausalLM)
from transformers.pytorch_utils import Conv1D

B, T, V = 2, 12, 256
N_PROMPT, N_GEN = 5, 20
COMMON = dict(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2)

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}

# name -> (model class, config)
ARCHS = {
    "llama": (LlamaForCausalLM, LlamaConfig(**COMMON, max_position_embeddings=128, rms_norm_eps=1e-5,
                                            rope_theta=10000.0, tie_word_embeddings=False)),
    "llama_tied": (LlamaForCausalLM, LlamaConfig(**COMMON, max_position_embeddings=128, rms_norm_eps=1e-5,
                                                 rope_theta=10000.0, tie_word_embeddings=True)),
    "llama3": (LlamaForCausalLM, LlamaConfig(**COMMON, max_position_embeddings=256, rms_norm_eps=1e-5,
                                             rope_theta=500000.0, rope_scaling=dict(LLAMA3_ROPE),
                                             tie_word_embeddings=False)),
    "mistral": (MistralForCausalLM, MistralConfig(**COMMON, max_position_embeddings=128, rms_norm_eps=1e-5,
                                                  rope_theta=10000.0, sliding_window=4096,
                                                  tie_word_embeddings=False)),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config(**COMMON, max_position_embeddings=128, rms_norm_eps=1e-6,
                                            rope_theta=1000000.0, tie_word_embeddings=False)),
    "qwen3": (Qwen3ForCausalLM, Qwen3Config(**COMMON, head_dim=32, max_position_embeddings=128,
                                            rms_norm_eps=1e-6, rope_theta=1000000.0,
                                            tie_word_embeddings=False)),
    "gpt2": (GPT2LMHeadModel, GPT2Config(vocab_size=V, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                                         n_inner=128, activation_function="gelu_new",
                                         bos_token_id=0, eos_token_id=0)),
}
DTYPES = {"": torch.float32, "_bf16": torch.bfloat16, "_f16": torch.float16}
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def save_reference(tensors, path, metadata):
    """safetensors.save_file orders the metadata keys randomly (a Rust HashMap), so write the
    (simple) format here to get byte-identical files on every run."""
    header, blobs, off = {"__metadata__": metadata}, [], 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        b = t.numpy().tobytes()
        header[name] = {"dtype": {torch.int32: "I32", torch.float32: "F32"}[t.dtype],
                        "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    back = load_file(path)
    assert all(torch.equal(back[k], tensors[k]) for k in tensors)


def randomize(model, gen):
    """Replace every parameter so logits are O(1): weights ~ N(0, 1/fan_in), norm weights
    1 + 0.1*N, biases 0.1*N (HF init leaves biases at 0 and norms at 1, which would hide bugs)."""
    conv = {m.weight for m in model.modules() if isinstance(m, Conv1D)}  # GPT-2: [in, out]
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=gen)
            if p.ndim == 1:
                p.copy_(1.0 + 0.1 * r if name.endswith("weight") else 0.1 * r)
            else:
                fan_in = p.shape[0] if p in conv else p.shape[1]  # Linear/Embedding: [out, in]
                p.copy_(r / fan_in ** 0.5)


def fix_config(path, dtype):
    """Also write the legacy keys real-world (transformers 4.x) checkpoints carry, so loaders
    reading either spelling work: torch_dtype next to dtype, rope_theta/rope_scaling next to
    rope_parameters."""
    cfg_path = os.path.join(path, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["torch_dtype"] = DTYPE_NAMES[dtype]
    rp = cfg.get("rope_parameters")
    if rp:
        cfg["rope_theta"] = rp["rope_theta"]
        scaling = {k: v for k, v in rp.items() if k != "rope_theta"}
        cfg["rope_scaling"] = scaling if scaling.get("rope_type", "default") != "default" else None
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def reference(cls, path, dtype, input_ids, prompt):
    model = cls.from_pretrained(path, dtype=dtype, attn_implementation="eager")
    assert all(p.dtype == dtype for p in model.parameters())
    model = model.float().eval()  # fp32 math on the dtype-rounded weights
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits.float()
    model.generation_config.eos_token_id = None
    out = run_greedy(model, prompt)
    greedy = out[0, N_PROMPT:]
    assert greedy.numel() == N_GEN
    # The cached path must agree with a plain forward over the whole sequence.
    with torch.no_grad():
        full = model(input_ids=out).logits[0, N_PROMPT - 1:-1].argmax(-1)
    assert torch.equal(full, greedy), "KV-cache greedy differs from full-forward argmax"
    return logits, greedy, margin(model, out)


def run_greedy(model, prompt):
    with torch.no_grad():
        out = model.generate(prompt[None], do_sample=False, max_new_tokens=N_GEN, min_new_tokens=N_GEN,
                             eos_token_id=None, pad_token_id=0, attention_mask=torch.ones_like(prompt[None]))
    return out


def margin(model, out):
    """Smallest top1 - top2 logit gap over the greedy steps (ties would make the test flaky)."""
    with torch.no_grad():
        top2 = model(input_ids=out).logits[0, N_PROMPT - 1:-1].topk(2, dim=-1).values
    return (top2[:, 0] - top2[:, 1]).min().item()


def pick_prompt(model, gen):
    """Random weights often make greedy decoding loop on one token, which would hardly test the
    KV cache; take the first random prompt whose continuation has >= 12 distinct tokens and no
    near-tie (gap >= 0.02) in fp32 nor with bf16/f16-rounded weights."""
    variants = [copy.deepcopy(model).to(dt).float().eval() for dt in DTYPES.values()]
    for m in variants:
        m.generation_config.eos_token_id = None
    best, best_score = None, None
    for _ in range(200):
        prompt = torch.randint(3, V, (N_PROMPT,), generator=gen)
        outs = [run_greedy(m, prompt) for m in variants]
        distinct = len(set(outs[0][0, N_PROMPT:].tolist()))
        gap = min(margin(m, o) for m, o in zip(variants, outs))
        score = (min(distinct, 12), min(gap, 0.02))
        if best_score is None or score > best_score:
            best, best_score = prompt, score
        if score == (12, 0.02):
            break
    return best


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    os.makedirs(out_dir, exist_ok=True)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.utils.logging.disable_progress_bar()
    meta = {"torch": torch.__version__, "transformers": transformers.__version__,
            "generator": "tests/gen_fixtures.py"}
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    for i, (arch, (cls, config)) in enumerate(ARCHS.items()):
        gen = torch.Generator().manual_seed(1000 + i)
        torch.manual_seed(1000 + i)
        model = cls(config).eval()
        randomize(model, gen)
        input_ids = torch.randint(0, V, (B, T), generator=gen)
        prompt = pick_prompt(model, gen)
        fp32_logits = None
        for suffix, dtype in DTYPES.items():
            path = os.path.join(out_dir, arch + suffix)
            shutil.rmtree(path, ignore_errors=True)
            copy.deepcopy(model).to(dtype).save_pretrained(path, safe_serialization=True)
            fix_config(path, dtype)
            logits, greedy, gap = reference(cls, path, dtype, input_ids, prompt)
            std = logits.std(-1).min().item()
            assert std > 0.1, f"{arch}{suffix}: degenerate logits (min std over vocab {std:.3f})"
            assert logits[0, 0].sub(logits[0, -1]).abs().max() > 0.1, "logits do not vary with position"
            note = ""
            if fp32_logits is None:
                fp32_logits = logits
            else:
                diff = (logits - fp32_logits).abs().max().item()
                assert diff > 1e-4, f"{arch}{suffix}: logits identical to fp32, rounding not reflected"
                note = f", max|diff vs fp32| {diff:.4f}"
            save_reference({"input_ids": input_ids.to(torch.int32), "logits": logits,
                            "greedy_prompt": prompt.to(torch.int32), "greedy_ids": greedy.to(torch.int32)},
                           os.path.join(path, "reference.safetensors"), meta)
            size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
            print(f"{arch + suffix:12s} {size / 1024:6.0f} KB  logits std(min over rows) {std:.3f}"
                  f"{note}, greedy: {len(set(greedy.tolist()))} distinct, min top-2 gap {gap:.3f}")


if __name__ == "__main__":
    main()
