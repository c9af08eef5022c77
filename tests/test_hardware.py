"""MFU and the GPU table: exact arithmetic, the order of substring matches."""

import pytest

from nanochat.hardware import gpu_entry, mfu, peak_flops


def test_mfu_matches_the_reference_d20_figure():
    # karpathy/nanochat's speedrun: d20 FLOPs/token x 524,288 tokens per 0.485 s step on 8 H100s (989e12) is ~48% MFU
    flops_per_token = 6 * 560_988_160 * 0.94 + 12 * 20 * 10 * 128 * 2048  # any value: checked exactly below
    tok_s = 524_288 / 0.485
    assert mfu(flops_per_token, tok_s, 989e12, 8) == pytest.approx(flops_per_token * tok_s / (989e12 * 8))
    assert mfu(3.0e9, 1000.0, 1e12, 2) == pytest.approx(1.5)
    assert mfu(3.0e9, 1000.0, None, 1) is None


def test_gpu_table_matches_the_specific_model_first():
    assert gpu_entry("NVIDIA H100 PCIe")[0] == "H100 PCIe"
    assert gpu_entry("NVIDIA H100 80GB HBM3")[0] == "H100"
    assert gpu_entry("NVIDIA H200")[0] == "H200"
    assert gpu_entry("NVIDIA GeForce RTX 4090")[1] == 165e12
    assert gpu_entry("Some Unknown GPU") is None
    assert peak_flops("cpu") is None and peak_flops("mps") is None


def test_small_and_workstation_gpus_are_listed():
    """The 6-8 GB preset's cards: "AI TOPS" (sparse fp8) / 8 is their dense bf16 rate; no hourly price."""
    assert gpu_entry("NVIDIA GeForce RTX 4060 Ti")[:2] == ("RTX 4060 Ti", 44e12)  # not the plain 4060's row
    assert gpu_entry("NVIDIA GeForce RTX 4060 Laptop GPU") == ("RTX 4060 Laptop", 29e12, None)
    assert gpu_entry("NVIDIA GeForce RTX 4060")[0] == "RTX 4060"
    assert gpu_entry("NVIDIA GeForce RTX 4050 Laptop GPU") == ("RTX 4050", 24e12, None)
    assert gpu_entry("NVIDIA RTX A6000")[1] == 155e12 and gpu_entry("NVIDIA RTX 6000 Ada Generation")[1] == 364e12
    assert gpu_entry("NVIDIA L40S")[2] == 1.0
