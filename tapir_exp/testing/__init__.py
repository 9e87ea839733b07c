"""Test fixtures that are real parts: an OpenAI-compatible HTTP server with fault injection."""
