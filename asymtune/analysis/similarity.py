"""Subspace similarity of learned factors across runs (the paper's Figure 1 / Appendix A).

For factors X, Y with orthonormal bases U_X, U_Y of their relevant subspaces (right singular
vectors for A, r × d_in; left singular vectors for B, d_out × r):

    similarity(X, Y) = ‖U_Yᵀ U_X‖²_F / min(r_X, r_Y)  ∈ [0, 1],

invariant to any invertible r × r transform C, since B·A = (B·C)(C⁻¹·A) leaves both subspaces fixed.
"""

from __future__ import annotations

import importlib.util
import itertools
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from asymtune import atomic
from asymtune.adapters.lora import read_weights
from asymtune.errors import UserError
from asymtune.runs import RunDir

LAYER = re.compile(r"\.(\d+)\.")


@dataclass(frozen=True)
class FactorPair:
    """The learned A and B of one adapted module."""

    A: torch.Tensor
    B: torch.Tensor


def subspace_basis(factor: torch.Tensor, which: str) -> torch.Tensor:
    """Orthonormal basis (columns) of A's row space (which='A') or B's column space (which='B')."""
    matrix = factor.detach().to(torch.float64)
    u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    return vh.T if which == "A" else u


def similarity(x: torch.Tensor, y: torch.Tensor, which: str) -> float:
    """‖U_yᵀ U_x‖²_F / min(r_x, r_y) for two A's or two B's."""
    ux, uy = subspace_basis(x, which), subspace_basis(y, which)
    return float((uy.T @ ux).pow(2).sum() / min(ux.shape[1], uy.shape[1]))


def load_factors(adapter_dir: Path) -> dict[str, FactorPair]:
    """{module name: FactorPair} from a PEFT adapter folder (adapter_model.safetensors)."""
    weights = read_weights(adapter_dir / "adapter_model.safetensors")
    modules = sorted({key.rsplit(".lora_", 1)[0] for key in weights if ".lora_A." in key})
    return {
        module.removeprefix("base_model.model."): FactorPair(
            weights[f"{module}.lora_A.weight"], weights[f"{module}.lora_B.weight"]
        )
        for module in modules
    }


def split_module(name: str) -> tuple[int, str]:
    """('model.layers.3.self_attn.q_proj') -> (3, 'q_proj'); modules outside numbered layers get -1."""
    match = LAYER.search(name)
    return (int(match.group(1)) if match else -1), name.rsplit(".", 1)[-1]


def pairwise(runs: list[dict[str, FactorPair]]) -> dict[str, dict[tuple[int, str], float]]:
    """Mean over run pairs of the A and B similarities, per (layer, target)."""
    shared = set.intersection(*(set(factors) for factors in runs))
    if not shared:
        raise ValueError("the runs adapt no module in common")
    out: dict[str, dict[tuple[int, str], float]] = {"A": {}, "B": {}}
    for module in sorted(shared):
        key = split_module(module)
        for which in ("A", "B"):
            values = [similarity(getattr(a[module], which), getattr(b[module], which), which)
                      for a, b in itertools.combinations(runs, 2)]
            out[which][key] = statistics.fmean(values)
    return out


def summary(result: dict[str, dict[tuple[int, str], float]]) -> dict[str, dict[str, float]]:
    """{target: {'A': mean over layers, 'B': mean over layers}}."""
    targets = sorted({target for _, target in result["A"]})
    return {
        target: {which: statistics.fmean(v for (_, t), v in result[which].items() if t == target)
                 for which in ("A", "B")}
        for target in targets
    }


def heatmaps(result: dict[str, dict[tuple[int, str], float]], folder: Path, title: str) -> list[Path]:
    """One PNG per factor: targets (rows) × layers (columns), similarity in [0, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for which, values in result.items():
        layers = sorted({layer for layer, _ in values})
        targets = sorted({target for _, target in values})
        grid = [[values.get((layer, target), float("nan")) for layer in layers] for target in targets]
        figure, axis = plt.subplots(figsize=(max(4.0, 0.35 * len(layers) + 2), 0.5 * len(targets) + 1.5))
        image = axis.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        axis.set_xticks(range(len(layers)), [str(layer) for layer in layers])
        axis.set_yticks(range(len(targets)), targets)
        axis.set_xlabel("layer")
        axis.set_title(f"{title}: similarity of learned {which}")
        figure.colorbar(image, ax=axis)
        figure.tight_layout()
        path = folder / f"similarity_{which}.png"
        figure.savefig(path, dpi=120)
        plt.close(figure)
        written.append(path)
    return written


class SimilarityError(UserError):
    """The runs cannot be compared: fewer than two, no saved adapter, or no module in common."""


@dataclass(frozen=True)
class Report:
    """What `asymtune similarity` shows: the record written to similarity.json and the heatmaps."""

    record: dict
    images: list[Path]


def compare_runs(runs: list[RunDir], folder: Path | None) -> Report:
    """Figure 1 for `runs`: heatmaps and similarity.json into `folder` (default FIRST_RUN/eval/similarity)."""
    if importlib.util.find_spec("matplotlib") is None:
        raise SimilarityError("similarity draws heatmaps with matplotlib: pip install 'asymtune[analysis]'")
    if len(runs) < 2:
        raise SimilarityError("give at least two runs to compare")
    missing = [str(run.path) for run in runs if not (run.adapter_dir / "adapter_model.safetensors").is_file()]
    if missing:
        raise SimilarityError(f"no saved adapter in {', '.join(missing)}")
    try:
        result = pairwise([load_factors(run.adapter_dir) for run in runs])
    except ValueError as error:
        raise SimilarityError(str(error)) from None
    record = {"runs": [str(run.path) for run in runs], "pairs": len(runs) * (len(runs) - 1) // 2,
              "per_target": summary(result),
              "per_layer": {w: [{"layer": k[0], "target": k[1], "similarity": v} for k, v in result[w].items()]
                            for w in result}}
    if folder is not None:
        return Report(record, _write(result, record, folder, len(runs)))
    with runs[0].exclusive("similarity"):  # written into the first run
        return Report(record, _write(result, record, runs[0].path / "eval" / "similarity", len(runs)))


def _write(result: dict, record: dict, folder: Path, count: int) -> list[Path]:
    images = heatmaps(result, folder, f"{count} runs")
    atomic.write_json(folder / "similarity.json", record)
    return images
