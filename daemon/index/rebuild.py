"""Rebuild a lost or corrupt index from git: commits, the last good revision (from our notes), inventory."""

from __future__ import annotations

from daemon import log
from daemon.git.source import GitSource
from daemon.run.pipeline import Pipeline


def rebuild(source: GitSource, pipeline: Pipeline, limit: int = 5000) -> str | None:
    """Re-record the branch's commits and restore the last good revision and its inventory.

    The last good revision is the newest commit whose `refs/notes/stratum` note says it succeeded. Returns it.
    """
    head = source.head()
    if head is None:
        return None
    commits = source.new_commits(None, head, limit)
    pipeline.index.record_commits(commits)
    good = None
    for info in reversed(commits):
        note = source.note(info.id) or ""
        if note.startswith("stratum: succeeded"):
            good = info.id
            break
    if good is None:
        log.get().info("index_rebuilt", last_good=None, commits=len(commits))
        return None
    loaded = pipeline.load(good)
    if not loaded.problems:
        pipeline.commit_good(loaded)
    log.get().warning("index_rebuilt", last_good=good[:12], commits=len(commits))
    return good
