"""Pretraining loader: parquet shards -> documents -> tokens -> packed (B, T) batches, per DDP rank.

    loader = TokenLoader(list_shards("train"), tok, batch_size=32, seq_len=2048, device="cuda")
    for step in range(num_steps):
        inputs, targets = next(loader)            # int64 (B, T) each, on the device
        ...
        checkpoint["loader"] = loader.state_dict()  # exact position after the batch just consumed
    val = TokenLoader(list_shards("val"), tok, 32, 2048, loop=False)   # one pass, then StopIteration

Reading order and ranks: shards in the order given, row groups in file order, documents in row order.
Row groups are numbered globally across the shard list (restarting each epoch) and rank r of W reads
those whose number % W == r, so ranks never share a document and together read all of them. When the
list is exhausted the loader starts over at the first shard with epoch + 1 (and logs it); with
loop=False it ends instead. There is no randomness: the order is the order of the shards.

Packing (every row starts with <|bos|>, no padding, no token dropped): each document becomes
<|bos|> + its tokens and joins a buffer of `buffer_docs` pending pieces. A row of T + 1 tokens
starts with the longest pending piece (cut to the row if longer, so a long document is laid out as
whole rows), then the space left is filled best-fit: the longest piece that fits (the oldest among
equal lengths). When none fits, one piece is cropped to the space left and its rest goes back to the
buffer as a new piece, <|bos|> + rest: preferably a piece that already lost its start to an earlier
crop, else the shortest pending document. The costs: one extra <|bos|> per crop (~0.05% of tokens at
T = 2048) and pieces that start mid-document. A document longer than a row must be split anyway
(its tokens past the first row are the floor of that share); this rule stays at the floor: measured
by dev/bench_dataloader.py with a 4,096-id BPE on prose from the local Python install (~4.8k
characters per document on average), 36.6-37.2% of tokens against a floor of 36.8% at T = 2048, where a
simulation of "always crop the longest piece" gave ~52% against 33%. It also keeps the buffer, hence
the saved state, small. `packing_stats()` measures all this; the only tokens ever dropped are the
last incomplete batch of a loop=False pass.

Threads: one producer thread per loader reads row groups, tokenizes them in batches (the tokenizer's
batch encode runs on `tokenizer_threads` threads and releases the GIL) and packs batches into a
bounded queue of `prefetch` batches. Each batch travels with a snapshot of the producer's state right
after it was packed; the consumer adopts the snapshot when it receives the batch, so `state_dict()`
never includes prefetched work. An error in the producer (say a corrupt shard) is raised by the next
`next()` with the shard's path; the thread is a daemon and stops on close() or garbage collection.

State (JSON-serialisable, see state_dict): the cursor (epoch, shard, row group, row) of the next
document to read, and the pending buffer as lists of token ids with the row group each piece came
from. Restoring with the same world size continues the identical token stream. Restoring with a
different world size needs the states of all old ranks (a list); every new rank then restarts at the
earliest row group that some old rank had not finished (pending pieces count as unfinished): a few
row groups may be read again, none are skipped, and a WARNING says so.
"""

from __future__ import annotations

import bisect
import logging
import os
import queue
import threading
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pyarrow.parquet as pq
import torch

from nanochat.common import get_dist_info

logger = logging.getLogger(__name__)

STATE_VERSION = 1
QUEUE_POLL_S = 0.2  # how often a blocked producer or consumer checks that the other side still runs
JOIN_TIMEOUT_S = 5.0  # close() waits this long for the producer; it is a daemon, so it cannot block exit


class DataLoaderError(RuntimeError):
    """Reading, tokenizing or restoring failed; the message names the shard (and row group) involved."""


class Cursor(NamedTuple):
    """Where the next document comes from: `row` of `row_group` in shards[`shard`], in pass `epoch`."""

    epoch: int
    shard: int
    row_group: int
    row: int


@dataclass(frozen=True)
class _State:
    """Position after a batch: the cursor plus the pending pieces (tokens, source row group, part)."""

    cursor: Cursor
    pending: tuple[tuple[np.ndarray, tuple[int, int, int], int], ...] = ()


