"""The `stratum` and `stratumd` command lines: one module per verb group."""
