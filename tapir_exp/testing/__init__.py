"""Test fixtures that are real parts: an OpenAI-compatible HTTP server with fault injection, and an oracle
config pointing every role at it."""
