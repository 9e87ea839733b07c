"""What a run prints: progress bars, round tables and real problems. Known library noise stays out of the
console and still goes to ``tapir.log`` (Hydra's file handler), each item below with the reason it is noise.

Python warnings are routed through logging (``py.warnings``), so they reach ``tapir.log`` too and the same
console filter applies to them.
"""

from __future__ import annotations

import logging
import os

# (logger name prefix, text in the message). Each one is printed by a library on every round (or at every
# import) and says nothing about this run.
NOISE: tuple[tuple[str, str], ...] = (
    # Lightning >= 2.6 advertises its LitLogger whenever a Trainer is built without one
    # (logger_connector.configure_logger), even with logger=False as here: our tracker logs the run.
    ("lightning.pytorch", "Tip: For seamless cloud logging"),
    # Lightning's own _pytree still builds torch's LeafSpec(), which torch >= 2.9 deprecates: a warning on
    # every fit from Lightning's code, not ours, with no effect on training.
    ("py.warnings", "`isinstance(treespec, LeafSpec)` is deprecated"),
    # accelerate's unwrap_model (called by every save_pretrained: each round's student, the GGUF conversion)
    # imports deepspeed when it is installed, only to test isinstance(model, DeepSpeedEngine); DeepSpeed's
    # accelerator auto-detection then warns that it chose the CPU. DeepSpeed itself is used only with
    # trainer.strategy=deepspeed, where its own messages stay.
    ("DeepSpeed", "Setting accelerator to CPU"),
)


def is_noise(record: logging.LogRecord) -> bool:
    name = record.name
    for prefix, text in NOISE:
        if (name == prefix or name.startswith(prefix + ".")) and text in record.getMessage():
            return True
    return False


class ConsoleNoise(logging.Filter):
    """On a console handler: drop the records of :data:`NOISE`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not is_noise(record)


class _ToRunLogOnly(logging.Filter):
    """On a library logger that prints to the console by its own handler and does not propagate
    (DeepSpeed's): its noise goes to the root logger's file handlers (``tapir.log``) instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not is_noise(record):
            return True
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
                handler.handle(record)
        return False


def _is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


def install() -> None:
    """Called once the job's logging is set up (Hydra's console + ``tapir.log``), before any library loads."""
    logging.captureWarnings(True)
    for handler in logging.getLogger().handlers:
        if _is_console(handler) and not any(isinstance(f, ConsoleNoise) for f in handler.filters):
            handler.addFilter(ConsoleNoise())
    # DeepSpeed's logger is created at its import with its own stdout handler and propagate=False; a filter
    # on the logger object set now is kept by that import (LoggerFactory.create_logger only adds a handler).
    ds = logging.getLogger("DeepSpeed")
    if not any(isinstance(f, _ToRunLogOnly) for f in ds.filters):
        ds.addFilter(_ToRunLogOnly())
    # transformers' tqdm bars for loading / writing a 135M model ("Loading weights", "Writing model shards")
    # appear several times a round and finish in well under a second. HF_HUB_DISABLE_PROGRESS_BARS=0 keeps them.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def adopt_lightning_console() -> None:
    """Lightning adds its own stderr handler to the ``lightning`` logger at import (lightning/__init__.py,
    unconditionally) and lets its records propagate too, so each of its lines was printed twice ("INFO: ..."
    on stderr, bypassing the noise filter, and once by the root logger). Without it the root logger prints
    each line once, filtered, and ``tapir.log`` keeps them all. Only when the root logger has a console
    handler of ours (a ``tapir`` job, after :func:`install`)."""
    if not any(_is_console(h) and any(isinstance(f, ConsoleNoise) for f in h.filters)
               for h in logging.getLogger().handlers):
        return
    lightning = logging.getLogger("lightning")
    for handler in list(lightning.handlers):
        if _is_console(handler):
            lightning.removeHandler(handler)
