"""modelyard: one OpenAI-compatible endpoint for all your local models."""

__version__ = "0.1.0"
