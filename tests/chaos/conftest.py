"""Chaos tests run real servers over the real demo GGUF, like the integration tests."""

from tests.integration.conftest import no_orphan_runners, server_factory

__all__ = ["no_orphan_runners", "server_factory"]
