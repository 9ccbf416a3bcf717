"""The doctor's checks that keep mattering while the daemon runs: each Edge TPU's USB link and temperature.

Read from sysfs whenever asked (a scrape, a status request, the supervisor's poll), never cached
from the start: a TPU moved to another port or cooled down shows as such.

* :class:`TpuWatch` gives the failing checks (``/api/v1/status`` and the MQTT status: ``warnings``)
  and, polled by the supervisor, logs a warning when a check starts failing and an info line when
  it passes again; the first poll, at start, logs every failing one.
* :class:`CheckCollector` exports them to Prometheus: ``edged_edgetpu_link_speed_mbps{tpu}``,
  ``edged_edgetpu_check{tpu,check}`` (1 passing, 0 warning or failing), and the apex driver's
  ``edged_edgetpu_throttle_celsius{tpu}`` (the first trip point) and
  ``edged_edgetpu_shutdown_celsius{tpu}`` (when enabled) for the alert rules to compare with
  ``edged_edgetpu_temperature_celsius``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Iterator, Sequence

from prometheus_client.core import GaugeMetricFamily

from ..edgetpu import EdgeTpu
from .findings import Finding
from .hardware import link_speed_mbps, thermal, tpu_findings

log = logging.getLogger("edged.doctor")

POLL_SECONDS = 10.0  # between two looks of the supervisor at sysfs


def failing(tpus: Sequence[EdgeTpu]) -> list[Finding]:
    """The link and temperature checks of ``tpus`` that warn or fail, read now."""
    return [f for t in tpus for f in tpu_findings(t) if not f.ok]


def warnings(tpus: Sequence[EdgeTpu]) -> list[dict[str, Any]]:
    """``warnings`` of the status: {check, tpu, status, message, remedy} per failing check."""
    keys = ("check", "tpu", "status", "message", "remedy")
    return [{k: v for k, v in f.to_dict().items() if k in keys} for f in failing(tpus)]


class TpuWatch:
    """Logs the changes of the TPUs' checks; :meth:`poll` at start and from the supervisor."""

    def __init__(self, tpus: Sequence[EdgeTpu]) -> None:
        self.tpus = list(tpus)
        self._failing: dict[tuple[str, str | None], Finding] = {}
        self._next = 0.0
        self._lock = threading.Lock()

    def poll(self) -> None:
        """Look now; log what started failing (warning) and what passes again (info)."""
        with self._lock:
            now = {(f.check, f.tpu): f for f in failing(self.tpus)}
            for key, f in now.items():
                if key not in self._failing or self._failing[key].status != f.status:
                    log.warning(
                        "Edge TPU %s: %s%s", f.tpu, f.message, f" -> {f.remedy}" if f.remedy else "",
                        extra={"tpu": f.tpu, "check": f.check, "accelerator": "edgetpu"},
                    )  # fmt: skip
            for key in self._failing.keys() - now.keys():
                check, tpu = key
                log.info("Edge TPU %s: %s check passes again", tpu, check, extra={"tpu": tpu, "check": check})
            self._failing = now

    def tick(self, now: float) -> None:
        """The supervisor's call (every few hundred ms): a poll every :data:`POLL_SECONDS`."""
        if self.tpus and now >= self._next:
            self._next = now + POLL_SECONDS
            try:
                self.poll()
            except Exception:  # a sysfs surprise must not stop the supervisor (and with it the watchdog)
                log.exception("Edge TPU checks failed; trying again in %.0f s", POLL_SECONDS)


class CheckCollector:
    """The checks as Prometheus series, read at scrape time for the TPUs ``tpus()`` returns."""

    def __init__(self, tpus: Callable[[], Sequence[EdgeTpu]]) -> None:
        self._tpus = tpus

    def _families(self) -> dict[str, GaugeMetricFamily]:
        def gauge(name: str, text: str, labels: list[str]) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, text, labels=labels)

        return {
            "link": gauge(
                "edged_edgetpu_link_speed_mbps",
                "USB link speed of a USB Edge TPU in Mb/s from sysfs (480: USB 2, 5000: USB 3)",
                ["tpu"],
            ),
            "check": gauge(
                "edged_edgetpu_check",
                "1 while the doctor's check of an Edge TPU passes, 0 while it warns or fails (edged doctor)",
                ["tpu", "check"],
            ),
            "throttle": gauge(
                "edged_edgetpu_throttle_celsius",
                "The apex driver's first trip point: above it the PCIe Edge TPU's clock is cut",
                ["tpu"],
            ),
            "shutdown": gauge(
                "edged_edgetpu_shutdown_celsius",
                "The apex driver's enabled shutdown temperature of a PCIe Edge TPU",
                ["tpu"],
            ),
        }

    def describe(self) -> list[GaugeMetricFamily]:
        return list(self._families().values())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        fam = self._families()
        for tpu in self._tpus():
            speed = link_speed_mbps(tpu)
            if speed is not None:
                fam["link"].add_metric([tpu.selector], speed)
            for f in tpu_findings(tpu):
                fam["check"].add_metric([tpu.selector, f.check], 1.0 if f.ok else 0.0)
            th = thermal(tpu)
            if th is not None:
                fam["throttle"].add_metric([tpu.selector], th.trips[0])
                if th.shutdown is not None:
                    fam["shutdown"].add_metric([tpu.selector], th.shutdown)
        yield from fam.values()
