"""Read W&B offline run files (``wandb/offline-run-*/run-<id>.wandb``) back, as ``wandb sync`` would.

The file is W&B's transaction log: a 7-byte header (``:W&B``, magic 0xBEE1, version) then LevelDB-log
framed records in 32 KiB blocks (7-byte record header: masked CRC32C, length, type FULL/FIRST/MIDDLE/LAST),
each payload a ``wandb_internal_pb2.Record``. wandb 0.31 ships no Python reader (its core is Go), so this is
ours; it reads a file that is still being written (a torn last record is skipped).
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B transaction log")
    pos, parts = HEADER, []
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 or pos + HEADER + length > len(data):
            break  # not written yet
        payload = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            parts = [payload]
        elif kind == FIRST:
            parts = [payload]
            continue
        elif kind == MIDDLE:
            parts.append(payload)
            continue
        else:
            parts.append(payload)
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(b"".join(parts))
        parts = []
        yield rec


def run_files(run_dir: Path) -> list[Path]:
    return sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))


def history(run_dir: Path) -> list[dict]:
    """Every history row logged to the W&B run(s) under ``run_dir`` (all attempts, in order)."""
    rows = []
    for f in run_files(run_dir):
        for rec in records(f):
            if rec.WhichOneof("record_type") == "history":
                rows.append({(it.key or "/".join(it.nested_key)): json.loads(it.value_json) for it in rec.history.item})
    return rows


def run_info(run_dir: Path) -> list[dict]:
    """The run record(s): group, job_type, tags, id."""
    out = []
    for f in run_files(run_dir):
        for rec in records(f):
            if rec.WhichOneof("record_type") == "run":
                r = rec.run
                out.append({"id": r.run_id, "group": r.run_group, "job_type": r.job_type, "tags": list(r.tags)})
    return out


def metric_defs(run_dir: Path) -> dict[str, str]:
    """name or glob -> step metric, from define_metric records."""
    out = {}
    for f in run_files(run_dir):
        for rec in records(f):
            if rec.WhichOneof("record_type") == "metric":
                m = rec.metric
                out[m.name or m.glob_name] = m.step_metric
    return out


def wait_for(read, ready, timeout_s: float = 180.0):
    """``read()`` until ``ready(value)``: W&B's core writes the files asynchronously, even after finish()."""
    deadline = time.monotonic() + timeout_s
    value = read()
    while not ready(value) and time.monotonic() < deadline:
        time.sleep(0.5)
        value = read()
    return value
