"""Decoding the real SmolLM2-135M-Instruct Q4_1 GGUF: tuna generate vs llama.cpp (through
llama-cpp-python), same file, same prompt, same number of new tokens (greedy), same threads.

    python tests/bench/bench_gguf_llamacpp.py [--tokens 128] [--threads 2] [--rounds 5] [--long]

Rounds alternate tuna, tuna with 8-bit activations (TUNA_WTYPE_Q8ACT=1: the math llama.cpp's
Q4_1 path does, opt-in in tuna), tuna with its KV cache in f16 (--cache-type f16: llama.cpp's
default cache type) and in Q8_0 (--cache-type q8_0) and llama.cpp; each reports decode tok/s ((N-1) tokens after the
one the prefill gives, over the time of their steps), prefill tok/s, and how many greedy ids
agree with llama.cpp's before the first that differs. The summary is the median of the
per-round ratios to llama.cpp (paired, so load on a shared machine hits all alike). --long:
the prompt is the first 6000 characters of datasets/tinystories_valid_slice.txt (1521 tokens),
96 new tokens: decoding where the attention over the KV cache weighs as much as the weights.
Skips with a message when llama_cpp is not importable or the model is not here."""
import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time

PROMPT = ("Write a short story about a lighthouse keeper who finds a message in a bottle. "
          "The story should have a beginning, a middle and an end, and it should be told in "
          "the first person, with vivid details about the sea, the weather and the keeper's "
          "daily routine, and a surprising twist at the end that changes everything.")


def find_model():
    for d in (os.environ.get("SMOLLM2_GGUF", ""), "../shared/models/smollm2-135m-instruct"):
        if d.endswith(".gguf") and os.path.isfile(d):
            return d
        g = sorted(glob.glob(os.path.join(d, "*Q4_1*.gguf"))) if d else []
        if g:
            return g[0]
    return None


def run_tuna(model, prompt, n, threads, env=None, flags=()):
    out = subprocess.run(["./tuna" if os.path.exists("./tuna") else "build/tuna", "generate",
                          model, "--prompt", prompt, "--max-new-tokens", str(n),
                          "--temperature", "0", "--ignore-eos", "--threads", str(threads),
                          "--json", "--quiet", "--no-echo", *flags],
                         capture_output=True, text=True, check=True,
                         env=dict(os.environ, **(env or {}))).stdout
    j = json.loads(out)
    return j["tokens_per_s"], len(j["prompt_ids"]) / j["prefill_s"], j["ids"]


def run_llama(llm, prompt, n):
    toks = llm.tokenize(prompt.encode(), add_bos=False, special=False)
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(toks)
    t1 = time.perf_counter()
    ids = []
    tok = llm.sample(top_k=1, temp=0.0)
    ids.append(tok)
    t2 = time.perf_counter()
    for _ in range(n - 1):
        llm.eval([tok])
        tok = llm.sample(top_k=1, temp=0.0)
        ids.append(tok)
    t3 = time.perf_counter()
    return (n - 1) / (t3 - t2), len(toks) / (t1 - t0), ids


def agree(a, b):
    """how many leading ids a and b share"""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--long", action="store_true",
                    help="a 1521-token prompt, 96 new tokens (unless --tokens says otherwise)")
    a = ap.parse_args()
    prompt = PROMPT
    if a.long:
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "datasets",
                               "tinystories_valid_slice.txt"), encoding="utf-8") as f:
            prompt = f.read()[:6000]
        if "--tokens" not in sys.argv:
            a.tokens = 96
    model = find_model()
    if not model:
        print("bench_gguf_llamacpp: no SmolLM2 Q4_1 GGUF (../shared or $SMOLLM2_GGUF); skipped")
        return 0
    try:
        import llama_cpp
    except ImportError:
        print("bench_gguf_llamacpp: llama_cpp is not installed in this venv; skipped (pip "
              "install llama-cpp-python, e.g. from /opt/wheels-cache)")
        return 0
    # a llama.cpp built with ggml's AMX path (-march=native on a Xeon with AMX) crashed on a
    # batch of several tokens: try one in a child first, so that a crash is a line, not the end
    probe = ("import llama_cpp, sys; m = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=64, "
             "verbose=False); m.eval(m.tokenize(b'Once upon a time there was', add_bos=False))")
    rc = subprocess.run([sys.executable, "-c", probe, model], capture_output=True).returncode
    if rc:
        print(f"bench_gguf_llamacpp: llama-cpp-python died evaluating a batch (exit {rc}); "
              "rebuild it without ggml's AMX path (`make venv-llama`); skipped")
        return 0
    llm = llama_cpp.Llama(model_path=model, n_ctx=2048 if a.long else 512, n_threads=a.threads,
                          n_threads_batch=a.threads, n_batch=512, verbose=False)
    n_prompt = len(llm.tokenize(prompt.encode(), add_bos=False, special=False))
    print(f"model {model}, a {n_prompt}-token prompt, {a.tokens} new tokens greedy, {a.threads} "
          f"threads, llama-cpp-python {llama_cpp.__version__}")
    q8 = {"TUNA_WTYPE_Q8ACT": "1"}
    f16, c8 = ("--cache-type", "f16"), ("--cache-type", "q8_0")
    dec, pre, dec8, dec16, decc8 = [], [], [], [], []
    for r in range(a.rounds):
        td, tp, tids = run_tuna(model, prompt, a.tokens, a.threads)
        qd, _, qids = run_tuna(model, prompt, a.tokens, a.threads, q8)
        hd, _, hids = run_tuna(model, prompt, a.tokens, a.threads, flags=f16)
        cd, _, cids = run_tuna(model, prompt, a.tokens, a.threads, flags=c8)
        ld, lp, lids = run_llama(llm, prompt, a.tokens)
        print(f"round {r}: decode tuna {td:7.1f} tok/s, q8 activations {qd:7.1f}, f16 cache "
              f"{hd:7.1f}, q8_0 cache {cd:7.1f}, llama.cpp {ld:7.1f}: ratios {td / ld:5.2f}, "
              f"{qd / ld:5.2f}, {hd / ld:5.2f}, {cd / ld:5.2f} | prefill tuna {tp:7.1f} tok/s, "
              f"llama.cpp {lp:7.1f}, ratio {tp / lp:5.2f} | ids as llama.cpp's until "
              f"{agree(tids, lids)}, q8 {agree(qids, lids)}, f16 cache {agree(hids, lids)}, "
              f"q8_0 cache {agree(cids, lids)} of {a.tokens}")
        dec.append(td / ld)
        dec8.append(qd / ld)
        dec16.append(hd / ld)
        decc8.append(cd / ld)
        pre.append(tp / lp)
    print(f"median ratio tuna / llama.cpp: decode {statistics.median(dec):.2f} (with 8-bit "
          f"activations {statistics.median(dec8):.2f}, with the f16 cache "
          f"{statistics.median(dec16):.2f}, the q8_0 cache {statistics.median(decc8):.2f}), "
          f"prefill {statistics.median(pre):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
