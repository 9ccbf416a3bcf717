"""The observability kit in deploy/ (Prometheus configuration, alert rules, Grafana dashboard)
and the PromQL helpers that read it: used by the kit's static checks and by the real Prometheus."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from support.daemon import ROOT

KIT = ROOT / "deploy" / "prometheus"
SCRAPE = KIT / "prometheus.yml"
RULES = KIT / "edged-alerts.yml"
RULE_TESTS = KIT / "edged-alerts.test.yml"
TARGETS_EXAMPLE = KIT / "edged-targets" / "boards.yml.example"
DASHBOARD = ROOT / "deploy" / "grafana" / "edged-dashboard.json"

# the alert rules of edged-alerts.yml, in order
ALERTS = [
    "EdgedDown",
    "EdgedNoResults",
    "EdgedSourceDown",
    "EdgedFellBackToCPU",
    "EdgedFrameRateLow",
    "EdgedFrameLatencyHigh",
    "EdgedPublishQueueGrowing",
    "EdgedTPUHot",
    "EdgedTPUNearShutdown",
    "EdgedTPUSlowLink",
]


def alert_rules(path: Path = RULES) -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"] if "alert" in r]


def dashboard_exprs(dash: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard: panel targets and templating queries."""
    out = []

    def panels(ps: list[dict[str, Any]]) -> Iterable[dict[str, Any]]:
        for p in ps:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dash["panels"]):
        out += [t["expr"] for t in p.get("targets", [])]
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", q)
            assert m, f"variable {v['name']}: not a label_values(<selector>, <label>) query: {q}"
            out.append(m.group(1))
    return out


def grafana_to_promql(expr: str) -> str:
    """A dashboard expression as Prometheus gets it: interval variables as 1m, the others as `.*`."""
    expr = re.sub(r"\$__(rate_interval|interval|range)\b", "1m", expr)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS |= {"inf", "nan", "start", "end"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (bare names and ``{__name__="..."}``)."""
    expr = grafana_to_promql(expr)
    names = set(re.findall(r'__name__\s*=\s*"([^"]*)"', expr))
    expr = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges and subqueries
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)  # label lists
    for m in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?", expr):
        word, call = m.group(1), m.group(2)
        if not call and word.lower() not in _KEYWORDS:
            names.add(word)
    return names
