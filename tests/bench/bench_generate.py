#!/usr/bin/env python3
"""Generation speed, tuna vs PyTorch, side by side (CPU, 2 threads, greedy, KV cache, EOS ignored).

    /opt/tuna-venv/bin/python tests/bench/bench_generate.py [--tuna ./tuna] [--cache DIR] [--no-torch]
        [--llama2c PATH/TO/llama2.c]     (or LLAMA2C=... in the environment; make bench LLAMA2C=...)

Models: the real stories260K, and random-init fp32 models with the SmolLM-135M and stories15M
shapes (created once in --cache, default /tmp/tuna-bench-models, then reused).
tok/s counts the generated tokens after the first, as llama2.c's run.c does: tuna prints it on
its last stderr line (best of --repeat runs); for PyTorch it is (N - 1) / (t(N new tokens) -
t(1 new token)), each time the best of --repeat runs after a warm-up, so prompt processing and
the first token are excluded on both sides.
With --llama2c (a checkout of karpathy/llama2.c, or its run.c), that run.c is built as its
Makefile's `runomp` target does (-Ofast -fopenmp -march=native), the llama-shaped models are
exported to its .bin format (and their tokenizer to its tokenizer.bin), and it runs on the same
prompt for the same number of positions, alternating with tuna (--pairs times), 2 OpenMP
threads; its own "achieved tok/s" line is read (it also skips the first position; its timer has
millisecond resolution). Reported: the best of each side, and the median of the per-pair ratios
(the steadier figure where memory bandwidth drifts). Without it, tuna is compared with the fixed run.c figures from the issue.
Results go to build/bench/generate.json.
"""
import argparse
import json
import os
import re
import shutil
import statistics
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


def tuna_prompt_len(tuna, model_dir):
    p = subprocess.run([tuna, "tokenize", model_dir, "--add-special-tokens"], input=json.dumps({"text": PROMPT}),
                       capture_output=True, text=True)
    return len(json.loads(p.stdout)["ids"]) if p.returncode == 0 else 1


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


# --- llama2.c run.c, side by side (optional) -------------------------------------------------

def llama2c_build(path, out_dir):
    """Compile the user's llama2.c run.c; returns the binary or raises with a one-line reason."""
    src = os.path.join(path, "run.c") if os.path.isdir(path) else path
    if not os.path.isfile(src):
        raise RuntimeError(f"{src}: no such file (pass a llama2.c checkout or its run.c)")
    exe = os.path.join(out_dir, "llama2c_run")
    cmd = ["cc", "-Ofast", "-fopenmp", "-march=native", src, "-lm", "-o", exe]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {p.stderr.strip().splitlines()[-1:]}")
    return exe


def read_safetensors_f32(path):
    import numpy as np
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        if t["dtype"] != "F32":
            raise RuntimeError(f"{path}: {name} is {t['dtype']}; the llama2.c export takes F32 only")
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=np.float32).reshape(t["shape"])
    return out


