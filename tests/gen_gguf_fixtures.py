#!/usr/bin/env python3
"""Writes the GGUF fixtures of tests/test_gguf.c into tests/fixtures/gguf/ (needs the venv).

dequant.gguf: one tensor per ggml type tuna reads (random blocks with valid random fp16
scales, written raw by gguf.GGUFWriter) and, next to each, "<name>.expected": float32 from
gguf-py's own gguf.quants.dequantize. tuna's dequantization must equal it bit for bit.

smollm2_ref.safetensors (only where ../shared/models/smollm2-135m-instruct exists): what
transformers' GGUF loader (from_pretrained(folder, gguf_file=...), dequantized to fp32, q/k
un-permuted) makes of SmolLM2-135M-Instruct.Q4_1.gguf: the first COLS columns of sampled rows
("<name>.rows") of some weights, one
prompt's ids (transformers' tokenizer) and sampled last-position logits.

    python tests/gen_gguf_fixtures.py tests/fixtures
"""
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

OUT = os.path.join(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures", "gguf")
HERE = os.path.dirname(os.path.abspath(__file__))
SMOL = os.path.join(HERE, "..", "..", "shared", "models", "smollm2-135m-instruct")
SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# byte offsets of the fp16 scale fields inside one block
F16_FIELDS = {T.Q4_0: [0], T.Q4_1: [0, 2], T.Q8_0: [0], T.Q4_K: [0, 2], T.Q5_K: [0, 2],
              T.Q6_K: [208]}


def rand_f16(rng, n):
    """finite fp16 values of moderate size, both signs, incl. some subnormals and zeros"""
    v = (rng.standard_normal(n) * 0.05).astype(np.float16)
    v[::17] = np.float16(0.0)
    v[5::23] = np.float16(3e-6)  # subnormal
    return v


def dequant_fixture():
    rng = np.random.default_rng(11)
    w = gguf.GGUFWriter(os.path.join(OUT, "dequant.gguf"), "tuna-test", use_temp_file=False)
    w.add_uint32("tuna.test.version", 1)
    rows = 3
    for t in [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q4_K, T.Q5_K, T.Q6_K]:
        blk, tsz = GGML_QUANT_SIZES[t]
        cols = 512 if blk > 1 else 96
        name = t.name.lower()
        if t == T.F32:
            raw = rng.standard_normal((rows, cols)).astype(np.float32).view(np.uint8)
        elif t == T.F16:
            raw = rand_f16(rng, rows * cols).reshape(rows, cols).view(np.uint8)
        elif t == T.BF16:
            f = rng.standard_normal(rows * cols).astype(np.float32)
            f[::13] = 0.0
            raw = (f.view(np.uint32) >> 16).astype(np.uint16).reshape(rows, cols).view(np.uint8)
        else:
            nb = rows * cols // blk
            raw = rng.integers(0, 256, size=(nb, tsz), dtype=np.uint8)
            for off in F16_FIELDS[t]:
                raw[:, off:off + 2] = rand_f16(rng, nb).view(np.uint8).reshape(nb, 2)
            raw = raw.reshape(rows, cols // blk * tsz)
        raw = np.ascontiguousarray(raw)
        w.add_tensor(name, raw, raw_dtype=t)
        exp = gguf.quants.dequantize(raw, t).astype(np.float32).reshape(rows, cols)
        w.add_tensor(name + ".expected", exp)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# rows sampled from each compared weight (the test reads the same list from the file)
def sample_rows(n):
    return sorted(set([0, 1, 31, 32, 63, 64, n // 2, n - 1]))


COLS = 128  # leading columns kept of each sampled row


PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def smollm2_fixture():
    if not os.path.exists(os.path.join(SMOL, SMOL_FILE)):
        print("gen_gguf_fixtures: %s absent, SmolLM2 fixture skipped" % SMOL)
        return
    import torch
    from safetensors.numpy import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(SMOL, gguf_file=SMOL_FILE, torch_dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(SMOL, gguf_file=SMOL_FILE)
    sd = model.state_dict()
    out = {}
    names = ["model.embed_tokens.weight"]
    for layer in (0, 17, 29):
        for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
            names.append("model.layers.%d.self_attn.%s.weight" % (layer, p))
        names.append("model.layers.%d.mlp.down_proj.weight" % layer)
        names.append("model.layers.%d.input_layernorm.weight" % layer)
    for n in names:
        t = sd[n].float().numpy()
        if t.ndim == 1:
            out[n] = np.ascontiguousarray(t)
            continue
        rows = sample_rows(t.shape[0])
        out[n + ".rows"] = np.array(rows, dtype=np.float32)
        out[n] = np.ascontiguousarray(t[rows][:, :COLS])
    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1].float().numpy()
    rng = np.random.default_rng(5)
    top = np.argsort(-logits)[:64]
    pick = np.unique(np.concatenate([top, rng.choice(len(logits), 1984, replace=False)]))
    out["ids"] = np.array(ids, dtype=np.float32)
    out["logits.index"] = pick.astype(np.float32)
    out["logits"] = logits[pick].astype(np.float32)
    path = os.path.join(OUT, "smollm2_ref.safetensors")
    save_file(out, path, metadata={"format": "pt"})
    os.chmod(path, 0o644)
    print("gen_gguf_fixtures: SmolLM2 %d ids, argmax %d" % (len(ids), int(np.argmax(logits))))


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    dequant_fixture()
    smollm2_fixture()
