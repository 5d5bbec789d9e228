#!/usr/bin/env python3
"""Reference numbers for tuna's LoRA variants (LoRA+, PiSSA, DoRA, LoRA dropout).

    /opt/tuna-venv/bin/python tests/gen_lora_variant_fixtures.py tests/fixtures

Writes
    loraplus/loraplus.safetensors  LoRA+: AdamW steps over LLaMA-Factory's loraplus param groups
    pissa/<arch>_pissa.safetensors PiSSA init (peft init_lora_weights="pissa"): lora_A, lora_B and
                                   the residual base weight of every adapted layer
    dora/<arch>_dora[_rslora].safetensors  DoRA: loss and gradients of one step (and a saved adapter)
    dora/<arch>_{dora,lora}_dropout.safetensors  the same with lora_dropout 0.25, the masks recorded
    hf_trainer/<arch>_neftune.safetensors  LoRA under transformers' NEFTune hook (neftune_noise_alpha 5):
                                   the noise it drew recorded, loss and gradients, and the loss without
    hf_trainer/<arch>_dft.safetensors     LoRA under LLaMA-Factory's DFT loss (use_dft_loss)
    hf_trainer/<arch>_eaft.safetensors    ... and its EAFT loss (use_eaft_loss, eaft_alpha 0.5)
    hf_trainer/<arch>_smooth.safetensors  LoRA under transformers' LabelSmoother (label_smoothing_factor
                                   0.1): loss and gradients, and the loss of the model in eval mode
Deterministic (fixed seeds, CPU, one thread; safetensors written with sorted keys).
"""
import json
import math
import os
import struct
import sys

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

torch.set_num_threads(1)


def save_st(tensors, path, metadata):
    header, blobs, off = {"__metadata__": metadata}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous()
        b = t.numpy().tobytes()
        header[name] = {"dtype": {torch.int32: "I32", torch.float32: "F32", torch.uint8: "U8"}[t.dtype],
                        "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    back = load_file(path)
    assert sorted(back) == sorted(tensors)


def meta():
    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "generator": "tests/gen_lora_variant_fixtures.py"}


# ---------------------------------------------------------------------------------------------
# LoRA+: a transcription of LLaMA-Factory's _create_loraplus_optimizer (src/llamafactory/train/
# trainer_utils.py): "lora_B" in the name or ndim == 1 -> lora_b (decay) / lora_b_nodecay with
# lr * loraplus_lr_ratio; everything else -> lora_a with lr; all under one LambdaLR schedule.
PLUS_NAMES = [("base_model.model.layers.0.q_proj.lora_A.weight", (4, 16), True),
              ("base_model.model.layers.0.q_proj.lora_B.weight", (24, 4), True),
              ("base_model.model.layers.0.q_proj.lora_magnitude_vector", (24,), False),
              ("trainable_tokens", (2, 16), True)]


def gen_loraplus(out_dir):
    LR, RATIO, WD, STEPS = 2e-3, 16.0, 0.01, 5
    gen = torch.Generator().manual_seed(7100)
    params, tensors = {}, {}
    for name, shape, decay in PLUS_NAMES:
        p = torch.nn.Parameter(torch.randn(shape, generator=gen))
        params[name] = (p, decay)
        tensors["p0." + name] = p.detach().clone()
        tensors["G." + name] = 0.1 * torch.randn((STEPS,) + shape, generator=gen)
    groups = {"lora_a": [], "lora_b": [], "lora_b_nodecay": []}
    for name, (p, decay) in params.items():
        if "lora_B" in name or p.ndim == 1:
            groups["lora_b" if decay else "lora_b_nodecay"].append(p)
        else:
            groups["lora_a"].append(p)  # LLaMA-Factory: weight decay on every lora_a member
    # tuna's decay flag is 0 only for 1-D tensors, which all land in the B groups
    opt = torch.optim.AdamW([dict(params=groups["lora_a"], lr=LR, weight_decay=WD),
                             dict(params=groups["lora_b"], lr=LR * RATIO, weight_decay=WD),
                             dict(params=groups["lora_b_nodecay"], lr=LR * RATIO, weight_decay=0.0)],
                            lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WD, foreach=False)
    sched = transformers.get_cosine_schedule_with_warmup(opt, num_warmup_steps=2, num_training_steps=STEPS)
    lrs = []
    for s in range(STEPS):
        lrs.append(opt.param_groups[0]["lr"])
        for name, (p, _) in params.items():
            p.grad = tensors["G." + name][s].clone()
        opt.step()
        sched.step()
    for name, (p, _) in params.items():
        tensors["P." + name] = p.detach().clone()
    tensors["lrs"] = torch.tensor(lrs, dtype=torch.float32)
    m = meta()
    m.update(lr=repr(LR), loraplus_lr_ratio=repr(RATIO), weight_decay=repr(WD), steps=str(STEPS),
             names=json.dumps([n for n, _, _ in PLUS_NAMES]),
             decay=json.dumps([d for _, _, d in PLUS_NAMES]),
             schedule="get_cosine_schedule_with_warmup(num_warmup_steps=2, num_training_steps=5); "
                      "lrs[s] = base-group lr of step s",
             groups="LLaMA-Factory _create_loraplus_optimizer: lora_a (lr), lora_b (lr*ratio, wd), "
                    "lora_b_nodecay (lr*ratio, wd 0)")
    os.makedirs(os.path.join(out_dir, "loraplus"), exist_ok=True)
    save_st(tensors, os.path.join(out_dir, "loraplus", "loraplus.safetensors"), m)


