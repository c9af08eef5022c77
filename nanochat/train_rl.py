"""The RL loop (scripts.chat_rl): reinforcement learning on a task with a reward (GSM8K), beside the
pretraining and chat loops (train_base.py, train_chat.py) and sharing their skeleton (training.py).

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
from typing import Literal

import torch

from nanochat.chat_scoring import completion_text
from nanochat.common import print0
from nanochat.train_chat import FinetuneOptions
from nanochat.training import due

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
class RLOptions(FinetuneOptions):
    source: Literal["sft", "mid", "base"] = "sft"  # the checkpoint to start from
    offline: bool = False  # train and evaluate on generated arithmetic problems (seeds 0 / 1) instead of GSM8K
    examples_per_step: int = 16  # prompts per optimizer step, over all processes
    num_samples: int = 16  # completions sampled per prompt
    max_new_tokens: int = 256  # tokens per completion at most (training and evaluation)
    temperature: float = 1.0  # sampling temperature of the rollouts
    top_k: int | None = 50  # rollouts sample among the k likeliest tokens (None = all)
    device_batch_size: int | None = None  # sequences per forward pass of the loss (None = auto; 8 off CUDA)
    num_epochs: float = 1.0  # passes over the training prompts (when --num_iterations is none)
    num_iterations: int | None = None  # optimizer steps (None = num_epochs x train prompts // examples_per_step)
    init_lr_frac: float = 0.05  # multiplier on the base learning rates
    warmdown_ratio: float = 1.0  # linear decay to final_lr_frac over the whole run
    momentum_warmup: int = 0  # Muon momentum at 0.95 from the start
    eval_every: int | None = 60  # steps between evaluations, and one at the end (None = never)
    max_problems: int = 400  # evaluation problems: greedy pass@1 on the eval split (GSM8K test)

    def __post_init__(self):
        super().__post_init__()
        for name in ("examples_per_step", "num_samples", "max_new_tokens", "max_problems"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature <= 0 or (self.top_k is not None and self.top_k < 1) or self.num_epochs <= 0:
            raise ValueError("--temperature and --num_epochs must be > 0 and --top_k >= 1 or none (RL samples; "
                             "greedy rollouts would all be the same)")


def train_rl(opts: RLOptions, train_task, eval_task, *, task_name: str = "") -> dict:
    """Run RL on train_task (prompts with a reward), evaluating greedy pass@1 on eval_task."""
    import dataclasses
    import functools

    import torch.distributed as dist

    from nanochat import batch_fit
    from nanochat.batch_fit import OOMInjector, step_with_backoff
    from nanochat.chat_scoring import Progress, all_reduce_counts, eval_generative, problem_indices
    from nanochat.common import dist_initialized
    from nanochat.engine import Engine
    from nanochat.report import SECTION_CHAT_RL
    from nanochat.run_log import format_duration, read_metrics
    from nanochat.schedule import lr_multiplier, muon_momentum
    from nanochat.train_chat import load_previous
    from nanochat.training import begin, start_run

    compute = begin(opts)
    device, info = compute.device, compute.dist
    ws, rank = info.world_size, info.rank
    if opts.examples_per_step % ws:
        raise ValueError(f"--examples_per_step={opts.examples_per_step} is not a multiple of the {ws} processes")
    model, tokenizer, prev_meta, tag, T = load_previous(opts, device)
    num_iterations = opts.num_iterations or max(1, int(opts.num_epochs * len(train_task)) // opts.examples_per_step)
    print0(f"train: {len(train_task):,} prompts, eval: {min(opts.max_problems, len(eval_task)):,}; step = "
           f"{opts.examples_per_step} prompts x {opts.num_samples} samples over {ws} processes; "
           f"{num_iterations:,} steps")

    if opts.device_batch_size is None:  # auto: over this rank's samples per step, at the model's context
        samples_per_rank = opts.examples_per_step // ws * opts.num_samples
        opts = dataclasses.replace(opts, device_batch_size=batch_fit.auto_device_batch(
            compute, model, T, samples_per_rank, non_cuda=8))
    cursor = PromptCursor(len(train_task), seed=opts.seed)
    run = start_run(opts, compute, phase="rl", tag=tag, model=model, loader=cursor, num_iterations=num_iterations,
                    lr_frac=opts.init_lr_frac, dynamic=True,  # sequence lengths vary per chunk
                    extra_meta={"source": {"phase": opts.source, "tag": tag, "step": prev_meta.get("step")}})
    engine = Engine(model, tokenizer, dtype=compute.dtype)  # the uncompiled model: decoding runs a token at a time

    def evaluate() -> float | None:
        mine = problem_indices(len(eval_task), opts.max_problems, rank, ws)
        # greedy pass@1: one deterministic answer per problem, so the figure moves only with the model
        model.eval()
        counts = eval_generative(engine, eval_task, num_samples=1, max_new_tokens=opts.max_new_tokens,
                                 temperature=0.0, max_problems=opts.max_problems, rank=rank, world_size=ws,
                                 seed=opts.seed, progress=Progress("eval", len(mine)))
        model.train()
        return all_reduce_counts(counts, device).accuracy

    def global_sums(*values: float) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=device)
        if dist_initialized():
            dist.all_reduce(t)
        return t.tolist()

    micro, inject = opts.device_batch_size, OOMInjector()
    on_backoff = run.backoff_logger(micro, None, "the step's loss on the same samples")

    def loss_step(samples, adv, n_tokens: float, step: int, micro: int) -> torch.Tensor:
        """Forward and backward of the step's samples, micro at a time: this rank's share of the loss."""
        loss_sum = torch.zeros((), device=device)
        for i in range(0, len(samples), micro):
            inputs, targets = collate(samples[i : i + micro], tokenizer.bos_token_id, device)
            with run.amp():
                # each rank's share of the step's loss; the distributed optimizers average the
                # ranks' gradients, so scale by world_size to get the gradient of the sum
                loss = policy_gradient_loss(run.fwd, inputs, targets, adv[i : i + micro].to(device), n_tokens)
            loss_sum += loss.detach()
            run.backward(loss * ws)
            inject.check(step)
        return loss_sum

    pass_rate = None
    while True:
        step = run.loop.step
        last = step == num_iterations
        stopping = run.stop.requested(device)
        if due(opts.eval_every, step, last) and not stopping:
            pass_rate = evaluate()
            print0(f"step {step:05d} | eval pass@1 {pass_rate:.4f}")
            run.log.record(step, val_pass_rate=pass_rate)
        if run.boundary(step, last=last, stopping=stopping):
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
        reward_sum, length_sum, count, n_tokens = global_sums(
            sum(s.reward for s in samples), sum(s.completion_len for s in samples), len(samples),
            trained_tokens(samples))
        n_tokens = max(n_tokens, 1.0)
        try:
            # the rollouts stay: an out-of-memory redoes only the loss, in smaller chunks of the same samples
            loss_sum, micro = step_with_backoff(functools.partial(loss_step, samples, adv, n_tokens, step), micro,
                                                step=step, model=model, on_backoff=on_backoff)
        except torch.OutOfMemoryError:
            raise ValueError("out of GPU memory even at a device batch of 1: use a smaller model or a shorter "
                             "--max_new_tokens") from None
        lrm = lr_multiplier(step, num_iterations, warmdown_ratio=opts.warmdown_ratio, final_lr_frac=opts.final_lr_frac)
        grad_norm = run.optimizer_step(lrm, muon_momentum(step, opts.momentum_warmup))
        (train_loss,) = global_sums(loss_sum.item())
        dt = time.perf_counter() - t0
        reward, length = reward_sum / count, length_sum / count
        run.end_step(step, train_loss, dt, reward=reward, completion_len=length, lrm=lrm, grad_norm=grad_norm,
                     epochs=cursor.epochs)
        print0(f"step {run.loop.step:05d}/{num_iterations:05d} | reward {reward:.4f} | length {length:.1f} | "
               f"loss {train_loss:.6f} | lrm {lrm:.3f} | grad norm {grad_norm:.3f} | dt {dt * 1000:.0f}ms | "
               f"eta {format_duration(run.loop.eta(num_iterations))}")

    rewards = [rec["reward"] for _, rec in sorted(read_metrics(run.out_dir / "metrics.jsonl").items())
               if "reward" in rec]
    return run.finish(SECTION_CHAT_RL, {"source": f"{opts.source}/{tag}", "task": task_name,
                                        "num_iterations": num_iterations},
                      {"reward_first": rewards[0] if rewards else None, "reward_last": rewards[-1] if rewards else None,
                       "eval_pass_rate": pass_rate, "epochs": round(cursor.epochs, 4), "checkpoint": str(run.out_dir),
                       "device_batch_size_final": micro, "oom_backoffs": run.backoffs})
