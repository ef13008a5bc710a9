"""agentgov's benchmark suite: ``python -m bench`` (see ``bench/README.md``).

One run measures, on the embedded broker and chdb, the decode ceiling, the agentgov pipeline at 1 and
2 scorer processes, a Quix Streams peer doing the same work, latency at fixed offered rates, and the
peak RSS of every process, and reports the ratios between them.
"""
