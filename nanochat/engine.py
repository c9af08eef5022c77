"""Inference: KV-cache decoding, sampling (temperature, top-k, top-p) and the calculator tool.

    engine = load_engine("sft")                                    # or Engine(model, tokenizer)
    prompt = tokenizer.render_for_completion(conversation)
    for column, mask in engine.generate(prompt, num_samples=4, max_tokens=256, temperature=0.8):
        ...                                   # one token per row each step; mask 0 = forced by the tool
    results, masks = engine.generate_batch(prompt, num_samples=4)  # each row's tokens, prompt excluded

Letters: N rows (num_samples), P prompt length, V vocab size.

The prompt is prefilled once into a batch-1 cache, which is then copied into N rows, so sampling N
continuations costs one prefill. Rows decode in lockstep, one token per row per step.

Tool use: when a row samples <|python_start|>, the tokens up to <|python_end|> are decoded and given
to nanochat.calculator.evaluate; the row is then fed <|output_start|> result <|output_end|> one token
per step (mask 0) before it samples again. If the calculator refuses or fails, the result text is
"error: <reason>" (CALC_ERROR_PREFIX), so the model sees why and can carry on.

Stopping: a row finishes at <|assistant_end|> or <|bos|>; that token is yielded (mask 1), and from
then on the row yields PAD_TOKEN (-1) with mask 0 until every row is done or max_tokens steps ran.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from nanochat import calculator
from nanochat.common import autocast, torch_dtype
from nanochat.kv_cache import KVCache

# prompts whose right continuation a base model learns early: printed as progress samples
SAMPLE_PROMPTS = (
    "The capital of France is",
    "The chemical symbol of gold is",
    "If yesterday was Friday, then tomorrow will be",
    "The opposite of hot is",
    "The planets of the solar system are:",
)

PAD_TOKEN = -1  # what a finished row yields; never fed to the model
CALC_ERROR_PREFIX = "error: "  # the tool output when the calculator raises CalcError


@dataclass
class _Row:
    """Per-row decoding state: finished?, tokens forced by the tool, the expression being collected."""

    done: bool = False
    forced: deque = field(default_factory=deque)
    expression: list[int] | None = None  # not None while inside <|python_start|> ... <|python_end|>


def sample_next(
    logits: torch.Tensor,
    generator: torch.Generator,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """Next token of each row of logits (N, V) -> (N,). temperature 0 is greedy (argmax)."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)  # (N,)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (N, V) each
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens before it already cover top_p; the most likely one always stays
        drop = probs.cumsum(dim=-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)  # back to vocab order
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (N, 1) -> (N,)


