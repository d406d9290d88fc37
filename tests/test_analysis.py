"""Similarity (Figure 1) and least-squares theory (§4.1.1, Lemma 4.5)."""

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import sft_recipe

from asymtune.adapters.init import factor_generator, orthogonal
from asymtune.analysis import similarity as sim
from asymtune.analysis import theory as th
from asymtune.cli import main
from asymtune.runs import resolve


def test_similarity_is_one_with_itself_and_invariant_to_invertible_transforms():
    torch.manual_seed(0)
    a, b = torch.randn(4, 40), torch.randn(30, 4)
    m = torch.randn(4, 4) + 4 * torch.eye(4)  # invertible
    assert sim.similarity(a, a, "A") == pytest.approx(1.0)
    assert sim.similarity(b, b, "B") == pytest.approx(1.0)
    assert sim.similarity(b, b @ m, "B") == pytest.approx(1.0)
    assert sim.similarity(a, torch.linalg.inv(m) @ a, "A") == pytest.approx(1.0)
    assert (b @ m @ torch.linalg.inv(m) @ a - b @ a).abs().max() < 1e-4  # same product B·A


def test_random_subspaces_overlap_r_over_d_on_average():
    values = [
        sim.similarity(
            orthogonal(4, 64, factor_generator(s, "x", "A")), orthogonal(4, 64, factor_generator(s, "y", "A")), "A"
        )
        for s in range(200)
    ]
    assert sum(values) / len(values) == pytest.approx(4 / 64, rel=0.15)


def test_similarity_of_orthogonal_subspaces_is_zero():
    eye = torch.eye(8)
    assert sim.similarity(eye[:2], eye[2:4], "A") == pytest.approx(0.0)


def test_closed_forms_match_gradient_descent():
    generator = torch.Generator().manual_seed(1)
    problem = th.sample_problem(d=12, input_rank=6, noise=0.1, generator=generator)
    q, u = orthogonal(3, 12, generator), orthogonal(12, 3, generator)
    for free, closed_form, expected in (
        ("B", th.optimal_b(problem, q), th.loss_b_only(problem, q)),
        ("A", th.optimal_a(problem, u), th.loss_a_only(problem, u)),
    ):
        shape = (12, 3) if free == "B" else (3, 12)
        weight = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.SGD([weight], lr=0.2)  # plain gradient descent on the population loss
        for _ in range(4000):
            optimizer.zero_grad()
            loss = th.population_loss(problem, weight, q) if free == "B" else th.population_loss(problem, u, weight)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            final = th.population_loss(problem, weight, q) if free == "B" else th.population_loss(problem, u, weight)
        assert float(final) == pytest.approx(expected, abs=1e-8)
        closed = (
            th.population_loss(problem, closed_form, q) if free == "B" else th.population_loss(problem, u, closed_form)
        )
        assert float(closed) == pytest.approx(expected, abs=1e-9)


def test_b_only_fits_low_rank_inputs_exactly_and_a_only_does_not():
    result = th.asymmetry_gap(d=64, rank=4, input_rank=4, trials=5, noise=0.0, seed=0)
    assert result.loss_b_only[0] == pytest.approx(0.0, abs=1e-9)
    # A-only explains only about r/d of the update: its loss stays near the unadapted loss.
    assert result.loss_a_only[0] > 0.8 * result.loss_unadapted and result.gap[0] > 0


def test_bound_ratios():
    ratios = th.bound_ratios_from_counts(
        {"trainable_A": 0, "frozen_A": 8 * 100, "trainable_B": 8 * 300, "frozen_B": 0}, rank=8
    )
    assert (ratios.sum_d_in, ratios.sum_d_out) == (100, 300)
    assert ratios.b_only == pytest.approx((300 / 400) ** 0.5) and ratios.a_only == pytest.approx((100 / 400) ** 0.5)
    both = ratios.bound("BA", rank=8, bits=16, sub_gaussian=1.0, samples=1000)
    assert ratios.bound("B", rank=8, bits=16, sub_gaussian=1.0, samples=1000) == pytest.approx(both * ratios.b_only)


@pytest.mark.slow
def test_similarity_cli_on_runs_sharing_a_frozen_a(tiny_llama_dir, alpaca_file, write_recipe, tmp_path):
    runner = CliRunner()
    for seed in (0, 1):  # different data order and B, same adapter seed -> same frozen A
        recipe = sft_recipe(tiny_llama_dir, alpaca_file)
        recipe["seed"] = seed
        assert (
            runner.invoke(main, ["train", str(write_recipe(recipe)), "--output-dir", str(tmp_path / "runs")]).exit_code
            == 0
        )
    found = resolve([str(tmp_path / "runs")])
    result = runner.invoke(
        main,
        ["similarity", *(str(r.path) for r in found), "--figures-dir", str(tmp_path / "sim")],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "sim" / "similarity.json").read_text())
    assert record["per_target"]["q_proj"]["A"] == pytest.approx(1.0)
    assert 0 < record["per_target"]["q_proj"]["B"] <= 1
    assert (tmp_path / "sim" / "similarity_A.png").stat().st_size > 0 and (
        tmp_path / "sim" / "similarity_B.png"
    ).is_file()
    assert len(record["per_layer"]["A"]) == 4  # 2 layers x 2 targets

    itself = runner.invoke(
        main, ["similarity", str(found[0].path), str(found[0].path), "--figures-dir", str(tmp_path / "s")]
    )
    assert itself.exit_code == 0, itself.output
    per_target = json.loads((tmp_path / "s" / "similarity.json").read_text())["per_target"]
    assert all(v == pytest.approx(1.0) for values in per_target.values() for v in values.values())


def test_theory_cli_prints_the_grid():
    result = CliRunner().invoke(
        main, ["theory", "--d", "16", "--rank", "2", "--input-rank", "r,d", "--trials", "3"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "B-only (A frozen)" in result.output and result.output.count("│ 16 │ 2 │") == 2
    bad = CliRunner().invoke(main, ["theory", "--d", "8", "--rank", "16"])
    assert bad.exit_code == 2 and "rank <= d" in bad.output


def test_theory_bound_ratios_for_a_recipe_from_config_alone(tiny_llama_dir, alpaca_file, write_recipe):
    recipe = write_recipe(sft_recipe(tiny_llama_dir, alpaca_file))  # q_proj (32->32), v_proj (32->16), 2 layers
    result = CliRunner().invoke(main, ["theory", "--d", "8", "--rank", "2", "--trials", "2", "--recipe", str(recipe)])
    assert result.exit_code == 0, result.output
    expected = th.BoundRatios(sum_d_in=128, sum_d_out=96)
    assert "Σd_in = 128, Σd_out = 96" in result.output
    assert f"bound(B-only)/bound(both) = {expected.b_only:.4f}" in result.output
