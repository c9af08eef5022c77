"""Tokenizer benchmark: our Rust trainer + tiktoken encoder against PyPI `rustbpe` and HF `tokenizers`.

    uv pip install -e ".[bench]"                      # the two competitors
    python dev/bench_tokenizer.py                     # 50 MB, vocab 65536, best of 3
    python dev/bench_tokenizer.py --mb=10 --repeats=1 # quick look

Training: every trainer reads the same documents (Python sources and docstrings of the local
install, streamed from one JSON-lines file, so no trainer holds the corpus) with the same split
pattern and vocabulary size, each in its own process; we report wall time of the training call,
MB/s, and the process's peak RSS (ru_maxrss) with its RSS before training beside it.
Encoding: the same documents through each encoder with 1 and 2 threads, MB/s, and whether the
ids equal ours. HF `tokenizers` is loaded with our exact vocabulary and merges; PyPI `rustbpe`
cannot load a vocabulary, so it is trained on the same text to the same size (its ids then match
ours only if its merges do, which the output says).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TRAINERS = ("nanochat", "rustbpe-pypi", "hf-tokenizers")
ENCODERS = ("nanochat", "rustbpe-pypi", "hf-tokenizers")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def iter_corpus(path: str, max_bytes: int | None = None):
    done = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            done += len(doc.encode("utf-8"))
            if max_bytes is not None and done > max_bytes:
                return
            yield doc


def write_corpus(path: Path, mb: float) -> tuple[int, int]:
    """Docstrings then sources of the local install, up to `mb` MB, one JSON string per line."""
    sys.path.insert(0, str(REPO))
    from nanochat.embedded_corpus import iter_documents

    limit, total, n = int(mb * 1e6), 0, 0
    with open(path, "w", encoding="utf-8") as f:
        for kind in ("prose", "code"):
            for doc in iter_documents(kind):
                size = len(doc.encode("utf-8"))
                if total + size > limit:
                    break
                f.write(json.dumps(doc) + "\n")
                total, n = total + size, n + 1
    return n, total


def hf_pre_tokenizer(pattern: str):
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def hf_from_ranks(ranks: dict[bytes, int], pattern: str):
    """An HF byte-level BPE tokenizer holding exactly our vocabulary and merges."""
    from tokenizers import Tokenizer, decoders
    from tokenizers.models import BPE

    # HF's byte-level models spell each byte as one printable char (GPT-2's mapping): printable
    # latin-1 bytes stand for themselves, the other 68 take chars 256, 257, ... in byte order
    printable = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    byte_char, n = {}, 0
    for b in range(256):
        if b in printable:
            byte_char[b] = chr(b)
        else:
            byte_char[b] = chr(256 + n)
            n += 1

    def spell(token: bytes) -> str:
        return "".join(byte_char[b] for b in token)

    by_rank = sorted(ranks.items(), key=lambda kv: kv[1])
    vocab = {spell(tok): rank for tok, rank in by_rank}
    merges = []
    for tok, rank in by_rank[256:]:
        # tiktoken merges by the rank of the joined bytes, so the pair HF needs is what rank-ordered
        # merging of this token's bytes, using only lower ranks, leaves as its last two parts
        parts = [bytes([b]) for b in tok]
        while len(parts) > 2:
            joined = [(ranks.get(parts[i] + parts[i + 1], rank), i) for i in range(len(parts) - 1)]
            best, i = min(joined)
            assert best < rank, f"token {tok!r} cannot be built from lower ranks"
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        merges.append((spell(parts[0]), spell(parts[1])))
    tok = Tokenizer(BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = hf_pre_tokenizer(pattern)
    tok.decoder = decoders.ByteLevel()
    return tok


# ------------------------------------------------------------------ workers (one process each)


def worker_train(name: str, corpus: str, vocab: int, ranks_out: str | None) -> dict:
    from nanochat.tokenizer import SPLIT_PATTERN

    if name == "nanochat":
        from nanochat import rustbpe

        before = peak_rss_mb()
        t0 = time.perf_counter()
        trained = rustbpe.train(iter_corpus(corpus), vocab, SPLIT_PATTERN)
        seconds = time.perf_counter() - t0
        ranks = trained.mergeable_ranks()
    elif name == "rustbpe-pypi":
        import rustbpe

        before = peak_rss_mb()
        t0 = time.perf_counter()
        tok = rustbpe.Tokenizer()
        tok.train_from_iterator(iter_corpus(corpus), vocab, pattern=SPLIT_PATTERN)
        seconds = time.perf_counter() - t0
        ranks = list(tok.get_mergeable_ranks())
    else:
        from tokenizers import Tokenizer
        from tokenizers.models import BPE
        from tokenizers.pre_tokenizers import ByteLevel
        from tokenizers.trainers import BpeTrainer

        before = peak_rss_mb()
        t0 = time.perf_counter()
        tok = Tokenizer(BPE())
        tok.pre_tokenizer = hf_pre_tokenizer(SPLIT_PATTERN)
        trainer = BpeTrainer(vocab_size=vocab, initial_alphabet=ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(iter_corpus(corpus), trainer=trainer)
        seconds = time.perf_counter() - t0
        ranks = [(None, i) for i in range(tok.get_vocab_size())]
    if ranks_out:
        Path(ranks_out).write_text(json.dumps([[list(t), r] for t, r in ranks]))
    return {"seconds": seconds, "rss_before_mb": before, "peak_rss_mb": peak_rss_mb(), "vocab": len(ranks)}


def worker_encode(name: str, corpus: str, ranks_path: str, threads: int, encode_mb: float, vocab: int) -> dict:
    from nanochat.tokenizer import SPLIT_PATTERN, Tokenizer

    ranks = {bytes(t): r for t, r in json.loads(Path(ranks_path).read_text())}
    docs = list(iter_corpus(corpus, int(encode_mb * 1e6)))
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    if name == "nanochat":
        tok = Tokenizer.from_ranks(ranks, SPLIT_PATTERN)
        run = lambda: tok.encode(docs, num_threads=threads)
    elif name == "rustbpe-pypi":
        import rustbpe

        tok = rustbpe.Tokenizer()
        tok.train_from_iterator(iter_corpus(corpus), vocab, pattern=SPLIT_PATTERN)
        same_vocab = dict(tok.get_mergeable_ranks()) == ranks
        run = (lambda: [tok.encode(d) for d in docs]) if threads == 1 else (lambda: tok.batch_encode(docs))
    else:
        tok = hf_from_ranks(ranks, SPLIT_PATTERN)
        run = (
            (lambda: [e.ids for e in (tok.encode(d, add_special_tokens=False) for d in docs)])
            if threads == 1
            else (lambda: [e.ids for e in tok.encode_batch(docs, add_special_tokens=False)])
        )
    run()  # warm-up: first calls build caches and thread pools
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        ids = run()
        best = min(best, time.perf_counter() - t0)
    digest = hashlib.sha256(json.dumps(ids).encode()).hexdigest()
    out = {"mb_per_s": n_bytes / best / 1e6, "bytes": n_bytes, "ids_sha256": digest}
    if name == "rustbpe-pypi":
        out["same_vocab"] = same_vocab
    return out


def spawn(args: list[str], threads: int | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if threads is not None:  # rayon (HF, PyPI rustbpe) reads this when its pool starts
        env["RAYON_NUM_THREADS"] = str(threads)
        env["TOKENIZERS_PARALLELISM"] = "true"
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args[:2]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=float, default=50.0, help="MB of text to train on")
    p.add_argument("--vocab", type=int, default=65536, help="vocabulary size (bytes + merges)")
    p.add_argument("--repeats", type=int, default=3, help="training runs per trainer; best time, lowest peak")
    p.add_argument("--encode_mb", type=float, default=10.0, help="MB of text to encode")
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()

    if a.worker:  # internal: one measurement in a fresh process
        kind, *rest = a.worker
        if kind == "train":
            name, corpus, vocab, ranks_out = rest
            result = worker_train(name, corpus, int(vocab), ranks_out if ranks_out != "-" else None)
        else:
            name, corpus, ranks_path, threads, encode_mb, vocab = rest
            result = worker_encode(name, corpus, ranks_path, int(threads), float(encode_mb), int(vocab))
        print(json.dumps(result))
        return

    tmp = Path(tempfile.mkdtemp(prefix="bench_tok_"))
    corpus, ranks_path = tmp / "corpus.jsonl", tmp / "ranks.json"
    n_docs, n_bytes = write_corpus(corpus, a.mb)
    print(f"corpus: {n_docs:,} documents, {n_bytes / 1e6:.1f} MB (docstrings then sources of the local install)")
    print(f"machine: {os.cpu_count()} cores; vocab {a.vocab}; best of {a.repeats}\n")

    print(f"{'trainer':<16}{'seconds':>9}{'MB/s':>8}{'RSS before':>12}{'peak RSS':>10}{'vocab':>8}")
    for name in TRAINERS:
        runs = [
            spawn(["--worker", "train", name, str(corpus), str(a.vocab), str(ranks_path) if name == "nanochat" else "-"])
            for _ in range(a.repeats)
        ]
        sec = min(r["seconds"] for r in runs)
        print(
            f"{name:<16}{sec:>9.2f}{n_bytes / sec / 1e6:>8.2f}{min(r['rss_before_mb'] for r in runs):>10.0f}MB"
            f"{min(r['peak_rss_mb'] for r in runs):>8.0f}MB{runs[0]['vocab']:>8}"
        )

    print(f"\n{'encoder':<16}{'threads':>8}{'MB/s':>8}  ids equal ours")
    reference = {}
    for threads in (1, 2):
        for name in ENCODERS:
            args = ["--worker", "encode", name, str(corpus), str(ranks_path), str(threads), str(a.encode_mb), str(a.vocab)]
            r = spawn(args, threads=threads)
            reference.setdefault(threads, r["ids_sha256"] if name == "nanochat" else None)
            same = "yes" if r["ids_sha256"] == reference[threads] else "no"
            note = "" if "same_vocab" not in r else f" (trained here; vocab identical to ours: {r['same_vocab']})"
            print(f"{name:<16}{threads:>8}{r['mb_per_s']:>8.2f}  {same}{note}")


if __name__ == "__main__":
    main()
