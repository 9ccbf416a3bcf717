"""edged.tracking.SnapshotStore: the JPEG written atomically, its limits (files, bytes, age), errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

import cv2
import numpy as np
import pytest

from edged.result import Box
from edged.tracking import SnapshotError, SnapshotStore

BOX = Box(20, 30, 60, 90)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (120, 160, 3), dtype=np.uint8)


def store(tmp_path: Path, clock: Clock, files: int = 100, size: int = 10**9, age: float = 3600) -> SnapshotStore:
    return SnapshotStore(tmp_path / "snap", files, size, age, clock=clock)


def names(tmp_path: Path) -> List[str]:
    return sorted(str(p.relative_to(tmp_path / "snap")) for p in (tmp_path / "snap").rglob("*") if p.is_file())


def test_save_writes_the_jpeg_with_the_box_drawn(tmp_path: Path) -> None:
    s = store(tmp_path, Clock())
    img = np.zeros((120, 160, 3), np.uint8)
    path = s.save("cam", "1.000000-abcdef", img, BOX, "person", 0.9)
    assert path == tmp_path / "snap" / "cam" / "1.000000-abcdef.jpg"
    decoded = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (120, 160, 3)
    assert decoded[60, 20].max() > 100 and decoded[100, 140].max() < 30  # the box's edge drawn, the rest black
    assert img.max() == 0  # the caller's frame untouched
    assert s.latest("cam") == path and s.latest("other") is None
    assert names(tmp_path) == ["cam/1.000000-abcdef.jpg"]


def test_oldest_files_go_past_max_files(tmp_path: Path) -> None:
    clock = Clock()
    s = store(tmp_path, clock, files=3)
    for i in range(5):
        clock.now += 1
        s.save("cam" if i % 2 else "door", f"e{i}", image(i), BOX, "car", 0.5)
    assert names(tmp_path) == ["cam/e3.jpg", "door/e2.jpg", "door/e4.jpg"]
    assert s.latest("cam") == tmp_path / "snap" / "cam" / "e3.jpg"


def test_oldest_files_go_past_max_bytes(tmp_path: Path) -> None:
    clock = Clock()
    one = store(tmp_path / "probe", clock).save("cam", "x", image(0), BOX, "car", 0.5).stat().st_size
    s = store(tmp_path, clock, size=int(one * 2.5))
    for i in range(4):
        clock.now += 1
        s.save("cam", f"e{i}", image(0), BOX, "car", 0.5)
    assert names(tmp_path) == ["cam/e2.jpg", "cam/e3.jpg"]
    assert s.total_bytes == 2 * one


def test_files_older_than_max_age_go_also_those_found_at_start(tmp_path: Path) -> None:
    clock = Clock()
    s = store(tmp_path, clock, age=100)
    s.save("cam", "old", image(1), BOX, "car", 0.5)
    clock.now += 60
    s.save("cam", "mid", image(2), BOX, "car", 0.5)
    clock.now += 50  # old is 110 s old
    s.save("cam", "new", image(3), BOX, "car", 0.5)
    assert names(tmp_path) == ["cam/mid.jpg", "cam/new.jpg"]
    stale = tmp_path / "snap" / "door" / "stale.jpg"
    stale.parent.mkdir()
    stale.write_bytes(b"x")
    os.utime(stale, (clock.now - 1000, clock.now - 1000))
    (tmp_path / "snap" / "door" / ".left.jpg.123.tmp").write_bytes(b"partial")
    again = store(tmp_path, clock, age=100)  # a restart: reads what is there
    assert again.prune() == 1
    assert names(tmp_path) == ["cam/mid.jpg", "cam/new.jpg"]  # the stale file and the leftover temp file gone


def test_saving_again_replaces_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = store(tmp_path, Clock())
    path = s.save("cam", "e", image(1), BOX, "car", 0.5)
    first = path.read_bytes()
    seen: List[str] = []
    real = os.replace

    def replace(src: str, dst: str) -> None:
        seen.append(Path(src).name)
        assert Path(dst).read_bytes() == first  # the old file stays whole until the rename
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    s.save("cam", "e", image(2), BOX, "car", 0.7)
    assert seen == [f".e.jpg.{os.getpid()}.tmp"] and path.read_bytes() != first
    assert names(tmp_path) == ["cam/e.jpg"] and s.total_bytes == path.stat().st_size


def test_a_full_disk_raises_one_line_and_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = store(tmp_path, Clock())
    path = s.save("cam", "e", image(1), BOX, "car", 0.5)
    first = path.read_bytes()

    def full(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(SnapshotError) as info:
        s.save("cam", "e", image(2), BOX, "car", 0.5)
    assert isinstance(info.value, OSError)
    assert str(info.value) == f"snapshot {path}: No space left on device" and "\n" not in str(info.value)
    assert path.read_bytes() == first and names(tmp_path) == ["cam/e.jpg"]  # no temporary file left


def test_an_unwritable_directory_raises_one_line(tmp_path: Path) -> None:
    (tmp_path / "snap").mkdir()
    (tmp_path / "snap" / "cam").write_text("a file where the stream's directory would be")
    s = store(tmp_path, Clock())
    with pytest.raises(SnapshotError, match=r"^snapshot .*/snap/cam/e\.jpg: (File exists|Not a directory)$"):
        s.save("cam", "e", image(1), BOX, "car", 0.5)


@pytest.mark.parametrize("stream", ["../etc", ".hidden", "a/b", ""])
def test_names_that_would_leave_the_directory_are_refused(tmp_path: Path, stream: str) -> None:
    with pytest.raises(ValueError, match="snapshot stream"):
        store(tmp_path, Clock()).save(stream, "e", image(1), BOX, "car", 0.5)


def test_an_unreadable_directory_raises_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "snap" / "cam").mkdir(parents=True)

    def denied(path: str) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "scandir", denied)
    with pytest.raises(SnapshotError, match=r"^snapshots .*/snap: Permission denied$"):
        store(tmp_path, Clock()).latest("cam")
    with pytest.raises(SnapshotError, match="Permission denied"):
        store(tmp_path, Clock()).save("cam", "e", image(1), BOX, "car", 0.5)
