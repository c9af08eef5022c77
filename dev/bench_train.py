"""Training throughput of the model + optimizers on this machine (tokens/s, peak RSS).

    python dev/bench_train.py                        # depth 4, seq 512, batch 1 and 4, vocab 65536 and 4096
    python dev/bench_train.py --depth=2 --steps=5    # quicker

Times full optimizer steps (forward, chunked loss, backward, Muon + AdamW) on random tokens after
warm-up steps, in one process per configuration. The reference nanochat cannot be installed here
(no network beyond PyPI), so its published figures for the same machine kind are printed beside
ours (karpathy/nanochat measured on 2 CPU cores: depth 4, seq 512: 441 tokens/s at batch 1, 655 at batch 4, vocab 65536).
On CUDA it uses bf16 autocast and reports MFU where the GPU's peak is known.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REFERENCE_CPU = {(1, 65536): 441, (4, 65536): 655}  # tokens/s, depth 4, seq 512, 2 cores (karpathy/nanochat Dec 2025, measured)


def measure(depth: int, seq: int, batch: int, vocab: int, steps: int, warmup: int, compile_model: bool) -> dict:
    sys.path.insert(0, str(REPO))
    import torch

    from nanochat.common import autocast, autodetect_device_type, resolve_dtype
    from nanochat.gpt import GPT, GPTConfig
    from nanochat.hardware import mfu, peak_flops
    from nanochat.optim import build_optimizers

    device_type = autodetect_device_type()
    device = torch.device(device_type)
    amp = autocast(device_type, resolve_dtype("", device_type))
    torch.manual_seed(0)
    config = GPTConfig.from_depth(depth, vocab, seq)
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()
    optimizers = build_optimizers(model.parameter_groups(), model_dim=config.n_embd)
    fwd = torch.compile(model) if compile_model else model
    x = torch.randint(0, vocab, (batch, seq), device=device)
    y = torch.randint(0, vocab, (batch, seq), device=device)

    def step():
        with amp:
            loss = fwd(x, y)
        loss.backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        return loss.item()  # syncs

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t0) / steps
    tok_s = batch * seq / dt
    out = {"params": model.num_params(), "step_s": dt, "tok_s": tok_s,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "device": device_type,
           "threads": torch.get_num_threads()}
    m = mfu(model.estimate_flops(), tok_s, peak_flops(device_type, device), 1)
    if m is not None:
        out["mfu"] = m
    if device_type == "cuda":
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batches", default="1,4", help="comma-separated device batch sizes")
    p.add_argument("--vocabs", default="65536,4096", help="comma-separated vocabulary sizes")
    p.add_argument("--steps", type=int, default=8, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        batch, vocab = map(int, a.worker.split(":"))
        print(json.dumps(measure(a.depth, a.seq, batch, vocab, a.steps, a.warmup, a.compile)))
        return

    print(f"depth {a.depth}, seq {a.seq}, {a.steps} timed steps after {a.warmup} warm-up; one process each")
    print(f"{'vocab':>7}{'batch':>7}{'params':>12}{'s/step':>9}{'tok/s':>9}{'reference':>11}{'peak RSS':>10}  extra")
    for vocab in map(int, a.vocabs.split(",")):
        for batch in map(int, a.batches.split(",")):
            cmd = [sys.executable, __file__, f"--worker={batch}:{vocab}", f"--depth={a.depth}", f"--seq={a.seq}",
                   f"--steps={a.steps}", f"--warmup={a.warmup}"] + (["--compile"] if a.compile else [])
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{vocab:>7}{batch:>7}  failed: {proc.stderr.strip().splitlines()[-1]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            ref = REFERENCE_CPU.get((batch, vocab)) if (r["device"] == "cpu" and a.depth == 4 and a.seq == 512) else None
            extra = f"{r['device']}, {r['threads']} threads"
            if "mfu" in r:
                extra += f", MFU {100 * r['mfu']:.1f}%, peak GPU {r['peak_gpu_gib']:.1f} GiB"
            print(f"{vocab:>7}{batch:>7}{r['params']:>12,}{r['step_s']:>9.3f}{r['tok_s']:>9,.0f}"
                  f"{(f'{ref:,}' if ref else '-'):>11}{r['peak_rss_mb']:>8.0f}MB  {extra}")


if __name__ == "__main__":
    main()
