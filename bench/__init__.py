"""Benchmarks of the accounts service against a raw Starlette + asyncpg ceiling: `make bench`."""
