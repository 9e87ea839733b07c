"""One module per TAPIR step. A step never imports another step; tapir_exp.pipeline composes them."""
