"""What the machine is: accelerator names, their dense bf16 peak FLOP/s (for MFU), hourly prices.

Peak figures are the vendors' dense (no sparsity) bf16 tensor numbers; MFU is only reported for
devices listed here. Prices are rough on-demand rates per GPU-hour for the report's cost line and
nanochat/plan.py's estimate; None where the card is not rented by the hour (laptop GPUs).
GeForce cards run bf16 with fp32 accumulation at half their fp16-accumulate rate; NVIDIA quotes
their "AI TOPS" as sparse fp8, eight times the dense bf16 figure (RTX 4090: 1321 -> 165).
"""

from __future__ import annotations

# (substring of torch.cuda.get_device_name(), peak bf16 FLOP/s, approximate $ per GPU-hour or None)
GPU_TABLE = (
    ("H200", 989e12, 3.8),
    ("H100 PCIe", 756e12, 2.4),
    ("H100 NVL", 835e12, 2.8),
    ("H100", 989e12, 3.0),  # SXM; after the PCIe/NVL rows so those match first
    ("GH200", 989e12, 3.5),
    ("A100", 312e12, 1.6),
    ("L40S", 362e12, 1.0),
    ("RTX 6000 Ada", 364e12, 0.8),  # 1457 AI TOPS / 4 (workstation cards accumulate bf16 at full rate)
    ("RTX A6000", 155e12, 0.5),  # 310 TFLOPS sparse
    ("A10G", 70e12, 1.0),
    ("RTX 4090", 165e12, 0.7),
    ("RTX 3090", 71e12, 0.4),
    ("RTX 4060 Ti", 44e12, None),  # 353 AI TOPS; before "RTX 4060", which it contains
    ("RTX 4060 Laptop", 29e12, None),  # 233 AI TOPS at the highest power limit
    ("RTX 4060", 30e12, None),  # 242 AI TOPS (desktop)
    ("RTX 4050", 24e12, None),  # laptop only: 194 AI TOPS
)


def gpu_entry(name: str) -> tuple[str, float, float | None] | None:
    for key, flops, price in GPU_TABLE:
        if key.lower() in name.lower():
            return key, flops, price
    return None


def peak_flops(device_type: str, device=None) -> float | None:
    """Peak bf16 FLOP/s of one device, or None where unknown (CPU, MPS, unlisted GPUs)."""
    if device_type != "cuda":
        return None
    import torch

    entry = gpu_entry(torch.cuda.get_device_name(device))
    return entry[1] if entry else None


def mfu(flops_per_token: float, tokens_per_second: float, peak: float | None, num_devices: int) -> float | None:
    """Model FLOPs utilisation in [0, 1], or None without a known peak."""
    if not peak:
        return None
    return flops_per_token * tokens_per_second / (peak * num_devices)
