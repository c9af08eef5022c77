"""The one registry of downloadable chat / eval datasets, and the verified fetch that gets them.

Each (dataset, split) names its Hugging Face dataset id and parquet file(s) under `resolve/main/`,
or a raw URL, plus the columns every file must have. Files land in
`$NANOCHAT_BASE_DIR/chat_data/<dataset>/...`, written through nanochat.download (verified, resumable).

    python -m tasks.sources --dataset=mmlu --split=auxiliary_train   # one split
    python -m tasks.sources --dataset=all                            # everything in the registry

Training scripts call require(), which never downloads: a missing file fails at once with the
command above. Override a source with `--url=` / fetch(url=...) or the environment variable
NANOCHAT_SOURCE_<DATASET>_<SPLIT> (e.g. NANOCHAT_SOURCE_MMLU_AUXILIARY_TRAIN): a local file is used
in place, an http(s) URL is downloaded into chat_data/<dataset>/custom/. Several files: comma-separated.
A file is read as what it is, parquet (by its PAR1 magic) or JSON lines, whatever the registry serves,
and checked for the split's columns; only files the project downloaded are ever deleted and re-fetched.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from nanochat.common import get_base_dir
from nanochat.download import DownloadError, download_file, validate_parquet

CHAT_DATA_DIR = "chat_data"
OVERRIDE_ENV = "NANOCHAT_SOURCE_{}"

# NOTE: the HF file names below follow the layout the Hub's parquet conversion publishes
# (<config>/<split>-00000-of-00001.parquet); they could not be checked from this machine (no
# network). If one is wrong, the fetch fails with a 404: override it as the module docstring says.


@dataclass(frozen=True)
class ChatSource:
    dataset: str  # local directory name under chat_data/, and the --dataset of the CLI
    split: str
    files: tuple[str, ...]  # paths under <endpoint>/datasets/<hf_id>/resolve/main/, or full URLs
    columns: tuple[tuple[str, ...], ...]  # each file must have one of these column sets
    hf_id: str | None = None  # None: `files` are full URLs
    fmt: str = "parquet"  # parquet | jsonl | csv (with a header row) | words (a text file, one word per line)

    def urls(self) -> list[str]:
        if self.hf_id is None:
            return list(self.files)
        from nanochat.dataset import hf_endpoint  # read at call time so tests can point it elsewhere

        return [f"{hf_endpoint()}/datasets/{self.hf_id}/resolve/main/{f}" for f in self.files]

    def local_paths(self, base: Path) -> list[Path]:
        root = base / CHAT_DATA_DIR / self.dataset
        if self.hf_id is None:
            return [root / _url_basename(u) for u in self.files]
        return [root / f for f in self.files]


def _hf(dataset: str, hf_id: str, split: str, files: list[str], *columns: tuple[str, ...]) -> ChatSource:
    return ChatSource(dataset, split, tuple(files), tuple(columns), hf_id=hf_id)


def _one(path: str) -> list[str]:
    return [path]


_SMOLTALK = ("messages",)
_MMLU = ("question", "subject", "choices", "answer")
_ARC = ("id", "question", "choices", "answerKey")
_GSM8K = ("question", "answer")
_HUMANEVAL = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
# KoBEST (skt/kobest_v1, arXiv:2204.04541): one JSON-lines file per task and split since the hub repo was
# restructured for its viewer; labels are ints: boolq / wic / sentineg 0 = no (negative), 1 = yes
# (positive); copa 0 = alternative_1, 1 = alternative_2 (question "원인" cause / "결과" effect);
# hellaswag 0-3 = ending_1..ending_4. Columns as the dataset card and EleutherAI's harness read them.
KOBEST_COLUMNS = {
    "boolq": ("paragraph", "question", "label"),
    "copa": ("premise", "question", "alternative_1", "alternative_2", "label"),
    "hellaswag": ("context", "ending_1", "ending_2", "ending_3", "ending_4", "label"),
    "sentineg": ("sentence", "label"),
    "wic": ("word", "context_1", "context_2", "label"),
}
# KMMLU (HAERAE-HUB/KMMLU, arXiv:2402.11548): 45 subjects, one CSV per subject and split under data/,
# columns question, answer (1-4 for A-D), A, B, C, D, Category, Human Accuracy; EleutherAI's harness
# few-shots from dev and scores test (train, 208K rows, is not registered: nothing here uses it).
KMMLU_SUBJECTS = (
    "Accounting", "Agricultural-Sciences", "Aviation-Engineering-and-Maintenance", "Biology", "Chemical-Engineering",
    "Chemistry", "Civil-Engineering", "Computer-Science", "Construction", "Criminal-Law", "Ecology", "Economics",
    "Education", "Electrical-Engineering", "Electronics-Engineering", "Energy-Management", "Environmental-Science",
    "Fashion", "Food-Processing", "Gas-Technology-and-Engineering", "Geomatics", "Health", "Industrial-Engineer",
    "Information-Technology", "Interior-Architecture-and-Design", "Law", "Machine-Design-and-Manufacturing",
    "Management", "Maritime-Engineering", "Marketing", "Materials-Engineering", "Mechanical-Engineering",
    "Nondestructive-Testing", "Patent", "Political-Science-and-Sociology", "Psychology", "Public-Safety",
    "Railway-and-Automotive-Engineering", "Real-Estate", "Refrigerating-Machinery", "Social-Welfare", "Taxation",
    "Telecommunications-and-Wireless-Technology", "Korean-History", "Math",
)
_KMMLU = ("question", "answer", "A", "B", "C", "D", "Category")

_ENTRIES = [
    _hf("smoltalk", "HuggingFaceTB/smol-smoltalk", "train", _one("data/train-00000-of-00001.parquet"), _SMOLTALK),
    _hf("smoltalk", "HuggingFaceTB/smol-smoltalk", "test", _one("data/test-00000-of-00001.parquet"), _SMOLTALK),
    *[_hf("mmlu", "cais/mmlu", s, _one(f"all/{s}-00000-of-00001.parquet"), _MMLU)
      for s in ("test", "validation", "dev")],
    # the auxiliary_train config wraps each row in a struct column `train` (accepted, and unwrapped by tasks.mmlu)
    _hf("mmlu", "cais/mmlu", "auxiliary_train", _one("auxiliary_train/train-00000-of-00001.parquet"),
        ("train",), _MMLU),
    *[_hf("arc", "allenai/ai2_arc", f"{sub}/{s}", _one(f"{sub}/{s}-00000-of-00001.parquet"), _ARC)
      for sub in ("ARC-Easy", "ARC-Challenge") for s in ("train", "validation", "test")],
    *[_hf("gsm8k", "openai/gsm8k", s, _one(f"main/{s}-00000-of-00001.parquet"), _GSM8K) for s in ("train", "test")],
    _hf("humaneval", "openai/openai_humaneval", "test", _one("openai_humaneval/test-00000-of-00001.parquet"),
        _HUMANEVAL),
    # KoAlpaca v1.1 (JSON lines: instruction, output, url) and v1.0 (one JSON array: instruction, input, output)
    ChatSource("koalpaca", "train", ("https://raw.githubusercontent.com/Beomi/KoAlpaca/main/KoAlpaca_v1.1.jsonl",),
               (("instruction", "output"),), fmt="jsonl"),
    ChatSource("koalpaca", "v1.0", ("https://raw.githubusercontent.com/Beomi/KoAlpaca/main/ko_alpaca_data.json",),
               (("instruction", "input", "output"),), fmt="jsonl"),
    *[ChatSource("kobest", f"{task}/{s}", (f"{task}/{s}.jsonl",), (cols,), hf_id="skt/kobest_v1", fmt="jsonl")
      for task, cols in KOBEST_COLUMNS.items() for s in ("train", "validation", "test")],
    *[ChatSource("kmmlu", s, tuple(f"data/{subject}-{s}.csv" for subject in KMMLU_SUBJECTS), (_KMMLU,),
                 hf_id="HAERAE-HUB/KMMLU", fmt="csv") for s in ("dev", "test")],  # train (208K rows) unused
    # the word list of SpellingBee / SimpleSpelling (tasks/spelling.py), ~370k lowercase words (Unlicense)
    ChatSource("words", "alpha", ("https://raw.githubusercontent.com/dwyl/english-words/master/words_alpha.txt",),
               (("word",),), fmt="words"),
]
REGISTRY: dict[tuple[str, str], ChatSource] = {(s.dataset, s.split): s for s in _ENTRIES}


def datasets() -> list[str]:
    return sorted({d for d, _ in REGISTRY})


def splits(dataset: str) -> list[str]:
    return [s for d, s in REGISTRY if d == dataset]


def get_source(dataset: str, split: str) -> ChatSource:
    try:
        return REGISTRY[(dataset, split)]
    except KeyError:
        if dataset not in datasets():
            raise ValueError(f"unknown chat dataset {dataset!r}; known: {', '.join(datasets())}") from None
        raise ValueError(f"{dataset} has no split {split!r}; splits: {', '.join(splits(dataset))}") from None


def fetch_command(dataset: str, split: str) -> str:
    return f"python -m tasks.sources --dataset={dataset} --split={split}"


def override_env(dataset: str, split: str) -> str:
    return OVERRIDE_ENV.format(re.sub(r"[^A-Za-z0-9]+", "_", f"{dataset}_{split}").upper())


# ----------------------------------------------------------------------------- validation


def is_parquet(path: str | os.PathLike) -> bool:
    """Whether the file starts with parquet's magic bytes (anything else is read as JSON lines)."""
    with open(path, "rb") as f:
        return f.read(4) == b"PAR1"


