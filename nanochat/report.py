"""The run report: a header at reset, one section per phase, and report.md with a summary table and plots.

    python -m nanochat.report reset      # at the start of a run: clear report/, write the header
    python -m nanochat.report generate   # at the end: assemble report/report.md, copied to the cwd

Phase scripts call log_section(SECTION_BASE_TRAIN, {...}). Everything lives in $NANOCHAT_BASE_DIR/report/:
header.md + header.json, NN-slug.md + NN-slug.json per section (NN fixes the order), plots/*.png, report.md.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from nanochat.common import atomic_path, get_base_dir, get_dist_info, write_atomic, write_json_atomic

REPO_ROOT = Path(__file__).resolve().parent.parent

SECTION_TOK_TRAIN = "Tokenizer training"
SECTION_TOK_EVAL = "Tokenizer evaluation"
SECTION_BASE_TRAIN = "Base model training"
SECTION_BASE_LOSS = "Base model loss"
SECTION_BASE_EVAL = "Base model evaluation"
SECTION_MID_TRAIN = "Midtraining"
SECTION_CHAT_EVAL_MID = "Chat evaluation mid"
SECTION_CHAT_SFT = "Chat SFT"
SECTION_CHAT_EVAL_SFT = "Chat evaluation sft"
SECTION_CHAT_RL = "Chat RL"
SECTION_CHAT_EVAL_RL = "Chat evaluation rl"
# The order sections appear in report.md, whatever order the phases ran in; file NN = index + 1.
SECTIONS = (
    SECTION_TOK_TRAIN, SECTION_TOK_EVAL, SECTION_BASE_TRAIN, SECTION_BASE_LOSS, SECTION_BASE_EVAL,
    SECTION_MID_TRAIN, SECTION_CHAT_EVAL_MID, SECTION_CHAT_SFT, SECTION_CHAT_EVAL_SFT, SECTION_CHAT_RL,
    SECTION_CHAT_EVAL_RL,
)
# chat_eval picks its section from the checkpoint phase it evaluated
CHAT_EVAL_SECTIONS = {"mid": SECTION_CHAT_EVAL_MID, "sft": SECTION_CHAT_EVAL_SFT, "rl": SECTION_CHAT_EVAL_RL}
# Names outside SECTIONS are numbered from here up, in the order they were first written.
EXTRA_SECTION_START = 50

# Summary table: each column reads its row keys from one section's data; a missing value is "-".
SUMMARY_COLUMNS = {"BASE": SECTION_BASE_EVAL, "MID": SECTION_CHAT_EVAL_MID, "SFT": SECTION_CHAT_EVAL_SFT,
                   "RL": SECTION_CHAT_EVAL_RL}
SUMMARY_ROWS = ("CORE", "ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "SpellingBee", "ChatCORE")
# Korean rows (base_eval --tasks=KoBEST, chat_eval -a korean), after the others and only when some column's
# section has the key (an unavailable suite's None counts: its section's note says why), so that an
# English run's table has none.
KOREAN_SUMMARY_ROWS = ("KoBEST", "KMMLU", "ChatCORE-ko")

CODE_SUFFIXES = (".py", ".rs", ".sh", ".html")
# Only used when git cannot list the tracked files: folders a walk must not count as the project's code.
WALK_SKIP = {".git", ".venv", "venv", "target", "node_modules", "__pycache__", ".pytest_cache", ".ruff_cache"}

# (file kind, title, ((metric key, legend label), ...)); metrics a run did not record are skipped.
PLOTS = (
    ("loss", "Loss", (("loss", "train loss"), ("val_loss", "val loss"), ("train_bpb", "train bpb"),
                      ("val_bpb", "val bpb"))),
    ("grad_norm", "Gradient norm", (("grad_norm", "grad norm"),)),
    ("lrm", "Learning-rate multiplier", (("lrm", "lr multiplier"),)),
    ("throughput", "Throughput", (("tok_per_s", "tokens/s"),)),
)
# Series with different units go on separate y axes (train loss in nats/token vs val bpb in bits/byte).
UNITS = {"loss": "nats/token", "val_loss": "nats/token", "train_bpb": "bits/byte", "val_bpb": "bits/byte",
         "grad_norm": "grad norm", "lrm": "x base LR", "tok_per_s": "tokens/s"}

_SECTION_FILE = re.compile(r"^(\d+)-")


def report_dir() -> Path:
    return get_base_dir() / "report"


# ----------------------------------------------------------------------------------------------
# Sections


def log_section(name: str, data: Mapping, *, notes: Sequence[str] | None = None) -> None:
    """Write one section (markdown + its data as JSON) to the report; rank 0 only, others do nothing.

    Writing the same name again replaces that section. Values: numbers, strings, None, lists, nested dicts.
    """
    if not get_dist_info().is_master:
        return
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a report section needs a non-empty name, got {name!r}")
    out = report_dir()
    out.mkdir(parents=True, exist_ok=True)
    stem = _section_stem(out, name)
    record = {"name": name, "time": time.time(), "data": _plain(dict(data)), "notes": [str(n) for n in notes or ()]}
    write_json_atomic(out / f"{stem}.json", record)
    write_atomic(out / f"{stem}.md", render_section(record))


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "section"


def _section_stem(out: Path, name: str) -> str:
    if name in SECTIONS:
        return f"{SECTIONS.index(name) + 1:02d}-{_slug(name)}"
    numbers = [EXTRA_SECTION_START - 1]
    for number, path, record in read_sections(out)[0]:
        if record["name"] == name:
            return path.stem  # rewriting keeps the place it got when first written
        numbers.append(number)
    return f"{max(numbers) + 1:02d}-{_slug(name)}"


def read_sections(out: Path) -> tuple[list[tuple[int, Path, dict]], list[str]]:
    """([(number, json path, record)] in report order, [names of unreadable files])."""
    found, broken = [], []
    for path in out.glob("*.json") if out.is_dir() else ():
        match = _SECTION_FILE.match(path.name)
        if not match:
            continue  # header.json
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            broken.append(path.name)
            continue
        if not isinstance(record, dict) or not isinstance(record.get("name"), str):
            broken.append(path.name)
            continue
        found.append((int(match.group(1)), path, record))
    found.sort(key=lambda item: (item[0], item[1].name))
    return found, broken


def _plain(value):
    """A JSON-safe copy: tensors and numpy values become numbers/lists, paths and other objects their str()."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if callable(getattr(value, "tolist", None)):  # numpy / torch scalars and arrays
        return _plain(value.tolist())
    return str(value)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value) or value == 0:
            return str(value)
        if abs(value) >= 1000:
            return f"{value:,.1f}"
        return f"{value:.4f}" if abs(value) >= 1e-3 else f"{value:.3g}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return str(value).replace("\n", "\\n")  # one value, one line: a sample's newlines would break the list


