"""Finding Edge TPUs without pycoral: a fake sysfs and /dev tree in tmp_path is the boundary.

The tree holds what the kernel shows for two USB Corals (one before and one after
libedgetpu loaded its firmware), an unrelated USB hub, and two PCIe Corals (apex driver),
one of which reports its temperature.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from edged import edgetpu
from edged.edgetpu import EdgeTpu, list_edge_tpus, model_pair, parse_selector, read_temperature, select
from edged.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _usb(sys_root: Path, name: str, id_vendor: str, id_product: str, **strings: str) -> Path:
    """A USB device directory; ``strings`` are its other sysfs attributes (manufacturer, product, serial)."""
    d = sys_root / "bus" / "usb" / "devices" / name
    _write(d / "idVendor", id_vendor)
    _write(d / "idProduct", id_product)
    for key, value in strings.items():
        _write(d / key, value)
    return d


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    sys_root, dev_root = tmp_path / "sys", tmp_path / "dev"
    # created out of order on purpose: the list is sorted, not in creation order
    _usb(sys_root, "3-1", "1a6e\n", "089a\n")  # before firmware load: no strings in sysfs
    _usb(sys_root, "2-1", "18D1\n", "9302\n", manufacturer="Google Inc.\n", serial="0123456789ab\n")
    _usb(sys_root, "usb1", "1d6b\n", "0002\n", manufacturer="Linux Foundation\n", product="2.0 root hub\n")
    (sys_root / "bus" / "usb" / "devices" / "2-1:1.0").mkdir()  # an interface: no idVendor
    apex = sys_root / "class" / "apex"
    _write(apex / "apex_0" / "temp", "52750\n")
    _write(apex / "apex_0" / "device" / "vendor", "0x1ac1\n")
    _write(apex / "apex_0" / "device" / "device", "0x089a\n")
    (apex / "apex_1").mkdir(parents=True)
    for name in ("apex_1", "apex_0", "apexfoo", "null"):
        _write(dev_root / name, "")
    return sys_root, dev_root


def _expected(sys_root: Path, dev_root: Path) -> list[EdgeTpu]:
    usb = sys_root / "bus" / "usb" / "devices"
    temp = sys_root / "class" / "apex" / "apex_0" / "temp"
    return [
        EdgeTpu("pci", 0, str(dev_root / "apex_0"), "1ac1", "089a", None, "Coral PCIe Edge TPU", str(temp)),
        EdgeTpu("pci", 1, str(dev_root / "apex_1"), description="Coral PCIe Edge TPU"),
        EdgeTpu("usb", 0, str(usb / "2-1"), "18d1", "9302", "0123456789ab", "Google Inc."),
        EdgeTpu("usb", 1, str(usb / "3-1"), "1a6e", "089a", None, "Global Unichip (Coral USB, before firmware load)"),
    ]


# --------------------------------------------------------------------------- discovery


def test_lists_every_coral_pcie_first_then_usb(tree: tuple[Path, Path]) -> None:
    sys_root, dev_root = tree
    tpus = list_edge_tpus(sys_root, dev_root)
    assert tpus == _expected(sys_root, dev_root)
    assert [t.selector for t in tpus] == ["pci:0", "pci:1", "usb:0", "usb:1"]
    assert all(t.source == "sysfs" for t in tpus)


def test_environment_roots_are_the_default(tree: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    sys_root, dev_root = tree
    monkeypatch.setenv("EDGED_SYSFS_ROOT", str(sys_root))
    monkeypatch.setenv("EDGED_DEV_ROOT", str(dev_root))
    assert list_edge_tpus() == _expected(sys_root, dev_root)


def test_pcie_from_either_the_device_node_or_the_sysfs_class(tmp_path: Path) -> None:
    sys_root, dev_root = tmp_path / "sys", tmp_path / "dev"
    _write(dev_root / "apex_3", "")  # node only (e.g. sysfs class not shown in a container)
    _write(sys_root / "class" / "apex" / "apex_5" / "temp", "41000")  # driver loaded, no /dev node
    tpus = list_edge_tpus(sys_root, dev_root)
    assert [(t.selector, t.path) for t in tpus] == [
        ("pci:0", str(dev_root / "apex_3")),
        ("pci:1", str(dev_root / "apex_5")),
    ]
    assert tpus[0].temperature_path is None and tpus[0].description == "Coral PCIe Edge TPU"
    assert read_temperature(tpus[1]) == 41.0
    assert tpus[1].description is not None and f"no device node {dev_root / 'apex_5'}" in tpus[1].description


def test_missing_or_empty_trees_find_nothing(tmp_path: Path) -> None:
    assert list_edge_tpus(tmp_path / "nope", tmp_path / "nope-dev") == []
    _usb(tmp_path / "sys", "1-1", "1d6b", "0003")
    assert list_edge_tpus(tmp_path / "sys", tmp_path / "sys") == []


def test_usb_strings_make_the_description(tmp_path: Path) -> None:
    _usb(tmp_path, "1-1.3", "18d1", "9302", manufacturer="Google Inc.", product=" Coral \n", serial="")
    (tpu,) = list_edge_tpus(tmp_path, tmp_path / "dev")
    assert (tpu.description, tpu.serial) == ("Google Inc. Coral", None)


def test_to_dict_is_json_with_the_selector(tree: tuple[Path, Path]) -> None:
    tpu = list_edge_tpus(*tree)[2]
    d = json.loads(json.dumps(tpu.to_dict()))
    assert d == {
        "type": "usb",
        "index": 0,
        "path": str(tree[0] / "bus" / "usb" / "devices" / "2-1"),
        "vendor": "18d1",
        "product": "9302",
        "serial": "0123456789ab",
        "description": "Google Inc.",
        "temperature_path": None,
        "source": "sysfs",
        "selector": "usb:0",
    }


# --------------------------------------------------------------------------- pycoral


def _fake_pycoral(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    """Coral's pycoral as an importable package whose list_edge_tpus runs ``body``."""
    pkg = tmp_path / "site" / "pycoral"
    _write(pkg / "__init__.py", "")
    _write(pkg / "utils" / "__init__.py", "")
    _write(pkg / "utils" / "edgetpu.py", f"def list_edge_tpus():\n    {body}\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in ("pycoral", "pycoral.utils", "pycoral.utils.edgetpu"):  # a fresh import for each test
        monkeypatch.delitem(sys.modules, name, raising=False)
    for name in ("pycoral", "pycoral.utils", "pycoral.utils.edgetpu"):  # ...and gone again after it
        monkeypatch.setitem(sys.modules, name, importlib.import_module(name))
    monkeypatch.delenv("EDGED_SYSFS_ROOT", raising=False)
    monkeypatch.delenv("EDGED_DEV_ROOT", raising=False)


def test_pycoral_list_is_used_when_it_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_pycoral(
        tmp_path,
        monkeypatch,
        "return [{'type': 'usb', 'path': '/sys/bus/usb/devices/9-9.9.9'}, {'type': 'pci', 'path': '/dev/apex_7'},"
        " {'type': 'usb', 'path': '/sys/bus/usb/devices/9-8.8.8'}]",
    )
    tpus = list_edge_tpus()
    assert [(t.selector, t.path, t.source) for t in tpus] == [
        ("usb:0", "/sys/bus/usb/devices/9-9.9.9", "pycoral"),
        ("pci:0", "/dev/apex_7", "pycoral"),
        ("usb:1", "/sys/bus/usb/devices/9-8.8.8", "pycoral"),
    ]
    assert select(tpus, ":1") is tpus[1]  # ':N' follows libedgetpu's own list when pycoral gives it
    assert list_edge_tpus(use_pycoral=False) != tpus


def test_pycoral_is_skipped_when_roots_are_overridden(
    tree: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_pycoral(tmp_path, monkeypatch, "return [{'type': 'usb', 'path': '/sys/bus/usb/devices/9-9'}]")
    assert list_edge_tpus(*tree) == _expected(*tree)
    monkeypatch.setenv("EDGED_SYSFS_ROOT", str(tree[0]))
    monkeypatch.setenv("EDGED_DEV_ROOT", str(tree[1]))
    assert list_edge_tpus() == _expected(*tree)


@pytest.mark.parametrize(
    "body",
    ["raise RuntimeError('libedgetpu.so.1: cannot open shared object file')", "return [{'type': 'gpu', 'path': 'x'}]"],
)
def test_a_failing_pycoral_falls_back_to_sysfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    _fake_pycoral(tmp_path, monkeypatch, body)
    tpus = list_edge_tpus()
    assert all(t.source == "sysfs" for t in tpus)
    assert tpus == list_edge_tpus(use_pycoral=False)


# --------------------------------------------------------------------------- selectors


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        (None, (None, None)),
        ("", (None, None)),
        ("usb", ("usb", None)),
        ("usb:0", ("usb", 0)),
        ("usb:12", ("usb", 12)),
        ("pci", ("pci", None)),
        ("pci:1", ("pci", 1)),
        (":0", (None, 0)),
        (":3", (None, 3)),
    ],
)
def test_parse_selector_forms(value: str | None, parsed: tuple[str | None, int | None]) -> None:
    assert parse_selector(value) == parsed


