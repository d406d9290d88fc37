"""Factor initialisers for LoRA's A (r × d_in) and B (d_out × r).

Every random factor is drawn in float64 on the CPU from a generator seeded by
(adapter seed, module name, factor), then cast: the same factor on every machine and device,
so a frozen A can be reproduced from its seed alone. The Gaussian and uniform draws are the same bit
for bit; an orthogonal factor's QR (LAPACK) differs in the last float64 bits between CPU instruction
sets (seen: 6e-17 between MKL's AVX2 and AVX-512 paths), so a draw is recognised by its `fingerprint`.
"""

from __future__ import annotations

import hashlib
import math
from typing import Literal

import torch

Factor = Literal["A", "B"]


def factor_generator(seed: int, module_name: str, factor: Factor) -> torch.Generator:
    """A CPU generator seeded from sha256(seed, module name, factor) — stable across processes."""
    digest = hashlib.sha256(f"{seed}:{module_name}:{factor}".encode()).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "little") >> 1)


FINGERPRINT_TOLERANCE = 1e-9  # absolute, per projection: rounding moves one by ~1e-14, another draw by ~1


def fingerprint(factor: torch.Tensor) -> list[float]:
    """Four fixed random projections ⟨P_i, factor⟩ of a factor's float64 values (P_i standard Gaussian, seeded):
    equal within FINGERPRINT_TOLERANCE wherever the same draw is regenerated, unrelated for any other draw."""
    values = factor.detach().to("cpu", torch.float64).flatten()
    probes = torch.randn(4, values.numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return [float(x) for x in probes @ values]


def same_draw(recorded: list[float], regenerated: list[float]) -> bool:
    """Whether two fingerprints are of the same draw (`fingerprint`)."""
    if len(recorded) != len(regenerated):
        return False
    pairs = zip(recorded, regenerated, strict=True)
    return all(math.isclose(a, b, rel_tol=0.0, abs_tol=FINGERPRINT_TOLERANCE) for a, b in pairs)


def orthogonal(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """Haar-random semi-orthogonal matrix: orthonormal rows if rows ≤ cols, else orthonormal columns.

    QR of a standard Gaussian with the signs of R's diagonal moved into Q, which makes Q
    Haar-distributed (Mezzadri 2007).
    """
    tall = rows > cols
    n, k = (rows, cols) if tall else (cols, rows)
    gaussian = torch.randn(n, k, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    return q if tall else q.T.contiguous()


def kaiming_uniform(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """PEFT's default A: kaiming_uniform_(a=√5), i.e. U(-1/√fan_in, 1/√fan_in) with fan_in = cols."""
    weight = torch.empty(rows, cols, dtype=torch.float64)
    torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    return weight


def gaussian(rows: int, cols: int, rank: int, generator: torch.Generator) -> torch.Tensor:
    """PEFT's `init_lora_weights="gaussian"`: N(0, (1/r)²)."""
    return torch.randn(rows, cols, generator=generator, dtype=torch.float64) / rank


def svd_factor(base_weight: torch.Tensor, rank: int, factor: Factor) -> torch.Tensor:
    """The paper's A_V / B_U: top-r right singular vectors of W0 as A's rows, left ones as B's columns."""
    u, _, vh = torch.linalg.svd(base_weight.detach().to(device="cpu", dtype=torch.float64), full_matrices=False)
    if rank > vh.shape[0]:
        raise ValueError(f"svd init needs rank ≤ min(d_out, d_in) = {vh.shape[0]}, got {rank}")
    return vh[:rank].contiguous() if factor == "A" else u[:, :rank].contiguous()


def make_factor(
    init: str,
    factor: Factor,
    shape: tuple[int, ...],
    rank: int,
    seed: int,
    module_name: str,
    base_weight: torch.Tensor | None,
) -> torch.Tensor:
    """Build one factor (float64, CPU) of `shape` from its recipe init name.

    Convolution factors (A: r × c_in × k × k, B: c_out × r × 1 × 1) are drawn as the matrices
    (shape[0], the product of the rest) — rows of A and columns of B orthonormal — and reshaped.
    """
    rows, cols = shape[0], math.prod(shape[1:])
    if init == "zero":
        matrix = torch.zeros(rows, cols, dtype=torch.float64)
    elif init == "svd":
        if base_weight is None:
            raise ValueError("svd init needs the base layer's weight")
        matrix = svd_factor(base_weight.reshape(base_weight.shape[0], -1), rank, factor)
    else:
        generator = factor_generator(seed, module_name, factor)
        if init == "orthogonal":
            matrix = orthogonal(rows, cols, generator)
        elif init == "kaiming_uniform":
            matrix = kaiming_uniform(rows, cols, generator)
        elif init == "gaussian":
            matrix = gaussian(rows, cols, rank, generator)
        else:
            raise ValueError(f"unknown factor init {init!r}")
    return matrix.reshape(shape)
