#!/usr/bin/env python3
"""Generate PyTorch/transformers/peft reference numbers for tuna's training code.

    /opt/tuna-venv/bin/python tests/gen_train_fixtures.py tests/fixtures

Reads the fp32 checkpoints tests/fixtures/<arch>/ made by tests/gen_fixtures.py and writes
tests/fixtures/train/ (see tests/fixtures/train/README.md for every tensor name and shape):
    <arch>_full.safetensors          full fine-tuning: loss + grad of every parameter (7 archs)
    <arch>_lora.safetensors          LoRA r=4 alpha=8: adapter weights + their grads (llama, qwen2, qwen3, gpt2)
    llama_lora_rslora.safetensors    same with use_rslora=True
    llama_lora_adapter/              a real PEFT adapter dir (adapter_config.json, adapter_model.safetensors)
    llama_lora_logits.safetensors    logits of base + that adapter (eval mode)
    <arch>_lora_tokens.safetensors   LoRA r=4 + trainable_token_indices (llama, llama_tied, gpt2)
    <arch>_prefix.safetensors        prefix tuning, 3 virtual tokens (llama, qwen2)
    llama_prefix_proj.safetensors    prefix tuning with the 2-layer MLP reparametrisation
    adamw.safetensors                AdamW + transformers LR schedules + grad-norm clipping
Deterministic: fixed seeds, CPU, one thread, safetensors headers written by hand (sorted keys),
so reruns with the pinned versions give byte-identical files.

Conventions verified here (asserts), see README.md:
  * loss = HF ForCausalLMLoss with num_items_in_batch=None: labels shifted left by one inside the
    model, cross_entropy(reduction="mean", ignore_index=-100) over the whole batch, i.e.
    sum of token NLLs / number of non-ignored shifted targets (not a per-row mean).
  * LoRA: y = base(x) + scaling * B(A(x)), scaling = alpha/r (2.0) or alpha/sqrt(r) with rsLoRA
    (4.0). lora_A.weight is [r, in], lora_B.weight [out, r] for nn.Linear AND for GPT-2 Conv1D
    with fan_in_fan_out=True (that flag only transposes the merged delta B@A to Conv1D's [in, out]).
  * Prefix tuning (peft 0.21, transformers 5): the prefix is a per-layer KV cache of length P;
    real tokens get positions P..P+T-1 (cache_position continues after the cache), prefix keys
    are used as stored (no RoPE), every real token attends to all P prefix slots + causal over
    real tokens; GQA: the prefix has num_key_value_heads heads of head_dim each.
"""
import json
import math
import os
import shutil
import struct
import sys

import numpy as np
import peft
import safetensors
import torch
import transformers
from peft import LoraConfig, PeftModel, PrefixTuningConfig, get_peft_model, get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, DynamicCache
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

B, T = 2, 10
ARCHS = ["llama", "llama_tied", "llama3", "mistral", "qwen2", "qwen3", "gpt2"]
# Prompt mask: the first MASK[b] label positions of row b are -100.
MASK = [3, 5]
LABELS_DOC = ("labels = input_ids.clone(); labels[0, :3] = -100; labels[1, :5] = -100 (prompt mask); "
              "HF shifts internally: logits[:, t] predicts labels[:, t+1]; 7 + 5 = 12 valid targets")
# GPT-2 fixture config.json has attn/embd/resid_pdrop 0.1 (GPT2Config defaults): override to 0.
NO_DROPOUT = {"gpt2": dict(attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0, summary_first_dropout=0.0)}
LORA_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}
N_VIRT = 3


def save_st(tensors, path, metadata):
    """As tests/gen_fixtures.py: safetensors.save_file orders metadata keys randomly, so write
    the format by hand (tensor names sorted) to get byte-identical files."""
    header, blobs, off = {"__metadata__": metadata}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous()
        b = t.numpy().tobytes()
        header[name] = {"dtype": {torch.int32: "I32", torch.float32: "F32"}[t.dtype],
                        "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    back = load_file(path)
    assert sorted(back) == sorted(tensors)
    assert all(torch.equal(back[k], tensors[k].detach()) for k in tensors)


def base_meta():
    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "safetensors": safetensors.__version__, "numpy": np.__version__,
            "generator": "tests/gen_train_fixtures.py"}


