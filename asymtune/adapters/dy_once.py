"""B-only backward's two rank-r products of dy in one pass over dy (a Triton kernel):

    g  = dy·B      (n × r)      dB = dyᵀ·h      (d_out × r)

cuBLAS reads dy (n × d_out, the largest tensor of the pair) once for each. Here each program loads one block of dy
rows for a slice of d_out, tile by tile, and uses every tile for both products: g accumulates across the slice's
tiles, and each tile's dB contribution goes to a float32 partial for its row block; the partials (row blocks × d_out
× r) and the slices' g partials are summed afterwards in a fixed order, so the result is deterministic. Writing
and reading those partials costs 2·(n/256)·d_out·r·4 bytes (plus the g partials), so at r = 16 the pass saves about
half of the dy read it removes (n·d_out·2 bytes).

`products(dy, b, h)` runs the kernel on CUDA tensors and under `TRITON_INTERPRET=1` (set before this module is
imported) on any tensors; `available(dy)` says whether it can run for dy (elsewhere `fused.dy_products` runs the
two matmuls). The interpreter's `tl.dot` is wrong on bfloat16 (Triton 3.8), so interpreted tiles are
upcast to float32 first, which is exact. Whether it beats cuBLAS is a measurement (benchmarks/step_time.py's
`asymtune_b_only_dy_once`); it is used only where `fused.DY_ONCE` is set.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton on this platform: the kernel is unavailable, the matmuls are used
    triton = None

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
BLOCK_N, BLOCK_D = 256, 64  # partials: 2·(n/BLOCK_N)·d_out·r·4 bytes against dy's n·d_out·2 saved


def available(dy: torch.Tensor) -> bool:
    """Whether `products` can run for `dy`: Triton present, and dy on CUDA or the interpreter on."""
    return triton is not None and (dy.is_cuda or INTERPRETED)


if triton is not None:

    @triton.jit
    def _kernel(dy_ptr, b_ptr, h_ptr, g_part_ptr, db_part_ptr, n, d_out, r, d_per_split,
                stride_dy, stride_b, stride_h,
                BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, R: tl.constexpr, PRECISION: tl.constexpr,
                UPCAST: tl.constexpr):
        row_block, split = tl.program_id(0), tl.program_id(1)
        rows = row_block * BLOCK_N + tl.arange(0, BLOCK_N)
        ranks = tl.arange(0, R)
        row_ok, rank_ok = rows < n, ranks < r
        h = tl.load(h_ptr + rows[:, None] * stride_h + ranks[None, :], mask=row_ok[:, None] & rank_ok[None, :],
                    other=0.0)
        if UPCAST:  # exact for bf16/fp16 inputs; the interpreter's tl.dot is wrong on them
            h = h.to(tl.float32)
        g = tl.full((BLOCK_N, R), 0.0, tl.float32)
        start = split * d_per_split
        for offset in range(0, d_per_split, BLOCK_D):
            cols = start + offset + tl.arange(0, BLOCK_D)
            col_ok = (cols < d_out) & (offset + tl.arange(0, BLOCK_D) < d_per_split)
            dy = tl.load(dy_ptr + rows[:, None] * stride_dy + cols[None, :], mask=row_ok[:, None] & col_ok[None, :],
                         other=0.0)
            b = tl.load(b_ptr + cols[:, None] * stride_b + ranks[None, :], mask=col_ok[:, None] & rank_ok[None, :],
                        other=0.0)
            if UPCAST:
                dy, b = dy.to(tl.float32), b.to(tl.float32)
            g += tl.dot(dy, b, input_precision=PRECISION)
            db = tl.dot(tl.trans(dy), h, input_precision=PRECISION)
            tl.store(db_part_ptr + (row_block * d_out + cols[:, None]) * R + ranks[None, :], db,
                     mask=col_ok[:, None])
        tl.store(g_part_ptr + (split * n + rows[:, None]) * R + ranks[None, :], g, mask=row_ok[:, None])


def products(dy: torch.Tensor, b: torch.Tensor, h: torch.Tensor, splits: int | None = None) -> tuple[
    torch.Tensor, torch.Tensor
]:
    """(dy·B in dy's dtype, dyᵀ·h in float32) reading dy once; dy (n × d_out), b (d_out × r), h (n × r).

    `splits` divides d_out among programs of one row block (default: enough programs to fill the GPU)."""
    n, d_out = dy.shape
    r = b.shape[1]
    dy, b, h = dy.contiguous(), b.to(dy.dtype).contiguous(), h.to(dy.dtype).contiguous()
    padded = max(16, triton.next_power_of_2(r))  # tl.dot needs every dimension >= 16
    row_blocks = triton.cdiv(n, BLOCK_N)
    if splits is None:
        programs = torch.cuda.get_device_properties(dy.device).multi_processor_count * 2 if dy.is_cuda else 1
        splits = max(1, min(triton.cdiv(d_out, BLOCK_D), triton.cdiv(programs, row_blocks)))
    d_per_split = triton.cdiv(triton.cdiv(d_out, splits), BLOCK_D) * BLOCK_D
    splits = triton.cdiv(d_out, d_per_split)
    g_part = torch.empty(splits, n, padded, device=dy.device, dtype=torch.float32)
    db_part = torch.empty(row_blocks, d_out, padded, device=dy.device, dtype=torch.float32)
    _kernel[(row_blocks, splits)](dy, b, h, g_part, db_part, n, d_out, r, d_per_split,
                                  dy.stride(0), b.stride(0), h.stride(0),
                                  BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, R=padded,
                                  PRECISION="ieee" if dy.dtype == torch.float32 or INTERPRETED else "tf32",
                                  UPCAST=INTERPRETED, num_warps=8)
    return g_part.sum(0)[:, :r].to(dy.dtype), db_part.sum(0)[:, :r]
