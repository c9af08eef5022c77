"""Tests for nanochat.dataloader: packing, exact resume, ranks, epochs, errors, threads.

Most tests use IdTokenizer, a test double whose documents are their own token ids written as decimal
numbers. Every token of every document is unique (document id * 1000 + position), so a test can say
exactly which tokens were emitted, which are still pending and which were never read. A few tests
use the real byte-level Tokenizer to check the contract with it.
"""

import gc
import json
import logging
import os
import random
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nanochat import dataloader as dl
from nanochat.dataloader import Cursor, DataLoaderError, TokenLoader
from nanochat.tokenizer import SPLIT_PATTERN, Tokenizer

BOS = 1_000_000
B, T = 2, 64  # small rows, so that many documents are longer than a row and get split


class IdTokenizer:
    """Encodes "17000 17001 17002" as [BOS, 17000, 17001, 17002]; raises on texts containing `fail_on`."""

    bos_token_id = BOS
    n_vocab = BOS + 1

    def __init__(self, fail_on: str | None = None):
        self.fail_on = fail_on

    def encode(self, texts, prepend=None, num_threads=1):
        assert prepend == "<|bos|>" and isinstance(texts, list)
        if self.fail_on is not None and any(self.fail_on in t for t in texts):
            raise ValueError("cannot encode this")
        return [[BOS] + [int(w) for w in t.split()] for t in texts]


@dataclass
class Doc:
    id: int
    shard: int
    row_group: int  # within its shard
    row: int  # within its row group
    global_rg: int  # row group number across the shard list
    tokens: list[int]


