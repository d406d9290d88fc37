"""Bad data files give exit 2 and one message naming the file and the line or row — never a traceback."""

import json

import pytest
from click.testing import CliRunner
from conftest import alpaca_rows, sft_recipe, write_jsonl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_classification import classification_recipe, pair_rows

from asymtune.cli import main
from asymtune.data.formats import to_prompt_completion
from asymtune.data.sources import DataError, load_table

GOOD_LINES = [json.dumps(row) for row in alpaca_rows(6)]


def jsonl_bytes(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


BAD_SFT_FILES = {
    "empty": (b"", "the file is empty"),
    "blank": (b"\n  \n\t\n", "no rows (only blank lines)"),
    "not-utf8": (jsonl_bytes(GOOD_LINES[:3]) + b'{"instruction": "caf\xe9", "output": "x"}\n',
                 "line 4 is not valid UTF-8 (byte 0xe9 at column 21)"),
    "broken-json": (jsonl_bytes([*GOOD_LINES[:2], '{"instruction": "q", "output":', *GOOD_LINES[2:]]),
                    "line 3 is not valid JSON"),
    "missing-column": (jsonl_bytes([json.dumps({"instruction": "q"})] * 6), "needs column(s) output"),
    "wrong-type": (jsonl_bytes([json.dumps({"instruction": i, "output": "a"}) for i in range(6)]),
                   "row 0: column 'instruction' must be text"),
}


@pytest.mark.parametrize("case", sorted(BAD_SFT_FILES))
def test_bad_sft_data_is_one_message_naming_file_and_line(case, tiny_llama_dir, write_recipe, tmp_path):
    content, expected = BAD_SFT_FILES[case]
    data_file = tmp_path / f"{case}.jsonl"
    data_file.write_bytes(content)
    result = CliRunner().invoke(main, ["train", str(write_recipe(sft_recipe(tiny_llama_dir, data_file))),
                                       "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert str(data_file) in result.output and expected in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("suffix", "content", "expected"),
    [
        (".json", 'null\n{"instruction": "q", "output": "a"}\n', "line 1 is a JSON null, not an object"),
        (".jsonl", '{"instruction": "q", "output": "a"}\n[1, 2]\n', "line 2 is a JSON array, not an object"),
        (".json", '"just a string"', "must be a list of row objects or an object of columns, not string"),
    ],
)
def test_json_rows_that_are_not_objects_are_refused_before_pyarrow(suffix, content, expected, tmp_path):
    """pyarrow's JSON reader crashes the process (SIGSEGV) on a first row of `null`: never hand it one."""
    path = tmp_path / f"data{suffix}"
    path.write_text(content)
    with pytest.raises(DataError, match=expected):
        load_table(str(path))


def test_a_10_mb_single_line_loads(tmp_path):
    rows = [*alpaca_rows(3), {"instruction": "x " * 5_000_000, "input": "", "output": "y"}]
    path = write_jsonl(tmp_path / "huge.jsonl", rows)
    assert path.stat().st_size > 10_000_000
    table = to_prompt_completion(load_table(str(path)), "alpaca", str(path))
    assert len(table) == 4 and len(table[3]["prompt"]) > 10_000_000


BAD_LABELS = {
    "rte-label-not-an-index": ("rte", lambda i: "abc", "row 0: label 'abc' is not a class index 0-1 of GLUE rte"),
    "rte-label-out-of-range": ("rte", lambda i: 2 + i, "row 0: label 2 is not a class index 0-1"),
    "stsb-label-not-a-number": ("stsb", lambda i: "high", "row 0: label 'high' is not a number"),
}


@pytest.mark.parametrize("case", sorted(BAD_LABELS))
def test_bad_labels_are_one_message_naming_the_row(case, tiny_roberta_dir, write_recipe, tmp_path):
    task, label, expected = BAD_LABELS[case]
    train_file = write_jsonl(tmp_path / "train.jsonl", pair_rows(8, 0, label))
    recipe = classification_recipe(tiny_roberta_dir, {"train": str(train_file), "glue_task": task,
                                                      "eval_fraction": 0.25})
    result = CliRunner().invoke(main, ["train", str(write_recipe(recipe)), "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert str(train_file) in result.output and expected in result.output


def test_text_that_is_not_text_is_named_by_row(tiny_roberta_dir, write_recipe, tmp_path):
    rows = pair_rows(8, 0, lambda i: i % 2)
    rows[5]["sentence2"] = None
    train_file = write_jsonl(tmp_path / "train.jsonl", rows)
    recipe = classification_recipe(tiny_roberta_dir, {"train": str(train_file), "glue_task": "rte",
                                                      "eval_fraction": 0.25})
    result = CliRunner().invoke(main, ["train", str(write_recipe(recipe)), "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "row 5: column 'sentence2' must be text, got None" in result.output


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    content=st.one_of(
        st.binary(max_size=300),
        st.lists(st.sampled_from([*GOOD_LINES, "", "{", "[1, 2]", "null", '{"instruction": 3}', "\xff"]),
                 max_size=8).map(lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")),
    ),
    suffix=st.sampled_from([".jsonl", ".json", ".csv", ".tsv"]),
)
def test_any_bytes_in_a_data_file_load_or_give_a_data_error(content, suffix, tmp_path):
    path = tmp_path / f"data{suffix}"
    path.write_bytes(content)
    try:
        table = to_prompt_completion(load_table(str(path), log=lambda _: None), "alpaca", str(path))
    except DataError as error:
        assert str(path) in str(error)
    else:
        assert len(table) > 0 and {"prompt", "completion"} <= set(table.column_names)