def _is_scalar(value) -> bool:
    return not isinstance(value, (dict, list))


def _table_rows(value) -> list[tuple[str, dict]] | None:
    """Rows when a value reads best as a table: a dict or list of flat dicts; else None."""
    if isinstance(value, dict) and value and all(isinstance(v, dict) and v for v in value.values()):
        rows = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, list) and value and all(isinstance(v, dict) and v for v in value):
        rows = [("", v) for v in value]
    else:
        return None
    return rows if all(_is_scalar(x) for _, row in rows for x in row.values()) else None


def _render_table(rows: list[tuple[str, dict]]) -> list[str]:
    columns = list(dict.fromkeys(k for _, row in rows for k in row))
    keyed = any(label for label, _ in rows)
    cell = lambda v: _fmt(v).replace("|", "\\|")
    head = ([""] if keyed else []) + columns
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, row in rows:
        cells = ([cell(label)] if keyed else []) + [cell(row.get(c)) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _render_items(data: Mapping, depth: int = 0) -> list[str]:
    pad = "  " * depth
    lines = []
    for key, value in data.items():
        rows = _table_rows(value)
        if rows is not None:
            lines += [f"{pad}- {key}:", "", *_render_table(rows), ""]
        elif isinstance(value, dict) and value:
            lines += [f"{pad}- {key}:", *_render_items(value, depth + 1)]
        else:
            lines.append(f"{pad}- {key}: {_fmt(value) if value != {} else '-'}")
    return lines


def render_section(record: Mapping) -> str:
    when = datetime.datetime.fromtimestamp(record.get("time", 0)).strftime("%Y-%m-%d %H:%M:%S")
    lines = [f"## {record['name']}", "", f"_written {when}_", "", *_render_items(record.get("data") or {})]
    if record.get("notes"):
        lines += ["", "Notes:", *(f"- {n}" for n in record["notes"])]
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------------------------
# Header: where and on what the run happened


def git_info(root: Path = REPO_ROOT) -> dict:
    """Commit, branch, dirty flag; 'unknown' outside a git checkout or without git.

    Read-only: --no-optional-locks keeps `git status` from refreshing (writing) the index.
    """
    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", "--no-optional-locks", *args], cwd=root, capture_output=True,
                                  text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {"commit": "unknown", "branch": "unknown", "dirty": None, "message": ""}
    status = git("status", "--porcelain", "--untracked-files=no")  # dirty = tracked files differ
    return {"commit": commit, "branch": git("rev-parse", "--abbrev-ref", "HEAD") or "unknown",
            "dirty": None if status is None else bool(status), "message": git("log", "-1", "--format=%s") or ""}


def code_stats(root: Path = REPO_ROOT) -> dict:
    """Size of the project's own code (tracked .py/.rs/.sh/.html): how big nanochat has grown."""
    try:
        proc = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True, timeout=20)
        listed = [root / p for p in proc.stdout.split("\0") if p] if proc.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        listed = None
    source = "git ls-files"
    if listed is None:
        source, listed = "directory walk", []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in WALK_SKIP]
            listed += [Path(dirpath) / f for f in filenames]
    files = [p for p in listed if p.suffix in CODE_SUFFIXES and p.is_file()]
    lines = chars = 0
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        lines += text.count("\n") + (1 if text and not text.endswith("\n") else 0)
        chars += len(text)
    return {"files": len(files), "lines": lines, "characters": chars, "approx_tokens": chars // 4,
            "source": source}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: platform's answer below
    return platform.processor() or platform.machine() or "unknown"


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):  # sysconf names are platform-specific
        return None


