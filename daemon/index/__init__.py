"""The DuckDB index: schema and the single writer, read models for status/log/events, rebuild from git."""
