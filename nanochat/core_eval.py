"""The CORE metric (DCLM, Li et al. 2024, arXiv:2406.11794, as nanochat reports it): in-context tasks scored
by the model's loss, each accuracy centered on its chance level, CORE = the mean of those.

    bundle = ensure_bundle()                    # $NANOCHAT_BASE_DIR/eval_bundle, fetched once if missing
    results = evaluate_core(model, tokenizer, bundle, max_problems=500, batch_size=32, autocast=amp)
    results["CORE"], results["tasks"]["arc_easy"]["centered"], results["baselines"]

The eval bundle (the public eval_bundle.zip): core.yaml lists the tasks (`icl_tasks`: label, dataset_uri
under eval_data/, num_fewshot (a list; its first entry is used), icl_task_type, optional
continuation_delimiter, default one space); eval_meta_data.csv gives each task's `Random baseline` in
percent under `Eval Task`; eval_data/**/*.jsonl holds the rows:
    multiple_choice    {"query", "choices": [...], "gold"}       one context, one continuation per choice
    schema             {"context_options": [...], "continuation", "gold"}   one continuation, one context each
    language_modeling  {"context", "continuation"}
A row's few-shot examples are drawn from the task's other rows with Random(FEWSHOT_SEED + row index). Each
prompt is tokenized with BOS first; multiple_choice and schema pick the option whose continuation tokens
have the lowest mean loss, language_modeling counts a row when greedy argmax reproduces every
continuation token. Prompts are scored whole, as upstream nanochat does, also past the training
context (at 2,048 tokens and a 65,536 vocabulary, ~1,400 of boolq's 3,270 rows): the rotary tables reach
ROTARY_HEADROOM times further (upstream builds them 10x too). Only a prompt longer than that loses
tokens on the left, never the continuation, and each task counts its cropped rows.
centered = (accuracy - baseline) / (1 - baseline) with the baseline as a fraction; which table of
baselines the bundle holds (DCLM's 2024 file or another) is named in the results (describe_baselines).

Batching: the sequences (one per option) of many rows are sorted by length and stacked, right-padded,
up to batch_size sequences per forward; causal attention keeps the padding out of every real position,
so a sequence scores the same batched or alone. Rows are dealt round-robin over ranks and the counts
summed with all_reduce. Letters: B sequences, T padded length, V vocabulary, M scored positions.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from nanochat.common import Throttle, dist_initialized, file_lock, get_base_dir, print0, rank_and_world
from nanochat.download import DownloadError, download_file

TASK_TYPES = ("multiple_choice", "schema", "language_modeling")
DEFAULT_DELIMITER = " "
FEWSHOT_SEED = 1234  # row i draws its examples with Random(FEWSHOT_SEED + i), as DCLM's harness and nanochat do
SHUFFLE_SEED = 1337  # rows are shuffled once, so --max_problems takes a random subset, not the file's first rows
# Cap on B x T x V per forward: the logits a model other than our GPT materialises (4 GiB fp32; GPT
# computes the continuation positions' only, see logits_at). At vocabulary 65,536 a batch holds at
# most 16,384 padded positions, so long prompts go a few to a batch and short ones up to batch_size.
MAX_BATCH_LOGITS = 2**30
FETCH_COMMAND = "python -m scripts.base_eval --download_only"
# Random baselines (percent) of the 22 CORE tasks in DCLM's eval_meta_data.csv as first published
# (2024; kept in mlfoundations/dclm as eval/eval_meta_data_v1.csv) and shipped in eval_bundle.zip, the
# file upstream nanochat's numbers use. DCLM corrected some values in 2025 (mlfoundations/dclm issue
# #114, "CORE centered accuracy calculation and random baseline"); a bundle with other values is
# described by the tasks that differ, so two reports can be told apart.
DCLM_2024_BASELINES = {
    "hellaswag_zeroshot": 25, "jeopardy": 0, "bigbench_qa_wikidata": 0, "arc_easy": 25, "arc_challenge": 25,
    "copa": 50, "commonsense_qa": 20, "piqa": 50, "openbook_qa": 25, "lambada_openai": 0, "hellaswag": 25,
    "winograd": 50, "winogrande": 50, "bigbench_dyck_languages": 0, "agi_eval_lsat_ar": 20,
    "bigbench_cs_algorithms": 0, "bigbench_operators": 0, "bigbench_repeat_copy_logic": 0, "squad": 0, "coqa": 0,
    "boolq": 62, "bigbench_language_identification": 9.1,
}


@dataclass(frozen=True)
class BundleSource:
    """Where the eval bundle comes from. `env` overrides `url` with a mirror, a file:// URL or a local zip."""

    url: str
    env: str
    dirname: str  # folder under $NANOCHAT_BASE_DIR
    sha256: str | None = None  # not published for this file: the zip is validated by its content instead


