"""Storage: the engine, the account and grant tables, the abuse counters, the schema and its
upgrades (Alembic, shipped in ``migrations/``)."""
