"""Accounts: API keys, users and roles, rate limits, token balances and the usage ledger.

``service.Accounts`` is what the API uses; ``store.Store`` the database behind it (SQLite
or PostgreSQL through SQLAlchemy); ``ledger.LedgerWriter`` writes the usage rows in batches
off the request path. Nothing here imports the web framework.
"""