@dataclass(frozen=True)
class _Config:
    shards: tuple[str, ...]
    tokenizer: object
    bos: int
    batch_size: int
    seq_len: int
    rank: int
    world_size: int
    loop: bool
    buffer_docs: int
    tokenizer_batch: int
    tokenizer_threads: int
    pin_memory: bool
    warned: set = field(default_factory=set, compare=False)  # shared by successive producers: warn once


# ----------------------------------------------------------------------------- packing


class _Piece:
    __slots__ = ("tokens", "src", "part", "seq")

    def __init__(self, tokens: np.ndarray, src: tuple[int, int, int], part: int, seq: int):
        self.tokens = tokens  # int32, starts with bos; never written to, so snapshots may share it
        self.src = src  # (epoch, shard, row group) of the document
        self.part = part  # 0 = the document's start, k = its k-th remainder after a crop
        self.seq = seq  # arrival order: ties go to the oldest, and snapshots keep this order


class _Packer:
    """Best-fit packing of bos-prefixed documents into fixed-length rows (rule in the module docstring)."""

    def __init__(self, source: Iterator, bos: int, buffer_docs: int, cursor: Cursor, pending=()):
        self._source = source  # yields (tokens, src, cursor after this document)
        self._bos = np.array([bos], dtype=np.int32)
        self._buffer_docs = buffer_docs
        self.cursor = cursor
        self._keys: list[tuple[int, int]] = []  # (length, -seq), ascending; parallel to _pieces
        self._pieces: list[_Piece] = []
        self._seq = 0
        self._exhausted = False
        for tokens, src, part in pending:
            self._insert(tokens, src, part, self._next_seq())

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _insert(self, tokens: np.ndarray, src: tuple[int, int, int], part: int, seq: int) -> None:
        key = (len(tokens), -seq)
        i = bisect.bisect_right(self._keys, key)
        self._keys.insert(i, key)
        self._pieces.insert(i, _Piece(tokens, src, part, seq))

    def _top_up(self) -> None:
        while len(self._pieces) < self._buffer_docs and not self._exhausted:
            item = next(self._source, None)
            if item is None:
                self._exhausted = True
                return
            tokens, src, self.cursor = item
            self._insert(tokens, src, 0, self._next_seq())

    def fill_row(self, row: np.ndarray, stats: list[int]) -> bool:
        """Fill `row` completely; False when the documents ran out first (loop=False only).

        stats += [pieces placed, crops, extra bos tokens, tokens of remainder pieces].
        """
        pos, size = 0, len(row)
        while pos < size:
            self._top_up()
            if not self._pieces:
                return False
            space = size - pos
            if space == 1:  # a piece has >= 2 tokens, and a lone bos cropped off one would change nothing
                row[pos] = self._bos[0]
                stats[2] += 1
                break
            if pos == 0:
                i = len(self._pieces) - 1  # a row starts with the longest piece: long documents get whole rows
            else:
                # best fit: the largest length <= space, and among equal lengths the largest -seq (the oldest)
                i = bisect.bisect_right(self._keys, (space, 1)) - 1
                if i < 0:  # nothing fits: crop a piece that already lost its start, else the shortest
                    i = next((j for j, p in enumerate(self._pieces) if p.part), 0)
            fits = self._keys[i][0] <= space
            self._keys.pop(i)
            piece = self._pieces.pop(i)
            n = len(piece.tokens) if fits else space
            row[pos:pos + n] = piece.tokens[:n]
            pos += n
            stats[0] += 1
            if piece.part:
                stats[2] += 1  # its bos was added by the crop
                stats[3] += n
            if not fits:
                stats[1] += 1
                rest = np.concatenate([self._bos, piece.tokens[n:]])
                self._insert(rest, piece.src, piece.part + 1, piece.seq)  # keeps its age
        return True

    def snapshot(self) -> _State:
        pending = sorted(self._pieces, key=lambda p: p.seq)
        return _State(self.cursor, tuple((p.tokens, p.src, p.part) for p in pending))


# ----------------------------------------------------------------------------- reading


def _warn_once(cfg: _Config, key: tuple, message: str, *args) -> None:
    if key not in cfg.warned:
        cfg.warned.add(key)
        logger.warning(message, *args)


def _num_row_groups(path: str) -> int:
    try:
        return pq.read_metadata(path).num_row_groups
    except Exception as e:
        raise DataLoaderError(f"cannot read parquet metadata of shard {path}: {type(e).__name__}: {e}") from e


