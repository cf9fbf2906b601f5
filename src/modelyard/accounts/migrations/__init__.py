"""Alembic migrations of the accounts database, applied at start (``Store.open``)."""
