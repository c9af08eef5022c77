"""The GPT of nanochat: a decoder-only transformer, its config and its FLOPs estimate.

    cfg = GPTConfig.from_depth(20, vocab_size=65536, sequence_len=2048)   # 560,988,160 params
    model = GPT(cfg)                          # or: with torch.device("meta"): model = GPT(cfg)
                                              #     model.to_empty(device="cuda"); model.init_weights()
    loss = model(idx, targets)                # scalar; loss_reduction="sum" / "none" ((B, T) losses)
    logits = model(idx)                       # (B, T, V) fp32, soft-capped

Architecture (the choices of modded-nanogpt and nanochat, each a measured win there): untied token
embedding and head; rotary positions; QK norm; RMSNorm without parameters after the embedding,
before each attention and MLP (pre-norm) and before the head; ReLU^2 MLP of 4x width; no biases;
zero-init output projections; logits soft-capped by softcap * tanh(logits / softcap) in fp32.
Pure single-device torch: precision (autocast), compilation and DDP are the training side's job.

Letters used in the shape comments:
    B batch, T sequence (new tokens), L attended length (cached + new), N = B * T rows of the loss,
    C model width (n_embd), H query heads, Hk key/value heads, D head dim, V vocab size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from nanochat.kv_cache import KVCache

# The rotary tables cover this many times sequence_len, so inference may run past the training
# length (the model just has not been trained there) without rebuilding buffers.
ROTARY_HEADROOM = 10

# The loss never materialises more than about this many logits at once: rows are processed in chunks
# of max(1, LOSS_CHUNK_ELEMENTS // V). 2**27 fp32 logits are 512 MiB; at d20 (V = 65,536) that is
# 2,048 rows a chunk, against 8 GiB (bf16) for the full 32 x 2048 x V logits of one GPU's batch.
LOSS_CHUNK_ELEMENTS = 2**27

LOSS_REDUCTIONS = ("mean", "sum", "none")


@dataclass(frozen=True)
class GPTConfig:
    """Model shape. Frozen, so the validation in __post_init__ cannot be bypassed afterwards."""

    sequence_len: int = 2048  # training context; rotary tables cover ROTARY_HEADROOM times more
    vocab_size: int = 65536
    n_layer: int = 20
    n_embd: int = 1280
    n_head: int = 10  # query heads
    n_kv_head: int = 10  # key/value heads; fewer than n_head is grouped-query attention (GQA)
    softcap: float = 15.0  # logits -> softcap * tanh(logits / softcap); 0 turns it off
    rope_base: float = 10000.0

    def __post_init__(self):
        for name in ("sequence_len", "vocab_size", "n_layer", "n_embd", "n_head", "n_kv_head"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.head_dim % 2:
            raise ValueError(
                f"head_dim = n_embd / n_head = {self.head_dim} must be even for rotary embeddings"
            )
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head} (GQA groups)")
        if not self.softcap >= 0:
            raise ValueError(f"softcap must be >= 0 (0 = off), got {self.softcap!r}")
        if not self.rope_base > 0:
            raise ValueError(f"rope_base must be > 0, got {self.rope_base!r}")

    # Derived values are properties, not fields, so that GPTConfig(**dataclasses.asdict(cfg))
    # round-trips through checkpoint metadata; __post_init__ has validated them.
    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_group(self) -> int:
        """Query heads per key/value head (1 without GQA)."""
        return self.n_head // self.n_kv_head

    @classmethod
    def from_depth(
        cls,
        depth: int,
        vocab_size: int,
        sequence_len: int,
        aspect_ratio: int = 64,
        head_dim: int = 128,
        n_kv_head: int | None = None,
    ) -> GPTConfig:
        """The nanochat sizing rule: width = depth x aspect_ratio rounded up to whole heads.

        d20 -> 1280 wide, 10 heads of 128; d4 -> 256 wide, 2 heads. n_kv_head defaults to n_head.
        """
        for name, value in (("depth", depth), ("aspect_ratio", aspect_ratio), ("head_dim", head_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        n_head = -(-depth * aspect_ratio // head_dim)  # ceil division
        return cls(
            sequence_len=sequence_len,
            vocab_size=vocab_size,
            n_layer=depth,
            n_embd=n_head * head_dim,
            n_head=n_head,
            n_kv_head=n_head if n_kv_head is None else n_kv_head,
        )


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """RMSNorm over the last dimension with no learnable gain (it buys nothing measurable here)."""
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(seq_len: int, head_dim: int, base: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles, (1, seq_len, 1, D/2) each, in fp32 (RoFormer, arXiv:2104.09864)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    positions = torch.arange(seq_len, dtype=torch.float32, device=device)
    angles = torch.outer(positions, inv_freq)  # (seq_len, D/2)
    return angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]  # (1, seq_len, 1, D/2) each


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[i], x[i + D/2]) of x (B, T, H, D) by the angles of cos/sin (1, T, 1, D/2)."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # tables are fp32; stay in x's (autocast) dtype
    x1, x2 = x.chunk(2, dim=-1)  # (B, T, H, D/2) each
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (B, T, H, D)


class _HeadLossSum(torch.autograd.Function):
    """sum over rows of cross_entropy(softcap(x @ W^T), targets), ignoring targets of -1, with the
    gradients computed during forward, one chunk of rows at a time.

    The plain path stores the (N, V) logits for backward and reads them again there; on a CPU the
    vocabulary-wide passes, not the matmuls, are what a step spends its time on. Here each chunk's
    softmax becomes its gradient in place and is folded into grad_x (N, C) and grad_W (V, C) at once,
    so nothing vocabulary-wide outlives its chunk and nothing is recomputed. Backward only scales.
    """

    @staticmethod
    def forward(ctx, x, weight, targets, softcap: float, rows: int):
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        grad_x = torch.empty_like(x)  # (N, C)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)  # (V, C)
        w = weight.to(x.dtype)
        for i in range(0, x.size(0), rows):
            xs, ts = x[i : i + rows], targets[i : i + rows]  # (n, C), (n,)
            z = (xs @ w.t()).float()  # (n, V)
            if softcap:
                t = z.div_(softcap).tanh_()  # (n, V), kept for the derivative 1 - t^2
                z = t * softcap
            lse = torch.logsumexp(z, dim=-1)  # (n,)
            ignored = ts == -1
            tc = ts.clamp(min=0)
            idx = torch.arange(len(ts), device=x.device)
            total += (lse - z[idx, tc]).masked_fill_(ignored, 0.0).sum()
            p = z.sub_(lse[:, None]).exp_()  # softmax, in place (n, V)
            p[idx, tc] -= 1  # d loss / d z = softmax - onehot
            p[ignored] = 0.0
            if softcap:
                p.mul_(t.mul_(t).neg_().add_(1))  # d z / d logits = 1 - tanh^2
            grad_x[i : i + rows] = p.to(x.dtype) @ w  # (n, C)
            grad_w.addmm_(p.t(), xs.float())  # (V, C)
        ctx.save_for_backward(grad_x, grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_x, grad_w = ctx.saved_tensors
        return grad_x * grad_total, (grad_w * grad_total).to(ctx.weight_dtype), None, None, None


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        C, D = config.n_embd, config.head_dim
        # Separate q/k/v matrices rather than one fused matrix: Muon orthogonalises each weight
        # matrix on its own, and q, k, v are different maps.
        self.c_q = nn.Linear(C, self.n_head * D, bias=False)
        self.c_k = nn.Linear(C, self.n_kv_head * D, bias=False)
        self.c_v = nn.Linear(C, self.n_kv_head * D, bias=False)
        self.c_proj = nn.Linear(C, C, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv_cache: KVCache | None):
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)  # (B, T, H, D)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)  # (B, T, Hk, D)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)  # (B, T, Hk, D)
        # QK norm bounds the attention logits (no softmax saturation early in training). It comes
        # before rotary, though the order does not matter: a rotation preserves the RMS of the
        # head vector, so norm(rotary(q)) == rotary(norm(q)) up to rounding.
        q = apply_rotary(rms_norm(q), cos, sin)
        k = apply_rotary(rms_norm(k), cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H|Hk, T, D)

        attn_mask, is_causal = None, True
        if kv_cache is not None:
            start = kv_cache.pos
            k, v = kv_cache.insert(self.layer_idx, k, v)  # (B, Hk, L, D) each, L = start + T
            k, v = k.to(q.dtype), v.to(q.dtype)  # the cache may hold another dtype than autocast's
            if T == 1:
                is_causal = False  # one new token sees every cached one
            elif start > 0:
                # SDPA's is_causal aligns the mask top-left, wrong when L > T: new token i sits at
                # position start + i and may see keys 0 .. start + i.
                is_causal = False
                attn_mask = torch.ones(T, start + T, dtype=torch.bool, device=q.device).tril(start)  # (T, L)
        # On CUDA with bf16 and no explicit mask this dispatches to the flash kernel.
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=is_causal, enable_gqa=self.n_kv_head != self.n_head
        )  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ReLU^2 (Primer, arXiv:2109.08668): cheaper than GELU and trains at least as well.
        return self.c_proj(F.relu(self.c_fc(x)).square())  # (B, T, 4C) -> (B, T, C)


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, kv_cache: KVCache | None):
        x = x + self.attn(rms_norm(x), cos, sin, kv_cache)
        return x + self.mlp(rms_norm(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        # An empty weight skips nn.Embedding's own N(0, 1) fill: init_weights() does it, and on the
        # meta device normal_ has no native kernel (the Python fallback costs seconds to load).
        self.wte = nn.Embedding(
            config.vocab_size, config.n_embd, _weight=torch.empty(config.vocab_size, config.n_embd)
        )
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Rotary tables, filled by init_weights(). Non-persistent: derived from the config, so
        # checkpoints need not carry them. (Not computed here: on the meta device every op without
        # a native meta kernel would load torch's Python fallbacks, seconds for nothing.)
        table_shape = (1, config.sequence_len * ROTARY_HEADROOM, 1, config.head_dim // 2)
        self.register_buffer("cos", torch.empty(table_shape), persistent=False)  # (1, 10 T, 1, D/2)
        self.register_buffer("sin", torch.empty(table_shape), persistent=False)  # (1, 10 T, 1, D/2)
        # Instance knob (tests shrink it to exercise chunking on tiny inputs).
        self.loss_chunk_elements = LOSS_CHUNK_ELEMENTS
        if self.lm_head.weight.device.type != "meta":
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re)initialise every parameter and the rotary tables; deterministic under torch.manual_seed.

        Also the step after `to_empty(device=...)` of a model built on the meta device (to_empty
        leaves the non-persistent rotary buffers uninitialised too), before loading a checkpoint.
        """
        nn.init.normal_(self.wte.weight, mean=0.0, std=1.0)  # the next op is a norm: scale is free
        for block in self.blocks:
            for linear in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                # uniform with std 1/sqrt(fan_in): unit-RMS inputs give unit-RMS outputs
                bound = math.sqrt(3.0 / linear.in_features)
                nn.init.uniform_(linear.weight, -bound, bound)
            # Zero output projections make every block start as the identity on the residual
            # stream, a modded-nanogpt speedrun win; they still get gradients from step one.
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
        # Near-zero, not zero, head: logits start ~0 (loss = ln V) yet gradients reach the blocks
        # on the first step (through a zero head the trunk would get no gradient on step one).
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.001)
        cos, sin = rotary_tables(
            self.cos.size(1), self.config.head_dim, self.config.rope_base, self.cos.device
        )
        self.cos.copy_(cos)
        self.sin.copy_(sin)

    # ---- description for the optimizer and for throughput accounting ----

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Every parameter exactly once, by role: the optimizer builder gives each role its rule.

        matrix: 2-D weights inside the blocks (Muon); embedding: token embedding; unembedding: the
        head; scalar: 0/1-D parameters (none in this architecture, the key is kept for the builder).
        """
        matrix = [p for p in self.blocks.parameters() if p.ndim == 2]
        scalar = [p for p in self.blocks.parameters() if p.ndim < 2]
        return {
            "matrix": matrix,
            "embedding": [self.wte.weight],
            "unembedding": [self.lm_head.weight],
            "scalar": scalar,
        }

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def estimate_flops(self) -> int:
        """Training FLOPs per token (forward + backward): 6 per matmul weight (the embedding is a
        lookup, the head counts) plus 12 x layers x heads x head_dim x sequence_len for attention."""
        groups = self.parameter_groups()
        matmul_params = sum(p.numel() for key in ("matrix", "unembedding") for p in groups[key])
        cfg = self.config
        return 6 * matmul_params + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * cfg.sequence_len

    # ---- forward ----

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        kv_cache: KVCache | None = None,
        loss_reduction: str = "mean",
        last_only: bool = False,
        at: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """idx (B, T) token ids -> logits (B, T, V) in fp32, or the loss if targets (B, T) is given.

        last_only: logits (B, 1, V) of the last position only: a prefill needs no more, and the
        vocabulary-wide head over every prompt position would dominate its time.
        at: (rows, cols) index tensors (M,): logits (M, V) at positions (rows[m], cols[m]) only, for
        scoring a few continuation tokens of long prompts (CORE) without the head everywhere else.

        Targets of -1 are ignored. loss_reduction: "mean" over the non-ignored tokens (0 when all are
        ignored, not NaN, so a fully masked micro-batch cannot poison training), "sum", or "none"
        for per-token (B, T) losses (0 at ignored tokens). With kv_cache, idx holds the T tokens
        after the cache's position (prefill T > 1, decode T = 1) and the cache advances by T.
        """
        B, T = idx.shape
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"loss_reduction must be one of {LOSS_REDUCTIONS}, got {loss_reduction!r}")
        if kv_cache is not None and targets is not None:
            raise ValueError("targets with kv_cache is not supported: compute losses without a cache")
        start = 0
        if kv_cache is not None:
            kv_cache.check_room(T)
            start = kv_cache.pos
        if start + T > self.cos.size(1):
            raise ValueError(
                f"positions up to {start + T} exceed the rotary tables ({self.cos.size(1)} = "
                f"{ROTARY_HEADROOM} x sequence_len {self.config.sequence_len})"
            )
        cos, sin = self.cos[:, start : start + T], self.sin[:, start : start + T]  # (1, T, 1, D/2) each

        x = rms_norm(self.wte(idx))  # (B, T, C)
        for block in self.blocks:
            x = block(x, cos, sin, kv_cache)
        x = rms_norm(x)
        if kv_cache is not None:
            kv_cache.advance(T)

        if targets is None:
            if at is not None:
                return self._logits(x[at[0], at[1]])  # (M, V)
            return self._logits(x[:, -1:] if last_only else x)  # (B, T or 1, V)
        if loss_reduction != "none" and self._fused_loss_ok(x):
            total = _HeadLossSum.apply(x.view(B * T, -1), self.lm_head.weight, targets.reshape(B * T),
                                       float(self.config.softcap), max(1, self.loss_chunk_elements // self.config.vocab_size))
            if loss_reduction == "sum":
                return total
            return total / (targets != -1).sum().clamp(min=1)
        losses = self._chunked_token_losses(x.view(B * T, -1), targets.reshape(B * T))  # (N,)
        if loss_reduction == "none":
            return losses.view(B, T)  # (B, T)
        total = losses.sum()
        if loss_reduction == "sum":
            return total
        return total / (targets != -1).sum().clamp(min=1)

    def _fused_loss_ok(self, x: torch.Tensor) -> bool:
        """The fused head loss is used for training on CPU, where it is measured (~1.7x faster head +
        loss) and tested; CUDA keeps the checkpointed path until the fused one is measured there
        under bf16 autocast and torch.compile. Under torch.compile the plain path is traced on CPU too:
        the fused loop's trip count follows the row count, so with dynamic shapes (SFT, RL) dynamo
        would specialise on B x T and recompile for every batch length (tests/test_gpu_paths.py)."""
        return (x.device.type == "cpu" and torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
                and not torch.compiler.is_compiling())

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """Head + soft-capping softcap * tanh(logits / softcap), the tanh in fp32 (tanh of bf16
        logits would waste their few mantissa bits)."""
        cap = self.config.softcap
        if cap == 0:
            return self.lm_head(x).float()  # (..., V)
        # Dividing the C-wide input instead of the V-wide logits gives the same value (the head is
        # linear) and saves one (N, V) pass forward and one backward: V / C = 51x fewer elements at d20.
        return cap * torch.tanh(self.lm_head(x / cap).float())  # (..., V)

    def _token_losses(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-token cross-entropy of rows x (n, C) against targets (n,); 0 where target is -1."""
        logits = self._logits(x)  # (n, V)
        return F.cross_entropy(logits, targets, ignore_index=-1, reduction="none")  # (n,)

    def _chunked_token_losses(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-token losses (N,) of x (N, C), never holding more than one chunk of logits.

        Each chunk runs under activation checkpointing: autograd keeps only the chunk's input rows
        and recomputes its logits in backward, one chunk at a time, so neither pass holds the full
        (N, V) logits. The price is one extra head matmul per chunk in backward, paid only when
        there is more than one chunk.
        """
        rows = max(1, self.loss_chunk_elements // self.config.vocab_size)
        if x.size(0) <= rows:
            return self._token_losses(x, targets)  # one chunk: nothing to save by recomputing
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or self.lm_head.weight.requires_grad)
        parts = []
        for x_chunk, t_chunk in zip(x.split(rows), targets.split(rows)):  # (<= rows, C), (<= rows,)
            if needs_grad:
                parts.append(
                    torch.utils.checkpoint.checkpoint(
                        self._token_losses, x_chunk, t_chunk, use_reentrant=False, preserve_rng_state=False
                    )
                )
            else:
                parts.append(self._token_losses(x_chunk, t_chunk))
        return torch.cat(parts)  # (N,)
