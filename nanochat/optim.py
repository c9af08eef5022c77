"""Optimizers: Muon for the block matrices, AdamW for embedding, head and scalars.

Each comes in a single-process form (Muon, torch.optim.AdamW) and a distributed form
(DistMuon, DistAdamW); `build_optimizers` picks the pair and sets the learning rates.

The distributed contract: the training loop does NOT wrap the model in DDP. Each rank runs
forward and backward on its own micro-batches, leaving its local gradients in `p.grad`, and
then calls `opt.step()` on every rank. The step averages the gradients across ranks (mean over
ranks, so each rank's loss should be the mean over its own equal-sized share of the batch),
updates, and leaves identical weights on every rank. Consequences for the caller:
- every rank must call step() on every optimizer in the same order (each is a collective);
- a parameter in a Dist* optimizer must have a gradient on every rank (a missing one raises);
- `p.grad` stays the rank's local gradient: a grad norm computed before step() is local;
- state_dict() holds this rank's shard only: save one optimizer file per rank and load it back
  on the same rank of a job with the same world size (checked on load).

Collectives: reduce_scatter_tensor and all_gather_into_tensor, launched async so
communication overlaps the update math under NCCL. Gloo runs the very same calls (it builds
reduce-scatter from an all-reduce underneath, pytorch#118911, early 2024; both calls, async,
checked on torch 2.15), so the CPU tests exercise the code path NCCL runs; for that, buffers
are laid out concatenated along dim 0, the one layout gloo accepts (NCCL also takes stacked).
Sums are divided by the world size rather than reduced with ReduceOp.AVG, which gloo has
lacked in some releases.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn

# Quintic Newton-Schulz coefficients from Keller Jordan's Muon write-up ("Muon: An optimizer for
# hidden layers in neural networks", 2024): chosen to push small singular values up fast rather
# than to converge exactly, so the output's singular values land in a band around 1, not on it.
NS_COEFFS = (3.4445, -4.7750, 2.0315)

# AdamW defaults of the reference pipeline (karpathy/nanochat, Dec 2025): short beta1 memory,
# tiny eps so that rarely-seen embedding rows still take full-size steps.
ADAM_BETAS = (0.8, 0.95)
ADAM_EPS = 1e-10

# The width the AdamW learning rates were tuned at; other widths scale them by (dim/768)^-0.5
# (nanochat, Dec 2025), the muP-style correction for a layer whose fan-in grows with width.
LR_REFERENCE_DIM = 768

GROUP_NAMES = ("matrix", "embedding", "unembedding", "scalar")


def zeropower_via_newtonschulz(G: torch.Tensor, steps: int = 5, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Approximately orthogonalise G (..., R, C): replace its singular values by ~1, keeping U V^T.

    Works on the last two dims, batched over any leading ones. The result's singular values lie
    in a band around 1 (0.68-1.21 measured for 5 steps), which is all Muon needs; those far
    below 1/1000 of G's Frobenius norm (a near-singular square G) are not lifted that far.
    On CUDA the iteration runs in bf16 (tensor-core matmuls; it is stable in bf16, per the Muon
    write-up); elsewhere in fp32 (CPU bf16 matmuls are slow and lossy); fp64 input stays fp64.
    dtype overrides that choice (tests run CUDA's bf16 iteration on CPU).
    Returns a tensor of G's shape in that working dtype.
    """
    if G.ndim < 2:
        raise ValueError(f"Newton-Schulz needs a matrix or a batch of matrices, got shape {tuple(G.shape)}")
    a, b, c = NS_COEFFS
    if dtype is None:
        dtype = torch.bfloat16 if G.is_cuda else torch.promote_types(G.dtype, torch.float32)
    X = G.to(dtype)
    tall = G.size(-2) > G.size(-1)
    if tall:
        X = X.mT  # (..., C, R): iterate on the wide side so the Gram matrix X X^T is the small one
    # Frobenius norm >= spectral norm, so after this every singular value is <= 1, inside the
    # region where the polynomial maps them towards 1. The 1e-7 keeps a zero gradient finite.
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT  # (..., S, S) with S = min(R, C)
        B = b * A + c * (A @ A)  # (..., S, S)
        X = a * X + B @ X  # (..., S, L): X -> a X + b (X X^T) X + c (X X^T)^2 X
    if tall:
        X = X.mT  # (..., R, C)
    return X


