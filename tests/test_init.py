import pytest
import torch

from asymtune.adapters.init import (
    factor_generator,
    fingerprint,
    kaiming_uniform,
    make_factor,
    orthogonal,
    same_draw,
    svd_factor,
)


@pytest.mark.parametrize(("rows", "cols"), [(4, 32), (8, 8), (1, 5)])
def test_orthogonal_a_has_orthonormal_rows(rows, cols):
    a = orthogonal(rows, cols, factor_generator(0, "layer", "A"))
    assert a.shape == (rows, cols)
    torch.testing.assert_close(a @ a.T, torch.eye(rows, dtype=torch.float64), atol=1e-12, rtol=0)


def test_orthogonal_b_has_orthonormal_columns():
    b = orthogonal(48, 6, factor_generator(0, "layer", "B"))
    torch.testing.assert_close(b.T @ b, torch.eye(6, dtype=torch.float64), atol=1e-12, rtol=0)


def test_factor_is_a_function_of_seed_module_and_factor():
    first = orthogonal(4, 16, factor_generator(3, "model.layers.0.q_proj", "A"))
    again = orthogonal(4, 16, factor_generator(3, "model.layers.0.q_proj", "A"))
    other_module = orthogonal(4, 16, factor_generator(3, "model.layers.1.q_proj", "A"))
    other_seed = orthogonal(4, 16, factor_generator(4, "model.layers.0.q_proj", "A"))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other_module)
    assert not torch.allclose(first, other_seed)


def test_orthogonal_is_haar_not_biased_towards_positive_diagonal():
    # Without the sign correction, QR gives Q with a systematically biased first row sign.
    signs = [float(orthogonal(1, 3, factor_generator(s, "m", "A"))[0, 0] > 0) for s in range(200)]
    assert 0.35 < sum(signs) / len(signs) < 0.65


def test_kaiming_uniform_matches_peft_bound():
    weight = kaiming_uniform(8, 100, factor_generator(0, "m", "A"))
    bound = 1 / 100**0.5  # kaiming_uniform_(a=sqrt(5)) -> U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert weight.abs().max() <= bound
    assert weight.abs().max() > 0.9 * bound


def test_gaussian_std_is_one_over_rank():
    weight = make_factor("gaussian", "A", (64, 512), 8, 0, "m", torch.zeros(1))
    assert abs(weight.std().item() - 1 / 8) < 0.005


def test_svd_factors_span_top_singular_subspaces():
    torch.manual_seed(0)
    w0 = torch.randn(20, 12, dtype=torch.float64)
    sigma = torch.linalg.svdvals(w0)
    a = svd_factor(w0, 3, "A")  # 3 x 12
    b = svd_factor(w0, 3, "B")  # 20 x 3
    torch.testing.assert_close(a @ a.T, torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close((w0 @ a.T).norm() ** 2, (sigma[:3] ** 2).sum())
    torch.testing.assert_close((b.T @ w0).norm() ** 2, (sigma[:3] ** 2).sum())


def test_zero_init_is_zero():
    assert not make_factor("zero", "B", (5, 2), 2, 0, "m", torch.zeros(1)).any()


def test_convolution_factors_are_drawn_flat_and_reshaped():
    torch.manual_seed(0)
    kernel = torch.randn(8, 3, 3, 3, dtype=torch.float64)
    a = make_factor("orthogonal", "A", (4, 3, 3, 3), 4, 0, "conv", kernel)
    b = make_factor("orthogonal", "B", (8, 4, 1, 1), 4, 0, "conv", kernel)
    torch.testing.assert_close(a.reshape(4, -1) @ a.reshape(4, -1).T, torch.eye(4, dtype=torch.float64))
    torch.testing.assert_close(b.reshape(8, 4).T @ b.reshape(8, 4), torch.eye(4, dtype=torch.float64))
    svd_a = make_factor("svd", "A", (4, 3, 3, 3), 4, 0, "conv", kernel)
    sigma = torch.linalg.svdvals(kernel.reshape(8, -1))
    torch.testing.assert_close((kernel.reshape(8, -1) @ svd_a.reshape(4, -1).T).norm() ** 2, (sigma[:4] ** 2).sum())


@pytest.mark.parametrize(("init", "factor", "shape", "seed", "module", "golden"), [
    ("orthogonal", "A", (4, 16), 0, "model.layers.0.self_attn.q_proj",
     [1.9244238882187423, 3.2331691472675725, 1.7675140381251113, -0.7071676992967576]),
    ("orthogonal", "B", (16, 4), 0, "model.layers.0.self_attn.q_proj",
     [-0.07360852732204526, -0.6970246632152445, 3.634252300852101, -1.9549808054626459]),
    ("kaiming_uniform", "A", (4, 16), 7, "encoder.layer.1.attention.self.query",
     [0.5623526815317499, -0.6677569954938378, 0.9780404305753332, -0.18962167505628202]),
])
def test_seeded_draws_are_pinned_by_a_golden_fingerprint(init, factor, shape, seed, module, golden):
    """A frozen factor is stored as its seed (compact exports, shared-A families): if a torch release changes
    its random stream or QR, these fail before any stored adapter silently changes. Recorded on an AVX-512 Xeon;
    MKL's AVX2 and SSE4.2 paths give QRs that differ by ≤ 2.2e-16 and the same fingerprint within tolerance."""
    assert same_draw(golden, fingerprint(make_factor(init, factor, shape, 4, seed, module, None)))


def test_fingerprints_tell_draws_apart_but_not_rounding():
    a = make_factor("orthogonal", "A", (4, 16), 4, 0, "q", None)
    assert same_draw(fingerprint(a), fingerprint(a + 1e-15 * torch.randn(a.shape, dtype=torch.float64)))
    assert not same_draw(fingerprint(a), fingerprint(make_factor("orthogonal", "A", (4, 16), 4, 1, "q", None)))
    assert not same_draw(fingerprint(a), fingerprint(a[:, :8]))
