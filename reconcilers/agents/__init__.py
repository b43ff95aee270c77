"""Agent tasks: agents with roles and providers, tasks with triggers, pipelines, checks, budgets, a durable
queue and runners (issue 13). The reconciler is reconciler.py; the plugin (entry point `agents`) plugin.py."""
