"""Multi-object tracking, ByteTrack-style, in numpy: each track's box moves at its estimated
constant velocity; each frame's detections are matched to the predicted boxes by IoU, label by
label, the confident detections first, then the others (which only continue tracks); a track
missed for more than ``max_missed_frames`` frames ends. Ids are small integers, increasing per
tracker, given when a track is confirmed (``min_hits`` frames in a row)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

VELOCITY_GAIN = 0.5  # how much of a new velocity measurement is taken (the rest: the previous estimate)


@dataclass(eq=False)
class Track:
    """One tracked object. ``box`` is its last detected box (xmin, ymin, xmax, ymax, pixels);
    ``velocity`` its centre's motion per frame."""

    serial: int  # unique in its tracker, from birth (``track_id`` comes with confirmation)
    label: str
    code: int
    box: np.ndarray
    score: float
    hits: int = 1
    missed: int = 0
    track_id: Optional[int] = None
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))

    @property
    def confirmed(self) -> bool:
        return self.track_id is not None

    def predicted(self) -> np.ndarray:
        """Where its box is expected in the coming frame."""
        dx, dy = self.velocity * (self.missed + 1)
        return self.box + (dx, dy, dx, dy)

    def _centre(self, box: np.ndarray) -> np.ndarray:
        return np.array(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2))

    def matched(self, box: np.ndarray, score: float) -> None:
        step = (self._centre(box) - self._centre(self.box)) / (self.missed + 1)
        self.velocity = step if self.hits == 1 else self.velocity + VELOCITY_GAIN * (step - self.velocity)
        self.box, self.score = box, score
        self.hits += 1
        self.missed = 0


@dataclass
class Step:
    """What one frame did: the track of each detection (None: not tracked, a low-score detection
    that matched nothing), the tracks confirmed in this frame, those that ended (confirmed, missed
    too long) and those dropped (never confirmed, missed once)."""

    assigned: List[Optional[Track]]
    confirmed: List[Track]
    ended: List[Track]
    dropped: List[Track]


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (T, 4) with every box of ``b`` (N, 4)."""
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def greedy_match(iou: np.ndarray, threshold: float) -> List[Tuple[int, int]]:
    """Pairs (row, column), best IoU first, each row and column once, IoU >= ``threshold``."""
    rows, cols = np.nonzero(iou >= threshold)
    if len(rows) == 0:
        return []
    order = np.argsort(-iou[rows, cols], kind="stable")
    used_r, used_c, pairs = set(), set(), []
    for k in order:
        r, c = int(rows[k]), int(cols[k])
        if r not in used_r and c not in used_c:
            used_r.add(r)
            used_c.add(c)
            pairs.append((r, c))
    return pairs


class Tracker:
    """The tracks of one stream."""

    def __init__(
        self, max_missed_frames: int = 5, min_hits: int = 2, match_iou: float = 0.2, new_track_score: float = 0.5
    ) -> None:
        self.max_missed_frames = max_missed_frames
        self.min_hits = min_hits
        self.match_iou = match_iou
        self.new_track_score = new_track_score
        self.tracks: List[Track] = []
        self._codes: Dict[str, int] = {}
        self._next_id = 1
        self._serial = 0

    def _match(self, tracks: List[Track], boxes: np.ndarray, codes: np.ndarray, dets: np.ndarray) -> List[Tuple]:
        if not tracks or len(dets) == 0:
            return []
        iou = iou_matrix(np.array([t.predicted() for t in tracks]), boxes[dets])
        iou[np.array([t.code for t in tracks])[:, None] != codes[dets][None, :]] = 0.0
        return [(tracks[r], int(dets[c])) for r, c in greedy_match(iou, self.match_iou)]

    def update(self, boxes: np.ndarray, labels: Sequence[str], scores: np.ndarray) -> Step:
        """Match one frame's detections (``boxes`` (N, 4) pixels, their labels and scores)."""
        n = len(labels)
        boxes = np.asarray(boxes, dtype=np.float64).reshape(n, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(n)
        codes = np.array([self._codes.setdefault(label, len(self._codes)) for label in labels], dtype=np.int64)
        high = np.nonzero(scores >= self.new_track_score)[0]
        low = np.nonzero(scores < self.new_track_score)[0]
        assigned: List[Optional[Track]] = [None] * n
        pairs = self._match(self.tracks, boxes, codes, high)
        matched = {id(t) for t, _ in pairs}
        rest = [t for t in self.tracks if id(t) not in matched and t.confirmed]
        pairs += self._match(rest, boxes, codes, low)
        confirmed: List[Track] = []
        for track, d in pairs:
            track.matched(boxes[d], float(scores[d]))
            assigned[d] = track
            if not track.confirmed and track.hits >= self.min_hits:
                self._confirm(track, confirmed)
        matched = {id(t) for t, _ in pairs}
        kept, ended, dropped = [], [], []
        for t in self.tracks:
            if id(t) in matched:
                kept.append(t)
            elif not t.confirmed:  # a tentative track missed once is dropped
                dropped.append(t)
            else:
                t.missed += 1
                (kept if t.missed <= self.max_missed_frames else ended).append(t)
        for d in high:
            if assigned[d] is None:
                self._serial += 1
                track = Track(self._serial, labels[d], int(codes[d]), boxes[d], float(scores[d]))
                if self.min_hits <= 1:
                    self._confirm(track, confirmed)
                assigned[d] = track
                kept.append(track)
        self.tracks = kept
        return Step(assigned, confirmed, ended, dropped)

    def _confirm(self, track: Track, confirmed: List[Track]) -> None:
        track.track_id = self._next_id
        self._next_id += 1
        confirmed.append(track)

    def rescale(self, sx: float, sy: float) -> None:
        """The frame was resized by (``sx``, ``sy``): move the tracks with it."""
        for t in self.tracks:
            t.box = t.box * (sx, sy, sx, sy)
            t.velocity = t.velocity * (sx, sy)

    def reset(self) -> List[Track]:
        """Forget every track (ids go on increasing); returns the confirmed ones."""
        confirmed = [t for t in self.tracks if t.confirmed]
        self.tracks = []
        return confirmed