EVAL_BUNDLE = BundleSource(
    url="https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip",
    env="NANOCHAT_EVAL_BUNDLE_URL",
    dirname="eval_bundle",
)
DOWNLOAD_RETRIES = 5  # handed to download_file (tests shrink these two)
RETRY_BACKOFF = 1.0  # s, first retry delay


# ----------------------------------------------------------------------------------------------
# Fetching the bundle


def bundle_dir() -> Path:
    return get_base_dir(create=False) / EVAL_BUNDLE.dirname


def bundle_url() -> str:
    return os.environ.get(EVAL_BUNDLE.env, "").strip() or EVAL_BUNDLE.url


def ensure_bundle(*, download: bool = True) -> Path:
    """The unpacked bundle, fetched first when missing (download=False: FileNotFoundError instead)."""
    final = bundle_dir()
    if (final / "core.yaml").is_file():
        return final
    if final.exists():
        # only a rename puts a bundle there, so this is someone's own folder: do not overwrite it
        raise FileNotFoundError(f"{final} exists but holds no core.yaml: move it away and fetch the bundle "
                                f"with {FETCH_COMMAND}")
    if not download:
        raise FileNotFoundError(f"no CORE eval bundle at {final}: fetch it with {FETCH_COMMAND}")
    return download_bundle()


def _zip_root(names: Sequence[str]) -> str | None:
    """The folder prefix ('' or 'eval_bundle/') of core.yaml inside the zip, or None without one."""
    for name in names:
        parts = name.split("/")
        if parts[-1] == "core.yaml" and len(parts) <= 2 and parts[0] != "__MACOSX":
            return name[: -len("core.yaml")]
    return None


