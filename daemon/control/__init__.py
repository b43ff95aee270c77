"""Change control and provenance: signatures, Cedar change policy, sync windows, admission."""
