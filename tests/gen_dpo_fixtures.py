#!/usr/bin/env python3
"""Generate reference numbers for tuna's preference stage (--stage dpo).

    /opt/tuna-venv/bin/python tests/gen_dpo_fixtures.py tests/fixtures

On the tiny random llama of tests/fixtures/llama (made by tests/gen_fixtures.py), one batch of
two pairs (random prompt, chosen and rejected ids; TRL's collator pads and builds the
completion mask), writes tests/fixtures/train/dpo_<method>_<case>.safetensors holding:
    input_ids (2P, T) I32       the batch as TRL concatenates it: P chosen rows, then P rejected
    completion_mask (2P, T) I32 1 on the answer tokens (their log-probs are summed)
    loss (1)                    the batch's loss
    metrics (6)                 rewards/chosen, rewards/rejected, rewards/accuracies,
                                rewards/margins, logps/chosen, logps/rejected (batch means)
    logit_metrics (4)           logits/chosen, logits/rejected, entropy, mean_token_accuracy
                                (TRL's: token means over the answers; the trainer's own where it
                                runs, and the transcription below checked against it there)
    adapter.NAME, grad.NAME     lora: peft's adapter tensors (B non-zero) and their gradients;
                                ptuning: PEFT prefix tuning's prompt_embeddings (3 virtual
                                tokens, 0.5*randn) and its gradient
    policy.model.norm.weight    full: the policy's final norm (the reference is the fixture
                                model itself; the policy differs from it there only)
    grad.NAME                   full: the gradient of every parameter
metadata: loss_type, beta, label_smoothing, ftx, simpo_gamma, source.

Sources:
  * sigmoid, hinge, ipo: TRL's own DPOTrainer (trl 1.16), driven offline: compute_loss on the
    collated batch, then backward; the metrics are the trainer's _metrics. The reference is
    ref_model, the fixture model itself (frozen): for LoRA that is the base, what peft computes
    with the adapter disabled (checked below); TRL's ref_model=None would take a copy of an
    adapter it is given as the reference (its re-training case), equal to the policy here.
    bf16=False (DPOConfig's default autocast would change the numbers).
  * sigmoid with label smoothing (LLaMA-Factory's dpo_label_smoothing): TRL 1.16's sigmoid has
    no label smoothing any more; LLaMA-Factory passes it to the TRL it pins, whose sigmoid is
    conservative DPO: -logsigmoid(b z)(1-e) - logsigmoid(-b z) e, transcribed here on the log-probs
    of the same forward.
  * orpo, simpo, pref_ftx: LLaMA-Factory's CustomDPOTrainer (odds_ratio_loss, simpo_loss, the
    ftx term, per-token mean log-probs for ipo/orpo/simpo), transcribed here.
Deterministic (fixed seeds, CPU); headers written by hand as gen_train_fixtures.py does.
"""
import json
import os
import sys
import tempfile
import warnings

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_train_fixtures import base_meta, load, lora_model, save_st  # noqa: E402

warnings.filterwarnings("ignore")
torch.set_num_threads(1)

from datasets import Dataset  # noqa: E402
from peft import PrefixTuningConfig, get_peft_model, get_peft_model_state_dict  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402
import trl  # noqa: E402

BETA, GAMMA = 0.1, 0.5
METRICS = ["rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected"]


def tokenizer(V):
    tk = Tokenizer(models.WordLevel({f"t{i}": i for i in range(V)}, unk_token="t0"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="t1", eos_token="t2", pad_token="t0")


def make_pairs(V, model=None):
    """Two pairs of random ids; with model, the first chosen answer starts with the policy's own
    3 greedy tokens (so that mean_token_accuracy is neither 0 nor 1)."""
    g = torch.Generator().manual_seed(7)
    r = lambda n: torch.randint(3, V, (n,), generator=g).tolist()
    pairs = [dict(prompt_ids=r(3), chosen_ids=r(5), rejected_ids=r(3)),
             dict(prompt_ids=r(5), chosen_ids=r(2), rejected_ids=r(6))]
    if model is not None:
        ids = list(pairs[0]["prompt_ids"])
        with torch.no_grad():
            for k in range(3):
                nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
                pairs[0]["chosen_ids"][k] = nxt
                ids.append(nxt)
    return pairs


def trainer(model, ref, V, loss_type):
    args = DPOConfig(output_dir=tempfile.mkdtemp(), report_to=[], beta=BETA, loss_type=[loss_type],
                     per_device_train_batch_size=2, use_cpu=True, bf16=False, fp16=False)
    ds = Dataset.from_list([dict(prompt="t3", chosen=" t4", rejected=" t5")])  # unused: the batch is ours
    return DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=ds, processing_class=tokenizer(V))


