#!/usr/bin/env python3
"""Generate reference numbers for tuna's kto and rm stages.

    /opt/tuna-venv/bin/python tests/gen_kto_rm_fixtures.py tests/fixtures

On the tiny random llama of tests/fixtures/llama (made by tests/gen_fixtures.py):

kto_<method>_<case>.safetensors (tests/fixtures/train): one batch of five unpaired examples
(random prompt and completion ids, labels desirable/undesirable), collated by TRL's
DataCollatorForUnpairedPreference with the KL completions TRL's _prepare_dataset builds (each
example's prompt with the previous example's completion, cycled within the batch:
KL_completion_ids = [c[-1]] + c[:-1]). Tensors:
    input_ids, completion_mask (B, T) I32         the examples, 1 on the completion tokens
    KL_input_ids, KL_completion_mask (B, T2) I32  the mismatched KL sequences
    label (B) I32                                  1 desirable, 0 undesirable
    loss (1), metrics (6)                          kl, rewards/chosen, rewards/rejected,
                                                   rewards/margins, logps/chosen, logps/rejected
    logit_metrics (3)                              logits/chosen, logits/rejected, entropy
    adapter.NAME, grad.NAME                        lora: peft's tensors and their gradients
    policy.model.norm.weight, grad.NAME            full: as gen_dpo_fixtures.py
metadata: beta, desirable_weight, undesirable_weight, source.
Source: TRL 1.16's KTOTrainer._compute_loss on the collated batch, then backward; the metrics
are the trainer's _metrics. The reference is ref_model, the fixture model itself (frozen): for
LoRA the base, what peft gives with the adapter disabled (checked). bf16 off.

rm_<method>.safetensors (tests/fixtures/train): one batch of two pairs (random prompt, chosen
and rejected ids, right-padded), the reward model as LLaMA-Factory trains it with TRL's
AutoModelForCausalLMWithValueHead, transcribed here (trl 1.16 no longer ships that class):
values = v_head.summary(hidden_states[-1]).squeeze(-1) (the last hidden state is after the final
norm; no summary dropout), each row scored at attention_mask.sum(-1) - 1 (PairwiseTrainer), loss
= -logsigmoid(chosen - rejected).mean(). Tensors:
    input_ids, attention_mask, completion_mask (2P, T) I32   P chosen rows, then P rejected
    loss (1), scores (2P), accuracy (1)
    v_head.summary.weight (1, C), v_head.summary.bias (1)    the head (randn * 0.5, seeded)
    grad.v_head.summary.weight, grad.v_head.summary.bias
    adapter.NAME, grad.NAME (lora) / policy.model.norm.weight, grad.NAME (full) as for kto.

Deterministic (fixed seeds, CPU); headers written by hand as gen_train_fixtures.py does.
"""
import json
import os
import sys
import tempfile
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_train_fixtures import base_meta, load, lora_model, save_st  # noqa: E402

warnings.filterwarnings("ignore")
torch.set_num_threads(1)

from datasets import Dataset  # noqa: E402
from peft import get_peft_model_state_dict  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402
from trl import KTOConfig, KTOTrainer  # noqa: E402
import trl  # noqa: E402

BETA = 0.1
KTO_METRICS = ["kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"]
KTO_LOGIT_METRICS = ["logits/chosen", "logits/rejected", "entropy"]
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tokenizer(V):
    tk = Tokenizer(models.WordLevel({f"t{i}": i for i in range(V)}, unk_token="t0"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="t1", eos_token="t2", pad_token="t0")


def make_examples(V):
    g = torch.Generator().manual_seed(17)
    r = lambda n: torch.randint(3, V, (n,), generator=g).tolist()
    shape = [(3, 5, True), (5, 2, False), (2, 4, True), (4, 3, True), (3, 6, False)]
    ex = [dict(prompt_ids=r(p), completion_ids=r(c), label=lab) for p, c, lab in shape]
    comps = [e["completion_ids"] for e in ex]
    kl = [comps[-1]] + comps[:-1]  # TRL _prepare_dataset: add_kl_completion_ids
    for e, k in zip(ex, kl):
        e["KL_completion_ids"] = k
    return ex


def kto_trainer(model, ref, V, dw, uw):
    args = KTOConfig(output_dir=tempfile.mkdtemp(), report_to=[], beta=BETA, desirable_weight=dw,
                     undesirable_weight=uw, per_device_train_batch_size=5, use_cpu=True, bf16=False, fp16=False,
                     precompute_ref_log_probs=False)
    ds = Dataset.from_list([dict(prompt="t3", completion=" t4", label=True),
                            dict(prompt="t3", completion=" t5", label=False)])  # unused: the batch is ours
    return KTOTrainer(model=model, ref_model=ref, args=args, train_dataset=ds, processing_class=tokenizer(V))


def policy_and_ref(fix_dir, method):
    torch.manual_seed(0)
    if method == "lora":
        model, _, _ = lora_model(fix_dir, "llama", False, 4000)
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
    return model, ref


def grads_out(model, method, t):
    if method == "lora":
        sd = get_peft_model_state_dict(model)
        by_ptr = {p.data_ptr(): p for n_, p in model.named_parameters() if p.requires_grad}
        for name, v in sd.items():
            t["adapter." + name] = v.detach().clone()
            t["grad." + name] = by_ptr[v.data_ptr()].grad.detach().clone()
    else:
        t["policy.model.norm.weight"] = model.model.norm.weight.detach().clone()
        for name, p in model.named_parameters():  # rm: the LM head gets none (zeros)
            t["grad." + name] = p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)


