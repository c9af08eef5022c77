"""The GPU check: one command that measures the CUDA paths a real run takes, prints a table and writes
JSON + Markdown. On a GPU machine it runs the real sizes (d20 / d26, sequence 2048, vocabulary 65,536);
with --tiny it runs the same code on a tiny configuration, which is how CI keeps it from rotting on CPU.

    bash dev/gpu_check.sh                       # on one GPU or a whole node, a few minutes
    bash dev/gpu_check.sh --tiny                # CPU, seconds: the code paths only, no meaningful figures
    python dev/gpu_check.py --append_benchmarks # also append the Markdown to dev/BENCHMARKS.md's GPU section

Sections (each recorded as figures, or as the one-line reason it could not run):
  train      tokens/s, MFU and peak memory of full training steps (forward, backward, Muon + AdamW) in
             bf16 with torch.compile: d20 at device batch 32 and d26 at 16, sequence 2048
  autofit    the device batch --device_batch_size=none finds for d20 at sequence 2048 (nanochat/batch_fit.py)
  backoff    an out-of-memory injected at step 2: the run halves its device batch, redoes the step, finishes
  sdpa       which scaled_dot_product_attention backend runs (flash expected on H100/H200)
  loss       the fused head+loss against the checkpointed chunked loss: step time and peak memory
  decode     KV-cache decoding of d20 with bf16 weights at batch 1 and 8: tokens/s, time to first token
  serve      chat_web on this device answering the openai client
  core       CORE-style batched scoring: sequences/s
  torchrun   base_train under torchrun on every GPU (NCCL): 20 steps straight == 10 + resume + 10
Targets (public figures): karpathy/nanochat's d20 on 8xH100 runs at 47-48% MFU and ~135k tokens/s per GPU;
decode at batch 1 >= 1,000 tokens/s (a third of the d20 bf16 bandwidth bound on H100).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from nanochat.common import autocast, resolve_dtype  # noqa: E402
from nanochat.gpt import GPT, GPTConfig  # noqa: E402
from nanochat.hardware import mfu, peak_flops  # noqa: E402


def sizes(tiny: bool) -> dict:
    if tiny:  # the same code paths at a size a CPU runs in seconds
        return {"train": [(1, 2), (2, 2)], "seq": 64, "vocab": 512, "decode_depth": 1, "new_tokens": 8,
                "prompt": 16, "steps": 3, "warmup": 1, "core_sequences": 64}
    return {"train": [(20, 32), (26, 16)], "seq": 2048, "vocab": 65536, "decode_depth": 20, "new_tokens": 128,
            "prompt": 512, "steps": 10, "warmup": 3, "core_sequences": 2048}


def device_info() -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), gpus=torch.cuda.device_count(),
                    memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
                    bf16=torch.cuda.is_bf16_supported())
    return info


def make_model(depth: int, seq: int, vocab: int, device: str) -> GPT:
    # heads of 128 as in a real run; the tiny models (width 64 x depth) get heads of 32
    config = GPTConfig.from_depth(depth, vocab, seq, head_dim=128 if depth >= 4 else 32)
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()
    return model


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_gib(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def time_steps(step, steps: int, warmup: int, device: str) -> float:
    """Median seconds of `steps` calls of step() after `warmup` untimed ones (compilation happens there)."""
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def train_step_fn(model: GPT, batch: int, seq: int, device: str, dtype: str, compiled: bool):
    from nanochat.optim import build_optimizers

    optimizers = build_optimizers(model.parameter_groups(), model_dim=model.config.n_embd)
    fwd = torch.compile(model) if compiled else model
    x = torch.randint(0, model.config.vocab_size, (batch, seq), device=device)
    y = torch.randint(0, model.config.vocab_size, (batch, seq), device=device)

    def step():
        with autocast(device, dtype):
            loss = fwd(x, y)
        loss.backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)

    return step


def check_train(s: dict, device: str, dtype: str, compiled: bool) -> list[dict]:
    rows = []
    for depth, batch in s["train"]:
        reset_peak(device)
        model = make_model(depth, s["seq"], s["vocab"], device)
        dt = time_steps(train_step_fn(model, batch, s["seq"], device, dtype, compiled), s["steps"], s["warmup"], device)
        tok_s = batch * s["seq"] / dt
        rows.append({"depth": depth, "device_batch_size": batch, "seq": s["seq"], "step_ms": round(dt * 1000, 1),
                     "tokens_per_s": round(tok_s), "mfu": mfu(model.estimate_flops(), tok_s, peak_flops(device), 1),
                     "peak_memory_gib": peak_gib(device), "parameters": model.num_params()})
        del model
    return rows


def check_autofit(s: dict, device: str, dtype: str) -> dict:
    """--device_batch_size=none: the device batch batch_fit finds for the first training size."""
    from nanochat import batch_fit
    from nanochat.common import compute_init

    compute = compute_init(device, dtype=dtype)
    depth = s["train"][0][0]
    reset_peak(device)
    model = make_model(depth, s["seq"], s["vocab"], device)
    t0 = time.perf_counter()
    fitted = batch_fit.auto_device_batch(compute, model, s["seq"], None, non_cuda=batch_fit.AUTO_NON_CUDA)
    return {"depth": depth, "seq": s["seq"], "device_batch_size": fitted, "seconds": round(time.perf_counter() - t0, 1),
            "peak_memory_gib": peak_gib(device)}


def check_backoff(root: Path, data: Path, device: str) -> dict:
    """An out-of-memory injected at step 2 (NANOCHAT_TEST_OOM_AT_STEP): the run halves its device batch,
    redoes the step and finishes."""
    from nanochat.batch_fit import TEST_OOM_ENV

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", TEST_OOM_ENV: "2"}
    cmd = [sys.executable, "-m", "scripts.base_train", "--depth=1", "--head_dim=32", "--max_seq_len=64",
           "--device_batch_size=4", "--total_batch_size=256", "--num_iterations=4", "--eval_every=none",
           "--sample_every=none", f"--corpus={data}", "--compile=false", f"--device_type={device}",
           "--model_tag=backoff"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError("base_train failed: " + (out.stderr or out.stdout).strip().splitlines()[-1])
    lines = [line for line in out.stdout.splitlines() if line.startswith("out of memory at step")]
    if not lines:
        raise RuntimeError("the injected out-of-memory left no back-off line in the log")
    return {"log": lines[0], "finished": True}


def check_sdpa(device: str, dtype: str) -> dict:
    """Which backend runs: each is tried alone on an attention of d20's head shape."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, 10, 256, 128, device=device, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
    usable = []
    for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                          ("cudnn", getattr(SDPBackend, "CUDNN_ATTENTION", None)), ("math", SDPBackend.MATH)):
        if backend is None:
            continue
        try:
            with sdpa_kernel([backend]):
                torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
            usable.append(name)
        except RuntimeError:
            pass
    # the dispatcher takes the first usable in its own priority order, flash first
    return {"usable": usable, "runs": usable[0] if usable else None}