def _read_texts(pf: pq.ParquetFile, g: int, path: str) -> list:
    try:
        return pf.read_row_group(g, columns=["text"]).column(0).to_pylist()
    except Exception as e:
        raise DataLoaderError(f"cannot read row group {g} of shard {path}: {type(e).__name__}: {e}") from e


def _encode(cfg: _Config, texts: list[str], path: str, g: int) -> list[list[int]]:
    try:
        return cfg.tokenizer.encode(texts, prepend="<|bos|>", num_threads=cfg.tokenizer_threads)
    except Exception as e:
        raise DataLoaderError(f"tokenizing row group {g} of shard {path} failed: {type(e).__name__}: {e}") from e


def _documents(cfg: _Config, start: Cursor) -> Iterator[tuple[np.ndarray, tuple[int, int, int], Cursor]]:
    """This rank's documents from `start` on, as (bos + tokens, (epoch, shard, row group), cursor after)."""
    epoch, shard0, rg0, row0 = start
    # the global number of shard0's first row group, so the rank assignment does not depend on where we start
    offset = sum(_num_row_groups(p) for p in cfg.shards[:shard0])
    whole_pass = start[1:] == (0, 0, 0)
    while True:
        pass_docs = pass_row_groups = 0
        for s in range(shard0, len(cfg.shards)):
            path = cfg.shards[s]
            try:
                pf = pq.ParquetFile(path)
                if "text" not in pf.schema_arrow.names:
                    raise ValueError(f"no 'text' column (columns: {', '.join(pf.schema_arrow.names)})")
            except Exception as e:
                raise DataLoaderError(f"cannot open shard {path}: {type(e).__name__}: {e}") from e
            with pf:
                n_rg, n_rows = pf.num_row_groups, pf.metadata.num_rows
                whole_shard = s > shard0 or (rg0, row0) == (0, 0)
                shard_docs = shard_reads = 0
                for g in range(rg0 if s == shard0 else 0, n_rg):
                    if (offset + g) % cfg.world_size != cfg.rank:
                        continue
                    texts = _read_texts(pf, g, path)
                    skip = row0 if (s, g) == (shard0, rg0) else 0
                    keep = [i for i in range(skip, len(texts)) if texts[i] and not texts[i].isspace()]
                    shard_reads += 1
                    shard_docs += len(keep)
                    if not keep and skip == 0 and len(texts):
                        _warn_once(cfg, ("rg", path, g), "row group %d of shard %s holds no text; skipped", g, path)
                    for k in range(0, len(keep), cfg.tokenizer_batch):
                        chunk = keep[k:k + cfg.tokenizer_batch]
                        ids = _encode(cfg, [texts[i] for i in chunk], path, g)
                        for i, doc in zip(chunk, ids):
                            # fromiter: about half the cost of asarray for a list of Python ints
                            tokens = np.fromiter(doc, dtype=np.int32, count=len(doc))
                            yield tokens, (epoch, s, g), Cursor(epoch, s, g, i + 1)
            if whole_shard and shard_docs == 0 and (shard_reads or n_rows == 0):
                _warn_once(cfg, ("shard", path), "shard %s yielded no text (%d row groups, %d rows); skipped",
                           path, n_rg, n_rows)
            offset += n_rg
            pass_docs += shard_docs
            pass_row_groups += n_rg
        if whole_pass and pass_docs == 0:
            why = (f"the {len(cfg.shards)} shards hold only {pass_row_groups} row groups, so rank {cfg.rank} of "
                   f"{cfg.world_size} gets none: use fewer ranks or shards with smaller row groups"
                   if pass_row_groups <= cfg.rank else "they are empty or whitespace only")
            raise DataLoaderError(f"no text for rank {cfg.rank} in {len(cfg.shards)} shards "
                                  f"({cfg.shards[0]} ...): {why}")
        if not cfg.loop:
            return
        logger.info("rank %d: epoch %d done (%d documents); starting epoch %d from the first shard",
                    cfg.rank, epoch, pass_docs, epoch + 1)
        epoch, shard0, rg0, row0, offset, whole_pass = epoch + 1, 0, 0, 0, 0, True


# ----------------------------------------------------------------------------- the producer thread


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


_END = object()