# ---------------------------------------------------------------------------------------------
# PiSSA: peft's pissa_init on the tiny fp32 checkpoints tests/fixtures/<arch>/
PISSA_TARGETS = {"llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                 "gpt2": ["c_attn", "c_proj", "c_fc"]}


def pissa_model(fix_dir, arch, rslora):
    base = AutoModelForCausalLM.from_pretrained(os.path.join(fix_dir, arch), dtype=torch.float32,
                                                attn_implementation="eager")
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=PISSA_TARGETS[arch], bias="none",
                     fan_in_fan_out=arch == "gpt2", use_rslora=rslora, init_lora_weights="pissa",
                     task_type="CAUSAL_LM")
    return get_peft_model(base, cfg)


def gen_pissa(fix_dir, out_dir, arch, rslora=False):
    model = pissa_model(fix_dir, arch, rslora)
    tensors, shapes = {}, {}
    for name, mod in model.named_modules():
        if not hasattr(mod, "lora_A") or "default" not in mod.lora_A:
            continue
        key = "base_model.model." + name.removeprefix("base_model.model.")
        a, b = mod.lora_A["default"].weight, mod.lora_B["default"].weight
        w = mod.get_base_layer().weight.detach()
        if arch == "gpt2":
            w = w.t()  # Conv1D keeps [in, out]; store [out, in] like nn.Linear
        tensors[key + ".lora_A.weight"] = a.detach().clone()
        tensors[key + ".lora_B.weight"] = b.detach().clone()
        tensors["residual." + key] = w.contiguous().clone()
        shapes[key] = [list(a.shape), list(b.shape), list(w.shape)]
    # one forward: residual + adapter == the original model
    ids = torch.tensor([[1, 5, 9, 2, 7, 3]])
    base = AutoModelForCausalLM.from_pretrained(os.path.join(fix_dir, arch), dtype=torch.float32,
                                                attn_implementation="eager")
    with torch.no_grad():
        model.eval()
        base.eval()
        d = (model(input_ids=ids).logits - base(input_ids=ids).logits).abs().max().item()
    assert d < 1e-4, d
    m = meta()
    m.update(arch=arch, r="4", lora_alpha="8", use_rslora=str(rslora).lower(), init_lora_weights="pissa",
             layout="lora_A [r, in], lora_B [out, r]; residual.<module> = the base weight after pissa_init, "
                    "[out, in] (GPT-2 Conv1D transposed)",
             logits_vs_original=repr(d), shapes=json.dumps(shapes))
    os.makedirs(os.path.join(out_dir, "pissa"), exist_ok=True)
    name = f"{arch}_pissa_rslora" if rslora else f"{arch}_pissa"
    save_st(tensors, os.path.join(out_dir, "pissa", name + ".safetensors"), m)
    if arch == "llama" and not rslora:
        # a "trained" PiSSA adapter as peft saves it (B moved off its init), and its logits over
        # the original base as peft loads it (pissa_init again, then the saved A and B)
        gen = torch.Generator().manual_seed(7300)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if ".lora_B." in n or ".lora_A." in n:
                    p.add_(0.02 * torch.randn(p.shape, generator=gen))
        adir = os.path.join(out_dir, "pissa", "llama_pissa_adapter")
        model.save_pretrained(adir)
        if os.path.exists(os.path.join(adir, "README.md")):
            os.remove(os.path.join(adir, "README.md"))
        from peft import PeftModel
        base = AutoModelForCausalLM.from_pretrained(os.path.join(fix_dir, arch), dtype=torch.float32,
                                                    attn_implementation="eager")
        loaded = PeftModel.from_pretrained(base, adir).eval()
        ids = torch.tensor([[1, 5, 9, 2, 7, 3, 11, 4], [8, 6, 1, 3, 12, 2, 9, 5]])
        with torch.no_grad():
            logits = loaded(input_ids=ids).logits
            model.eval()
            d = (model(input_ids=ids).logits - logits).abs().max().item()
        assert d < 1e-5, d
        m = meta()
        m.update(adapter="tests/fixtures/pissa/llama_pissa_adapter", base="tests/fixtures/llama",
                 how="PeftModel.from_pretrained(original base, adapter).eval() logits")
        save_st({"input_ids": ids.to(torch.int32), "logits": logits.clone()},
                os.path.join(out_dir, "pissa", "llama_pissa_logits.safetensors"), m)


