"""stratumd: the main loop, the control socket, process lifecycle, locks, readiness, metrics."""