def check_loss(s: dict, device: str, dtype: str) -> list[dict]:
    depth, batch = s["train"][0]
    rows = []
    for name, fused in (("fused", True), ("checkpointed", False)):
        reset_peak(device)
        model = make_model(depth, s["seq"], s["vocab"], device)
        model._fused_loss_ok = lambda x, fused=fused: fused and torch.is_grad_enabled()
        dt = time_steps(train_step_fn(model, batch, s["seq"], device, dtype, compiled=False), s["steps"], s["warmup"],
                        device)
        rows.append({"loss": name, "depth": depth, "step_ms": round(dt * 1000, 1), "peak_memory_gib": peak_gib(device)})
        del model
    return rows


def check_decode(s: dict, device: str, dtype: str) -> list[dict]:
    from nanochat.engine import Engine
    from nanochat.tokenizer import SPLIT_PATTERN, Tokenizer

    tokenizer = Tokenizer.from_ranks({bytes([i]): i for i in range(256)}, SPLIT_PATTERN)
    model = make_model(s["decode_depth"], s["seq"], tokenizer.n_vocab, device)
    if dtype == "bf16":
        model = model.to(torch.bfloat16)  # inference weights in bf16: fp32 weights would halve the bandwidth bound
    model.eval()
    engine = Engine(model, tokenizer, dtype=dtype)
    prompt = [tokenizer.bos_token_id] + list(range(1, s["prompt"]))
    rows = []
    for batch in (1, 8):
        sync(device)
        t0 = time.perf_counter()
        stream = engine.generate(prompt, num_samples=batch, max_tokens=s["new_tokens"], temperature=1.0, seed=0)
        next(stream)
        sync(device)
        ttft = time.perf_counter() - t0
        n = 1
        for _ in stream:
            n += 1
        sync(device)
        total = time.perf_counter() - t0
        rows.append({"batch": batch, "new_tokens": n, "ttft_ms": round(ttft * 1000, 1),
                     "tokens_per_s_per_row": round((n - 1) / max(total - ttft, 1e-9), 1),
                     "tokens_per_s": round(batch * (n - 1) / max(total - ttft, 1e-9), 1)})
    return rows


