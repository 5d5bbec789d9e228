#!/usr/bin/env python3
"""Writes a randomly initialised decoder of a real model's shape, for the memory benchmarks
(tests/bench/bench_memory.sh): no download, no checkpoint beyond what tuna itself would read.

  gen_random_model.py --shape qwen2.5-1.5b --format st-bf16  --tokenizer DIR --out DIR
  gen_random_model.py --shape llama3-8b    --format gguf-q4_0 --tokenizer DIR --out DIR

st-bf16: config.json + model.safetensors (bf16, as HF checkpoints ship) + the tokenizer files.
gguf-q4_0: one model.gguf whose linear weights (and LM head) are Q4_0, written by the gguf
package's own quantizer, token embedding Q8_0 and norms F32, with the tokenizer in the metadata
(llama.cpp's layout; the q/k rows are random, so their permutation needs no care).
Weights are N(0, 0.02), written a tensor at a time so memory stays at one tensor."""
import argparse
import json
import os
import shutil
import struct

import numpy as np

SHAPES = {
    # hidden, layers, heads, kv heads, intermediate, vocab, tied, arch, rope theta
    "qwen2.5-1.5b": dict(H=1536, L=28, NH=12, KVH=2, I=8960, V=151936, tied=True, arch="qwen2",
                         theta=1e6),
    # the same files at a size that loads in a second (a check of the writer itself)
    "llama3-tiny": dict(H=128, L=2, NH=4, KVH=2, I=256, V=128256, tied=False, arch="llama",
                        theta=5e5),
    "llama3-8b": dict(H=4096, L=32, NH=32, KVH=8, I=14336, V=128256, tied=False, arch="llama",
                      theta=5e5),
}


def tensors(s):
    """(HF name, shape, is_linear) in checkpoint order."""
    H, I, HS = s["H"], s["I"], s["H"] // s["NH"]
    kv = s["KVH"] * HS
    yield "model.embed_tokens.weight", (s["V"], H), False
    for l in range(s["L"]):
        p = f"model.layers.{l}."
        yield p + "input_layernorm.weight", (H,), False
        yield p + "self_attn.q_proj.weight", (H, H), True
        yield p + "self_attn.k_proj.weight", (kv, H), True
        yield p + "self_attn.v_proj.weight", (kv, H), True
        if s["arch"] == "qwen2":
            yield p + "self_attn.q_proj.bias", (H,), False
            yield p + "self_attn.k_proj.bias", (kv,), False
            yield p + "self_attn.v_proj.bias", (kv,), False
        yield p + "self_attn.o_proj.weight", (H, H), True
        yield p + "post_attention_layernorm.weight", (H,), False
        yield p + "mlp.gate_proj.weight", (I, H), True
        yield p + "mlp.up_proj.weight", (I, H), True
        yield p + "mlp.down_proj.weight", (H, I), True
    yield "model.norm.weight", (H,), False
    if not s["tied"]:
        yield "lm_head.weight", (s["V"], H), True


def values(rng, name, shape):
    if name.endswith("norm.weight"):
        return np.ones(shape, np.float32)
    return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)


def to_bf16(a):
    u = a.view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def config(s):
    c = {
        "architectures": ["Qwen2ForCausalLM" if s["arch"] == "qwen2" else "LlamaForCausalLM"],
        "model_type": s["arch"],
        "hidden_size": s["H"],
        "num_hidden_layers": s["L"],
        "num_attention_heads": s["NH"],
        "num_key_value_heads": s["KVH"],
        "intermediate_size": s["I"],
        "vocab_size": s["V"],
        "tie_word_embeddings": s["tied"],
        "rms_norm_eps": 1e-6 if s["arch"] == "qwen2" else 1e-5,
        "rope_theta": s["theta"],
        "max_position_embeddings": 4096,
        "hidden_act": "silu",
        "torch_dtype": "bfloat16",
        "bos_token_id": None if s["arch"] == "qwen2" else 128000,
        "eos_token_id": 151643 if s["arch"] == "qwen2" else 128001,
    }
    return c