def make_corpus(directory, docs_per_shard=(30, 25, 35), rg_size=10, seed=0, max_len=300):
    """Parquet shards of IdTokenizer documents; returns (paths, docs in reading order)."""
    rng = random.Random(seed)
    paths, docs, next_id, global_rg = [], [], 1, 0
    for s, n in enumerate(docs_per_shard):
        texts = []
        for k in range(n):
            tokens = [next_id * 1000 + j for j in range(rng.randint(1, max_len))]
            docs.append(Doc(next_id, s, k // rg_size, k % rg_size, global_rg + k // rg_size, tokens))
            texts.append(" ".join(map(str, tokens)))
            next_id += 1
        path = os.path.join(directory, f"shard_{s:05d}.parquet")
        pq.write_table(pa.table({"text": texts}), path, row_group_size=rg_size)
        paths.append(path)
        global_rg += -(-n // rg_size)
    return paths, docs


def rows_of(x, y):
    return torch.cat([x, y[:, -1:]], dim=1)  # (B, T+1): the packed rows back


def emitted_tokens(rows) -> list[int]:
    out = []
    for r in rows:
        out.extend(t for t in r.flatten().tolist() if t != BOS)
    return out


def read(loader, n):
    rows, states = [], []
    for _ in range(n):
        x, y = next(loader)
        rows.append(rows_of(x, y).clone())
        states.append(json.loads(json.dumps(loader.state_dict())))
    return rows, states


def leftover_tokens(state, docs, rank=0, world_size=1) -> set[int]:
    """Tokens a one-pass loader had read into its buffer or not read yet, at `state` (epoch 0)."""
    assert state["epoch"] == 0
    cursor = (state["shard"], state["row_group"], state["row"])
    left = {t for piece in state["buffer"] for t in piece["tokens"] if t != BOS}
    for d in docs:
        if (d.shard, d.row_group, d.row) >= cursor and d.global_rg % world_size == rank:
            left.update(d.tokens)
    return left


def loader(paths, **kw) -> TokenLoader:
    kw.setdefault("tokenizer_batch", 7)  # does not divide the row groups' 10 documents: chunks end mid group
    kw.setdefault("buffer_docs", 8)
    return TokenLoader(paths, kw.pop("tokenizer", IdTokenizer()), kw.pop("batch_size", B), kw.pop("seq_len", T),
                       rank=kw.pop("rank", 0), world_size=kw.pop("world_size", 1), **kw)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def probes(corpus):
    """300 batches in all (about three epochs) and the state after each: 1 rank, and each of 2 ranks."""
    paths, _ = corpus
    out = {}
    for rank, world in ((0, 1), (0, 2), (1, 2)):
        with loader(paths, rank=rank, world_size=world) as ld:
            rows, states = read(ld, 300 // world)
        out[rank, world] = (rows, states)
    return out


def initial_state(paths, rank=0, world_size=1):
    return loader(paths, rank=rank, world_size=world_size).state_dict()


# ----------------------------------------------------------------------------- packing


def test_packer_emits_every_token_once_in_order():
    rng = random.Random(1)
    docs = [np.array([0] + [d * 1000 + j for j in range(rng.randint(1, 400))], dtype=np.int32) for d in range(1, 300)]
    source = ((t, (0, 0, 0), Cursor(0, 0, 0, i + 1)) for i, t in enumerate(docs))
    packer = dl._Packer(source, 0, 16, Cursor(0, 0, 0, 0))
    rows, stats = [], [0, 0, 0, 0]
    while True:
        row = np.full(129, -1, dtype=np.int32)
        ok = packer.fill_row(row, stats)
        rows.append(row[row >= 0])  # the incomplete last row keeps what it got
        if not ok:
            break
    assert all(len(r) == 129 for r in rows[:-1]) and all(r[0] == 0 for r in rows)
    pieces = [p for r in rows for p in np.split(r, np.flatnonzero(r == 0))[1:]]
    lone = [r for r in rows if r[-1] == 0]  # one token of space left: the row ends with a bos
    pieces = [p for p in pieces if len(p) > 1]
    # each piece is a run of consecutive positions of one document; a document's pieces come in order
    next_pos = {}
    for p in pieces:
        body = p[1:].tolist()
        doc = body[0] // 1000
        assert body == list(range(body[0], body[0] + len(body)))
        assert body[0] % 1000 == next_pos.get(doc, 0)
        next_pos[doc] = body[-1] % 1000 + 1
    assert next_pos == {d: len(t) - 1 for d, t in enumerate(docs, 1)}  # every token, none twice
    assert stats[0] == len(pieces) and stats[2] == stats[1] + len(lone)  # every crop's remainder was placed


def test_packer_gives_long_documents_whole_rows():
    # a document 3 rows long among short ones is laid out at row starts, so it is split only where it must be
    docs = [np.arange(0, 3 * 64, dtype=np.int32)] + [np.array([0, 1000, 1001, 1002], dtype=np.int32)] * 40
    source = ((t, (0, 0, 0), Cursor(0, 0, 0, i + 1)) for i, t in enumerate(docs))
    packer = dl._Packer(source, 0, 8, Cursor(0, 0, 0, 0))
    stats = [0, 0, 0, 0]
    row = np.empty(64, dtype=np.int32)
    packer.fill_row(row, stats)
    assert row.tolist() == list(range(64))  # bos + the first 63 tokens
    packer.fill_row(row, stats)
    assert row.tolist() == [0, *range(64, 127)]  # bos + the next 63
    assert stats[:2] == [2, 2]


# ----------------------------------------------------------------------------- batches


def test_batches_shape_bos_and_shift(tmp_path):
    tok = Tokenizer.from_ranks({bytes([i]): i for i in range(256)}, SPLIT_PATTERN)
    rng = random.Random(0)
    texts = [" ".join("".join(rng.choices("abcdefgh", k=rng.randint(1, 9))) for _ in range(rng.randint(3, 80)))
             for _ in range(200)]
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"text": texts}), path, row_group_size=64)
    with TokenLoader([path], tok, 4, 96, rank=0, world_size=1, loop=False) as ld:
        batches = list(ld)
    assert len(batches) > 5
    for x, y in batches:
        assert x.shape == y.shape == (4, 96) and x.dtype == y.dtype == torch.int64
        assert (x[:, 0] == tok.bos_token_id).all()
        assert torch.equal(x[:, 1:], y[:, :-1])
        for row in rows_of(x, y).tolist():  # every piece decodes to text from some document
            for piece in tok.decode(row).split("<|bos|>")[1:]:
                assert any(piece in t for t in texts)


def test_validation_mode_ends_and_covers_its_pass(corpus):
    paths, docs = corpus
    with loader(paths, loop=False) as ld:
        got = [rows_of(x, y) for x, y in ld]
        with pytest.raises(StopIteration):
            next(ld)
        final = ld.state_dict()
    emitted = emitted_tokens(got)
    assert len(emitted) == len(set(emitted))
    everything = {t for d in docs for t in d.tokens}
    assert set(emitted) | leftover_tokens(final, docs) == everything
    # only the last incomplete batch is dropped
    assert len(everything) - len(emitted) < B * (T + 1)


def test_state_dict_is_json(corpus):
    paths, _ = corpus
    with loader(paths) as ld:
        read(ld, 3)
        state = ld.state_dict()
    assert json.loads(json.dumps(state)) == state
    assert {"epoch", "shard", "row_group", "row", "buffer", "rank", "world_size"} <= set(state)
    assert all(isinstance(p["tokens"], list) for p in state["buffer"])


# ----------------------------------------------------------------------------- exact resume


def _resume_points(states):
    """Indices k (state after k batches) for the scenarios resume must handle."""
    def first(pred):
        return next(k for k in range(1, len(states) - 6) if pred(k))
    return {
        "mid_row_group": first(lambda k: 0 < states[k]["row"] < 10 and states[k]["buffer"]),
        "shard_boundary": first(lambda k: states[k + 2]["shard"] != states[k]["shard"]),
        "epoch_boundary": first(lambda k: states[k + 2]["epoch"] != states[k]["epoch"]),
        "cropped_remainder": first(lambda k: any(p["part"] > 0 for p in states[k]["buffer"])),
    }


@pytest.mark.parametrize("rank,world_size", [(0, 1), (0, 2), (1, 2)])
def test_exact_resume(corpus, probes, rank, world_size):
    paths, _ = corpus
    rows, states = probes[rank, world_size]
    states = [initial_state(paths, rank, world_size)] + states  # states[k]: after k batches
    points = _resume_points(states)
    for name, k in points.items():
        with loader(paths, rank=rank, world_size=world_size, state=states[k]) as ld:
            again, _ = read(ld, 5)
        for a, b in zip(again, rows[k:k + 5]):
            assert torch.equal(a, b), f"resume at {name} (after {k} batches) diverged"


def test_load_state_dict_restarts_a_running_loader(corpus, probes):
    paths, _ = corpus
    rows, states = probes[0, 1]
    with loader(paths) as ld:
        read(ld, 40)  # its producer is running ahead now
        ld.load_state_dict(states[9])  # the state after batch 10
        again, _ = read(ld, 4)
    assert all(torch.equal(a, b) for a, b in zip(again, rows[10:14]))


def test_prefetch_does_not_leak_into_state(corpus):
    paths, _ = corpus
    with loader(paths, prefetch=8) as ld:
        read(ld, 1)
        for _ in range(200):  # let the producer run ahead until its queue is full
            if ld._producer.queue.full():
                break
            time.sleep(0.01)
        assert ld._producer.queue.full()
        state = ld.state_dict()
        nxt, _ = read(ld, 2)
    with loader(paths, state=state) as ld2:
        again, _ = read(ld2, 2)
    assert all(torch.equal(a, b) for a, b in zip(again, nxt))


# ----------------------------------------------------------------------------- ranks


def test_ranks_disjoint_and_cover_everything(corpus):
    paths, docs = corpus
    emitted, covered = [], []
    for rank in (0, 1):
        with loader(paths, rank=rank, world_size=2, loop=False) as ld:
            got = [rows_of(x, y) for x, y in ld]
            final = ld.state_dict()
        toks = emitted_tokens(got)
        assert len(toks) == len(set(toks))
        mine = {t for d in docs if d.global_rg % 2 == rank for t in d.tokens}
        assert set(toks) <= mine  # global row-group numbers decide the rank
        assert set(toks) | leftover_tokens(final, docs, rank, 2) == mine
        emitted.append(set(toks))
        covered.append(mine)
    assert not emitted[0] & emitted[1]
    assert covered[0] | covered[1] == {t for d in docs for t in d.tokens}
    assert not covered[0] & covered[1]


@pytest.mark.parametrize("new_world_size", [1, 3])
def test_world_size_change_warns_and_skips_nothing(corpus, caplog, new_world_size):
    paths, docs = corpus
    seen, old_states = set(), []
    for rank, n in ((0, 7), (1, 12)):  # the ranks drift apart, as they do in a real run
        with loader(paths, rank=rank, world_size=2) as ld:
            rows, states = read(ld, n)
        seen.update(emitted_tokens(rows))
        old_states.append(states[-1])
    # the earliest row group that an old rank had not finished: its cursor's, or a pending piece's
    marks = [(s["epoch"], s["shard"], s["row_group"]) for s in old_states]
    marks += [tuple(p["src"]) for s in old_states for p in s["buffer"]]
    with pytest.raises(ValueError, match="list of all 2 ranks"):
        loader(paths, world_size=new_world_size, state=old_states[0])
    caplog.set_level(logging.WARNING, logger="nanochat.dataloader")
    after = set()
    for rank in range(new_world_size):
        caplog.clear()
        with loader(paths, rank=rank, world_size=new_world_size, loop=False, state=old_states) as ld:
            assert f"world size {new_world_size} from a state saved with world size 2" in caplog.text
            start = ld.state_dict()
            assert (start["epoch"], start["shard"], start["row_group"]) == min(marks)
            assert start["buffer"] == [] and start["row"] == 0
            got = [rows_of(x, y) for x, y in ld]
            final = ld.state_dict()
        after |= set(emitted_tokens(got)) | leftover_tokens(final, docs, rank, new_world_size)
    everything = {t for d in docs for t in d.tokens}
    assert seen | after == everything
    assert seen & after  # it went back to the earliest unfinished row group, so a little is read twice


def test_restore_rejects_mismatches(corpus):
    paths, _ = corpus
    state = initial_state(paths, 1, 2)
    with pytest.raises(ValueError, match="belongs to rank 1"):
        loader(paths, rank=0, world_size=2, state=state)
    with pytest.raises(ValueError, match="another tokenizer"):
        loader(paths, state=dict(initial_state(paths), bos=5))
    with pytest.raises(ValueError, match="shard index 7"):
        loader(paths, state=dict(initial_state(paths), shard=7))
    with pytest.raises(ValueError, match="not a loader state_dict"):
        loader(paths, state={"epoch": 0})
    broken = dict(initial_state(paths), buffer=[{"src": [0, 0, 0], "part": 0, "tokens": [5, 6]}])
    with pytest.raises(ValueError, match="malformed buffer entry 0"):
        loader(paths, state=broken)


def test_more_ranks_than_row_groups_is_an_error(tmp_path):
    paths, _ = make_corpus(tmp_path, docs_per_shard=(5,), rg_size=10)
    with loader(paths, rank=1, world_size=2) as ld, pytest.raises(DataLoaderError, match="fewer|gets none"):
        next(ld)


# ----------------------------------------------------------------------------- epochs, empty data, errors


def test_epochs_loop_and_are_logged(tmp_path, caplog):
    paths, docs = make_corpus(tmp_path, docs_per_shard=(3,), rg_size=2, max_len=20)  # far less than a batch
    caplog.set_level(logging.INFO, logger="nanochat.dataloader")
    with loader(paths, seq_len=256) as ld:
        read(ld, 3)
        assert ld.epoch >= 3
    assert "starting epoch 1 from the first shard" in caplog.text


def test_empty_shards_are_skipped_with_a_warning(tmp_path, caplog):
    paths, docs = make_corpus(tmp_path, docs_per_shard=(12,), rg_size=5)
    empty = str(tmp_path / "a_empty.parquet")
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), empty)
    blank = str(tmp_path / "b_blank.parquet")
    pq.write_table(pa.table({"text": ["", "  \n\t", None, " "]}), blank, row_group_size=2)
    caplog.set_level(logging.WARNING, logger="nanochat.dataloader")
    with loader([empty, blank, *paths], loop=False) as ld:
        got = [rows_of(x, y) for x, y in ld]
        final = ld.state_dict()
    assert f"shard {empty} yielded no text" in caplog.text
    assert f"shard {blank} yielded no text" in caplog.text
    everything = {t for d in docs for t in d.tokens}
    final = dict(final, shard=final["shard"] - 2)  # leftover_tokens indexes the corpus shards only
    assert set(emitted_tokens(got)) | leftover_tokens(final, docs) == everything


