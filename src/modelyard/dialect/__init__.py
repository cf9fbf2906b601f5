"""Other APIs spoken over the OpenAI chat path: Ollama's, Anthropic's Messages."""
