"""The errors of the knowledge reconciler, on top of reconcilers.errors (the contract).

    StratumError
     +-- InputError
     |    +-- NodeError            one node file is wrong (front matter, size, encoding): file:line
     +-- KnowledgeError            a knowledge operation cannot proceed (unknown id, bad query, bad settings)
          +-- ModelError           the embedding model is missing, corrupt or does not answer
          +-- NotFoundError        no node, resource or guideline with that id

Problems found while loading a revision are collected as `reconcilers.base.Problem`s, not raised: one bad
file must not hide the rest of the graph.
"""

from __future__ import annotations

from reconcilers.errors import InputError, StratumError


class NodeError(InputError):
    """A node file cannot be parsed; `where` is `path:line`."""


class KnowledgeError(StratumError):
    """A knowledge operation cannot proceed."""


class ModelError(KnowledgeError):
    """The embedding provider is unavailable or returned something unusable."""


class NotFoundError(KnowledgeError):
    """No node (or guideline, or resource) with the given id."""
