"""Render compose/alertmanager/alertmanager.yml with the pager and ticket webhooks pointed elsewhere.

For tests that drive real Prometheus + Alertmanager (docs/operations.md, "Testing the alert path")::

    import runpy
    render = runpy.run_path("compose/alertmanager/render.py")["render"]
    config = render(pager_url=hook.url + "/pager", ticket_url=hook.url + "/ticket", fast=True)
    # -> dict, e.g. tests/integration/alerting.py's Alertmanager(workdir, config)

or from a shell::

    python compose/alertmanager/render.py --pager http://127.0.0.1:9999/pager \\
        --ticket http://127.0.0.1:9999/ticket --fast > /tmp/alertmanager.yml

Routing, grouping and inhibition stay exactly as committed; ``fast`` only shortens the timers so a test
sees its notification within seconds. Standard library plus PyYAML (an agentgov dependency).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

CONFIG = Path(__file__).resolve().parent / "alertmanager.yml"
PAGER_PLACEHOLDER = "http://pager-webhook.invalid/agentgov/pager"
TICKET_PLACEHOLDER = "http://ticket-webhook.invalid/agentgov/ticket"
FAST_TIMERS = {"group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"}


def _routes(route: dict[str, Any]) -> list[dict[str, Any]]:
    out = [route]
    for child in route.get("routes", []):
        out.extend(_routes(child))
    return out


def render(pager_url: str, ticket_url: str, *, fast: bool = False, source: Path = CONFIG) -> dict[str, Any]:
    """The committed config with the webhook placeholders replaced (and timers shortened if ``fast``)."""
    config: dict[str, Any] = copy.deepcopy(yaml.safe_load(source.read_text()))
    urls = {PAGER_PLACEHOLDER: pager_url, TICKET_PLACEHOLDER: ticket_url}
    replaced = set()
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            if hook["url"] in urls:
                replaced.add(hook["url"])
                hook["url"] = urls[hook["url"]]
    if replaced != set(urls):
        raise ValueError(f"{source}: webhook placeholders missing: {sorted(set(urls) - replaced)}")
    if fast:
        for route in _routes(config["route"]):
            for key in FAST_TIMERS:
                if key in route or route is config["route"]:
                    route[key] = FAST_TIMERS[key]
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pager", required=True, help="webhook URL for severity=critical")
    parser.add_argument("--ticket", required=True, help="webhook URL for severity=warning")
    parser.add_argument("--fast", action="store_true", help="1s group_wait/group_interval for tests")
    args = parser.parse_args(argv)
    yaml.safe_dump(render(args.pager, args.ticket, fast=args.fast), sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