class _Producer:
    """The background thread and its queue; holds no reference to the loader, so the loader can be collected."""

    def __init__(self, cfg: _Config, state: _State, prefetch: int):
        self.queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(cfg, state), daemon=True,
                                       name=f"nanochat-loader-rank{cfg.rank}")
        self.thread.start()

    def _put(self, item) -> bool:
        while not self.stop_event.is_set():
            try:
                self.queue.put(item, timeout=QUEUE_POLL_S)
                return True
            except queue.Full:
                pass
        return False

    def _run(self, cfg: _Config, state: _State) -> None:
        try:
            packer = _Packer(_documents(cfg, state.cursor), cfg.bos, cfg.buffer_docs, state.cursor, state.pending)
            B, T = cfg.batch_size, cfg.seq_len
            rows = np.empty((B, T + 1), dtype=np.int32)
            while not self.stop_event.is_set():
                stats = [0, 0, 0, 0]
                if not all(packer.fill_row(rows[b], stats) for b in range(B)):
                    self._put(_END)  # a loop=False pass ended; the incomplete batch is dropped
                    return
                # inputs and targets side by side in one (pinned) buffer: one host-to-device copy per batch
                batch = torch.empty((2, B, T), dtype=torch.int64, pin_memory=cfg.pin_memory)  # (2, B, T)
                view = batch.numpy()  # numpy's casting copy is ~40x faster than torch's on these strided views
                view[0] = rows[:, :-1]  # (B, T) inputs
                view[1] = rows[:, 1:]  # (B, T) targets: the next token of each input
                if not self._put((batch, packer.snapshot(), stats)):
                    return
        except BaseException as e:  # everything goes to the consumer, which raises it: never a silent hang
            if not isinstance(e, DataLoaderError):
                wrapped = DataLoaderError(f"the loader thread of rank {cfg.rank} failed: {type(e).__name__}: {e}")
                wrapped.__cause__ = e
                e = wrapped
            self._put(_Failure(e))

    def stop(self) -> None:
        self.stop_event.set()
        try:
            while True:
                self.queue.get_nowait()  # free prefetched batches now
        except queue.Empty:
            pass
        if threading.current_thread() is not self.thread:
            self.thread.join(JOIN_TIMEOUT_S)


# ----------------------------------------------------------------------------- the loader