def write_safetensors(s, out, rng):
    names = list(tensors(s))
    header, off = {}, 0
    for name, shape, _ in names:
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(os.path.join(out, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for name, shape, _ in names:
            f.write(to_bf16(values(rng, name, shape)).tobytes())
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config(s), f, indent=1)


GGUF_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(name):
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    if name == "lm_head.weight":
        return "output.weight"
    parts = name.split(".")
    return f"blk.{parts[2]}." + GGUF_NAMES[".".join(parts[3:])]


def write_gguf(s, out, rng, tok_dir):
    import gguf
    from gguf import quants

    assert s["arch"] == "llama", "gguf-q4_0 writes the llama architecture"
    w = gguf.GGUFWriter(os.path.join(out, "model.gguf"), "llama")
    w.add_name("random " + s.get("name", "llama"))
    w.add_context_length(4096)
    w.add_embedding_length(s["H"])
    w.add_block_count(s["L"])
    w.add_feed_forward_length(s["I"])
    w.add_head_count(s["NH"])
    w.add_head_count_kv(s["KVH"])
    w.add_rope_freq_base(s["theta"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(s["H"] // s["NH"])
    w.add_vocab_size(s["V"])
    # the tokenizer (llama3's byte-level BPE) in llama.cpp's metadata
    tj = json.load(open(os.path.join(tok_dir, "tokenizer.json")))
    vocab = dict(tj["model"]["vocab"])
    special = {}
    for t in tj.get("added_tokens", []):
        vocab[t["content"]] = t["id"]
        special[t["id"]] = t.get("special", False)
    toks = ["[PAD%d]" % i for i in range(s["V"])]
    types = [gguf.TokenType.UNUSED] * s["V"]
    for t, i in vocab.items():
        if i < s["V"]:
            toks[i] = t
            types[i] = gguf.TokenType.CONTROL if special.get(i) else gguf.TokenType.NORMAL
    merges = tj["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(128000)
    w.add_eos_token_id(128001)
    # tensors: add_tensor keeps the arrays until write, so write them one by one instead
    names = list(tensors(s))
    def qtype(name, linear):
        if linear:
            return gguf.GGMLQuantizationType.Q4_0
        if name.endswith("embed_tokens.weight"):
            return gguf.GGMLQuantizationType.Q8_0
        return gguf.GGMLQuantizationType.F32

    for name, shape, linear in names:
        qt = qtype(name, linear)
        if qt == gguf.GGMLQuantizationType.F32:
            w.add_tensor_info(gguf_name(name), shape, np.dtype(np.float32),
                              int(np.prod(shape)) * 4)
        else:
            bshape = quants.quant_shape_to_byte_shape(shape, qt)
            w.add_tensor_info(gguf_name(name), bshape, np.dtype(np.uint8),
                              int(np.prod(bshape)), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, shape, linear in names:
        a = values(rng, name, shape)
        qt = qtype(name, linear)
        w.write_tensor_data(a if qt == gguf.GGMLQuantizationType.F32 else quants.quantize(a, qt))
    w.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--format", choices=["st-bf16", "gguf-q4_0"], required=True)
    ap.add_argument("--tokenizer", required=True, help="folder with tokenizer.json")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    s = dict(SHAPES[a.shape], name=a.shape)
    os.makedirs(a.out, exist_ok=True)
    rng = np.random.default_rng(1234)
    if a.format == "st-bf16":
        write_safetensors(s, a.out, rng)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            if os.path.exists(os.path.join(a.tokenizer, f)):
                shutil.copy(os.path.join(a.tokenizer, f), a.out)
    else:
        write_gguf(s, a.out, rng, a.tokenizer)
    print(a.out)


if __name__ == "__main__":
    main()
