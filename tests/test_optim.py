"""Tests for nanochat.optim: Newton-Schulz, Muon against a plain fp64 reference, the builder,
and DistMuon + DistAdamW on 2 gloo processes against one process (with exact resume)."""

import io
import os
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from nanochat.optim import (
    DistAdamW,
    DistMuon,
    Muon,
    build_optimizers,
    set_lr_multiplier,
    set_muon_momentum,
    zeropower_via_newtonschulz,
)
from nanochat.schedule import muon_momentum


@pytest.fixture(autouse=True)
def one_thread():
    """The matrices here are tiny: a second intra-op thread only adds sync cost, and on a busy
    2-core machine it made single matmuls take tens of milliseconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_near(actual: torch.Tensor, expected: torch.Tensor, atol: float, what: str = "") -> None:
    """Max-abs-difference check (the first torch.testing.assert_close costs ~6 s of lazy imports)."""
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    diff = (actual.double() - expected.double()).abs().max().item()
    assert diff <= atol, f"{what}: max abs difference {diff:.3g} > {atol:.3g}"


def reference_newton_schulz(G: torch.Tensor, steps: int) -> torch.Tensor:
    """The quintic iteration written out plainly in float64, for one matrix."""
    X = G.double()
    if X.shape[0] > X.shape[1]:
        return reference_newton_schulz(X.T, steps).T
    X = X / X.norm()
    for _ in range(steps):
        A = X @ X.T
        X = 3.4445 * X - 4.7750 * (A @ X) + 2.0315 * (A @ A @ X)
    return X


# ---------------------------------------------------------------- Newton-Schulz


@pytest.mark.parametrize("shape", [(48, 16), (16, 48), (4, 40, 24), (4, 24, 40)])
def test_newton_schulz_singular_values_in_band(shape):
    G = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    X = zeropower_via_newtonschulz(G)
    assert X.shape == G.shape and X.dtype == torch.float32
    sv = torch.linalg.svdvals(X)
    # measured 0.68-1.21 for 5 steps on well-conditioned inputs
    assert sv.min() > 0.6 and sv.max() < 1.3, (sv.min(), sv.max())


def test_newton_schulz_square_and_direction():
    G = torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(1))
    X = zeropower_via_newtonschulz(G)
    sv = torch.linalg.svdvals(X)
    assert sv.max() < 1.3
    # A random square matrix has a few singular values ~1/1000 of its Frobenius norm that five
    # steps do not lift all the way (measured min 0.04); the bulk is in the band.
    assert (sv > 0.6).float().mean() > 0.9
    # direction: close to the polar factor U V^T (cosine measured ~0.98)
    U, _, Vh = torch.linalg.svd(G)
    polar = U @ Vh  # (3, 64, 64)
    cos = (X * polar).sum(dim=(-2, -1)) / (X.norm(dim=(-2, -1)) * polar.norm(dim=(-2, -1)))
    assert (cos > 0.95).all(), cos


def test_newton_schulz_batched_matches_plain_reference():
    G = torch.randn(3, 20, 12, generator=torch.Generator().manual_seed(2))
    X = zeropower_via_newtonschulz(G.double(), steps=5)
    assert X.dtype == torch.float64
    # agree up to the 1e-7 the implementation adds to the norm
    for i in range(3):
        assert_near(X[i], reference_newton_schulz(G[i], 5), atol=1e-7)
    # the fp32 path agrees with the fp64 one to fp32 rounding
    assert_near(zeropower_via_newtonschulz(G), X, atol=1e-5)


def test_newton_schulz_zero_gradient_stays_finite():
    assert torch.equal(zeropower_via_newtonschulz(torch.zeros(4, 6)), torch.zeros(4, 6))


# ---------------------------------------------------------------- Muon


@pytest.mark.parametrize("shape", [(5,), (), (2, 3, 4)])
def test_muon_rejects_non_matrices(shape):
    with pytest.raises(ValueError, match="only handles 2D"):
        Muon([nn.Parameter(torch.zeros(shape))])


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_matches_plain_reference(nesterov):
    gen = torch.Generator().manual_seed(0)
    shapes = [(8, 8), (12, 5), (8, 8), (5, 12)]  # square (twice: one batched bucket), tall, wide
    params = [nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    ref = [p.detach().double().clone() for p in params]
    bufs = [torch.zeros_like(r) for r in ref]
    lr, wd = 0.05, 0.1
    opt = Muon(params, lr=lr, nesterov=nesterov, weight_decay=wd)
    for m in (0.85, 0.9, 0.95):
        set_muon_momentum([opt], m)
        grads = [torch.randn(s, generator=gen) for s in shapes]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        for i, g in enumerate(grads):
            bufs[i] = m * bufs[i] + (1 - m) * g.double()
            direction = (1 - m) * g.double() + m * bufs[i] if nesterov else bufs[i]
            rows, cols = ref[i].shape
            ref[i] = ref[i] * (1 - lr * wd) - lr * max(1, rows / cols) ** 0.5 * reference_newton_schulz(
                direction, 5
            )
    for p, r in zip(params, ref):
        assert_near(p.detach(), r, atol=2e-6)


def test_muon_skips_parameters_without_gradient():
    a, b = nn.Parameter(torch.ones(3, 3)), nn.Parameter(torch.ones(3, 3))
    a.grad = torch.randn(3, 3)
    Muon([a, b]).step()
    assert not torch.equal(a, torch.ones(3, 3)) and torch.equal(b, torch.ones(3, 3))


def fake_groups():
    return {
        "matrix": [nn.Parameter(torch.randn(16, 16)) for _ in range(3)] + [nn.Parameter(torch.randn(32, 16))],
        "embedding": [nn.Parameter(torch.randn(50, 16))],
        "unembedding": [nn.Parameter(torch.randn(50, 16))],
        "scalar": [nn.Parameter(torch.ones(4)), nn.Parameter(torch.tensor(1.0))],
    }


def test_build_optimizers_groups_and_width_scaled_lrs():
    groups = fake_groups()
    adamw, muon = build_optimizers(groups, model_dim=3072, weight_decay=0.1)  # (3072/768)^-0.5 = 0.5
    assert isinstance(adamw, torch.optim.AdamW) and type(muon) is Muon
    by_name = {g["name"]: g for opt in (adamw, muon) for g in opt.param_groups}
    expected = {"matrix": 0.02, "embedding": 0.1, "unembedding": 0.002, "scalar": 0.5}
    for name, lr in expected.items():
        assert by_name[name]["lr"] == pytest.approx(lr) == by_name[name]["initial_lr"]
        assert [id(p) for p in by_name[name]["params"]] == [id(p) for p in groups[name]]
    assert adamw.defaults["betas"] == (0.8, 0.95) and adamw.defaults["eps"] == 1e-10
    assert by_name["scalar"]["weight_decay"] == 0.0 and by_name["embedding"]["weight_decay"] == 0.1
    assert by_name["matrix"]["weight_decay"] == 0.1 and by_name["matrix"]["momentum"] == 0.95
    # every parameter in exactly one optimizer
    ids = [id(p) for opt in (adamw, muon) for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for ps in groups.values() for p in ps)

    set_lr_multiplier([adamw, muon], 0.5)
    assert by_name["embedding"]["lr"] == pytest.approx(0.05) and by_name["matrix"]["lr"] == pytest.approx(
        0.01
    )
    set_muon_momentum([adamw, muon], 0.85)
    assert by_name["matrix"]["momentum"] == 0.85 and "momentum" not in by_name["embedding"]


def test_build_optimizers_default_width_and_missing_groups():
    groups = fake_groups()
    (adamw,) = build_optimizers({"embedding": groups["embedding"], "scalar": []}, model_dim=768)
    assert [g["name"] for g in adamw.param_groups] == ["embedding"]
    assert adamw.param_groups[0]["lr"] == pytest.approx(0.2)


def test_build_optimizers_rejects_bad_input():
    groups = fake_groups()
    with pytest.raises(ValueError, match="unknown parameter group.*valid names"):
        build_optimizers({**groups, "norms": []}, model_dim=64)
    with pytest.raises(ValueError, match="appears twice"):
        build_optimizers({**groups, "scalar": groups["embedding"]}, model_dim=64)
    with pytest.raises(ValueError, match="only handles 2D"):
        build_optimizers({"matrix": groups["scalar"]}, model_dim=64)
    with pytest.raises(RuntimeError, match="initialised torch.distributed"):
        build_optimizers(groups, model_dim=64, world_size=2)


# ---------------------------------------------------------------- distributed == single process


class TinyModel(nn.Module):
    """Shapes chosen to hit the sharding edge cases on 2 ranks: three same-shape matrices (a
    short last Muon chunk), tall and wide matrices, and AdamW tensors of odd numel (padding)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(11, 6)
        self.fc_in = nn.Linear(6, 8, bias=False)  # (8, 6) tall
        self.mids = nn.ModuleList(nn.Linear(8, 8, bias=False) for _ in range(3))
        self.fc_out = nn.Linear(8, 6, bias=False)  # (6, 8) wide
        self.head = nn.Linear(6, 11)  # bias of 11 elements
        self.gates = nn.Parameter(torch.ones(3))
        self.gain = nn.Parameter(torch.tensor(1.0))

    def forward(self, idx, targets):
        x = self.emb(idx)  # (B, T, 6)
        h = torch.relu(self.fc_in(x))  # (B, T, 8)
        for gate, mid in zip(self.gates, self.mids):
            h = h + gate * torch.tanh(mid(h))
        y = x + self.gain * self.fc_out(h)  # (B, T, 6)
        logits = self.head(y)  # (B, T, 11)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def parameter_groups(self):
        return {
            "matrix": [self.fc_in.weight, *(m.weight for m in self.mids), self.fc_out.weight],
            "embedding": [self.emb.weight],
            "unembedding": [self.head.weight, self.head.bias],
            "scalar": [self.gates, self.gain],
        }