def check_bundle_zip(path: str | os.PathLike) -> bool:
    """download_file's validator: the zip opens, every member's CRC holds, and it has a core.yaml."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            broken = zf.testzip()  # reads every member: a flipped byte anywhere fails here, not mid-eval
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError, RuntimeError) as e:
        raise DownloadError(f"{path}: not a readable zip ({e})") from None
    if broken is not None:
        raise DownloadError(f"{path}: zip member {broken} is corrupt (CRC mismatch)")
    if _zip_root(names) is None:
        raise DownloadError(f"{path}: the zip holds no core.yaml, so it is not a CORE eval bundle")
    return True


def _exclusive(base: Path):
    """One fetcher per base dir: a second waits, then finds the bundle the first installed."""
    return file_lock(base / f".{EVAL_BUNDLE.dirname}.lock", wait=True,
                     busy_message=f"waiting for another process that is fetching the eval bundle into {base}")


def download_bundle(url: str | None = None) -> Path:
    """Fetch the zip (verified, resumable), unpack it beside the final folder and rename it into place.

    An interrupted fetch leaves eval_bundle.zip.part (resumed next time); an interrupted unpack leaves a
    .eval_bundle.*.tmp folder (removed next time); eval_bundle/ itself only ever appears complete.
    """
    url = url or bundle_url()
    base = get_base_dir()
    final = base / EVAL_BUNDLE.dirname
    with _exclusive(base):
        if (final / "core.yaml").is_file():
            return final  # another process installed it while we waited
        for stale in base.glob(f".{EVAL_BUNDLE.dirname}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        print0(f"fetching the CORE eval bundle from {url}")
        try:
            zip_path = download_file(url, base / f"{EVAL_BUNDLE.dirname}.zip", sha256=EVAL_BUNDLE.sha256,
                                     validate=check_bundle_zip, retries=DOWNLOAD_RETRIES, backoff=RETRY_BACKOFF)
        except DownloadError as e:
            raise FileNotFoundError(
                f"no CORE eval bundle at {final} and fetching it failed: {e} -- fetch it on a machine with "
                f"network ({FETCH_COMMAND}) and copy {final} here, or set {EVAL_BUNDLE.env} to a mirror URL "
                f"or a local eval_bundle.zip") from None
        try:
            _unpack(zip_path, final)
        except ValueError:
            zip_path.unlink()  # a zip we refuse to unpack would pass validation again next time
            raise
        zip_path.unlink()  # the unpacked folder is what is used; the zip would only double the disk
    print0(f"CORE eval bundle ready in {final}")
    return final


def _unpack(zip_path: Path, final: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{EVAL_BUNDLE.dirname}.", suffix=".tmp", dir=final.parent))
    try:
        with zipfile.ZipFile(zip_path) as zf:
            for name in zf.namelist():
                parts = name.replace("\\", "/").split("/")
                if name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
                    raise ValueError(f"{zip_path}: member {name!r} would land outside the bundle folder; "
                                     f"the zip is not a CORE eval bundle")
            root = _zip_root(zf.namelist())
            zf.extractall(tmp)
        os.rename(tmp / root if root else tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # what is left of the temp dir (all of it on failure)


# ----------------------------------------------------------------------------------------------
# Reading the bundle


@dataclass(frozen=True)
class TaskSpec:
    label: str
    task_type: str  # one of TASK_TYPES
    dataset_uri: str  # relative to eval_data/
    num_fewshot: int
    delimiter: str  # between context and continuation
    random_baseline: float  # chance accuracy in percent, as eval_meta_data.csv gives it


def load_tasks(bundle: str | os.PathLike | None = None) -> list[TaskSpec]:
    """The tasks core.yaml lists, in its order, each with its random baseline from eval_meta_data.csv."""
    import yaml  # imported here: only evaluation needs it

    bundle = Path(bundle) if bundle is not None else bundle_dir()
    config_path = bundle / "core.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"no core.yaml in {bundle}: fetch the CORE eval bundle with {FETCH_COMMAND}")
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{config_path} is not valid YAML ({' '.join(str(e).split())}); fetch the bundle again") from None
    entries = config.get("icl_tasks") if isinstance(config, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{config_path} has no `icl_tasks:` list of tasks")
    baselines = _random_baselines(bundle / "eval_meta_data.csv")
    tasks = []
    for i, entry in enumerate(entries):
        where = f"{config_path} task {i + 1}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} is not a mapping of label, dataset_uri, num_fewshot, icl_task_type")
        missing = [k for k in ("label", "dataset_uri", "num_fewshot", "icl_task_type") if k not in entry]
        if missing:
            raise ValueError(f"{where} lacks {', '.join(missing)}")
        label, task_type = str(entry["label"]), entry["icl_task_type"]
        if task_type not in TASK_TYPES:
            raise ValueError(f"{where} ({label}): icl_task_type {task_type!r} is not one of {', '.join(TASK_TYPES)}")
        shots = entry["num_fewshot"]
        shots = shots[0] if isinstance(shots, list) and shots else shots
        if not isinstance(shots, int) or isinstance(shots, bool) or shots < 0:
            raise ValueError(f"{where} ({label}): num_fewshot must be a list of non-negative integers, got {entry['num_fewshot']!r}")
        if label not in baselines:
            raise ValueError(f"{bundle / 'eval_meta_data.csv'} has no `Random baseline` for task {label!r}")
        delimiter = entry.get("continuation_delimiter", DEFAULT_DELIMITER)
        tasks.append(TaskSpec(label, task_type, str(entry["dataset_uri"]), shots,
                              DEFAULT_DELIMITER if delimiter is None else str(delimiter), baselines[label]))
    return tasks


def _random_baselines(path: Path) -> dict[str, float]:
    if not path.is_file():
        raise FileNotFoundError(f"no {path.name} in {path.parent}: fetch the CORE eval bundle with {FETCH_COMMAND}")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not {"Eval Task", "Random baseline"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{path} lacks the columns `Eval Task` and `Random baseline` (has {reader.fieldnames})")
        out = {}
        for line, row in enumerate(reader, start=2):
            try:
                value = float(row["Random baseline"])
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{line}: Random baseline {row['Random baseline']!r} is not a number") from None
            if not 0 <= value < 100:
                raise ValueError(f"{path}:{line}: Random baseline {value} is not a percentage in [0, 100)")
            out[row["Eval Task"].strip()] = value
    return out


def describe_baselines(tasks: Sequence[TaskSpec]) -> str:
    """Which random baselines `tasks` carry: "DCLM 2024", or the tasks whose values differ from it, and a
    fingerprint (sha256 of the label=value lines) that two runs can compare."""
    lines = "\n".join(f"{t.label}={t.random_baseline:g}" for t in sorted(tasks, key=lambda t: t.label))
    fingerprint = f"sha256 {hashlib.sha256(lines.encode()).hexdigest()[:12]}"
    unknown = [t.label for t in tasks if t.label not in DCLM_2024_BASELINES]
    differ = [f"{t.label} {t.random_baseline:g} (2024: {DCLM_2024_BASELINES[t.label]:g})" for t in tasks
              if t.label in DCLM_2024_BASELINES and abs(t.random_baseline - DCLM_2024_BASELINES[t.label]) > 1e-9]
    if differ:  # e.g. DCLM's corrected 2025 file
        return f"not DCLM 2024: {', '.join(differ)}; {fingerprint}"
    if unknown:
        return f"custom: {len(unknown)} task(s) not in DCLM's table ({', '.join(unknown[:5])}); {fingerprint}"
    return f"DCLM 2024 (eval_bundle.zip, as upstream nanochat); {fingerprint}"


def _check_row(row: object, task_type: str) -> str | None:
    """What is wrong with one row, or None."""
    if not isinstance(row, dict):
        return "a row must be a JSON object"
    if task_type == "language_modeling":
        if not (isinstance(row.get("context"), str) and isinstance(row.get("continuation"), str)):
            return "needs string fields context and continuation"
        return None
    key = "choices" if task_type == "multiple_choice" else "context_options"
    options = row.get(key)
    if not (isinstance(options, list) and options and all(isinstance(o, str) for o in options)):
        return f"needs {key}: a non-empty list of strings"
    if task_type == "multiple_choice" and not isinstance(row.get("query"), str):
        return "needs a string field query"
    if task_type == "schema" and not isinstance(row.get("continuation"), str):
        return "needs a string field continuation"
    gold = row.get("gold")
    if not (isinstance(gold, int) and not isinstance(gold, bool) and 0 <= gold < len(options)):
        return f"gold must index {key} (0..{len(options) - 1}), got {gold!r}"
    return None


def load_rows(bundle: str | os.PathLike | None, task: TaskSpec) -> list[dict]:
    """All rows of a task, checked, in the fixed shuffled order every rank and every run sees."""
    bundle = Path(bundle) if bundle is not None else bundle_dir()
    path = bundle / "eval_data" / task.dataset_uri
    if not path.is_file():
        raise FileNotFoundError(f"task {task.label}: no {path}; the bundle is incomplete, remove {bundle} and "
                                f"fetch it again with {FETCH_COMMAND}")
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not JSON ({e.msg})") from None
            problem = _check_row(row, task.task_type)
            if problem:
                raise ValueError(f"{path}:{line_no}: {task.task_type} row {problem}")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path} has no rows")
    random.Random(SHUFFLE_SEED).shuffle(rows)
    return rows


# ----------------------------------------------------------------------------------------------
# Prompts and their scored spans


def fewshot_indices(num_rows: int, index: int, k: int) -> list[int]:
    """k rows other than `index`, the same every run; k is capped at the num_rows - 1 there are."""
    others = [i for i in range(num_rows) if i != index]
    return random.Random(FEWSHOT_SEED + index).sample(others, min(k, len(others)))


def render_prompts(task_type: str, row: dict, shots: Sequence[dict], delimiter: str) -> list[str]:
    """The texts to score: one per choice / context option; for language_modeling [without, with]
    the continuation. Few-shot examples come first, each answered correctly, separated by a blank line."""
    if task_type == "multiple_choice":
        prefix = "".join(f"{s['query']}{delimiter}{s['choices'][s['gold']]}\n\n" for s in shots)
        return [f"{prefix}{row['query']}{delimiter}{choice}" for choice in row["choices"]]
    if task_type == "schema":
        prefix = "".join(f"{s['context_options'][s['gold']]}{delimiter}{s['continuation']}\n\n" for s in shots)
        return [f"{prefix}{context}{delimiter}{row['continuation']}" for context in row["context_options"]]
    if task_type == "language_modeling":
        prefix = "".join(f"{s['context'].strip()}{delimiter}{s['continuation']}\n\n" for s in shots)
        with_continuation = f"{prefix}{row['context'].strip()}{delimiter}{row['continuation']}"
        # Trailing whitespace of the delimiter is dropped from the prompt alone: BPE glues a space to the
        # next word, so "...Answer: Paris" tokenizes as "...Answer:" + " Paris", and "...Answer: " would
        # end in a lone-space token that the full text never contains.
        return [f"{prefix}{row['context'].strip()}{delimiter}".rstrip(), with_continuation]
    raise ValueError(f"unknown icl_task_type {task_type!r}: valid types are {', '.join(TASK_TYPES)}")


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs):
            return i
    return n


def _common_suffix(seqs: Sequence[Sequence[int]]) -> int:
    return _common_prefix([s[::-1] for s in seqs])


def scored_spans(task_type: str, token_lists: Sequence[list[int]]) -> list[tuple[list[int], int, int]]:
    """(tokens, start, end) per sequence to run: tokens[start:end] is the continuation to score.

    multiple_choice: after the tokens all choices share; schema: the tokens all contexts end with;
    language_modeling: what the full text adds to the prompt (token_lists = [without, with]). Every span
    keeps at least one token and never the first (position 0 has no prediction).
    """
    if task_type == "multiple_choice":
        start = min(_common_prefix(token_lists), min(len(t) for t in token_lists) - 1)
        return [(t, max(start, 1), len(t)) for t in token_lists]
    if task_type == "schema":
        keep = max(1, min(_common_suffix(token_lists), min(len(t) for t in token_lists) - 1))
        return [(t, len(t) - keep, len(t)) for t in token_lists]
    if task_type == "language_modeling":
        without, full = token_lists
        start = min(_common_prefix([without, full]), len(full) - 1)
        return [(full, max(start, 1), len(full))]
    raise ValueError(f"unknown icl_task_type {task_type!r}: valid types are {', '.join(TASK_TYPES)}")


def crop_left(tokens: list[int], start: int, end: int, max_len: int | None) -> tuple[list[int], int, int]:
    """Drop tokens from the left until the sequence fits max_len; the continuation stays whole unless
    it alone is longer, and then its own first token (which has no prediction left) is the loss."""
    if max_len is None or len(tokens) <= max_len:
        return tokens, start, end
    cut = len(tokens) - max_len
    return tokens[cut:], max(start - cut, 1), end - cut


# ----------------------------------------------------------------------------------------------
# Scoring


@dataclass(frozen=True)
class ExampleResult:
    index: int  # row index in the shuffled task
    predicted: int  # chosen option; language_modeling: 1 if every continuation token was predicted, else 0
    correct: bool
    losses: tuple[float, ...]  # mean continuation loss per option (language_modeling: one value)


@dataclass
class TaskResult:
    label: str
    correct: int  # over all ranks
    total: int
    examples: list[ExampleResult] = field(default_factory=list)  # this rank's rows
    seconds: float = 0.0
    cropped: int = 0  # rows (over all ranks) with a prompt longer than max_seq_len, cropped on the left

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):  # a parameter-free callable (tests): run on CPU
        return torch.device("cpu")


def context_limit(model) -> int | None:
    """The longest sequence `model` can score: nanochat's GPT, its rotary tables (ROTARY_HEADROOM x the
    training context, like upstream's 10x cache, so whole prompts are scored as upstream scores them);
    another model, its max_seq_len attribute (Hugging Face style) or config.sequence_len; else None."""
    from nanochat.gpt import GPT

    if isinstance(model, GPT):
        return model.cos.size(1)
    limit = getattr(model, "max_seq_len", None)
    return limit if limit is not None else getattr(getattr(model, "config", None), "sequence_len", None)


def logits_at(model, idx: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Logits (M, V) at positions (rows[m], cols[m]) of idx (B, T).

    nanochat's GPT computes the head at those positions only (forward's `at`): the head is V / C wide
    (256x the width at d4) and, run over every position of a few-shot prompt, is >90% of a CPU forward
    pass; the continuations are a few positions of hundreds (dev/BENCHMARKS.md, CORE). Any other
    model: full logits, then picked.
    """
    from nanochat.gpt import GPT

    if not isinstance(model, GPT):
        return model(idx)[rows, cols]  # (M, V)
    return model(idx, at=(rows, cols))  # (M, V)


