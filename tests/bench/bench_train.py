#!/usr/bin/env python3
"""Training throughput, tuna vs PyTorch (and the llm.c / llama.cpp numbers from issue 3), side by side.

    /opt/tuna-venv/bin/python tests/bench/bench_train.py [--tuna ./tuna] [--cache DIR] [--no-torch]
                                                         [--only a,b,c] [--out FILE]

fp32, 2 threads on both sides, AdamW, global-norm clipping 1.0, no dropout:
  (a) LoRA r=8, alpha 16 on q,k,v,o,gate,up,down of a random-init SmolLM-135M-shaped llama,
      batch 1 x 512 tokens — tuna vs PyTorch + peft, tokens/s and peak RSS;
  (b) full fine-tune of a random-init GPT-2 124M (GPT2Config defaults), batch 4 x 64 tokens —
      tuna vs llm.c's CPU trainer (41 tok/s on this machine, from the issue; target >= 5x) and PyTorch;
  (c) full fine-tune of the stories15M llama shape, batch 8 x 256 tokens — tuna vs llama.cpp's
      finetune (585 tok/s here, from the issue; target >= 1x) and PyTorch.
      Batch 8: the default n_batch of llama.cpp's (LoRA) finetune example; it is also tuna's default.

tuna side: `tuna train --stage pt --dataset tinystories_valid_slice --packing --cutoff-len T`
(continued pre-training on plain text packed into T-token rows, so every row is full), run as a
child process; tokens/s = tokens of steps 3..N / wall time of steps 3..N, from the step lines of
RUN/metrics.jsonl (the first two steps are warm-up). PyTorch side: the same shapes with random
token batches, loss.backward() + clip_grad_norm_ + AdamW.step(), 2 warm-up steps then N timed,
also in a child process (torch.set_num_threads(2)). Peak RSS is ru_maxrss of each child (os.wait4),
so both sides are measured the same way (the PyTorch one includes the interpreter and libtorch).
Random-init models are created once in --cache (default /tmp/tuna-bench-models).
Timings on this shared 2-core machine are noisy: before each measurement the script waits (up to
--wait-quiet s) for other processes to go idle, and it reports the share of the CPUs other processes
used during each measurement (machine busy time minus the child's own CPU time).
Results go to build/bench/train.json.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SHARED = os.path.join(ROOT, "..", "shared") if os.path.isdir(os.path.join(ROOT, "..", "shared")) else "/work/shared"
THREADS = 2
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Peers from issue 3, measured on this machine with 2 threads (tokens/s).
LLMC_GPT2_TOK_S = 41.0
LLAMACPP_STORIES15M_TOK_S = 585.0

SMOLLM_135M = dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                   intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True, rope_theta=10000.0,
                   max_position_embeddings=2048, rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=0)
STORIES15M = dict(hidden_size=288, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=6,
                  intermediate_size=768, vocab_size=32000, tie_word_embeddings=True, rope_theta=10000.0,
                  max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)

# name, model dir in the cache, architecture, shape, tokenizer, method, B, T, tuna steps (incl. 2 warm-up),
# torch timed steps, peer
CASES = {
    "a": dict(name="(a) SmolLM-135M-shape LoRA r8", model="train-smollm-135M-shape", arch="llama",
              shape=SMOLLM_135M, tokenizer="llama2", method="lora", B=1, T=512, tuna_steps=7, torch_steps=5,
              peer=None),
    "b": dict(name="(b) GPT-2 124M full", model="train-gpt2-124M", arch="gpt2", shape={}, tokenizer="gpt2",
              method="full", B=4, T=64, tuna_steps=7, torch_steps=5, peer=("llm.c", LLMC_GPT2_TOK_S, 5.0)),
    "c": dict(name="(c) stories15M-shape full", model="stories15M-shape", arch="llama", shape=STORIES15M,
              tokenizer="llama2", method="full", B=8, T=256, tuna_steps=8, torch_steps=6,
              peer=("llama.cpp", LLAMACPP_STORIES15M_TOK_S, 1.0)),
}


# --------------------------------------------------------------------------------------------
# models

def make_model(cache, case):
    """Create (once) the random-init fp32 model of a case with a real tokenizer copied in."""
    path = os.path.join(cache, case["model"])
    if os.path.exists(os.path.join(path, "model.safetensors")):
        return path
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    # (a) reuses the weights of bench_generate's SmolLM-shape model if it is there (hard link, no copy);
    # only the tokenizer differs: llama2's 32000 ids all fit the 49152-row embedding, gpt2's 50257 do not.
    gen_smol = os.path.join(cache, "smollm-135M-shape")
    if case["model"] == "train-smollm-135M-shape" and os.path.exists(os.path.join(gen_smol, "model.safetensors")):
        for f in ("config.json", "generation_config.json"):
            if os.path.exists(os.path.join(gen_smol, f)):
                shutil.copy(os.path.join(gen_smol, f), tmp)
        try:
            os.link(os.path.join(gen_smol, "model.safetensors"), os.path.join(tmp, "model.safetensors"))
        except OSError:
            shutil.copy(os.path.join(gen_smol, "model.safetensors"), tmp)
    else:
        import torch
        print(f"creating {path} ...", flush=True)
        torch.manual_seed(0)
        if case["arch"] == "gpt2":
            from transformers import GPT2Config, GPT2LMHeadModel
            model = GPT2LMHeadModel(GPT2Config())
        else:
            from transformers import LlamaConfig, LlamaForCausalLM
            model = LlamaForCausalLM(LlamaConfig(**case["shape"], dtype="float32"))
        model.save_pretrained(tmp, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(SHARED, "tokenizers", case["tokenizer"], f), tmp)
    os.rename(tmp, path)  # only complete models land in the cache
    return path


# --------------------------------------------------------------------------------------------
# child processes with their own rusage

def cpu_busy_s():
    """Seconds of CPU time used by everything on the machine so far (from /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_wait, threshold=0.25):
    """Wait (up to max_wait s) until other processes use less than threshold of the CPUs; return that share."""
    ncpu = os.cpu_count() or 1
    t_end = time.perf_counter() + max_wait
    while True:
        b0 = cpu_busy_s()
        time.sleep(1.0)
        b1 = cpu_busy_s()
        share = (b1 - b0) / ncpu if b0 is not None and b1 is not None else 0.0
        if share < threshold or time.perf_counter() >= t_end:
            return share
        print(f"   (machine busy: {100 * share:.0f}% of the CPUs in use by others; waiting)", flush=True)
        time.sleep(4.0)