def _muon_update(params: list[torch.Tensor], grads: list[torch.Tensor], state: dict, group: dict) -> None:
    """One Muon step for a list of same-shape matrices: momentum, Nesterov, orthogonalise, step."""
    bufs = []
    for p, g in zip(params, grads):
        if "momentum_buffer" not in state[p]:
            state[p]["momentum_buffer"] = torch.zeros_like(g)
        bufs.append(state[p]["momentum_buffer"])
    m = group["momentum"]
    # The buffer is an EMA of gradients (buf <- m buf + (1-m) g): the same direction as the
    # classic running sum, in gradient units, and unchanged by Newton-Schulz's normalisation.
    torch._foreach_lerp_(bufs, grads, 1.0 - m)
    # Nesterov: look one step ahead along the momentum, (1-m) g + m buf.
    directions = torch._foreach_lerp(grads, bufs, m) if group["nesterov"] else bufs
    update = zeropower_via_newtonschulz(torch.stack(directions), group["ns_steps"])  # (N, R, C)
    rows, cols = params[0].shape
    # An orthogonal R x C update has RMS 1/sqrt(max(R, C)); the reference's max(1, R/C)^0.5
    # factor lifts tall matrices so that every shape steps with RMS 1/sqrt(C) = 1/sqrt(fan-in).
    scale = max(1.0, rows / cols) ** 0.5
    if group["weight_decay"]:
        torch._foreach_mul_(params, 1.0 - group["lr"] * group["weight_decay"])  # decoupled, as AdamW
    torch._foreach_add_(params, list(update.to(params[0].dtype).unbind(0)), alpha=-group["lr"] * scale)


def _run_closure(closure: Callable[[], float] | None) -> float | None:
    """torch.optim's closure convention: re-evaluate the loss, with grad enabled, before the step."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def _by_shape(params: Iterable[torch.Tensor]) -> dict[tuple[int, ...], list[torch.Tensor]]:
    """Same-shape parameters together (first-seen order), so each bucket is one batched update."""
    buckets: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for p in params:
        buckets.setdefault(tuple(p.shape), []).append(p)
    return buckets


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton-schulz, for 2D weight matrices only.

    Each step: momentum buffer (EMA of gradients), Nesterov look-ahead, Newton-Schulz
    orthogonalisation, then p -= lr * max(1, rows/cols)^0.5 * update. `weight_decay` is
    decoupled (p *= 1 - lr * wd) and off by default. `momentum` lives in the param group so the
    training loop can warm it up (see schedule.muon_momentum / set_muon_momentum).
    """

    def __init__(
        self,
        params,
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        weight_decay: float = 0.0,
    ):
        if lr < 0 or not 0.0 <= momentum < 1.0 or ns_steps < 1 or weight_decay < 0:
            raise ValueError(
                f"Muon: bad hyperparameters lr={lr} momentum={momentum} ns_steps={ns_steps} "
                f"weight_decay={weight_decay} (need lr >= 0, 0 <= momentum < 1, ns_steps >= 1, wd >= 0)"
            )
        defaults = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        for p in params:
            if p.ndim != 2:
                raise ValueError(
                    f"{type(self).__name__} only handles 2D weight matrices, got a parameter of shape "
                    f"{tuple(p.shape)}; give embeddings, the head, vectors and scalars to AdamW"
                )
        super().add_param_group({**param_group, "params": params})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = _run_closure(closure)
        for group in self.param_groups:
            for params in _by_shape(p for p in group["params"] if p.grad is not None).values():
                _muon_update(params, [p.grad for p in params], self.state, group)
        return loss


def _dist_rank_and_size(name: str) -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"{name} needs an initialised torch.distributed process group (one process per rank); "
            "in a single process use the non-distributed optimizer"
        )
    return dist.get_rank(), dist.get_world_size()


def _local_grad(p: torch.Tensor, name: str) -> torch.Tensor:
    if p.grad is None:
        raise RuntimeError(
            f"{name}: a parameter of shape {tuple(p.shape)} has no gradient; every rank must produce a "
            "gradient for every parameter it was given (each step is a collective over all of them)"
        )
    return p.grad


class _ShardedOptimizer(torch.optim.Optimizer):
    """Base of the Dist* optimizers: state_dict() records which shard it holds, load checks it."""

    rank: int
    world_size: int

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["shard"] = {"rank": self.rank, "world_size": self.world_size}
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        shard = state_dict.pop("shard", None)
        expected = {"rank": self.rank, "world_size": self.world_size}
        if shard != expected:
            raise ValueError(
                f"{type(self).__name__}: this state is the shard {shard}, but this process is {expected}; "
                "resume on the same rank of a job with the same number of processes"
            )
        super().load_state_dict(state_dict)