def seq_logps(model, batch):
    """per-row sums of the completion tokens' log-probs, and their counts (fp32 logits)."""
    ids, cm = batch["input_ids"], batch["completion_mask"]
    logits = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits.float()
    lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
    m = cm[:, 1:].float()
    return (lp * m).sum(1), m.sum(1)


def transcribed(case, pol, ref, n):
    """LLaMA-Factory's compute_preference_loss + ftx on (2P,) policy/ref sums and counts n."""
    P = pol.shape[0] // 2
    avg = case in ("ipo", "orpo", "simpo")
    pl = pol / n if avg else pol
    pc, pr = pl[:P], pl[P:]
    if case in ("orpo", "simpo"):
        if case == "orpo":
            log_odds = (pc - pr) - (torch.log1p(-torch.exp(pc)) - torch.log1p(-torch.exp(pr)))
            losses = -pc + BETA * -F.logsigmoid(log_odds)
        else:
            losses = -F.logsigmoid(BETA * ((pc - pr) - GAMMA / BETA))
        rc_, rr_ = BETA * pc.detach(), BETA * pr.detach()
    else:
        rl = ref / n if avg else ref
        rc, rr = rl[:P], rl[P:]
        z = (pc - pr) - (rc - rr)
        eps = case_ls(case)
        losses = -F.logsigmoid(BETA * z) * (1 - eps) - F.logsigmoid(-BETA * z) * eps
        rc_, rr_ = BETA * (pc - rc).detach(), BETA * (pr - rr).detach()
    ftx = case_ftx(case)
    if ftx > 0:
        losses = losses + ftx * -(pol[:P] / n[:P])
    metrics = [rc_.mean(), rr_.mean(), (rc_ > rr_).float().mean(), (rc_ - rr_).mean(), pc.detach().mean(),
               pr.detach().mean()]
    return losses.mean(), [float(x) for x in metrics]


LOGIT_METRICS = ["logits/chosen", "logits/rejected", "entropy", "mean_token_accuracy"]


def logit_metrics(model, batch):
    """TRL 1.16's DPO logits/chosen, logits/rejected, entropy, mean_token_accuracy, transcribed:
    over the completion tokens (the shifted completion mask), each position's mean logit over the
    vocabulary, its softmax's entropy, and whether its target is the first index of the largest
    logit (chosen rows only); chosen rows first, then rejected."""
    ids, cm = batch["input_ids"], batch["completion_mask"]
    with torch.no_grad():
        z = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits.double()[:, :-1]
    m = cm[:, 1:].bool()
    P = ids.shape[0] // 2
    mean = z.mean(-1)
    lp = torch.log_softmax(z, -1)
    ent = -(lp.exp() * lp).sum(-1)
    top1 = (z.argmax(-1) == ids[:, 1:]).double()
    mc, mr = m[:P], m[P:]
    return [float(mean[:P][mc].mean()), float(mean[P:][mr].mean()), float(ent[m].mean()),
            float(top1[:P][mc].mean())]


def case_ls(case):
    return 0.1 if case == "sigmoid_ls" else 0.0


def case_ftx(case):
    return 0.5 if case == "sigmoid_ftx" else 0.0


