"""``edged doctor``: every check of the board, the software and a configuration, one line each.

:func:`collect` runs them in order: the hardware (:mod:`.hardware`: the TPUs, their USB link,
device nodes against the user edged runs as, the PCIe driver, the kernel, temperatures), the
runtimes and libedgetpu (:mod:`.runtimes`), a delegate load and test inference per TPU, and with
``--config`` the configuration and where each stream's model runs (:mod:`.placement`).
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from .findings import INFO, PROBLEM, WARNING, Finding, exit_code, render_json, render_text

if TYPE_CHECKING:
    from ..edgetpu import EdgeTpu
    from .hardware import User

UNIT_PATHS = (
    Path("/etc/systemd/system/edged.service"),
    Path("/lib/systemd/system/edged.service"),
    Path("/usr/lib/systemd/system/edged.service"),
)


@dataclass(frozen=True)
class Options:
    """What ``edged doctor`` is asked (its command-line options); tests set the roots and unit paths."""

    config: Optional[str] = None
    user: Optional[str] = None
    library: Optional[str] = None
    device: Optional[str] = None  # forces a delegate test on this selector (even with no TPU found)
    deadline: float = 30.0
    sysfs_root: Optional[Path] = None
    dev_root: Optional[Path] = None
    boot_root: Optional[Path] = None  # a Pi 5's config.txt is read under it (default EDGED_BOOT_ROOT, /boot)
    unit_paths: Sequence[Path] = field(default=UNIT_PATHS)


def unit_user(paths: Sequence[Path] = UNIT_PATHS) -> tuple[Optional[str], Optional[Path]]:
    """(``User=`` of the first installed unit's [Service] section, that unit); (None, unit or None)."""
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        section, user = None, None
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
            elif section == "Service" and (m := re.fullmatch(r"User\s*=\s*(\S*)", line)):
                user = m.group(1) or None  # the last assignment wins, an empty one resets
        return user, path
    return None, None


def resolve_user(options: Options) -> tuple[User, Finding]:
    """(the :class:`~.hardware.User` whose access is checked, the "user" finding)."""
    from .hardware import lookup_user

    current = lookup_user(pwd.getpwuid(os.getuid()).pw_name, "the current user")
    assert current is not None
    if options.user:
        user = lookup_user(options.user, "--user")
        if user is None:
            return current, Finding("user", PROBLEM, f"no such user {options.user!r}: checking {current.name} instead")
        return user, Finding("user", INFO, f"device access checked for {user.name} (--user)")
    name, unit = unit_user(options.unit_paths)
    if name is not None and unit is not None:
        user = lookup_user(name, f"the User= of {unit}")
        if user is None:
            text = f"{unit} runs edged as {name!r}, which does not exist: checking {current.name} instead"
            return current, Finding("user", WARNING, text, "create the account (install.sh does) or fix User=")
        return user, Finding("user", INFO, f"device access checked for {user.name} (User= of {unit})")
    where = f"{unit} has no User=" if unit else "no edged unit installed"
    return current, Finding("user", INFO, f"device access checked for {current.name}, the current user ({where})")


def _tpus(options: Options, found: list[EdgeTpu], held: set[str]) -> list[Union[EdgeTpu, str]]:
    """What the delegate test runs on: ``--device`` (the TPU found under it, else the bare selector), else every
    TPU no other process holds (``held``: their selectors)."""
    if not options.device:
        return [t for t in found if t.selector not in held]
    from ..edgetpu import select

    tpu = select(found, options.device)
    return [tpu if tpu is not None else options.device]


def collect(options: Options) -> list[Finding]:
    """Every finding, board first, then the software, the delegate tests and the configuration."""
    from ..edgetpu import discovery_roots, list_edge_tpus
    from . import placement, runtimes
    from .hardware import hardware_findings

    sys_r, dev_r, _ = discovery_roots(options.sysfs_root, options.dev_root)
    user, user_finding = resolve_user(options)
    tpus = list_edge_tpus(sys_r, dev_r, use_pycoral=False)  # pycoral would load libedgetpu in this process
    out = [user_finding, *hardware_findings(user, None, sys_r, dev_r, tpus, options.boot_root)]
    cfg = None
    if options.config:
        cfg, config_finding = placement.load(options.config)
        out.append(config_finding)
    tcfg = cfg.edgetpu if cfg is not None else None
    runtime = tcfg.runtime if tcfg is not None else "auto"
    library = options.library or (tcfg.library if tcfg is not None else None)
    held = {f.tpu for f in out if f.check == "in-use" and f.details.get("holders") and f.tpu}
    out += runtimes.runtime_findings()
    lib = runtimes.probe_library(library)
    needed = bool(tpus) or bool(options.device) or placement.wants_tpu(cfg)
    out.append(runtimes.library_finding(lib, needed, runtime))
    models = placement.tpu_models(cfg, tpus) if cfg is not None else None
    rt = runtimes.worker_runtime(runtime)
    chosen = _tpus(options, tpus, held)
    tested = (  # every TPU found is held: the in-use findings say why no test ran
        runtimes.delegate_findings(
            chosen, library or lib.name, rt[0] if rt else runtime, options.deadline, models, sys_r, dev_r
        )
        if chosen or not tpus
        else []
    )
    again = {f.tpu for f in tested if f.check == "usb-state"}  # the state after the load replaces the one before
    out = [f for f in out if not (f.check == "usb-state" and f.tpu in again)] + tested
    if cfg is not None:
        out += placement.placement_findings(cfg, tpus)
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="the findings as JSON")
    p.add_argument("--config", "-c", metavar="FILE", help="also check this configuration and where its streams run")
    p.add_argument("--user", metavar="NAME", help="check device access for this user (default: the unit's User=)")
    p.add_argument("--library", metavar="PATH", help="the delegate library (default: libedgetpu.so.1)")
    p.add_argument("--device", metavar="SEL", help="run the delegate test on this selector even with no TPU found")
    p.add_argument("--deadline", type=float, default=30.0, metavar="S", help="seconds for each delegate test (30)")


def run(args: argparse.Namespace) -> int:
    """The ``edged doctor`` command: print the findings; 1 when one is a problem."""
    from ..edgetpu import parse_selector
    from ..errors import ConfigError

    if args.device:
        parse_selector(args.device)  # a malformed selector is a one-line error
    if args.deadline <= 0:
        raise ConfigError("--deadline must be more than 0 seconds")
    options = Options(args.config, args.user, args.library, args.device, args.deadline)
    findings = collect(options)
    print(render_json(findings) if args.json else render_text(findings), flush=True)
    return exit_code(findings)
