"""What the machine is: accelerator names, their dense bf16 peak FLOP/s (for MFU), hourly prices.

Peak figures are the vendors' dense (no sparsity) bf16 tensor numbers; MFU is only reported for
devices listed here. Prices are rough on-demand rates per GPU-hour for the report's cost line.
"""

from __future__ import annotations

# (substring of torch.cuda.get_device_name(), peak bf16 FLOP/s, approximate $ per GPU-hour)
GPU_TABLE = (
    ("H200", 989e12, 3.8),
    ("H100 PCIe", 756e12, 2.4),
    ("H100 NVL", 835e12, 2.8),
    ("H100", 989e12, 3.0),  # SXM; after the PCIe/NVL rows so those match first
    ("GH200", 989e12, 3.5),
    ("A100", 312e12, 1.6),
    ("L40S", 362e12, 1.0),
    ("A10G", 70e12, 1.0),
    ("RTX 4090", 165e12, 0.7),
    ("RTX 3090", 71e12, 0.4),
)


def gpu_entry(name: str) -> tuple[str, float, float] | None:
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
