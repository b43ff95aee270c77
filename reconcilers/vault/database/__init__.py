"""The vault's database secrets engine for PostgreSQL: connections, dynamic roles whose credentials are leases,
static roles whose passwords rotate on a schedule, root rotation, and the lease reaper.

Mounted by the vault service like the PKI engine: `reconcilers.vault.database.api.handle` for the mount's
paths, `reconcilers.vault.database.api.sys_leases` for `sys/leases/*`, `reconcilers.vault.database.reaper.reap`
and `reconcilers.vault.database.static.rotate_due` for the scheduler.
"""
