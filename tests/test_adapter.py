import pytest
import torch
from peft import PeftModel
from transformers import LlamaForCausalLM

from asymtune.adapters.lora import AdapterError, apply, count_parameters, load_adapter, lora_layers, save_adapter
from asymtune.recipe import AdapterSpec

B_ONLY = {"A": {"init": "orthogonal", "trainable": False}, "B": {"init": "zero", "trainable": True}}
A_ONLY = {"A": {"init": "zero", "trainable": True}, "B": {"init": "orthogonal", "trainable": False}}
LORA = {"A": {"init": "kaiming_uniform", "trainable": True}, "B": {"init": "zero", "trainable": True}}


def spec(rank=4, targets=("q_proj", "v_proj"), **factors) -> AdapterSpec:
    return AdapterSpec(rank=rank, targets=list(targets), **(factors or B_ONLY))


def target_shapes(model, targets):
    """(d_out, d_in) of every nn.Linear whose last name component is in targets."""
    return [m.weight.shape for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in targets]


def test_b_only_freezes_orthogonal_a_and_trains_zero_b(tiny_llama):
    model = apply(tiny_llama, spec(), task_type="CAUSAL_LM")
    layers = lora_layers(model)
    assert len(layers) == 4
    for _, layer in layers:
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        assert not a.requires_grad and b.requires_grad
        torch.testing.assert_close(a @ a.T, torch.eye(4), atol=1e-6, rtol=0)
        assert not b.any()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_B" in n for n in trainable)


@pytest.mark.parametrize(
    ("factors", "count"),
    [(B_ONLY, lambda o, i: o), (A_ONLY, lambda o, i: i), (LORA, lambda o, i: o + i)],
    ids=["b_only", "a_only", "lora"],
)
def test_trainable_count_matches_formula(tiny_llama_dir, factors, count):
    base = LlamaForCausalLM.from_pretrained(tiny_llama_dir)
    shapes = target_shapes(base, {"q_proj", "v_proj"})
    base_params = sum(p.numel() for p in base.parameters())
    model = apply(base, spec(rank=4, **factors), task_type="CAUSAL_LM")
    counts = count_parameters(model)
    expected = sum(count(d_out, d_in) * 4 for d_out, d_in in shapes)
    assert counts.trainable == expected == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counts.base == base_params
    assert counts.trainable_percent == pytest.approx(100 * expected / base_params)


def test_same_seed_gives_same_a_and_other_seed_differs(tiny_llama_dir):
    def first_a(seed):
        model = apply(LlamaForCausalLM.from_pretrained(tiny_llama_dir), AdapterSpec(rank=4, targets=["q_proj"],
                      seed=seed, **B_ONLY))
        return lora_layers(model)[0][1].lora_A["default"].weight.clone()

    assert torch.equal(first_a(7), first_a(7))
    assert not torch.allclose(first_a(7), first_a(8))


def test_scale_is_alpha_over_rank_default_two(tiny_llama):
    model = apply(tiny_llama, spec(rank=4), task_type="CAUSAL_LM")
    assert lora_layers(model)[0][1].scaling["default"] == 2.0


def test_training_changes_b_and_leaves_a_bit_identical(tiny_llama):
    model = apply(tiny_llama, spec(), task_type="CAUSAL_LM")
    a_before = {n: layer.lora_A["default"].weight.clone() for n, layer in lora_layers(model)}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    tokens = torch.randint(0, 100, (2, 12))
    for _ in range(3):
        model(input_ids=tokens, labels=tokens).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, layer in lora_layers(model):
        assert torch.equal(layer.lora_A["default"].weight, a_before[name])
        assert layer.lora_B["default"].weight.abs().sum() > 0


def test_freeze_survives_set_adapter(tiny_llama):
    model = apply(tiny_llama, spec(), task_type="CAUSAL_LM")
    model.set_adapter("default")
    model.base_model.set_adapter("default")
    assert all("lora_B" in n for n, p in model.named_parameters() if p.requires_grad)
    assert not any(layer.lora_A["default"].weight.requires_grad for _, layer in lora_layers(model))


def trained_model(tiny_llama, factors):
    model = apply(tiny_llama, spec(**factors), task_type="CAUSAL_LM")
    with torch.no_grad():
        for _, layer in lora_layers(model):  # stand-in for training: a non-zero update
            for weight in (layer.lora_A["default"].weight, layer.lora_B["default"].weight):
                if weight.requires_grad:
                    weight.normal_()
    return model