def llama2c_export(model_dir, out_dir, name):
    """model_dir (HF llama, fp32, one safetensors file) -> run.c's legacy model .bin and a
    tokenizer.bin. q/k rows go back from HF's rotate_half order to llama2.c's interleaved pairs."""
    import struct
    import numpy as np
    mbin = os.path.join(out_dir, f"{name}.bin")
    tbin = os.path.join(out_dir, f"{name}.tokenizer.bin")
    src = os.path.join(model_dir, "model.safetensors")
    if os.path.exists(mbin) and os.path.getmtime(mbin) >= os.path.getmtime(src) and os.path.exists(tbin):
        return mbin, tbin
    c = json.load(open(os.path.join(model_dir, "config.json")))
    W = read_safetensors_f32(src)
    C, L, NH = c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"]
    KVH, FF, V = c.get("num_key_value_heads", NH), c["intermediate_size"], c["vocab_size"]
    S, HS = c.get("max_position_embeddings", 2048), C // NH
    tied = "lm_head.weight" not in W

    def unpermute(w, heads):
        d1, d2 = w.shape
        return w.reshape(heads, 2, d1 // heads // 2, d2).transpose(0, 2, 1, 3).reshape(d1, d2)

    with open(mbin + ".tmp", "wb") as f:
        f.write(struct.pack("7i", C, FF, L, NH, KVH, V if tied else -V, S))
        put = lambda a: f.write(np.ascontiguousarray(a, dtype=np.float32).tobytes())
        lay = lambda l, k: W[f"model.layers.{l}.{k}.weight"]
        put(W["model.embed_tokens.weight"])
        for key, fix in (("input_layernorm", None), ("self_attn.q_proj", NH), ("self_attn.k_proj", KVH),
                         ("self_attn.v_proj", None), ("self_attn.o_proj", None),
                         ("post_attention_layernorm", None), ("mlp.gate_proj", None),
                         ("mlp.down_proj", None), ("mlp.up_proj", None)):
            for l in range(L):
                put(unpermute(lay(l, key), fix) if fix else lay(l, key))
        put(W["model.norm.weight"])
        put(np.zeros(S * HS))  # the unused freq_cis_real/imag of the legacy format
        if not tied:
            put(W["lm_head.weight"])
    os.replace(mbin + ".tmp", mbin)

    # tokenizer.bin: max_token_length, then per id: score, length, bytes. Scores rank the
    # merges (earlier merge = higher score), which is what run.c's encoder greedily applies.
    tj = json.load(open(os.path.join(model_dir, "tokenizer.json")))
    vocab = tj["model"]["vocab"]
    pieces = [f"<unused{i}>".encode() for i in range(V)]  # run.c cannot read empty pieces
    for piece, i in vocab.items():
        if i < V:
            pieces[i] = piece.replace("\u2581", " ").encode("utf-8")
    for t in tj.get("added_tokens", []):
        if t["id"] < V:
            pieces[t["id"]] = t["content"].encode("utf-8")
    scores = [-1e9] * V
    for rank, m in enumerate(tj["model"].get("merges", [])):
        a, b = m.split(" ") if isinstance(m, str) else m
        j = vocab.get(a + b)
        if j is not None and j < V and scores[j] == -1e9:
            scores[j] = -float(rank)
    with open(tbin, "wb") as f:
        f.write(struct.pack("i", max(len(p) for p in pieces)))
        for p, sc in zip(pieces, scores):
            f.write(struct.pack("fi", sc, len(p)) + p)
    return mbin, tbin


def run_llama2c_once(exe, mbin, tbin, positions):
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS))
    cmd = [exe, mbin, "-z", tbin, "-t", "0", "-n", str(positions), "-i", PROMPT]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    m = re.search(r"achieved tok/s: ([0-9.]+)", p.stderr)
    if p.returncode != 0 or not m:
        return None, f"run.c failed (exit {p.returncode}): {p.stderr.strip()[-200:]}"
    return float(m.group(1)), f"{len(p.stdout.split())} words"


