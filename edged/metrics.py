"""Every metric edged exports, defined once with its help text and buckets.

A :class:`Metrics` owns its own registry, so a service (or a test) gets a clean set.
Labels have bounded cardinality: stream, stage, accelerator, outcome; never a frame id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,  # noqa: F401  (re-exported for the HTTP server)
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics import MetricWrapperBase

from . import __version__

# no <name>_created sample beside each counter, histogram and summary: a start time per series
# that no dashboard or alert of edged reads (12 % of the series), and process_start_time_seconds says it once
disable_created_metrics()

if TYPE_CHECKING:
    from .edgetpu import EdgeTpu
    from .model import ModelInfo

# Edge latencies: from half a millisecond (an Edge TPU classifier) to seconds (a stalled CPU).
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    2.0,
)
PIPELINE_STAGES = ("capture", "queue", "preprocess", "inference", "postprocess", "track", "publish")
ERROR_STAGES = ("source", "preprocess", "inference", "track", "publish", "thread")


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        # the process's own CPU, memory, open files and start time (process_*; on Linux, from /proc)
        ProcessCollector(registry=r)
        self.build_info = Gauge("edged_build_info", "edged version (value is always 1)", ["version"], registry=r)
        self.build_info.labels(__version__).set(1)
        self._define_stream_metrics(r)
        self._define_stream_state_metrics(r)
        self._define_sink_metrics(r)
        self._define_edgetpu_metrics(r)
        self._define_component_metrics(r)
        self._define_http_metrics(r)
        self._tpus: list[EdgeTpu] = []
        self._all_tpus: list[EdgeTpu] = []
        r.register(_TemperatureCollector(self))
        from .doctor.live import CheckCollector  # the doctor's link and temperature checks

        r.register(CheckCollector(lambda: self._all_tpus))
        # the series labelled by stream (its first label), which remove_stream drops
        self._per_stream: tuple[MetricWrapperBase, ...] = (
            self.stage_duration, self.frame_latency, self.frames, self.inferences, self.errors, self.model_info,
            self.stream_up, self.source_up, self.source_reconnects, self.last_result, self.accelerator_active,
            self.fallbacks, self.first_inference, self.snapshot_encodes,
        )  # fmt: skip

    def _define_stream_metrics(self, r: CollectorRegistry) -> None:
        self.stage_duration = Histogram(
            "edged_stage_duration_seconds",
            "Time a frame spends in each pipeline stage: capture (grab and decode), queue (waiting "
            "for the inference thread), preprocess, inference, postprocess, publish (all sinks)",
            ["stream", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.frame_latency = Histogram(
            "edged_frame_latency_seconds",
            "Time from the start of a frame's capture to its result being published",
            ["stream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.frames = Counter(
            "edged_frames_total",
            "Frames by outcome: processed (a result was published) or dropped (replaced by a newer "
            "frame before inference took it)",
            ["stream", "outcome"],
            registry=r,
        )
        self.inferences = Counter(
            "edged_inferences_total", "Inferences run, by accelerator", ["stream", "accelerator"], registry=r
        )
        self.errors = Counter(
            "edged_stream_errors_total",
            "Errors in a stream, by stage (source, preprocess, inference, publish; thread: a crash of its "
            "capture or inference thread, which is started again)",
            ["stream", "stage"],
            registry=r,
        )

    def _define_stream_state_metrics(self, r: CollectorRegistry) -> None:
        self.model_info = Gauge(
            "edged_model_info",
            "The model a stream runs (value is always 1)",
            ["stream", "path", "sha256", "input_shape", "dtype", "scale", "zero_point", "task", "runtime"],
            registry=r,
        )
        self.stream_up = Gauge(
            "edged_stream_up",
            "1 while a stream's source delivers and its inference runs, else 0",
            ["stream"],
            registry=r,
        )
        self.source_up = Gauge(
            "edged_source_up",
            "1 while a stream's source is open and delivering, 0 while it reconnects",
            ["stream"],
            registry=r,
        )
        self.source_reconnects = Counter(
            "edged_source_reconnects_total",
            "Times a stream's source came back after losing its device or connection",
            ["stream"],
            registry=r,
        )
        self.last_result = Gauge(
            "edged_last_result_timestamp_seconds",
            "Unix time of a stream's latest published result",
            ["stream"],
            registry=r,
        )

    def _define_sink_metrics(self, r: CollectorRegistry) -> None:
        self.publish_total = Counter(
            "edged_publish_total",
            "Results handed to a publishing sink (sink=mqtt:<stream>), by outcome: sent (acknowledged by "
            "the broker at QoS 1), dropped (queue full, or not connected at QoS 0), failed, or thinned (left "
            "out by the sink's thinning rules)",
            ["sink", "outcome"],
            registry=r,
        )
        self.publish_queue_depth = Gauge(
            "edged_publish_queue_depth",
            "Results waiting in a publishing sink's on-disk queue (in flight included)",
            ["sink"],
            registry=r,
        )
        self.queue_faults = Counter(
            "edged_queue_faults_total",
            "Faults of a publishing sink's on-disk queue, by fault: corrupt_file (a damaged queue file found at "
            "start, moved aside), bad_row (a queued result that cannot be read, skipped), disk_full (the disk "
            "filled up: results are dropped until there is space)",
            ["sink", "fault"],
            registry=r,
        )

    def _define_component_metrics(self, r: CollectorRegistry) -> None:
        self.component_up = Gauge(
            "edged_component_up",
            "1 while a component with a thread of its own (an MQTT sender or status publisher, an Edge TPU "
            "probe, the HTTP listener, the supervisor) works, 0 after it failed until it works again",
            ["component"],
            registry=r,
        )
        self.component_failures = Counter(
            "edged_component_failures_total",
            "Failures of a component's thread (each one logged; the thread is started again where that is safe)",
            ["component"],
            registry=r,
        )

    def _define_http_metrics(self, r: CollectorRegistry) -> None:
        self.http_rejected = Counter(
            "edged_http_rejected_total",
            "Connections the HTTP listener refused or closed: busy (its pool full: 503, or the oldest of too "
            "many waiting for their request heads), deadline (the request head not sent in time), slow_reader "
            "(an event client that stopped reading)",
            ["reason"],
            registry=r,
        )
        for reason in ("busy", "deadline", "slow_reader"):
            self.http_rejected.labels(reason)
        self.snapshot_encodes = Counter(
            "edged_snapshot_encodes_total",
            "Snapshots encoded as JPEG (at most one per frame, however many clients ask)",
            ["stream"],
            registry=r,
        )

    def _define_edgetpu_metrics(self, r: CollectorRegistry) -> None:
        self.accelerator_up = Gauge(
            "edged_accelerator_up",
            "1 while the Edge TPU worker of a TPU (its selector: usb:0, pci:1, default) is up and answering",
            ["tpu"],
            registry=r,
        )
        self.accelerator_active = Gauge(
            "edged_accelerator_active",
            "1 for the accelerator a stream currently runs on (edgetpu or cpu)",
            ["stream", "accelerator"],
            registry=r,
        )
        self.fallbacks = Counter(
            "edged_fallbacks_total",
            "Moves of a stream from the Edge TPU to its CPU twin, by reason: unavailable (at start), "
            "delegate, crash, hang, invoke, model",
            ["stream", "reason"],
            registry=r,
        )
        self.worker_restarts = Counter(
            "edged_worker_restarts_total",
            "Edge TPU worker processes started again after a failure",
            ["tpu"],
            registry=r,
        )
        self.edgetpu_flaps = Counter(
            "edged_edgetpu_flaps_total",
            "Edge TPU worker failures within edgetpu.stable_seconds of a restart (each one doubles the probe wait)",
            ["tpu"],
            registry=r,
        )
        self.first_inference = Gauge(
            "edged_first_inference_seconds",
            "Time of the first inference after loading a model on the Edge TPU (includes the model upload)",
            ["stream", "tpu"],
            registry=r,
        )

    def watch_temperatures(self, tpus: list[EdgeTpu]) -> None:
        """Export ``edged_edgetpu_temperature_celsius`` for the TPUs that have a sysfs temperature, and the
        doctor's checks (:mod:`edged.doctor.live`) for all of them."""
        self._tpus = [t for t in tpus if t.temperature_path]
        self._all_tpus = list(tpus)

    def stream(self, stream: str) -> StreamMetrics:
        """The series of one stream, and the counts they hold (one owner for both)."""
        return StreamMetrics(self, stream)

    def init_stream(self, stream: str, info: ModelInfo) -> None:
        """Create every series of a stream at zero, so rates and absent() work from the start."""
        for stage in PIPELINE_STAGES:
            self.stage_duration.labels(stream, stage)
        self.frame_latency.labels(stream)
        for outcome in ("processed", "dropped"):
            self.frames.labels(stream, outcome)
        for acc in ("cpu", "edgetpu"):
            self.inferences.labels(stream, acc)
        for stage in ERROR_STAGES:
            self.errors.labels(stream, stage)
        spec = info.input
        self.model_info.labels(
            stream,
            info.path,
            info.sha256,
            "x".join(str(d) for d in spec.shape),
            spec.dtype,
            f"{spec.quantization.scale:.8g}",
            str(spec.quantization.zero_point),
            info.task,
            info.runtime,
        ).set(1)
        self.stream_up.labels(stream).set(0)
        self.source_up.labels(stream).set(0)
        self.source_reconnects.labels(stream)

    def remove_stream(self, stream: str, keep_counters: bool = False) -> None:
        """Drop every series of a stream (a reload removed it or changed its model).

        With ``keep_counters`` the counters and histograms stay (the stream comes back under the
        same id and they go on counting, so rates stay right); gauges such as the model info go.
        """
        for metric in self._per_stream:
            if keep_counters and not isinstance(metric, Gauge):
                continue
            for values in _label_values(metric):
                if values[0] == stream:
                    try:
                        metric.remove(*values)
                    except KeyError:
                        pass

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _label_values(metric: MetricWrapperBase) -> set[tuple[str, ...]]:
    """The label values of every series ``metric`` has now (read from what it exports)."""
    out = set()
    for family in metric.collect():
        for sample in family.samples:
            out.add(tuple(v for k, v in sample.labels.items() if k not in ("le", "quantile")))
    return out


