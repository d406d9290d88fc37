"""The paper's §4 as runnable math: least-squares asymmetry (Lemmas 4.1, 4.2, Theorem 4.3) and the
information-theoretic generalization bounds of Lemma 4.5.

Setting (d_in = d_out = d, no α/r scale): target Y = (W0 + Δ)X + b + n, n ~ N(0, σ²I),
E[X] = 0, Cov[X] = Σ. The adapted model is (W0 + BA)x + b.
- B-only, A = Q frozen (QQᵀ = I_r):  B* = ΔΣQᵀ(QΣQᵀ)⁻¹,
  L_B = dσ² + Tr[ΔΣΔᵀ] − Tr[QΣΔᵀΔΣQᵀ(QΣQᵀ)⁻¹].
- A-only, B = U frozen (UᵀU = I_r):  A* = UᵀΔ,
  L_A = dσ² + Tr[ΔΣΔᵀ] − Tr[UᵀΔΣΔᵀU].
Theorem 4.3: for Haar-random Q, U, L_A ≥ L_B with high probability as d/r → ∞.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from asymtune.adapters.init import orthogonal
from asymtune.errors import UserError

if TYPE_CHECKING:
    from asymtune.recipe import Recipe
    from asymtune.runs import RunDir

MAX_DIMENSION = 8192  # d × d covariances in float64: 0.5 GiB each


@dataclass(frozen=True)
class Problem:
    """One sampled least-squares instance: the update Δ, input covariance Σ, noise variance σ²."""

    delta: torch.Tensor
    sigma: torch.Tensor
    noise: float


@dataclass(frozen=True)
class GapResult:
    d: int
    rank: int
    input_rank: int
    loss_b_only: tuple[float, float]  # mean, std over trials
    loss_a_only: tuple[float, float]
    gap: tuple[float, float]  # L_A − L_B
    loss_unadapted: float


def sample_problem(d: int, input_rank: int, noise: float, generator: torch.Generator) -> Problem:
    """Δ with N(0, 1/d) entries; Σ = U_X U_Xᵀ for a Haar-random d × input_rank U_X (unit variances)."""
    delta = torch.randn(d, d, generator=generator, dtype=torch.float64) / math.sqrt(d)
    basis = orthogonal(d, input_rank, generator)
    return Problem(delta=delta, sigma=basis @ basis.T, noise=noise)


def unadapted_loss(problem: Problem) -> float:
    """dσ² + Tr[ΔΣΔᵀ]: the loss of the pretrained model (B·A = 0)."""
    d = problem.delta.shape[0]
    return d * problem.noise + float(torch.trace(problem.delta @ problem.sigma @ problem.delta.T))


def optimal_b(problem: Problem, q: torch.Tensor) -> torch.Tensor:
    """Lemma 4.1: B* = ΔΣQᵀ(QΣQᵀ)⁺ (pseudo-inverse when the inputs span fewer than r directions)."""
    return problem.delta @ problem.sigma @ q.T @ torch.linalg.pinv(q @ problem.sigma @ q.T)


def optimal_a(problem: Problem, u: torch.Tensor) -> torch.Tensor:
    """Lemma 4.2: A* = UᵀΔ."""
    return u.T @ problem.delta


def population_loss(problem: Problem, b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """E‖Y − (W0 + BA)X − b‖² = dσ² + Tr[(Δ − BA)Σ(Δ − BA)ᵀ]."""
    residual = problem.delta - b @ a
    return problem.delta.shape[0] * problem.noise + torch.trace(residual @ problem.sigma @ residual.T)


def loss_b_only(problem: Problem, q: torch.Tensor) -> float:
    """Lemma 4.1's closed form of min_B L(Q, B)."""
    s, delta = problem.sigma, problem.delta
    explained = torch.trace(q @ s @ delta.T @ delta @ s @ q.T @ torch.linalg.pinv(q @ s @ q.T))
    return unadapted_loss(problem) - float(explained)


def loss_a_only(problem: Problem, u: torch.Tensor) -> float:
    """Lemma 4.2's closed form of min_A L(A, U)."""
    explained = torch.trace(u.T @ problem.delta @ problem.sigma @ problem.delta.T @ u)
    return unadapted_loss(problem) - float(explained)


def asymmetry_gap(d: int, rank: int, input_rank: int, trials: int, noise: float, seed: int) -> GapResult:
    """Monte-Carlo over (Δ, Σ, Q, U): mean ± std of L_B, L_A and the gap L_A − L_B."""
    generator = torch.Generator().manual_seed(seed)
    b_losses, a_losses, gaps, base = [], [], [], []
    for _ in range(trials):
        problem = sample_problem(d, input_rank, noise, generator)
        q = orthogonal(rank, d, generator)  # r × d, orthonormal rows
        u = orthogonal(d, rank, generator)  # d × r, orthonormal columns
        lb, la = loss_b_only(problem, q), loss_a_only(problem, u)
        b_losses.append(lb)
        a_losses.append(la)
        gaps.append(la - lb)
        base.append(unadapted_loss(problem))

    def spread(values: list[float]) -> tuple[float, float]:
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    return GapResult(d, rank, input_rank, spread(b_losses), spread(a_losses), spread(gaps), statistics.fmean(base))