def run(fix_dir, out_dir, method, case):
    torch.manual_seed(0)
    if method == "lora":
        model, _, _ = lora_model(fix_dir, "llama", False, 4000)
        ref = load(fix_dir, "llama")
    elif method == "ptuning":  # PEFT prefix tuning, 3 virtual tokens, prompt_embeddings 0.5*randn
        model = get_peft_model(load(fix_dir, "llama"),
                               PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
        with torch.no_grad():
            w = model.prompt_encoder["default"].embedding.weight
            w.copy_(0.5 * torch.randn(w.shape, generator=torch.Generator().manual_seed(5000)))
        ref = load(fix_dir, "llama")
    else:
        model, ref = load(fix_dir, "llama"), load(fix_dir, "llama")
        with torch.no_grad():  # the policy differs from the reference in its final norm
            g = torch.Generator().manual_seed(11)
            w = model.model.norm.weight
            w.add_(0.3 * torch.randn(w.shape, generator=g))
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    V = model.config.vocab_size
    trl_case = case in ("sigmoid", "hinge", "ipo")
    tr = trainer(model, ref, V, case if trl_case else "sigmoid")
    batch = tr.data_collator(make_pairs(V, model))
    model.train()
    lmetrics = logit_metrics(model, batch)
    if trl_case:
        loss = tr.compute_loss(model, batch)
        metrics = [tr._metrics["train"][k][-1] for k in METRICS]
        trl_lm = [tr._metrics["train"][k][-1] for k in LOGIT_METRICS]
        assert all(abs(a - b) <= 1e-5 * max(1, abs(b)) for a, b in zip(lmetrics, trl_lm)), (lmetrics, trl_lm)
        lmetrics = trl_lm
        source = f"trl {trl.__version__} DPOTrainer.compute_loss"
    else:
        pol, n = seq_logps(model, batch)
        with torch.no_grad():
            refl, _ = seq_logps(ref, batch)
            if method == "lora":  # the base with the adapter off is the reference model
                with model.disable_adapter():
                    off, _ = seq_logps(model, batch)
                assert (off - refl).abs().max() < 1e-4, (off, refl)
        loss, metrics = transcribed(case, pol, refl, n)
        source = "LLaMA-Factory CustomDPOTrainer formulas, transcribed"
    loss.backward()
    t = {"input_ids": batch["input_ids"].to(torch.int32),
         "completion_mask": batch["completion_mask"].to(torch.int32),
         "loss": loss.detach().float().reshape(1), "metrics": torch.tensor(metrics, dtype=torch.float32),
         "logit_metrics": torch.tensor(lmetrics, dtype=torch.float32)}
    if method == "lora":
        sd = get_peft_model_state_dict(model)
        by_ptr = {p.data_ptr(): p for n_, p in model.named_parameters() if p.requires_grad}
        for name, v in sd.items():
            t["adapter." + name] = v.detach().clone()
            t["grad." + name] = by_ptr[v.data_ptr()].grad.detach().clone()
    elif method == "ptuning":
        w = model.prompt_encoder["default"].embedding.weight
        t["adapter.prompt_embeddings"] = w.detach().clone()
        t["grad.prompt_embeddings"] = w.grad.detach().clone()
    else:
        t["policy.model.norm.weight"] = model.model.norm.weight.detach().clone()
        for name, p in model.named_parameters():
            t["grad." + name] = p.grad.detach().clone()
    meta = base_meta()
    meta.update(generator="tests/gen_dpo_fixtures.py", trl=trl.__version__, method=method,
                loss_type={"sigmoid_ls": "sigmoid", "sigmoid_ftx": "sigmoid"}.get(case, case), beta=repr(BETA),
                label_smoothing=repr(case_ls(case)), ftx=repr(case_ftx(case)), simpo_gamma=repr(GAMMA),
                source=source, metrics=json.dumps(METRICS))
    if method == "lora":
        meta.update(r="4", lora_alpha="8", target_modules=json.dumps(["q_proj", "k_proj", "v_proj", "o_proj",
                                                                      "gate_proj", "up_proj", "down_proj"]))
    save_st(t, os.path.join(out_dir, f"dpo_{method}_{case}.safetensors"), meta)
    print(f"dpo {method:4} {case:11} loss {loss.item():.6f} metrics {[round(x, 5) for x in metrics]}")


def main():
    fix_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    out_dir = os.path.join(fix_dir, "train")
    for case in ("sigmoid", "hinge", "ipo", "sigmoid_ls", "sigmoid_ftx", "orpo", "simpo"):
        run(fix_dir, out_dir, "lora", case)
    for case in ("sigmoid", "hinge", "ipo", "sigmoid_ls"):
        run(fix_dir, out_dir, "full", case)
    for case in ("sigmoid", "ipo"):
        run(fix_dir, out_dir, "ptuning", case)


if __name__ == "__main__":
    main()