@torch.no_grad()
def score_sequences(model, sequences: Sequence[tuple[list[int], int, int]], *, batch_size: int,
                    max_batch_tokens: int | None = None, pad_id: int = 0, autocast=None,
                    progress: Callable[[int], None] | None = None) -> tuple[list[float], list[bool]]:
    """Per sequence (tokens, start, end): the mean loss over tokens[start:end] and whether greedy argmax
    predicts every one of them. model(idx (B, T)) -> logits (B, T, V), see logits_at.

    batch_size sequences at most per forward (1 = each sequence alone, unpadded), and at most
    max_batch_tokens padded positions (a single longer sequence still runs alone).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = _model_device(model)
    # Longest first: similar lengths share a batch (little padding), and a batch that does not fit in
    # memory fails on the first forward rather than after an hour.
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i][0]))
    losses, hits = [0.0] * len(sequences), [False] * len(sequences)
    done, pos = 0, 0
    while pos < len(order):
        width = len(sequences[order[pos]][0])  # the batch's longest, as sorted
        room = batch_size if not max_batch_tokens else max(1, min(batch_size, max_batch_tokens // width))
        batch = order[pos : pos + room]
        pos += len(batch)
        idx = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (B, T)
        rows, cols, lengths = [], [], []
        for b, i in enumerate(batch):
            tokens, start, end = sequences[i]
            idx[b, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            rows += [b] * (end - start)
            cols += range(start - 1, end - 1)  # the logits at t - 1 predict token t
            lengths.append(end - start)
        idx = idx.to(device)
        rows_t, cols_t = torch.tensor(rows, device=device), torch.tensor(cols, device=device)
        with autocast if autocast is not None else contextlib.nullcontext():
            picked = logits_at(model, idx, rows_t, cols_t).float()  # (M, V): the continuation positions
        targets = idx[rows_t, cols_t + 1]  # (M,)
        token_loss = F.cross_entropy(picked, targets, reduction="none")  # (M,)
        token_miss = (picked.argmax(dim=-1) != targets).float()  # (M,)
        # per-sequence sums by scatter, and one transfer to the host per batch, not one sync per sequence
        sums = torch.zeros(len(batch), device=device).index_add_(0, rows_t, token_loss)  # (B,)
        misses = torch.zeros(len(batch), device=device).index_add_(0, rows_t, token_miss)  # (B,)
        means = sums / torch.tensor(lengths, dtype=torch.float32, device=device)  # (B,)
        for i, loss, miss in zip(batch, means.tolist(), misses.tolist()):
            losses[i], hits[i] = loss, miss == 0
        done += len(batch)
        if progress is not None:
            progress(done)
    return losses, hits


def evaluate_task(model, tokenizer, task: TaskSpec, rows: Sequence[dict], *, max_problems: int | None = None,
                  batch_size: int = 32, max_batch_tokens: int | None = None, max_seq_len: int | None = None,
                  autocast=None, rank: int | None = None, world_size: int | None = None,
                  progress_every: float = 30.0, log: Callable[[str], None] = print0) -> TaskResult:
    """Score the first max_problems rows (None = all) of `rows` (load_rows order); this rank takes rows
    rank, rank + world_size, ... Few-shot examples come from all rows, so a row's prompt does not
    depend on max_problems. A prompt longer than max_seq_len (None: no limit) is cropped on the left
    and its row counted in `cropped`. Under torch.distributed every rank must call this (the counts
    are summed).
    """
    t0 = time.perf_counter()
    rank, world_size = rank_and_world(rank, world_size)
    count = len(rows) if max_problems is None else min(len(rows), max_problems)
    mine = list(range(rank, count, world_size))
    texts, owners = [], []
    for i in mine:
        shots = [rows[j] for j in fewshot_indices(len(rows), i, task.num_fewshot)]
        prompts = render_prompts(task.task_type, rows[i], shots, task.delimiter)
        texts += prompts
        owners.append(len(prompts))
    encoded = tokenizer.encode(texts, prepend=tokenizer.bos_token_id) if texts else []
    sequences, per_row, pos, cropped = [], [], 0, 0
    for n in owners:
        spans = scored_spans(task.task_type, encoded[pos : pos + n])
        pos += n
        per_row.append(len(spans))
        cropped += any(max_seq_len is not None and len(tokens) > max_seq_len for tokens, _, _ in spans)
        sequences += [crop_left(tokens, start, end, max_seq_len) for tokens, start, end in spans]
    throttle, total = Throttle(progress_every), len(sequences)

    def progress(done: int) -> None:  # a 40k-sequence task shows it is alive, a line per progress_every s
        if 0 < done < total and throttle.ready():
            eta = throttle.elapsed / done * (total - done)
            log(f"  {task.label}: {done}/{total} sequences, {throttle.elapsed:.0f}s, eta {eta:.0f}s")

    losses, hits = score_sequences(model, sequences, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                                   pad_id=tokenizer.bos_token_id, autocast=autocast,
                                   progress=progress if progress_every > 0 else None)
    examples, pos = [], 0
    for i, n in zip(mine, per_row):
        row_losses, row_hits = losses[pos : pos + n], hits[pos : pos + n]
        pos += n
        if task.task_type == "language_modeling":
            predicted, correct = int(row_hits[0]), row_hits[0]
        else:
            predicted = min(range(n), key=row_losses.__getitem__)  # the first of equal losses, as argmin does
            correct = predicted == rows[i]["gold"]
        examples.append(ExampleResult(i, predicted, bool(correct), tuple(row_losses)))
    correct, total = sum(e.correct for e in examples), len(examples)
    if dist_initialized():
        counts = torch.tensor([correct, total, cropped], dtype=torch.long, device=_model_device(model))  # (3,)
        dist.all_reduce(counts)
        correct, total, cropped = (int(v) for v in counts.tolist())
    return TaskResult(task.label, correct, total, examples, time.perf_counter() - t0, cropped)


# ----------------------------------------------------------------------------------------------
# The metric


def centered_accuracy(accuracy: float, random_baseline: float) -> float:
    """0 at chance, 1 at perfect: (accuracy - b) / (1 - b), b = random_baseline / 100 (a percentage)."""
    b = 0.01 * random_baseline
    if not 0 <= b < 1:
        raise ValueError(f"random baseline must be a percentage in [0, 100), got {random_baseline}")
    return (accuracy - b) / (1.0 - b)


def core_metric(centered: Sequence[float]) -> float:
    """CORE: the plain mean of the tasks' centered accuracies."""
    if not centered:
        raise ValueError("CORE needs at least one task")
    return sum(centered) / len(centered)


