"""``student=skills_base``: the char student pre-trained on the skills world's plain-text corpus.

Built once and cached under ``paths.model_cache_dir`` (like the SmolLM2 conversion): the directory name
carries a hash of everything that defines the model (architecture, corpus, training), so a changed config
builds a new base and an unchanged one is reused by every run and seed. Deterministic: fixed seed, fixed data
order, single process. Rebuild by hand with::

    python -m tapir_exp.skills.base [hydra overrides]      # e.g. student.init.steps=3000

The base of the default config is also shipped with the package (``tapir_exp/resources/skills_base``, 3.3 MB):
the build is bytewise the same on one machine and environment, but another CPU pre-trains another draw of
it, and a base is one draw shared by every seed of a grid, so no interval of the grid contains that
variation (docs/skills_world.md, "The grid on a second machine"). With ``shipped: true`` (the default) a run
whose key matches the shipped base starts from it on every machine; ``shipped: false`` pre-trains here.

Pre-training is plain next-character prediction over "pages" of facts (tapir_exp/skills/corpus.py), with no
chat turns and no "Answer:" lines: the run's warm-up then teaches the instruction format on top of skills the
model already has.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any

from tapir_exp.errors import DataError
from tapir_exp.files import atomic_dir, stable_hash

log = logging.getLogger(__name__)

# Bases shipped with the package, one directory per key (skills-base-<hash>), as `build` writes them.
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "resources" / "skills_base"
# what defines a base (SkillsBaseInit.key), as its pre-training record (pretrain.json) holds it
KEY_FIELDS = ("arch", "train", "format")


def base_name(key: dict[str, Any]) -> str:
    """The directory name of the base with this key (in the cache and among the shipped bases)."""
    return f"skills-base-{stable_hash(key)[:12]}"


def read_record(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(key, whole record) of a base's pre-training record; the one-line error when it cannot be read."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(str(path), None, None, f"expected the base's pre-training record ({e})") from e
    try:
        return {k: record[k] for k in KEY_FIELDS}, record
    except (KeyError, TypeError) as e:
        raise DataError(str(path), None, "/".join(KEY_FIELDS), f"expected the base's pre-training record ({e})") from e


class SkillsBaseInit:
    def __init__(self, cache_dir: str | None = None, hidden_size: int = 128, intermediate_size: int = 352,
                 num_hidden_layers: int = 2, num_attention_heads: int = 4, max_position_embeddings: int = 512,
                 facts: int = 60000, addition_table: int = 0, steps: int = 2000, batch_size: int = 32,
                 seq_len: int = 256, lr: float = 3e-3, warmup_steps: int = 100, threads: int = 1, seed: int = 0,
                 heldout_seed: int = 1234, heldout_per_cell: int = 10, shipped: bool = True):
        self.shipped = shipped  # not in the key: it says where the bytes come from, not what the model is
        self.cache_dir = Path(cache_dir or Path.home() / ".cache" / "tapir" / "models")
        self.arch = dict(hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                         max_position_embeddings=max_position_embeddings)
        self.train = dict(facts=facts, addition_table=addition_table, steps=steps, batch_size=batch_size,
                          seq_len=seq_len, lr=lr, warmup_steps=warmup_steps, threads=threads, seed=seed,
                          heldout=[heldout_seed, heldout_per_cell])

    # Bump when corpus.py or the pre-training loop changes what a given config builds: the cache key holds the
    # config, not the code.
    # 2 (issue 19): one-digit sums at Math difficulty 1; Others at difficulty 3 spells a word backwards
    # 3 (issue 19): the reversed word at Others difficulty 3 has 7 letters; the addition table (train key)
    FORMAT = 3

    @property
    def key(self) -> dict[str, Any]:
        return dict(zip(KEY_FIELDS, (self.arch, self.train, self.FORMAT), strict=True))

    @property
    def name(self) -> str:
        return base_name(self.key)

    def path(self) -> Path:
        return self.cache_dir / self.name

    def shipped_path(self) -> Path | None:
        """The base shipped with the package for this key, if there is one and ``shipped`` is on."""
        src = SHIPPED_DIR / self.name
        if not self.shipped or not (src / "config.json").is_file():
            return None
        recorded, _ = read_record(src / "pretrain.json")
        if recorded != json.loads(json.dumps(self.key)):
            raise DataError(str(src / "pretrain.json"), None, "/".join(KEY_FIELDS),
                            f"expected the key named by {self.name} (re-ship: python -m tapir_exp.skills.base --ship)")
        return src

    def __call__(self, out_dir: str | Path, corpus: list[str] | None = None, chat_template: str | None = None) -> None:
        from tapir_exp.student.models import link_tree

        src = self.shipped_path()
        if src is not None:  # copied, not hard-linked: nothing a run does may reach the package's files
            shutil.copytree(src, Path(out_dir), dirs_exist_ok=True)
        else:
            link_tree(self.build(), Path(out_dir))

    def build(self, force: bool = False) -> Path:
        """The base model directory pre-trained on this machine, cached (pre-trained now if missing or ``force``)."""
        out = self.path()
        if (out / "config.json").is_file() and not force:
            return out
        with atomic_dir(out) as tmp:
            self._pretrain(tmp)
        return out

    def _pretrain(self, out: Path) -> None:
        import torch

        t = self.train
        threads = torch.get_num_threads()
        torch.set_num_threads(int(t["threads"]))
        try:
            self._fit(out, t)
        finally:
            torch.set_num_threads(threads)

    def _fit(self, out: Path, t: dict[str, Any]) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from tapir_exp.skills import corpus
        from tapir_exp.skills.student import CharLlamaInit

        CharLlamaInit(**self.arch, seed=t["seed"])(out)  # random init + the char tokenizer (printable ASCII)
        tok = AutoTokenizer.from_pretrained(out)
        model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
        docs = corpus.documents(corpus.facts(t["facts"], t["seed"], tuple(t["heldout"])), t["seed"])
        docs = corpus.interleave(docs, corpus.addition_table(t["addition_table"], t["seed"]), t["seed"])
        ids: list[int] = []
        for d in docs:  # a document boundary is the BOS token, as between web pages
            ids += [tok.bos_token_id] + tok(d, add_special_tokens=False)["input_ids"]
        L = t["seq_len"]
        windows = torch.tensor(ids[: len(ids) // L * L]).view(-1, L)
        log.info("skills base: %d facts, %d characters, %d windows of %d; %d steps", t["facts"], len(ids),
                 len(windows), L, t["steps"])
        torch.manual_seed(t["seed"])
        opt = torch.optim.AdamW(model.parameters(), lr=t["lr"], weight_decay=0.01)

        def factor(step: int) -> float:  # linear warm-up, cosine decay to 10 %
            if step < t["warmup_steps"]:
                return (step + 1) / (t["warmup_steps"] + 1)
            frac = (step - t["warmup_steps"]) / max(1, t["steps"] - t["warmup_steps"])
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        rng, order, losses, t0 = random.Random(f"{t['seed']}/pretrain"), [], [], time.time()
        model.train()
        for step in range(t["steps"]):
            if len(order) < t["batch_size"]:  # a new pass over the windows, in a seeded order
                nxt = list(range(len(windows)))
                rng.shuffle(nxt)
                order += nxt
            batch = windows[order[: t["batch_size"]]]
            del order[: t["batch_size"]]
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(round(float(loss.detach()), 4))
            if step % 200 == 0:
                log.info("skills base: step %d loss %.3f (%.0f s)", step, losses[-1], time.time() - t0)
        model.save_pretrained(out)
        tok.save_pretrained(out)
        (out / "pretrain.json").write_text(json.dumps(
            {**self.key, "characters": len(ids), "windows": len(windows), "losses": losses,
             "seconds": round(time.time() - t0, 1)}, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    """Rebuild the base of ``student=skills_base`` (composed like a run: ``experiment=skills_tapir`` + overrides).

    ``--ship`` then makes the new build the package's shipped base (replacing any other shipped base).
    """
    import sys

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from tapir_exp.config import packaged_dir  # also registers the resolvers

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    ship = "--ship" in args
    overrides = [a for a in args if a != "--ship"]
    with initialize_config_dir(config_dir=str(packaged_dir("conf")), version_base="1.3"):
        cfg = compose("tapir", overrides=["experiment=skills_tapir", *overrides], return_hydra_config=False)
    from tapir_exp.skills.base import SHIPPED_DIR
    from tapir_exp.skills.base import SkillsBaseInit as Base  # this module's class, also under `python -m`

    init = instantiate(cfg.student.init)
    if not isinstance(init, Base):
        raise SystemExit(f"student.init is {type(init).__name__}, not SkillsBaseInit (use student=skills_base)")
    out = init.build(force=True)
    print(out)
    shipped = SHIPPED_DIR / init.name
    if ship:
        shutil.rmtree(SHIPPED_DIR, ignore_errors=True)
        shutil.copytree(out, shipped)
        print(f"shipped: {shipped}")
    elif (shipped / "model.safetensors").is_file():
        same = (shipped / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
        print(f"the same weights as the shipped base: {'yes' if same else 'no (another machine or environment)'}")


if __name__ == "__main__":
    main()