def check_file(src: ChatSource, path: str | os.PathLike, *, own: bool = False) -> int:
    """Rows of a parquet or JSONL file that has one of src's column sets; DownloadError otherwise.

    own: the user's file (a local override), which is never called something to delete: the message
    names the override variable instead. A downloaded file that fails is deleted and re-fetched by
    download_file.
    """
    env = override_env(src.dataset, src.split)
    if src.fmt == "words":
        return _check_words(Path(path), f"point {env} at a text file with one word per line" if own else "wrong source?")
    if src.fmt == "csv" and not is_parquet(path):
        return _check_csv(src, Path(path), f"point {env} at a CSV or parquet file with those columns" if own
                          else "wrong source?")
    remedy = f"point {env} at a parquet or JSONL file with those columns" if own else "wrong source?"
    wanted = " or ".join(str(list(cols)) for cols in src.columns)
    if is_parquet(path):
        import pyarrow as pa  # imported here: slow to import, only parquet needs it
        import pyarrow.parquet as pq

        try:
            with pq.ParquetFile(path) as pf:
                rows, names = pf.metadata.num_rows, set(pf.schema_arrow.names)
        except (pa.ArrowException, OSError, ValueError) as e:
            if not own:
                return validate_parquet(path, columns=())  # its error: a download to delete and fetch again
            reason = " ".join(str(e).split())
            raise DownloadError(f"{path}: not a readable parquet file ({reason}); {remedy}") from None
        if not any(set(cols) <= names for cols in src.columns):
            raise DownloadError(f"{path}: parquet file lacks the columns {wanted} of {src.dataset} {src.split} "
                                f"(has {sorted(names)}); {remedy}")
        if rows < 1:
            raise DownloadError(f"{path}: parquet file has no rows; {remedy}")
        return rows
    try:
        first = read_jsonl(path)[0]
        cols = next((c for c in src.columns if all(k in first for k in c)), src.columns[0])
        return len(read_jsonl(path, cols))
    except UnicodeDecodeError:
        raise DownloadError(f"{path}: neither parquet nor UTF-8 JSON lines; {remedy}") from None
    except DownloadError as e:
        raise DownloadError(f"{e} ({wanted} for {src.dataset} {src.split}); {remedy}") from None


