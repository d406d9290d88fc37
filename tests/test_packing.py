"""data.packing: packed, padding-free batches give every row the loss and B the gradient of the padded batch
(fused frozen-A path included); runs report their padding waste."""

import pytest
import torch
from click.testing import CliRunner
from conftest import sft_recipe
from transformers import LlamaForCausalLM
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from asymtune.adapters import fused, lora, shared_input
from asymtune.cli import main
from asymtune.recipe import AdapterSpec
from asymtune.runs import resolve

LENGTHS = (7, 12, 4)


def row_losses(logits: torch.Tensor, labels: torch.Tensor, spans: list[tuple[int, int, int]]) -> torch.Tensor:
    """Summed next-token cross-entropy of each row; spans are (batch index, start, end) of each row's tokens."""
    out = []
    for index, start, end in spans:
        out.append(torch.nn.functional.cross_entropy(logits[index, start:end - 1], labels[index, start + 1:end],
                                                     ignore_index=-100, reduction="sum"))
    return torch.stack(out)


@pytest.mark.parametrize("fused_path", [True, False])
def test_a_packed_batch_gives_each_rows_loss_and_bs_gradient(tiny_llama_dir, fused_path):
    spec = AdapterSpec.model_validate({"rank": 4, "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"],
                                       "A": {"init": "orthogonal", "trainable": False},
                                       "B": {"init": "gaussian", "trainable": True}, "fused": fused_path})
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, 300, (n,), generator=generator) for n in LENGTHS]

    def model():
        adapted = lora.apply(LlamaForCausalLM.from_pretrained(tiny_llama_dir), spec)
        if fused_path:
            fused.enable(adapted)  # as training enables it: q/k/v run as one node per block
            assert fused.enabled_count(adapted) > 0 and shared_input.enable(adapted) == 2
        return adapted

    padded_model = model()
    width = max(LENGTHS)
    ids = torch.stack([torch.nn.functional.pad(r, (0, width - len(r)), value=0) for r in rows])
    mask = torch.stack([torch.arange(width) < len(r) for r in rows]).long()
    labels = ids.masked_fill(mask == 0, -100)
    padded = row_losses(padded_model(input_ids=ids, attention_mask=mask, use_cache=False).logits, labels,
                        [(i, 0, n) for i, n in enumerate(LENGTHS)])
    padded.sum().backward()

    packed_model = model()
    collate = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)  # TRL's own packed batches
    batch = collate([{"input_ids": torch.cat(rows).tolist(), "seq_lengths": list(LENGTHS)}])
    assert "attention_mask" not in batch and batch["position_ids"].tolist()[0][:8] == [0, 1, 2, 3, 4, 5, 6, 0]
    del batch["labels"]
    starts = [0, *torch.tensor(LENGTHS).cumsum(0).tolist()]
    packed = row_losses(packed_model(**batch, use_cache=False).logits, batch["input_ids"],  # as TRL trains: no cache
                        [(0, starts[i], starts[i + 1]) for i in range(len(LENGTHS))])
    packed.sum().backward()

    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-5)
    grads = {n: p.grad for n, p in padded_model.named_parameters() if p.requires_grad}
    for name, param in packed_model.named_parameters():
        if param.requires_grad:
            assert ".lora_B." in name
            torch.testing.assert_close(param.grad, grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
def test_packed_runs_train_without_padding_and_padded_runs_report_theirs(
    tiny_llama_dir, alpaca_file, write_recipe, tmp_path
):
    waste = {}
    for packing in (False, True):
        recipe = sft_recipe(tiny_llama_dir, alpaca_file)
        recipe["data"]["packing"] = packing
        recipe["name"] = f"packing-{str(packing).lower()}"
        result = CliRunner().invoke(main, ["train", str(write_recipe(recipe)), "--output-dir", str(tmp_path / "runs")])
        assert result.exit_code == 0, result.output
        [run] = resolve([str(tmp_path / "runs" / recipe["name"])])
        metrics = run.read_json("metrics.json")
        waste[packing] = metrics["train_padding_percent"]
        assert metrics["eval_rows"] == 8  # eval is never packed: the same rows either way
        if packing:
            assert "train rows in" in result.output and "sequences of at most 128 tokens" in result.output
    assert waste[True] == 0.0 and waste[False] > 5.0
    recipe["task"], recipe["data"]["text_fields"] = "classification", ["text"]
    del recipe["data"]["format"]
    result = CliRunner().invoke(main, ["validate", str(write_recipe(recipe))])
    assert result.exit_code == 2 and "data.packing belong(s) to task sft" in result.output
