"""`python -m daemon.cli.secret secret VERB ...`: the command the git drivers that `stratum init` and `stratum
secret init` wire into a repository run (textconv, merge). The `secret` verbs live in the vault plugin
(reconcilers/vault/secret_cli.py, found through its entry point); this runs them under the `stratum` group, which
hands them the kernel's ports, with its error handling (a message and an exit code, never a traceback)."""

from __future__ import annotations

from daemon.cli.main import main

if __name__ == "__main__":
    main()