def load(fix_dir, arch):
    model = AutoModelForCausalLM.from_pretrained(os.path.join(fix_dir, arch), dtype=torch.float32,
                                                 attn_implementation="eager", **NO_DROPOUT.get(arch, {}))
    cfg = model.config
    for k in ("attention_dropout", "attn_pdrop", "embd_pdrop", "resid_pdrop", "hidden_dropout"):
        assert getattr(cfg, k, 0.0) == 0.0, (arch, k)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            assert m.p == 0.0, (arch, m)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    model.train()
    return model


def make_inputs(arch_index, vocab):
    gen = torch.Generator().manual_seed(3000 + arch_index)
    ids = torch.randint(0, vocab, (B, T), generator=gen)
    labels = ids.clone()
    for b, n in enumerate(MASK):
        labels[b, :n] = -100
    return ids, labels


def manual_loss(logits, labels):
    """sum of NLL over non-ignored shifted targets / their count."""
    lp = torch.log_softmax(logits[:, :-1].double(), -1)
    tgt = labels[:, 1:]
    valid = tgt != -100
    nll = -lp.gather(-1, tgt.clamp(min=0)[..., None])[..., 0]
    return (nll * valid).sum() / valid.sum()


def io_tensors(ids, labels, loss):
    return {"input_ids": ids.to(torch.int32), "labels": labels.to(torch.int32),
            "loss": loss.detach().float().reshape(1)}


# ---------------------------------------------------------------------------------------------
# 1. full fine-tuning
def gen_full(fix_dir, out_dir, arch, ai):
    torch.manual_seed(0)
    model = load(fix_dir, arch)
    ids, labels = make_inputs(ai, model.config.vocab_size)
    out = model(input_ids=ids, labels=labels)
    ref = manual_loss(out.logits, labels)
    assert abs(out.loss.item() - ref.item()) < 1e-5, (out.loss.item(), ref.item())
    out.loss.backward()
    tensors = io_tensors(ids, labels, out.loss)
    names = []
    for name, p in model.named_parameters():  # tied weights appear once (remove_duplicate)
        assert p.grad is not None, name
        assert p.grad.abs().max() > 0, f"{arch}: zero grad for {name}"
        tensors["grad." + name] = p.grad.detach().clone()
        names.append(name)
    meta = base_meta()
    meta.update(arch=arch, labels=LABELS_DOC, n_valid_targets=str(int((labels[:, 1:] != -100).sum())),
                loss="HF ForCausalLMLoss, num_items_in_batch=None: mean CE over non-ignored shifted targets",
                dropout="all 0" + (" (attn/embd/resid_pdrop overridden from 0.1 at load)" if arch in NO_DROPOUT
                                   else ""),
                params=json.dumps(names))
    save_st(tensors, os.path.join(out_dir, f"{arch}_full.safetensors"), meta)
    return out.loss.item(), len(names)


