import json

import datasets
import pytest
from conftest import alpaca_rows, write_jsonl

from asymtune.data.formats import ALPACA_PROMPT_NO_INPUT, alpaca_prompt, to_prompt_completion
from asymtune.data.sources import DataError, load_table
from asymtune.data.splits import train_eval_split


def test_alpaca_prompt_is_stanford_alpaca_template():
    with_input = alpaca_prompt("Sum", "1 and 2")
    assert with_input.startswith("Below is an instruction that describes a task, paired with an input")
    assert with_input.endswith("### Instruction:\nSum\n\n### Input:\n1 and 2\n\n### Response:\n")
    assert alpaca_prompt("Sum", "") == ALPACA_PROMPT_NO_INPUT.format(instruction="Sum")


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_local_files_of_each_type_load_and_format(tmp_path, suffix):
    rows = alpaca_rows(6)
    path = tmp_path / f"data{suffix}"
    table = datasets.Dataset.from_list(rows)
    {".jsonl": lambda: table.to_json(path), ".json": lambda: path.write_text(json.dumps(rows)),
     ".csv": lambda: table.to_csv(path), ".parquet": lambda: table.to_parquet(path)}[suffix]()
    formatted = to_prompt_completion(load_table(str(path)), "alpaca", str(path))
    assert formatted.column_names == ["prompt", "completion"]
    assert formatted[0]["completion"] == rows[0]["output"]
    assert formatted[1]["prompt"] == alpaca_prompt(rows[1]["instruction"])


def test_missing_column_names_file_and_column(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "x", "answer": "y"}])
    with pytest.raises(DataError, match=r"d\.jsonl: format 'alpaca' needs column\(s\) output; the data has"):
        to_prompt_completion(load_table(str(path)), "alpaca", str(path))


def test_bad_row_is_named(tmp_path):
    rows = alpaca_rows(3)
    rows[2]["output"] = "   "
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=r"row 2: column 'output' is empty"):
        to_prompt_completion(load_table(str(path)), "alpaca", str(path))


def test_messages_split_into_conversation_prompt_and_last_assistant_turn():
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
            {"role": "user", "content": "why"}, {"role": "assistant", "content": "because"}]
    formatted = to_prompt_completion(datasets.Dataset.from_list([{"messages": chat}]), "messages", "mem")
    assert formatted[0]["prompt"] == chat[:3] and formatted[0]["completion"] == chat[3:]
    bad = datasets.Dataset.from_list([{"messages": chat[:1]}])
    with pytest.raises(DataError, match="row 0: 'messages' must end with an assistant turn"):
        to_prompt_completion(bad, "messages", "mem")


def test_prompt_completion_passes_through():
    table = datasets.Dataset.from_list([{"prompt": "2+2=", "completion": "4", "extra": 1}])
    assert to_prompt_completion(table, "prompt_completion", "mem")[0] == {"prompt": "2+2=", "completion": "4"}


def test_empty_and_missing_and_corrupt_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match=r"empty\.jsonl: the file is empty"):
        load_table(str(tmp_path / "empty.jsonl"))
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found"):
        load_table(str(tmp_path / "nope.jsonl"))
    (tmp_path / "bad.jsonl").write_text('{"instruction": "x"\n')
    with pytest.raises(DataError, match=r"bad\.jsonl: line 1 is not valid JSON \(Expecting ',' delimiter at column 20"):
        load_table(str(tmp_path / "bad.jsonl"))


def test_unknown_hub_id_fails_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="not a local file or a known asset"):
        load_table("no-such-org/no-such-dataset")


def test_eval_fraction_split_is_seeded_disjoint_and_capped():
    table = datasets.Dataset.from_list([{"i": i} for i in range(50)])
    train, held_out = train_eval_split(table, None, 0.2, seed=1)
    _, held_again = train_eval_split(table, None, 0.2, seed=1)
    assert held_out["i"] == held_again["i"] and len(held_out) == 10
    assert not set(train["i"]) & set(held_out["i"])
    _, other = train_eval_split(table, None, 0.2, seed=2)
    assert other["i"] != held_out["i"]
    train, held_out = train_eval_split(table, None, 0.2, seed=1, max_train=5, max_eval=3)
    assert (len(train), len(held_out)) == (5, 3)


def test_separate_eval_source_wins_over_fraction():
    table = datasets.Dataset.from_list([{"i": i} for i in range(10)])
    extra = datasets.Dataset.from_list([{"i": 99}])
    train, held_out = train_eval_split(table, extra, 0.5, seed=0)
    assert len(train) == 10 and held_out["i"] == [99]


def test_class_folders_load_with_labels_and_split_stratified(tmp_path):
    for name in ("tech", "sport", "business"):
        (tmp_path / "docs" / name).mkdir(parents=True)
        for i in range(4):
            (tmp_path / "docs" / name / f"{i:03d}.txt").write_text(f"{name} story {i}")
    (tmp_path / "docs" / "tech" / "bad.txt").write_bytes(b"caf\xe9 story")  # latin-1, not UTF-8
    messages = []
    table = load_table(str(tmp_path / "docs"), log=messages.append)
    assert table.features["label"].names == ["business", "sport", "tech"]
    assert len(table) == 13 and "caf\ufffd story" in table["text"]
    assert "1 file(s) not valid UTF-8" in messages[0] and "bad.txt" in messages[0]
    train, held_out = train_eval_split(table, None, 0.25, seed=0, stratify_by="label")
    counts = {label: held_out["label"].count(label) for label in (0, 1, 2)}
    assert counts[0] == counts[1] == 1 and counts[2] >= 1  # every class in the held-out part
    assert len(train) + len(held_out) == 13
    (tmp_path / "docs" / "empty").mkdir()
    with pytest.raises(DataError, match=r"class 'empty' has no \.txt documents"):
        load_table(str(tmp_path / "docs"))
