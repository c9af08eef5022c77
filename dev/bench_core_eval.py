"""CORE evaluation speed: rows/s with one sequence per forward vs many rows' sequences per batch.

    python dev/bench_core_eval.py                             # d4 shape (width 256), vocab 65536, CPU fp32
    python dev/bench_core_eval.py --depth=2 --vocab=4096 --rows=32 --heads=positions --threads=1

A generated bundle in the eval bundle's format (in a temp dir): five tasks shaped like CORE's, a
hellaswag-like 4-choice task, an arc-like 4-choice task with 10 shots, a winograd-like 2-option schema
task, a lambada-like 0-shot and a squad-like 10-shot language-modeling task (whose prompts overflow the
context and are cropped). Byte-level tokens, a randomly initialised GPT of GPTConfig.from_depth(depth)
with the given vocabulary (the logits' width is what costs on a CPU). Every batch size must give the
same predictions as the first setting; the largest loss difference is printed beside the speed. Two
ways to get the logits are compared: `positions` (core_eval.logits_at: the head at the scored positions
only) and `full` (the head at every position, then picked: what a model other than our GPT gets).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
WORDS = ("the a of to and in is was for on that with as by at from his her it an were which are this be "
         "river house stone light winter garden music letter window market doctor engine number answer").split()


def sentence(rnd: random.Random, n: int) -> str:
    return " ".join(rnd.choice(WORDS) for _ in range(n))


def make_bundle(root: Path, rows: int, seed: int = 0) -> Path:
    import json

    rnd = random.Random(seed)
    tasks = {
        "hellaswag_like": ("multiple_choice", 0, " ", 25.0, lambda: {
            "query": sentence(rnd, rnd.randint(25, 45)), "gold": rnd.randrange(4),
            "choices": [sentence(rnd, rnd.randint(8, 20)) for _ in range(4)]}),
        "arc_like": ("multiple_choice", 10, " ", 25.0, lambda: {
            "query": "Question: " + sentence(rnd, rnd.randint(6, 14)) + "\nAnswer:", "gold": rnd.randrange(4),
            "choices": [sentence(rnd, rnd.randint(1, 4)) for _ in range(4)]}),
        "winograd_like": ("schema", 0, " ", 50.0, lambda: {
            "context_options": [sentence(rnd, rnd.randint(6, 14)) for _ in range(2)],
            "continuation": sentence(rnd, rnd.randint(3, 8)), "gold": rnd.randrange(2)}),
        "lambada_like": ("language_modeling", 0, " ", 0.0, lambda: {
            "context": sentence(rnd, rnd.randint(40, 70)), "continuation": rnd.choice(WORDS)}),
        "squad_like": ("language_modeling", 10, "\nAnswer: ", 0.0, lambda: {
            "context": sentence(rnd, rnd.randint(60, 100)) + "\nQuestion: " + sentence(rnd, 8) + "?",
            "continuation": sentence(rnd, rnd.randint(1, 3))}),
    }
    bundle = root / "eval_bundle"
    yaml_lines, meta = ["icl_tasks:"], ["Eval Task,Random baseline"]
    for label, (kind, shots, delimiter, baseline, make_row) in tasks.items():
        path = bundle / "eval_data" / f"{label}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(make_row()) + "\n" for _ in range(rows)))
        yaml_lines += [f"- label: {label}", f"  dataset_uri: {label}.jsonl", f"  num_fewshot: [{shots}]",
                       f"  icl_task_type: {kind}", f"  continuation_delimiter: {json.dumps(delimiter)}"]
        meta.append(f"{label},{baseline}")
    (bundle / "core.yaml").write_text("\n".join(yaml_lines) + "\n")
    (bundle / "eval_meta_data.csv").write_text("\n".join(meta) + "\n")
    return bundle


class FullLogits(torch.nn.Module):
    """The GPT seen as a plain logits model: core_eval then takes the head at every position and picks
    the continuation rows afterwards (the path every non-GPT model takes), instead of the head at the scored positions only (GPT.forward's at=)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, idx):
        return self.model(idx)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--vocab", type=int, default=65536)
    p.add_argument("--seq_len", type=int, default=1024)
    p.add_argument("--rows", type=int, default=16, help="rows per task")
    p.add_argument("--batch_sizes", default="1,8,32")
    p.add_argument("--heads", default="positions,full", help="positions: head at the scored positions only; full: everywhere")
    p.add_argument("--repeats", type=int, default=2, help="rounds over every setting, interleaved; best time kept")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    sys.path.insert(0, str(REPO))
    from nanochat.core_eval import MAX_BATCH_LOGITS, evaluate_task, load_rows, load_tasks
    from nanochat.gpt import GPT, GPTConfig
    from nanochat.tokenizer import SPLIT_PATTERN, Tokenizer

    if a.threads:
        torch.set_num_threads(a.threads)
    tokenizer = Tokenizer.from_ranks({bytes([i]): i for i in range(256)}, SPLIT_PATTERN)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_depth(a.depth, vocab_size=max(a.vocab, tokenizer.n_vocab), sequence_len=a.seq_len))
    with torch.no_grad():  # fresh init has zero output projections; random ones make every layer work
        for param in model.parameters():
            param.normal_(0, 0.05)
    model.to(a.device).eval()
    models = {"positions": model, "full": FullLogits(model)}
    print(f"model: depth {a.depth}, width {model.config.n_embd}, vocab {model.config.vocab_size}, context "
          f"{a.seq_len}, {model.num_params() / 1e6:.1f}M params; device {a.device}, torch threads "
          f"{torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        bundle = make_bundle(Path(tmp), a.rows)
        tasks = [(t, load_rows(bundle, t)) for t in load_tasks(bundle)]
        n_rows = sum(len(r) for _, r in tasks)
        batch_tokens = max(1, MAX_BATCH_LOGITS // model.config.vocab_size)
        settings = [(h, int(bs)) for h in a.heads.split(",") for bs in a.batch_sizes.split(",")]
        best = {s: float("inf") for s in settings}
        outcome = {}
        # Rounds interleave the settings, and each keeps its best round: on a shared machine a burst of
        # someone else's load then slows one round, not one setting.
        for _ in range(a.repeats):
            for head, bs in settings:
                t0 = time.perf_counter()
                results = [evaluate_task(models[head], tokenizer, t, rows, batch_size=bs, max_batch_tokens=batch_tokens,
                                         max_seq_len=a.seq_len, progress_every=0) for t, rows in tasks]
                best[head, bs] = min(best[head, bs], time.perf_counter() - t0)
                outcome[head, bs] = [e for r in results for e in r.examples]
        reference = outcome[settings[0]]
        print(f"{len(tasks)} tasks, {n_rows} rows, {sum(len(e.losses) for e in reference)} sequences; "
              f"best of {a.repeats}; speedup and differences against the first row")
        print(f"{'head':>9} | {'batch_size':>10} | {'seconds':>8} | {'rows/s':>7} | {'speedup':>7} | same preds | max |dloss|")
        for s in settings:
            same = all(x.predicted == y.predicted for x, y in zip(reference, outcome[s]))
            dloss = max(abs(u - v) for x, y in zip(reference, outcome[s]) for u, v in zip(x.losses, y.losses))
            print(f"{s[0]:>9} | {s[1]:>10} | {best[s]:>8.2f} | {n_rows / best[s]:>7.1f} | "
                  f"{best[settings[0]] / best[s]:>6.2f}x | {str(same):>10} | {dloss:.2e}")

if __name__ == "__main__":
    main()