class StreamMetrics:
    """One stream's series: the histograms it observes and the counters it counts.

    The counts a stream reports in its status (processed, dropped, reconnects) are kept here,
    beside the counter they increment, so each is counted in one place.
    """

    STAGES = PIPELINE_STAGES

    def __init__(self, metrics: Metrics, stream: str) -> None:
        self.metrics = metrics
        self.stream = stream
        self.processed = 0
        self.dropped = 0
        self.reconnects = 0
        self._bind()

    def init(self, info: ModelInfo) -> None:
        """Create the stream's series at zero (at its start: a reload may have removed them)."""
        self.metrics.init_stream(self.stream, info)
        self._bind()

    def _bind(self) -> None:
        m, sid = self.metrics, self.stream
        self.stage = {stage: m.stage_duration.labels(sid, stage) for stage in PIPELINE_STAGES}
        self.frame_latency = m.frame_latency.labels(sid)
        self._processed = m.frames.labels(sid, "processed")
        self._dropped = m.frames.labels(sid, "dropped")
        self._inferences = {acc: m.inferences.labels(sid, acc) for acc in ("cpu", "edgetpu")}
        self.up = m.stream_up.labels(sid)
        self.source_up = m.source_up.labels(sid)
        self._reconnects = m.source_reconnects.labels(sid)
        self.last_result = m.last_result.labels(sid)

    def count_processed(self, accelerator: str) -> None:
        self.processed += 1
        self._processed.inc()
        self._inferences[accelerator].inc()

    def count_dropped(self) -> None:
        self.dropped += 1
        self._dropped.inc()

    def count_reconnect(self) -> None:
        self.reconnects += 1
        self._reconnects.inc()

    def count_error(self, stage: str) -> None:
        self.metrics.errors.labels(self.stream, stage).inc()


class _TemperatureCollector:
    """Reads each PCIe Edge TPU's sysfs temperature at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily("edged_edgetpu_temperature_celsius", "Edge TPU die temperature", labels=["tpu"])]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from .edgetpu import read_temperature

        fam = GaugeMetricFamily(
            "edged_edgetpu_temperature_celsius",
            "Edge TPU die temperature from /sys/class/apex/apex_N/temp (PCIe/M.2 only)",
            labels=["tpu"],
        )
        for tpu in self.metrics._tpus:
            value = read_temperature(tpu.temperature_path)
            if value is not None:
                fam.add_metric([tpu.selector], value)
        yield fam
