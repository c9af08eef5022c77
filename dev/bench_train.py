"""Training throughput of the model + optimizers on this machine (tokens/s, peak RSS): eager against
torch.compile, fp32 against bf16 autocast, what base_train's default flags pick, and optionally the
reference nanochat side by side.

    python dev/bench_train.py                        # depth 4, seq 512, batch 4, vocab 65536 and 4096, 5 modes
    python dev/bench_train.py --depth=2 --rounds=2   # quicker
    python dev/bench_train.py --modes=eager,compile --batches=1,4
    python dev/bench_train.py --vocabs=65536 --reference_dir=/tmp/upstream-nanochat   # side by side

Times full optimizer steps (forward, loss, backward, Muon + AdamW) on random tokens. One process per
(vocab, batch) holds one model per mode; after warm-up steps (which pay for compilation) the modes
take turns, `steps` steps each per round, so a machine shared with other work slows all modes alike;
the figure is the median round. Modes: eager, compile (torch.compile, inductor), bf16 (bf16
autocast, on CPU only where it is native: AVX-512 BF16 or AMX), compile_bf16, and default (what
base_train's default --dtype and --compile resolve to here, for a run long enough to compile).

--reference_dir: a checkout of the reference nanochat (karpathy/nanochat as of Dec 2025: nanochat/gpt.py
with GPT, GPTConfig and GPT.setup_optimizers, nanochat/muon.py, nanochat/adamw.py). Its model is built,
optimized and compiled as its base_train does on a CPU (torch.compile(model, dynamic=False), fp32, no
autocast) in a second process, which takes its rounds in turn with ours: round 1 of every mode of ours,
round 1 of the reference, round 2 ... Peak RSS is per process (ours holds one model per mode: run
--modes=default for a like-for-like memory figure). Without it, the reference's published figures
for the same machine kind are printed (karpathy/nanochat measured on 2 CPU cores: depth 4, seq 512:
441 tokens/s at batch 1, 655 at batch 4, vocab 65536).
On CUDA the fp32 modes run with TF32 matmuls and MFU is shown where the GPU's peak is known.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REFERENCE_CPU = {(1, 65536): 441, (4, 65536): 655}  # tokens/s, depth 4, seq 512, 2 cores (karpathy/nanochat Dec 2025, measured)
MODES = ("eager", "bf16", "compile", "compile_bf16", "default")
REFERENCE = "reference"


def random_batch(torch, batch: int, seq: int, vocab: int, device):
    """The same inputs and targets in every process (seeded generators)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, vocab, (batch, seq), generator=gen)
    y = torch.randint(0, vocab, (batch, seq), generator=gen)
    return x.to(device), y.to(device)


def build_ours(a, batch: int, vocab: int, modes: list[str]):
    """One model + optimizers per mode: ({mode: step}, facts for the table)."""
    sys.path.insert(0, str(REPO))
    import torch

    from nanochat.common import autocast, autodetect_device_type, resolve_dtype
    from nanochat.gpt import GPT, GPTConfig
    from nanochat.hardware import peak_flops
    from nanochat.optim import build_optimizers
    from nanochat.training import compile_default

    device_type = autodetect_device_type()
    device = torch.device(device_type)
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    config = GPTConfig.from_depth(a.depth, vocab, a.seq)
    x, y = random_batch(torch, batch, a.seq, vocab, device)

    def make_step(mode: str):
        torch.manual_seed(0)
        with torch.device("meta"):
            model = GPT(config)
        model.to_empty(device=device)
        model.init_weights()
        optimizers = build_optimizers(model.parameter_groups(), model_dim=config.n_embd)
        if mode == "default":  # base_train's defaults, for a run long enough that compiling pays
            compiled = compile_default(None, device_type, work_flops=float("inf"))
            dtype = resolve_dtype(None, device_type, training=True)
        else:
            compiled, dtype = mode.startswith("compile"), ("bf16" if mode.endswith("bf16") else "fp32")
        fwd = torch.compile(model) if compiled else model

        def step():
            with autocast(device_type, dtype):
                loss = fwd(x, y)
            loss.backward()
            for opt in optimizers:
                opt.step()
            model.zero_grad(set_to_none=True)
            return loss.item()  # syncs

        return model, step, f"{'compile' if compiled else 'eager'}, {dtype}"

    steps, labels = {}, {}
    for mode in modes:
        model, steps[mode], labels[mode] = make_step(mode)
    peak, flops = peak_flops(device_type, device), model.estimate_flops()
    facts = {"params": model.num_params(), "device": device_type, "threads": torch.get_num_threads(),
             "labels": labels}
    facts.update(flops_per_token=flops, peak_flops=peak)
    return steps, facts


