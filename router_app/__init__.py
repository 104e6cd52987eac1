"""llm-router: one OpenAI-compatible endpoint that switches local LLM engines on demand."""

__version__ = "0.1.0"
