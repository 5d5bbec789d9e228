#!/usr/bin/env python3
"""Generate peft reference numbers for tuna's prompt tuning and P-tuning v1.

    /opt/tuna-venv/bin/python tests/gen_prompt_fixtures.py tests/fixtures

Reads the fp32 tiny random checkpoints tests/fixtures/<arch>/ (tests/gen_fixtures.py) and the
inputs of tests/gen_train_fixtures.py (same ids, labels and prompt mask), and writes
tests/fixtures/prompt/:
    <arch>_prompt.safetensors      PROMPT_TUNING, 4 virtual tokens (llama, qwen2, gpt2)
    <arch>_ptv1_mlp.safetensors    P_TUNING, MLP encoder, encoder_hidden_size 8 (llama, gpt2)
    <arch>_ptv1_lstm.safetensors   P_TUNING, LSTM encoder (2 layers, bidirectional), hidden 6 (llama)
    llama_prompt_adapter/          peft's save_pretrained of the llama prompt-tuning model
    llama_ptv1_adapter/            peft's save_pretrained of the llama P-tuning (MLP) model
Each .safetensors holds input_ids, labels, loss, "adapter.<name>" (every trainable tensor, peft's
names), "grad.<name>" (their gradients), "logits" of the real tokens (B, T, V) and
"prompt_embeddings" (what save_pretrained writes: the encoder's output, (P, C)).

Conventions verified here (asserts):
  * peft prepends the virtual token embeddings to inputs_embeds and -100 to the labels; the
    model sees one sequence of P + T positions: virtual tokens at positions 0..P-1 (GPT-2 adds
    wpe[0..P-1] to them), real tokens at P..P+T-1 (checked: explicit position_ids arange(P+T) on
    the base with the concatenated embeddings reproduce peft's logits).
  * save_pretrained writes {"prompt_embeddings": (P, C)} for both PROMPT_TUNING and P_TUNING:
    for P_TUNING the *computed* encoder output (get_prompt_embedding_to_save), not the MLP/LSTM;
    the loaded adapter (inference_mode) uses that tensor as the virtual tokens directly.
"""
import json
import os
import shutil
import sys

import torch
import transformers
from peft import PeftModel, PromptEncoderConfig, PromptTuningConfig, get_peft_model

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_train_fixtures import ARCHS, B, LABELS_DOC, T, base_meta, io_tensors, load, make_inputs, manual_loss, save_st  # noqa: E402

N_VIRT = 4


def build(fix_dir, arch, kind):
    base = load(fix_dir, arch)
    if kind == "prompt":
        cfg = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=N_VIRT)
    elif kind == "ptv1_mlp":
        cfg = PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=N_VIRT, encoder_hidden_size=8,
                                  encoder_reparameterization_type="MLP")
    else:
        cfg = PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=N_VIRT, encoder_hidden_size=6,
                                  encoder_reparameterization_type="LSTM")
    return get_peft_model(base, cfg), cfg


def gen(fix_dir, out_dir, arch, ai, kind):
    model, cfg = build(fix_dir, arch, kind)
    seed = 7000 + ai + {"prompt": 0, "ptv1_mlp": 100, "ptv1_lstm": 200}[kind]
    gen_ = torch.Generator().manual_seed(seed)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    with torch.no_grad():
        for n, p in trainable:
            assert n.startswith("prompt_encoder.default."), n
            p.copy_(0.5 * torch.randn(p.shape, generator=gen_))
    model.train()
    V = model.config.vocab_size
    ids, labels = make_inputs(ai, V)
    out = model(input_ids=ids, labels=labels)
    assert list(out.logits.shape) == [B, N_VIRT + T, V], out.logits.shape
    logits = out.logits[:, N_VIRT:].detach().float()
    # the loss is over the real tokens only (peft prepends -100 labels)
    assert abs(out.loss.item() - manual_loss(logits, labels).item()) < 1e-5
    out.loss.backward()

    with torch.no_grad():
        base_m = model.get_base_model()
        emb = model.get_prompt_embedding_to_save("default")  # (P, C)
        assert list(emb.shape) == [N_VIRT, model.config.hidden_size]
        x = torch.cat([emb[None].expand(B, -1, -1), base_m.get_input_embeddings()(ids)], 1)
        pos = torch.arange(N_VIRT + T)[None].expand(B, -1)
        l2 = base_m(inputs_embeds=x, position_ids=pos).logits[:, N_VIRT:]
        assert torch.allclose(l2, logits, atol=1e-5), (l2 - logits).abs().max()
        effect = (logits - base_m(input_ids=ids).logits).abs().max().item()
        assert effect > 1e-2, effect

    tensors = io_tensors(ids, labels, out.loss)
    tensors["logits"] = logits
    tensors["prompt_embeddings"] = emb.detach().clone()
    params = {}
    for n, p in trainable:
        short = n
        assert p.grad is not None and p.grad.abs().max() > 0, n
        tensors["adapter." + short] = p.detach().clone()
        tensors["grad." + short] = p.grad.detach().clone()
        params[short] = list(p.shape)
    meta = base_meta()
    meta.update(arch=arch, kind=kind, labels=LABELS_DOC, num_virtual_tokens=str(N_VIRT),
                peft_type=str(cfg.peft_type.value),
                encoder=str(getattr(cfg, "encoder_reparameterization_type", "")),
                encoder_hidden_size=str(getattr(cfg, "encoder_hidden_size", "")),
                encoder_num_layers=str(getattr(cfg, "encoder_num_layers", "")),
                init=f"every trainable tensor 0.5*randn (seed {seed})",
                positions=f"virtual tokens at 0..{N_VIRT - 1}, real tokens at {N_VIRT}..{N_VIRT + T - 1}",
                logits="the real tokens' logits (B, T, V) of the training forward",
                prompt_embeddings="get_prompt_embedding_to_save: what save_pretrained writes",
                max_abs_logit_effect=f"{effect:.4f}", params=json.dumps(params),
                generator="tests/gen_prompt_fixtures.py")
    save_st(tensors, os.path.join(out_dir, f"{arch}_{kind}.safetensors"), meta)

    if arch == "llama" and kind in ("prompt", "ptv1_mlp"):
        d = os.path.join(out_dir, f"llama_{'prompt' if kind == 'prompt' else 'ptv1'}_adapter")
        shutil.rmtree(d, ignore_errors=True)
        model.save_pretrained(d)
        for f in os.listdir(d):
            if f not in ("adapter_config.json", "adapter_model.safetensors"):
                os.remove(os.path.join(d, f))
        # peft's reload (inference mode) gives the same logits from prompt_embeddings alone
        re = PeftModel.from_pretrained(load(fix_dir, arch), d)
        re.eval()
        with torch.no_grad():
            l4 = re(input_ids=ids).logits[:, N_VIRT:]
        assert torch.allclose(l4, logits, atol=1e-5), (l4 - logits).abs().max()
    return out.loss.item(), len(trainable)


def main():
    fix_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    out_dir = os.path.join(fix_dir, "prompt")
    os.makedirs(out_dir, exist_ok=True)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.utils.logging.set_verbosity_error()
    cases = [("llama", "prompt"), ("qwen2", "prompt"), ("gpt2", "prompt"), ("llama", "ptv1_mlp"),
             ("gpt2", "ptv1_mlp"), ("llama", "ptv1_lstm")]
    for arch, kind in cases:
        loss, n = gen(fix_dir, out_dir, arch, ARCHS.index(arch), kind)
        print(f"{arch}_{kind}: loss {loss:.5f}, {n} trainable tensors")


if __name__ == "__main__":
    main()
