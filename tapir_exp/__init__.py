"""tapir-exp: TAPIR distillation (task-aware curriculum planning for instruction refinement) as a
Hydra-configured experiment framework."""

__version__ = "0.1.0"