def _check_words(path: Path, remedy: str) -> int:
    """Words of a word list; an HTML error page or a binary file is refused (at most 10% other lines)."""
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise DownloadError(f"{path}: not a UTF-8 text file of words; {remedy}") from None
    words = sum(line.isascii() and line.isalpha() for line in lines)
    if not words or words < 0.9 * len(lines):
        raise DownloadError(f"{path}: not a word list ({words} of {len(lines)} lines are single words); {remedy}")
    return words


def read_csv(path: str | os.PathLike) -> list[dict]:
    """The rows of a CSV file with a header row, as dicts of strings."""
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _check_csv(src: ChatSource, path: Path, remedy: str) -> int:
    """Rows of a CSV file whose header has one of src's column sets."""
    wanted = " or ".join(str(list(cols)) for cols in src.columns)
    try:
        rows = read_csv(path)
    except (UnicodeDecodeError, ValueError) as e:
        raise DownloadError(f"{path}: not a UTF-8 CSV file ({e}); {remedy}") from None
    names = set(rows[0]) if rows else set()
    if not rows or not any(set(cols) <= names for cols in src.columns):
        raise DownloadError(f"{path}: CSV lacks the columns {wanted} of {src.dataset} {src.split} or has no rows "
                            f"(header {sorted(names)}); {remedy}")
    return len(rows)


def validator(src: ChatSource):
    """A download_file validator for the files of `src`: parquet columns, or every JSONL row parsed."""
    return lambda path: check_file(src, path)


