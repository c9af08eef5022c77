"""Plot training curves (loss, grad norm, LR multiplier, throughput) from the metrics.jsonl of each phase.

    python -m scripts.plot                                 # every phase's latest run -> report/plots/
    python -m scripts.plot --source=base --model_tag=d20 --out_dir=plots

A resumed run is one curve: the last record of a repeated step wins (nanochat.run_log.read_metrics).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nanochat.common import print0, run_main
from nanochat.config import parse_args
from nanochat.phases import Phase


@dataclass
class Options:
    source: Phase | None = None  # the phase to plot (None = every phase with metrics)
    model_tag: str | None = None  # run folder under the phase, e.g. d20 (None = the one written last)
    out_dir: str | None = None  # where the PNGs go (None = $NANOCHAT_BASE_DIR/report/plots)


def main(opts: Options) -> list[Path]:
    from nanochat.report import plot_phases

    done, notes = plot_phases([opts.source] if opts.source else None, opts.model_tag,
                              Path(opts.out_dir) if opts.out_dir else None)
    for note in notes:
        print0(f"note: {note}")
    if not done:
        what = f"phase {opts.source}" if opts.source else "any phase"
        raise FileNotFoundError(f"no metrics.jsonl for {what}{f' tag {opts.model_tag}' if opts.model_tag else ''}: "
                                "train first (python -m scripts.base_train writes base_checkpoints/<tag>/metrics.jsonl)")
    pngs = [p for _, _, files in done for p in files]
    for phase, tag, files in done:
        print0(f"{phase}/{tag}: {', '.join(str(p) for p in files) or 'no plottable metrics'}")
    return pngs


if __name__ == "__main__":
    run_main(main, parse_args(Options, prog="python -m scripts.plot", description=__doc__))
