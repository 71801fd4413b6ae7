"""The built-in W-Sprites art: LPC-layout layer sheets and the landscape background."""
import time
from functools import lru_cache

import numpy as np
import pytest

from data.wsprites import builtin

CELL = 64
LAYERS = builtin.BUILTIN_LAYERS
VARIANTS = range(builtin.BUILTIN_VARIANTS)
# Rows of each 4-row block: back, left, front, right.
BACK, LEFT, FRONT, RIGHT = range(4)
BLOCKS = {"spellcast": (0, 7), "walk": (8, 9), "slash": (12, 6)}  # first row, drawn columns


@lru_cache(maxsize=None)
def sheet(layer, variant):
    out = builtin.draw_layer_sheet(layer, variant)
    out.setflags(write=False)
    return out


def cell(layer, variant, row, column):
    return sheet(layer, variant)[row * CELL:(row + 1) * CELL, column * CELL:(column + 1) * CELL]


def alpha(layer, variant, row, column):
    return cell(layer, variant, row, column)[..., 3] > 0


def used_cells():
    used = set()
    for first_row, columns in BLOCKS.values():
        for row in range(first_row, first_row + 4):
            used.update((row, column) for column in range(columns))
    return used


def composite(choices, row, column, layers=LAYERS):
    """Opaque 'over' of the layers (alpha is 0 or 255), as the generator composites them."""
    out = np.zeros((CELL, CELL, 4), dtype=np.uint8)
    for layer, variant in zip(LAYERS, choices):
        if layer in layers:
            src = cell(layer, variant, row, column)
            out[src[..., 3] > 0] = src[src[..., 3] > 0]
    return out


def span(indices):
    return int(indices.max() - indices.min())


def top_row(mask):
    return int(np.nonzero(mask.any(axis=1))[0][0])


# ----------------------------------------------------------------------------- sheets

def test_constants():
    assert builtin.BUILTIN_LAYERS == ("body", "bottomwear", "topwear", "hair")
    assert builtin.BUILTIN_VARIANTS == 6
    assert (builtin.SHEET_HEIGHT, builtin.SHEET_WIDTH) == (1344, 832)


@pytest.mark.parametrize("layer", LAYERS)
def test_sheet_format_and_layout(layer):
    used = used_cells()
    for variant in VARIANTS:
        s = sheet(layer, variant)
        assert s.shape == (1344, 832, 4) and s.dtype == np.uint8
        assert set(np.unique(s[..., 3]).tolist()) == {0, 255}
        cells_alpha = s[..., 3].reshape(21, CELL, 13, CELL).transpose(0, 2, 1, 3)
        opaque = cells_alpha.reshape(21, 13, -1).max(axis=2) > 0
        for row in range(21):
            for column in range(13):
                assert opaque[row, column] == ((row, column) in used), (layer, variant, row, column)
        # The character stands inside its cell: nothing touches the cell border.
        for row, column in used:
            a = cells_alpha[row, column]
            assert not (a[0].any() or a[-1].any() or a[:, 0].any() or a[:, -1].any()), (layer, variant, row, column)


def test_deterministic():
    for layer, variant in (("body", 2), ("bottomwear", 4), ("topwear", 5), ("hair", 1)):
        first = builtin.draw_layer_sheet(layer, variant)
        assert np.array_equal(first, builtin.draw_layer_sheet(layer, variant))
        assert np.array_equal(first, sheet(layer, variant))


@pytest.mark.parametrize("layer", LAYERS)
def test_variants_pairwise_distinct(layer):
    front = [cell(layer, v, 8 + FRONT, 0) for v in VARIANTS]
    for a in VARIANTS:
        for b in range(a + 1, builtin.BUILTIN_VARIANTS):
            differing = np.any(front[a] != front[b], axis=-1).sum()
            assert differing > 40, (layer, a, b, differing)


def test_body_variants_have_distinct_skin_tones():
    tones = []
    for v in VARIANTS:
        c = cell("body", v, 8 + FRONT, 0)
        rgb = c[c[..., 3] > 0][:, :3].astype(int)
        colors, counts = np.unique(rgb, axis=0, return_counts=True)
        tones.append(colors[counts.argmax()])  # the dominant (skin) colour
    for a in VARIANTS:
        for b in range(a + 1, builtin.BUILTIN_VARIANTS):
            assert np.abs(tones[a] - tones[b]).sum() > 30, (a, b)


