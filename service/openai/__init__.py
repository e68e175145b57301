"""OpenAI-compatible API under /v1, over the same engine as the native routes."""
