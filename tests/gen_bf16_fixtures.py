#!/usr/bin/env python3
"""transformers' forward in bfloat16, for tests/test_bf16_forward.c.

    /opt/tuna-venv/bin/python tests/gen_bf16_fixtures.py tests/fixtures

For every ARCH_bf16/ checkpoint that tests/gen_fixtures.py wrote, loads it with
dtype=torch.bfloat16 (every weight, activation and product in bf16, as `torch_dtype=bfloat16`
runs) and writes ARCH_bf16/reference_bf16.safetensors:
    logits_bf16   F32 [2, 12, V]   the logits of reference.safetensors' input_ids, in bf16 math
Its reference.safetensors already holds the same inputs' logits in fp32 math on the same bf16
weights: the test measures how far each bf16 forward (tuna's, transformers') is from it."""
import os
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

ARCHS = ["llama", "llama_tied", "llama3", "mistral", "qwen2", "qwen3", "gpt2"]


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.utils.logging.disable_progress_bar()
    for arch in ARCHS:
        path = os.path.join(out_dir, arch + "_bf16")
        ref = load_file(os.path.join(path, "reference.safetensors"))
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16,
                                                     attn_implementation="eager").eval()
        with torch.no_grad():
            logits = model(input_ids=ref["input_ids"].long()).logits.float()
        diff = (logits - ref["logits"]).abs().max().item()
        save_file({"logits_bf16": logits.contiguous()},
                  os.path.join(path, "reference_bf16.safetensors"),
                  {"torch": torch.__version__, "transformers": transformers.__version__,
                   "generator": "tests/gen_bf16_fixtures.py"})
        print(f"{arch}_bf16: transformers bf16 vs fp32 math, max |dlogit| {diff:.4f}")


if __name__ == "__main__":
    main()
