"""The observability kit in deploy/: Prometheus scrape configuration, alert rules, Grafana dashboard.

Checked with Debian's promtool (package prometheus): the configuration and the rules are valid,
the rules' unit tests (deploy/prometheus/edged-alerts.test.yml) pass and can fail, every alert has
a firing and a quiet case. Every PromQL expression of the dashboard and the rules names only
metrics a real :class:`edged.metrics.Metrics` registers. Without promtool these tests skip; with
EDGED_REQUIRE_TOOLS=1 (set by .ci/run) they fail instead.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Iterable

import pytest
import yaml
from support.kit import (
    ALERTS,
    DASHBOARD,
    KIT,
    RULE_TESTS,
    RULES,
    SCRAPE,
    TARGETS_EXAMPLE,
    alert_rules,
    dashboard_exprs,
    grafana_to_promql,
    metric_names,
)
from support.tools import require_tool

# Prometheus's own series the kit may use besides edged's
PROMETHEUS_SERIES = {"up"}


def test_a_missing_tool_skips_here_and_fails_in_ci(monkeypatch) -> None:
    monkeypatch.delenv("EDGED_REQUIRE_TOOLS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install prometheus"):
        require_tool("promtool-not-installed")
    monkeypatch.setenv("EDGED_REQUIRE_TOOLS", "1")
    with pytest.raises(pytest.fail.Exception, match="EDGED_REQUIRE_TOOLS=1"):
        require_tool("promtool-not-installed")


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_tool("promtool")


def run(*args: str, cwd: Path = KIT) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=60)


# ---------------------------------------------------------------------------- PromQL helpers


def exported_metrics() -> set[str]:
    """The series names the daemon exports, from a real Metrics registry (counters with _total,
    histograms as their _bucket, _sum and _count series)."""
    from edged.metrics import Metrics

    names = set()
    for fam in Metrics().registry.collect():
        if fam.type == "counter":
            names.add(fam.name + "_total")
        elif fam.type == "histogram":
            names |= {fam.name + s for s in ("_bucket", "_sum", "_count")}
        else:
            names.add(fam.name)
    return names


def unknown_metrics(exprs: Iterable[str], known: set[str]) -> dict[str, set[str]]:
    return {e: bad for e in exprs if (bad := metric_names(e) - known)}


# ---------------------------------------------------------------------------- scrape configuration


@pytest.mark.system  # promtool
def test_scrape_config_is_valid_with_its_token_and_targets(promtool, tmp_path) -> None:
    kit = tmp_path / "prometheus"
    shutil.copytree(KIT, kit)
    (kit / "edged-targets" / "boards.yml").write_text(TARGETS_EXAMPLE.read_text())
    (kit / "edged.token").write_text("s3cret-token-for-the-tests-0123\n")
    proc = run(promtool, "check", "config", "prometheus.yml", cwd=kit)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in out, out
    assert "WARNING" not in out, out

    # the token file and the file_sd targets are read by the check: without them it fails
    (kit / "edged.token").unlink()
    proc = run(promtool, "check", "config", "prometheus.yml", cwd=kit)
    assert proc.returncode != 0 and "edged.token" in proc.stdout + proc.stderr
    (kit / "edged.token").write_text("s3cret-token-for-the-tests-0123\n")
    (kit / "edged-targets" / "broken.yml").write_text("- targets: [door-pi.lan:9110\n")
    proc = run(promtool, "check", "config", "prometheus.yml", cwd=kit)
    assert proc.returncode != 0 and "checking SD file" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_scrape_config_labels_boards_and_sends_the_token_off_loopback() -> None:
    cfg = yaml.safe_load(SCRAPE.read_text())
    assert cfg["global"]["scrape_interval"] == "15s"
    assert cfg["rule_files"] == ["edged-alerts.yml"]
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert set(jobs) == {"edged", "edged-fleet"}
    local, fleet = jobs["edged"], jobs["edged-fleet"]
    # one board: loopback, no token needed
    assert all(t.startswith("127.0.0.1:") for g in local["static_configs"] for t in g["targets"])
    assert all(g["labels"].get("device") for g in local["static_configs"])
    assert "authorization" not in local
    # the fleet: bearer token from a file, targets from file_sd, each group naming its board
    assert fleet["authorization"] == {"type": "Bearer", "credentials_file": "edged.token"}
    assert fleet["file_sd_configs"][0]["files"] == ["edged-targets/*.yml"]
    groups = yaml.safe_load(TARGETS_EXAMPLE.read_text())
    assert groups and all(g["labels"].get("device") and len(g["targets"]) == 1 for g in groups)
    # edged's Edge TPU label is `tpu`: no collision with the board's `device`, nothing relabelled
    for job in (local, fleet):
        assert "metric_relabel_configs" not in job, job


# ---------------------------------------------------------------------------- alert rules


@pytest.mark.system  # promtool
def test_rules_are_valid(promtool, tmp_path) -> None:
    proc = run(promtool, "check", "rules", "--lint=all", "--lint-fatal", "edged-alerts.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in proc.stdout, proc.stdout
    # promtool is not a rubber stamp: a broken expression is refused
    broken = RULES.read_text().replace("histogram_quantile(0.99, rate(", "histogram_quantile(0.99, rate((", 1)
    assert broken != RULES.read_text()
    (tmp_path / "broken.yml").write_text(broken)
    proc = run(promtool, "check", "rules", "broken.yml", cwd=tmp_path)
    assert proc.returncode != 0 and "parse error" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_every_alert_has_severity_summary_and_description() -> None:
    rules = alert_rules()
    assert [r["alert"] for r in rules] == ALERTS
    for r in rules:
        assert r["labels"]["severity"] in ("critical", "warning"), r["alert"]
        assert r.get("for"), r["alert"]
        assert set(r["annotations"]) == {"summary", "description"}, r["alert"]
        assert len(r["annotations"]["description"]) > 150, r["alert"]  # says what it means and what to do


@pytest.mark.system  # promtool
def test_rule_unit_tests_pass(promtool) -> None:
    proc = run(promtool, "test", "rules", "edged-alerts.test.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == ["edged-alerts.yml"]
    firing, quiet = set(), set()
    for t in tests["tests"]:
        for case in t["alert_rule_test"]:
            (firing if case["exp_alerts"] else quiet).add(case["alertname"])
            for a in case["exp_alerts"]:
                assert set(a["exp_annotations"]) == {"summary", "description"}, case["alertname"]
    assert firing == set(ALERTS), set(ALERTS) - firing
    assert quiet == set(ALERTS), set(ALERTS) - quiet


# Each alert's condition changed a little: its unit tests must notice.
MUTATIONS = {
    "EdgedDown": ('up{job=~"edged.*"} == 0', "up == 0"),
    "EdgedNoResults": ("edged_last_result_timestamp_seconds > 60)", "edged_last_result_timestamp_seconds > 200)"),
    "EdgedSourceDown": ("expr: edged_source_up == 0\n        for: 2m", "expr: edged_source_up == 0\n        for: 1m"),
    "EdgedFellBackToCPU": ('{accelerator="cpu"} == 1\n        for: 5m', '{accelerator="cpu"} == 1\n        for: 1m'),
    "EdgedFrameRateLow": ("and on (job, instance, stream) edged_source_up == 1", ""),
    "EdgedFrameLatencyHigh": ("[5m])) > 0.5", "[5m])) > 1"),
    "EdgedPublishQueueGrowing": (" and edged_publish_queue_depth > 0", ""),
    "EdgedTPUHot": (">= on (job, instance, tpu) group_left edged_edgetpu_throttle_celsius", "> 80"),
    "EdgedTPUNearShutdown": ("(edged_edgetpu_shutdown_celsius - 5)", "edged_edgetpu_shutdown_celsius"),
    "EdgedTPUSlowLink": ("edged_edgetpu_link_speed_mbps < 5000", "edged_edgetpu_link_speed_mbps < 480"),
}


@pytest.mark.system  # promtool
@pytest.mark.parametrize("alert", ALERTS)
@pytest.mark.system  # promtool
def test_rule_unit_tests_catch_a_changed_condition(promtool, tmp_path, alert) -> None:
    old, new = MUTATIONS[alert]
    text = RULES.read_text()
    assert text.count(old) == 1, old
    (tmp_path / "edged-alerts.yml").write_text(text.replace(old, new))
    shutil.copy(RULE_TESTS, tmp_path)
    proc = run(promtool, "check", "rules", "edged-alerts.yml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # still valid, only wrong
    proc = run(promtool, "test", "rules", "edged-alerts.test.yml", cwd=tmp_path)
    assert proc.returncode != 0, proc.stdout
    assert f"alertname: {alert}," in proc.stdout + proc.stderr, proc.stdout + proc.stderr


# ---------------------------------------------------------------------------- metric names


def test_metric_names_finds_every_selector_and_nothing_else() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (le, stream) (rate(edged_frame_latency_seconds_bucket{stream=~"$stream"}'
        "[$__rate_interval])))"
    ) == {"edged_frame_latency_seconds_bucket"}
    assert metric_names(
        'rate(edged_frames_total{outcome="dropped"}[5m]) / ignoring(outcome) sum without(outcome) '
        "(rate(edged_frames_total[5m] offset 1h))"
    ) == {"edged_frames_total"}
    assert metric_names(
        "(time() - edged_last_result_timestamp_seconds > 60) or (edged_stream_up == 0 unless on (job, instance, "
        'stream) edged_last_result_timestamp_seconds) or count(x{a="b}"} == bool 1) or vector(0) or '
        '{__name__="up", job="edged"} * 1e3'
    ) == {"edged_last_result_timestamp_seconds", "edged_stream_up", "x", "up"}
    mini = {
        "panels": [{"type": "row", "panels": [{"targets": [{"expr": "a"}]}]}, {"targets": [{"expr": "b"}]}],
        "templating": {
            "list": [
                {"type": "datasource", "name": "datasource", "query": "prometheus"},
                {"type": "query", "name": "s", "query": {"query": 'label_values(edged_frames_total{d=~"$d"}, stream)'}},
            ]
        },
    }
    assert dashboard_exprs(mini) == ["a", "b", 'edged_frames_total{d=~"$d"}']
    assert metric_names(dashboard_exprs(mini)[-1]) == {"edged_frames_total"}


def test_exported_metrics_come_from_the_registry() -> None:
    names = exported_metrics()
    assert {"edged_frames_total", "edged_frame_latency_seconds_bucket", "edged_edgetpu_temperature_celsius"} <= names
    assert "edged_frame_latency_seconds" not in names and "edged_frames" not in names


def test_dashboard_and_rules_use_only_metrics_the_daemon_exports() -> None:
    known = exported_metrics() | PROMETHEUS_SERIES
    dash = json.loads(DASHBOARD.read_text())
    exprs = dashboard_exprs(dash) + [r["expr"] for r in alert_rules()]
    assert unknown_metrics(exprs, known) == {}
    used = set().union(*(metric_names(e) for e in exprs))
    assert len(used) >= 15, used

    # the check catches a wrong name: a dashboard with one misspelt metric fails it
    bad = copy.deepcopy(dash)
    target = next(t for p in bad["panels"] for t in p.get("targets", []) if "edged_frames_total" in t["expr"])
    target["expr"] = target["expr"].replace("edged_frames_total", "edged_frame_total")
    assert unknown_metrics(dashboard_exprs(bad), known) == {target["expr"]: {"edged_frame_total"}}
    # and a histogram's base name is not a series
    assert unknown_metrics(["rate(edged_stage_duration_seconds[5m])"], known)


# ---------------------------------------------------------------------------- dashboard


def test_dashboard_is_a_grafana_model_with_instance_and_stream_variables() -> None:
    """The board is chosen by ``instance``, a label every scrape has (the kit's jobs or one's own)."""
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("instance", "stream"):
        v = variables[name]
        assert (
            v["type"] == "query"
            and v["definition"].startswith("label_values(")
            and v["definition"].endswith(f", {name})")
        )
        assert v["query"]["query"] == v["definition"] and v["multi"] and v["includeAll"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"panel {p['title']} overlaps another"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert p["targets"] and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"], p["title"]
            assert 'instance=~"$instance"' in t["expr"], f"panel {p['title']}: {t['expr']} ignores the board"
            assert "job=" not in t["expr"] and "device=" not in t["expr"], f"{t['expr']}: not in one's own job"
    # All is the alternation of edged's instances (no allValue): up{instance=~".*"} would be every target
    assert "allValue" not in variables["instance"]


# what the dashboard must show: (panel type, a metric its queries use, something else in the query)
REQUIRED_PANELS = [
    ("heatmap", "edged_frame_latency_seconds_bucket", "sum by (le)"),
    ("timeseries", "edged_stage_duration_seconds_bucket", "histogram_quantile(0.5,"),
    ("timeseries", "edged_stage_duration_seconds_bucket", "histogram_quantile(0.99,"),
    ("timeseries", "edged_frames_total", 'outcome="processed"'),
    ("timeseries", "edged_frames_total", 'outcome="dropped"'),
    ("state-timeline", "edged_accelerator_active", 'accelerator="edgetpu"'),
    ("timeseries", "edged_inferences_total", "accelerator"),
    ("timeseries", "edged_edgetpu_temperature_celsius", ""),
    ("timeseries", "edged_edgetpu_throttle_celsius", ""),
    ("timeseries", "edged_edgetpu_shutdown_celsius", ""),
    ("stat", "edged_edgetpu_link_speed_mbps", ""),
    ("state-timeline", "edged_edgetpu_check", ""),
    ("timeseries", "edged_fallbacks_total", "reason"),
    ("timeseries", "edged_publish_total", "outcome"),
    ("timeseries", "edged_publish_queue_depth", ""),
    ("state-timeline", "edged_source_up", ""),
]


@pytest.mark.parametrize(("kind", "metric", "detail"), REQUIRED_PANELS)
def test_dashboard_has_the_panel(kind, metric, detail) -> None:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t for p in dash["panels"] if p["type"] == kind for t in p.get("targets", [])]
    assert any(metric in metric_names(t["expr"]) and detail in t["expr"] for t in exprs), (kind, metric, detail)
    if kind == "heatmap":
        t = next(t for t in exprs if metric in t["expr"])
        assert t["format"] == "heatmap" and t["legendFormat"] == "{{le}}"


def panel(dash: dict, title: str) -> dict:
    return next(p for p in dash["panels"] if p["title"] == title)


def test_tpu_temperature_panel_draws_the_tpus_own_throttle_and_shutdown_points() -> None:
    """Not fixed lines: EdgedTPUHot fires at each TPU's own first trip point, EdgedTPUNearShutdown
    5 °C below its shutdown point, so the panel plots those series beside the temperature, dashed."""
    temp = panel(json.loads(DASHBOARD.read_text()), "Edge TPU temperature")
    by_metric = {m: t for t in temp["targets"] for m in metric_names(t["expr"])}
    assert set(by_metric) == {
        "edged_edgetpu_temperature_celsius",
        "edged_edgetpu_throttle_celsius",
        "edged_edgetpu_shutdown_celsius",
    }
    assert by_metric["edged_edgetpu_throttle_celsius"]["legendFormat"] == "{{device}} {{tpu}} throttles"
    assert by_metric["edged_edgetpu_shutdown_celsius"]["legendFormat"] == "{{device}} {{tpu}} shuts down"
    dashed = {
        o["matcher"]["options"]
        for o in temp["fieldConfig"]["overrides"]
        if o["matcher"]["id"] == "byFrameRefID"
        and {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}} in o["properties"]
    }
    points = {by_metric[m]["refId"] for m in ("edged_edgetpu_throttle_celsius", "edged_edgetpu_shutdown_celsius")}
    assert dashed == points, dashed
    assert by_metric["edged_edgetpu_temperature_celsius"]["refId"] not in dashed
    # no fixed temperature drawn, and the description names the alerts as the rules have them
    defaults = temp["fieldConfig"]["defaults"]
    assert "thresholds" not in defaults and "thresholdsStyle" not in defaults.get("custom", {}), defaults
    assert "80 °C" not in temp["description"] and "85 °C" not in temp["description"]
    assert "EdgedTPUHot" in temp["description"] and "EdgedTPUNearShutdown" in temp["description"]


def test_usb_link_panel_turns_green_where_edged_tpu_slow_link_stops() -> None:
    link = panel(json.loads(DASHBOARD.read_text()), "Edge TPU USB link")
    steps = [(s["color"], s["value"]) for s in link["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert steps == [("red", None), ("orange", 480), ("green", 5000)], steps
    rule = next(r for r in alert_rules() if r["alert"] == "EdgedTPUSlowLink")
    assert rule["expr"] == f"edged_edgetpu_link_speed_mbps < {steps[-1][1]}", rule["expr"]
    assert link["fieldConfig"]["defaults"]["unit"] == "Mbits"


@pytest.mark.system  # promtool
def test_dashboard_queries_parse(promtool, tmp_path) -> None:
    """promtool parses each dashboard query, given to it as a recording rule."""
    exprs = dashboard_exprs(json.loads(DASHBOARD.read_text()))

    def check(exprs: list[str]) -> subprocess.CompletedProcess:
        rules = [{"record": f"dashboard:query_{i}", "expr": grafana_to_promql(e)} for i, e in enumerate(exprs)]
        path = tmp_path / "dashboard-queries.yml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
        return run(promtool, "check", "rules", str(path), cwd=tmp_path)

    proc = check(exprs)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in proc.stdout
    assert check([*exprs, "sum by (le (rate(edged_frames_total[1m]))"]).returncode != 0
