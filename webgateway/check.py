"""``webgateway check``: the delegation and DNSSEC as the world sees them, then every
gateway of the fleet; one line per finding, FIX where something is wrong."""

from __future__ import annotations

import sys
import time

from webgateway.config import Config
from webgateway.delegation import judge, judge_dnssec, observe
from webgateway.fleetcheck import check_fleet


def run_check(config: Config, resolver_spec: str | None, port: int | None = None,
              fleet_only: bool = False, label: str | None = None) -> int:
    """Delegation and DNSSEC (unless ``fleet_only``), then every gateway of the fleet."""
    findings: list[tuple[bool, str]] = []
    if not fleet_only:
        obs = observe(config, resolver_spec, port)
        findings = judge(config, obs) + judge_dnssec(config, obs, time.time())
    findings += check_fleet(config, label)
    for ok, text in findings:
        print(f"{'ok ' if ok else 'FIX'}  {text}")
    bad = sum(1 for ok, _ in findings if not ok)
    if bad:
        print(f"{bad} thing(s) to fix before {config.zone.name} works", file=sys.stderr)
        return 1
    if fleet_only:
        print(f"every gateway of the fleet serves the same {config.zone.name}")
    else:
        print(f"{config.zone.name} is delegated correctly")
    return 0
