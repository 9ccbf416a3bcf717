"""The stand-in libedgetpu (``tests/fake_edgetpu/fake_edgetpu.c``), compiled with the system C compiler.

Two builds of the one source: the default loads and claims no nodes (so a worker's interpreter
runs a plain model on the CPU behind it); ``refuse=True`` (``-DFAKE_REFUSE``) refuses to load,
as libedgetpu does with no Edge TPU plugged in. See the source's header for what it logs and for
``EDGED_FAKE_FAULT_FILE`` (a TPU that aborts or hangs right after each probe, or while the
delegate loads: ``load-abort``, ``load-hang``). Both export
``edgetpu_version()``, returning :data:`VERSION`.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

VERSION = "BuildLabel(COMPILER=fake-edgetpu,DATE=redacted,TIME=redacted,CL_NUMBER=0), RuntimeVersion(14)"
SOURCE = Path(__file__).resolve().parent.parent / "fake_edgetpu" / "fake_edgetpu.c"


def compiler() -> str | None:
    """The system C compiler (cc or gcc), None without one."""
    return shutil.which("cc") or shutil.which("gcc")


def build(out_dir: Path, refuse: bool = False, cc: str | None = None) -> Path:
    """Compile the stand-in into ``out_dir`` (warnings are errors); the path of the library."""
    cc = cc or compiler()
    assert cc, "a C compiler (cc) is needed to build the stand-in delegate; .ci/run installs gcc"
    lib = out_dir / ("libfake_refuse.so" if refuse else "libfake_edgetpu.so")
    flags = ["-DFAKE_REFUSE"] if refuse else []
    cmd = [cc, "-shared", "-fPIC", "-pthread", "-Wall", "-Werror", *flags, "-o", str(lib), str(SOURCE)]
    subprocess.run(cmd, check=True)
    return lib
