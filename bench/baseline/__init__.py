"""The ceiling: a minimal raw Starlette + asyncpg app with the service's SQL."""