def _check_options(tokens, num_samples, max_tokens, temperature, top_k, top_p) -> None:
    if not isinstance(tokens, (list, tuple)) or not tokens or not all(type(t) is int for t in tokens):
        raise ValueError("tokens must be a non-empty list of token ids (ints)")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if not isinstance(max_tokens, int) or max_tokens < 0:
        raise ValueError(f"max_tokens must be an integer >= 0, got {max_tokens!r}")
    if not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or a positive integer, got {top_k!r}")
    if top_p is not None and (not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be None or in (0, 1], got {top_p!r}")


class Engine:
    """Generates from one model and its tokenizer; holds no per-request state, so one Engine serves
    many requests (each generate call builds its own cache and generator)."""

    def __init__(self, model, tokenizer, dtype: str | None = None):
        """dtype: the compute precision (None = common.resolve_dtype's choice for the model's device:
        bf16 autocast on CUDA, the weights' own dtype elsewhere)."""
        from nanochat.common import resolve_dtype

        self.model = model
        self.tokenizer = tokenizer
        self.dtype = resolve_dtype(dtype, next(model.parameters()).device.type)
        special = tokenizer.encode_special
        self.python_start, self.python_end = special("<|python_start|>"), special("<|python_end|>")
        self.output_start, self.output_end = special("<|output_start|>"), special("<|output_end|>")
        self.stop_tokens = {special("<|assistant_end|>"), tokenizer.bos_token_id}

    def _max_positions(self) -> int:
        """How many positions the model can encode (its rotary tables; beyond them it cannot run)."""
        return self.model.cos.size(1)

    def _tool_output(self, expression_ids: list[int]) -> list[int]:
        """<|output_start|> result <|output_end|> for the expression the row wrote."""
        text = self.tokenizer.decode(expression_ids)
        try:
            result = calculator.evaluate(text)
        except calculator.CalcError as e:
            result = CALC_ERROR_PREFIX + str(e)
        return [self.output_start, *self.tokenizer.encode(result), self.output_end]

    def _step_row(self, row: _Row, sampled: int) -> tuple[int, int]:
        """The token this row emits this step and its mask, updating the row's tool/stop state."""
        if row.done:
            return PAD_TOKEN, 0
        if row.forced:
            return row.forced.popleft(), 0
        if sampled in self.stop_tokens:
            row.done = True
        elif sampled == self.python_start:
            row.expression = []
        elif sampled == self.python_end and row.expression is not None:
            row.forced.extend(self._tool_output(row.expression))
            row.expression = None
        elif row.expression is not None:
            row.expression.append(sampled)
        return sampled, 1

    def generate(
        self,
        tokens: list[int],
        *,
        num_samples: int = 1,
        max_tokens: int = 256,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 42,
    ) -> Iterator[tuple[list[int], list[int]]]:
        """Yield, per step, the next token of each of num_samples rows and their masks (1 sampled,
        0 forced by the tool or PAD_TOKEN after the row finished). Ends after max_tokens steps (clipped
        to the model's position limit) or when every row has finished.

        Options are checked here, when generate is called, not at the first step of the iterator.
        """
        _check_options(tokens, num_samples, max_tokens, temperature, top_k, top_p)
        vocab_size = self.model.config.vocab_size
        if not all(0 <= t < vocab_size for t in tokens):
            raise ValueError(f"token ids must be in [0, {vocab_size}), got {min(tokens)}..{max(tokens)}")
        limit = self._max_positions()
        if len(tokens) >= limit:
            raise ValueError(f"the prompt has {len(tokens)} tokens; the model encodes at most {limit} positions")
        max_tokens = min(max_tokens, limit - len(tokens))
        return self._decode(list(tokens), num_samples, max_tokens, temperature, top_k, top_p, seed)

    @torch.no_grad()
    def _decode(self, tokens, num_samples, max_tokens, temperature, top_k, top_p, seed):
        """The decoding loop of generate, on checked options."""
        if max_tokens == 0:
            return
        model, cfg = self.model, self.model.config
        device = next(model.parameters()).device
        # the cache holds what attention computes in: the autocast dtype, else the weights' dtype
        dtype = next(model.parameters()).dtype if self.dtype == "fp32" else torch_dtype(self.dtype)
        amp = autocast(device.type, self.dtype)
        generator = torch.Generator(device=device).manual_seed(seed)

        def cache(batch_size: int) -> KVCache:
            return KVCache(batch_size, cfg.n_kv_head, cfg.head_dim, cfg.n_layer, len(tokens) + max_tokens,
                           dtype=dtype, device=device)

        prefill = cache(1)
        ids = torch.tensor([tokens], dtype=torch.long, device=device)  # (1, P)
        with amp:
            logits = model(ids, kv_cache=prefill, last_only=True)[:, -1]  # (1, 1, V) -> (1, V)
        kv = prefill if num_samples == 1 else prefill.expand(num_samples)
        del prefill  # the batch-1 copy is no longer needed once expanded
        logits = logits.expand(num_samples, -1)  # (N, V)
        rows = [_Row() for _ in range(num_samples)]

        for step in range(max_tokens):
            sampled = sample_next(logits, generator, temperature, top_k, top_p).tolist()
            column, mask = zip(*(self._step_row(row, s) for row, s in zip(rows, sampled)))
            yield list(column), list(mask)
            if step + 1 == max_tokens or all(row.done for row in rows):
                return
            # a finished row is fed an arbitrary valid token: its cache row and logits are ignored
            feed = [t if t != PAD_TOKEN else self.tokenizer.bos_token_id for t in column]
            ids = torch.tensor(feed, dtype=torch.long, device=device).unsqueeze(1)  # (N, 1)
            with amp:
                logits = model(ids, kv_cache=kv)[:, -1]  # (N, 1, V) -> (N, V)

    def generate_batch(self, tokens: list[int], **kwargs) -> tuple[list[list[int]], list[list[int]]]:
        """Run generate to the end: each row's tokens and masks, prompt and stop token excluded."""
        num_samples = kwargs.get("num_samples", 1)
        results: list[list[int]] = [[] for _ in range(num_samples)]
        masks: list[list[int]] = [[] for _ in range(num_samples)]
        finished = [False] * num_samples
        for column, mask in self.generate(tokens, **kwargs):
            for i, (token, m) in enumerate(zip(column, mask)):
                if finished[i]:
                    continue
                if m == 1 and token in self.stop_tokens:
                    finished[i] = True
                    continue
                results[i].append(token)
                masks[i].append(m)
        return results, masks


def load_engine(source: str = "sft", *, model_tag: str | None = None, step: int | None = None,
                device: str | torch.device | None = None, dtype: str | None = None) -> Engine:
    """The Engine of a saved checkpoint: source is a phase (base, mid, sft, rl) or a directory.

    device None = common.resolve_device_type's choice (CUDA, then MPS, then CPU). A missing
    checkpoint raises checkpoint's FileNotFoundError, which names the script to run.
    """
    from nanochat.checkpoint import load_model_and_tokenizer
    from nanochat.common import resolve_device_type

    model, tokenizer, _meta = load_model_and_tokenizer(source, step, tag=model_tag,
                                                       device=device or resolve_device_type(None))
    return Engine(model, tokenizer, dtype=dtype)


def greedy_continuation(model, tokenizer, prompt: str, max_new_tokens: int, autocast=None) -> str:
    """Continue `prompt` greedily for up to max_new_tokens, stopping at <|bos|> (a new document)."""
    ids = tokenizer.encode(prompt, prepend="<|bos|>")
    was_training = model.training
    model.eval()
    try:
        with autocast if autocast is not None else contextlib.nullcontext():
            (out,), _ = Engine(model, tokenizer).generate_batch(ids, max_tokens=max_new_tokens, temperature=0.0)
    finally:
        model.train(was_training)
    return tokenizer.decode(out)
