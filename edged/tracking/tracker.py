"""Multi-object tracking, ByteTrack-style, in numpy: each track's box moves at its estimated
constant velocity; each frame's detections are matched to the predicted boxes by IoU, label by
label, the confident detections first, then the others (which only continue tracks); a track
missed for more than ``max_missed_frames`` frames ends. Ids are small integers, increasing per
tracker, given when a track is confirmed (``min_hits`` frames in a row)."""

from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

NUMPY_PAIRS = 100  # track x detection pairs of the same label above which the IoU is computed with numpy
VELOCITY_GAIN = 0.5  # how much of a new velocity measurement is taken (the rest: the previous estimate)


BoxT = Tuple[float, float, float, float]  # xmin, ymin, xmax, ymax


@dataclass(eq=False)
class Track:
    """One tracked object. ``box`` is its last detected box (xmin, ymin, xmax, ymax, pixels);
    ``velocity`` its centre's motion per frame. Plain floats: cheaper than numpy at this size."""

    serial: int  # unique in its tracker, from birth (``track_id`` comes with confirmation)
    label: str
    code: int
    box: BoxT
    score: float
    hits: int = 1
    missed: int = 0
    track_id: Optional[int] = None
    velocity: Tuple[float, float] = (0.0, 0.0)

    @property
    def confirmed(self) -> bool:
        return self.track_id is not None

    def predicted(self) -> BoxT:
        """Where its box is expected in the coming frame."""
        k = self.missed + 1
        dx, dy = self.velocity[0] * k, self.velocity[1] * k
        x0, y0, x1, y1 = self.box
        return (x0 + dx, y0 + dy, x1 + dx, y1 + dy)

    def matched(self, box: BoxT, score: float) -> None:
        k = self.missed + 1
        old = self.box
        sx = (box[0] + box[2] - old[0] - old[2]) / (2 * k)
        sy = (box[1] + box[3] - old[1] - old[3]) / (2 * k)
        if self.hits > 1:
            vx, vy = self.velocity
            sx, sy = vx + VELOCITY_GAIN * (sx - vx), vy + VELOCITY_GAIN * (sy - vy)
        self.velocity = (sx, sy)
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
    ix = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    iy = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.maximum(ix, 0.0) * np.maximum(iy, 0.0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def candidates(a: Sequence[BoxT], ca: Sequence[int], b: Sequence[BoxT], cb: Sequence[int], threshold: float) -> List:
    """(IoU, row, column) of the pairs of the same class (``ca``, ``cb``) with IoU >= ``threshold``,
    in row-major order. Plain Python up to ``NUMPY_PAIRS`` pairs of the same class (numpy's
    per-call cost dominates there), numpy above."""
    by_code: Dict[int, List[Tuple[int, float, float, float, float, float]]] = {}
    for c, (bx0, by0, bx1, by1) in enumerate(b):
        by_code.setdefault(cb[c], []).append((c, bx0, by0, bx1, by1, (bx1 - bx0) * (by1 - by0)))
    same = 0  # the pairs of the same class (only counted when there may be too many)
    if len(a) * len(b) > NUMPY_PAIRS:
        for code in ca:
            same += len(by_code.get(code, ()))
    if same > NUMPY_PAIRS:
        iou = iou_matrix(np.array(a, dtype=np.float64), np.array(b, dtype=np.float64))
        iou[np.array(ca)[:, None] != np.array(cb)[None, :]] = 0.0
        rows, cols = np.nonzero(iou >= threshold)
        return [(float(iou[r, c]), int(r), int(c)) for r, c in zip(rows, cols)]
    out = []
    for r, (ax0, ay0, ax1, ay1) in enumerate(a):
        area_a = (ax1 - ax0) * (ay1 - ay0)
        for c, bx0, by0, bx1, by1, area_b in by_code.get(ca[r], ()):
            if bx0 >= ax1 or bx1 <= ax0 or by0 >= ay1 or by1 <= ay0:
                continue  # apart (the exact test below says so too; this one is cheaper)
            ix = (bx1 if bx1 < ax1 else ax1) - (bx0 if bx0 > ax0 else ax0)  # min(ax1, bx1) - max(ax0, bx0)
            iy = (by1 if by1 < ay1 else ay1) - (by0 if by0 > ay0 else ay0)
            if ix <= 0 or iy <= 0:
                continue
            inter = ix * iy
            union = area_a + area_b - inter
            if union > 0 and inter / union >= threshold:
                out.append((inter / union, r, c))
    return out


def greedy_match(pairs: List[Tuple[float, int, int]]) -> List[Tuple[int, int]]:
    """(row, column) of ``pairs`` (IoU, row, column), best IoU first, each row and column once."""
    used_r, used_c, out = set(), set(), []
    for _, r, c in sorted(pairs, key=itemgetter(0), reverse=True):  # stable: ties stay in row-major order
        if r not in used_r and c not in used_c:
            used_r.add(r)
            used_c.add(c)
            out.append((r, c))
    return out


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

    def _match(self, tracks: List[Track], boxes: Sequence[BoxT], codes: List[int], dets: List[int]) -> List[Tuple]:
        if not tracks or not dets:
            return []
        if len(dets) < len(boxes):  # (as many: all of them, in order)
            boxes, codes = [boxes[d] for d in dets], [codes[d] for d in dets]
        pairs = candidates([t.predicted() for t in tracks], [t.code for t in tracks], boxes, codes, self.match_iou)
        return [(tracks[r], dets[c]) for r, c in greedy_match(pairs)]

    def update(self, boxes: Sequence[BoxT], labels: Sequence[str], scores: Sequence[float]) -> Step:
        """Match one frame's detections (their boxes (xmin, ymin, xmax, ymax) in pixels, labels, scores)."""
        boxes = [(float(x0), float(y0), float(x1), float(y1)) for x0, y0, x1, y1 in boxes]
        codes = [self._codes.setdefault(label, len(self._codes)) for label in labels]
        high = [i for i, s in enumerate(scores) if s >= self.new_track_score]
        low = [i for i, s in enumerate(scores) if s < self.new_track_score]
        assigned: List[Optional[Track]] = [None] * len(labels)
        pairs = self._match(self.tracks, boxes, codes, high)
        matched = {id(t) for t, _ in pairs}
        if low:
            rest = [t for t in self.tracks if id(t) not in matched and t.track_id is not None]
            pairs += self._match(rest, boxes, codes, low)
            matched = {id(t) for t, _ in pairs}
        confirmed: List[Track] = []
        for track, d in pairs:
            track.matched(boxes[d], float(scores[d]))
            assigned[d] = track
            if track.track_id is None and track.hits >= self.min_hits:
                self._confirm(track, confirmed)
        kept, ended, dropped = [], [], []
        for t in self.tracks:
            if id(t) in matched:
                kept.append(t)
            elif t.track_id is None:  # a tentative track missed once is dropped
                dropped.append(t)
            else:
                t.missed += 1
                (kept if t.missed <= self.max_missed_frames else ended).append(t)
        for d in high:
            if assigned[d] is None:
                self._serial += 1
                track = Track(self._serial, labels[d], codes[d], boxes[d], float(scores[d]))
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
            x0, y0, x1, y1 = t.box
            t.box = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
            t.velocity = (t.velocity[0] * sx, t.velocity[1] * sy)

    def reset(self) -> List[Track]:
        """Forget every track (ids go on increasing); returns the confirmed ones."""
        confirmed = [t for t in self.tracks if t.confirmed]
        self.tracks = []
        return confirmed
