"""Nickel evaluation: the bounded worker process, the import scan, the on-disk cache."""
