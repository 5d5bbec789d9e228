#!/usr/bin/env python3
"""transformers' learning-rate schedules with their lr_scheduler_kwargs, as tuna's sched_init /
sched_factor must reproduce them.

    /opt/tuna-venv/bin/python tests/gen_sched_fixtures.py tests/fixtures

Writes tests/fixtures/train/schedules.json: a list of cases, each {"name", "kwargs" (the JSON
object tuna is given), "lr", "warmup", "total", "factors"}: the multiplier of the peak lr at
optimizer steps 0 .. total + 2, as the LambdaLR that transformers.get_scheduler builds (the way
Trainer calls it: num_warmup_steps and num_training_steps, the kwargs as
scheduler_specific_kwargs) gives it, read from the scheduler's own lambda (exact doubles), and
checked against the lr torch's optimizer actually holds after each scheduler step.
Deterministic: no randomness."""
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


def main():
    out = os.path.join(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures", "train")
    os.makedirs(out, exist_ok=True)
    cases = [case(*c) for c in CASES]
    with open(os.path.join(out, "schedules.json"), "w") as f:
        f.write('{"transformers": "%s", "cases": [\n' % transformers.__version__)
        f.write(",\n".join(json.dumps(c) for c in cases))  # a case a line
        f.write("\n]}\n")
    print(f"wrote {len(cases)} schedules to {out}/schedules.json")


if __name__ == "__main__":
    main()