# ---------------------------------------------------------------------------------------------
# DoRA (use_dora=True): loss and the grads of lora_A, lora_B and lora_magnitude_vector, with B and
# the magnitude moved off their init (so m / ||W + s B A|| != 1), as tests/gen_train_fixtures.py
# does for LoRA (same inputs and label masking: B=2, T=10, prompt masks 3 and 5).
class MaskDropout(torch.nn.Module):
    """nn.Dropout(p) with a mask drawn on its first call and kept (one training step), listed in
    call order: the test replays mask.<k> for the k-th distinct dropout seed tuna uses, so both
    sides drop the same inputs (tuna's masks come from its own hash, torch's from its RNG)."""

    def __init__(self, p, gen, order):
        super().__init__()
        self.p, self.gen, self.order, self.mask = p, gen, order, None

    def forward(self, x):
        if self.mask is None:
            self.mask = (torch.rand(x.shape, generator=self.gen) >= self.p).float()
            self.order.append(self)
        return x * (self.mask / (1 - self.p))  # torch's dropout: noise.bernoulli_(1-p).div_(1-p)


def gen_dora(fix_dir, out_dir, arch, ai, rslora=False, dropout=0.0, dora=True):
    base = AutoModelForCausalLM.from_pretrained(os.path.join(fix_dir, arch), dtype=torch.float32,
                                                attn_implementation="eager",
                                                **({"attn_pdrop": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0}
                                                   if arch == "gpt2" else {}))
    base.train()
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=PISSA_TARGETS[arch], bias="none",
                     fan_in_fan_out=arch == "gpt2", use_rslora=rslora, use_dora=dora, task_type="CAUSAL_LM")
    seed = 7400 + ai + (100 if rslora else 0) + (200 if dropout else 0)
    torch.manual_seed(seed)
    model = get_peft_model(base, cfg)
    order = []
    if dropout:  # every lora_dropout module replaced by one replaying a recorded mask
        mgen = torch.Generator().manual_seed(seed + 2)
        for mod in model.modules():
            if hasattr(mod, "lora_dropout") and "default" in mod.lora_dropout:
                assert isinstance(mod.lora_dropout["default"], torch.nn.Dropout)
                mod.lora_dropout["default"] = MaskDropout(dropout, mgen, order)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
            elif "lora_magnitude_vector" in name:
                p.mul_(1 + 0.1 * torch.randn(p.shape, generator=gen))
    gen = torch.Generator().manual_seed(3000 + ai)
    T_, B_ = 10, 2
    ids = torch.randint(0, model.config.vocab_size, (B_, T_), generator=gen)
    labels = ids.clone()
    labels[0, :3] = -100
    labels[1, :5] = -100
    model.train()
    out = model(input_ids=ids, labels=labels)
    out.loss.backward()
    sd = peft.get_peft_model_state_dict(model)
    by_ptr = {p.data_ptr(): p for n, p in model.named_parameters() if p.requires_grad}
    assert len(sd) == len(by_ptr), (len(sd), len(by_ptr))
    tensors = {"input_ids": ids.to(torch.int32), "labels": labels.to(torch.int32),
               "loss": out.loss.detach().float().reshape(1)}
    for name, t in sd.items():
        p = by_ptr[t.data_ptr()]
        tensors["adapter." + name] = t.detach().clone()
        tensors["grad." + name] = p.grad.detach().clone()
    for k, mod in enumerate(order):  # (B*T, in): the rows tuna's dropout sees
        tensors["mask.%d" % k] = mod.mask.reshape(-1, mod.mask.shape[-1]).to(torch.uint8)
    m = meta()
    m.update(arch=arch, r="4", lora_alpha="8", use_rslora=str(rslora).lower(), use_dora=str(dora).lower(),
             target_modules=json.dumps(PISSA_TARGETS[arch]), names=json.dumps(sorted(sd)),
             init="lora_A: peft (torch.manual_seed(%d)); lora_B 0.05*randn; magnitude *= 1+0.1*randn" % seed)
    if dropout:
        m.update(lora_dropout=str(dropout),
                 masks="mask.<k>: the k-th lora_dropout called in the forward, 1 kept (scaled 1/(1-p)), 0 dropped")
    os.makedirs(os.path.join(out_dir, "dora"), exist_ok=True)
    name = f"{arch}_{'dora' if dora else 'lora'}" + ("_rslora" if rslora else "") + ("_dropout" if dropout else "")
    save_st(tensors, os.path.join(out_dir, "dora", name + ".safetensors"), m)
    if arch == "llama" and not rslora and not dropout and dora:
        adir = os.path.join(out_dir, "dora", "llama_dora_adapter")
        model.save_pretrained(adir)
        readme = os.path.join(adir, "README.md")
        if os.path.exists(readme):
            os.remove(readme)
        model.eval()
        ids2 = torch.tensor([[1, 5, 9, 2, 7, 3, 11, 4], [8, 6, 1, 3, 12, 2, 9, 5]])
        with torch.no_grad():
            logits = model(input_ids=ids2).logits
        m = meta()
        m.update(adapter="tests/fixtures/dora/llama_dora_adapter", base="tests/fixtures/llama")
        save_st({"input_ids": ids2.to(torch.int32), "logits": logits.clone()},
                os.path.join(out_dir, "dora", "llama_dora_logits.safetensors"), m)