def fmt(x, spec, width):
    return f"{format(x, spec) if x is not None else '-':>{width}}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tuna", default=os.path.join(ROOT, "tuna"))
    ap.add_argument("--cache", default=os.environ.get("TUNA_BENCH_MODELS", "/tmp/tuna-bench-models"))
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch side")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs per side (best is kept)")
    ap.add_argument("--pairs", type=int, default=8,
                    help="tuna/run.c alternations with --llama2c (this machine's memory bandwidth "
                         "drifts by up to 2x within minutes: the median of the paired ratios is the "
                         "steadier figure)")
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "bench", "generate.json"))
    ap.add_argument("--llama2c", default=os.environ.get("LLAMA2C") or None,
                    help="a llama2.c checkout (or its run.c) to measure side by side")
    args = ap.parse_args()

    l2c_dir = os.path.join(os.path.dirname(args.out), "llama2c")
    l2c_exe = None
    if args.llama2c:
        os.makedirs(l2c_dir, exist_ok=True)
        try:
            l2c_exe = llama2c_build(args.llama2c, l2c_dir)
            print(f"llama2.c: built {l2c_exe} from {args.llama2c}")
        except RuntimeError as e:
            print(f"llama2.c: {e}; using the fixed figures")

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
        l2c_tps, l2c_msg, pairs = None, None, []
        if l2c_exe and name in LLAMA2C:
            # alternate: tuna, run.c, tuna, run.c, ...; best of each
            mbin, tbin = llama2c_export(model_dir, l2c_dir, name)
            prompt_ids = tuna_prompt_len(args.tuna, model_dir)
            tuna_tps = None
            for _ in range(max(args.repeat, args.pairs)):
                t, tuna_msg = run_tuna_once(args.tuna, model_dir, n)
                if t is not None and (tuna_tps is None or t > tuna_tps):
                    tuna_tps, best_msg = t, tuna_msg
                r, l2c_msg = run_llama2c_once(l2c_exe, mbin, tbin, prompt_ids + n)
                if r is not None and (l2c_tps is None or r > l2c_tps):
                    l2c_tps = r
                if t is not None and r is not None:
                    pairs.append(t / r)
            tuna_msg = best_msg if tuna_tps is not None else tuna_msg
            print(f"   llama2.c run.c: {fmt(l2c_tps, '.1f', 0)} tok/s ({prompt_ids + n} positions; {l2c_msg})")
            if pairs:
                print(f"   paired tuna/run.c over {len(pairs)} alternations: median {statistics.median(pairs):.3f}, "
                      f"mean {statistics.mean(pairs):.3f}, range {min(pairs):.2f}-{max(pairs):.2f}, "
                      f"tuna faster in {sum(x > 1 for x in pairs)}")
        else:
            tuna_tps, tuna_msg = run_tuna(args.tuna, model_dir, n, args.repeat)
        print(f"   tuna:  {tuna_msg}", flush=True)
        torch_tps, torch_info = run_torch(model_dir, n, args.repeat) if have_torch else (None, None)
        if torch_tps is not None:
            print(f"   torch: {torch_tps:.1f} tok/s  {torch_info}", flush=True)
        ref = l2c_tps if l2c_tps is not None else LLAMA2C.get(name)
        results.append({"model": name, "model_dir": model_dir, "new_tokens": n, "threads": THREADS,
                        "tuna_tok_s": tuna_tps, "torch_tok_s": torch_tps, "torch": torch_info,
                        "llama2c_tok_s": ref, "llama2c_side_by_side": l2c_tps is not None,
                        "tuna_vs_torch": tuna_tps / torch_tps if tuna_tps and torch_tps else None,
                        "tuna_vs_llama2c": tuna_tps / ref if tuna_tps and ref else None,
                        "tuna_vs_llama2c_pairs": pairs,
                        "tuna_vs_llama2c_median": statistics.median(pairs) if pairs else None})

    print(f"\n{'model':20s} {'tuna tok/s':>11s} {'torch tok/s':>12s} {'tuna/torch':>11s} "
          f"{'llama2.c tok/s':>15s} {'tuna/llama2.c':>14s} {'paired median':>14s}")
    for r in results:
        mark = "" if r["llama2c_side_by_side"] or r["llama2c_tok_s"] is None else "*"
        print(f"{r['model']:20s} {fmt(r['tuna_tok_s'], '.1f', 11)} {fmt(r['torch_tok_s'], '.1f', 12)} "
              f"{fmt(r['tuna_vs_torch'], '.2f', 11)} {fmt(r['llama2c_tok_s'], '.0f', 14)}{mark or ' '}"
              f"{fmt(r['tuna_vs_llama2c'], '.2f', 14)} {fmt(r['tuna_vs_llama2c_median'], '.2f', 14)}")
    if any(r["llama2c_tok_s"] is not None and not r["llama2c_side_by_side"] for r in results):
        print("* the issue's fixed run.c figure, not measured in this run (make bench LLAMA2C=/path/to/llama2.c)")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"prompt": PROMPT, "results": results}, f, indent=2)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