GLOBAL_BATCH = 8


def train_steps(model, optimizers, steps, rank=0, world_size=1):
    """Each rank takes its contiguous share of the same global batch; the loss is its mean."""
    share = GLOBAL_BATCH // world_size
    for step in steps:
        gen = torch.Generator().manual_seed(1000 + step)
        idx = torch.randint(0, 11, (GLOBAL_BATCH, 5), generator=gen)
        targets = torch.randint(0, 11, (GLOBAL_BATCH, 5), generator=gen)
        rows = slice(rank * share, (rank + 1) * share)
        model(idx[rows], targets[rows]).backward()
        set_lr_multiplier(optimizers, 1.0 - step / 20)
        set_muon_momentum(optimizers, muon_momentum(step, warmup_steps=4))
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)


def through_bytes(obj):
    """What a checkpoint does to a state dict: torch.save, then torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def dist_worker(rank, world_size, port, out_dir):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=60))
    try:
        model = TinyModel()
        optimizers = build_optimizers(model.parameter_groups(), model_dim=768, world_size=world_size)
        assert [type(o) for o in optimizers] == [DistAdamW, DistMuon]
        train_steps(model, optimizers, range(0, 3), rank, world_size)
        saved_model = through_bytes(model.state_dict())
        saved_opts = [through_bytes(o.state_dict()) for o in optimizers]
        train_steps(model, optimizers, range(3, 6), rank, world_size)

        # resume from the saved state into fresh objects
        resumed = TinyModel()
        resumed.load_state_dict(saved_model)
        fresh = build_optimizers(resumed.parameter_groups(), model_dim=768, world_size=world_size)
        for opt, state in zip(fresh, saved_opts):
            opt.load_state_dict(state)
        train_steps(resumed, fresh, range(3, 6), rank, world_size)

        wrong_rank = {**saved_opts[0], "shard": {"rank": 1 - rank, "world_size": world_size}}
        try:
            fresh[0].load_state_dict(wrong_rank)
            raise AssertionError("a state from another rank was accepted")
        except ValueError:
            pass

        adam_state, muon_state = (o.state_dict()["state"] for o in optimizers)
        result = {
            "final": model.state_dict(),
            "resumed": resumed.state_dict(),
            "adam": adam_state,
            "muon": muon_state,
        }
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_distributed_matches_single_process_and_resumes_exactly(tmp_path):
    world_size = 2
    mp.spawn(dist_worker, args=(world_size, free_port(), str(tmp_path)), nprocs=world_size)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world_size)]

    reference = TinyModel()
    optimizers = build_optimizers(reference.parameter_groups(), model_dim=768)
    train_steps(reference, optimizers, range(0, 6))

    for name, expected in reference.state_dict().items():
        for r in ranks:
            # every rank holds the same weights, bit for bit, and resuming changes nothing
            assert torch.equal(r["final"][name], ranks[0]["final"][name]), name
            assert torch.equal(r["resumed"][name], r["final"][name]), name
        # two half-batch means averaged vs one full-batch mean: equal up to fp32 rounding
        # (measured <= 2.4e-7, while every tensor moved by 0.02-0.9)
        assert_near(ranks[0]["final"][name], expected, atol=2e-6, what=name)
        assert not torch.equal(expected, TinyModel().state_dict()[name]), f"{name} never moved"

    # Each rank's state is its shard only, and the shards together are the single-process state.
    # (Adam and Muon are nearly blind to the gradient's scale: the moments also check averaging.)
    adam_ref, muon_ref = (o.state_dict()["state"] for o in optimizers)
    for idx, ref in adam_ref.items():
        assert all(r["adam"][idx]["step"] == ref["step"].item() == 6 for r in ranks)
        for key in ("exp_avg", "exp_avg_sq"):
            joined = torch.cat([r["adam"][idx][key] for r in ranks])  # rank 0's slice, then rank 1's
            assert_near(joined, ref[key].view(-1), atol=1e-5 * ref[key].abs().max().item(), what=key)
    # Muon matrices by index: fc_in, mids 0-2, fc_out; round-robin within each shape
    assert [sorted(r["muon"]) for r in ranks] == [[0, 1, 3, 4], [2]]
    for r in ranks:
        for idx, state in r["muon"].items():
            ref = muon_ref[idx]["momentum_buffer"]
            assert_near(state["momentum_buffer"], ref, atol=1e-5 * ref.abs().max().item(), what=f"muon {idx}")