@pytest.mark.parametrize("layer", ["body", "bottomwear"])
def test_walk_legs_alternate(layer):
    for variant in VARIANTS:
        for view in range(4):
            row = 8 + view
            legs_1 = cell(layer, variant, row, 1)[46:]
            legs_5 = cell(layer, variant, row, 5)[46:]
            assert np.any(legs_1 != legs_5, axis=-1).sum() >= 10, (layer, variant, view)
            # and the stride changes across the cycle, column 0 standing
            assert not np.array_equal(cell(layer, variant, row, 0), cell(layer, variant, row, 3))


def test_walk_arms_swing_opposite_to_legs():
    for column in range(1, 9):
        joints = builtin.pose("walk", column)
        for side in ("l", "r"):
            foot, hand = joints["ankle_" + side][2], joints["hand_" + side][2] - joints["chest"][2]
            if abs(foot) > 2:
                assert np.sign(foot) != np.sign(hand), (column, side)
    # in profile the stride is visible: feet apart in column 3, together-ish in column 1
    right_view = [alpha("body", 0, 8 + RIGHT, c)[50:] for c in (1, 3)]
    widths = [span(np.nonzero(a.any(axis=0))[0]) for a in right_view]
    assert widths[1] >= widths[0] + 4


def test_spellcast_raises_arms_above_head():
    for variant in VARIANTS:
        for view in range(4):
            rest = top_row(alpha("body", variant, view, 0))
            raised = min(top_row(alpha("body", variant, view, 5)), top_row(alpha("body", variant, view, 6)))
            assert raised <= rest - 3, (variant, view, rest, raised)
    # arms rise gradually: the highest point does not go down over columns 0..5 (front view)
    tops = [top_row(alpha("body", 0, FRONT, c)) for c in range(6)]
    assert all(b <= a for a, b in zip(tops, tops[1:]))
    assert tops[5] < tops[0]


def test_slash_swings_an_arm():
    for variant in VARIANTS:
        for view in range(4):
            row = 12 + view
            upper = [cell("body", variant, row, c)[:46] for c in (0, 3, 5)]
            assert np.any(upper[0] != upper[1], axis=-1).sum() > 30, (variant, view)
            assert np.any(upper[1] != upper[2], axis=-1).sum() > 30, (variant, view)
    # side view: the blade hand goes from behind the body (column 0) to in front of it (column 4)
    masks = [alpha("body", 0, 12 + RIGHT, c) for c in (0, 4)]
    rightmost = [int(np.nonzero(m.any(axis=0))[0][-1]) for m in masks]
    assert rightmost[1] >= rightmost[0] + 6


def test_views_differ_and_left_mirrors_right():
    for layer in LAYERS:
        for variant in VARIANTS:
            for first_row, columns in BLOCKS.values():
                for column in range(columns):
                    views = [cell(layer, variant, first_row + k, column) for k in range(4)]
                    assert np.array_equal(views[LEFT], views[RIGHT][:, ::-1]), (layer, variant, first_row, column)
                    for a, b in ((FRONT, LEFT), (FRONT, RIGHT), (LEFT, RIGHT)):
                        assert not np.array_equal(views[a], views[b]), (layer, variant, first_row, column, a, b)
                    if layer in ("body", "hair"):
                        assert not np.array_equal(views[FRONT], views[BACK]), (layer, variant, first_row, column)


def test_side_view_is_narrower_than_front():
    for variant in VARIANTS:
        front = alpha("body", variant, 8 + FRONT, 0)
        side = alpha("body", variant, 8 + RIGHT, 0)
        assert side.sum() < 0.85 * front.sum()
        assert span(np.nonzero(side.any(axis=0))[0]) < span(np.nonzero(front.any(axis=0))[0])


def eye_pixels(variant, row, column):
    c = cell("body", variant, row, column)
    eye = np.array(builtin.EYE_COLORS[variant])
    return np.all(c[..., :3] == eye, axis=-1) & (c[..., 3] > 0)


def test_faces_front_two_eyes_side_one_eye_back_none():
    for variant in VARIANTS:
        front = eye_pixels(variant, 8 + FRONT, 0)
        xs = np.nonzero(front.any(axis=0))[0]
        assert len(xs) >= 2 and xs.min() < 32 <= xs.max(), variant  # one eye on each side of the face
        assert not eye_pixels(variant, 8 + BACK, 0).any(), variant
        left = np.nonzero(eye_pixels(variant, 8 + LEFT, 0).any(axis=0))[0]
        right = np.nonzero(eye_pixels(variant, 8 + RIGHT, 0).any(axis=0))[0]
        assert len(left) and len(right) and span(left) <= 2 and span(right) <= 2, variant  # a single eye
        assert left.max() < 32 <= right.min(), variant  # on the side the character faces


