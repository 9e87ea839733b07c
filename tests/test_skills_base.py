"""The skills world's pre-training: a plain-text corpus of true facts (no instructions, no held-out items) and
a base student built once, deterministically, and cached."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from tapir_exp.files import stable_hash
from tapir_exp.skills import corpus, world


def test_corpus_states_true_facts_as_plain_text_and_never_the_eval_set():
    heldout = (7, 40)
    facts = corpus.facts(1500, seed=3, heldout=heldout)
    assert len(facts) == 1500 == len(set(facts))
    assert facts == corpus.facts(1500, seed=3, heldout=heldout)  # deterministic
    text = "\n".join(facts)
    assert "Answer:" not in text and "Compute " not in text and "Repeat the word" not in text  # not instructions
    # every fact is true: "a + b = c" sums, sorted lists sorted, JSON parses
    for f in facts:
        m = re.fullmatch(r"([\d +\-*]+) = (-?\d+)", f)
        if m:
            assert eval(m.group(1)) == int(m.group(2)), f  # noqa: S307 - digits and operators only
        m = re.fullmatch(r">>> sorted\((\[.*\])\)\n(\[.*\])", f)
        if m:
            assert sorted(json.loads(m.group(1))) == json.loads(m.group(2)), f
        if f.startswith("{"):
            json.loads(f)
    kinds = {t: 0 for t in world.TASKS}
    for inst_text in facts:  # every family is on the "web"
        for t, marker in (("Math", " = "), ("Code Generation", "["), ("Complex Format", "{"), ("Grammar", " as "),
                          ("Others", "again"), ("Reasoning", " has ")):
            kinds[t] += marker in inst_text
    assert all(kinds.values()), kinds
    # no held-out eval instance is stated: its (question, answer) never appears
    for inst in world.eval_set(*heldout):
        if inst.task == "Math":
            expr = inst.instruction[len("Compute "):].rstrip(".")
            assert not any(f.startswith(f"{expr} = ") for f in facts), expr
        if inst.task == "Others":
            assert f"{inst.answer} {inst.answer}" not in facts
    docs = corpus.documents(facts, seed=3)
    assert "\n".join(docs) == text  # pages regroup the facts, in order, without losing any


def test_the_addition_table_states_every_one_digit_sum_and_interleaves_in_order():
    pages = corpus.addition_table(3, seed=5)
    assert pages == corpus.addition_table(3, seed=5) and len(pages) == 3 * 9
    lines = [line for p in pages for line in p.split("\n")]
    assert all(len(p.split("\n")) == 9 for p in pages)
    for copy in range(3):  # each copy is the whole table, in its own order
        chunk = lines[copy * 81:(copy + 1) * 81]
        assert sorted(chunk) == sorted(f"{a} + {b} = {a + b}" for a in range(1, 10) for b in range(1, 10))
    assert lines[:81] != lines[81:162]
    docs = [f"doc {i}" for i in range(50)]
    mixed = corpus.interleave(docs, pages, seed=5)
    assert [d for d in mixed if d.startswith("doc")] == docs and [d for d in mixed if not d.startswith("doc")] == pages
    assert mixed[:len(pages)] != pages and mixed[-len(pages):] != pages  # spread, not appended
    assert "Compute" not in "\n".join(pages)  # facts, not the held-out instructions


def test_base_is_built_once_deterministically_and_cached(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tapir_exp.skills.base import SkillsBaseInit

    kw = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, facts=300,
              addition_table=1, steps=6, batch_size=4, seq_len=64, warmup_steps=2)
    a = SkillsBaseInit(cache_dir=str(tmp_path / "a"), **kw)
    path = a.build()
    weights = (path / "model.safetensors").read_bytes()
    log = json.loads((path / "pretrain.json").read_text())
    assert len(log["losses"]) == 6 and log["losses"][-1] < log["losses"][0]  # it trained
    # the same config elsewhere: the same bytes (one thread, seeded order)
    b = SkillsBaseInit(cache_dir=str(tmp_path / "b"), **kw)
    assert b.path().name == path.name and (b.build() / "model.safetensors").read_bytes() == weights
    # cached: a second build does not pre-train again; a run's student directory links to it
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    a(tmp_path / "student")
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime
    assert (tmp_path / "student" / "model.safetensors").read_bytes() == weights
    # a changed key is another base
    assert SkillsBaseInit(cache_dir=str(tmp_path / "a"), **{**kw, "steps": 7}).path() != path
    # the addition table is in the pre-training text: without it, the corpus is shorter by its pages (and a BOS each)
    bare = SkillsBaseInit(cache_dir=str(tmp_path / "c"), **{**kw, "addition_table": 0}).build()
    table = corpus.addition_table(1, 0)
    assert log["characters"] - json.loads((bare / "pretrain.json").read_text())["characters"] == \
        sum(len(p) + 1 for p in table)
    tok = AutoTokenizer.from_pretrained(tmp_path / "student")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert model.config.num_hidden_layers == 1 and tok.apply_chat_template(
        [{"role": "user", "content": "Compute 1 + 2."}], add_generation_prompt=True, tokenize=False).endswith("<|assistant|>")


def _default_base(tmp_path, *overrides):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from tapir_exp.config import packaged_dir

    with initialize_config_dir(config_dir=str(packaged_dir("conf")), version_base="1.3"):
        cfg = compose("tapir", overrides=["experiment=skills_tapir", f"paths.model_cache_dir={tmp_path / 'cache'}",
                                          *overrides])
    return instantiate(cfg.student.init)


def test_the_default_base_ships_and_a_run_starts_from_a_copy_of_it(tmp_path):
    from tapir_exp.skills.base import SHIPPED_DIR

    init = _default_base(tmp_path)
    shipped = SHIPPED_DIR / init.name
    # the shipped base is the one the default config names: a change to the config without a new base fails here
    assert init.shipped_path() == shipped and init.name == "skills-base-db4b4b6b7a23"
    init(tmp_path / "student")
    for f in shipped.iterdir():
        copy = tmp_path / "student" / f.name
        assert copy.read_bytes() == f.read_bytes()
        assert copy.stat().st_ino != f.stat().st_ino  # a copy: a run cannot write into the package
    assert not init.path().exists()  # nothing pre-trained
    # shipped: false pre-trains on this machine instead (into the cache; not run here: ~25 minutes)
    assert _default_base(tmp_path, "student.init.shipped=false").shipped_path() is None


def test_a_shipped_base_whose_record_disagrees_with_its_name_is_refused(tmp_path, monkeypatch):
    from tapir_exp.errors import DataError
    from tapir_exp.skills import base

    init = _default_base(tmp_path)
    fake = tmp_path / "shipped" / init.name
    shutil.copytree(base.SHIPPED_DIR / init.name, fake)
    record = json.loads((fake / "pretrain.json").read_text())
    record["train"]["steps"] = 3999
    (fake / "pretrain.json").write_text(json.dumps(record))
    monkeypatch.setattr(base, "SHIPPED_DIR", fake.parent)
    with pytest.raises(DataError, match=r"pretrain\.json: field 'arch/train/format': expected the key named by"):
        init(tmp_path / "student")
    (fake / "pretrain.json").write_text('{"arch": ')
    with pytest.raises(DataError, match=r"pretrain\.json: expected the base's pre-training record"):
        init(tmp_path / "student")
    assert not (tmp_path / "student").exists()


TINY = ["student.init.hidden_size=32", "student.init.intermediate_size=64", "student.init.num_hidden_layers=1",
        "student.init.num_attention_heads=2", "student.init.facts=300", "student.init.addition_table=1",
        "student.init.steps=4", "student.init.batch_size=4", "student.init.seq_len=64", "student.init.warmup_steps=2"]


def test_the_rebuild_command_ships_a_new_base_and_says_whether_a_rebuild_matches_it(tmp_path, monkeypatch, capsys):
    from tapir_exp.skills import base

    monkeypatch.setattr(base, "SHIPPED_DIR", tmp_path / "shipped")
    (tmp_path / "shipped" / "skills-base-old").mkdir(parents=True)
    overrides = [f"paths.model_cache_dir={tmp_path / 'cache'}", *TINY]
    base.main([*overrides, "--ship"])
    init = _default_base(tmp_path, *TINY)
    built = (init.path() / "model.safetensors").read_bytes()
    assert sorted(p.name for p in (tmp_path / "shipped").iterdir()) == [init.name]  # the old one is gone
    assert (tmp_path / "shipped" / init.name / "model.safetensors").read_bytes() == built
    assert init.shipped_path() == tmp_path / "shipped" / init.name
    capsys.readouterr()
    base.main(overrides)  # pre-trains again (force) and compares
    assert "the same weights as the shipped base: yes" in capsys.readouterr().out
    (tmp_path / "shipped" / init.name / "model.safetensors").write_bytes(built[:-4] + b"\0\0\0\0")
    base.main(overrides)
    assert "the same weights as the shipped base: no" in capsys.readouterr().out


def test_the_report_names_each_base_its_runs_started_from(tmp_path):
    import hashlib

    from tapir_exp.errors import DataError
    from tapir_exp.report import bases_section

    key = {"arch": {"hidden_size": 8}, "train": {"steps": 3}, "format": 3}
    runs = []
    for i, weights in enumerate([b"one", b"one", b"two"]):
        init = tmp_path / f"run{i}" / "round_0" / "student_init"
        init.mkdir(parents=True)
        (init / "model.safetensors").write_bytes(weights)
        (init / "pretrain.json").write_text(json.dumps({**key, "losses": [2.0, 0.5 + i]}))
        runs.append({"run": str(tmp_path / f"run{i}"), "label": f"skills/run{i}"})
    runs.append({"run": str(tmp_path / "other"), "label": "skills/other"})  # no base: not listed
    rows = [line for line in bases_section(runs).splitlines() if line.startswith("| ") and "sha256" not in line]
    name = "skills-base-" + stable_hash(key)[:12]
    one, two = (hashlib.sha256(w).hexdigest()[:12] for w in (b"one", b"two"))
    assert sorted(rows) == sorted([f"| {one} | 2 | {name} | 0.5 |", f"| {two} | 1 | {name} | 2.5 |"])
    assert bases_section(runs[3:]) == ""
    (tmp_path / "run1/round_0/student_init/pretrain.json").write_text(json.dumps({"losses": []}))
    with pytest.raises(DataError, match=r"run1/round_0/student_init/pretrain\.json: field 'arch/train/format'"):
        bases_section(runs)