def evaluate_core(model, tokenizer, bundle: str | os.PathLike | None = None, *, max_problems: int | None = None,
                  batch_size: int = 32, max_seq_len: int | None = None, autocast=None,
                  log: Callable[[str], None] = print0, progress_every: float = 30.0) -> dict:
    """Every task of the bundle -> {"CORE": float, "baselines": describe_baselines(), "max_seq_len": int | None,
    "tasks": {label: {"accuracy", "centered", "examples", "cropped", "random_baseline", "seconds"}}}.
    max_seq_len defaults to context_limit(model): prompts are cropped only beyond what the model can run."""
    config = getattr(model, "config", None)
    if max_seq_len is None:
        max_seq_len = context_limit(model)
    vocab = getattr(config, "vocab_size", None) or tokenizer.n_vocab
    max_batch_tokens = max(1, MAX_BATCH_LOGITS // vocab)
    tasks = load_tasks(bundle)
    baselines = describe_baselines(tasks)
    log(f"random baselines: {baselines}")
    results = {}
    for n, task in enumerate(tasks, start=1):
        rows = load_rows(bundle, task)
        r = evaluate_task(model, tokenizer, task, rows, max_problems=max_problems, batch_size=batch_size,
                          max_batch_tokens=max_batch_tokens, max_seq_len=max_seq_len, autocast=autocast,
                          progress_every=progress_every, log=log)
        centered = centered_accuracy(r.accuracy, task.random_baseline)
        results[task.label] = {"accuracy": r.accuracy, "centered": centered, "examples": r.total,
                               "cropped": r.cropped, "random_baseline": task.random_baseline, "seconds": r.seconds}
        crop_note = f", {r.cropped} cropped to {max_seq_len} tokens" if r.cropped else ""
        log(f"[{n:2d}/{len(tasks)}] {task.label:<34} accuracy {r.accuracy:.4f}  centered {centered:+.4f}  "
            f"({r.total} rows{crop_note}, {task.num_fewshot}-shot, {r.seconds:.1f}s)")
    core = core_metric([t["centered"] for t in results.values()])
    log(f"CORE: {core:.4f}")
    return {"CORE": core, "baselines": baselines, "max_seq_len": max_seq_len, "tasks": results}
