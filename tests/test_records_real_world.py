"""Files as real-world tools write them: a UTF-8 byte-order mark (Windows tools, spreadsheet exports), CRLF
line ends, and empty files, which must say so instead of "malformed JSON"."""

from __future__ import annotations

import json

import pytest

from tapir_exp.errors import DataError
from tapir_exp.records import iter_json_array, read_jsonl, read_records

BOM = b"\xef\xbb\xbf"
ROWS = [{"instruction": "Add 2 and 3.", "output": "5"}, {"instruction": "Name a colour.", "input": "", "output": "red"}]


def crlf_jsonl(rows) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\r\n" for r in rows)


@pytest.mark.parametrize("name,body", [
    ("bom_crlf.jsonl", BOM + crlf_jsonl(ROWS)),
    ("bom_array.json", BOM + json.dumps(ROWS, indent=2).replace("\n", "\r\n").encode()),
    ("bom_lines.json", BOM + crlf_jsonl(ROWS)),  # a .json file holding JSONL
    ("bom_wrapped.json", BOM + json.dumps({"data": ROWS}, indent=2).replace("\n", "\r\n").encode()),
    ("bom_one_line.json", BOM + json.dumps(ROWS).encode() + b"\r\n"),
])
def test_bom_and_crlf_files_read_like_plain_ones(tmp_path, name, body):
    path = tmp_path / name
    path.write_bytes(body)
    got = read_records(path)
    assert [(ex.instruction, ex.output) for ex in got.records] == [(r["instruction"], r["output"]) for r in ROWS]
    assert not got.rejected
    # no stray "\r" or BOM in any text
    assert all("\r" not in ex.output and "\ufeff" not in ex.instruction for ex in got.records)


def test_bom_sharegpt_jsonl_and_skip_mode_keep_line_numbers(tmp_path):
    conv = {"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]}
    path = tmp_path / "chat.jsonl"
    path.write_bytes(BOM + json.dumps(conv).encode() + b"\r\n{broken\r\n" + json.dumps(conv | {"id": "b"}).encode()
                     + b"\r\n")
    got = read_records(path, on_error="skip")
    assert [ex.output for ex in got.records] == ["Hello.", "Hello."]
    assert got.rejected[0]["where"] == "line 2"


def test_eval_json_array_and_project_jsonl_accept_bom(tmp_path):
    arr = tmp_path / "eval.json"
    arr.write_bytes(BOM + json.dumps(ROWS).encode())
    assert [it["output"] for _, it in iter_json_array(arr)] == ["5", "red"]
    lines = tmp_path / "rows.jsonl"
    lines.write_bytes(BOM + crlf_jsonl(ROWS))
    assert read_jsonl(lines) == ROWS


@pytest.mark.parametrize("name", ["empty.json", "empty.jsonl"])
@pytest.mark.parametrize("body,what", [(b"", "0 bytes"), (BOM + b"\r\n  \n", "only whitespace")])
def test_empty_file_says_it_is_empty(tmp_path, name, body, what):
    path = tmp_path / name
    path.write_bytes(body)
    with pytest.raises(DataError) as err:
        read_records(path)
    msg = str(err.value)
    assert msg == f"{path}: the file is empty ({what}; expected records)"
    assert "malformed" not in msg
    if name.endswith(".json"):
        with pytest.raises(DataError, match="the file is empty"):
            list(iter_json_array(path))


def test_to_dict_is_a_full_independent_copy():
    import dataclasses

    from tapir_exp.records import Example

    ex = Example(id="a", instruction="i", input="x", output="o", task="Math", source="expanded",
                 meta={"judge": {"orders": {"ts": [1, 2]}}, "hard": True})
    d = ex.to_dict()
    assert d == dataclasses.asdict(ex)  # every field, same values
    d["meta"]["judge"]["orders"]["ts"].append(3)
    assert ex.meta["judge"]["orders"]["ts"] == [1, 2]