def run_kto(fix_dir, out_dir, method, case):
    dw, uw = {"base": (1.0, 1.0), "weights": (1.33, 0.7)}[case]
    model, ref = policy_and_ref(fix_dir, method)
    V = model.config.vocab_size
    tr = kto_trainer(model, ref, V, dw, uw)
    batch = tr.data_collator(make_examples(V))
    model.train()
    loss = tr.compute_loss(model, batch)
    if method == "lora":  # the base with the adapter off is the reference model
        with torch.no_grad(), model.disable_adapter():
            a = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            b = ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert (a - b).abs().max() < 1e-4
    metrics = [tr._metrics["train"][k][-1] for k in KTO_METRICS]
    lmetrics = [tr._metrics["train"][k][-1] for k in KTO_LOGIT_METRICS]
    loss.backward()
    t = {k: batch[k].to(torch.int32) for k in ("input_ids", "completion_mask", "KL_input_ids", "KL_completion_mask",
                                               "label")}
    t.update(loss=loss.detach().float().reshape(1), metrics=torch.tensor(metrics, dtype=torch.float32),
             logit_metrics=torch.tensor(lmetrics, dtype=torch.float32))
    grads_out(model, method, t)
    meta = base_meta()
    meta.update(generator="tests/gen_kto_rm_fixtures.py", trl=trl.__version__, method=method, beta=repr(BETA),
                desirable_weight=repr(dw), undesirable_weight=repr(uw),
                source=f"trl {trl.__version__} KTOTrainer.compute_loss", metrics=json.dumps(KTO_METRICS))
    save_st(t, os.path.join(out_dir, f"kto_{method}_{case}.safetensors"), meta)
    print(f"kto {method:4} {case:8} loss {loss.item():.6f} metrics {[round(x, 5) for x in metrics]}")


def make_pairs(V):
    g = torch.Generator().manual_seed(23)
    r = lambda n: torch.randint(3, V, (n,), generator=g).tolist()
    return [(r(3), r(5), r(3)), (r(5), r(2), r(6))]


def run_rm(fix_dir, out_dir, method):
    model, _ = policy_and_ref(fix_dir, method)
    C = model.config.hidden_size
    g = torch.Generator().manual_seed(31)
    vw = (0.5 * torch.randn(1, C, generator=g)).requires_grad_(True)
    vb = (0.5 * torch.randn(1, generator=g)).requires_grad_(True)
    pairs = make_pairs(model.config.vocab_size)
    rows = [p + c for p, c, _ in pairs] + [p + r for p, _, r in pairs]
    cms = [[0] * len(p) + [1] * len(c) for p, c, _ in pairs] + [[0] * len(p) + [1] * len(r) for p, _, r in pairs]
    T = max(len(x) for x in rows)
    ids = torch.tensor([x + [0] * (T - len(x)) for x in rows])
    am = torch.tensor([[1] * len(x) + [0] * (T - len(x)) for x in rows])
    cm = torch.tensor([x + [0] * (T - len(x)) for x in cms])
    model.train()
    out = model(input_ids=ids, attention_mask=am, output_hidden_states=True)
    values = torch.nn.functional.linear(out.hidden_states[-1], vw, vb).squeeze(-1)  # (2P, T)
    P = len(pairs)
    cmk, rmk = torch.split(am, P, dim=0)
    cr, rr = torch.split(values, P, dim=0)
    cs = cr.gather(dim=-1, index=(cmk.sum(dim=-1, keepdim=True) - 1)).squeeze(-1)
    rs = rr.gather(dim=-1, index=(rmk.sum(dim=-1, keepdim=True) - 1)).squeeze(-1)
    loss = -torch.nn.functional.logsigmoid(cs.float() - rs.float()).mean()
    loss.backward()
    t = {"input_ids": ids.to(torch.int32), "attention_mask": am.to(torch.int32), "completion_mask": cm.to(torch.int32),
         "loss": loss.detach().float().reshape(1), "scores": torch.cat([cs, rs]).detach().float(),
         "accuracy": (cs > rs).float().mean().reshape(1).detach(),
         "v_head.summary.weight": vw.detach().clone(), "v_head.summary.bias": vb.detach().clone(),
         "grad.v_head.summary.weight": vw.grad.detach().clone(), "grad.v_head.summary.bias": vb.grad.detach().clone()}
    grads_out(model, method, t)
    meta = base_meta()
    meta.update(generator="tests/gen_kto_rm_fixtures.py", method=method,
                source="LLaMA-Factory PairwiseTrainer.compute_loss + TRL ValueHead, transcribed")
    save_st(t, os.path.join(out_dir, f"rm_{method}.safetensors"), meta)
    print(f"rm  {method:4} loss {loss.item():.6f} scores {[round(x, 4) for x in t['scores'].tolist()]}")


def main():
    fix_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    out_dir = os.path.join(fix_dir, "train")
    for method in ("lora", "full"):
        for case in ("base", "weights"):
            run_kto(fix_dir, out_dir, method, case)
    for method in ("lora", "full"):
        run_rm(fix_dir, out_dir, method)


if __name__ == "__main__":
    main()