def test_blank_documents_and_row_groups_are_skipped(tmp_path, caplog):
    path = str(tmp_path / "s.parquet")
    texts = ["1 2 3", "   ", "4 5", "", "\n", " \t"] + [" ".join(str(10 + i) for i in range(200))]
    pq.write_table(pa.table({"text": texts}), path, row_group_size=3)
    caplog.set_level(logging.WARNING, logger="nanochat.dataloader")
    with loader([path], loop=False, seq_len=8) as ld:
        got = emitted_tokens([rows_of(x, y) for x, y in ld])
    assert "row group 1 of shard" in caplog.text and "holds no text" in caplog.text
    assert len(got) == len(set(got)) and set(got) <= {1, 2, 3, 4, 5, *range(10, 210)} and len(got) > 150


@pytest.mark.parametrize("loop", [True, False])
def test_corpus_without_text_is_an_error(tmp_path, loop):
    paths = []
    for name, texts in (("a", []), ("b", ["  ", "\n"])):
        paths.append(str(tmp_path / f"{name}.parquet"))
        pq.write_table(pa.table({"text": pa.array(texts, pa.string())}), paths[-1])
    with loader(paths, loop=loop) as ld, pytest.raises(DataLoaderError, match="no text for rank 0"):
        next(ld)


def test_corrupt_shard_error_names_the_path(tmp_path):
    paths, _ = make_corpus(tmp_path, docs_per_shard=(6,), rg_size=3, max_len=10)
    bad = str(tmp_path / "shard_99999.parquet")
    with open(bad, "wb") as f:
        f.write(b"this is not parquet" * 100)
    with loader([*paths, bad], seq_len=512) as ld:
        with pytest.raises(DataLoaderError, match="shard_99999.parquet"):
            next(ld)
        with pytest.raises(DataLoaderError, match="shard_99999.parquet"):  # and again, not a hang
            next(ld)