def lora_batch(fix_dir, arch, seed, data_seed):
    """A peft LoRA (r 4, alpha 8) over the tiny checkpoint with lora_B moved off its init, and a
    batch of 2 x 10 random ids whose labels mask 3 and 5 prompt tokens (as gen_dora's)."""
    base = AutoModelForCausalLM.from_pretrained(os.path.join(fix_dir, arch), dtype=torch.float32,
                                                attn_implementation="eager",
                                                **({"attn_pdrop": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0}
                                                   if arch == "gpt2" else {}))
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=PISSA_TARGETS[arch], bias="none",
                     fan_in_fan_out=arch == "gpt2", task_type="CAUSAL_LM")
    torch.manual_seed(seed)
    model = get_peft_model(base, cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    gen = torch.Generator().manual_seed(data_seed)
    ids = torch.randint(0, model.config.vocab_size, (2, 10), generator=gen)
    labels = ids.clone()
    labels[0, :3] = -100
    labels[1, :5] = -100
    return model, ids, labels


def save_lora_case(model, ids, labels, loss, loss_clean, extra, arch, seed, name, out_dir, md):
    """hf_trainer/<arch>_<name>.safetensors: the batch, the losses, the adapter and its grads."""
    sd = peft.get_peft_model_state_dict(model)
    by_ptr = {p.data_ptr(): p for n, p in model.named_parameters() if p.requires_grad}
    tensors = {"input_ids": ids.to(torch.int32), "labels": labels.to(torch.int32),
               "loss": loss.detach().float().reshape(1), "loss_clean": loss_clean.float().reshape(1)}
    tensors.update(extra)
    for n, t in sd.items():
        tensors["adapter." + n] = t.detach().clone()
        tensors["grad." + n] = by_ptr[t.data_ptr()].grad.detach().clone()
    m = meta()
    m.update(arch=arch, r="4", lora_alpha="8", target_modules=json.dumps(PISSA_TARGETS[arch]),
             init="lora_A: peft (torch.manual_seed(%d)); lora_B 0.05*randn" % seed)
    m.update(md)
    os.makedirs(os.path.join(out_dir, "hf_trainer"), exist_ok=True)
    save_st(tensors, os.path.join(out_dir, "hf_trainer", f"{arch}_{name}.safetensors"), m)


# NEFTune: transformers' Trainer registers neftune_post_forward_hook (transformers/integrations/
# neftune.py: activate_neftune) on the input embeddings (noise uniform on [-m, m),
# m = alpha / sqrt(T * C), T the batch's row length, in training mode). The hook below is that
# function with the noise kept (checked equal to transformers' own on the same RNG state): the
# test replays it for tuna's noise_add op and checks the m tuna asks for.
def gen_neftune(fix_dir, out_dir, arch, ai, alpha=5.0):
    from transformers.integrations.neftune import neftune_post_forward_hook
    seed = 7900 + ai
    model, ids, labels = lora_batch(fix_dir, arch, seed, 3000 + ai)
    model.train()
    emb = model.base_model.model.get_input_embeddings()  # what activate_neftune hooks under peft
    emb.neftune_noise_alpha = alpha
    drawn = []

    def hook(module, args, output):
        if module.training:
            dims = torch.tensor(output.size(1) * output.size(2))
            mag_norm = module.neftune_noise_alpha / torch.sqrt(dims)
            noise = torch.zeros_like(output).uniform_(-mag_norm, mag_norm)
            drawn.append((noise, mag_norm))
            output = output + noise
        return output

    with torch.no_grad():  # the hook is transformers' own, noise aside
        x = emb(ids)
        torch.manual_seed(1)
        want = neftune_post_forward_hook(emb, (ids,), x)
        torch.manual_seed(1)
        got = hook(emb, (ids,), x)
        assert torch.equal(want, got)
        drawn.clear()
    h = emb.register_forward_hook(hook)
    torch.manual_seed(seed + 2)
    out = model(input_ids=ids, labels=labels)
    out.loss.backward()
    h.remove()
    assert len(drawn) == 1
    noise, mag = drawn[0]
    model.eval()
    with torch.no_grad():
        clean = model(input_ids=ids, labels=labels).loss
    save_lora_case(model, ids, labels, out.loss, clean,
                   {"noise": noise.reshape(-1, noise.shape[-1]).clone(), "mag": mag.float().reshape(1)},
                   arch, seed, "neftune", out_dir,
                   {"neftune_noise_alpha": str(alpha),
                    "noise": "(B*T, C): what transformers' NEFTune hook added to the input embeddings; mag its m"})


# Label smoothing: transformers' Trainer.compute_loss with label_smoothing_factor e runs its
# LabelSmoother on the logits (shift_labels for a causal LM): (1 - e) nll + e mean(-log p), each
# a mean over the target tokens; the same in prediction_step (the evals).
def gen_smooth(fix_dir, out_dir, arch, ai, eps=0.1):
    from transformers.trainer_pt_utils import LabelSmoother
    seed = 8100 + ai
    model, ids, labels = lora_batch(fix_dir, arch, seed, 3100 + ai)
    smoother = LabelSmoother(epsilon=eps)
    model.train()
    loss = smoother(model(input_ids=ids), labels, shift_labels=True)
    loss.backward()
    model.eval()
    with torch.no_grad():
        loss_eval = smoother(model(input_ids=ids), labels, shift_labels=True)
    save_lora_case(model, ids, labels, loss, loss_eval, {}, arch, seed, "smooth", out_dir,
                   {"label_smoothing_factor": str(eps),
                    "loss": "transformers.trainer_pt_utils.LabelSmoother(epsilon)(outputs, labels, shift_labels=True)"})


# LLaMA-Factory's DFT loss (use_dft_loss: its sft trainer's compute_loss_func, dft_loss_func in
# src/llamafactory/train/trainer_utils.py; LLaMA-Factory is not installed here, so its two lines
# of math are transcribed): per target token cross_entropy(reduction="none") times its
# probability exp(-loss) under no_grad, the mean over the target tokens (one batch: the
# num_items_in_batch sum is the same); transformers runs it in prediction_step too (the evals).
def weighted_loss(logits, labels, weight):
    """LLaMA-Factory's per-token cross-entropy times weight(valid nll, valid logits), the weight
    under no_grad, the mean over the target tokens (labels shifted as its loss functions do)."""
    logits = logits.float()
    labels = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:].reshape(-1)
    source = logits.view(-1, logits.size(-1))
    per_token = torch.nn.functional.cross_entropy(source, labels, ignore_index=-100, reduction="none")
    valid_mask = labels != -100
    valid = per_token[valid_mask]
    with torch.no_grad():
        w = weight(valid, source[valid_mask].detach())
    return (valid * w).mean()


