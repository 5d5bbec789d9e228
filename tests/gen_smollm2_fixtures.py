#!/usr/bin/env python3
"""Reference outputs of the real chat model SmolLM2-135M-Instruct (GGUF Q4_1, ../shared) made
with transformers' own GGUF loader, which dequantizes every tensor to float32.

    /opt/tuna-venv/bin/python tests/gen_smollm2_fixtures.py [SHARED_DIR] [OUT_DIR]

Writes OUT_DIR (tests/fixtures/smollm2 by default):
  reference.json     versions, the logits prompts' ids, and for 8 chat prompts the ChatML prompt
                     ids (apply_chat_template, add_generation_prompt) and transformers' greedy
                     reply (64 new tokens at most, stopping at EOS as generate does), ids and text
  logits.safetensors F32 "last_K" [V]: the last position's logits of logits prompt K, in full;
                     F32 "sub_K" [T, V/32]: every position's logits at ids 0, 32, 64, ...
Deterministic (CPU, fp32, eager attention, greedy)."""
import json
import os
import sys

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", "shared")
OUT = sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, "fixtures", "smollm2")
FOLDER = os.path.join(SHARED, "models", "smollm2-135m-instruct")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
STRIDE = 32
N_NEW = 64

LOGIT_PROMPTS = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
]

CHAT_PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Who are you?"}],
    [{"role": "user", "content": "Give me three tips for staying healthy."}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "system", "content": "You are a terse assistant. Answer in one sentence."},
     {"role": "user", "content": "Why is the sky blue?"}],
    [{"role": "user", "content": "What is 12 + 30?"}],
    [{"role": "user", "content": "Translate 'good morning' into Spanish."},
     {"role": "assistant", "content": "Buenos días."},
     {"role": "user", "content": "And into French?"}],
    [{"role": "user", "content": "Write a Python function that reverses a string."}],
]


def main():
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(FOLDER, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(FOLDER, gguf_file=GGUF, dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    os.makedirs(OUT, exist_ok=True)
    tensors, ref = {}, {
        "source": f"{GGUF} via transformers {transformers.__version__} (gguf loader, fp32), "
                  f"torch {torch.__version__}",
        "logit_stride": STRIDE,
        "logit_prompts": [],
        "chats": [],
    }
    with torch.no_grad():
        for k, text in enumerate(LOGIT_PROMPTS):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            logits = model(torch.tensor([ids])).logits[0].float()
            tensors[f"last_{k}"] = logits[-1].contiguous()
            tensors[f"sub_{k}"] = logits[:, ::STRIDE].contiguous()
            ref["logit_prompts"].append({"text": text, "ids": ids})
        for msgs in CHAT_PROMPTS:
            ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
            if hasattr(ids, "keys"):
                ids = ids["input_ids"]
            out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=N_NEW,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
            new = out[0, len(ids):].tolist()
            ref["chats"].append({"messages": msgs, "prompt_ids": ids, "reply_ids": new,
                                 "reply": tok.decode(new, skip_special_tokens=True)})
            print(repr(ref["chats"][-1]["reply"][:80]), file=sys.stderr)
    save_file(tensors, os.path.join(OUT, "logits.safetensors"))
    with open(os.path.join(OUT, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(ref, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
