"""A preallocated key/value cache for incremental decoding with the GPT of nanochat.gpt.

    cache = KVCache(batch_size=1, n_kv_head=cfg.n_kv_head, head_dim=cfg.head_dim,
                    n_layer=cfg.n_layer, max_len=prompt_len + max_new_tokens)
    logits = model(prompt_ids, kv_cache=cache)       # prefill: all prompt tokens at once
    logits = model(next_ids, kv_cache=cache)         # decode: (B, 1) per step
    many = cache.expand(n)                           # n continuations of one prefilled prompt

Letters: B batch, Hk key/value heads, T new tokens, L cached length (cache.pos + T), D head dim.

Keys are stored after QK norm and rotary, so a cached position is never recomputed. The storage is
head-major, (n_layer, B, Hk, max_len, D), so the prefix of one layer is a strided view that
scaled_dot_product_attention reads directly (its last dimension is contiguous) without a copy.
One position counter serves the whole batch: every row holds the same number of tokens.
"""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every layer for the tokens seen so far.

    The model calls `insert(layer, k, v)` once per layer with the new tokens' keys and values and
    attends to what it returns; after the last layer it calls `advance(T)`, so all layers of one
    forward write at the same offset `pos`.
    """

    def __init__(
        self,
        batch_size: int,
        n_kv_head: int,
        head_dim: int,
        n_layer: int,
        max_len: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        for name, value in (
            ("batch_size", batch_size),
            ("n_kv_head", n_kv_head),
            ("head_dim", head_dim),
            ("n_layer", n_layer),
            ("max_len", max_len),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"KVCache {name} must be a positive integer, got {value!r}")
        self.batch_size = batch_size
        self.n_kv_head = n_kv_head
        self.head_dim = head_dim
        self.n_layer = n_layer
        self.max_len = max_len
        shape = (n_layer, batch_size, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # (n_layer, B, Hk, max_len, D)
        self.v = torch.zeros(shape, dtype=dtype, device=device)  # (n_layer, B, Hk, max_len, D)
        self.pos = 0  # number of tokens already cached (the same for every row and layer)

    @property
    def dtype(self) -> torch.dtype:
        return self.k.dtype

    @property
    def device(self) -> torch.device:
        return self.k.device

    def reset(self) -> None:
        """Forget every cached token; the storage is kept and overwritten by the next prefill."""
        self.pos = 0

    def check_room(self, num_new: int) -> None:
        """Raise before anything is written if `num_new` more tokens would not fit."""
        if self.pos + num_new > self.max_len:
            raise ValueError(
                f"KV cache overflow: {self.pos} cached + {num_new} new tokens > max_len={self.max_len}; "
                "create the cache with a larger max_len (prompt length + max new tokens)"
            )

    def insert(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new keys/values of `layer` at [pos, pos + T) and return that layer's whole prefix.

        k, v: (B, Hk, T, D). Returns two views (B, Hk, pos + T, D) of the cache; they are valid until
        the cache is written again.
        """
        B, Hk, T, D = k.shape
        if (B, Hk, D) != (self.batch_size, self.n_kv_head, self.head_dim) or v.shape != k.shape:
            raise ValueError(
                f"KV cache holds (B={self.batch_size}, Hk={self.n_kv_head}, D={self.head_dim}); "
                f"got keys {tuple(k.shape)} and values {tuple(v.shape)}"
            )
        self.check_room(T)
        end = self.pos + T
        self.k[layer, :, :, self.pos : end] = k  # copy_ casts to the cache's dtype
        self.v[layer, :, :, self.pos : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]  # (B, Hk, L, D) each

    def advance(self, num_new: int) -> None:
        """Move the position past the tokens every layer has just inserted."""
        self.check_room(num_new)
        self.pos += num_new

    def prefill_from(self, other: KVCache) -> None:
        """Copy the cached prefix of `other` into this cache, broadcasting a batch of 1 to all rows.

        The engine prefills one prompt once (batch 1) and then samples B continuations from it.
        """
        if (other.n_layer, other.n_kv_head, other.head_dim) != (self.n_layer, self.n_kv_head, self.head_dim):
            raise ValueError(
                f"cannot copy a cache of (n_layer={other.n_layer}, Hk={other.n_kv_head}, D={other.head_dim}) "
                f"into one of (n_layer={self.n_layer}, Hk={self.n_kv_head}, D={self.head_dim})"
            )
        if other.batch_size not in (1, self.batch_size):
            raise ValueError(f"cannot copy a batch of {other.batch_size} into a batch of {self.batch_size}")
        if other.pos > self.max_len:
            raise ValueError(f"the source holds {other.pos} tokens, more than max_len={self.max_len}")
        n = other.pos
        # (n_layer, 1 or B, Hk, n, D) broadcast into (n_layer, B, Hk, n, D)
        self.k[:, :, :, :n] = other.k[:, :, :, :n]
        self.v[:, :, :, :n] = other.v[:, :, :, :n]
        self.pos = n

    def expand(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """A new cache of `batch_size` rows (and optionally more room), each holding this prefix."""
        out = KVCache(
            batch_size,
            self.n_kv_head,
            self.head_dim,
            self.n_layer,
            self.max_len if max_len is None else max_len,
            dtype=self.dtype,
            device=self.device,
        )
        out.prefill_from(self)
        return out
