"""Student generations shared by runs that make the same call (``share_generations``): a second run with the
same student, prompts and generation config reads the first run's answers, which are bytewise what generating
again gives; any difference in the call (a prompt, the student, the thread count) generates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tapir_exp.files import file_hash
from tapir_exp.student.generate import HFGenerator
from tapir_exp.student.models import TinyLlamaInit
from tapir_exp.student.shared_generations import SharedGenerations

CONVS = [[{"role": "user", "content": text}] for text in
         ("name a colour", "a much longer prompt, so the batch is padded", "ünïcode \"quotes\" and \\ too", "hi")]


@pytest.fixture(scope="module")
def students(tmp_path_factory) -> list[Path]:
    out = []
    for seed in (0, 1):
        d = tmp_path_factory.mktemp(f"student{seed}")
        TinyLlamaInit(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, seed=seed)(d, corpus=["a short corpus for a tiny tokenizer"] * 4)
        out.append(d)
    return out


class Counting:
    """The real generator, counting the calls that reach it."""

    def __init__(self, inner: HFGenerator):
        self.inner, self.calls = inner, 0

    def generate(self, model_dir, conversations):
        self.calls += 1
        return self.inner.generate(model_dir, conversations)


def shared(cache: Path) -> tuple[SharedGenerations, Counting]:
    inner = Counting(HFGenerator(batch_size=2, max_new_tokens=12))
    return SharedGenerations(inner, cache, {"batch_size": 2, "max_new_tokens": 12}, file_hash), inner


def test_a_second_run_reads_the_first_runs_answers_bytewise(students, tmp_path):
    fresh = HFGenerator(batch_size=2, max_new_tokens=12).generate(students[0], CONVS)
    run1, gen1 = shared(tmp_path)
    run2, gen2 = shared(tmp_path)  # another run (process) with the same cache
    assert run1.generate(students[0], CONVS) == fresh
    assert run2.generate(students[0], CONVS) == fresh  # the dataclasses, field by field
    assert (gen1.calls, gen2.calls, run2.hits) == (1, 0, 1)
    assert len(list(tmp_path.glob("*.jsonl"))) == 1


def test_any_difference_in_the_call_generates(students, tmp_path):
    run, gen = shared(tmp_path)
    run.generate(students[0], CONVS)
    run.generate(students[0], CONVS[:3])  # one prompt fewer: other batches, other padding
    run.generate(students[0], CONVS[::-1])  # same prompts, another order
    run.generate(students[1], CONVS)  # another student
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads != 1 else 2)  # the thread count decides the floats
        run.generate(students[0], CONVS)
    finally:
        torch.set_num_threads(threads)
    other_config = SharedGenerations(gen, tmp_path, {"batch_size": 4, "max_new_tokens": 12}, file_hash)
    other_config.generate(students[0], CONVS)
    assert gen.calls == 6 and run.hits == 0 and len(list(tmp_path.glob("*.jsonl"))) == 6
    run.generate(students[0], CONVS[::-1])
    assert gen.calls == 6 and run.hits == 1


def test_a_stored_file_of_the_wrong_length_is_generated_again(students, tmp_path):
    run, gen = shared(tmp_path)
    run.generate(students[0], CONVS)
    (path,) = tmp_path.glob("*.jsonl")
    path.write_text(path.read_text().splitlines(keepends=True)[0])  # one answer of four
    again, gen2 = shared(tmp_path)
    assert again.generate(students[0], CONVS) == run.generate(students[0], CONVS)
    assert gen2.calls == 1 and len(path.read_text().splitlines()) == 4