def build_reference(a, batch: int, vocab: int):
    """The reference's model and optimizers as its base_train sets them up on a CPU: width depth x 64,
    heads of 128, built on meta then initialized, setup_optimizers() on the plain model,
    torch.compile(model, dynamic=False), no autocast (fp32). Only this process imports it."""
    sys.path.insert(0, str(Path(a.reference_dir).resolve()))
    import torch

    from nanochat.gpt import GPT, GPTConfig  # the reference's package: first on sys.path here

    dim = a.depth * 64
    heads = max(1, (dim + 127) // 128)
    config = GPTConfig(sequence_len=a.seq, vocab_size=vocab, n_layer=a.depth, n_head=heads, n_kv_head=heads,
                       n_embd=dim)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device="cpu")
    model.init_weights()
    optimizers = model.setup_optimizers()
    fwd = torch.compile(model, dynamic=False)
    x, y = random_batch(torch, batch, a.seq, vocab, "cpu")

    def step():
        loss = fwd(x, y)
        loss.backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        return loss.item()

    facts = {"params": sum(p.numel() for p in model.parameters()), "device": "cpu",
             "threads": torch.get_num_threads(), "labels": {REFERENCE: "compile, fp32"}}
    return {REFERENCE: step}, facts


def worker(a) -> None:
    """Build and warm up (compilation happens here), say 'ready', then run one round of every mode per
    'round' line on stdin and answer with that round's seconds per step; 'done' ends with the facts."""
    batch, vocab = map(int, a.worker.split(":"))
    # the replies go to the parent's pipe; whatever the models print (the reference prints its
    # learning-rate scaling) goes to stderr instead of into the protocol
    reply = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    if a.reference_worker:
        steps, facts = build_reference(a, batch, vocab)
    else:
        steps, facts = build_ours(a, batch, vocab, a.modes.split(","))
    losses, warmup_s = {}, {}
    for mode, step in steps.items():
        t0 = time.perf_counter()
        for _ in range(a.warmup):
            losses[mode] = step()
        warmup_s[mode] = time.perf_counter() - t0
    print(json.dumps({"ready": True}), file=reply, flush=True)
    for line in sys.stdin:
        if line.strip() != "round":
            break
        seconds = {}
        for mode, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(a.steps):
                losses[mode] = step()
            seconds[mode] = (time.perf_counter() - t0) / a.steps
        print(json.dumps(seconds), file=reply, flush=True)
    facts.update(warmup_s=warmup_s, losses=losses, tok_per_step=batch * a.seq,
                 peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(facts), file=reply, flush=True)


