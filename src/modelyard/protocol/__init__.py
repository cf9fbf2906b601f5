"""Wire schemas (pydantic) only; imports nothing else from the package."""
