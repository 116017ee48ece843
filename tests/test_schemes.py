import numpy as np
import pytest

from chs.runtime.errors import ChsError
from chs.runtime.schemes import SCHEMES, get_scheme

# HRNet-Facial-Landmark-Detection MATCHED_PARTS (1-based for 300W / AFLW / COFW, 0-based for WFLW):
# an independent statement of the flip pairs to check the tables against.
HRNET_PAIRS = {
    "68": ([1, 17], [2, 16], [3, 15], [4, 14], [5, 13], [6, 12], [7, 11], [8, 10], [18, 27], [19, 26],
           [20, 25], [21, 24], [22, 23], [32, 36], [33, 35], [37, 46], [38, 45], [39, 44], [40, 43],
           [41, 48], [42, 47], [49, 55], [50, 54], [51, 53], [62, 64], [61, 65], [68, 66], [59, 57],
           [60, 56]),
    "19": ([1, 6], [2, 5], [3, 4], [7, 12], [8, 11], [9, 10], [13, 15], [16, 18]),
    "29": ([1, 2], [5, 7], [3, 4], [6, 8], [9, 10], [11, 12], [13, 15], [17, 18], [14, 16], [19, 20],
           [23, 24]),
}
WFLW_PAIRS_0BASED = (
    [[i, 32 - i] for i in range(16)]
    + [[33, 46], [34, 45], [35, 44], [36, 43], [37, 42], [38, 50], [39, 49], [40, 48], [41, 47]]
    + [[60, 72], [61, 71], [62, 70], [63, 69], [64, 68], [65, 75], [66, 74], [67, 73]]
    + [[55, 59], [56, 58], [76, 82], [77, 81], [78, 80], [87, 83], [86, 84], [88, 92], [89, 91], [95, 93]]
    + [[96, 97]]
)


def _perm(n, pairs):
    perm = list(range(n))
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return tuple(perm)


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_flip_perm_is_involution_and_double_flip_is_identity(name):
    s = SCHEMES[name]
    perm = np.array(s.flip_perm)
    assert len(perm) == s.num_points
    assert (perm[perm] == np.arange(s.num_points)).all()
    pts = np.random.default_rng(0).uniform(0, 100, (3, s.num_points, 2))
    np.testing.assert_allclose(s.flip(s.flip(pts, 120), 120), pts)


@pytest.mark.parametrize("name", ["68", "19", "29"])
def test_flip_pairs_match_hrnet(name):
    pairs = [(a - 1, b - 1) for a, b in HRNET_PAIRS[name]]
    assert get_scheme(name).flip_perm == _perm(int(name), pairs)


def test_wflw_flip_pairs_match_hrnet():
    assert get_scheme("wflw").flip_perm == _perm(98, WFLW_PAIRS_0BASED)


def test_flip_68_moves_left_eye_corner_to_right():
    s = get_scheme(68)
    pts = np.zeros((68, 2))
    pts[36] = (30.0, 40.0)  # outer corner of the eye on the left of the image
    pts[45] = (70.0, 41.0)
    out = s.flip(pts, width=100)
    np.testing.assert_allclose(out[45], (100 - 1 - 30.0, 40.0))
    np.testing.assert_allclose(out[36], (100 - 1 - 70.0, 41.0))


def test_flip_then_iod_order_is_kept():
    # after mirroring, the iod point 0 must again be the left-in-image one for every scheme
    for s in SCHEMES.values():
        pts = np.random.default_rng(1).uniform(0, 50, (s.num_points, 2))
        pts[s.iod[0], 0], pts[s.iod[1], 0] = 10.0, 40.0
        f = s.flip(pts, 50)
        assert f[s.iod[0], 0] < f[s.iod[1], 0]


def test_to_five_68():
    s = get_scheme("300w")
    pts = np.zeros((2, 68, 2))
    pts[:, 36:42] = (10.0, 20.0)
    pts[:, 42:48] = (30.0, 20.0)
    pts[:, 30] = (20.0, 30.0)
    pts[:, 48] = (12.0, 40.0)
    pts[:, 54] = (28.0, 40.0)
    five = s.to_five(pts)
    assert five.shape == (2, 5, 2)
    np.testing.assert_allclose(five[1], [[10, 20], [30, 20], [20, 30], [12, 40], [28, 40]])
    # flipping then reducing equals reducing then flipping with the 5-point permutation
    s5 = get_scheme(5)
    np.testing.assert_allclose(s.to_five(s.flip(pts, 64)), s5.flip(s.to_five(pts), 64))


@pytest.mark.parametrize("name", ["98", "29", "19"])
def test_to_five_commutes_with_flip(name):
    s = get_scheme(name)
    pts = np.random.default_rng(2).uniform(0, 80, (s.num_points, 2))
    np.testing.assert_allclose(s.to_five(s.flip(pts, 80)), get_scheme(5).flip(s.to_five(pts), 80))


def test_get_scheme_aliases_and_error():
    assert get_scheme("68") is get_scheme(68) is get_scheme("300w") is get_scheme("300W")
    assert get_scheme("wflw").num_points == 98 and get_scheme("98").iod == (60, 72)
    assert get_scheme("cofw").iod == (8, 9) and get_scheme("cofw").eyes == ((16,), (17,))
    assert get_scheme("aflw").num_points == 19
    assert get_scheme("5").to5 is None
    with pytest.raises(ChsError, match=r"unknown landmark scheme 'x' \(known: 5, 19, 29, 68, 98\)"):
        get_scheme("x")


def test_boundaries_and_wrong_shape():
    for s in SCHEMES.values():
        assert all(len(b) >= 2 for b in s.boundaries)
    with pytest.raises(ChsError, match="shape"):
        get_scheme(68).flip(np.zeros((5, 2)), 10)
