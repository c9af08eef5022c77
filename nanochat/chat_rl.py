"""Reinforcement learning on a task with a reward (GSM8K), the library under scripts.chat_rl.

The reference nanochat's simplified GRPO, which is REINFORCE with a per-prompt baseline: each step
samples num_samples completions per prompt with the current model (on-policy, so no PPO ratio or
clipping is needed, and no KL to a reference model), scores each with task.reward, takes
advantage = reward - the mean reward of the same prompt's samples (no division by their std, as
the reference: a prompt every sample solves or fails gives zero advantage either way, and std
scaling would blow up prompts whose rewards barely differ), and minimises

    loss = -sum over trained tokens of logprob(token) x advantage(its sample) / trained tokens

Trained tokens are the ones the model sampled: the prompt, the calculator's forced outputs (the
engine's mask 0) and padding are left out; the model is not answerable for tokens it did not choose.

Letters: B sequences per forward, T their padded length, P prompts, N samples per prompt.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import torch

from nanochat.chat_scoring import completion_text
from nanochat.chat_train import ChatOptions, load_previous, warn_if_larger
from nanochat.common import get_base_dir, print0
from nanochat.config import format_config, to_dict
from nanochat.report import SECTION_CHAT_RL, log_section

# ---- the prompt order


@dataclass
class PromptCursor:
    """Where the run is in its stream of prompts: a fresh permutation of the task per epoch, drawn
    from the seed, read `examples_per_step` at a time by all ranks together. Its state is one
    integer, saved in the checkpoint's loader slot, so a resumed run draws the same prompts."""

    num_prompts: int
    seed: int = 0
    position: int = 0  # prompts handed out so far, over all ranks and epochs
    _perm: tuple[int, list[int]] | None = field(default=None, repr=False)  # (epoch, its permutation)

    def __post_init__(self):
        if self.num_prompts < 1:
            raise ValueError("the RL task has no prompts")

    def index(self, position: int) -> int:
        """The task index read at this position of the stream."""
        epoch, offset = divmod(position, self.num_prompts)
        if self._perm is None or self._perm[0] != epoch:
            order = list(range(self.num_prompts))
            random.Random(f"rl-{self.seed}-{epoch}").shuffle(order)
            self._perm = (epoch, order)
        return self._perm[1][offset]

    def take(self, count: int, rank: int = 0, world_size: int = 1) -> list[tuple[int, int]]:
        """(position, task index) of this rank's prompts among the next `count`: every world_size-th
        from its rank on. Every rank advances by all `count`, so the ranks stay in step."""
        positions = range(self.position, self.position + count)
        self.position += count
        return [(p, self.index(p)) for p in positions[rank::world_size]]

    @property
    def epochs(self) -> float:
        return self.position / self.num_prompts

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict | list[dict | None]) -> None:
        # resume_training hands over every rank's state; the position is global, so they agree
        states = state if isinstance(state, list) else [state]
        self.position = max(s["position"] for s in states if s is not None)


# ---- rollouts, advantages, loss


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """(P, N) rewards -> (P, N) advantages: each reward minus the mean of its own prompt's row."""
    return rewards - rewards.mean(dim=1, keepdim=True)


@dataclass
class Sample:
    ids: list[int]  # prompt + completion
    trained: list[int]  # per id: 1 where the model sampled it (a completion token), else 0
    reward: float
    completion_len: int  # tokens after the prompt, forced ones included


def rollout(engine, task, conversation: dict, *, num_samples: int, max_tokens: int, temperature: float,
            top_k: int | None, seed: int) -> list[Sample]:
    """num_samples completions of one prompt by the engine (calculator on), each scored by task.reward."""
    tokenizer = engine.tokenizer
    prompt = tokenizer.render_for_completion(conversation)
    sequences, masks = engine.generate_batch(prompt, num_samples=num_samples, max_tokens=max_tokens,
                                             temperature=temperature, top_k=top_k or None, seed=seed)
    return [Sample(ids=prompt + seq, trained=[0] * len(prompt) + list(mask),
                   reward=float(task.reward(conversation, completion_text(tokenizer, seq))),
                   completion_len=len(seq))
            for seq, mask in zip(sequences, masks)]


