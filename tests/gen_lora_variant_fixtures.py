#!/usr/bin/env python3
"""Reference numbers for tuna's LoRA variants (LoRA+, PiSSA).

    /opt/tuna-venv/bin/python tests/gen_lora_variant_fixtures.py tests/fixtures

Writes
    loraplus/loraplus.safetensors  LoRA+: AdamW steps over LLaMA-Factory's loraplus param groups
    pissa/<arch>_pissa.safetensors PiSSA init (peft init_lora_weights="pissa"): lora_A, lora_B and
                                   the residual base weight of every adapted layer
Deterministic (fixed seeds, CPU, one thread; safetensors written with sorted keys).
"""
import json
import math
import os
import struct
import sys

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

torch.set_num_threads(1)


def save_st(tensors, path, metadata):
    header, blobs, off = {"__metadata__": metadata}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous()
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
    assert sorted(back) == sorted(tensors)


def meta():
    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "generator": "tests/gen_lora_variant_fixtures.py"}


# ---------------------------------------------------------------------------------------------
# LoRA+: a transcription of LLaMA-Factory's _create_loraplus_optimizer (src/llamafactory/train/
# trainer_utils.py): "lora_B" in the name or ndim == 1 -> lora_b (decay) / lora_b_nodecay with
# lr * loraplus_lr_ratio; everything else -> lora_a with lr; all under one LambdaLR schedule.
PLUS_NAMES = [("base_model.model.layers.0.q_proj.lora_A.weight", (4, 16), True),
              ("base_model.model.layers.0.q_proj.lora_B.weight", (24, 4), True),
              ("base_model.model.layers.0.q_proj.lora_magnitude_vector", (24,), False),
              ("trainable_tokens", (2, 16), True)]


def gen_loraplus(out_dir):
    LR, RATIO, WD, STEPS = 2e-3, 16.0, 0.01, 5
    gen = torch.Generator().manual_seed(7100)
    params, tensors = {}, {}
    for name, shape, decay in PLUS_NAMES:
        p = torch.nn.Parameter(torch.randn(shape, generator=gen))
        params[name] = (p, decay)
        tensors["p0." + name] = p.detach().clone()
        tensors["G." + name] = 0.1 * torch.randn((STEPS,) + shape, generator=gen)
    groups = {"lora_a": [], "lora_b": [], "lora_b_nodecay": []}
    for name, (p, decay) in params.items():
        if "lora_B" in name or p.ndim == 1:
            groups["lora_b" if decay else "lora_b_nodecay"].append(p)
        else:
            groups["lora_a"].append(p)  # LLaMA-Factory: weight decay on every lora_a member
    # tuna's decay flag is 0 only for 1-D tensors, which all land in the B groups
    opt = torch.optim.AdamW([dict(params=groups["lora_a"], lr=LR, weight_decay=WD),
                             dict(params=groups["lora_b"], lr=LR * RATIO, weight_decay=WD),
                             dict(params=groups["lora_b_nodecay"], lr=LR * RATIO, weight_decay=0.0)],
                            lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WD, foreach=False)
    sched = transformers.get_cosine_schedule_with_warmup(opt, num_warmup_steps=2, num_training_steps=STEPS)
    lrs = []
    for s in range(STEPS):
        lrs.append(opt.param_groups[0]["lr"])
        for name, (p, _) in params.items():
            p.grad = tensors["G." + name][s].clone()
        opt.step()
        sched.step()
    for name, (p, _) in params.items():
        tensors["P." + name] = p.detach().clone()
    tensors["lrs"] = torch.tensor(lrs, dtype=torch.float32)
    m = meta()
    m.update(lr=repr(LR), loraplus_lr_ratio=repr(RATIO), weight_decay=repr(WD), steps=str(STEPS),
             names=json.dumps([n for n, _, _ in PLUS_NAMES]),
             decay=json.dumps([d for _, _, d in PLUS_NAMES]),
             schedule="get_cosine_schedule_with_warmup(num_warmup_steps=2, num_training_steps=5); "
                      "lrs[s] = base-group lr of step s",
             groups="LLaMA-Factory _create_loraplus_optimizer: lora_a (lr), lora_b (lr*ratio, wd), "
                    "lora_b_nodecay (lr*ratio, wd 0)")
    os.makedirs(os.path.join(out_dir, "loraplus"), exist_ok=True)
    save_st(tensors, os.path.join(out_dir, "loraplus", "loraplus.safetensors"), m)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    gen_loraplus(out)


if __name__ == "__main__":
    main()
