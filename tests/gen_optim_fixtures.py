#!/usr/bin/env python3
"""The optimizer's and the schedule's arguments, as Hugging Face's Trainer takes them: transformers'
learning-rate schedules with their lr_scheduler_kwargs (tuna's sched_init / sched_factor), and
torch.optim.AdamW with adam_beta1, adam_beta2 and adam_epsilon other than the defaults.

    /opt/tuna-venv/bin/python tests/gen_optim_fixtures.py tests/fixtures

Writes tests/fixtures/train/schedules.json: a list of cases, each {"name", "kwargs" (the JSON
object tuna is given), "lr", "warmup", "total", "factors"}: the multiplier of the peak lr at
optimizer steps 0 .. total + 2, as the LambdaLR that transformers.get_scheduler builds (the way
Trainer calls it: num_warmup_steps and num_training_steps, the kwargs as
scheduler_specific_kwargs) gives it, read from the scheduler's own lambda (exact doubles), and
checked against the lr torch's optimizer actually holds after each scheduler step.
tests/fixtures/train/plateau.json: reduce_lr_on_plateau cases {"kwargs", "lr", "metrics",
"lrs"}: the optimizer's lr after ReduceLROnPlateau.step(metric) for each metric in turn.
And tests/fixtures/train/adamw_args.json: {"lr", "betas", "eps", "weight_decay", "p0" (32
float32 values), "G" (8 steps x 32), "P" (8 x 32)}: torch.optim.AdamW(lr, betas, eps,
weight_decay, foreach=False) stepped on G, the values after each step (float32, printed exactly).
Deterministic: fixed seeds."""
import json
import math
import os
import sys
import warnings

import torch
import transformers

CASES = [
    ("constant", {}, 2e-4, 5, 30),
    ("constant_with_warmup", {}, 2e-4, 5, 30),
    ("linear", {}, 2e-4, 5, 30),
    ("cosine", {}, 2e-4, 5, 30),
    ("cosine", {"num_cycles": 1.5}, 2e-4, 4, 27),
    ("cosine_with_restarts", {}, 2e-4, 5, 30),
    ("cosine_with_restarts", {"num_cycles": 3}, 2e-4, 3, 31),
    ("polynomial", {}, 2e-4, 5, 30),
    ("polynomial", {"lr_end": 1e-5, "power": 2.0}, 3e-4, 4, 25),
    ("inverse_sqrt", {}, 2e-4, 5, 30),
    ("inverse_sqrt", {"timescale": 7}, 2e-4, 3, 30),
    ("inverse_sqrt", {}, 2e-4, 0, 20),
    ("cosine_with_min_lr", {"min_lr_rate": 0.1}, 2e-4, 5, 30),
    ("cosine_with_min_lr", {"min_lr": 2e-5, "num_cycles": 0.75}, 1e-4, 2, 26),
    ("cosine_warmup_with_min_lr", {"min_lr_rate": 0.1}, 2e-4, 5, 30),
    ("cosine_warmup_with_min_lr", {"min_lr": 1e-5, "warmup_lr_rate": 0.2}, 2e-4, 6, 29),
    ("warmup_stable_decay", {"num_decay_steps": 10}, 2e-4, 5, 30),
    ("warmup_stable_decay", {"num_decay_steps": 8, "num_stable_steps": 9, "warmup_type": "cosine",
                             "decay_type": "1-sqrt", "min_lr_ratio": 0.05}, 2e-4, 6, 30),
    ("warmup_stable_decay", {"num_decay_steps": 6, "warmup_type": "1-sqrt",
                             "decay_type": "linear", "num_cycles": 0.5}, 2e-4, 4, 22),
]