class TokenLoader:
    """Iterator of (inputs, targets) int64 (B, T) batches for one DDP rank, with an exact saveable state.

    shards: parquet paths with a `text` column, in reading order (e.g. dataset.list_shards("train")).
    tokenizer: has encode(list[str], prepend="<|bos|>", num_threads=N), bos_token_id and n_vocab.
    rank / world_size: default to the torchrun environment (common.get_dist_info()).
    loop: True for training (endless epochs); False reads one pass (validation) and stops. Ranks may
        get different numbers of batches from one pass: a DDP evaluation should run a fixed number of steps.
    state: a state_dict() (or a list of every old rank's, see load_state_dict) to continue from.
    buffer_docs: pending documents that best-fit packing chooses from (more: fewer crops, larger state).
    """

    def __init__(self, shards: Sequence[str | os.PathLike], tokenizer, batch_size: int, seq_len: int, *,
                 device: str | torch.device = "cpu", rank: int | None = None, world_size: int | None = None,
                 loop: bool = True, state: dict | list[dict] | None = None, buffer_docs: int = 64,
                 tokenizer_batch: int = 128, tokenizer_threads: int | None = None, prefetch: int = 4):
        shards = tuple(os.fspath(p) for p in shards)
        if not shards:
            raise ValueError("the shard list is empty: fetch data first (python -m nanochat.dataset -n 8)")
        missing = [p for p in shards if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"{len(missing)} of {len(shards)} shards do not exist, e.g. {missing[0]}")
        for name, value, low in (("batch_size", batch_size, 1), ("seq_len", seq_len, 1),
                                 ("buffer_docs", buffer_docs, 1), ("tokenizer_batch", tokenizer_batch, 1),
                                 ("prefetch", prefetch, 1)):
            if type(value) is not int or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if rank is None or world_size is None:
            info = get_dist_info()
            rank = info.rank if rank is None else rank
            world_size = info.world_size if world_size is None else world_size
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..world_size-1, got rank={rank} world_size={world_size}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device is cuda but no CUDA GPU is visible: pass device='cpu'")
        threads = tokenizer_threads or max(1, min(8, os.cpu_count() or 1))
        self._cfg = _Config(shards, tokenizer, tokenizer.bos_token_id, batch_size, seq_len, rank, world_size, loop,
                            buffer_docs, tokenizer_batch, threads, self.device.type == "cuda")
        self._n_vocab = tokenizer.n_vocab
        self._prefetch = prefetch
        self._state = _State(Cursor(0, 0, 0, 0))
        self._producer: _Producer | None = None
        self._finalizer = None
        self._done = False  # a loop=False pass ended
        self._error: BaseException | None = None
        self._stats = {"batches": 0, "tokens": 0, "pieces": 0, "crops": 0, "extra_bos": 0, "remainder_tokens": 0}
        if state is not None:
            self.load_state_dict(state)

    # ---- iteration

    def __iter__(self) -> TokenLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._error is not None:
            raise self._error
        if self._done:
            raise StopIteration
        if self._producer is None:
            self._start()
        item = self._get()
        if item is _END:
            self._done = True
            self._stop()
            raise StopIteration
        if isinstance(item, _Failure):
            self._error = item.error
            self._stop()
            raise item.error
        batch, self._state, stats = item
        B, T = self._cfg.batch_size, self._cfg.seq_len
        s = self._stats
        s["batches"] += 1
        s["tokens"] += B * (T + 1)
        for key, value in zip(("pieces", "crops", "extra_bos", "remainder_tokens"), stats):
            s[key] += value
        if self.device.type != "cpu":
            batch = batch.to(self.device, non_blocking=self._cfg.pin_memory)
        return batch[0], batch[1]  # (B, T) inputs, (B, T) targets

    def _get(self):
        producer = self._producer
        while True:
            try:
                return producer.queue.get(timeout=QUEUE_POLL_S)
            except queue.Empty:
                if not producer.thread.is_alive():  # it always posts before exiting; check once more
                    try:
                        return producer.queue.get_nowait()
                    except queue.Empty:
                        self._error = DataLoaderError("the loader thread stopped without a batch or an error")
                        raise self._error from None

    def _start(self) -> None:
        producer = _Producer(self._cfg, self._state, self._prefetch)
        self._producer = producer
        self._finalizer = weakref.finalize(self, producer.stop)  # stops the thread when the loader is collected

    def _stop(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # runs producer.stop() at most once
        self._producer = self._finalizer = None

    def close(self) -> None:
        """Stop the producer thread and drop prefetched batches; state_dict() stays valid, and a later
        next() starts a new producer from it."""
        self._stop()

    def __enter__(self) -> TokenLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- position and statistics

    @property
    def epoch(self) -> int:
        """Pass over the shard list that the next document comes from (0 = first)."""
        return self._state.cursor.epoch

    def packing_stats(self) -> dict:
        """Counts over the batches consumed so far, and the packing overhead they imply.

        bos_overhead: share of row tokens that are an extra <|bos|> (of a remainder piece, or a lone one
        ending a row with one token of space left); remainder_share: share of row tokens in pieces that
        start mid-document (their context was cut).
        """
        s = dict(self._stats)
        tokens = max(1, s["tokens"])
        s["bos_overhead"] = s["extra_bos"] / tokens
        s["remainder_share"] = s["remainder_tokens"] / tokens
        return s

    # ---- state

    def state_dict(self) -> dict:
        """The position right after the last batch returned by next(), as plain JSON types."""
        c = self._state.cursor
        return {
            "version": STATE_VERSION,
            "rank": self._cfg.rank,
            "world_size": self._cfg.world_size,
            "epoch": c.epoch, "shard": c.shard, "row_group": c.row_group, "row": c.row,
            "shard_name": os.path.basename(self._cfg.shards[c.shard]),
            "bos": self._cfg.bos,
            "n_vocab": self._n_vocab,
            "buffer": [{"src": list(src), "part": part, "tokens": tokens.tolist()}
                       for tokens, src, part in self._state.pending],
        }

    def load_state_dict(self, state: dict | list[dict]) -> None:
        """Continue from a saved position: this rank's state_dict(), or the list of every old rank's.

        Same world size: the exact token stream continues. A different world size needs the list: every
        rank then restarts at the earliest row group some old rank had not finished (WARNING logged).
        """
        cfg = self._cfg
        if isinstance(state, (list, tuple)):
            states = [self._parse(s, f"state {i} of {len(state)}") for i, s in enumerate(state)]
            for i, (d, _) in enumerate(states):
                if d["world_size"] != len(states) or d["rank"] != i:
                    raise ValueError(f"state {i} of the list says rank {d['rank']} of {d['world_size']}: pass "
                                     f"every old rank's state in rank order")
            if len(states) == cfg.world_size:
                new = states[cfg.rank][1]
            else:
                new = self._rebase(states)
        elif isinstance(state, dict):
            d, new = self._parse(state, "state")
            if d["world_size"] != cfg.world_size:
                raise ValueError(f"the state was saved with world size {d['world_size']}, this run has "
                                 f"{cfg.world_size}: pass the list of all {d['world_size']} ranks' states so that "
                                 "no data is skipped")
            if d["rank"] != cfg.rank:
                raise ValueError(f"the state belongs to rank {d['rank']}, this loader is rank {cfg.rank}")
        else:
            raise TypeError(f"load_state_dict takes a dict or a list of dicts, got {type(state).__name__}")
        self._stop()
        self._state, self._done, self._error = new, False, None

    def _parse(self, d: object, what: str) -> tuple[dict, _State]:
        cfg = self._cfg
        keys = ("version", "rank", "world_size", "epoch", "shard", "row_group", "row", "bos", "n_vocab", "buffer")
        if not isinstance(d, dict) or any(k not in d for k in keys):
            raise ValueError(f"{what} is not a loader state_dict (expected the keys {', '.join(keys)})")
        if d["version"] != STATE_VERSION:
            raise ValueError(f"{what} has version {d['version']!r}; this code reads version {STATE_VERSION}")
        if d["bos"] != cfg.bos or d["n_vocab"] != self._n_vocab:
            raise ValueError(f"{what} was saved with another tokenizer (bos {d['bos']}, vocab {d['n_vocab']}; "
                             f"now bos {cfg.bos}, vocab {self._n_vocab})")
        cursor = Cursor(d["epoch"], d["shard"], d["row_group"], d["row"])
        if not all(type(v) is int and v >= 0 for v in cursor):
            raise ValueError(f"{what} has an invalid position {tuple(cursor)}")
        if cursor.shard >= len(cfg.shards):
            raise ValueError(f"{what} points at shard index {cursor.shard}, but only {len(cfg.shards)} shards "
                             "were given: the shard list changed")
        name = os.path.basename(cfg.shards[cursor.shard])
        if d.get("shard_name") not in (None, name):
            _warn_once(cfg, ("renamed", cursor.shard), "the saved state was at shard %s, but shard index %d is now "
                       "%s: the shard list changed; continuing by index", d["shard_name"], cursor.shard, name)
        pending = []
        for k, piece in enumerate(d["buffer"]):
            try:
                tokens = np.asarray(piece["tokens"], dtype=np.int64)
                src, part = tuple(int(v) for v in piece["src"]), int(piece["part"])
                ok = (tokens.ndim == 1 and len(tokens) >= 2 and tokens[0] == cfg.bos and tokens.min() >= 0
                      and tokens.max() < self._n_vocab and len(src) == 3)
            except (KeyError, TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"{what} has a malformed buffer entry {k}: expected src (3 ints), part and tokens "
                                 "(bos + token ids)")
            pending.append((tokens.astype(np.int32), src, part))
        return d, _State(cursor, tuple(pending))

    def _rebase(self, states: list[tuple[dict, _State]]) -> _State:
        cfg = self._cfg
        # everything before the earliest unfinished row group was fully consumed by some old rank
        marks = [tuple(st.cursor[:3]) for _, st in states]
        marks += [src for _, st in states for _, src, _ in st.pending]
        epoch, shard, row_group = min(marks)
        furthest = max(tuple(st.cursor) for _, st in states)
        logger.warning("resuming with world size %d from a state saved with world size %d: every rank restarts at "
                       "epoch %d, shard %d (%s), row group %d, the earliest row group some old rank had not finished; "
                       "row groups after it that old ranks had finished (up to epoch %d, shard %d, row group %d) are "
                       "read again, and no data is skipped", cfg.world_size, len(states), epoch, shard,
                       os.path.basename(cfg.shards[shard]), row_group, *furthest[:3])
        return _State(Cursor(epoch, shard, row_group, 0))