def dft_weight(nll, _logits):
    return torch.exp(-nll)


# Its EAFT loss (use_eaft_loss, eaft_alpha: eaft_loss_func, transcribed the same way): each target
# token's cross-entropy times (H / 3)^alpha under no_grad, H the entropy of the softmax over the
# row's 20 largest logits (torch.topk), the mean over the target tokens.
def eaft_weight(alpha):
    def weight(_nll, logits):
        topk_val, _ = torch.topk(logits, k=20, dim=-1)
        log_probs_topk = topk_val - torch.logsumexp(topk_val, dim=-1, keepdim=True)
        entropy = -(torch.exp(log_probs_topk) * log_probs_topk).sum(dim=-1)
        return torch.pow(entropy / 3.0, alpha)
    return weight


def gen_weighted(fix_dir, out_dir, arch, ai, name, seed, data_seed, weight, md):
    """hf_trainer/<arch>_<name>: a LoRA step under weighted_loss, and the loss in eval mode."""
    model, ids, labels = lora_batch(fix_dir, arch, seed, data_seed)
    model.train()
    loss = weighted_loss(model(input_ids=ids).logits, labels, weight)
    loss.backward()
    model.eval()
    with torch.no_grad():
        loss_eval = weighted_loss(model(input_ids=ids).logits, labels, weight)
    save_lora_case(model, ids, labels, loss, loss_eval, {}, arch, seed, name, out_dir, md)