def read_jsonl(path: str | os.PathLike, required: tuple[str, ...] = ()) -> list[dict]:
    """Rows of a JSONL file (a single JSON array is accepted too), each a dict with `required` keys.

    Raises DownloadError naming the file and line, so that a bad download is rejected and re-fetched.
    """
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DownloadError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        numbered = list(enumerate(rows, start=1))
    else:
        numbered = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    numbered.append((lineno, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise DownloadError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    for lineno, row in numbered:
        if not isinstance(row, dict) or any(k not in row for k in required):
            raise DownloadError(f"{path}:{lineno}: expected an object with keys {list(required)}")
    if not numbered:
        raise DownloadError(f"{path}: no rows")
    return [row for _, row in numbered]


def read_rows(paths: list[Path], columns: list[str] | None = None) -> list[dict]:
    """All rows of the given parquet / JSONL files, in order, as dicts (only `columns` of parquet files)."""
    rows: list[dict] = []
    for path in paths:
        if is_parquet(path):
            import pyarrow.parquet as pq  # imported here: slow to import, only parquet needs it

            rows += pq.read_table(path, columns=columns).to_pylist()
        elif Path(path).suffix == ".csv":
            rows += read_csv(path)
        else:
            rows += read_jsonl(path)
    return rows


# ----------------------------------------------------------------------------- fetch / require


def _url_basename(url: str) -> str:
    return Path(urllib.parse.urlsplit(url).path).name or "data"


def _is_url(s: str) -> bool:
    return urllib.parse.urlsplit(s).scheme in ("http", "https")


def _plan(src: ChatSource, url: str | None) -> list[tuple[str | None, Path]]:
    """(url to download or None for a local file used in place, local path) per file."""
    base = get_base_dir(create=False)
    source = url or os.environ.get(override_env(src.dataset, src.split), "").strip() or None
    if source is None:
        return list(zip(src.urls(), src.local_paths(base)))
    plan: list[tuple[str | None, Path]] = []
    custom = base / CHAT_DATA_DIR / src.dataset / "custom" / src.split.replace("/", "_")
    for item in (s.strip() for s in source.split(",") if s.strip()):
        if _is_url(item):
            plan.append((item, custom / _url_basename(item)))
        else:
            path = Path(urllib.parse.urlsplit(item).path if item.startswith("file://") else item).expanduser()
            plan.append((None, path))
    return plan


def fetch(dataset: str, split: str, *, url: str | None = None, retries: int = 5,
          backoff: float = 1.0, timeout: float = 60) -> list[Path]:
    """Download (or verify, if present) every file of (dataset, split); returns the local paths.

    url: an override (local path, http(s) URL, or several comma-separated); default the
    environment variable override_env(dataset, split), else the registry. Raises DownloadError.
    """
    src = get_source(dataset, split)
    check = validator(src)
    paths = []
    for remote, path in _plan(src, url):
        if remote is None:
            if not path.is_file():
                raise DownloadError(f"{path}: local source for {dataset} {split} not found "
                                    f"(from {override_env(dataset, split)} or --url)")
            check_file(src, path, own=True)
            paths.append(path)
        else:
            paths.append(download_file(remote, path, validate=check, retries=retries, backoff=backoff,
                                       timeout=timeout))
    return paths


def require(dataset: str, split: str, *, url: str | None = None) -> list[Path]:
    """The local files of (dataset, split), never downloading: FileNotFoundError with the command."""
    src = get_source(dataset, split)
    plan = _plan(src, url)
    missing = [p for remote, p in plan if remote is None and not p.is_file()]
    if missing:  # the override names a file that is not there: the fix is the path, not a download
        raise FileNotFoundError(f"{missing[0]} not found: it is the {dataset} {split} file named by "
                                f"{override_env(dataset, split)} (or --url); fix the path")
    paths = [p for _, p in plan]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{dataset} {split} is not downloaded ({missing[0]} missing): "
                                f"run {fetch_command(dataset, split)}")
    return paths


# ----------------------------------------------------------------------------- command line


@dataclass
class Options:
    dataset: str = "all"  # smoltalk | mmlu | arc | gsm8k | humaneval | koalpaca | kobest | kmmlu | words | all
    split: str | None = None  # one split (e.g. auxiliary_train, ARC-Easy/test); None = every split of the dataset
    url: str | None = None  # override: an http(s) URL or a local path (comma-separated for several files); one split only
    retries: int = 5  # extra attempts per file after a network error or a bad file


def main(opts: Options) -> list[Path]:
    names = datasets() if opts.dataset == "all" else [opts.dataset]
    for name in names:  # check every name before the first download
        if name not in datasets():
            raise ValueError(f"unknown chat dataset {name!r}; known: {', '.join(datasets())}, all")
        if opts.split:
            get_source(name, opts.split)
    if opts.url and (len(names) != 1 or not opts.split):
        raise ValueError("--url overrides one file set: give --dataset and --split with it")
    out: list[Path] = []
    for name in names:
        for split in [opts.split] if opts.split else splits(name):
            paths = fetch(name, split, url=opts.url, retries=opts.retries)
            print(f"{name} {split}: " + ", ".join(str(p) for p in paths))
            out += paths
    return out


if __name__ == "__main__":
    from nanochat.common import run_main
    from nanochat.config import parse_args

    run_main(main, parse_args(Options, prog="python -m tasks.sources", description=__doc__),
             errors=(FileNotFoundError, ValueError, DownloadError))
