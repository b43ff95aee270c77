"""Infrastructure: typed Nickel resources reconciled through providers (local now; libcloud later)."""
