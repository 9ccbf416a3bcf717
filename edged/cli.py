"""The ``edged`` command: run, infer, inspect, config."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from . import __version__
from .errors import ConfigError, EdgedError
from .runtime import RUNTIMES

if TYPE_CHECKING:
    from .inference import InferenceEngine
    from .model_config import ModelConfig

log = logging.getLogger("edged")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edged", description="Edge inference daemon for Google Coral boards.")
    p.add_argument("--version", action="version", version=f"edged {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon (no --config: the embedded demo)")
    run.add_argument("--config", "-c", metavar="FILE", help="YAML configuration (default: the embedded demo)")
    run.add_argument("--listen", metavar="HOST:PORT", help="HTTP listener for /metrics and /healthz")
    run.add_argument("--log-format", choices=("human", "json"), help="log line format (default from config: human)")
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    run.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this many seconds")

    _add_infer(sub)

    ins = sub.add_parser(
        "inspect",
        help="print a model's tensors, quantisation, task, operators and Edge TPU compatibility",
        description="Read a .tflite model without TensorFlow or edgetpu_compiler: tensors, quantisation and task "
        "(from the interpreter when one can load the model), operators with counts, whether it is compiled for the "
        "Edge TPU and, when it is not, which operators would map to the Edge TPU and where the graph would be cut. "
        "Exit status 0 whatever the verdict.",
    )
    ins.add_argument("model")
    ins.add_argument("--json", action="store_true", help="machine-readable output")
    ins.add_argument("--runtime", default="auto", choices=("auto", *RUNTIMES))
    seg = "as edgetpu_compiler -a: Edge TPU segments around the CPU operators instead of one"
    ins.add_argument("-a", "--multiple-subgraphs", action="store_true", help=seg)

    cfg = sub.add_parser("config", help="check or print configurations")
    csub = cfg.add_subparsers(dest="config_command", metavar="ACTION")
    chk = csub.add_parser("check", help="validate a configuration file (and load its models)")
    chk.add_argument("file")
    chk.add_argument("--no-models", action="store_true", help="validate the YAML only, do not load models")
    csub.add_parser("default", help="print the embedded default configuration as YAML")

    dev = sub.add_parser("devices", help="list the Edge TPUs present and the delegate library")
    dev.add_argument("--json", action="store_true", help="machine-readable output")

    from .doctor import add_arguments as doctor_arguments

    doctor_arguments(sub.add_parser("doctor", help="check the Edge TPUs, libedgetpu, the runtimes and a configuration"))

    from .tools import add_commands  # the model toolchain: convert, eval, bench

    add_commands(sub)
    return p


def _add_infer(sub: Any) -> None:
    """``edged infer``: its options are a model config section's, on the command line."""
    inf = sub.add_parser("infer", help="run a model on images; one JSON result a line on stdout")
    inf.add_argument("--model", "-m", required=True, help=".tflite model")
    inf.add_argument("--labels", "-l", help="labels file")
    inf.add_argument(
        "--top-k",
        "-k",
        type=int,
        help="classes kept (default 3), or objects kept at most (default: all above the threshold)",
    )
    inf.add_argument("--threshold", "-t", type=float, help="minimum score (default 0.1 classes, 0.5 objects)")
    inf.add_argument("--resize", choices=("stretch", "letterbox"), default="stretch")
    inf.add_argument("--iou-threshold", type=float, help="YOLO detectors: NMS overlap above which a box goes (0.45)")
    inf.add_argument("--max-detections", type=int, help="detectors: objects kept, at most (300)")
    inf.add_argument("--yolo-boxes", choices=("auto", "normalized", "pixels"), help="YOLO detectors: box units (auto)")
    inf.add_argument("--interpolation", choices=("linear", "nearest", "area"), default="linear")
    inf.add_argument("--runtime", choices=("auto", *RUNTIMES), default="auto")
    inf.add_argument("--threads", type=int, help="interpreter threads (default: all cores)")
    inf.add_argument("--mean", type=float, nargs="+", help="normalisation mean (default: raw pixels)")
    inf.add_argument("--std", type=float, nargs="+", help="normalisation std (default: raw pixels)")
    inf.add_argument(
        "--accelerator", choices=("auto", "edgetpu", "cpu"), default="auto",
        help="auto: the Edge TPU when the model is compiled for it and the delegate loads, else the CPU twin",
    )  # fmt: skip
    inf.add_argument("--device", help="Edge TPU selector: usb, usb:N, pci, pci:N, :N")
    inf.add_argument("--cpu-model", help="CPU twin of an Edge TPU model (default: the name without _edgetpu)")
    inf.add_argument("--edgetpu-library", help="delegate library (default: libedgetpu.so.1 on Linux)")
    inf.add_argument(
        "--delegate-option", action="append", default=[], metavar="KEY=VALUE",
        help="option for the Edge TPU delegate, e.g. Performance=Max (repeatable)",
    )  # fmt: skip
    inf.add_argument("images", nargs="+", metavar="IMAGE")