def case(name, kwargs, lr, warmup, total):
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.SGD([p], lr=lr)
    with warnings.catch_warnings():  # wsd with num_stable_steps: "num_stable_steps will be used"
        warnings.simplefilter("ignore")
        s = transformers.get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=total,
                                       scheduler_specific_kwargs=dict(kwargs))
    lam = s.lr_lambdas[0]
    factors = [float(lam(k)) for k in range(total + 3)]
    for k in range(total + 3):  # the optimizer's lr at step k is lr * factor, as LambdaLR sets it
        got = opt.param_groups[0]["lr"]
        assert math.isclose(got, lr * factors[k], rel_tol=0, abs_tol=1e-18), (name, k, got)
        opt.step()
        s.step()
    return {"name": name, "kwargs": kwargs, "lr": lr, "warmup": warmup, "total": total,
            "factors": factors}


def adamw_args():
    LR, BETAS, EPS, WD, STEPS, N = 2e-3, (0.8, 0.95), 1e-6, 0.1, 8, 32
    gen = torch.Generator().manual_seed(6100)
    p0 = torch.randn(N, generator=gen)
    G = 0.1 * torch.randn(STEPS, N, generator=gen)
    p = torch.nn.Parameter(p0.clone())
    opt = torch.optim.AdamW([p], lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, foreach=False)
    P = []
    for s in range(STEPS):
        p.grad = G[s].clone()
        opt.step()
        P.append(p.detach().clone())
    fl = lambda t: [float(x) for x in t.tolist()]  # float32 values: repr round-trips exactly
    return {"lr": LR, "betas": list(BETAS), "eps": EPS, "weight_decay": WD, "p0": fl(p0),
            "G": [fl(g) for g in G], "P": [fl(x) for x in P]}


# reduce_lr_on_plateau: transformers' get_scheduler gives torch's ReduceLROnPlateau(optimizer,
# **kwargs); the Trainer steps it with each eval's eval_loss. Metric sequences with plateaus, rises
# and ties, the optimizer's lr after each step.
PLATEAU = [
    ({}, 1e-3, [5, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 3.9, 3.9999, 3.9996] + [3.5] * 14),
    ({"patience": 1, "factor": 0.5, "cooldown": 1, "min_lr": 1e-4}, 2e-3,
     [3, 2.9, 3.1, 3.2, 2.8, 2.8, 2.81, 2.79, 3, 3, 3, 3, 2.5, 2.6, 2.6, 2.6, 2.6, 2.6]),
    ({"patience": 0, "threshold": 0.05, "threshold_mode": "abs", "eps": 1e-6}, 1e-3,
     [3, 2.97, 2.9, 2.8, 2.79, 2.7, 2.69, 2.5, 2.49, 2.48]),
    ({"mode": "max", "patience": 2, "factor": 0.3, "threshold": 0.01}, 1e-3,
     [0.1, 0.2, 0.2, 0.201, 0.2, 0.5, 0.4, 0.4, 0.4, 0.4, 0.6]),
]


def plateau_cases():
    out = []
    for kwargs, lr, metrics in PLATEAU:
        p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
        opt = torch.optim.SGD([p], lr=lr)
        s = transformers.get_scheduler("reduce_lr_on_plateau", opt, scheduler_specific_kwargs=dict(kwargs))
        lrs = []
        for m in metrics:
            s.step(m)
            lrs.append(opt.param_groups[0]["lr"])
        out.append({"kwargs": kwargs, "lr": lr, "metrics": metrics, "lrs": lrs})
    return out


def main():
    out = os.path.join(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures", "train")
    os.makedirs(out, exist_ok=True)
    cases = [case(*c) for c in CASES]
    with open(os.path.join(out, "schedules.json"), "w") as f:
        f.write('{"transformers": "%s", "cases": [\n' % transformers.__version__)
        f.write(",\n".join(json.dumps(c) for c in cases))  # a case a line
        f.write("\n]}\n")
    print(f"wrote {len(cases)} schedules to {out}/schedules.json")
    with open(os.path.join(out, "plateau.json"), "w") as f:
        f.write('{"cases": [\n' + ",\n".join(json.dumps(c) for c in plateau_cases()) + "\n]}\n")
    with open(os.path.join(out, "adamw_args.json"), "w") as f:
        json.dump(adamw_args(), f)
        f.write("\n")
    print(f"wrote {out}/adamw_args.json")


if __name__ == "__main__":
    main()
