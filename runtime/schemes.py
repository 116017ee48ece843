"""Landmark schemes: point counts, flip permutations and normalisation indices of each benchmark.

Flip augmentation, test-time flipping, metrics and 5-point alignment all need to know which index is
which; keeping that knowledge in one table stops each caller from carrying its own (and differing) copy.
Indices are 0-based. "Left"/"right" always mean left/right *in the image* (the subject's right eye is
the left one in the image), which is the order every benchmark below lists its points in.

Sources of the index tables: the iBUG 300-W 68-point mark-up; WFLW, COFW and AFLW-19 as in the
HRNet-Facial-Landmark-Detection ``MATCHED_PARTS`` table and mmpose's dataset configs (same pairs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ChsError

# WFLW's per-face attribute flags, in the order its annotation files list them (the evaluation subsets)
WFLW_ATTRIBUTES = ("pose", "expression", "illumination", "makeup", "occlusion", "blur")

@dataclass(frozen=True)
class LandmarkScheme:
    """Everything index-specific about one landmark mark-up."""

    name: str
    num_points: int
    # After a horizontal flip, new point i = old point flip_perm[i]; an involution.
    flip_perm: tuple[int, ...]
    # Outer eye corners: the inter-ocular normaliser.
    iod: tuple[int, int]
    # Index groups whose means are the (left-in-image, right-in-image) eye centres: inter-pupil normaliser.
    eyes: tuple[tuple[int, ...], tuple[int, ...]]
    # Polylines (index sequences, at least 2 points each) for drawing boundary heatmaps.
    boundaries: tuple[tuple[int, ...], ...]
    # Groups averaged into 5 points (left eye, right eye, nose tip, left / right mouth corner); None for "5".
    to5: tuple[tuple[int, ...], ...] | None

    def __post_init__(self) -> None:
        n = self.num_points
        perm = self.flip_perm
        if len(perm) != n or sorted(perm) != list(range(n)):
            raise ValueError(f"scheme {self.name}: flip_perm is not a permutation of {n} points")
        if any(perm[perm[i]] != i for i in range(n)):
            raise ValueError(f"scheme {self.name}: flip_perm is not an involution")
        used = [*self.iod, *self.eyes[0], *self.eyes[1], *(i for b in self.boundaries for i in b)]
        if self.to5 is not None:
            if len(self.to5) != 5:
                raise ValueError(f"scheme {self.name}: to5 needs 5 groups")
            used += [i for g in self.to5 for i in g]
        if any(not 0 <= i < n for i in used):
            raise ValueError(f"scheme {self.name}: an index is out of range 0..{n - 1}")

    def _check(self, landmarks: np.ndarray) -> np.ndarray:
        pts = np.asarray(landmarks, dtype=np.float64)
        if pts.ndim < 2 or pts.shape[-2:] != (self.num_points, 2):
            raise ChsError(f"expected landmarks of shape (..., {self.num_points}, 2) for scheme {self.name}, "
                           f"got {tuple(pts.shape)}")
        return pts

    def flip(self, landmarks: np.ndarray, width: float) -> np.ndarray:
        """Landmarks of the horizontally mirrored image (pixel centres on integers: x' = width - 1 - x)."""
        pts = self._check(landmarks)
        out = pts[..., list(self.flip_perm), :].copy()
        out[..., 0] = (width - 1) - out[..., 0]
        return out

    def to_five(self, landmarks: np.ndarray) -> np.ndarray:
        """(..., n, 2) -> (..., 5, 2) by averaging the to5 groups; the identity for the 5-point scheme."""
        pts = self._check(landmarks)
        if self.to5 is None:
            return pts.copy()
        return np.stack([pts[..., list(g), :].mean(axis=-2) for g in self.to5], axis=-2)


def _perm_from_pairs(n: int, pairs: list[tuple[int, int]]) -> tuple[int, ...]:
    perm = list(range(n))
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return tuple(perm)


def _mirror_range(lo: int, hi: int) -> list[tuple[int, int]]:
    """Pairs (lo, hi), (lo+1, hi-1), ... for a left-to-right run whose mirror is itself reversed."""
    return [(lo + k, hi - k) for k in range((hi - lo + 1) // 2)]


# ---- 68: iBUG 300-W ---------------------------------------------------------------------------
_PAIRS_68 = (
    _mirror_range(0, 16)  # jaw
    + _mirror_range(17, 26)  # brows 17-21 | 22-26
    + _mirror_range(31, 35)  # nostrils (27-30 bridge and 33 tip stay)
    + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    + _mirror_range(48, 54)  # upper outer lip
    + [(55, 59), (56, 58)]  # lower outer lip (57 stays)
    + _mirror_range(60, 64)  # upper inner lip
    + [(65, 67)]  # lower inner lip (66 stays)
)
SCHEME_68 = LandmarkScheme(
    name="68", num_points=68, flip_perm=_perm_from_pairs(68, _PAIRS_68), iod=(36, 45),
    eyes=(tuple(range(36, 42)), tuple(range(42, 48))),
    boundaries=(
        tuple(range(0, 17)),  # contour
        tuple(range(17, 22)),  # left brow
        tuple(range(22, 27)),  # right brow
        tuple(range(27, 31)),  # nose bridge
        tuple(range(31, 36)),  # nose bottom
        (36, 37, 38, 39),  # left upper lid
        (39, 40, 41, 36),  # left lower lid
        (42, 43, 44, 45),  # right upper lid
        (45, 46, 47, 42),  # right lower lid
        tuple(range(48, 55)),  # upper lip, top
        (48, 60, 61, 62, 63, 64, 54),  # upper lip, bottom
        (48, 60, 67, 66, 65, 64, 54),  # lower lip, top
        (54, 55, 56, 57, 58, 59, 48),  # lower lip, bottom
    ),
    to5=(tuple(range(36, 42)), tuple(range(42, 48)), (30,), (48,), (54,)),
)

# ---- 98: WFLW ---------------------------------------------------------------------------------
_PAIRS_98 = (
    _mirror_range(0, 32)  # contour
    + [(33, 46), (34, 45), (35, 44), (36, 43), (37, 42), (38, 50), (39, 49), (40, 48), (41, 47)]  # brows
    + [(60, 72), (61, 71), (62, 70), (63, 69), (64, 68), (65, 75), (66, 74), (67, 73)]  # eyes
    + [(55, 59), (56, 58)]  # nose bottom (51-54 bridge, 57 stays)
    + [(76, 82), (77, 81), (78, 80), (87, 83), (86, 84)]  # outer lip (79, 85 stay)
    + [(88, 92), (89, 91), (95, 93)]  # inner lip (90, 94 stay)
    + [(96, 97)]  # pupils
)
SCHEME_98 = LandmarkScheme(
    name="98", num_points=98, flip_perm=_perm_from_pairs(98, _PAIRS_98), iod=(60, 72), eyes=((96,), (97,)),
    boundaries=(
        tuple(range(0, 33)),  # contour
        (*range(33, 42), 33),  # left brow (closed)
        (*range(42, 51), 42),  # right brow (closed)
        tuple(range(51, 55)),  # nose bridge
        tuple(range(55, 60)),  # nose bottom
        tuple(range(60, 65)),  # left upper lid
        (64, 65, 66, 67, 60),  # left lower lid
        tuple(range(68, 73)),  # right upper lid
        (72, 73, 74, 75, 68),  # right lower lid
        tuple(range(76, 83)),  # upper lip, top
        (76, *range(88, 93), 82),  # upper lip, bottom
        (76, 88, 95, 94, 93, 92, 82),  # lower lip, top
        (*range(82, 88), 76),  # lower lip, bottom
    ),
    to5=((96,), (97,), (54,), (76,), (82,)),
)

# ---- 29: COFW (0/1 brow outer, 2/3 brow inner, 4-7 brow top/bottom, 8/9 eye outer, 10/11 eye inner,
# 12-15 lid top/bottom, 16/17 pupils, 18/19 nostrils, 20 nose tip, 21 subnasale, 22/23 mouth corners,
# 24-27 lips top to bottom, 28 chin) -------------------------------------------------------------
_PAIRS_29 = [(0, 1), (2, 3), (4, 6), (5, 7), (8, 9), (10, 11), (12, 14), (13, 15), (16, 17), (18, 19), (22, 23)]
SCHEME_29 = LandmarkScheme(
    name="29", num_points=29, flip_perm=_perm_from_pairs(29, _PAIRS_29), iod=(8, 9), eyes=((16,), (17,)),
    boundaries=(
        (0, 4, 2, 5, 0),  # left brow
        (1, 6, 3, 7, 1),  # right brow
        (8, 12, 10, 13, 8),  # left eye
        (9, 14, 11, 15, 9),  # right eye
        (18, 20, 19),  # nose tip
        (18, 21, 19),  # nose bottom
        (22, 24, 23, 27, 22),  # outer lips
        (22, 25, 23, 26, 22),  # inner lips
    ),
    to5=((16,), (17,), (20,), (22,), (23,)),
)

# ---- 19: AFLW-19 (0-5 brows, 6-8 left eye outer/centre/inner, 9-11 right eye inner/centre/outer,
# 12-14 nose left/tip/right, 15-17 mouth left/centre/right, 18 chin). AFLW results are normally
# normalised by the face box; iod/eyes are given for the other metrics. -----------------------------
_PAIRS_19 = [(0, 5), (1, 4), (2, 3), (6, 11), (7, 10), (8, 9), (12, 14), (15, 17)]
SCHEME_19 = LandmarkScheme(
    name="19", num_points=19, flip_perm=_perm_from_pairs(19, _PAIRS_19), iod=(6, 11), eyes=((7,), (10,)),
    boundaries=((0, 1, 2), (3, 4, 5), (6, 7, 8), (9, 10, 11), (12, 13, 14), (15, 16, 17)),
    to5=((7,), (10,), (13,), (15,), (17,)),
)

# ---- 5: left eye, right eye, nose tip, left / right mouth corner ---------------------------------
SCHEME_5 = LandmarkScheme(
    name="5", num_points=5, flip_perm=(1, 0, 2, 4, 3), eyes=((0,), (1,)), boundaries=((0, 1), (3, 4)), to5=None,
    iod=(0, 1),  # no eye corners: the eye centres stand in
)

SCHEMES: dict[str, LandmarkScheme] = {s.name: s for s in (SCHEME_5, SCHEME_19, SCHEME_29, SCHEME_68, SCHEME_98)}

_ALIASES = {"300w": "68", "300-w": "68", "ibug": "68", "wflw": "98", "cofw": "29", "aflw": "19", "aflw19": "19",
            "aflw-19": "19", "five": "5"}


def get_scheme(name: str | int | LandmarkScheme) -> LandmarkScheme:
    """Look a scheme up by point count or dataset name ("68", 68, "300w", "wflw", "cofw", "aflw", "5")."""
    if isinstance(name, LandmarkScheme):
        return name
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key in SCHEMES:
        return SCHEMES[key]
    known = ", ".join(sorted(SCHEMES, key=int))
    raise ChsError(f"unknown landmark scheme '{name}' (known: {known})")


__all__ = ["SCHEMES", "WFLW_ATTRIBUTES", "LandmarkScheme", "get_scheme"]
