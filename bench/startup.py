"""What a one-shot command costs to start: ``edged infer`` (and ``edged inspect``) against the floor.

    python bench/startup.py [--rounds 5] [--model FILE] [--image FILE] [--testdata DIR] [--no-inspect]
                            [--compare SOURCE_TREE]

Each round runs, interleaved so that a busy machine slows every command alike:

* ``baseline``: ``python -c`` importing the runtime (ai_edge_litert), loading the model and one
  invoke: what any one-shot inference needs at least (no image read, no preprocessing);
* ``infer``: ``python -m edged infer -m MODEL IMAGE``, the whole command;
* ``inspect``: ``python -m edged inspect MODEL``;
* with ``--compare DIR``, the same two commands run from another source tree (e.g. a worktree of
  main: before and after a change, in the same rounds).

The commands run as an installed edged would: with bytecode caches (in a temporary
``PYTHONPYCACHEPREFIX``, so the tree stays clean, and written even when the environment sets
``PYTHONDONTWRITEBYTECODE``), unless ``--no-bytecode-cache``.

Prints the median and the spread (min..max) of each command's wall time and CPU time (user +
system, which other work on a busy machine disturbs less) in milliseconds, and the ratio of
the medians to the baseline. Not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = (
    "from ai_edge_litert.interpreter import Interpreter\n"
    "it = Interpreter(model_path={model!r})\n"
    "it.allocate_tensors()\n"
    "it.invoke()\n"
)


def _testdata(arg: str | None) -> Path:
    return Path(arg or os.environ.get("EDGED_TESTDATA") or ROOT.parent / "shared" / "testdata")


def _run_ms(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """The wall time and the CPU time (user + system) of one run, in ms."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(
        argv,
        env=env,
        cwd=env["PYTHONPATH"].split(os.pathsep)[0],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    ms = (time.perf_counter() - t0) * 1e3
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)}: exit {done.returncode}\n{done.stderr}")
    return ms, (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (at least 3)")
    ap.add_argument("--testdata", help="reference data folder (default: $EDGED_TESTDATA or ../shared/testdata)")
    ap.add_argument("--model", help="model (default: the testdata's mobilenet_v2_1.0_224_quant.tflite)")
    ap.add_argument("--image", help="image (default: the testdata's grace_hopper.bmp)")
    ap.add_argument("--accelerator", default="auto", choices=("auto", "cpu", "edgetpu"), help="edged infer's")
    ap.add_argument("--no-inspect", action="store_true", help="do not time edged inspect")
    ap.add_argument("--compare", metavar="DIR", help="another source tree of edged, timed in the same rounds")
    ap.add_argument("--no-bytecode-cache", action="store_true", help="keep the environment's bytecode settings")
    args = ap.parse_args()
    data = _testdata(args.testdata)
    model = args.model or str(data / "models" / "mobilenet_v2_1.0_224_quant.tflite")
    image = args.image or str(data / "images" / "grace_hopper.bmp")
    base_env = dict(os.environ)
    if not args.no_bytecode_cache:
        base_env.pop("PYTHONDONTWRITEBYTECODE", None)
        base_env["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="edged-startup-pycache-")
    trees = {"": ROOT} | ({"@" + Path(args.compare).name: Path(args.compare).resolve()} if args.compare else {})
    py = sys.executable
    commands: dict[str, tuple[list[str], dict[str, str]]] = {}
    for suffix, tree in trees.items():
        env = {**base_env, "PYTHONPATH": str(tree) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        if not suffix:
            commands["baseline"] = ([py, "-c", BASELINE.format(model=model)], env)
        commands["infer" + suffix] = (
            [py, "-m", "edged", "infer", "--accelerator", args.accelerator, "-m", model, image],
            env,
        )
        if not args.no_inspect:
            commands["inspect" + suffix] = ([py, "-m", "edged", "inspect", model], env)
    for argv, env in commands.values():  # warm the page cache and the bytecode caches; not counted
        _run_ms(argv, env)
    times: dict[str, list[float]] = {name: [] for name in commands}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(max(3, args.rounds)):
        for name, (argv, env) in commands.items():
            wall, used = _run_ms(argv, env)
            times[name].append(wall)
            cpu[name].append(used)
    print(f"model {model}, image {image}, {max(3, args.rounds)} rounds, in ms")
    for label, series in (("wall time", times), ("CPU time (user + system; steadier on a busy machine)", cpu)):
        print(label)
        base = statistics.median(series["baseline"])
        for name, ms in series.items():
            med = statistics.median(ms)
            ratio = f"{med / base:.2f}x baseline" if name != "baseline" else ""
            print(f"  {name:<20} median {med:7.1f}  spread {min(ms):7.1f} .. {max(ms):7.1f}  {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
