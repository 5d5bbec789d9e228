#!/usr/bin/env python3
"""Generation speed, tuna vs PyTorch, side by side (CPU, 2 threads, greedy, KV cache, EOS ignored).

    /opt/tuna-venv/bin/python tests/bench/bench_generate.py [--tuna ./tuna] [--cache DIR] [--no-torch]

Models: the real stories260K, and random-init fp32 models with the SmolLM-135M and stories15M
shapes (created once in --cache, default /tmp/tuna-bench-models, then reused).
tok/s counts the generated tokens after the first, as llama2.c's run.c does: tuna prints it on
its last stderr line (best of --repeat runs); for PyTorch it is (N - 1) / (t(N new tokens) -
t(1 new token)), each time the best of --repeat runs after a warm-up, so prompt processing and
the first token are excluded on both sides.
Results go to build/bench/generate.json.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SHARED = os.path.join(ROOT, "..", "shared") if os.path.isdir(os.path.join(ROOT, "..", "shared")) else "/work/shared"
PROMPT = "Once upon a time"
THREADS = 2

# llama2.c run.c on this machine (from the issue): tok/s
LLAMA2C = {"stories260K": 11000.0, "stories15M-shape": 730.0}

SMOLLM_135M = dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                   intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True, rope_theta=10000.0,
                   max_position_embeddings=2048, rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=0)
STORIES15M = dict(hidden_size=288, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=6,
                  intermediate_size=768, vocab_size=32000, tie_word_embeddings=True, rope_theta=10000.0,
                  max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)


def stories260k_dir():
    local = os.path.join(ROOT, "models", "stories260K")
    if os.path.exists(os.path.join(local, "model.safetensors")):
        return local
    return os.path.join(SHARED, "models", "stories260K")


def random_model(cache, name, shape, tokenizer):
    """Create (once) a random-init fp32 LlamaForCausalLM with a real tokenizer copied in."""
    path = os.path.join(cache, name)
    if os.path.exists(os.path.join(path, "model.safetensors")):
        return path
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    print(f"creating {path} ...", flush=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**shape, dtype="float32"))
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(SHARED, "tokenizers", tokenizer, f), tmp)
    os.rename(tmp, path)  # only complete models land in the cache
    return path


def run_tuna(tuna, model_dir, n, repeat):
    """Best of `repeat` runs, parsed from tuna's final stderr line."""
    if not os.access(tuna, os.X_OK):
        return None, f"{tuna} not found (run `make` first)"
    best = (None, None)
    for _ in range(repeat):
        tps, msg = run_tuna_once(tuna, model_dir, n)
        if tps is None:
            return tps, msg
        if best[0] is None or tps > best[0]:
            best = (tps, msg)
    return best


def run_tuna_once(tuna, model_dir, n):
    cmd = [tuna, "generate", model_dir, "--prompt", PROMPT, "--max-new-tokens", str(n),
           "--temperature", "0", "--ignore-eos", "--threads", str(THREADS)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    lines = [l for l in p.stderr.splitlines() if l.startswith("generate:")]
    m = re.search(r"([0-9.]+) tok/s", lines[-1]) if lines else None
    if p.returncode != 0 or not m:
        tail = p.stderr.strip().splitlines()[-3:]
        return None, f"tuna failed (exit {p.returncode}): {' | '.join(tail)}"
    return float(m.group(1)), lines[-1]


def run_torch(model_dir, n, repeat):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(THREADS)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = tok(PROMPT, return_tensors="pt").input_ids

    def gen(k):
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=k, min_new_tokens=k, eos_token_id=None,
                                 pad_token_id=0, use_cache=True)
        dt = time.perf_counter() - t0
        assert out.shape[1] == ids.shape[1] + k
        return dt

    gen(n)  # warm-up
    t1 = min(gen(1) for _ in range(repeat))
    tn = min(gen(n) for _ in range(repeat))
    return (n - 1) / (tn - t1), {"prompt_tokens": ids.shape[1], "t_1": t1, "t_n": tn}


def fmt(x, spec, width):
    return f"{format(x, spec) if x is not None else '-':>{width}}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tuna", default=os.path.join(ROOT, "tuna"))
    ap.add_argument("--cache", default=os.environ.get("TUNA_BENCH_MODELS", "/tmp/tuna-bench-models"))
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch side")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs per side (best is kept)")
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "bench", "generate.json"))
    args = ap.parse_args()

    have_torch = not args.no_torch
    if have_torch:
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError:
            print("bench_generate: torch/transformers not importable, skipping the PyTorch side")
            have_torch = False
    os.makedirs(args.cache, exist_ok=True)

    models = [("stories260K", lambda: stories260k_dir(), 256)]
    if have_torch or os.path.isdir(os.path.join(args.cache, "smollm-135M-shape")):
        models.append(("smollm-135M-shape",
                       lambda: random_model(args.cache, "smollm-135M-shape", SMOLLM_135M, "gpt2"), 128))
    if have_torch or os.path.isdir(os.path.join(args.cache, "stories15M-shape")):
        models.append(("stories15M-shape",
                       lambda: random_model(args.cache, "stories15M-shape", STORIES15M, "llama2"), 128))

    results = []
    for name, get_dir, n in models:
        model_dir = get_dir()
        print(f"== {name} ({model_dir}), {n} new tokens", flush=True)
        tuna_tps, tuna_msg = run_tuna(args.tuna, model_dir, n, args.repeat)
        print(f"   tuna:  {tuna_msg}", flush=True)
        torch_tps, torch_info = run_torch(model_dir, n, args.repeat) if have_torch else (None, None)
        if torch_tps is not None:
            print(f"   torch: {torch_tps:.1f} tok/s  {torch_info}", flush=True)
        ref = LLAMA2C.get(name)
        results.append({"model": name, "model_dir": model_dir, "new_tokens": n, "threads": THREADS,
                        "tuna_tok_s": tuna_tps, "torch_tok_s": torch_tps, "torch": torch_info,
                        "llama2c_tok_s": ref,
                        "tuna_vs_torch": tuna_tps / torch_tps if tuna_tps and torch_tps else None,
                        "tuna_vs_llama2c": tuna_tps / ref if tuna_tps and ref else None})

    print(f"\n{'model':20s} {'tuna tok/s':>11s} {'torch tok/s':>12s} {'tuna/torch':>11s} "
          f"{'llama2.c tok/s':>15s} {'tuna/llama2.c':>14s}")
    for r in results:
        print(f"{r['model']:20s} {fmt(r['tuna_tok_s'], '.1f', 11)} {fmt(r['torch_tok_s'], '.1f', 12)} "
              f"{fmt(r['tuna_vs_torch'], '.2f', 11)} {fmt(r['llama2c_tok_s'], '.0f', 15)} "
              f"{fmt(r['tuna_vs_llama2c'], '.2f', 14)}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"prompt": PROMPT, "results": results}, f, indent=2)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