def hardware_info() -> dict:
    import torch

    from nanochat.hardware import gpu_entry

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append({"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)})
    prices = [gpu_entry(g["name"]) for g in gpus]
    # a cost needs every GPU's price; one unlisted (or unpriced: a laptop's) GPU makes it unknown rather than low
    hourly = sum(p[2] for p in prices) if gpus and all(p and p[2] is not None for p in prices) else None
    return {"platform": platform.platform(), "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(),
            "memory_gib": _memory_gib(), "gpus": gpus, "hourly_cost": hourly}


def software_info() -> dict:
    from importlib import metadata

    import torch

    try:
        version = metadata.version("nanochat")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {"python": platform.python_version(), "torch": torch.__version__, "nanochat": version}


def render_header(header: Mapping) -> str:
    git, hw, sw, code = header["git"], header["hardware"], header["software"], header["code"]
    dirty = {True: "dirty", False: "clean", None: "unknown"}[git["dirty"]]
    if hw["gpus"]:
        names = {}
        for g in hw["gpus"]:
            label = f"{g['name']} ({g['memory_gib']} GiB)"
            names[label] = names.get(label, 0) + 1
        gpus = ", ".join(f"{n} x {label}" for label, n in names.items())
    else:
        gpus = "none"
    rate = f"${hw['hourly_cost']:.2f}/h" if hw["hourly_cost"] is not None else "unknown (no GPU with a listed price)"
    started = datetime.datetime.fromtimestamp(header["started_at"]).strftime("%Y-%m-%d %H:%M:%S")
    lines = [
        "# nanochat training report", "",
        f"Run started: {started}", "",
        "## Environment", "",
        "### Git",
        f"- Branch: {git['branch']}",
        f"- Commit: {git['commit'][:12]} ({dirty})",
        f"- Message: {git['message']}", "",
        "### Hardware",
        f"- Platform: {hw['platform']}",
        f"- CPUs: {hw['cpu_count']} x {hw['cpu_model']}",
        f"- Memory: {hw['memory_gib'] if hw['memory_gib'] is not None else 'unknown'} GiB",
        f"- GPUs: {gpus}",
        f"- Hourly rate: {rate}", "",
        "### Software",
        f"- Python {sw['python']}, PyTorch {sw['torch']}, nanochat {sw['nanochat']}", "",
        "### Code",
        f"- Files: {code['files']:,} ({', '.join(CODE_SUFFIXES)}; {code['source']})",
        f"- Lines: {code['lines']:,}",
        f"- Characters: {code['characters']:,}",
        f"- Approx. tokens: {code['approx_tokens']:,} (characters / 4)",
    ]
    return "\n".join(lines) + "\n"


def reset() -> Path:
    """Clear the report directory (sections, plots) and write the header; rank 0 only."""
    out = report_dir()
    if not get_dist_info().is_master:
        return out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    header = {"started_at": time.time(), "git": git_info(), "hardware": hardware_info(),
              "software": software_info(), "code": code_stats()}
    write_json_atomic(out / "header.json", header)
    write_atomic(out / "header.md", render_header(header))
    return out


# ----------------------------------------------------------------------------------------------
# Plots


def metric_series(records: Mapping[int, Mapping]) -> dict[str, tuple[list[int], list[float]]]:
    """metric -> (steps ascending, values): one point per step; steps that lack a metric are skipped.

    `records` is read_metrics' step -> merged record, so a resumed run's repeated steps are one point.
    """
    series: dict[str, tuple[list[int], list[float]]] = {}
    for step in sorted(records):
        for key, value in records[step].items():
            # inf/NaN would wreck the axis scale; booleans and strings are not curves
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value):
                continue
            steps, values = series.setdefault(key, ([], []))
            steps.append(int(step))
            values.append(float(value))
    return series


def find_metrics(phase: str, tag: str | None = None) -> Path | None:
    """metrics.jsonl of phase/tag; with no tag, the tag whose metrics.jsonl was written last."""
    from nanochat.checkpoint import PHASES, checkpoint_dir

    if tag:
        path = checkpoint_dir(phase, tag) / "metrics.jsonl"  # checkpoint_dir validates phase and tag
        return path if path.is_file() else None
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}: valid phases are {', '.join(PHASES)}")
    root = get_base_dir(create=False) / PHASES[phase].dirname
    found = [p for p in root.glob("*/metrics.jsonl") if not p.parent.name.startswith(".")]
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