def test_clothes_and_hair_cover_the_body():
    for v in VARIANTS:
        choices = (v, (v + 1) % 6, (v + 2) % 6, (v + 3) % 6)
        for first_row, columns in BLOCKS.values():
            for row in range(first_row, first_row + 4):
                for column in range(columns):
                    body = alpha("body", choices[0], row, column)
                    full = composite(choices, row, column)[..., 3] > 0
                    assert full.sum() > body.sum(), (choices, row, column)
                    # clothes are drawn on the body, not beside it
                    body_near = body.copy()
                    for shift in ((0, 1), (0, -1), (1, 0), (-1, 0)):
                        body_near |= np.roll(body, shift, axis=(0, 1))
                    for layer, variant in (("topwear", choices[2]), ("bottomwear", choices[1])):
                        worn = alpha(layer, variant, row, column)
                        assert worn.any()
                        if not (layer == "bottomwear" and builtin.BOTTOM_STYLES[variant].kind.endswith("skirt")):
                            assert (worn & body_near).sum() >= 0.9 * worn.sum(), (layer, variant, row, column)
                    # the skin tone remains visible (face, hands) and the hair is on top of the head
                    head_top = top_row(body)
                    assert alpha("hair", choices[3], row, column)[head_top:head_top + 6].any(), (row, column)


def test_clothes_follow_the_pose():
    # the sleeves go up with the arms in spellcast, the trouser legs stride with the legs
    for variant in VARIANTS:
        down = alpha("topwear", variant, FRONT, 0)
        up = alpha("topwear", variant, FRONT, 5)
        assert top_row(up) <= top_row(down) - 4, variant
        stand = alpha("bottomwear", variant, 8 + RIGHT, 1)[44:]
        stride = alpha("bottomwear", variant, 8 + RIGHT, 3)[44:]
        assert span(np.nonzero(stride.any(axis=0))[0]) > span(np.nonzero(stand.any(axis=0))[0]), variant


@pytest.mark.parametrize("layer, variant", [("shoes", 0), ("eyes", 0), ("Body", 0), ("", 0),
                                            ("body", -1), ("body", 6), ("hair", 100), ("topwear", 1.5),
                                            ("topwear", "2"), ("bottomwear", None)])
def test_bad_arguments_raise(layer, variant):
    with pytest.raises(ValueError):
        builtin.draw_layer_sheet(layer, variant)


def test_numpy_integer_variant_accepted():
    assert np.array_equal(builtin.draw_layer_sheet("hair", np.int64(3)), sheet("hair", 3))


def test_sheet_speed():
    start = time.perf_counter()
    builtin.draw_layer_sheet("body", 1)
    builtin.draw_layer_sheet("topwear", 3)
    assert time.perf_counter() - start < 4.0  # ~0.1 s each on an idle core; generous for loaded machines


# ----------------------------------------------------------------------------- background

def test_background_shape_and_determinism():
    image = builtin.draw_background(153, 121, 7)
    assert image.shape == (121, 153, 3) and image.dtype == np.uint8
    assert np.array_equal(image, builtin.draw_background(153, 121, 7))
    assert np.any(image != builtin.draw_background(153, 121, 8))
    for width, height in ((1, 1), (5, 300), (300, 4), (64, 64)):
        assert builtin.draw_background(width, height, 0).shape == (height, width, 3)


def test_background_is_a_textured_landscape():
    for seed in range(3):
        image = builtin.draw_background(153, 121, seed).astype(np.int32)
        shifted_x = np.abs(image[:, 2:] - image[:, :-2]).mean()
        shifted_y = np.abs(image[2:] - image[:-2]).mean()
        assert shifted_x > 6 and shifted_y > 6, (seed, shifted_x, shifted_y)
        # the grassy lower part is textured everywhere, not flat colour
        field = image[90:]
        assert (np.abs(field[:, 1:] - field[:, :-1]).sum(axis=-1) == 0).mean() < 0.2
        # sky above (blue dominates at the top), greenery below
        top, bottom = image[:10].reshape(-1, 3).mean(0), image[-20:].reshape(-1, 3).mean(0)
        assert top[2] > top[1] > top[0]
        assert bottom[1] > bottom[0] and bottom[1] > bottom[2]


def test_background_speed():
    start = time.perf_counter()
    builtin.draw_background(153, 121, 3)
    assert time.perf_counter() - start < 2.0  # ~0.03 s on an idle core


def test_background_rejects_empty_size():
    with pytest.raises(ValueError):
        builtin.draw_background(0, 10, 0)
