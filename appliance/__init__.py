"""llm-appliance: one GPU box, one private OpenAI-compatible endpoint."""

__version__ = "0.1.0"