@dataclass(frozen=True)
class BoundRatios:
    """Lemma 4.5 for one adapter layout: Σ d_in and Σ d_out over adapted matrices, and the ratios
    of the B-only and A-only bounds to the both-factors bound at the same rank."""

    sum_d_in: int
    sum_d_out: int

    @property
    def b_only(self) -> float:
        return math.sqrt(self.sum_d_out / (self.sum_d_in + self.sum_d_out))

    @property
    def a_only(self) -> float:
        return math.sqrt(self.sum_d_in / (self.sum_d_in + self.sum_d_out))

    def bound(self, factors: str, rank: int, bits: int, sub_gaussian: float, samples: int) -> float:
        """sqrt(2·r·q·σ²·ln2/n · Σ d) with Σ d over the tuned factors ('BA', 'B' or 'A')."""
        dims = {"BA": self.sum_d_in + self.sum_d_out, "B": self.sum_d_out, "A": self.sum_d_in}[factors]
        return math.sqrt(2 * rank * bits * sub_gaussian**2 * math.log(2) / samples * dims)


def bound_ratios_from_counts(parameters: dict[str, int], rank: int) -> BoundRatios:
    """Σ d_in = (#A)/r and Σ d_out = (#B)/r from a run's parameter counts (trainable + frozen)."""
    a_count = parameters["trainable_A"] + parameters["frozen_A"]
    b_count = parameters["trainable_B"] + parameters["frozen_B"]
    return BoundRatios(sum_d_in=a_count // rank, sum_d_out=b_count // rank)


class TheoryError(UserError):
    """A grid value or a run/recipe that the least-squares study or Lemma 4.5 cannot use."""


def parse_grid(dims: str, ranks: str, input_ranks: str) -> list[tuple[int, int, int]]:
    """(d, r, input rank) for every combination of the comma-separated values; input ranks may be 'r' or 'd'."""
    def values(text: str, flag: str) -> list[str]:
        found = [v.strip() for v in text.split(",") if v.strip()]
        if not found:
            raise TheoryError(f"--{flag}: give comma-separated values")
        return found

    grid = []
    for d_text, r_text, x_text in itertools.product(values(dims, "d"), values(ranks, "rank"),
                                                    values(input_ranks, "input-rank")):
        try:
            d, r = int(d_text), int(r_text)
            x = {"r": r, "d": d}.get(x_text) or int(x_text)
        except ValueError:
            raise TheoryError(
                f"--d/--rank/--input-rank: {d_text}, {r_text}, {x_text} are not integers (or r/d)"
            ) from None
        if not 1 <= r <= d <= MAX_DIMENSION or not 1 <= x <= d:
            raise TheoryError(f"need 1 <= rank <= d <= {MAX_DIMENSION} and 1 <= input rank <= d; "
                              f"got d={d}, rank={r}, input rank={x}")
        grid.append((d, r, x))
    return grid


def run_bound_ratios(run: RunDir) -> tuple[BoundRatios, int]:
    """Lemma 4.5's ratios for a finished LoRA-family run, from its parameter counts; and its rank."""
    from asymtune import recipe

    parameters = (run.read_json("metrics.json") or {}).get("parameters")
    if not isinstance(parameters, dict) or not all(
        isinstance(parameters.get(k), int) for k in ("trainable_A", "frozen_A", "trainable_B", "frozen_B")
    ):
        raise TheoryError(f"--run {run.path}: needs a completed run with parameter counts in metrics.json")
    rank = recipe.load(run.recipe_file, check_files=False).adapter.rank
    if rank is None or not (parameters["frozen_A"] + parameters["trainable_A"]):
        raise TheoryError(f"--run {run.path}: Lemma 4.5 needs a LoRA-family run (A and B factors)")
    return bound_ratios_from_counts(parameters, rank), rank


def recipe_bound_ratios(trained: Recipe, source: str, log: Callable[[str], None]) -> BoundRatios:
    """Lemma 4.5's ratios for a recipe's targets, from the model's config alone (no weights loaded)."""
    from asymtune.models import adapted_dimensions

    if trained.adapter.rank is None or trained.adapter.targets is None:
        raise TheoryError(f"{source}: Lemma 4.5 needs a LoRA-family adapter (rank and targets)")
    dims = adapted_dimensions(trained.model, trained.adapter.targets, log)
    if not dims:
        raise TheoryError(f"{source}: adapter.targets {trained.adapter.targets} match no linear layer")
    return BoundRatios(sum_d_in=sum(d_in for _, d_in in dims), sum_d_out=sum(d_out for d_out, _ in dims))


@dataclass(frozen=True)
class Bound:
    """Lemma 4.5's ratios for one source (a run folder or a recipe file) at its adapter rank."""

    source: str
    ratios: BoundRatios
    rank: int


@dataclass(frozen=True)
class Study:
    """What `asymtune theory` shows: the least-squares gaps per grid point and any Lemma 4.5 bounds asked for."""

    gaps: list[GapResult]
    bounds: list[Bound]


def study(dims: str, ranks: str, input_ranks: str, trials: int, noise: float, seed: int, run_ref: str | None,
          recipe_file: str | None, root: Path, log: Callable[[str], None],
          progress: Callable[[list], Iterable] = iter) -> Study:
    """The gaps over the (d, r, input rank) grid (iterated through `progress`, e.g. a progress bar) and the bound
    ratios of `run_ref` (a run, as runs.resolve reads it) and of `recipe_file`, when given."""
    from asymtune import recipe as recipes
    from asymtune.runs import resolve_one

    grid = parse_grid(dims, ranks, input_ranks)
    bounds = []  # before any sampling: a bad grid, run or recipe fails at once
    if run_ref:
        run = resolve_one(run_ref, root, "--run")
        ratios, rank = run_bound_ratios(run)
        bounds.append(Bound(str(run.path), ratios, rank))
    if recipe_file:
        trained = recipes.load(recipe_file)
        bounds.append(Bound(recipe_file, recipe_bound_ratios(trained, recipe_file, log), trained.adapter.rank))
    return Study([asymmetry_gap(d, r, x, trials, noise, seed) for d, r, x in progress(grid)], bounds)
