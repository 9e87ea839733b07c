"""Loading the instruction pool described by ``cfg.data``."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from tapir_exp.errors import ConfigError
from tapir_exp.records import Example, ReadResult, read_records, write_jsonl


def load_pool(data_cfg: Any, run_dir: str | Path | None = None, seed: int = 0) -> list[Example]:
    """Read ``data.path`` in ``data.format``; on ``data.on_error=skip`` bad records go to
    ``<run_dir>/rejected.jsonl`` (one reason each) and the count is printed. ``data.pool_size`` takes a
    seeded random subset (the same for the same seed, so resumed runs see the same pool)."""
    if data_cfg.get("generator") is not None:
        # A procedural pool (e.g. data=skills): a `_target_` node whose instance returns Examples.
        from hydra.utils import instantiate

        result = ReadResult(list(instantiate(data_cfg.generator)()), [])
    elif not data_cfg.get("path"):
        raise ConfigError("data.path", "no dataset path given (e.g. data.path=/path/to/alpaca_data.json)")
    else:
        result = read_records(
            data_cfg.path,
            fmt=data_cfg.get("format", "auto"),
            on_error=data_cfg.get("on_error", "raise"),
            fields=dict(data_cfg.get("fields") or {}),
            id_prefix=data_cfg.get("id_prefix"),
        )
    if result.rejected:
        if run_dir is not None:
            write_jsonl(Path(run_dir) / "rejected.jsonl", result.rejected)
        where = f" (reasons in {Path(run_dir) / 'rejected.jsonl'})" if run_dir is not None else ""
        print(f"data: skipped {len(result.rejected)} bad record(s) of {data_cfg.path}{where}")
    records = result.records
    if not records:
        raise ConfigError("data.path", f"{data_cfg.path} holds no usable records")
    size = data_cfg.get("pool_size")
    if size is not None and size < len(records):
        rng = random.Random(seed)
        keep = sorted(rng.sample(range(len(records)), int(size)))
        records = [records[i] for i in keep]
    if not data_cfg.get("use_given_responses", False):
        for ex in records:
            if ex.output:
                ex.meta.setdefault("given_output", ex.output)
            ex.output = ""
    return records