def test_missing_text_column_and_tokenizer_errors_name_the_shard(tmp_path):
    other = str(tmp_path / "other.parquet")
    pq.write_table(pa.table({"content": ["1 2 3"]}), other)
    with loader([other]) as ld, pytest.raises(DataLoaderError, match=r"other\.parquet.*no 'text' column"):
        next(ld)
    paths, docs = make_corpus(tmp_path, docs_per_shard=(10,), rg_size=5)
    poison = str(docs[7].tokens[0])
    with loader(paths, tokenizer=IdTokenizer(fail_on=poison), seq_len=4000) as ld:
        with pytest.raises(DataLoaderError, match=r"row group 1 of shard .*shard_00000\.parquet"):
            next(ld)


def test_bad_arguments(tmp_path, corpus):
    paths, _ = corpus
    with pytest.raises(ValueError, match="empty"):
        loader([])
    with pytest.raises(FileNotFoundError, match="do not exist"):
        loader([str(tmp_path / "nope.parquet")])
    with pytest.raises(ValueError, match="batch_size"):
        loader(paths, batch_size=0)
    with pytest.raises(ValueError, match="rank"):
        loader(paths, rank=2, world_size=2)


# ----------------------------------------------------------------------------- threads


def test_close_and_garbage_collection_stop_the_thread(corpus):
    paths, _ = corpus
    ld = loader(paths)
    next(ld)
    thread = ld._producer.thread
    assert thread.is_alive() and thread.daemon
    ld.close()
    assert not thread.is_alive()
    state = ld.state_dict()  # still valid after close, and the loader can go on
    next(ld)
    assert ld.state_dict() != state
    ld.close()

    ld = loader(paths)
    next(ld)
    thread = ld._producer.thread
    del ld
    gc.collect()
    thread.join(dl.JOIN_TIMEOUT_S)
    assert not thread.is_alive()


def test_default_rank_comes_from_the_environment(corpus, monkeypatch):
    paths, _ = corpus
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    ld = TokenLoader(paths, IdTokenizer(), B, T)
    assert (ld.state_dict()["rank"], ld.state_dict()["world_size"]) == (1, 2)