# ---------------------------------------------------------------------------- commands


def cmd_run(args: argparse.Namespace) -> int:
    from .config import default_config, load_config
    from .daemon import Service
    from .logs import setup_logging

    cfg = load_config(args.config) if args.config else default_config()
    setup_logging(args.log_level or ("debug" if args.debug else cfg.log.level), args.log_format or cfg.log.format)
    service = Service(cfg, listen=args.listen, config_path=args.config)
    service.install_signal_handlers()
    service.start()
    try:
        service.wait(args.duration)
    finally:
        service.close()
    failed = [s.id for s in service.streams if s.state == "failed"]
    return 1 if failed else 0


@dataclass(frozen=True)
class _InferStream:
    """``edged infer``'s one stream, as placement reads it (a configuration's streams are StreamConfig)."""

    model: ModelConfig
    id: str = "infer"
    shared_model: Optional[str] = None


def cmd_infer(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from .inference.placement import place_streams
    from .model_config import EdgeTpuConfig, ModelConfig, format_validation_errors

    options: dict[str, str] = {}
    for item in args.delegate_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--delegate-option must be KEY=VALUE, not {item!r}")
        options[key] = value
    raw_model = {
        "path": args.model, "labels": args.labels, "runtime": args.runtime, "threads": args.threads,
        "top_k": args.top_k, "threshold": args.threshold, "resize": args.resize, "interpolation": args.interpolation,
        "mean": _one_or_list(args.mean), "std": _one_or_list(args.std), "accelerator": args.accelerator,
        "device": args.device, "cpu_model": args.cpu_model, "iou_threshold": args.iou_threshold,
        "max_detections": args.max_detections, "yolo_boxes": args.yolo_boxes,
    }  # fmt: skip
    raw_model = {k: v for k, v in raw_model.items() if v is not None or k in ("labels", "threads", "threshold")}
    try:  # the sections a configuration file has, so the same checks, defaults and engines (not the daemon's
        # whole Config: its sources and sinks are not needed here, and importing them is most of the start-up)
        tcfg = EdgeTpuConfig(library=args.edgetpu_library, options=options)
        model = ModelConfig(**raw_model)
    except ValidationError as exc:
        raise ConfigError(format_validation_errors(exc, prefix="--")) from None
    engines, workers = place_streams([_InferStream(model)], tcfg)
    try:
        return _infer_images(engines["infer"], args.images)
    finally:
        for w in workers:
            w.close()


def _infer_images(engine: InferenceEngine, images: list[str]) -> int:
    from .result import build_result
    from .sources import Frame
    from .sources.images import read_image

    failures = 0
    for seq, path in enumerate(images):
        wall, t0 = time.time(), time.monotonic()
        try:
            image = read_image(path)
        except EdgedError as exc:
            print(f"edged: error: {exc}", file=sys.stderr)
            failures += 1
            continue
        frame = Frame(image, seq, wall, t0, time.monotonic() - t0, origin=str(path))
        out = engine.process(image)
        print(build_result("infer", frame, out, engine.info).to_json(), flush=True)
    return 1 if failures else 0


def _one_or_list(v: list[float] | None) -> float | list[float] | None:
    if v is None:
        return None
    return v[0] if len(v) == 1 else v


def cmd_inspect(args: argparse.Namespace) -> int:
    info, runtime_version, graph, report = _inspect(args.model, args.runtime, args.multiple_subgraphs)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    _print_inspect(info, runtime_version, graph, report)
    return 0


def _inspect(model: str, runtime: str, multiple: bool = False) -> tuple[dict[str, Any], str, Any, Any]:
    """What ``edged inspect`` reports, as its JSON; the runtime's version, the graph and the Edge TPU report."""
    from . import compat
    from .model import load_model

    data, graph, report = compat.inspect_file(model, multiple)  # not a model / corrupt: the one-line error
    sg = graph.subgraphs[0]
    info: dict[str, Any]
    runtime_version = ""
    try:
        loaded = load_model(model, runtime)
        info = loaded.info.to_dict()
        runtime_version = loaded.runtime.version
    except EdgedError as exc:  # compiled for the Edge TPU, no runtime, not an image model...: still a report
        from pathlib import Path

        p = Path(model)
        info = {
            "path": str(p.resolve()),
            "name": p.name,
            **compat.file_facts(data),
            "runtime": None,
            "task": None,
            "description": graph.description,
            "custom_ops": sorted({n for n, c in (compat.op_name(graph, op) for op in sg.operators) if c}),
            "inputs": [compat.tensor_dict(sg.tensors[i]) for i in sg.inputs],
            "outputs": [compat.tensor_dict(sg.tensors[i]) for i in sg.outputs],
            "interpreter_error": str(exc),
        }
    info["tflite_schema_version"] = graph.version
    info["subgraphs"] = len(graph.subgraphs)
    info["operators"] = [{"operator": n, "count": c} for n, c in compat.operator_counts(graph)]
    info["edgetpu"] = report.to_dict()
    return info, runtime_version, graph, report


def _print_inspect(info: dict[str, Any], runtime_version: str, graph: Any, report: Any) -> None:
    from . import compat
    from .yolo_layout import layout_text

    print(f"model:    {info['path']}")
    print(f"size:     {info['size_bytes']} bytes, sha256 {info['sha256']}")
    if info["runtime"]:
        print(f"runtime:  {info['runtime']} {runtime_version}")
        print(f"task:     {info['task']}{layout_text(info)}")
    else:
        print(f"runtime:  not loaded ({info['interpreter_error']})")
    if info["description"]:
        print(f"about:    {info['description']}")
    if info["custom_ops"]:
        print(f"custom:   {', '.join(info['custom_ops'])}")
    ssd = info.get("ssd_outputs") or {}
    for kind in ("input", "output"):
        for t in info[kind + "s"]:
            q = t["quantization"]
            if "scales" in q:
                lo, hi = min(q["scales"]), max(q["scales"])
                qs = f"per-channel (axis {q['axis']}, {len(q['scales'])} scales {lo:.6g}..{hi:.6g})"
            elif q["scale"]:
                qs = f"scale {q['scale']:.8g}, zero point {q['zero_point']}"
            else:
                qs = "not quantised"
            role = next((f" [{r}]" for r, i in ssd.items() if i == t["index"]), "")
            sig = f" (signature {t['shape_signature']})" if t.get("shape_signature") else ""
            print(f"{kind:7s}  #{t['index']:<4d} {t['name']}{role}: {t['dtype']} {t['shape']}{sig}, {qs}")
    n_ops = sum(o["count"] for o in info["operators"])
    print(
        f"operators: {n_ops} in the main subgraph"
        + (f" ({len(graph.subgraphs)} subgraphs)" if len(graph.subgraphs) > 1 else "")
    )
    for o in info["operators"]:
        print(f"  {o['operator']:<32} {o['count']}")
    for line in compat.format_report(report):
        print(line)


def cmd_config(args: argparse.Namespace) -> int:
    from .config import default_config, dump_config, load_config

    if args.config_command == "default":
        sys.stdout.write(dump_config(default_config()))
        return 0
    if args.config_command == "check":
        cfg = load_config(args.file)
        if not args.no_models:
            from .inference import Engine

            for i, s in enumerate(cfg.streams):
                try:
                    Engine.load(s.model)
                except EdgedError as exc:
                    raise type(exc)(f"{args.file}: streams[{i}].model: {exc}") from None
        print(f"{args.file}: OK ({len(cfg.streams)} stream{'s' if len(cfg.streams) != 1 else ''})")
        return 0
    raise ConfigError("usage: edged config {check FILE|default}")


def cmd_devices(args: argparse.Namespace) -> int:
    import ctypes
    import ctypes.util
    import platform

    from . import edgetpu

    tpus = edgetpu.list_edge_tpus()
    library = edgetpu.default_library()
    found = ctypes.util.find_library("edgetpu") is not None
    if not found:
        try:
            ctypes.CDLL(library)
            found = True
        except OSError:
            pass
    from .doctor.hardware import tpu_findings

    temperatures = {t.selector: edgetpu.read_temperature(t) for t in tpus}
    checks = {t.selector: [f for f in tpu_findings(t) if not f.ok] for t in tpus}  # a slow link, a hot TPU
    if args.json:
        devices = []
        for t in tpus:
            d = t.to_dict()
            if temperatures[t.selector] is not None:
                d["temperature_celsius"] = temperatures[t.selector]
            d["warnings"] = [f.to_dict() for f in checks[t.selector]]
            devices.append(d)
        print(json.dumps({"devices": devices, "library": {"name": library, "found": found}}, indent=2))
        return 0
    for t in tpus:
        parts = [f"{t.selector:<6}", t.path]
        if t.vendor and t.product:
            parts.append(f"{t.vendor}:{t.product}")
        parts += [p for p in (t.description, t.serial and f"serial {t.serial}") if p]
        if temperatures[t.selector] is not None:
            parts.append(f"{temperatures[t.selector]:.1f} °C")
        print("  ".join(parts))
        for f in checks[t.selector]:
            print(f"    {f.status}: {f.message} (`edged doctor` says what to do)")
    if not tpus:
        sys_root, dev_root, _ = edgetpu.discovery_roots()
        ids = " / ".join(f"{v}:{p}" for v, p in edgetpu.USB_IDS)
        print(
            f"no Edge TPU found (looked for USB {ids} in {sys_root / 'bus' / 'usb' / 'devices'} "
            f"and PCIe {dev_root / 'apex_*'})"
        )
    hint = "install Coral's libedgetpu1-std" if platform.system() == "Linux" else "install Coral's Edge TPU runtime"
    print(f"delegate library: {library} ({'found' if found else 'not found: ' + hint})")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import run

    return run(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["run", *(argv or [])])
    if args.command != "run":
        logging.basicConfig(
            level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
        )
    handlers: dict[str, Any] = {
        "run": cmd_run,
        "infer": cmd_infer,
        "inspect": cmd_inspect,
        "config": cmd_config,
        "devices": cmd_devices,
        "doctor": cmd_doctor,
    }
    from .tools import HANDLERS

    handlers.update(HANDLERS)
    try:
        return handlers[args.command](args)
    except EdgedError as exc:
        if args.debug:
            raise
        from .logs import stderr_is_journal

        # (under systemd: at error priority in the journal, like the log lines)
        print(f"{'<3>' if stderr_is_journal() else ''}edged: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
