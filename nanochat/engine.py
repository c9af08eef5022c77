"""Inference helpers on top of the model: generation from a prompt.

For now: plain greedy continuation with full recompute, used to print progress samples during
and after pretraining. (KV-cache decoding, sampling and tool use build on gpt.py's KVCache.)
"""

from __future__ import annotations

import contextlib

import torch

# prompts whose right continuation a base model learns early: printed as progress samples
SAMPLE_PROMPTS = (
    "The capital of France is",
    "The chemical symbol of gold is",
    "If yesterday was Friday, then tomorrow will be",
    "The opposite of hot is",
    "The planets of the solar system are:",
)


@torch.no_grad()
def greedy_continuation(model, tokenizer, prompt: str, max_new_tokens: int, autocast=None) -> str:
    """Continue `prompt` greedily for up to max_new_tokens, stopping at <|bos|> (a new document)."""
    device = next(model.parameters()).device
    ids = tokenizer.encode(prompt, prepend="<|bos|>")
    x = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
    for _ in range(max_new_tokens):
        with autocast if autocast is not None else contextlib.nullcontext():
            logits = model(x[:, -model.config.sequence_len :])  # (1, T, V)
        nxt = logits[:, -1].argmax(dim=-1, keepdim=True)  # (1, 1)
        if nxt.item() == tokenizer.bos_token_id:
            break
        x = torch.cat([x, nxt], dim=1)  # (1, T+1)
    return tokenizer.decode(x[0, len(ids) :].tolist())