class DistMuon(_ShardedOptimizer, Muon):
    """Muon across ranks: each rank orthogonalises its own subset of the matrices.

    Within each param group, matrices of one shape form a bucket; matrix i of a bucket belongs to
    rank i % world_size (round-robin). The bucket is processed in chunks of world_size matrices:
    one reduce-scatter of the stacked chunk hands each rank the averaged gradient of the matrix it
    owns (a rank with no matrix in a short last chunk gets a zero slot), the rank updates its
    matrices (batched Newton-Schulz), and one all-gather per chunk copies every updated matrix to
    every rank. Momentum buffers exist only for owned matrices: that is the rank's state shard.
    """

    def __init__(self, params, **kwargs):
        self.rank, self.world_size = _dist_rank_and_size(type(self).__name__)
        super().__init__(params, **kwargs)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = _run_closure(closure)
        W, rank = self.world_size, self.rank
        # 1) launch every reduce-scatter first so they run while earlier buckets are updated
        buckets = []
        for group in self.param_groups:
            for params in _by_shape(group["params"]).values():
                grads = [_local_grad(p, "DistMuon") for p in params]
                chunks = []
                for start in range(0, len(params), W):
                    chunk = grads[start : start + W]
                    # pad a short last chunk so that every rank has a slot
                    chunk = chunk + [torch.zeros_like(chunk[0])] * (W - len(chunk))
                    # concatenated along rows: the one layout both gloo and NCCL accept
                    stacked = torch.cat(chunk)  # (W * R, C)
                    mine = torch.empty_like(chunk[0])  # (R, C): the sum of slot `rank` over ranks
                    # `stacked` rides along so it outlives the async op that reads it
                    chunks.append((mine, stacked, dist.reduce_scatter_tensor(mine, stacked, async_op=True)))
                buckets.append((group, params, chunks))
        # 2) per bucket: wait for its gradients, update the owned matrices, start the all-gathers
        gathers = []
        for group, params, chunks in buckets:
            owned, owned_grads = [], []
            for c, (mine, _, work) in enumerate(chunks):
                work.wait()
                if c * W + rank < len(params):
                    owned.append(params[c * W + rank])
                    owned_grads.append(mine.div_(W))
            if owned:
                _muon_update(owned, owned_grads, self.state, group)
            for c in range(len(chunks)):
                chunk = params[c * W : (c + 1) * W]
                send = chunk[rank] if rank < len(chunk) else torch.zeros_like(chunk[0])
                recv = send.new_empty((W * send.size(0), send.size(1)))  # (W * R, C)
                gathers.append((chunk, send, recv, dist.all_gather_into_tensor(recv, send, async_op=True)))
        # 3) every rank now receives every updated matrix
        for chunk, send, recv, work in gathers:
            work.wait()
            gathered = recv.view(W, *send.shape)  # (W, R, C)
            torch._foreach_copy_(chunk, list(gathered[: len(chunk)].unbind(0)))
        return loss


class DistAdamW(_ShardedOptimizer):
    """AdamW with ZeRO-2 style sharding: each rank keeps the moments of one slice of each tensor.

    Every parameter is viewed flat and split into world_size equal slices (the last padded with
    zeros when numel does not divide), so any shape works, scalars included. A reduce-scatter
    gives each rank the averaged gradient of its slice, the rank applies AdamW to that slice of
    the parameter, and an all-gather reassembles the full parameter on every rank. The update is
    elementwise, so this equals torch.optim.AdamW on the averaged gradient.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = ADAM_BETAS,
        eps: float = ADAM_EPS,
        weight_decay: float = 0.0,
    ):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(
                f"DistAdamW: bad hyperparameters lr={lr} betas={betas} eps={eps} weight_decay={weight_decay}"
            )
        self.rank, self.world_size = _dist_rank_and_size(type(self).__name__)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _slice(self, p: torch.Tensor) -> tuple[int, int, int]:
        """(slice length, first and one-past-last flat index this rank owns, clipped to numel)."""
        n = p.numel()
        length = math.ceil(n / self.world_size)
        start = min(self.rank * length, n)
        return length, start, min(start + length, n)

    @staticmethod
    def _adamw(p: torch.Tensor, g: torch.Tensor, state: dict, group: dict) -> None:
        """AdamW (Loshchilov & Hutter) on one slice, in torch.optim.AdamW's order of operations."""
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(g)
            state["exp_avg_sq"] = torch.zeros_like(g)
        state["step"] += 1
        beta1, beta2 = group["betas"]
        lr, step = group["lr"], state["step"]
        p.mul_(1.0 - lr * group["weight_decay"])
        state["exp_avg"].lerp_(g, 1.0 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1.0 - beta2**step)).add_(group["eps"])
        p.addcdiv_(state["exp_avg"], denom, value=-lr / (1.0 - beta1**step))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = _run_closure(closure)
        W = self.world_size
        pending = []
        for group in self.param_groups:
            for p in group["params"]:
                length, _, _ = self._slice(p)
                flat = _local_grad(p, "DistAdamW").reshape(-1)  # (n,)
                if length * W != flat.numel():
                    flat = torch.cat([flat, flat.new_zeros(length * W - flat.numel())])  # (W * length,)
                mine = flat.new_empty(length)  # (length,)
                # `flat` rides along so it outlives the async op that reads it
                pending.append((group, p, mine, flat, dist.reduce_scatter_tensor(mine, flat, async_op=True)))
        gathers = []
        for group, p, mine, _, work in pending:
            work.wait()
            length, start, end = self._slice(p)
            own = p.view(-1)[start:end]  # a view: updating it updates p
            self._adamw(own, mine[: end - start].div_(W), self.state[p], group)
            send = p.new_zeros(length)
            send[: end - start] = own
            recv = p.new_empty(length * W)  # (W * length,)
            gathers.append((p, send, recv, dist.all_gather_into_tensor(recv, send, async_op=True)))
        for p, _, recv, work in gathers:
            work.wait()
            p.view(-1).copy_(recv[: p.numel()])
        return loss