def collate(samples: list[Sample], pad_id: int, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), both (B, T) with T the longest sample's length - 1: targets are the next
    tokens where they were sampled by the model, -1 elsewhere (prompt, tool output, padding)."""
    T = max(len(s.ids) for s in samples) - 1
    inputs = torch.full((len(samples), T), pad_id, dtype=torch.long)  # (B, T)
    targets = torch.full((len(samples), T), -1, dtype=torch.long)  # (B, T)
    for b, s in enumerate(samples):
        n = len(s.ids) - 1
        inputs[b, :n] = torch.tensor(s.ids[:-1])
        targets[b, :n] = torch.tensor([t if m else -1 for t, m in zip(s.ids[1:], s.trained[1:])])
    return inputs.to(device), targets.to(device)


def trained_tokens(samples: list[Sample]) -> int:
    """The targets collate leaves in the loss (the first id is never a target)."""
    return sum(sum(s.trained[1:]) for s in samples)


def policy_gradient_loss(model, inputs: torch.Tensor, targets: torch.Tensor, advantages: torch.Tensor,
                         num_tokens: float | torch.Tensor) -> torch.Tensor:
    """-sum(logprob x advantage) / num_tokens over the targets that are not -1.

    The model's per-token loss is -logprob, 0 at ignored targets (so they get no gradient).
    num_tokens is the step's trained-token count, not this chunk's: chunks then add up to the
    step's loss, however the samples are split into forward passes.
    """
    nll = model(inputs, targets, loss_reduction="none")  # (B, T)
    return (nll * advantages.to(nll.dtype)[:, None]).sum() / num_tokens  # (B, T) * (B, 1) -> ()


# ---- the training loop


@dataclass
class RLOptions(ChatOptions):
    source: str = "sft"  # phase whose checkpoint to start from: sft | mid | base
    offline: bool = False  # train and evaluate on generated arithmetic problems (seeds 0 / 1) instead of GSM8K
    max_seq_len: int = -1  # prompt + completion tokens at most (-1 = the model's context)
    examples_per_step: int = 16  # prompts per optimizer step, over all processes
    num_samples: int = 16  # completions sampled per prompt
    max_new_tokens: int = 256  # tokens per completion at most (training and evaluation)
    temperature: float = 1.0  # sampling temperature of the rollouts
    top_k: int = 50  # rollouts sample among the k likeliest tokens (0 = all)
    device_batch_size: int = 8  # sequences per forward pass of the loss (gradient accumulation)
    num_epochs: float = 1.0  # passes over the training prompts (when --num_iterations is -1)
    num_iterations: int = -1  # optimizer steps (-1 = num_epochs x train prompts // examples_per_step)
    init_lr_frac: float = 0.05  # multiplier on the base learning rates
    warmdown_ratio: float = 1.0  # linear decay to final_lr_frac over the whole run
    momentum_warmup: int = 0  # Muon momentum at 0.95 from the start
    eval_every: int = 60  # steps between evaluations, and one at the end (-1 = never)
    eval_examples: int = 400  # evaluation problems: greedy pass@1 on the eval split (GSM8K test)

    def __post_init__(self):
        self.validate()
        for name in ("examples_per_step", "num_samples", "max_new_tokens", "eval_examples"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature <= 0 or self.top_k < 0 or self.num_epochs <= 0:
            raise ValueError("--temperature and --num_epochs must be > 0 and --top_k >= 0 (RL samples; "
                             "greedy rollouts would all be the same)")
        if self.tasks:
            raise ValueError("--tasks is not used by chat_rl: it trains on GSM8K, or arithmetic with --offline")


def load_tasks(offline: bool):
    """(train, eval) tasks; GSM8K missing fails at once with the command that fetches it."""
    if offline:
        from tasks.arithmetic import Arithmetic

        return Arithmetic(size=1000, seed=0), Arithmetic(size=1000, seed=1)
    from tasks.gsm8k import load_gsm8k

    return load_gsm8k("train"), load_gsm8k("test")


def train_rl(opts: RLOptions, tasks=None) -> dict:
    """Run RL with these options; `tasks` = (train, eval) overrides the data (tests use a toy reward)."""
    import dataclasses

    import torch.distributed as dist

    from nanochat import checkpoint as ckpt
    from nanochat.chat_scoring import Progress, all_reduce_counts, eval_generative, problem_indices
    from nanochat.common import autocast, compute_cleanup, compute_init, resolve_dtype
    from nanochat.engine import Engine
    from nanochat.optim import build_optimizers
    from nanochat.run_log import RunLog, format_duration, read_metrics
    from nanochat.schedule import lr_multiplier, muon_momentum
    from nanochat.tokenizer import Tokenizer
    from nanochat.training import (
        STOPPED_EXIT_CODE,
        StopRequest,
        check_finite,
        checkpoint_boundary,
        maybe_compile,
        oom_error,
        optimizer_step,
        resume_training,
        save_training,
    )

    compute = compute_init(opts.device_type, opts.seed)
    device, info = compute.device, compute.dist
    ws, rank = info.world_size, info.rank
    dtype = resolve_dtype(opts.dtype, compute.device_type)
    amp = autocast(compute.device_type, dtype)
    print0(format_config(opts))
    if opts.examples_per_step % ws:
        raise ValueError(f"--examples_per_step={opts.examples_per_step} is not a multiple of the {ws} processes")

    tokenizer = Tokenizer.load(get_base_dir() / "tokenizer")
    train_task, eval_task = tasks or load_tasks(opts.offline)
    model, prev_meta, tag = load_previous(opts, device)
    model.train()
    config = model.config
    model_config = dataclasses.asdict(config)
    if config.vocab_size != tokenizer.n_vocab:
        raise ValueError(f"the {opts.source} checkpoint's vocabulary ({config.vocab_size}) is not the tokenizer's "
                         f"({tokenizer.n_vocab}): was the tokenizer retrained after this model?")
    T = config.sequence_len if opts.max_seq_len < 0 else opts.max_seq_len
    if not 1 <= T <= config.sequence_len:
        raise ValueError(f"--max_seq_len={opts.max_seq_len}: the model's context is {config.sequence_len} tokens")
    warn_if_larger(opts, T, prev_meta)
    num_iterations = opts.num_iterations if opts.num_iterations > 0 else \
        max(1, int(opts.num_epochs * len(train_task)) // opts.examples_per_step)
    print0(f"train: {len(train_task):,} prompts, eval: {min(opts.eval_examples, len(eval_task)):,}; step = "
           f"{opts.examples_per_step} prompts x {opts.num_samples} samples over {ws} processes; "
           f"{num_iterations:,} steps")

    lr_frac = opts.init_lr_frac
    optimizers = build_optimizers(model.parameter_groups(), model_dim=config.n_embd, matrix_lr=opts.matrix_lr * lr_frac,
                                  embedding_lr=opts.embedding_lr * lr_frac, unembedding_lr=opts.unembedding_lr * lr_frac,
                                  scalar_lr=opts.scalar_lr * lr_frac, weight_decay=opts.weight_decay, world_size=ws)
    scaler = torch.amp.GradScaler("cuda") if dtype == "fp16" else None
    fwd = maybe_compile(model, opts.compile, compute.device_type, dynamic=True)  # lengths vary per chunk
    engine = Engine(model, tokenizer)  # the uncompiled model: decoding runs one token at a time

    out_dir = ckpt.checkpoint_dir("rl", tag)
    cursor = PromptCursor(len(train_task), seed=opts.seed)
    loop, _ = resume_training(out_dir, opts.resume, model=model, optimizers=optimizers, loader=cursor,
                              scaler=scaler, model_config=model_config, world_size=ws, num_iterations=num_iterations)
    stop = StopRequest()
    log = RunLog(out_dir / "metrics.jsonl", enabled=info.is_master, wandb_run=opts.run, project="nanochat-rl",
                 config=to_dict(opts))
    source_meta = {"source": {"phase": opts.source, "tag": tag, "step": prev_meta.get("step")}}

    def save(step: int) -> None:
        save_training(out_dir, step, model=model, optimizers=optimizers, loader=cursor, scaler=scaler, loop=loop,
                      model_config=model_config, options=to_dict(opts), num_iterations=num_iterations,
                      keep_last=opts.keep_last, extra_meta=source_meta)

    def evaluate() -> float | None:
        mine = problem_indices(len(eval_task), opts.eval_examples, rank, ws)
        # greedy pass@1: one deterministic answer per problem, so the figure moves only with the model
        model.eval()
        counts = eval_generative(engine, eval_task, num_samples=1, max_new_tokens=opts.max_new_tokens,
                                 temperature=0.0, max_problems=opts.eval_examples, rank=rank, world_size=ws,
                                 seed=opts.seed, progress=Progress("eval", len(mine)))
        model.train()
        return all_reduce_counts(counts, device).accuracy

    def global_sum(*values: float) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=device)
        if info.is_distributed:
            dist.all_reduce(t)
        return t.tolist()

    pass_rate = None
    t_start = time.time()
    while True:
        step = loop.step
        last = step == num_iterations
        stopping = stop.requested(device)
        if opts.eval_every > 0 and not stopping and (last or step % opts.eval_every == 0):
            pass_rate = evaluate()
            print0(f"step {step:05d} | eval pass@1 {pass_rate:.4f}")
            log.record(step, val_pass_rate=pass_rate)
        if checkpoint_boundary(step, last=last, stopping=stopping, save_every=opts.save_every,
                               stop_after=opts.stop_after, save=save):
            break

        t0 = time.perf_counter()
        samples: list[Sample] = []
        advantages: list[torch.Tensor] = []
        for position, index in cursor.take(opts.examples_per_step, rank, ws):
            conversation = train_task[index]
            prompt_len = len(tokenizer.render_for_completion(conversation))
            # the seed follows the prompt's place in the stream: rollouts repeat after a resume and do
            # not depend on the number of processes
            group = rollout(engine, train_task, conversation, num_samples=opts.num_samples,
                            max_tokens=max(1, min(opts.max_new_tokens, T - prompt_len)),
                            temperature=opts.temperature, top_k=opts.top_k, seed=opts.seed * 1_000_003 + position)
            samples += group
            advantages.append(group_advantages(torch.tensor([[s.reward for s in group]]))[0])  # (1, N) -> (N,)
        adv = torch.cat(advantages)  # (P x N,)
        reward_sum, length_sum, count, n_tokens = global_sum(
            sum(s.reward for s in samples), sum(s.completion_len for s in samples), len(samples),
            trained_tokens(samples))
        n_tokens = max(n_tokens, 1.0)
        loss_sum = torch.zeros((), device=device)
        try:
            B = opts.device_batch_size
            for i in range(0, len(samples), B):
                inputs, targets = collate(samples[i : i + B], tokenizer.bos_token_id, device)
                with amp:
                    # each rank's share of the step's loss; the distributed optimizers average the
                    # ranks' gradients, so scale by world_size to get the gradient of the sum
                    loss = policy_gradient_loss(fwd, inputs, targets, adv[i : i + B].to(device), n_tokens)
                loss_sum += loss.detach()
                scaled = loss * ws
                (scaler.scale(scaled) if scaler else scaled).backward()
        except torch.OutOfMemoryError:
            raise oom_error(opts.device_batch_size) from None
        lrm = lr_multiplier(step, num_iterations, warmdown_ratio=opts.warmdown_ratio, final_lr_frac=opts.final_lr_frac)
        grad_norm = optimizer_step(model, optimizers, scaler, grad_clip=opts.grad_clip, lr_multiplier=lrm,
                                   muon_momentum=muon_momentum(step, opts.momentum_warmup)).item()
        (train_loss,) = global_sum(loss_sum.item())
        check_finite(train_loss, step)
        dt = time.perf_counter() - t0
        loop.advance(train_loss, dt)
        reward, length = reward_sum / count, length_sum / count
        print0(f"step {loop.step:05d}/{num_iterations:05d} | reward {reward:.4f} | length {length:.1f} | "
               f"loss {train_loss:.6f} | lrm {lrm:.3f} | grad norm {grad_norm:.3f} | dt {dt * 1000:.0f}ms | "
               f"eta {format_duration(loop.eta(num_iterations))}")
        log.record(step, reward=reward, completion_len=length, loss=train_loss, lrm=lrm, grad_norm=grad_norm, dt=dt,
                   epochs=cursor.epochs)

    rewards = [rec["reward"] for _, rec in sorted(read_metrics(out_dir / "metrics.jsonl").items())
               if "reward" in rec]
    summary = {"steps": loop.step, "reward_first": rewards[0] if rewards else None,
               "reward_last": rewards[-1] if rewards else None, "eval_pass_rate": pass_rate,
               "training_time": format_duration(loop.training_seconds),
               "wall_time": format_duration(time.time() - t_start), "epochs": round(cursor.epochs, 4),
               "checkpoint": str(out_dir)}
    print0("summary: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
    log_section(SECTION_CHAT_RL, {"source": f"{opts.source}/{tag}", "task": "arithmetic" if opts.offline else "GSM8K",
                                  "num_iterations": num_iterations, **summary, "stopped_early": stop.signalled})
    log.finish()
    compute_cleanup()
    if stop.signalled:
        raise SystemExit(STOPPED_EXIT_CODE)
    return summary