@pytest.mark.parametrize(
    "value",
    [
        "usb:x",
        "gpu",
        "pci:-1",
        "usb:0:1",
        "USB",
        "usb:",
        ":",
        "pci:",
        " usb",
        "usb:1 ",
        "usb:+1",
        "usb\n:0",
        "usb:1\n",
        "pci:1e3",
        "pci:4294967296",
        "tpu:0",
        "usb0",
    ],
)
def test_parse_selector_refuses_anything_else_in_one_line(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_selector(value)
    msg = str(info.value)
    assert "\n" not in msg
    assert repr(value) in msg
    for form in ("'usb'", "'usb:N'", "'pci'", "'pci:N'", "':N'"):
        assert form in msg
    with pytest.raises(ConfigError):
        select([], value)


@pytest.mark.parametrize(
    ("value", "selector"),
    [
        (None, "pci:0"),  # any: libedgetpu opens PCIe before USB
        ("", "pci:0"),
        ("usb", "usb:0"),
        ("usb:0", "usb:0"),
        ("usb:1", "usb:1"),
        ("usb:2", None),
        ("pci", "pci:0"),
        ("pci:0", "pci:0"),
        ("pci:1", "pci:1"),
        ("pci:2", None),
        (":0", "pci:0"),  # ':N' indexes EnumerateEdgeTpu(): PCIe first, then USB
        (":1", "pci:1"),
        (":2", "usb:0"),
        (":3", "usb:1"),
        (":4", None),
    ],
)
def test_select_every_form(tree: tuple[Path, Path], value: str | None, selector: str | None) -> None:
    found = select(list_edge_tpus(*tree), value)
    assert (found.selector if found else None) == selector


def test_select_falls_back_to_usb_and_finds_nothing_in_nothing(tree: tuple[Path, Path]) -> None:
    usb_only = [t for t in list_edge_tpus(*tree) if t.type == "usb"]
    assert select(usb_only, None) is usb_only[0]
    assert select(usb_only, ":1") is usb_only[1]
    assert select(usb_only, "pci") is None
    for value in (None, "", "usb", "pci", ":0", "usb:0"):
        assert select([], value) is None


# --------------------------------------------------------------------------- temperature


def test_temperatures(tree: tuple[Path, Path]) -> None:
    tpus = list_edge_tpus(*tree)
    temp = tree[0] / "class" / "apex" / "apex_0" / "temp"
    assert tpus[0].temperature_path == str(temp)
    assert read_temperature(tpus[0]) == 52.75
    assert read_temperature(str(temp)) == 52.75
    assert read_temperature(temp) == 52.75
    assert tpus[1].temperature_path is None and read_temperature(tpus[1]) is None
    assert read_temperature(tpus[2]) is None  # USB Corals have no sensor in sysfs


@pytest.mark.parametrize(("text", "celsius"), [("45250\n", 45.25), ("-1500", -1.5), ("0", 0.0)])
def test_read_temperature_millidegrees(tmp_path: Path, text: str, celsius: float) -> None:
    _write(tmp_path / "temp", text)
    assert read_temperature(tmp_path / "temp") == celsius


@pytest.mark.parametrize("text", ["abc", "", "45.25", "45250 mC", "\x00\xff"])
def test_read_temperature_garbled_is_none(tmp_path: Path, text: str) -> None:
    (tmp_path / "temp").write_bytes(text.encode("latin-1"))
    assert read_temperature(tmp_path / "temp") is None


def test_read_temperature_absent_is_none(tmp_path: Path) -> None:
    assert read_temperature(tmp_path / "missing") is None
    assert read_temperature(str(tmp_path)) is None  # a directory
    assert read_temperature(EdgeTpu("pci", 0, "/dev/apex_0", temperature_path=str(tmp_path / "gone"))) is None


# --------------------------------------------------------------------------- library, models


@pytest.mark.parametrize(
    ("system", "name"),
    [
        ("Linux", "libedgetpu.so.1"),
        ("Darwin", "libedgetpu.1.dylib"),
        ("Windows", "edgetpu.dll"),
        ("FreeBSD", "libedgetpu.so.1"),
    ],
)
def test_default_library(monkeypatch: pytest.MonkeyPatch, system: str, name: str) -> None:
    monkeypatch.setattr(platform, "system", lambda: system)
    assert edgetpu.default_library() == name


def test_model_pair_compiled_model(tmp_path: Path) -> None:
    tpu, cpu = tmp_path / "foo_edgetpu.tflite", tmp_path / "foo.tflite"
    tpu.write_bytes(b"x")
    assert model_pair(tpu) == (tpu, None)  # no twin beside it
    assert model_pair(str(tpu)) == (tpu, None)
    cpu.write_bytes(b"x")
    assert model_pair(tpu) == (tpu, cpu)
    other = tmp_path / "elsewhere.tflite"
    assert model_pair(tpu, other) == (tpu, other)  # an explicit CPU model wins over the twin
    assert model_pair(str(tpu), str(other)) == (tpu, other)


def test_model_pair_plain_model(tmp_path: Path) -> None:
    cpu, tpu = tmp_path / "foo.tflite", tmp_path / "foo_edgetpu.tflite"
    cpu.write_bytes(b"x")
    assert model_pair(cpu) == (None, cpu)
    assert model_pair(str(cpu), tmp_path / "bar.tflite") == (None, tmp_path / "bar.tflite")
    tpu.mkdir()  # a directory of that name is not a model
    assert model_pair(cpu) == (None, cpu)
    tpu.rmdir()
    tpu.write_bytes(b"x")
    assert model_pair(cpu) == (tpu, cpu)
    assert model_pair(cpu, tmp_path / "bar.tflite") == (tpu, tmp_path / "bar.tflite")


# --------------------------------------------------------------------------- edged devices


def _devices(sys_root: Path, dev_root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "EDGED_SYSFS_ROOT": str(sys_root),
        "EDGED_DEV_ROOT": str(dev_root),
        "PYTHONIOENCODING": "utf-8",
    }
    return subprocess.run(
        [sys.executable, "-m", "edged", "devices", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
        cwd=ROOT,
        env=env,
    )


@pytest.mark.system  # edged in a subprocess
def test_cli_devices_lists_them(tree: tuple[Path, Path]) -> None:
    sys_root, dev_root = tree
    proc = _devices(sys_root, dev_root)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    usb = sys_root / "bus" / "usb" / "devices"
    assert lines[0].split() == [
        "pci:0",
        str(dev_root / "apex_0"),
        "1ac1:089a",
        "Coral",
        "PCIe",
        "Edge",
        "TPU",
        "52.8",
        "°C",
    ]
    assert lines[1].split() == ["pci:1", str(dev_root / "apex_1"), "Coral", "PCIe", "Edge", "TPU"]
    assert lines[2].startswith(f"usb:0   {usb / '2-1'}  18d1:9302  Google Inc.  serial 0123456789ab")
    assert lines[3].startswith(f"usb:1   {usb / '3-1'}  1a6e:089a  Global Unichip (Coral USB, before firmware load)")
    assert lines[4].startswith(f"delegate library: {edgetpu.default_library()} (")
    assert lines[4].endswith("(found)") or lines[4].endswith("(not found: install Coral's libedgetpu1-std)")
    assert len(lines) == 5
    assert "no Edge TPU found" not in proc.stdout


@pytest.mark.system  # edged in a subprocess
def test_cli_devices_json(tree: tuple[Path, Path]) -> None:
    proc = _devices(*tree, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) == {"devices", "library"}
    expected = [t.to_dict() for t in _expected(*tree)]
    expected[0]["temperature_celsius"] = 52.75  # only where a sensor is readable
    for d in expected:
        d["warnings"] = []  # 52.75 °C is cool; these USB trees have no link speed
    assert out["devices"] == expected
    assert out["library"]["name"] == edgetpu.default_library()
    assert isinstance(out["library"]["found"], bool)


@pytest.mark.system  # edged in a subprocess
def test_cli_devices_warns_of_a_hot_tpu_and_a_usb2_link(tree: tuple[Path, Path]) -> None:
    sys_root, dev_root = tree
    (sys_root / "class" / "apex" / "apex_0" / "temp").write_text("91200\n")  # past the default 85 and 90 °C
    _write(sys_root / "bus" / "usb" / "devices" / "2-1" / "speed", "480\n")
    proc = _devices(sys_root, dev_root)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "91.2 °C" in lines[0]
    assert lines[1].startswith("    warning: 91.2 °C: throttled to 125 MHz of 500 (throttles at 85, 90, 95 °C)")
    assert lines[4].startswith("    warning: on a USB 2 link (480 Mb/s)")
    warnings = {
        d["selector"]: [w["check"] for w in d["warnings"]]
        for d in json.loads(_devices(*tree, "--json").stdout)["devices"]
    }
    assert warnings == {"pci:0": ["temperature"], "pci:1": [], "usb:0": ["usb-link"], "usb:1": []}


@pytest.mark.system  # edged in a subprocess
def test_cli_devices_none_found_is_not_an_error(tmp_path: Path) -> None:
    sys_root, dev_root = tmp_path / "sys", tmp_path / "dev"
    _usb(sys_root, "usb1", "1d6b", "0002")
    proc = _devices(sys_root, dev_root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == (
        f"no Edge TPU found (looked for USB 1a6e:089a / 18d1:9302 in {sys_root / 'bus' / 'usb' / 'devices'} "
        f"and PCIe {dev_root / 'apex_*'})"
    )
    assert proc.stdout.splitlines()[1].startswith("delegate library: ")
    assert proc.stderr == ""
    proc = _devices(sys_root, dev_root, "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["devices"] == []