def check_core(s: dict, device: str, dtype: str) -> dict:
    from nanochat.core_eval import score_sequences

    model = make_model(s["decode_depth"], s["seq"], s["vocab"], device).eval()
    g = torch.Generator().manual_seed(0)
    seqs = []
    for _ in range(s["core_sequences"]):
        n = int(torch.randint(s["seq"] // 4, s["seq"] // 2, (1,), generator=g))
        tokens = torch.randint(0, s["vocab"], (n,), generator=g).tolist()
        seqs.append((tokens, n - 4, n))
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        score_sequences(model, seqs, batch_size=32, autocast=autocast(device, dtype))
    sync(device)
    return {"sequences": len(seqs), "sequences_per_s": round(len(seqs) / (time.perf_counter() - t0), 1)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_base(root: Path) -> Path:
    """A byte tokenizer, a tiny SFT checkpoint and three text shards: what serve and torchrun need."""
    import dataclasses

    import pyarrow as pa
    import pyarrow.parquet as pq

    from nanochat.checkpoint import save_checkpoint
    from nanochat.tokenizer import SPLIT_PATTERN, Tokenizer

    base = root / "base"
    os.environ["NANOCHAT_BASE_DIR"] = str(base)
    tokenizer = Tokenizer.from_ranks({bytes([i]): i for i in range(256)}, SPLIT_PATTERN)
    tokenizer.save(base / "tokenizer")
    model = make_model(1, 128, tokenizer.n_vocab, "cpu")
    save_checkpoint(base / "chatsft_checkpoints" / "d1", 1, model_state=model.state_dict(), optimizer_states=None,
                    meta={"model_config": dataclasses.asdict(model.config)}, rng=False, rank=0, world_size=1)
    data = root / "data"
    data.mkdir()
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    for shard in range(3):
        docs = [" ".join(words[(k * 7 + j) % len(words)] for j in range(40)) for k in range(64 * shard, 64 * shard + 64)]
        pq.write_table(pa.table({"text": docs}), data / f"shard_{shard:05d}.parquet", row_group_size=8)
    return data


def check_serve(root: Path, device: str) -> dict:
    from openai import OpenAI

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(root / "serve.log", "w") as log:
        one = ["--num_gpus=1"] if device == "cuda" else ["--num_workers=1"]
        proc = subprocess.Popen([sys.executable, "-m", "scripts.chat_web", f"--port={port}", f"--device_type={device}",
                                 "--max_new_tokens=16", *one], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=60)
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError("chat_web exited: " + (root / "serve.log").read_text()[-300:])
            try:
                t0 = time.perf_counter()
                reply = client.chat.completions.create(model="nanochat", max_tokens=16,
                                                       messages=[{"role": "user", "content": "Hello!"}])
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
        return {"answered": True, "seconds": round(time.perf_counter() - t0, 3),
                "completion_tokens": reply.usage.completion_tokens if reply.usage else None}
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
        if proc.poll() is None:
            proc.kill()


def check_torchrun(root: Path, data: Path, device: str, gpus: int) -> dict:
    """20 steps straight against 10 + a resume + 10 more, under torchrun (NCCL on GPUs, gloo on CPU)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    nproc = max(1, gpus)
    common = ["--depth=1", "--head_dim=32", "--max_seq_len=64", "--device_batch_size=2", f"--total_batch_size={2 * 64 * nproc}",
              "--num_iterations=20", "--eval_every=none", "--sample_every=none", f"--corpus={data}",
              "--compile=false", f"--device_type={device}", "--warmdown_ratio=0.5", "--save_every=10"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
              "-m", "scripts.base_train"]

    def run(*extra):
        out = subprocess.run(launch + common + list(extra), cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=600)
        if out.returncode != 0:
            raise RuntimeError("base_train failed: " + (out.stderr or out.stdout).strip().splitlines()[-1])

    run("--model_tag=straight")
    run("--model_tag=resumed", "--stop_after=10")
    run("--model_tag=resumed", "--resume=auto")

    def losses(tag):
        out = {}
        for line in (Path(env.get("NANOCHAT_BASE_DIR", "")) / "base_checkpoints" / tag / "metrics.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if "loss" in rec:
                out[rec["step"]] = rec["loss"]
        return out

    a, b = losses("straight"), losses("resumed")
    diff = max(abs(a[k] - b[k]) for k in a)
    return {"processes": nproc, "backend": "nccl" if device == "cuda" else "gloo", "steps": len(a),
            "max_loss_diff": diff, "equal": diff <= 1e-5}


def run_section(results: dict, name: str, fn, *args) -> None:
    t0 = time.perf_counter()
    try:
        results[name] = {"ok": True, "result": fn(*args)}
    except Exception as e:  # a section that cannot run says why, and the others still run
        line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        results[name] = {"ok": False, "error": f"{type(e).__name__}: {line}"[:300]}
        if os.environ.get("NANOCHAT_DEBUG"):
            traceback.print_exc()
    results[name]["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"{name:<9} {'ok' if results[name]['ok'] else 'FAILED'} in {results[name]['seconds']} s", flush=True)


def markdown(results: dict) -> str:
    info = results["device"]
    lines = [f"### GPU check ({info.get('gpu', 'CPU')}, {info.get('gpus', 0)} GPU(s), torch {info['torch']}, "
             f"{results['config']})", ""]
    for name in ("train", "autofit", "backoff", "sdpa", "loss", "decode", "serve", "core", "torchrun"):
        section = results.get(name)
        if section is None:
            continue
        if not section["ok"]:
            lines.append(f"- {name}: not measured ({section['error']})")
            continue
        value = section["result"]
        if isinstance(value, list):
            lines.append(f"- {name}:")
            lines += ["  - " + ", ".join(f"{k} {v}" for k, v in row.items()) for row in value]
        else:
            lines.append(f"- {name}: " + ", ".join(f"{k} {v}" for k, v in value.items()))
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="a tiny configuration (CPU, CI): the code paths only")
    p.add_argument("--out_dir", default=str(REPO / "dev" / "gpu_check"), help="where the JSON and Markdown go")
    p.add_argument("--append_benchmarks", action="store_true", help="append the Markdown to dev/BENCHMARKS.md")
    a = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not a.tiny:
        print("error: no CUDA GPU is visible to torch: run on a GPU machine, or pass --tiny for the CPU code paths",
              file=sys.stderr)
        return 2
    dtype = resolve_dtype(None, device)
    s = sizes(a.tiny)
    compiled = device == "cuda"  # compiling for CPU costs CI a minute; tests/test_gpu_paths.py covers it there
    results = {"device": device_info(), "config": "tiny" if a.tiny else "real", "dtype": dtype, "compile": compiled}
    print(f"GPU check: {results['device']}, dtype {dtype}, compile {compiled}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check.") as tmp:
        root = Path(tmp)
        data = tiny_base(root)
        run_section(results, "train", check_train, s, device, dtype, compiled)
        run_section(results, "autofit", check_autofit, s, device, dtype)
        run_section(results, "backoff", check_backoff, root, data, device)
        run_section(results, "sdpa", check_sdpa, device, dtype)
        run_section(results, "loss", check_loss, s, device, dtype)
        run_section(results, "decode", check_decode, s, device, dtype)
        run_section(results, "serve", check_serve, root, device)
        run_section(results, "core", check_core, s, device, dtype)
        run_section(results, "torchrun", check_torchrun, root, data, device,
                    torch.cuda.device_count() if device == "cuda" else 1)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1) + "\n")
    md = markdown(results)
    (out / "gpu_check.md").write_text(md)
    print("\n" + md)
    if a.append_benchmarks:
        with open(REPO / "dev" / "BENCHMARKS.md", "a") as f:
            f.write("\n" + md)
    failed = [k for k, v in results.items() if isinstance(v, dict) and v.get("ok") is False]
    print(f"results: {out / 'gpu_check.json'}; " + (f"failed: {', '.join(failed)}" if failed else "every section ran"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