def run_child(cmd, env=None):
    """Run cmd; return (exit code, stdout, stderr, peak RSS in MiB, wall seconds, share of the CPUs that
    other processes used meanwhile — a contention measure: machine busy time minus the child's CPU time)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        b0 = cpu_busy_s()
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=ROOT)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        b1 = cpu_busy_s()
        others = None
        if b0 is not None and b1 is not None and wall > 0:
            others = max(0.0, (b1 - b0) - (ru.ru_utime + ru.ru_stime)) / (wall * (os.cpu_count() or 1))
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return (p.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                ru.ru_maxrss / 1024.0, wall, others)


def tuna_cmd(tuna, model_dir, case, out_dir):
    cmd = [tuna, "train", "--model", model_dir, "--stage", "pt", "--dataset", "tinystories_valid_slice",
           "--dataset-dir", os.path.join(ROOT, "datasets"),
           "--templates-dir", os.path.join(ROOT, "templates"), "--packing", "--cutoff-len", str(case["T"]),
           "--batch-size", str(case["B"]), "--grad-accum", "1", "--method", case["method"],
           "--max-steps", str(case["tuna_steps"]), "--eval-steps", "0", "--save-steps", "0",
           "--val-size", "0", "--sample-prompts", "", "--threads", str(THREADS), "--lr", "1e-4",
           "--output", out_dir, "--quiet"]
    if case["method"] == "lora":
        cmd += ["--lora-rank", "8", "--lora-alpha", "16", "--lora-dropout", "0",
                "--lora-target", ",".join(LORA_TARGETS)]
    return cmd


def run_tuna(tuna, model_dir, case):
    if not os.access(tuna, os.X_OK):
        return {"error": f"{tuna} not found (run `make tuna` first)"}
    out_dir = tempfile.mkdtemp(prefix="tuna-bench-train-")
    try:
        cmd = tuna_cmd(tuna, model_dir, case, out_dir)
        rc, _, err, rss, wall, others = run_child(cmd)
        steps = []
        mpath = os.path.join(out_dir, "metrics.jsonl")
        if os.path.exists(mpath):
            with open(mpath) as f:
                for line in f:
                    try:
                        e = json.loads(line)
                    except ValueError:
                        continue
                    if e.get("type") == "step":
                        steps.append(e)
        if rc != 0 or len(steps) < 3:
            tail = " | ".join(err.strip().splitlines()[-3:])
            return {"error": f"tuna failed (exit {rc}, {len(steps)} steps): {tail}",
                    "cmd": " ".join(map(shell_quote, cmd))}
        # tokens of each step = its windowed tokens/s x its duration; steady state = steps 3..N
        prev, per_step = 0.0, []
        for e in steps:
            dt = e["elapsed"] - prev
            prev = e["elapsed"]
            per_step.append((e["tokens_per_s"] * dt, dt))
        timed = per_step[2:]
        tok = sum(t for t, _ in timed)
        sec = sum(d for _, d in timed)
        return {"tok_s": tok / sec, "timed_steps": len(timed), "timed_s": sec,
                "step_tok_s": [round(e["tokens_per_s"], 1) for e in steps],
                "step_tokens": [e.get("tokens", round(t)) for e, (t, _) in zip(steps, per_step)],
                "first_loss": steps[0]["loss"], "last_loss": steps[-1]["loss"],
                "peak_rss_mib": rss, "wall_s": wall, "others_cpu_share": others,
                "cmd": " ".join(map(shell_quote, cmd))}
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def run_torch(py, model_dir, case_key):
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS))
    cmd = [py, os.path.abspath(__file__), "--torch-worker", case_key, "--model-dir", model_dir]
    rc, out, err, rss, wall, others = run_child(cmd, env)
    lines = [l for l in out.splitlines() if l.startswith("{")]
    if rc != 0 or not lines:
        tail = " | ".join(err.strip().splitlines()[-3:])
        return {"error": f"torch worker failed (exit {rc}): {tail}"}
    r = json.loads(lines[-1])
    r["peak_rss_mib"] = rss
    r["wall_s"] = wall
    r["others_cpu_share"] = others
    return r


def shell_quote(s):
    if s and all(c.isalnum() or c in "-_./=,:" for c in s):
        return s
    return "'" + s.replace("'", "'\\''") + "'"


# --------------------------------------------------------------------------------------------
# the PyTorch side (runs in its own process)

def torch_worker(case_key, model_dir):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    case = CASES[case_key]
    kw = {}
    if case["arch"] == "gpt2":  # tuna has no model dropout; make the math the same
        kw = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **kw)
    if case["method"] == "lora":
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                 target_modules=LORA_TARGETS, task_type="CAUSAL_LM"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    vocab = model.config.vocab_size
    B, T = case["B"], case["T"]
    g = torch.Generator().manual_seed(0)

    def step():
        ids = torch.randint(0, vocab, (B, T), generator=g)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(2):
        step()
    n = case["torch_steps"]
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    sec = sum(times)
    print(json.dumps({"tok_s": n * B * T / sec, "timed_steps": n, "timed_s": sec,
                      "step_tok_s": [round(B * T / t, 1) for t in times],
                      "trainable_params": sum(p.numel() for p in params),
                      "torch": torch.__version__, "transformers": transformers.__version__,
                      "attn_implementation": getattr(model.config, "_attn_implementation", None)}))
    return 0


# --------------------------------------------------------------------------------------------

def busy(r):
    o = r.get("others_cpu_share")
    return f"; other processes used {100 * o:.0f}% of the CPUs meanwhile" if o is not None and o >= 0.05 else ""


def fmt(x, spec, width):
    return f"{format(x, spec) if x is not None else '-':>{width}}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tuna", default=os.path.join(ROOT, "tuna"))
    ap.add_argument("--cache", default=os.environ.get("TUNA_BENCH_MODELS", "/tmp/tuna-bench-models"))
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch side")
    ap.add_argument("--only", default="a,b,c", help="cases to run, comma-separated (a, b, c)")
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "bench", "train.json"))
    ap.add_argument("--wait-quiet", type=float, default=45.0,
                    help="before each measurement wait up to this many seconds for other processes to idle")
    ap.add_argument("--torch-worker", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_worker:
        return torch_worker(args.torch_worker, args.model_dir)

    have_torch = not args.no_torch
    if have_torch:
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
            import peft  # noqa: F401
        except ImportError as e:
            print(f"bench_train: {e}; skipping the PyTorch side")
            have_torch = False
    os.makedirs(args.cache, exist_ok=True)
    t_start = time.perf_counter()

    results = []
    for key in [k.strip() for k in args.only.split(",") if k.strip()]:
        case = CASES[key]
        path = os.path.join(args.cache, case["model"])
        if not os.path.exists(os.path.join(path, "model.safetensors")) and not have_torch:
            print(f"== {case['name']}: no model in {path} and no torch to create it, skipped")
            continue
        model_dir = make_model(args.cache, case)
        print(f"== {case['name']}  B={case['B']} T={case['T']}  ({model_dir})", flush=True)
        wait_for_quiet(args.wait_quiet)
        tu = run_tuna(args.tuna, model_dir, case)
        if "error" in tu:
            print(f"   tuna:  {tu['error']}", flush=True)
        else:
            print(f"   tuna:  {tu['tok_s']:.1f} tok/s over {tu['timed_steps']} steps, peak RSS "
                  f"{tu['peak_rss_mib']:.0f} MiB, per step {tu['step_tok_s']}{busy(tu)}", flush=True)
        if have_torch:
            wait_for_quiet(args.wait_quiet)
        to = run_torch(sys.executable, model_dir, key) if have_torch else None
        if to is not None:
            if "error" in to:
                print(f"   torch: {to['error']}", flush=True)
            else:
                print(f"   torch: {to['tok_s']:.1f} tok/s over {to['timed_steps']} steps, peak RSS "
                      f"{to['peak_rss_mib']:.0f} MiB, per step {to['step_tok_s']}{busy(to)}", flush=True)
        tt = tu.get("tok_s")
        ht = to.get("tok_s") if to else None
        peer = case["peer"]
        results.append({
            "case": key, "name": case["name"], "model_dir": model_dir, "method": case["method"],
            "batch": case["B"], "seq": case["T"], "threads": THREADS,
            "tuna": tu, "torch": to,
            "tuna_tok_s": tt, "torch_tok_s": ht,
            "tuna_rss_mib": tu.get("peak_rss_mib"), "torch_rss_mib": to.get("peak_rss_mib") if to else None,
            "tuna_vs_torch": tt / ht if tt and ht else None,
            "peer": peer[0] if peer else "torch+peft", "peer_tok_s": peer[1] if peer else None,
            "tuna_vs_peer": tt / peer[1] if tt and peer else None,
            "target": (f">= {peer[2]:g}x {peer[0]}" if peer else "> 1x torch+peft"),
            "target_met": ((tt / peer[1] >= peer[2]) if peer else (tt / ht > 1.0 if ht else None)) if tt else None,
        })

    print(f"\n{'case':32s} {'tuna tok/s':>10s} {'torch tok/s':>11s} {'tuna/torch':>10s} "
          f"{'tuna RSS':>9s} {'torch RSS':>9s} {'peer':>10s} {'peer tok/s':>10s} {'tuna/peer':>9s}  target")
    for r in results:
        met = {True: "met", False: "MISSED", None: "?"}[r["target_met"]]
        print(f"{r['name']:32s} {fmt(r['tuna_tok_s'], '.1f', 10)} {fmt(r['torch_tok_s'], '.1f', 11)} "
              f"{fmt(r['tuna_vs_torch'], '.2f', 10)} {fmt(r['tuna_rss_mib'], '.0f', 9)} "
              f"{fmt(r['torch_rss_mib'], '.0f', 9)} {r['peer'] if r['peer_tok_s'] else '-':>10s} "
              f"{fmt(r['peer_tok_s'], '.0f', 10)} {fmt(r['tuna_vs_peer'], '.2f', 9)}  {r['target']}: {met}")
    print("(tokens/s, RSS in MiB; fp32, 2 threads. Shared machine: other processes' CPU use during each run is in\n"
          " the lines above and in train.json (others_cpu_share); with contention, numbers can drop 2-3x)")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"threads": THREADS, "total_s": time.perf_counter() - t_start,
                   "loadavg_at_end": os.getloadavg(), "results": results}, f, indent=2)
    print(f"wrote {args.out} ({time.perf_counter() - t_start:.0f} s)")
    return 0 if all("error" not in (r["tuna"] or {}) and "error" not in (r["torch"] or {}) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
