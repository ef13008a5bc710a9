"""Write the demo workload as JSON lines for ``agentgov publish`` (the compose ``demo`` profile).

    python compose/demo/make_demo.py --events 2000 > /tmp/demo.jsonl && agentgov publish /tmp/demo.jsonl

Benign joiner/mover/leaver, access-request and auth runs with the planted violations of
``pipeline.workload`` (self-grant, unapproved privileged grant, the four escalation chains, ...), so the
SOC dashboard fills and the pager fires. Only SDK drafts are written: the tampered, truncated and raw-byte
cases of ``agentgov demo`` bypass the SDK and cannot be expressed as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.workload import Workload


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="agentgov demo workload as JSON lines")
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    for op in Workload(seed=args.seed, bad_inputs=False).ops(args.events):
        if op.kind == "draft":
            sys.stdout.write(json.dumps(op.payload, separators=(",", ":")) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