# ---------------------------------------------------------------------------------------------
# 2. LoRA
def lora_model(fix_dir, arch, rslora, seed):
    base = load(fix_dir, arch)
    fan = arch == "gpt2"
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LORA_TARGETS[arch], bias="none",
                     fan_in_fan_out=fan, use_rslora=rslora, task_type="CAUSAL_LM")
    torch.manual_seed(seed)  # lora_A init (kaiming-uniform) draws from the global RNG
    model = get_peft_model(base, cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    scalings = set()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
        for m in model.modules():
            if hasattr(m, "lora_A") and "default" in getattr(m, "scaling", {}):
                scalings.add(m.scaling["default"])
    assert len(scalings) == 1, scalings
    scaling = scalings.pop()
    expect = 8 / math.sqrt(4) if rslora else 8 / 4
    assert scaling == expect, (scaling, expect)
    return model, cfg, scaling


def peft_grads(model, ids, labels, nonzero=True):
    """Forward + backward of a peft model in train mode; returns (loss, state dict, tensors) where
    tensors holds the inputs, the loss, and adapter.NAME / grad.NAME for every saved tensor."""
    model.train()
    out = model(input_ids=ids, labels=labels)
    assert abs(out.loss.item() - manual_loss(out.logits, labels).item()) < 1e-5
    out.loss.backward()
    sd = get_peft_model_state_dict(model)
    by_ptr = {p.data_ptr(): (n, p) for n, p in model.named_parameters() if p.requires_grad}
    assert len(sd) == len(by_ptr), (len(sd), len(by_ptr))
    tensors = io_tensors(ids, labels, out.loss)
    for name, t in sd.items():
        _, p = by_ptr[t.data_ptr()]
        assert p.grad is not None and (not nonzero or p.grad.abs().max() > 0), name
        tensors["adapter." + name] = t.detach().clone()
        tensors["grad." + name] = p.grad.detach().clone()
    return out.loss, sd, tensors


def gen_lora(fix_dir, out_dir, arch, ai, rslora=False):
    seed = 4000 + ai + (100 if rslora else 0)
    model, cfg, scaling = lora_model(fix_dir, arch, rslora, seed)
    ids, labels = make_inputs(ai, model.config.vocab_size)
    loss, sd, tensors = peft_grads(model, ids, labels)
    shapes = {name: list(t.shape) for name, t in sd.items()}
    if arch == "gpt2":
        # fan_in_fan_out only affects merging: lora_A/B keep nn.Linear layout ([r, in], [out, r]).
        a = sd["base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"]
        b = sd["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"]
        assert list(a.shape) == [4, 64] and list(b.shape) == [192, 4]
        check_gpt2_lora_forward(model, scaling)
    meta = base_meta()
    meta.update(arch=arch, labels=LABELS_DOC, r="4", lora_alpha="8", lora_dropout="0.0",
                use_rslora=str(rslora).lower(), target_modules=json.dumps(LORA_TARGETS[arch]),
                fan_in_fan_out=str(cfg.fan_in_fan_out).lower(), bias="none", scaling=repr(scaling),
                scaling_rule="alpha/sqrt(r)" if rslora else "alpha/r",
                init="lora_A: peft default (kaiming-uniform, torch.manual_seed(%d)); lora_B: 0.02*randn" % seed,
                adapter_shapes=json.dumps(shapes))
    name = f"{arch}_lora_rslora" if rslora else f"{arch}_lora"
    save_st(tensors, os.path.join(out_dir, name + ".safetensors"), meta)
    if arch == "llama" and not rslora:
        save_llama_adapter(model, out_dir, ids, fix_dir)
    return loss.item(), len(sd), scaling


def gen_lora_tokens(fix_dir, out_dir, arch, ai):
    """LoRA r=4 on q_proj,v_proj plus peft's trainable_token_indices (TrainableTokens): the
    rows of the listed ids in the input embedding are replaced by trainable values (and in the
    LM head too when it is tied to the embedding). The values start as the base rows plus
    0.02*randn so that the forward differs from the base model."""
    base = load(fix_dir, arch)
    ids, labels = make_inputs(ai, base.config.vocab_size)
    # an id that is an input and a target, one that is only an input, one that never occurs
    present = sorted(set(ids.flatten().tolist()))
    absent = next(i for i in range(base.config.vocab_size) if i not in present)
    tok = sorted({int(ids[0, 6]), int(ids[1, 0]), absent})
    fan = arch == "gpt2"
    targets = ["c_attn"] if arch == "gpt2" else ["q_proj", "v_proj"]
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets, bias="none",
                     fan_in_fan_out=fan, trainable_token_indices=tok, task_type="CAUSAL_LM")
    seed = 4500 + ai
    torch.manual_seed(seed)
    model = get_peft_model(base, cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name or "trainable_tokens_delta" in name:
                p.add_(0.02 * torch.randn(p.shape, generator=gen))
    loss, sd, tensors = peft_grads(model, ids, labels, nonzero=False)
    delta_name = next((name for name in sd if "trainable_tokens_delta" in name), None)
    assert delta_name, list(sd)
    tied = bool(getattr(base.config, "tie_word_embeddings", False))
    # the never-seen id's row gets a gradient only through a tied LM head
    g = tensors["grad." + delta_name]
    assert (g[tok.index(absent)].abs().max() > 0) == tied, (arch, tied)
    meta = base_meta()
    meta.update(arch=arch, labels=LABELS_DOC, r="4", lora_alpha="8", lora_dropout="0.0",
                target_modules=json.dumps(targets), trainable_token_indices=",".join(map(str, tok)),
                tied=str(tied).lower(), delta_tensor=delta_name,
                init="lora_A: peft default (torch.manual_seed(%d)); lora_B and the token rows: += 0.02*randn" % seed)
    save_st(tensors, os.path.join(out_dir, f"{arch}_lora_tokens.safetensors"), meta)
    return loss.item(), tok, tied


def check_gpt2_lora_forward(model, scaling):
    """y = conv1d(x) + scaling * (x @ A^T) @ B^T with A [r, in], B [out, r]."""
    mod = model.base_model.model.transformer.h[0].attn.c_attn
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        y = mod(x)
        w = mod.base_layer.weight  # Conv1D [in, out]
        ref = x @ w + mod.base_layer.bias + scaling * (x @ mod.lora_A["default"].weight.T) @ mod.lora_B["default"].weight.T
    assert torch.allclose(y, ref, atol=1e-5)


def save_llama_adapter(model, out_dir, ids, fix_dir):
    d = os.path.join(out_dir, "llama_lora_adapter")
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d)
    for f in os.listdir(d):  # keep only the two adapter files (drop the generated model card)
        if f not in ("adapter_config.json", "adapter_model.safetensors"):
            os.remove(os.path.join(d, f))
    # peft keeps target_modules as a set, so its order in the JSON depends on PYTHONHASHSEED: sort it
    # (same format as peft: indent 2, sorted keys, no trailing newline)
    cfg_path = os.path.join(d, "adapter_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["target_modules"] = sorted(cfg["target_modules"])
    with open(cfg_path, "w") as f:
        f.write(json.dumps(cfg, indent=2, sort_keys=True))
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    # the saved adapter must reproduce them on a fresh base model
    base = AutoModelForCausalLM.from_pretrained(os.path.join(fix_dir, "llama"), dtype=torch.float32,
                                                attn_implementation="eager")
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
        re = PeftModel.from_pretrained(base, d).eval()
        again = re(input_ids=ids).logits
    assert torch.allclose(again, logits, atol=1e-5)
    diff = (logits - base_logits).abs().max().item()
    assert diff > 1e-3, f"adapter barely changes the logits ({diff})"
    meta = base_meta()
    meta.update(adapter="tests/fixtures/train/llama_lora_adapter", base="tests/fixtures/llama",
                mode="eval, adapter not merged", max_abs_diff_vs_base=f"{diff:.4f}")
    save_st({"input_ids": ids.to(torch.int32), "logits": logits},
            os.path.join(out_dir, "llama_lora_logits.safetensors"), meta)


# ---------------------------------------------------------------------------------------------
# 3. prefix tuning
def prefix_cache_tensor(model):
    """The DynamicCache peft builds for batch size 1, as [L, 2, KVH, P, HS]."""
    cache = model.get_prompt(1)
    assert isinstance(cache, DynamicCache)
    return torch.stack([torch.stack([lay.keys[0], lay.values[0]]) for lay in cache.layers]).detach()


def manual_prefix_forward(model, ids, pkv, rope_prefix=False):
    """Independent eager Llama/Qwen2 forward with a prefix KV cache pkv [L, 2, KVH, P, HS]:
    real tokens at positions P..P+T-1, prefix keys not rotated, every query sees all P prefix
    slots + causal real tokens, GQA by repeat_interleave over kv heads."""
    m = model.get_base_model().model
    lm_head = model.get_base_model().lm_head
    Bn, Tn = ids.shape
    L, _, KVH, P, HS = pkv.shape
    x = m.embed_tokens(ids)
    pos = torch.arange(P, P + Tn)[None].expand(Bn, -1)
    cos, sin = m.rotary_emb(x, pos)
    allowed = torch.arange(P + Tn)[None, :] <= (P + torch.arange(Tn))[:, None]  # [T, P+T]
    for li, layer in enumerate(m.layers):
        a = layer.self_attn
        h = layer.input_layernorm(x)
        q = a.q_proj(h).view(Bn, Tn, -1, HS).transpose(1, 2)
        k = a.k_proj(h).view(Bn, Tn, -1, HS).transpose(1, 2)
        v = a.v_proj(h).view(Bn, Tn, -1, HS).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        pk, pv = pkv[li, 0][None].expand(Bn, -1, -1, -1), pkv[li, 1][None].expand(Bn, -1, -1, -1)
        if rope_prefix:  # the "wrong" variant: rotate the prefix keys with positions 0..P-1
            c0, s0 = m.rotary_emb(x, torch.arange(P)[None].expand(Bn, -1))
            pk, _ = apply_rotary_pos_emb(pk, pk, c0, s0)
        K = torch.cat([pk, k], 2).repeat_interleave(q.shape[1] // KVH, dim=1)
        V = torch.cat([pv, v], 2).repeat_interleave(q.shape[1] // KVH, dim=1)
        s = (q @ K.transpose(-1, -2)) / math.sqrt(HS)
        s = s.masked_fill(~allowed, float("-inf"))
        o = (s.softmax(-1) @ V).transpose(1, 2).reshape(Bn, Tn, -1)
        x = x + a.o_proj(o)
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return lm_head(m.norm(x))


def gen_prefix(fix_dir, out_dir, arch, ai, projection=False):
    base = load(fix_dir, arch)
    cfg_base = base.config
    kw = dict(prefix_projection=True, encoder_hidden_size=16) if projection else dict(prefix_projection=False)
    cfg = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=N_VIRT, **kw)
    model = get_peft_model(base, cfg)
    pc = model.peft_config["default"]
    L, H, KVH = cfg_base.num_hidden_layers, cfg_base.num_attention_heads, cfg_base.num_key_value_heads
    HS = getattr(cfg_base, "head_dim", None) or cfg_base.hidden_size // H
    # GQA: peft sizes the prefix for the kv heads, token_dim = head_dim * num_key_value_heads
    assert pc.num_attention_heads == KVH and pc.token_dim == KVH * HS and pc.num_layers == L, pc
    if projection:
        assert pc.encoder_hidden_size == 16
    seed = 5000 + ai + (100 if projection else 0)
    gen = torch.Generator().manual_seed(seed)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    with torch.no_grad():
        for n, p in trainable:
            assert n.startswith("prompt_encoder.default."), n
            p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    model.train()
    ids, labels = make_inputs(ai, cfg_base.vocab_size)

    # capture d loss / d (prefix encoder output), summed over the batch = grad of "prompt_embeddings"
    enc_out = []
    def keep(mod, inp, o):  # must return None (a return value would replace the output)
        o.retain_grad()
        enc_out.append(o)

    hook = model.prompt_encoder["default"].register_forward_hook(keep)
    out = model(input_ids=ids, labels=labels)
    hook.remove()
    assert len(enc_out) == 1
    assert abs(out.loss.item() - manual_loss(out.logits, labels).item()) < 1e-5
    out.loss.backward()

    pkv = prefix_cache_tensor(model)
    assert list(pkv.shape) == [L, 2, KVH, N_VIRT, HS]
    sd = get_peft_model_state_dict(model)
    assert list(sd) == ["prompt_embeddings"], list(sd)
    emb = sd["prompt_embeddings"]  # [P, L*2*KVH*HS]
    assert list(emb.shape) == [N_VIRT, L * 2 * KVH * HS]
    # layout: emb[p].view(L, 2, KVH, HS) == pkv[:, :, :, p, :]
    assert torch.equal(emb.view(N_VIRT, L, 2, KVH, HS).permute(1, 2, 3, 0, 4), pkv)
    g_emb = enc_out[0].grad.sum(0)
    if not projection:
        w = model.prompt_encoder["default"].embedding.weight
        assert torch.allclose(g_emb, w.grad, atol=1e-7)

    with torch.no_grad():
        logits = out.logits.detach().float()
        # positions: explicit position_ids on the base model with the same cache
        base_m = model.get_base_model()
        pos_P = torch.arange(N_VIRT, N_VIRT + T)[None].expand(B, -1)
        pos_0 = torch.arange(T)[None].expand(B, -1)
        l_P = base_m(input_ids=ids, past_key_values=model.get_prompt(B), position_ids=pos_P).logits
        l_0 = base_m(input_ids=ids, past_key_values=model.get_prompt(B), position_ids=pos_0).logits
        assert torch.allclose(l_P, logits, atol=1e-5), "positions should be P..P+T-1"
        assert not torch.allclose(l_0, logits, atol=1e-3)
        # prefix keys are stored unrotated and attended as-is
        cache = model.get_prompt(B)
        base_m(input_ids=ids, past_key_values=cache)
        for li, lay in enumerate(cache.layers):
            assert torch.allclose(lay.keys[0, :, :N_VIRT], pkv[li, 0], atol=1e-6)  # B=2 vs B=1 matmul
        man = manual_prefix_forward(model, ids, pkv)
        assert torch.allclose(man, logits, atol=1e-4), (man - logits).abs().max()
        man_rope = manual_prefix_forward(model, ids, pkv, rope_prefix=True)
        assert not torch.allclose(man_rope, logits, atol=1e-3)
        # the explicit attention mask peft builds (ones for the prefix + the user's mask) changes nothing
        l_mask = model(input_ids=ids, attention_mask=torch.ones(B, T, dtype=torch.long)).logits
        assert torch.allclose(l_mask, logits, atol=1e-5)
        base_logits = base_m(input_ids=ids).logits
    prefix_effect = (logits - base_logits).abs().max().item()
    assert prefix_effect > 1e-2, prefix_effect

    tensors = io_tensors(ids, labels, out.loss)
    tensors.update({"adapter.prompt_embeddings": emb.detach().clone(), "grad.prompt_embeddings": g_emb.detach().clone(),
                    "past_key_values": pkv, "logits": logits})
    params = {}
    if projection:
        for n, p in trainable:
            assert p.grad is not None and p.grad.abs().max() > 0, n
            tensors["adapter." + n] = p.detach().clone()
            tensors["grad." + n] = p.grad.detach().clone()
            params[n] = list(p.shape)
    meta = base_meta()
    meta.update(
        arch=arch, labels=LABELS_DOC, num_virtual_tokens=str(N_VIRT), prefix_projection=str(projection).lower(),
        encoder_hidden_size=str(pc.encoder_hidden_size), peft_num_layers=str(pc.num_layers),
        peft_token_dim=str(pc.token_dim), peft_num_attention_heads=str(pc.num_attention_heads),
        gqa=f"peft sets num_attention_heads=num_key_value_heads={KVH}, token_dim=head_dim*num_key_value_heads="
            f"{KVH}*{HS}={pc.token_dim} (model has {H} query heads)",
        kv_layout="prompt_embeddings [P, L*2*KVH*HS]; row p viewed as [L, 2(key,value), KVH, HS]; "
                  "past_key_values[l, 0|1, h, p, :] = prompt_embeddings[p].view(L, 2, KVH, HS)[l, 0|1, h]",
        positions=f"real tokens get position_ids P..P+T-1 (= {N_VIRT}..{N_VIRT + T - 1}); cache_position continues "
                  "after the prefix cache; verified: explicit position_ids=arange(P,P+T) reproduces peft's logits, "
                  "arange(0,T) does not",
        rope="prefix keys are NOT rotated: stored in the cache as-is, only the real tokens' keys get RoPE "
             "(verified: cache keys[:P] == prefix, manual forward without prefix RoPE matches, with RoPE(0..P-1) not)",
        attention_mask="peft passes attention_mask=None if none given (here) -> causal mask with past length P: "
                       "query t sees all P prefix slots and real tokens <= t; if a mask [B,T] is given peft "
                       "prepends ones [B,P] (same result here)",
        init=f"all prefix parameters 0.5*randn (seed {seed})",
        prompt_embeddings_grad="grad.prompt_embeddings = d loss / d prefix-encoder output, summed over the batch"
                               + (" (== grad of embedding.weight)" if not projection else ""),
        max_abs_logit_effect_of_prefix=f"{prefix_effect:.4f}",
        params=json.dumps(params))
    name = f"{arch}_prefix_proj" if projection else f"{arch}_prefix"
    save_st(tensors, os.path.join(out_dir, name + ".safetensors"), meta)
    return out.loss.item(), pc


# ---------------------------------------------------------------------------------------------
# 4. optimizer, schedules, clipping
def gen_adamw(out_dir):
    N, N2, STEPS = 1000, 100, 20
    LR, BETAS, EPS, WD = 1e-3, (0.9, 0.999), 1e-8, 0.01
    gen = torch.Generator().manual_seed(6000)
    p0, p0n = torch.randn(N, generator=gen), torch.randn(N2, generator=gen)
    G, Gn = 0.1 * torch.randn(STEPS, N, generator=gen), 0.1 * torch.randn(STEPS, N2, generator=gen)
    p, pn = torch.nn.Parameter(p0.clone()), torch.nn.Parameter(p0n.clone())
    opt = torch.optim.AdamW([{"params": [p], "weight_decay": WD}, {"params": [pn], "weight_decay": 0.0}],
                            lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, foreach=False)
    sched = transformers.get_cosine_schedule_with_warmup(opt, num_warmup_steps=3, num_training_steps=STEPS)
    lrs, P, Pn = [], [], []
    for s in range(STEPS):
        lrs.append(opt.param_groups[0]["lr"])
        assert opt.param_groups[1]["lr"] == lrs[-1]
        p.grad, pn.grad = G[s].clone(), Gn[s].clone()
        opt.step()
        sched.step()
        P.append(p.detach().clone())
        Pn.append(pn.detach().clone())
    lrs_t = torch.tensor(lrs, dtype=torch.float32)
    P, Pn = torch.stack(P), torch.stack(Pn)
    # independent float64 reimplementation of torch.optim.AdamW
    for x0, GG, wd, out in ((p0, G, WD, P), (p0n, Gn, 0.0, Pn)):
        x, m, v = x0.double(), torch.zeros(x0.shape, dtype=torch.float64), torch.zeros(x0.shape, dtype=torch.float64)
        for s in range(STEPS):
            lr, g, t = lrs[s], GG[s].double(), s + 1
            x = x * (1 - lr * wd)
            m = BETAS[0] * m + (1 - BETAS[0]) * g
            v = BETAS[1] * v + (1 - BETAS[1]) * g * g
            denom = v.sqrt() / math.sqrt(1 - BETAS[1] ** t) + EPS
            x = x - lr / (1 - BETAS[0] ** t) * m / denom
            assert (x - out[s].double()).abs().max() < 2e-6, (s, (x - out[s].double()).abs().max())
    tensors = {"p0": p0, "G": G, "lrs": lrs_t, "P": P, "p0_nowd": p0n, "G_nowd": Gn, "P_nowd": Pn}

    # schedules: multiplier at step 0..29 (base lr 1.0)
    W, TOT = 5, 30
    makers = {
        "constant": lambda o: transformers.get_constant_schedule(o),
        "constant_with_warmup": lambda o: transformers.get_constant_schedule_with_warmup(o, num_warmup_steps=W),
        "linear": lambda o: transformers.get_linear_schedule_with_warmup(o, num_warmup_steps=W,
                                                                         num_training_steps=TOT),
        "cosine": lambda o: transformers.get_cosine_schedule_with_warmup(o, num_warmup_steps=W,
                                                                         num_training_steps=TOT),
    }
    for name, mk in makers.items():
        o = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sc = mk(o)
        vals = []
        for _ in range(TOT):
            vals.append(o.param_groups[0]["lr"])
            o.step()
            sc.step()
        tensors["sched." + name] = torch.tensor(vals, dtype=torch.float32)
    c = tensors["sched.cosine"]
    ref_cos = [s / W if s < W else 0.5 * (1 + math.cos(math.pi * (s - W) / (TOT - W))) for s in range(TOT)]
    assert torch.allclose(c, torch.tensor(ref_cos, dtype=torch.float32), atol=1e-6)
    ref_lin = [s / W if s < W else max(0.0, (TOT - s) / (TOT - W)) for s in range(TOT)]
    assert torch.allclose(tensors["sched.linear"], torch.tensor(ref_lin, dtype=torch.float32), atol=1e-6)

    # global-norm clipping of G[0]
    MAXN = 0.5
    q = torch.nn.Parameter(torch.zeros(N))
    q.grad = G[0].clone()
    total = torch.nn.utils.clip_grad_norm_([q], max_norm=MAXN)
    coef = min(1.0, MAXN / (G[0].double().norm().item() + 1e-6))
    assert torch.allclose(q.grad, (G[0].double() * coef).float(), atol=1e-7)
    tensors["clip.grad"] = q.grad.detach().clone()
    tensors["clip.total_norm"] = total.detach().float().reshape(1)
    meta = base_meta()
    meta.update(
        optimizer="torch.optim.AdamW(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, foreach=False); "
                  "group 0 = p0 (weight_decay 0.01), group 1 = p0_nowd (weight_decay 0.0)",
        schedule="transformers.get_cosine_schedule_with_warmup(num_warmup_steps=3, num_training_steps=20); "
                 "lrs[s] = lr used by the s-th opt.step() (lrs[0] = 0), then sched.step()",
        adamw_math="p *= 1 - lr*wd; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2; "
                   "p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps), t = 1-based step",
        schedules=f"sched.<name>[s] = LR multiplier at step s (0..{TOT - 1}), warmup {W}, total {TOT}, base lr 1.0",
        clip=f"torch.nn.utils.clip_grad_norm_(max_norm={MAXN}, norm_type=2) on G[0]: "
             "total = ||g||_2, g *= min(1, max_norm / (total + 1e-6))")
    save_st(tensors, os.path.join(out_dir, "adamw.safetensors"), meta)
    return lrs_t, total.item()


def main():
    fix_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    out_dir = os.path.join(fix_dir, "train")
    os.makedirs(out_dir, exist_ok=True)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")
    for ai, arch in enumerate(ARCHS):
        loss, n = gen_full(fix_dir, out_dir, arch, ai)
        print(f"{arch}_full: loss {loss:.5f}, {n} parameter grads")
    for ai, arch in enumerate(ARCHS):
        if arch in LORA_TARGETS:
            for rs in ([False, True] if arch == "llama" else [False]):
                loss, n, sc = gen_lora(fix_dir, out_dir, arch, ai, rslora=rs)
                print(f"{arch}_lora{'_rslora' if rs else ''}: loss {loss:.5f}, {n} adapter tensors, scaling {sc}")
    for ai, arch in enumerate(ARCHS):
        if arch in ("llama", "llama_tied", "gpt2"):
            loss, tok, tied = gen_lora_tokens(fix_dir, out_dir, arch, ai)
            print(f"{arch}_lora_tokens: loss {loss:.5f}, trainable tokens {tok}, tied {tied}")
    for ai, arch in enumerate(ARCHS):
        if arch in ("llama", "qwen2"):
            for proj in ([False, True] if arch == "llama" else [False]):
                loss, pc = gen_prefix(fix_dir, out_dir, arch, ai, projection=proj)
                print(f"{arch}_prefix{'_proj' if proj else ''}: loss {loss:.5f}, token_dim {pc.token_dim}, "
                      f"heads {pc.num_attention_heads}")
    lrs, tn = gen_adamw(out_dir)
    print(f"adamw: lrs {[round(x, 6) for x in lrs.tolist()]}, clip total norm {tn:.4f}")
    total = 0
    for root, _, files in os.walk(out_dir):
        for f in sorted(files):
            total += os.path.getsize(os.path.join(root, f))
    print(f"total {total / 1024:.0f} KB in {out_dir}")


if __name__ == "__main__":
    main()
