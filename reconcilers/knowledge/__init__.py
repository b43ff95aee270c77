"""Operational knowledge: markdown nodes with YAML front matter, a typed graph, hybrid search, an MCP server.

Modules, one concern each:
    errors.py      the error tree of this package
    node.py        front matter parsing, node types, relations, wikilinks (pure)
    contract.py    the Nickel front-matter contract (nickel/knowledge.ncl), evaluated in batches, cached per blob
    graph.py       the typed graph: link resolution, cycles, duplicate ids, neighbourhoods, dot output
    store.py       the DuckDB tables (component "knowledge"), content-addressed by blob id
    embed.py       embedding providers: the shipped model in a worker process, OpenAI-compatible, Ollama
    model_files.py the shipped model's files: found in installed packages, verified by sha256
    embed_worker.py  the child process that runs the shipped model (the daemon never loads it)
    minilm.py      the shipped model on onnxruntime and tokenizers (imported by the worker only)
    search.py      BM25 from token tables + vector similarity + reciprocal rank fusion, with filters
    guidelines.py  guideline inheritance from a shared base (a path or a git repo)
    execution.py   execution nodes from finished runs, optionally committed to a branch
    service.py     the facade the CLI and the MCP server use (open, refresh, query)
    mcp_server.py  the MCP server (stdio and streamable HTTP)
    reconciler.py  KnowledgeReconciler: the daemon's view of all of the above
"""

import os

# NumPy's OpenBLAS starts one thread per core for every matrix product. The search's products are small (10,000
# x 384 floats): on this 2-core host, sharing the cores with the daemon's other work, two BLAS threads made the
# vector scan 5-10x slower (0.57 ms alone vs 5.5 ms, spinning threads waiting for a core). Read when NumPy is
# first imported, which in Stratum's processes happens inside this package; a value the user set is kept (also
# by search.py, which limits BLAS again where NumPy was imported before this package).
BLAS_THREADS_SET_BY_USER = "OPENBLAS_NUM_THREADS" in os.environ
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