def _draw(path: Path, title: str, lines: list[tuple[str, str, list[int], list[float]]]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A bare Figure on an Agg canvas: no pyplot, so no global backend state and no display needed.
    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    axes: dict[str, object] = {}
    handles = []
    for i, (label, unit, steps, values) in enumerate(lines):
        if unit not in axes:
            assert len(axes) < 2, f"{title}: at most two units per plot, got {list(axes) + [unit]}"
            axes[unit] = ax if not axes else ax.twinx()
            axes[unit].set_ylabel(unit)
        sparse = len(steps) <= 60  # validation runs every N steps: markers show where the points are
        handles += axes[unit].plot(steps, values, label=label, color=f"C{i}", linewidth=1.2 if sparse else 0.8,
                                   marker="o" if sparse else None, markersize=3)
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(handles) > 1:
        ax.legend(handles=handles, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def plot_metrics(metrics_path: Path, out_dir: Path, prefix: str) -> list[Path]:
    """Draw loss / grad norm / LR multiplier / throughput PNGs from one metrics.jsonl; returns the files."""
    from nanochat.run_log import read_metrics

    series = metric_series(read_metrics(metrics_path))
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, title, keys in PLOTS:
        lines = [(label, UNITS[key], *series[key]) for key, label in keys if key in series]
        if lines:
            path = out_dir / f"{prefix}-{kind}.png"
            _draw(path, f"{title}: {prefix}", lines)
            written.append(path)
    return written


def plot_phases(phases: Sequence[str] | None = None, tag: str | None = None,
                out_dir: Path | None = None) -> tuple[list[tuple[str, str, list[Path]]], list[str]]:
    """Plot each phase's latest (or `tag`) metrics: ([(phase, tag, pngs)], [notes on what was skipped])."""
    from nanochat.checkpoint import PHASES

    out_dir = out_dir or report_dir() / "plots"
    done, notes = [], []
    for phase in phases or list(PHASES):
        path = find_metrics(phase, tag)
        if path is None:
            continue
        try:
            pngs = plot_metrics(path, out_dir, f"{phase}-{path.parent.name}")
        except (ValueError, KeyError) as e:  # a run killed mid-write can leave a torn last line
            notes.append(f"{phase}: could not plot {path} ({type(e).__name__}: {e})")
            continue
        done.append((phase, path.parent.name, pngs))
    return done, notes


# ----------------------------------------------------------------------------------------------
# report.md


def _cell(value) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.4f}"
    return "-"


def summary_table(records: Mapping[str, Mapping]) -> list[str]:
    """The BASE/MID/SFT/RL table from section name -> record; anything missing or non-numeric is '-'."""
    columns = []
    for section in SUMMARY_COLUMNS.values():
        data = (records.get(section) or {}).get("data")
        columns.append(data if isinstance(data, dict) else {})
    korean = [row for row in KOREAN_SUMMARY_ROWS if any(row in data for data in columns)]
    lines = ["| Metric | " + " | ".join(SUMMARY_COLUMNS) + " |", "|---|" + "---|" * len(SUMMARY_COLUMNS)]
    for row in (*SUMMARY_ROWS, *korean):
        cells = [_cell(data.get(row)) for data in columns]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


def _read_header(out: Path) -> tuple[str, dict | None]:
    try:
        header = json.loads((out / "header.json").read_text(encoding="utf-8"))
        if isinstance(header, dict) and isinstance(header.get("started_at"), (int, float)):
            return (out / "header.md").read_text(encoding="utf-8"), header
    except (OSError, ValueError):
        pass  # a missing or damaged header costs the wall clock and cost lines, not the report
    return ("# nanochat training report\n\n_No header: run `python -m nanochat.report reset` at the start "
            "of a run to record the environment and the start time._\n"), None


def build_report(out: Path, plotted: Sequence[tuple[str, str, list[Path]]] = (), plot_notes: Sequence[str] = (),
                 plots_link: str = "plots") -> str:
    """report.md's text; plots_link is how the markdown reaches the plots folder from where it is saved."""
    from nanochat.run_log import format_duration

    header_md, header = _read_header(out)
    sections, broken = read_sections(out)
    by_name = {record["name"]: record for _, _, record in sections}
    now = time.time()
    lines = [header_md.rstrip(), "", f"Report generated: {datetime.datetime.fromtimestamp(now):%Y-%m-%d %H:%M:%S}",
             "", "## Summary", "", *summary_table(by_name), ""]
    if header is not None:
        times = [r["time"] for r in by_name.values() if isinstance(r.get("time"), (int, float))]
        end = max(times) if times else now  # the last phase's end, not when someone ran generate later
        seconds = max(0.0, end - header["started_at"])
        lines.append(f"- Total wall clock time: {format_duration(seconds)} "
                     f"({'reset to the last section' if times else 'reset to now'})")
        hourly = (header.get("hardware") or {}).get("hourly_cost")
        cost = f"${hourly * seconds / 3600:,.2f} (at ${hourly:.2f}/h)" if hourly is not None else "-"
        lines.append(f"- Estimated cost: {cost}")
    else:
        lines += ["- Total wall clock time: -", "- Estimated cost: -"]
    lines.append("")
    for _, path, record in sections:
        md = path.with_suffix(".md")
        lines.append((md.read_text(encoding="utf-8") if md.is_file() else render_section(record)).rstrip())
        lines.append("")
    if broken:
        lines += [f"_Unreadable section files skipped: {', '.join(sorted(broken))}_", ""]
    if plotted or plot_notes:
        lines += ["## Plots", ""]
        for phase, tag, pngs in plotted:
            lines += [f"### {phase} ({tag})", ""]
            lines += [f"![{p.stem}]({plots_link}/{p.name})" for p in pngs] + [""]
        lines += [f"- {n}" for n in plot_notes]
    return "\n".join(lines).rstrip() + "\n"


def generate(*, copy_to_cwd: bool = True) -> Path:
    """Assemble report/report.md (header, summary, sections, plots), copy it to the cwd; return its path."""
    out = report_dir()
    out.mkdir(parents=True, exist_ok=True)
    plotted, notes = plot_phases(out_dir=out / "plots")
    path = write_atomic(out / "report.md", build_report(out, plotted, notes))
    cwd = Path.cwd()
    if copy_to_cwd and cwd.resolve() != out.resolve():
        # the copy links the plots relative to where it lands, so its images still show
        link = Path(os.path.relpath(out / "plots", cwd)).as_posix()
        write_atomic(cwd / "report.md", build_report(out, plotted, notes, plots_link=link))
    return path


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1 or argv[0] not in ("reset", "generate"):
        print("usage: python -m nanochat.report reset|generate", file=sys.stderr)
        sys.exit(2)
    if argv[0] == "reset":
        print(f"report reset: header written to {reset() / 'header.md'}")
    else:
        print(f"report written to {generate()} (and ./report.md)")


if __name__ == "__main__":
    main()
