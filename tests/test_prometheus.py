"""A real Prometheus (Debian's) scrapes a running edged on loopback, with the kit's configuration.

The daemon runs as ``python -m edged run`` with one synthetic 10 fps stream on the bundled digits
model, and a PCIe Edge TPU that exists only as a sysfs temperature file (EDGED_SYSFS_ROOT), so its
temperature is exported too. Prometheus runs with deploy/prometheus/prometheus.yml (its local job,
scraping every second) and the alert rules. Through Prometheus's HTTP API: the p99 frame latency
(histogram_quantile) and the stream's frame rate, every dashboard query, the rules' health, the
TPU's `tpu` label, and alerts going pending from the daemon's real series.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest
import yaml
from support.client import free_port, scrape
from support.daemon import ROOT, Daemon
from support.kit import ALERTS, DASHBOARD, RULES, SCRAPE, dashboard_exprs, grafana_to_promql, metric_names
from support.prometheus import Prometheus
from support.tools import require_tool
from support.wait import wait_for

pytestmark = pytest.mark.system  # Prometheus and edged, each in a subprocess

FPS = 10
DEVICE = "promtest"


def kit_config(edged_port: int) -> dict[str, Any]:
    """The kit's prometheus.yml, its one-board job pointed at the test's daemon, every second."""
    cfg = yaml.safe_load(SCRAPE.read_text())
    cfg["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    cfg["rule_files"] = [str(RULES)]
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "edged")
    job["static_configs"] = [{"targets": [f"127.0.0.1:{edged_port}"], "labels": {"device": DEVICE}}]
    cfg["scrape_configs"] = [job]  # the fleet job needs a token file and boards
    return cfg


def exported_now(port: int) -> set[str]:
    """The series names the running daemon serves at /metrics."""
    return {name for name, _ in scrape(port)}


def active(prom: Prometheus, name: str) -> list[dict[str, Any]]:
    return [a for a in prom.alerts() if a["labels"]["alertname"] == name]


def test_prometheus_scrapes_edged_and_answers_latency_and_frame_rate(tmp_path) -> None:
    binary = require_tool("prometheus")
    # a PCIe Edge TPU known only by its temperature (85.5 °C): discovered, not used by the CPU stream
    apex = tmp_path / "sys" / "class" / "apex" / "apex_0"
    apex.mkdir(parents=True)
    (apex / "temp").write_text("85500\n")
    (tmp_path / "dev").mkdir()
    (tmp_path / "edged").mkdir()
    port = free_port()
    config = {
        "device": DEVICE,
        "listen": f"127.0.0.1:{port}",
        "streams": [
            {
                "id": "demo",
                "source": {"type": "synthetic", "fps": FPS},
                "model": {"path": str(ROOT / "models/digits_int8.tflite")},
                "sinks": [],
            }
        ],
    }
    env = {"EDGED_SYSFS_ROOT": str(tmp_path / "sys"), "EDGED_DEV_ROOT": str(tmp_path / "dev")}
    d = Daemon(tmp_path / "edged", config, env=env)
    prom = None
    try:
        d.wait_ready()
        prom = Prometheus(binary, tmp_path / "prometheus", kit_config(port))
        wait_for(prom.ready, 20, "Prometheus to be ready", interval=0.1)

        def target_up() -> bool:
            targets = prom.api("/api/v1/targets")["activeTargets"]
            return len(targets) == 1 and targets[0]["health"] == "up"

        wait_for(target_up, 15, "the edged target to be up", interval=0.2)
        target = prom.api("/api/v1/targets")["activeTargets"][0]
        assert target["labels"] == {"device": DEVICE, "instance": f"127.0.0.1:{port}", "job": "edged"}, target

        # the alert rules loaded and evaluate without error
        def rules_ok() -> list[dict[str, Any]]:
            rules = [r for g in prom.api("/api/v1/rules")["groups"] for r in g["rules"]]
            return rules if rules and all(r["health"] == "ok" for r in rules) else []

        rules = wait_for(rules_ok, 15, "the alert rules to be evaluated", interval=0.2)
        assert [r["name"] for r in rules] == ALERTS and all(r["type"] == "alerting" for r in rules)

        # 12 scrapes, a second apart, before measuring over the last 10 s
        wait_for(lambda: prom.query('count_over_time(up{job="edged"}[15s]) >= 12'), 30, "12 scrapes", interval=0.25)
        sel = f'job="edged", device="{DEVICE}", stream="demo"'
        p99 = prom.value(
            f"histogram_quantile(0.99, sum by (le) (rate(edged_frame_latency_seconds_bucket{{{sel}}}[10s])))"
        )
        fps = prom.value(f'rate(edged_frames_total{{{sel}, outcome="processed"}}[10s])')
        print(f"Prometheus: p99 frame latency {p99 * 1000:.1f} ms, frame rate {fps:.2f} fps (configured {FPS})")
        assert math.isfinite(p99) and 0 < p99 < 1.0, p99
        assert abs(fps - FPS) <= 0.3 * FPS, fps
        inference_p99 = prom.value(
            "histogram_quantile(0.99, sum by (le) "
            f'(rate(edged_stage_duration_seconds_bucket{{{sel}, stage="inference"}}[10s])))'
        )
        assert 0 < inference_p99 <= p99, (inference_p99, p99)

        # the TPU's own `device` label comes out as `tpu`, the board's as `device`
        temps = prom.query("edged_edgetpu_temperature_celsius")
        assert [t["metric"] for t in temps] == [
            {
                "__name__": "edged_edgetpu_temperature_celsius",
                "device": DEVICE,
                "instance": f"127.0.0.1:{port}",
                "job": "edged",
                "tpu": "pci:0",
            }
        ]
        assert float(temps[0]["value"][1]) == 85.5

        # every dashboard query runs; those whose metrics the daemon serves return series
        served = exported_now(port) | {"up"}
        for expr in dashboard_exprs(json.loads(DASHBOARD.read_text())):
            result = prom.query(grafana_to_promql(expr))
            if metric_names(expr) <= served:
                assert result, f"no data for {expr}"

        # the alert rules on the daemon's real series: the hot TPU pending, the healthy stream quiet
        hot = wait_for(lambda: active(prom, "EdgedTPUHot"), 10, "EdgedTPUHot to be pending", interval=0.2)
        assert hot[0]["state"] == "pending" and hot[0]["labels"]["tpu"] == "pci:0", hot
        assert hot[0]["annotations"]["summary"] == f"Edge TPU pci:0 on {DEVICE} is throttled at 85.5 °C", hot
        names = {a["labels"]["alertname"] for a in prom.alerts()}
        # (EdgedFrameRateLow waits for 5 minutes of frames: rate() over [5m] on less data reads low)
        assert names == {"EdgedTPUHot"}, prom.alerts()

        # the daemon stops: its target goes down and EdgedDown pends for the board
        assert d.stop() == 0
        down = wait_for(lambda: active(prom, "EdgedDown"), 10, "EdgedDown to be pending", interval=0.2)
        assert down[0]["state"] == "pending", down
        assert {k: down[0]["labels"][k] for k in ("device", "job", "severity")} == {
            "device": DEVICE,
            "job": "edged",
            "severity": "critical",
        }
    finally:
        d.stop()
        if prom is not None:
            prom.stop()
            assert "level=error" not in prom.log.read_text(), prom.log.read_text()
    assert "Traceback" not in d.stderr, d.stderr


# panels with no series on a CPU-only board without MQTT, and why
NO_DATA_WITHOUT_TPU_OR_MQTT = {
    "Fallbacks and worker restarts": "no Edge TPU: no fallback, no worker",
    "Publish outcomes": "no mqtt sink",
    "Publish queue depth": "no mqtt sink",
    "Edge TPU workers": "no Edge TPU worker",
    "Edge TPU USB link": "a PCIe Edge TPU: no USB link speed",
    "Accelerator per stream": 'a CPU model: no accelerator="edgetpu" series',
}


def grafana_values(prom: Prometheus, variable: dict[str, Any], known: dict[str, str]) -> str:
    """A multi-value variable with All selected, as Grafana puts it in a Prometheus query: its
    allValue, else the alternation of the values its label_values() query finds, regex-escaped."""
    if "allValue" in variable:
        return variable["allValue"]
    selector, label = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", variable["query"]["query"]).groups()
    for name, value in known.items():
        selector = selector.replace(f"${name}", value)
    values = prom.api(f"/api/v1/label/{label}/values", **{"match[]": selector})
    assert values, f"variable {variable['name']}: no values for {selector}"
    return "(" + "|".join(promql_regex_escape(v) for v in values) + ")"


def promql_regex_escape(value: str) -> str:
    """Grafana's escape of a value in a regex matcher: a doubled backslash (one for the PromQL
    string, one for the regex) before each special character."""
    return re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\\\1", value)


def test_the_dashboard_works_for_a_board_under_ones_own_job(tmp_path) -> None:
    """One Pi scraped by `job_name: pi` with no labels (not the kit's jobs, no `device`), beside
    Prometheus scraping itself: the Board variable finds it, the panels show it and only it."""
    binary = require_tool("prometheus")
    apex = tmp_path / "sys" / "class" / "apex" / "apex_0"
    apex.mkdir(parents=True)
    (apex / "temp").write_text("45000\n")
    # its driver's own trip point and an enabled shutdown point: the temperature panel's dashed lines
    (apex / "trip_point0_temp").write_text("80000\n")
    (apex / "hw_temp_warn2").write_text("100000\n")
    (apex / "hw_temp_warn2_en").write_text("1\n")
    (tmp_path / "dev").mkdir()
    port = free_port()
    config = {
        "device": DEVICE,
        "listen": f"127.0.0.1:{port}",
        "streams": [
            {
                "id": "demo",
                "source": {"type": "synthetic", "fps": FPS},
                "model": {"path": str(ROOT / "models/digits_int8.tflite")},
                "sinks": [],
            }
        ],
    }
    env = {"EDGED_SYSFS_ROOT": str(tmp_path / "sys"), "EDGED_DEV_ROOT": str(tmp_path / "dev")}
    d = Daemon(tmp_path / "edged", config, env=env)
    prom = None
    try:
        d.wait_ready()
        prom_port = free_port()
        cfg = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": "pi", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]},
                {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{prom_port}"]}]},
            ],
        }
        prom = Prometheus(binary, tmp_path / "prometheus", cfg, port=prom_port)
        wait_for(prom.ready, 20, "Prometheus to be ready", interval=0.1)
        wait_for(lambda: prom.query('count_over_time(up{job="pi"}[15s]) >= 5'), 30, "5 scrapes", interval=0.25)
        wait_for(lambda: prom.query('up{job="prometheus"} == 1'), 15, "Prometheus scraping itself", interval=0.2)

        dash = json.loads(DASHBOARD.read_text())
        variables = {v["name"]: v for v in dash["templating"]["list"] if v["type"] == "query"}
        known: dict[str, str] = {}
        for name in ("instance", "stream"):  # in order: stream's query uses $instance
            known[name] = grafana_values(prom, variables[name], known)
        assert known["instance"] == f"(127\\\\.0\\\\.0\\\\.1:{port})", known  # edged's, not Prometheus's
        empty = []
        for title, expr in panel_exprs(dash):
            q = re.sub(r"\$__(rate_interval|interval|range)\b", "1m", expr)
            for name, value in known.items():
                q = q.replace(f"${name}", value)
            assert "$" not in q, q
            result = prom.query(q)
            if not result:
                empty.append(title)
            elif title == "edged up":  # the board only, not Prometheus's own target
                assert [r["metric"]["job"] for r in result] == ["pi"] and result[0]["value"][1] == "1", result
        assert sorted(set(empty)) == sorted(NO_DATA_WITHOUT_TPU_OR_MQTT), empty
    finally:
        d.stop()
        if prom is not None:
            prom.stop()
            assert "level=error" not in prom.log.read_text(), prom.log.read_text()
    assert "Traceback" not in d.stderr, d.stderr


def panel_exprs(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, query) of every panel's target."""
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]
