"""Training throughput of the model + optimizers on this machine (tokens/s, peak RSS), eager against
torch.compile and fp32 against bf16 autocast.

    python dev/bench_train.py                        # depth 4, seq 512, batch 4, vocab 65536 and 4096, 4 modes
    python dev/bench_train.py --depth=2 --rounds=2   # quicker
    python dev/bench_train.py --modes=eager,compile --batches=1,4

Times full optimizer steps (forward, loss, backward, Muon + AdamW) on random tokens. One process per
(vocab, batch) holds one model per mode; after warm-up steps (which pay for compilation) the modes
take turns, `steps` steps each per round, so a machine shared with other work slows all modes alike;
the figure is the median round. Modes: eager, compile (torch.compile, inductor), bf16 (bf16
autocast, on CPU only where it is native: AVX-512 BF16 or AMX), compile_bf16.
The reference nanochat cannot be installed here (no network beyond PyPI), so its published figures
for the same machine kind are printed beside ours (karpathy/nanochat measured on 2 CPU cores: depth 4,
seq 512: 441 tokens/s at batch 1, 655 at batch 4, vocab 65536; it always compiles, in fp32 on CPU).
On CUDA the fp32 modes run with TF32 matmuls and MFU is shown where the GPU's peak is known.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REFERENCE_CPU = {(1, 65536): 441, (4, 65536): 655}  # tokens/s, depth 4, seq 512, 2 cores (karpathy/nanochat Dec 2025, measured)
MODES = ("eager", "bf16", "compile", "compile_bf16")


def measure(depth: int, seq: int, batch: int, vocab: int, steps: int, warmup: int, rounds: int,
            modes: list[str]) -> dict:
    sys.path.insert(0, str(REPO))
    import torch

    from nanochat.common import autocast, autodetect_device_type
    from nanochat.gpt import GPT, GPTConfig
    from nanochat.hardware import mfu, peak_flops
    from nanochat.optim import build_optimizers

    device_type = autodetect_device_type()
    device = torch.device(device_type)
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    config = GPTConfig.from_depth(depth, vocab, seq)
    x = torch.randint(0, vocab, (batch, seq), device=device)
    y = torch.randint(0, vocab, (batch, seq), device=device)

    def make_step(mode: str):
        torch.manual_seed(0)
        with torch.device("meta"):
            model = GPT(config)
        model.to_empty(device=device)
        model.init_weights()
        optimizers = build_optimizers(model.parameter_groups(), model_dim=config.n_embd)
        fwd = torch.compile(model) if mode.startswith("compile") else model
        dtype = "bf16" if mode.endswith("bf16") else "fp32"

        def step():
            with autocast(device_type, dtype):
                loss = fwd(x, y)
            loss.backward()
            for opt in optimizers:
                opt.step()
            model.zero_grad(set_to_none=True)
            return loss.item()  # syncs

        return model, step

    runs, first_s, losses = {}, {}, {}
    for mode in modes:
        model, step = make_step(mode)
        t0 = time.perf_counter()
        for _ in range(warmup):
            losses[mode] = step()
        first_s[mode] = time.perf_counter() - t0
        runs[mode] = step
    times = {mode: [] for mode in modes}
    for _ in range(rounds):
        for mode in modes:
            t0 = time.perf_counter()
            for _ in range(steps):
                losses[mode] = runs[mode]()
            times[mode].append((time.perf_counter() - t0) / steps)
    peak = peak_flops(device_type, device)
    out = {"params": model.num_params(), "device": device_type, "threads": torch.get_num_threads(),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "modes": {}}
    for mode in modes:
        dt = statistics.median(times[mode])
        tok_s = batch * seq / dt
        out["modes"][mode] = {"step_s": dt, "tok_s": tok_s, "warmup_s": first_s[mode], "loss": losses[mode],
                              "mfu": mfu(model.estimate_flops(), tok_s, peak, 1)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batches", default="4", help="comma-separated device batch sizes")
    p.add_argument("--vocabs", default="65536,4096", help="comma-separated vocabulary sizes")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    p.add_argument("--steps", type=int, default=2, help="timed steps per mode per round")
    p.add_argument("--rounds", type=int, default=3, help="rounds of all modes in turn (the median is shown)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    modes = a.modes.split(",")
    if unknown := set(modes) - set(MODES):
        p.error(f"unknown modes {sorted(unknown)}: choose from {', '.join(MODES)}")
    if a.worker:
        batch, vocab = map(int, a.worker.split(":"))
        print(json.dumps(measure(a.depth, a.seq, batch, vocab, a.steps, a.warmup, a.rounds, modes)))
        return

    print(f"depth {a.depth}, seq {a.seq}; per mode {a.warmup} warm-up steps, then {a.rounds} rounds of {a.steps} "
          "steps, modes in turn; median round; one process per row")
    print(f"{'vocab':>7}{'batch':>7}{'params':>12}  {'mode':<13}{'s/step':>9}{'tok/s':>9}{'vs eager':>9}"
          f"{'warm-up s':>11}{'reference':>11}  extra")
    for vocab in map(int, a.vocabs.split(",")):
        for batch in map(int, a.batches.split(",")):
            cmd = [sys.executable, __file__, f"--worker={batch}:{vocab}", f"--depth={a.depth}", f"--seq={a.seq}",
                   f"--steps={a.steps}", f"--warmup={a.warmup}", f"--rounds={a.rounds}", f"--modes={a.modes}"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{vocab:>7}{batch:>7}  failed: {proc.stderr.strip().splitlines()[-1]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            ref = REFERENCE_CPU.get((batch, vocab)) if (r["device"] == "cpu" and a.depth == 4 and a.seq == 512) else None
            base = r["modes"].get("eager", {}).get("tok_s")
            for mode, m in r["modes"].items():
                extra = f"{r['device']}, {r['threads']} threads, loss {m['loss']:.3f}, peak RSS {r['peak_rss_mb']:.0f} MB"
                if m["mfu"] is not None:
                    extra += f", MFU {100 * m['mfu']:.1f}%"
                ratio = f"{m['tok_s'] / base:.2f}x" if base else "-"
                print(f"{vocab:>7}{batch:>7}{r['params']:>12,}  {mode:<13}{m['step_s']:>9.3f}{m['tok_s']:>9,.0f}"
                      f"{ratio:>9}{m['warmup_s']:>11.1f}{(f'{ref:,}' if ref else '-'):>11}  {extra}")


if __name__ == "__main__":
    main()