def drive(a, batch: int, vocab: int) -> list[tuple[dict, dict[str, list[float]]]]:
    """Start our worker and the reference's one after the other (warm-ups never overlap), then take
    rounds in turn; returns (facts, {mode: seconds per step of each round}) per worker."""
    cmd = [sys.executable, __file__, f"--worker={batch}:{vocab}", f"--depth={a.depth}", f"--seq={a.seq}",
           f"--steps={a.steps}", f"--warmup={a.warmup}", f"--modes={a.modes}"]
    cmds = [cmd] + ([cmd + [f"--reference_dir={a.reference_dir}", "--reference_worker"]] if a.reference_dir else [])
    procs = []
    for c in cmds:
        proc = subprocess.Popen(c, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if not proc.stdout.readline():
            raise RuntimeError(f"worker exited during warm-up (rc {proc.wait()}): {' '.join(c)}")
        procs.append(proc)
    times: list[dict[str, list[float]]] = [{} for _ in procs]
    loads = []
    for _ in range(a.rounds):
        loads.append(os.getloadavg()[0])
        for proc, acc in zip(procs, times):
            proc.stdin.write("round\n")
            proc.stdin.flush()
            for mode, s in json.loads(proc.stdout.readline()).items():
                acc.setdefault(mode, []).append(s)
    out = []
    for proc, acc in zip(procs, times):
        proc.stdin.write("done\n")
        proc.stdin.flush()
        facts = json.loads(proc.stdout.readline())
        proc.wait()
        facts["load"] = loads
        out.append((facts, acc))
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
    p.add_argument("--reference_dir", default=None,
                   help="a checkout of the reference nanochat to time side by side (None = print its published CPU figures)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--reference_worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    modes = a.modes.split(",")
    if unknown := set(modes) - set(MODES):
        p.error(f"unknown modes {sorted(unknown)}: choose from {', '.join(MODES)}")
    if a.reference_dir and not (Path(a.reference_dir) / "nanochat" / "gpt.py").is_file():
        p.error(f"--reference_dir={a.reference_dir} has no nanochat/gpt.py: point it at a nanochat checkout")
    if a.worker:
        worker(a)
        return
    sys.path.insert(0, str(REPO))
    from nanochat.hardware import mfu

    print(f"depth {a.depth}, seq {a.seq}; per mode {a.warmup} warm-up steps, then {a.rounds} rounds of {a.steps} "
          f"steps, modes in turn{' with the reference' if a.reference_dir else ''}; median round")
    ref_head = "vs ref" if a.reference_dir else "published"
    print(f"{'vocab':>7}{'batch':>7}{'params':>12}  {'mode':<13}{'s/step':>9}{'tok/s':>9}{'vs eager':>9}"
          f"{ref_head:>10}{'warm-up s':>11}{'RSS MB':>8}  extra")
    for vocab in map(int, a.vocabs.split(",")):
        for batch in map(int, a.batches.split(",")):
            try:
                results = drive(a, batch, vocab)
            except (RuntimeError, json.JSONDecodeError) as e:
                print(f"{vocab:>7}{batch:>7}  failed: {e}")
                continue
            tok_s = {mode: r[0]["tok_per_step"] / statistics.median(s)
                     for r in results for mode, s in r[1].items()}
            published = REFERENCE_CPU.get((batch, vocab)) if (results[0][0]["device"] == "cpu" and a.depth == 4
                                                              and a.seq == 512) else None
            ref = tok_s.get(REFERENCE)
            eager = tok_s.get("eager")
            for facts, secs in results:
                for mode, s in secs.items():
                    vs_ref = f"{tok_s[mode] / ref:.2f}x" if ref else (f"{published:,}" if published else "-")
                    extra = (f"{facts['labels'][mode]}, {facts['threads']} threads, loss {facts['losses'][mode]:.3f}, "
                             f"load {min(facts['load']):.1f}-{max(facts['load']):.1f}")
                    if (m := mfu(facts.get("flops_per_token", 0), tok_s[mode], facts.get("peak_flops"), 1)) is not None:
                        extra += f", MFU {100 * m:.1f}%"
                    print(f"{vocab:>7}{batch:>7}{facts['params']:>12,}  {mode:<13}{statistics.median(s):>9.3f}"
                          f"{tok_s[mode]:>9,.0f}{(f'{tok_s[mode] / eager:.2f}x' if eager else '-'):>9}{vs_ref:>10}"
                          f"{facts['warmup_s'][mode]:>11.1f}{facts['peak_rss_mb']:>8.0f}  {extra}")
            if ref and published:
                print(f"{'':>14}reference published figure on 2 cores: {published:,} tok/s (measured here: {ref:,.0f})")


if __name__ == "__main__":
    main()