def build_optimizers(
    groups: dict[str, list[nn.Parameter]],
    *,
    model_dim: int,
    matrix_lr: float = 0.02,
    embedding_lr: float = 0.2,
    unembedding_lr: float = 0.004,
    scalar_lr: float = 0.5,
    weight_decay: float = 0.0,
    world_size: int = 1,
) -> list[torch.optim.Optimizer]:
    """[AdamW, Muon] (or their Dist* forms when world_size > 1) for the model's parameter groups.

    `groups` maps "matrix" (block weights: Muon), "embedding", "unembedding" and "scalar" (AdamW)
    to parameters; a missing or empty group is skipped. Embedding and head lrs are scaled by
    (model_dim/768)^-0.5; scalar lrs are not (a scalar gate has no width-dependent fan-in).
    Weight decay applies to matrices, embedding and head, never to scalars (decaying a gate
    towards 0 is not regularisation). Each param group carries `name` and `initial_lr`, which
    set_lr_multiplier scales.
    """
    unknown = sorted(set(groups) - set(GROUP_NAMES))
    if unknown:
        raise ValueError(f"unknown parameter group(s) {unknown}; valid names: {list(GROUP_NAMES)}")
    seen: set[int] = set()
    for name, params in groups.items():
        for p in params:
            if id(p) in seen:
                raise ValueError(f"a parameter of shape {tuple(p.shape)} appears twice (again in {name!r})")
            seen.add(id(p))
    if world_size > 1:
        _, actual = _dist_rank_and_size("build_optimizers(world_size > 1)")
        if actual != world_size:
            raise ValueError(
                f"build_optimizers: world_size={world_size} but the process group has {actual} ranks"
            )

    width_scale = (model_dim / LR_REFERENCE_DIM) ** -0.5
    adam_settings = [
        ("unembedding", unembedding_lr * width_scale, weight_decay),
        ("embedding", embedding_lr * width_scale, weight_decay),
        ("scalar", scalar_lr, 0.0),
    ]
    adam_groups = [
        dict(params=list(groups[name]), lr=lr, initial_lr=lr, weight_decay=wd, name=name)
        for name, lr, wd in adam_settings
        if groups.get(name)
    ]
    optimizers: list[torch.optim.Optimizer] = []
    if adam_groups:
        if world_size > 1:
            optimizers.append(DistAdamW(adam_groups, betas=ADAM_BETAS, eps=ADAM_EPS))
        else:
            # fused: one CUDA kernel for all tensors instead of a handful per tensor
            fused = all(p.is_cuda for g in adam_groups for p in g["params"])
            optimizers.append(
                torch.optim.AdamW(adam_groups, betas=ADAM_BETAS, eps=ADAM_EPS, fused=fused or None)
            )
    if groups.get("matrix"):
        muon_cls = DistMuon if world_size > 1 else Muon
        group = dict(params=list(groups["matrix"]), lr=matrix_lr, initial_lr=matrix_lr, name="matrix")
        optimizers.append(muon_cls([group], weight_decay=weight_decay))
    return optimizers


def set_lr_multiplier(optimizers: Iterable[torch.optim.Optimizer], multiplier: float) -> None:
    """lr = initial_lr x multiplier in every param group (build_optimizers records initial_lr)."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * multiplier


def set_muon_momentum(optimizers: Iterable[torch.optim.Optimizer], momentum: float) -> None:
    """Set the momentum of every Muon / DistMuon param group (the others are left alone)."""
    for opt in optimizers:
        if isinstance(opt, Muon):
            for group in opt.param_groups:
                group["momentum"] = momentum