@pytest.mark.parametrize("factors", [B_ONLY, A_ONLY], ids=["b_only", "a_only"])
def test_freeze_survives_from_pretrained_is_trainable(tiny_llama, tiny_llama_dir, tmp_path, factors):
    save_adapter(trained_model(tiny_llama, factors), spec(**factors), tmp_path / "adapter")
    reloaded = load_adapter(LlamaForCausalLM.from_pretrained(tiny_llama_dir), tmp_path / "adapter", is_trainable=True)
    frozen = "lora_A" if factors is B_ONLY else "lora_B"
    trainable = [n for n, p in reloaded.named_parameters() if p.requires_grad]
    assert trainable and not any(frozen in n for n in trainable)
    reloaded.set_adapter("default")
    assert not any(frozen in n for n, p in reloaded.named_parameters() if p.requires_grad)


def test_saved_adapter_reloads_with_peft_and_gives_identical_logits(tiny_llama, tiny_llama_dir, tmp_path):
    model = trained_model(tiny_llama, B_ONLY)
    model.eval()
    tokens = torch.randint(0, 100, (2, 10))
    with torch.no_grad():
        expected = model(input_ids=tokens).logits
        base_logits = LlamaForCausalLM.from_pretrained(tiny_llama_dir)(input_ids=tokens).logits
    save_adapter(model, spec(), tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tiny_llama_dir), str(tmp_path / "adapter"))
    with torch.no_grad():
        got = reloaded(input_ids=tokens).logits
    assert torch.equal(got, expected)
    assert not torch.allclose(got, base_logits)  # the adapter really changed the model


def test_unknown_target_names_the_linear_layers(tiny_llama):
    with pytest.raises(AdapterError, match=r"match no module.*q_proj"):
        apply(tiny_llama, spec(targets=["query"]), task_type="CAUSAL_LM")


# Every variant of the paper's Tables 1, 2 and 7: (A init, A trained, B init, B trained).
PAPER_VARIANTS = {
    "hB_0 A_rand": ("orthogonal", False, "zero", True),
    "hB_0 A_V": ("svd", False, "zero", True),
    "hB_0 A_km": ("kaiming_uniform", False, "zero", True),
    "B_rand hA_0": ("zero", True, "orthogonal", False),
    "B_U hA_0": ("zero", True, "svd", False),
    "B_km hA_0": ("zero", True, "kaiming_uniform", False),
    "hB_0 hA_V": ("svd", True, "zero", True),
    "hB_0 hA_rand": ("orthogonal", True, "zero", True),
    "hB_0 hA_km": ("kaiming_uniform", True, "zero", True),
    "hB_U hA_0": ("zero", True, "svd", True),
    "hB_rand hA_0": ("zero", True, "orthogonal", True),
    "hB_km hA_0": ("zero", True, "kaiming_uniform", True),
}


@pytest.mark.parametrize("label", PAPER_VARIANTS)
def test_every_paper_variant_is_expressible(tiny_llama_dir, label):
    a_init, a_trained, b_init, b_trained = PAPER_VARIANTS[label]
    adapter = AdapterSpec(rank=2, targets=["q_proj"], A={"init": a_init, "trainable": a_trained},
                          B={"init": b_init, "trainable": b_trained})
    model = apply(LlamaForCausalLM.from_pretrained(tiny_llama_dir), adapter, task_type="CAUSAL_LM")
    for _, layer in lora_layers(model):
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        assert (a.requires_grad, b.requires_grad) == (a_trained, b_trained)
        assert bool(a.any()) == (a_init != "zero") and bool(b.any()) == (b_init != "zero")


class TinyConvNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, kernel_size=3)
        self.head = torch.nn.Linear(8, 2)

    def forward(self, images):
        return self.head(self.conv(images).mean(dim=(2, 3)))


def test_b_only_on_a_convolution_freezes_an_orthogonal_a_and_trains_b():
    torch.manual_seed(0)
    model = apply(TinyConvNet(), AdapterSpec(rank=4, targets=["conv"], **B_ONLY))
    [(_, layer)] = lora_layers(model)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert a.shape == (4, 3, 3, 3) and b.shape == (8, 4, 1, 1) and not a.requires_grad
    flat = a.reshape(4, -1)
    torch.testing.assert_close(flat @ flat.T, torch.eye(4), atol=1e-6, rtol=0)
    before = a.clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.step()
    assert torch.equal(layer.lora_A["default"].weight, before) and b.abs().sum() > 0
    counts = count_parameters(model)
    assert (counts.trainable_B, counts.frozen_A) == (8 * 4, 4 * 27)
