"""What the Edge TPU worker hand-off costs per frame, against in-process inference.

    python bench/handoff.py [--frames 300] [--model PATH] [--threads 2]

The same model (default: the 300x300 SSD of ../shared/testdata) runs (a) in-process, as
the CPU path does, and (b) in edged's worker process behind the stand-in delegate of
tests/fake_edgetpu (compiled here with cc; it claims no nodes, so the worker runs the
same CPU kernels): frames preprocessed into shared memory, the request and the outputs
over the pipe. Interleaved frame by frame; reports the median total per frame of each and
the difference, and the hand-off measured directly: round trip minus the child's own
invoke time. Not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edged.config import ModelConfig  # noqa: E402
from edged.inference.local import Engine, WorkerBackend  # noqa: E402
from edged.worker import DeviceWorker  # noqa: E402


def main() -> None:
    td = Path(os.environ.get("EDGED_TESTDATA", ROOT.parent / "shared" / "testdata"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=str(td / "models" / "ssd_mobilenet_v1_coco_quant_postprocess.tflite"))
    ap.add_argument("--runtime", default="auto")
    args = ap.parse_args()
    frame = cv2.imread(str(td / "images" / "cat_720p.jpg"))
    with tempfile.TemporaryDirectory() as tmp:
        lib = Path(tmp) / "libfake_edgetpu.so"
        subprocess.run(
            ["cc", "-shared", "-fPIC", "-O2", "-o", lib, ROOT / "tests/fake_edgetpu/fake_edgetpu.c"], check=True
        )
        model = Path(tmp) / Path(args.model).name
        shutil.copy(args.model, model)
        opts = ModelConfig(path=str(model), runtime=args.runtime, threads=args.threads)
        local = Engine.load(opts)
        worker = DeviceWorker("bench", None, str(lib), runtime=local.info.runtime, deadline=5.0)
        worker.register("s", str(model), args.threads)
        worker.start()
        remote = Engine(opts, WorkerBackend(worker, "s"))
        inline, handed, overhead = [], [], []
        try:
            for i in range(args.frames + 20):
                t0 = time.perf_counter()
                local.process(frame)
                t1 = time.perf_counter()
                remote.process(frame)
                t2 = time.perf_counter()
                # the hand-off alone: a bare round trip minus the child's own invoke time
                t3 = time.perf_counter()
                _, child_invoke = worker.infer("s")
                t4 = time.perf_counter()
                if i >= 20:  # warm-up
                    inline.append(t1 - t0)
                    handed.append(t2 - t1)
                    overhead.append((t4 - t3) - child_invoke)
        finally:
            worker.close()
    med = statistics.median
    shape = "x".join(str(d) for d in local.info.input.shape[1:])
    print(
        f"{Path(args.model).name} ({shape} input), runtime {local.info.runtime}, {args.threads} threads, "
        f"{args.frames} frames of 1280x720, medians:"
    )
    print(f"  in-process:        {med(inline) * 1e3:.3f} ms per frame")
    print(
        f"  worker process:    {med(handed) * 1e3:.3f} ms per frame  "
        f"(difference {(med(handed) - med(inline)) * 1e3:+.3f} ms, ratio {med(handed) / med(inline):.3f})"
    )
    print(
        f"  hand-off alone:    {med(overhead) * 1e3:.3f} ms (round trip minus the child's invoke; "
        f"p90 {sorted(overhead)[int(0.9 * len(overhead))] * 1e3:.3f} ms)"
    )


if __name__ == "__main__":
    main()