def gen_dft(fix_dir, out_dir, arch, ai):
    gen_weighted(fix_dir, out_dir, arch, ai, "dft", 8300 + ai, 3200 + ai, dft_weight,
                 {"use_dft_loss": "true",
                  "loss": "LLaMA-Factory's _dft_cross_entropy: mean over target tokens of nll * exp(-nll).detach()"})


def gen_eaft(fix_dir, out_dir, arch, ai, alpha=0.5):
    gen_weighted(fix_dir, out_dir, arch, ai, "eaft", 8500 + ai, 3300 + ai, eaft_weight(alpha),
                 {"use_eaft_loss": "true", "eaft_alpha": str(alpha),
                  "loss": "LLaMA-Factory's _eaft_cross_entropy: mean over target tokens of nll * ((top-20 entropy) / 3) ** alpha"})


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    if len(sys.argv) > 2 and sys.argv[2] == "hf_trainer":  # only these
        for ai, arch in enumerate(("llama", "gpt2")):
            gen_neftune(out, out, arch, ai)
            gen_smooth(out, out, arch, ai)
            gen_dft(out, out, arch, ai)
            gen_eaft(out, out, arch, ai)
        return
    gen_loraplus(out)
    for arch in ("llama", "gpt2"):
        gen_pissa(out, out, arch)
    gen_pissa(out, out, "llama", rslora=True)
    gen_dora(out, out, "llama", 0)
    gen_dora(out, out, "llama", 0, rslora=True)
    gen_dora(out, out, "gpt2", 6)
    # LoRA dropout (p 0.25) with peft's masks replayed in tuna: DoRA (peft's DoraLinearVariant adds
    # (g-1)*W*drop(x) + g*s*B*A*drop(x) to W*x: the base product of the dropped input) and plain LoRA
    gen_dora(out, out, "llama", 0, dropout=0.25)
    gen_dora(out, out, "gpt2", 6, dropout=0.25)
    gen_dora(out, out, "llama", 0, dropout=0.25, dora=False)
    for ai, arch in enumerate(("llama", "gpt2")):
        gen_neftune(out, out, arch, ai)
        gen_smooth(out, out, arch, ai)
        gen_dft(out, out, arch, ai)
        gen_eaft(out, out, arch, ai)


if __name__ == "__main__":
    main()
