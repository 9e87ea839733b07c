"""The oracle layer: one client (:class:`Oracle`) in front of OpenAI-compatible, local and vLLM backends."""

from tapir_exp.llm.base import Backend, ChatRequest, ChatResult, RetryableError
from tapir_exp.llm.oracle import Oracle, RatingResult, build_oracle

__all__ = ["Backend", "ChatRequest", "ChatResult", "RetryableError", "Oracle", "RatingResult", "build_oracle"]
