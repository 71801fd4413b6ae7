"""Built-in W-Sprites art: LPC-layout layer sheets and a landscape background, drawn in numpy.

With these the W-Sprites generator runs on an offline machine that has no Liberated Pixel
Cup art. Each layer sheet has the LPC layout (832×1344 px, 13 columns × 21 rows of 64×64
cells); only the cells the generator reads are drawn, everything else is transparent:

* spellcast rows 0–3, columns 0–6: both arms rise from hanging down to raised above the head;
* walk rows 8–11, columns 0–8: column 0 stands, columns 1–8 are a stride cycle (legs
  alternate, arms swing opposite to the legs);
* slash rows 12–15, columns 0–5: the right-hand arm (the arm nearer the viewer in side
  views) swings a short blade from raised behind the head to forward-down.

Each block of four rows is back, left, front, right. The left view is the exact
horizontal mirror of the right view.

All layers are drawn from one skeleton: `pose(animation, column, side_view)` gives the 3-D joint
positions, `_project` turns them into cell coordinates for a view, and every layer draws
its parts around the same projected joints, so clothes and hair stay on the body in every
frame. Parts are painted back to front by depth; a clothing part is also hidden where a
body part that lies in front of it (an arm in front of the shirt, the near leg in front
of the far trouser leg) covers it, so each layer composites correctly over the body in the
order body, bottomwear, topwear, hair.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple

import numpy as np

BUILTIN_LAYERS = ("body", "bottomwear", "topwear", "hair")
BUILTIN_VARIANTS = 6  # choices per layer: 6**4 = 1296 characters
BUILTIN_VERSION = 1  # bump when the drawings change (part of the dataset's identity)
SHEET_HEIGHT, SHEET_WIDTH = 1344, 832
CELL = 64

# Sheet rows of each animation block and their view order (LPC layout).
ANIMATION_ROWS = {"spellcast": 0, "walk": 8, "slash": 12}
ANIMATION_COLUMNS = {"spellcast": 7, "walk": 9, "slash": 6}
VIEWS = ("back", "left", "front", "right")

Color = Tuple[int, int, int]

# --------------------------------------------------------------------------- raster primitives

_PY, _PX = np.mgrid[0:CELL, 0:CELL].astype(np.float32) + 0.5  # pixel centres


def _window(xs: Sequence[float], ys: Sequence[float], pad: float) -> Optional[Tuple[slice, slice]]:
    x0 = max(int(np.floor(min(xs) - pad)), 0)
    x1 = min(int(np.ceil(max(xs) + pad)) + 1, CELL)
    y0 = max(int(np.floor(min(ys) - pad)), 0)
    y1 = min(int(np.ceil(max(ys) + pad)) + 1, CELL)
    if x0 >= x1 or y0 >= y1:
        return None
    return slice(y0, y1), slice(x0, x1)


def _capsule(a, b, ra: float, rb: Optional[float] = None) -> np.ndarray:
    """Pixels within a radius (linearly varying from ra at a to rb at b) of the segment a-b."""
    rb = ra if rb is None else rb
    mask = np.zeros((CELL, CELL), dtype=bool)
    win = _window((a[0], b[0]), (a[1], b[1]), max(ra, rb) + 1)
    if win is None:
        return mask
    px, py = _PX[win], _PY[win]
    dx, dy = b[0] - a[0], b[1] - a[1]
    length2 = dx * dx + dy * dy
    if length2 < 1e-9:
        t = np.zeros_like(px)
    else:
        t = np.clip(((px - a[0]) * dx + (py - a[1]) * dy) / length2, 0.0, 1.0)
    radius = ra + (rb - ra) * t
    mask[win] = (px - a[0] - t * dx) ** 2 + (py - a[1] - t * dy) ** 2 <= radius * radius
    return mask


def _ellipse(center, rx: float, ry: float) -> np.ndarray:
    mask = np.zeros((CELL, CELL), dtype=bool)
    win = _window((center[0],), (center[1],), max(rx, ry) + 1)
    if win is None:
        return mask
    mask[win] = ((_PX[win] - center[0]) / rx) ** 2 + ((_PY[win] - center[1]) / ry) ** 2 <= 1.0
    return mask


def _polygon(points: Sequence[Tuple[float, float]]) -> np.ndarray:
    """Convex polygon (any winding)."""
    pts = np.asarray(points, dtype=np.float64)
    mask = np.zeros((CELL, CELL), dtype=bool)
    win = _window(pts[:, 0], pts[:, 1], 1)
    if win is None:
        return mask
    px, py = _PX[win], _PY[win]
    area = 0.0
    for i in range(len(pts)):
        x0, y0 = pts[i]
        x1, y1 = pts[(i + 1) % len(pts)]
        area += x0 * y1 - x1 * y0
    sign = 1.0 if area >= 0 else -1.0
    inside = np.ones(px.shape, dtype=bool)
    for i in range(len(pts)):
        x0, y0 = pts[i]
        x1, y1 = pts[(i + 1) % len(pts)]
        inside &= sign * ((x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)) >= 0
    mask[win] = inside
    return mask


def _pixels(cells: Sequence[Tuple[int, int]]) -> np.ndarray:
    """Mask of individual pixels given as (x, y)."""
    mask = np.zeros((CELL, CELL), dtype=bool)
    for x, y in cells:
        if 0 <= x < CELL and 0 <= y < CELL:
            mask[y, x] = True
    return mask


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _below(y: float) -> np.ndarray:
    return _PY >= y


def _above(y: float) -> np.ndarray:
    return _PY <= y


# --------------------------------------------------------------------------- colours

def _mix(color: Sequence[float], other: Sequence[float], amount: float) -> Color:
    return tuple(int(round(c + (o - c) * amount)) for c, o in zip(color, other))


@dataclass(frozen=True)
class Palette:
    outline: Color
    shade: Color
    base: Color
    light: Color

    @staticmethod
    def of(base: Color, outline: Optional[Color] = None) -> "Palette":
        dark = tuple(int(c * 0.62) for c in base)
        return Palette(outline=outline or _mix(tuple(int(c * 0.3) for c in base), (20, 10, 30), 0.35),
                       shade=_mix(dark, base, 0.35), base=tuple(base), light=_mix(base, (255, 255, 240), 0.28))


# --------------------------------------------------------------------------- skeleton

# Rest proportions (cell pixels). The skeleton lives in a character frame: R to the
# character's right, Y down the cell, F in the character's forward direction.
HEAD_Y, HEAD_RX, HEAD_RX_SIDE, HEAD_RY = 24.6, 8.6, 8.0, 8.4
NECK_TOP_Y, NECK_BASE_Y = 31.5, 35.5
CHEST_Y, WAIST_Y = 38.6, 43.2
HIP_Y, HIP_R = 45.7, 3.1
SHOULDER_Y, SHOULDER_R = 36.9, 7.4
ANKLE_Y = 58.9
THIGH, SHIN = 6.8, 6.6
UPPER_ARM, FOREARM = 5.6, 5.4
TORSO_R = (6.4, 5.7)          # chest, waist half-width seen from the front / back
TORSO_R_SIDE = (5.2, 4.8)     # ... seen from the side
ARM_R, FOREARM_R, HAND_R = 2.0, 1.8, 2.1
THIGH_R, SHIN_R, FOOT_R = (2.7, 2.4), (2.3, 2.0), 1.6

PERSPECTIVE = 0.12           # cell y shift per pixel of depth in front / back views
Joints = Dict[str, np.ndarray]


def _v(r: float, y: float, f: float) -> np.ndarray:
    return np.array([r, y, f], dtype=np.float64)


def _ik(root: np.ndarray, target: np.ndarray, upper: float, lower: float, pole: np.ndarray):
    """Two-bone inverse kinematics: (middle joint, reachable end) bending towards `pole`."""
    delta = target - root
    dist = float(np.linalg.norm(delta))
    if dist < 1e-6:
        delta, dist = _v(0, 1, 0), 1e-6
    axis = delta / dist
    dist = float(np.clip(dist, abs(upper - lower) + 1e-3, upper + lower - 1e-4))
    end = root + axis * dist
    along = (upper * upper - lower * lower + dist * dist) / (2 * dist)
    height = np.sqrt(max(upper * upper - along * along, 0.0))
    bend = pole - np.dot(pole, axis) * axis
    norm = np.linalg.norm(bend)
    bend = bend / norm if norm > 1e-6 else np.zeros(3)
    return root + axis * along + bend * height, end


def _leg(joints: Joints, side: str, sign: float, hip_y: float, foot_f: float, lift: float,
         toe_pitch: float = 0.0) -> None:
    hip = _v(sign * HIP_R, hip_y, joints["pelvis"][2])
    ankle = _v(sign * HIP_R, ANKLE_Y - lift, foot_f)
    knee, ankle = _ik(hip, ankle, THIGH, SHIN, _v(0, 0, 1))
    joints["hip_" + side], joints["knee_" + side], joints["ankle_" + side] = hip, knee, ankle
    joints["toe_" + side] = ankle + _v(0, 0.5 + toe_pitch, 2.3)


def _arm(joints: Joints, side: str, sign: float, hand: np.ndarray, pole: np.ndarray, stretch: float = 1.0) -> None:
    shoulder = joints["shoulder_" + side]
    elbow, hand = _ik(shoulder, hand, UPPER_ARM * stretch, FOREARM * stretch, pole)
    joints["elbow_" + side], joints["hand_" + side] = elbow, hand


def pose(animation: str, column: int, side_view: bool = False) -> Joints:
    """3-D joint positions (character frame: R right, Y down, F forward) of one sheet cell.

    This is the one skeleton that every layer is drawn from. `side_view` picks the variant
    of a pose that reads better in profile (spellcast arms rise more to the front there).
    """
    if animation not in ANIMATION_COLUMNS or not 0 <= column < ANIMATION_COLUMNS[animation]:
        raise ValueError(f"no built-in pose for {animation!r} column {column}")
    bob = lean = 0.0
    stretch = 1.0
    feet = {"l": (-0.7, 0.0), "r": (0.7, 0.0)}  # (forward offset, lift)
    arm_pole = {"l": _v(-0.4, 0, -1), "r": _v(0.4, 0, -1)}
    hands = {s: _v(sg * 9.7, 46.6, 0.3) for s, sg in (("l", -1), ("r", 1))}
    shrug = 0.0
    weapon = False
    if animation == "walk" and column > 0:
        phase = 2 * np.pi * (column - 1) / 8
        bob = 1.0 * np.sin(phase) ** 2
        lean = 0.6
        for s, offset in (("r", 0.0), ("l", np.pi)):
            feet[s] = (4.8 * np.sin(phase + offset), 3.0 * max(0.0, np.cos(phase + offset)))
            swing = -5.0 * np.sin(phase + offset)  # arms swing opposite to the leg of their side
            sg = 1 if s == "r" else -1
            hands[s] = _v(sg * 9.4, 46.3 + bob - 0.3 * abs(swing) - 0.25 * max(swing, 0.0), swing + 0.3 + lean)
    elif animation == "spellcast":
        raise_t = (0.0, 0.18, 0.36, 0.56, 0.76, 1.0, 1.0)[column]
        shrug = 2.0 * raise_t
        stretch = 1.0 + 0.95 * raise_t ** 1.5
        angle = np.radians((178 if side_view else 172) * raise_t)
        if side_view:
            forward = 0.97
        else:
            forward = 0.45 if column < 6 else 0.8  # column 6: hands closer together
        for s, sg in (("l", -1), ("r", 1)):
            plane = _v(sg * np.sqrt(1 - forward ** 2), 0, forward)
            direction = plane * np.sin(angle) + _v(0, np.cos(angle), 0)
            shoulder = _v(sg * SHOULDER_R, SHOULDER_Y - shrug, 0)
            hands[s] = shoulder + direction * (UPPER_ARM + FOREARM - 0.3) * stretch
            if not side_view:  # raised hands come slightly forward, in front of the head and hair
                hands[s] = hands[s] + _v(0, 0, 3.5 * raise_t)
            arm_pole[s] = _v(sg * 1.0, 0.6, -0.6) if raise_t > 0 else arm_pole[s]
        feet = {"l": (-1.2, 0.0), "r": (1.2, 0.0)}
    elif animation == "slash":
        weapon = True
        lean = (0.0, -0.4, -0.4, 0.8, 1.5, 1.6)[column]
        bob = (0.0, 0.0, 0.0, 0.6, 1.2, 1.2)[column]
        feet = {"l": (-2.6, 0.0), "r": (2.6, 0.0)}
        right = ((2.5, -3.0, -5.5), (3.0, -9.5, -4.0), (2.0, -11.5, 1.0),
                 (-1.0, -6.0, 8.5), (-6.0, 2.0, 8.0), (-9.5, 8.0, 4.5))[column]
        left = ((-1.0, 7.5, 4.0), (-1.0, 7.0, 4.5), (-1.0, 7.0, 4.5),
                (-1.5, 9.0, -1.0), (-1.5, 9.5, -3.0), (-1.5, 9.5, -3.0))[column]
        shoulder_y = SHOULDER_Y + bob
        hands["r"] = _v(SHOULDER_R, shoulder_y, lean) + _v(*right)
        hands["l"] = _v(-SHOULDER_R, shoulder_y, lean) + _v(*left)
        arm_pole["r"] = _v(0.8, 0.3, -1.0) if column < 3 else _v(0.6, 0.6, -0.6)
        arm_pole["l"] = _v(-0.5, 0.2, -1.0)

    joints: Joints = {
        "head": _v(0, HEAD_Y + bob, lean),
        "neck_top": _v(0, NECK_TOP_Y + bob, lean),
        "neck_base": _v(0, NECK_BASE_Y + bob, 0.7 * lean),
        "chest": _v(0, CHEST_Y + bob, 0.6 * lean),
        "waist": _v(0, WAIST_Y + bob, 0.2 * lean),
        "pelvis": _v(0, HIP_Y - 0.5 + bob, 0.0),
        "shoulder_l": _v(-SHOULDER_R, SHOULDER_Y + bob - shrug, 0.6 * lean),
        "shoulder_r": _v(SHOULDER_R, SHOULDER_Y + bob - shrug, 0.6 * lean),
    }
    for s, sg in (("l", -1.0), ("r", 1.0)):
        foot_f, lift = feet[s]
        _leg(joints, s, sg, HIP_Y + bob, foot_f, lift, toe_pitch=0.8 * lift)
        _arm(joints, s, sg, hands[s], arm_pole[s], stretch)
    if weapon:
        hand, elbow = joints["hand_r"], joints["elbow_r"]
        direction = hand - elbow
        direction /= max(np.linalg.norm(direction), 1e-6)
        joints["blade_base"] = hand + direction * 1.5
        joints["blade_tip"] = hand + direction * 11.0
        guard = np.cross(direction, _v(0, 0, 1) if abs(direction[2]) < 0.9 else _v(1, 0, 0))
        guard /= max(np.linalg.norm(guard), 1e-6)
        joints["guard_a"] = joints["blade_base"] + guard * 2.2
        joints["guard_b"] = joints["blade_base"] - guard * 2.2
    return joints


@dataclass(frozen=True)
class Projected:
    """Joints of one pose seen from one view: cell x, cell y, depth (towards the viewer)."""
    view: str
    points: Dict[str, Tuple[float, float, float]]

    @property
    def side(self) -> bool:
        return self.view in ("left", "right")

    def xy(self, name: str) -> Tuple[float, float]:
        x, y, _ = self.points[name]
        return x, y

    def z(self, *names: str) -> float:
        return float(np.mean([self.points[n][2] for n in names]))


def _project(joints: Joints, view: str) -> Projected:
    """Orthographic view; the left view is drawn as the right view and mirrored afterwards."""
    out = {}
    for name, (r, y, f) in joints.items():
        if view == "front":  # a slight top-down look: nearer points sit a little lower
            out[name] = (32.0 - r, y + PERSPECTIVE * f, f)
        elif view == "back":
            out[name] = (32.0 + r, y - PERSPECTIVE * f, -f)
        elif view == "right":
            out[name] = (32.0 + f, y, r)
        else:
            raise ValueError(f"unknown view {view!r}")
    return Projected(view, out)


# --------------------------------------------------------------------------- drawing groups

@dataclass
class Group:
    """One shape of a layer painted as a unit: outline, shaded fill, then details."""
    name: str
    fill: np.ndarray
    depth: float
    palette: Palette
    covers: FrozenSet[str] = frozenset()     # body groups this group may be drawn over regardless of depth
    ring_skip: FrozenSet[str] = frozenset()  # groups (of this layer) on which no outline is drawn
    details: List[Tuple[np.ndarray, Color]] = field(default_factory=list)
    erase: Optional[np.ndarray] = None       # pixels made transparent after painting (e.g. a neckline)
    shading: bool = True


def _limb(p: Projected, parts: Sequence[Tuple[str, str, float, float]]) -> np.ndarray:
    mask = np.zeros((CELL, CELL), dtype=bool)
    for a, b, ra, rb in parts:
        mask |= _capsule(p.xy(a), p.xy(b), ra, rb)
    return mask


def _arm_depth(p: Projected, s: str) -> float:
    return p.z("elbow_" + s, "hand_" + s) + 0.2


def _leg_depth(p: Projected, s: str) -> float:
    return p.z("hip_" + s, "knee_" + s, "ankle_" + s) - 0.5


def _torso_depth(p: Projected) -> float:
    return p.z("chest", "waist") - 1.0


def _pelvis_depth(p: Projected) -> float:
    return p.z("pelvis") - 1.2


def _head_depth(p: Projected) -> float:
    return p.z("head") + 2.0


def _torso_radii(p: Projected, extra: float = 0.0) -> Tuple[float, float]:
    radii = TORSO_R_SIDE if p.side else TORSO_R
    return radii[0] + extra, radii[1] + extra


# Body ------------------------------------------------------------------------

SKIN_TONES: Tuple[Color, ...] = (
    (255, 222, 190),  # 0 very fair
    (240, 190, 148),  # 1 light
    (222, 170, 110),  # 2 golden
    (189, 127, 78),   # 3 tan
    (138, 86, 52),    # 4 brown
    (86, 54, 38),     # 5 deep brown
)
EYE_COLORS: Tuple[Color, ...] = ((60, 120, 200), (60, 140, 90), (110, 70, 40), (70, 45, 30), (40, 30, 25), (25, 20, 20))
BLADE = Palette.of((200, 208, 220), outline=(40, 44, 56))
HILT = Palette.of((130, 85, 40))


def _head_center(p: Projected) -> Tuple[float, float]:
    return p.xy("head")


def _body_groups(p: Projected, variant: int) -> List[Group]:
    skin = Palette.of(SKIN_TONES[variant])
    eye = EYE_COLORS[variant]
    side = p.side
    groups: List[Group] = []
    chest_r, waist_r = _torso_radii(p)
    torso = _capsule(p.xy("chest"), p.xy("waist"), chest_r, waist_r)
    # pelvis: across the hips, rounder from the side
    pelvis = _capsule(p.xy("hip_l"), p.xy("hip_r"), 4.1 if side else 3.6)
    pelvis |= _capsule(p.xy("waist"), p.xy("pelvis"), waist_r)
    groups.append(Group("pelvis", pelvis, _pelvis_depth(p), skin))
    groups.append(Group("torso", torso, _torso_depth(p), skin, ring_skip=frozenset({"pelvis", "neck"})))
    groups.append(Group("neck", _capsule(p.xy("neck_top"), p.xy("neck_base"), 2.4), _torso_depth(p) - 0.1, skin,
                        shading=False))
    for s in ("l", "r"):
        arm = _limb(p, ((f"shoulder_{s}", f"elbow_{s}", ARM_R, ARM_R - 0.1),
                        (f"elbow_{s}", f"hand_{s}", FOREARM_R, FOREARM_R)))
        arm |= _ellipse(p.xy(f"hand_{s}"), HAND_R, HAND_R)
        groups.append(Group(f"arm_{s}", arm, _arm_depth(p, s), skin))
        leg = _limb(p, ((f"hip_{s}", f"knee_{s}", *THIGH_R), (f"knee_{s}", f"ankle_{s}", *SHIN_R),
                        (f"ankle_{s}", f"toe_{s}", FOOT_R, FOOT_R)))
        groups.append(Group(f"leg_{s}", leg, _leg_depth(p, s), skin, ring_skip=frozenset({"pelvis"})))

    hx, hy = _head_center(p)
    head = _ellipse((hx, hy), HEAD_RX_SIDE if side else HEAD_RX, HEAD_RY)
    details: List[Tuple[np.ndarray, Color]] = []
    ix, iy = int(np.floor(hx + 0.5)), int(np.floor(hy))
    if p.view == "front":
        head |= _ellipse((hx - 8.5, hy + 1.2), 1.6, 2.0) | _ellipse((hx + 8.5, hy + 1.2), 1.6, 2.0)  # ears
        details.append((_pixels([(ix - 5, iy + 2), (ix - 4, iy + 2), (ix + 3, iy + 2), (ix + 4, iy + 2)]), eye))
        details.append((_pixels([(ix - 5, iy + 1), (ix + 4, iy + 1)]), (250, 250, 250)))
        details.append((_pixels([(ix - 4, iy + 1), (ix + 3, iy + 1)]), eye))
        details.append((_pixels([(ix - 1, iy + 5), (ix, iy + 5)]), skin.shade))  # mouth
    elif p.view == "back":
        head |= _ellipse((hx - 8.5, hy + 1.2), 1.6, 2.0) | _ellipse((hx + 8.5, hy + 1.2), 1.6, 2.0)
    else:  # right view (the left one is its mirror)
        head |= _ellipse((hx + 7.6, hy + 2.0), 1.4, 1.4)  # nose
        details.append((_pixels([(ix + 4, iy + 1), (ix + 4, iy + 2)]), eye))
        details.append((_pixels([(ix + 5, iy + 1)]), (250, 250, 250)))
        details.append((_pixels([(ix + 5, iy + 2)]), eye))
        details.append((_pixels([(ix + 6, iy + 5)]), skin.shade))  # mouth
        ear = _ellipse((hx - 1.5, hy + 1.5), 1.5, 2.0) & ~_ellipse((hx - 1.2, hy + 1.5), 0.7, 1.2)
        details.append((ear, skin.shade))
    groups.append(Group("head", head, _head_depth(p), skin, details=details))

    if "blade_tip" in p.points:
        depth = _arm_depth(p, "r") + 0.05
        blade = _capsule(p.xy("blade_base"), p.xy("blade_tip"), 1.1, 0.7)
        groups.append(Group("weapon", blade, depth, BLADE))
        hilt = _capsule(p.xy("guard_a"), p.xy("guard_b"), 0.9) | _capsule(p.xy("hand_r"), p.xy("blade_base"), 0.9)
        groups.append(Group("hilt", hilt, depth + 0.01, HILT, shading=False))
    return groups


# Bottomwear -------------------------------------------------------------------

@dataclass(frozen=True)
class BottomStyle:
    kind: str          # "trousers", "shorts", "capri", "skirt", "long_skirt"
    cloth: Color
    shoes: Color
    boots: bool = False
    belt: Optional[Color] = None


BOTTOM_STYLES: Tuple[BottomStyle, ...] = (
    BottomStyle("trousers", (58, 92, 168), (40, 34, 34), belt=(90, 60, 35)),      # 0 blue trousers
    BottomStyle("shorts", (196, 170, 112), (120, 74, 40)),                        # 1 khaki shorts
    BottomStyle("skirt", (200, 46, 52), (70, 30, 30)),                             # 2 red knee skirt
    BottomStyle("trousers", (70, 70, 78), (128, 80, 44), boots=True),             # 3 grey trousers, boots
    BottomStyle("long_skirt", (52, 130, 96), (50, 40, 36), belt=(220, 190, 80)),  # 4 long green skirt
    BottomStyle("capri", (128, 60, 140), (236, 236, 228)),                        # 5 purple capri, white shoes
)


def _point_between(p: Projected, a: str, b: str, t: float) -> Tuple[float, float]:
    (xa, ya), (xb, yb) = p.xy(a), p.xy(b)
    return xa + (xb - xa) * t, ya + (yb - ya) * t


def _bottomwear_groups(p: Projected, variant: int) -> List[Group]:
    style = BOTTOM_STYLES[variant]
    cloth = Palette.of(style.cloth)
    shoe = Palette.of(style.shoes)
    side = p.side
    groups: List[Group] = []
    waist_line = p.xy("waist")[1] + 0.6
    _, waist_r = _torso_radii(p, 0.5)
    hips = (_capsule(p.xy("hip_l"), p.xy("hip_r"), 4.6 if side else 4.1)
            | _capsule(p.xy("waist"), p.xy("pelvis"), waist_r)) & _below(waist_line)
    pelvis_depth = _pelvis_depth(p) + 0.01
    belt_details = []
    if style.belt is not None:
        belt_details.append((_below(waist_line) & _above(waist_line + 1.2), style.belt))
    legs_covered = frozenset({"pelvis", "leg_l", "leg_r", "torso"})
    if style.kind in ("skirt", "long_skirt"):
        # A flared skirt from the waist to the knees (or the ankles), as wide as the legs' stride.
        hem_t = 0.15 if style.kind == "skirt" else 0.93
        hem_pts = [_point_between(p, f"knee_{s}", f"ankle_{s}", hem_t) for s in ("l", "r")]
        hem_y = max(y for _, y in hem_pts) + (0.5 if style.kind == "skirt" else 0.0)
        hem_lo = min(x for x, _ in hem_pts) - (3.6 if style.kind == "skirt" else 3.9)
        hem_hi = max(x for x, _ in hem_pts) + (3.6 if style.kind == "skirt" else 3.9)
        wx = p.xy("waist")[0]
        top = waist_line - 0.2
        skirt = _polygon([(wx - waist_r, top), (wx + waist_r, top), (hem_hi, hem_y), (hem_lo, hem_y)])
        skirt |= hips
        details = list(belt_details)
        # folds: a few vertical darker lines from the hem
        folds = np.zeros((CELL, CELL), dtype=bool)
        span = hem_hi - hem_lo
        for k in (0.3, 0.7) if style.kind == "skirt" else (0.2, 0.45, 0.7):
            fx = hem_lo + span * k
            folds |= _capsule((wx + (fx - wx) * 0.55, top + (hem_y - top) * 0.45), (fx, hem_y), 0.45)
        details.insert(0, (folds, cloth.shade))
        groups.append(Group("skirt", skirt, pelvis_depth, cloth, covers=legs_covered, details=details))
    else:
        groups.append(Group("hips", hips, pelvis_depth, cloth, covers=frozenset({"pelvis", "torso"}),
                            details=list(belt_details)))
        for s in ("l", "r"):
            parts = [(f"hip_{s}", f"knee_{s}", THIGH_R[0] + 0.55, THIGH_R[1] + 0.55)]
            if style.kind == "trousers":
                parts.append((f"knee_{s}", f"ankle_{s}", SHIN_R[0] + 0.55, SHIN_R[1] + 0.7))
            leg = _limb(p, parts)
            if style.kind == "shorts":
                leg &= _above(_point_between(p, f"hip_{s}", f"knee_{s}", 0.8)[1])
            elif style.kind == "capri":
                leg |= _capsule(p.xy(f"knee_{s}"), _point_between(p, f"knee_{s}", f"ankle_{s}", 0.55),
                                SHIN_R[0] + 0.55, SHIN_R[0] + 0.4)
            groups.append(Group(f"trouser_{s}", leg, _leg_depth(p, s) + 0.01, cloth,
                                covers=frozenset({f"leg_{s}", "pelvis"}), ring_skip=frozenset({"hips"})))
    for s in ("l", "r"):
        foot = _capsule(p.xy(f"ankle_{s}"), p.xy(f"toe_{s}"), FOOT_R + 0.45, FOOT_R + 0.35)
        if style.boots:
            foot |= _capsule(_point_between(p, f"knee_{s}", f"ankle_{s}", 0.35), p.xy(f"ankle_{s}"),
                             SHIN_R[1] + 0.9, SHIN_R[1] + 0.8)
        else:
            foot &= _below(p.xy(f"ankle_{s}")[1] - 0.6)
        details = []
        if style.boots:
            top_y = _point_between(p, f"knee_{s}", f"ankle_{s}", 0.35)[1]
            details.append((_below(top_y - 3) & _above(top_y - 0.2 + 1.2), shoe.light))
        groups.append(Group(f"shoe_{s}", foot, _leg_depth(p, s) + 0.02, shoe,
                            covers=frozenset({f"leg_{s}"}), details=details))
    return groups


# Topwear -----------------------------------------------------------------------

@dataclass(frozen=True)
class TopStyle:
    cloth: Color
    sleeves: str               # "long", "short", "three_quarter"
    hem: float                 # hem line below the waist (pixels)
    pattern: str = "plain"     # "plain", "belt", "buttons", "vneck", "stripes", "trim"
    accent: Color = (0, 0, 0)


TOP_STYLES: Tuple[TopStyle, ...] = (
    TopStyle((176, 40, 48), "long", 4.6, "belt", (84, 52, 30)),            # 0 red tunic with belt
    TopStyle((232, 232, 226), "short", 2.4, "plain"),                       # 1 white t-shirt
    TopStyle((60, 128, 64), "long", 2.8, "buttons", (236, 206, 96)),       # 2 green buttoned shirt
    TopStyle((236, 170, 40), "short", 2.6, "vneck"),                        # 3 yellow v-neck
    TopStyle((36, 52, 110), "long", 2.8, "stripes", (228, 228, 236)),      # 4 navy sailor stripes
    TopStyle((110, 56, 150), "three_quarter", 6.2, "trim", (232, 192, 72)),  # 5 purple robe, gold trim
)


def _topwear_groups(p: Projected, variant: int) -> List[Group]:
    style = TOP_STYLES[variant]
    cloth = Palette.of(style.cloth)
    side = p.side
    groups: List[Group] = []
    chest_r, waist_r = _torso_radii(p, 0.6)
    collar_y = p.xy("neck_base")[1] - 0.6
    hem_y = p.xy("waist")[1] + style.hem
    wx, wy = p.xy("waist")
    hem_r = waist_r + 0.35 + (0.12 * style.hem if style.hem > 4 else 0.0)
    body = _capsule(p.xy("chest"), p.xy("waist"), chest_r, waist_r)
    body |= _capsule(p.xy("waist"), (wx, hem_y), waist_r, hem_r)
    body |= _capsule(p.xy("shoulder_l"), p.xy("shoulder_r"), 2.7)  # shoulder line
    body &= _below(collar_y) & _above(hem_y)
    details: List[Tuple[np.ndarray, Color]] = []
    erase = None
    cx = p.xy("chest")[0]
    if style.pattern == "belt":
        details.append((_below(wy + 0.4) & _above(wy + 2.0), style.accent))
        details.append((_pixels([(int(np.floor(cx + (2.0 if side else 0))), int(np.floor(wy + 1.0)))]), (220, 190, 80)))
    elif style.pattern == "buttons" and p.view == "front":
        details.append((_pixels([(int(np.floor(cx)), int(y)) for y in np.arange(collar_y + 2.5, hem_y - 1, 2.5)]),
                        style.accent))
    elif style.pattern == "vneck" and p.view in ("front", "right"):
        vx = cx + (3.6 if side else 0.0)
        erase = _polygon([(vx - 2.6, collar_y - 0.5), (vx + 2.6, collar_y - 0.5), (vx, collar_y + 4.0)]) & body
        details.append(((_dilate(erase) & ~erase & body), cloth.shade))
    elif style.pattern == "trim":
        details.append((_below(hem_y - 1.2), style.accent))
        if p.view == "front":
            details.append((_capsule((cx, collar_y), (cx, hem_y), 0.6), style.accent))
    groups.append(Group("shirt", body, _torso_depth(p) + 0.01, cloth,
                        covers=frozenset({"torso", "pelvis", "neck", "leg_l", "leg_r"}), details=details, erase=erase))
    for s in ("l", "r"):
        parts = [(f"shoulder_{s}", f"elbow_{s}", ARM_R + 0.7, ARM_R + 0.55)]
        sleeve = _limb(p, parts)
        if style.sleeves == "long":
            sleeve |= _capsule(p.xy(f"elbow_{s}"), _point_between(p, f"elbow_{s}", f"hand_{s}", 0.62),
                               FOREARM_R + 0.55, FOREARM_R + 0.6)
        if style.sleeves == "short":
            # only the upper 70 % of the upper arm
            (sx, sy), (ex, ey) = p.xy(f"shoulder_{s}"), p.xy(f"elbow_{s}")
            dx, dy = ex - sx, ey - sy
            t = ((_PX - sx) * dx + (_PY - sy) * dy) / max(dx * dx + dy * dy, 1e-6)
            sleeve &= t <= 0.7
        elif style.sleeves == "three_quarter":
            sleeve |= _capsule(p.xy(f"elbow_{s}"), _point_between(p, f"elbow_{s}", f"hand_{s}", 0.45),
                               FOREARM_R + 0.6, FOREARM_R + 1.1)
        details = []
        if style.pattern == "stripes":
            details.append((((_PY.astype(np.int32) + 1) % 3 == 0), style.accent))
        elif style.pattern == "trim" and style.sleeves == "three_quarter":
            cuff = _capsule(_point_between(p, f"elbow_{s}", f"hand_{s}", 0.3),
                            _point_between(p, f"elbow_{s}", f"hand_{s}", 0.5), FOREARM_R + 1.3)
            details.append((cuff, style.accent))
        elif style.sleeves == "long":
            cuff = _capsule(_point_between(p, f"elbow_{s}", f"hand_{s}", 0.5),
                            _point_between(p, f"elbow_{s}", f"hand_{s}", 0.62), FOREARM_R + 1.2)
            details.append((cuff, cloth.shade))
        groups.append(Group(f"sleeve_{s}", sleeve, _arm_depth(p, s) + 0.01, cloth,
                            covers=frozenset({f"arm_{s}"}), details=details))
    if style.pattern == "stripes":
        groups[0].details.append((((_PY.astype(np.int32) + 1) % 3 == 0) & _below(collar_y + 1.5), style.accent))
    return groups


# Hair ---------------------------------------------------------------------------

@dataclass(frozen=True)
class HairStyle:
    kind: str
    color: Color


HAIR_STYLES: Tuple[HairStyle, ...] = (
    HairStyle("crop", (92, 58, 32)),        # 0 short dark-brown crop
    HairStyle("long", (236, 200, 96)),      # 1 long straight blonde
    HairStyle("spiky", (38, 36, 44)),       # 2 black spikes
    HairStyle("ponytail", (200, 86, 36)),   # 3 ginger ponytail
    HairStyle("bob", (214, 214, 226)),      # 4 silver bob with fringe
    HairStyle("curly", (40, 150, 160)),     # 5 big teal curls
)


def _hair_groups(p: Projected, variant: int) -> List[Group]:
    style = HAIR_STYLES[variant]
    pal = Palette.of(style.color)
    hx, hy = _head_center(p)
    u, v = _PX - hx, _PY - hy
    side = p.side
    rx = (HEAD_RX_SIDE if side else HEAD_RX) + 0.9
    ry = HEAD_RY + 0.9
    cap = (u / rx) ** 2 + ((v + 0.3) / ry) ** 2 <= 1.0
    back_z = {"front": -5.0, "back": 5.0, "right": 0.0}[p.view]
    head_depth = _head_depth(p) + 0.01
    groups: List[Group] = []
    covers = frozenset({"head", "neck"})
    # Where the face is: the front of the head in front and side views.
    if p.view == "front":
        face = (v > -3.2) | ((v > 0.5) & (np.abs(u) > 6.5))
    elif p.view == "back":
        face = v > 4.5
    else:
        face = ((u > 1.5) & (v > -3.2)) | ((u > -2.5) & (v > 0.5)) | (v > 5.0)
    extra: List[Tuple[str, np.ndarray, float]] = []  # additional groups: name, mask, depth
    if style.kind == "crop":
        hair = cap & ~face
    elif style.kind == "long":
        hair = cap & ~face
        hem = 13.5 - 1.6 * np.abs(((u + 1.0) / 2.0) % 2 - 1)  # jagged ends
        if p.view == "front":
            locks = (_capsule((hx - rx + 1.2, hy - 3.0), (hx - rx + 0.8, hy + 6.5), 1.9, 1.4)
                     | _capsule((hx + rx - 1.2, hy - 3.0), (hx + rx - 0.8, hy + 6.5), 1.9, 1.4))
            hair |= locks
            fall = (_capsule((hx - 7.6, hy), (hx - 8.6, hy + 11.5), 2.8, 2.2)
                    | _capsule((hx + 7.6, hy), (hx + 8.6, hy + 11.5), 2.8, 2.2))
            extra.append(("hair_back", fall & (v > -1) & (v < hem), back_z))
        elif p.view == "back":
            hair |= _polygon([(hx - rx, hy - 1), (hx + rx, hy - 1), (hx + rx - 1.2, hy + 14),
                              (hx - rx + 1.2, hy + 14)]) & (v < hem)
        else:
            fall = _polygon([(hx - rx + 0.3, hy - 2), (hx + 0.5, hy - 2), (hx - 0.5, hy + 14),
                             (hx - rx + 0.5, hy + 14)]) & (v < hem)
            extra.append(("hair_back", fall, back_z))
    elif style.kind == "spiky":
        tri = np.abs(((u + 1.6) / 3.2) % 2 - 1)  # zig-zag 0..1 with period 6.4 px
        top = -ry - 2.6 + 3.6 * tri
        spikes = (v >= top) & (np.abs(u) <= rx + 0.6) & (v < -2)
        if side:
            # a few spikes sticking out at the back of the head
            spikes |= (v >= -ry - 1.5 + 3.0 * np.abs(((v + 0.5) / 2.5) % 2 - 1)) & (u < -rx + 3.5) \
                & (u > -rx - 2.0) & (v < 2.5)
        hair = (cap | spikes) & ~face
    elif style.kind == "ponytail":
        hair = cap & ~face
        band = None
        if p.view == "back":
            tail = _capsule((hx, hy - 1.0), (hx, hy + 11.5), 2.2, 2.8)
            hair |= tail
            band = _capsule((hx, hy + 0.5), (hx, hy + 1.5), 2.6)
        elif side:
            tail = _capsule((hx - rx + 1.0, hy - 3.5), (hx - rx - 2.0, hy + 1.0), 2.0, 2.8)
            tail |= _capsule((hx - rx - 2.0, hy + 1.0), (hx - rx - 1.2, hy + 9.5), 2.8, 2.0)
            hair |= tail
            band = _capsule((hx - rx + 0.6, hy - 3.4), (hx - rx + 0.1, hy - 2.6), 1.9)
        else:
            tail = _capsule((hx + 0.5, hy - 3.0), (hx + rx + 1.5, hy + 6.0), 2.2, 2.6)
            extra.append(("hair_back", tail, back_z))
        if band is not None:
            extra.append(("hair_band", band & hair, head_depth + 0.02))
    elif style.kind == "bob":
        bob = (u / (rx + 1.0)) ** 2 + ((v + 0.8) / (ry + 0.6)) ** 2 <= 1.0
        bob |= (np.abs(u) <= rx + 1.0) & (v > -1) & (v < 5.6)
        if p.view == "front":
            fringe = (v > -1.8) & (np.abs(u) < 6.6)
            hair = bob & ~fringe & ~((v > 5.0))
        elif p.view == "back":
            hair = bob & (v < 6.6)
        else:
            hair = bob & ~((u > 0.5) & (v > -1.8)) & (v < 6.6)
    elif style.kind == "curly":
        angle = np.arctan2(v + 3.0, u)
        bumps = 0.9 * np.cos(angle * 9)
        puff = np.hypot(u, (v + 3.0) * 1.08) <= rx + 3.0 + bumps
        if p.view == "front":
            hair = puff & ~((np.abs(u) < 6.8) & (v > -3.0)) & (v < 3.0)
        elif p.view == "back":
            hair = puff & (v < 6.0)
        else:
            hair = puff & ~((u > 0.0) & (v > -3.0)) & (v < 5.0)
    else:  # pragma: no cover - the style table is fixed
        raise AssertionError(style.kind)
    hair = np.asarray(hair, dtype=bool)
    # Strand texture: darker streaks radiating from the crown.
    if style.kind == "curly":
        streak = ((_PX.astype(np.int32) * 3 + _PY.astype(np.int32) * 5) % 7 < 2)
    else:  # thin lines between wedges radiating from a point above the crown
        crown = np.arctan2(_PY - (hy - HEAD_RY - 5.0), _PX - hx + (3.0 if side else 0.0))
        band = np.floor(crown * 11).astype(np.int32)
        streak = np.zeros((CELL, CELL), dtype=bool)
        streak[:, 1:] = band[:, 1:] != band[:, :-1]
        streak &= (band % 2 == 0)
    details = [(streak, pal.shade)]
    groups.append(Group("hair", hair, head_depth, pal, covers=covers, details=details))
    for name, mask, depth in extra:
        if name == "hair_band":
            groups.append(Group(name, mask, depth, Palette.of((60, 60, 180)), covers=covers, shading=False))
        else:
            groups.append(Group(name, np.asarray(mask, dtype=bool), depth, pal, covers=frozenset(),
                                details=[(streak, pal.shade)]))
    return groups


_LAYER_GROUPS = {"body": _body_groups, "bottomwear": _bottomwear_groups,
                 "topwear": _topwear_groups, "hair": _hair_groups}


# --------------------------------------------------------------------------- painting

def _paint(groups: Sequence[Group], occluders: Optional[Sequence[Tuple[str, float, np.ndarray]]]) -> np.ndarray:
    """Paints groups back to front into a (64, 64, 4) RGBA cell.

    `occluders` (name, depth, mask) are the body's groups: a group of a clothing layer is
    not painted where a body group lying in front of it shows, unless it covers that group.
    """
    rgba = np.zeros((CELL, CELL, 4), dtype=np.uint8)
    owner = np.full((CELL, CELL), -1, dtype=np.int32)
    ordered = sorted(groups, key=lambda g: g.depth)
    index = {g.name: i for i, g in enumerate(ordered)}
    for i, g in enumerate(ordered):
        fill = g.fill
        if not fill.any():
            continue
        ring = _dilate(fill) & ~fill
        visible = np.ones((CELL, CELL), dtype=bool)
        if occluders is not None:
            for name, depth, mask in occluders:
                if depth > g.depth and name not in g.covers:
                    visible &= ~mask
        if g.ring_skip:
            skip_ids = [index[n] for n in g.ring_skip if n in index]
            if skip_ids:
                ring &= ~np.isin(owner, skip_ids)
        ring &= visible
        paint = fill & visible
        rgba[ring] = (*g.palette.outline, 255)
        rgba[paint] = (*g.palette.base, 255)
        if g.shading:
            right_open = np.ones_like(fill)
            right_open[:, :-1] = ~fill[:, 1:]
            down_open = np.ones_like(fill)
            down_open[:-1] = ~fill[1:]
            left_open = np.ones_like(fill)
            left_open[:, 1:] = ~fill[:, :-1]
            up_open = np.ones_like(fill)
            up_open[1:] = ~fill[:-1]
            shade = paint & (right_open | down_open)
            light = paint & (left_open | up_open) & ~shade
            rgba[light] = (*g.palette.light, 255)
            rgba[shade] = (*g.palette.shade, 255)
        for mask, color in g.details:
            sel = mask & paint
            rgba[sel] = (*color, 255)
        owner[ring | paint] = i
        if g.erase is not None:
            rgba[g.erase & paint] = 0
            owner[g.erase & paint] = -1
    return rgba


@lru_cache(maxsize=None)
def _body_occluders(animation: str, view: str, column: int) -> Tuple[Tuple[str, float, np.ndarray], ...]:
    p = _project(pose(animation, column, view == "right"), view)
    out = []
    for g in _body_groups(p, 0):
        mask = _dilate(g.fill)
        mask.setflags(write=False)
        out.append((g.name, g.depth, mask))
    return tuple(out)


def _render_cell(layer: str, variant: int, animation: str, view: str, column: int) -> np.ndarray:
    """One cell; the left view is the mirror of the right one (drawn by the caller)."""
    p = _project(pose(animation, column, view == "right"), view)
    groups = _LAYER_GROUPS[layer](p, variant)
    occluders = None if layer == "body" else _body_occluders(animation, view, column)
    return _paint(groups, occluders)


def _check(layer: str, variant: int) -> None:
    if layer not in BUILTIN_LAYERS:
        raise ValueError(f"unknown built-in layer {layer!r}; the layers are {BUILTIN_LAYERS}")
    if isinstance(variant, bool) or not isinstance(variant, (int, np.integer)) or not 0 <= variant < BUILTIN_VARIANTS:
        raise ValueError(f"built-in {layer} variant {variant!r} outside [0, {BUILTIN_VARIANTS})")


def draw_layer_sheet(layer: str, variant: int) -> np.ndarray:
    """(1344, 832, 4) uint8 RGBA LPC-layout sheet of one layer variant; alpha is exactly 0 or 255."""
    _check(layer, variant)
    variant = int(variant)
    sheet = np.zeros((SHEET_HEIGHT, SHEET_WIDTH, 4), dtype=np.uint8)
    for animation, first_row in ANIMATION_ROWS.items():
        for column in range(ANIMATION_COLUMNS[animation]):
            x = column * CELL
            for offset, view in enumerate(VIEWS):
                y = (first_row + offset) * CELL
                if view == "left":
                    continue
                cell = _render_cell(layer, variant, animation, view, column)
                sheet[y:y + CELL, x:x + CELL] = cell
                if view == "right":  # the left view is its exact mirror
                    y_left = (first_row + VIEWS.index("left")) * CELL
                    sheet[y_left:y_left + CELL, x:x + CELL] = cell[:, ::-1]
    return sheet


# --------------------------------------------------------------------------- background

def _value_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Smooth noise in [0, 1]: bilinear-smoothstep interpolation of a random lattice."""
    gh, gw = int(np.ceil(height / cell)) + 2, int(np.ceil(width / cell)) + 2
    lattice = rng.random((gh, gw))
    y = np.arange(height) / cell
    x = np.arange(width) / cell
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    ty, tx = y - y0, x - x0
    ty, tx = ty * ty * (3 - 2 * ty), tx * tx * (3 - 2 * tx)
    a = lattice[y0][:, x0]
    b = lattice[y0][:, x0 + 1]
    c = lattice[y0 + 1][:, x0]
    d = lattice[y0 + 1][:, x0 + 1]
    top = a + (b - a) * tx[None, :]
    bottom = c + (d - c) * tx[None, :]
    return top + (bottom - top) * ty[:, None]


def _fractal(rng: np.random.Generator, height: int, width: int, cell: float, octaves: int = 3) -> np.ndarray:
    total = np.zeros((height, width))
    amp, norm = 1.0, 0.0
    for _ in range(octaves):
        total += amp * _value_noise(rng, height, width, max(cell, 1.0))
        norm += amp
        amp *= 0.5
        cell /= 2
    return total / norm


def draw_background(width: int, height: int, seed: int) -> np.ndarray:
    """(height, width, 3) uint8 textured landscape, deterministic in (width, height, seed).

    Sky gradient with clouds, two ranges of hills, a grassy field with fine noise, a dirt
    path, bushes, trees and flowers.
    """
    if int(width) < 1 or int(height) < 1:
        raise ValueError(f"background size must be positive, got {width}×{height}")
    width, height = int(width), int(height)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0xB6, width, height]))
    ys = np.arange(height, dtype=np.float64)[:, None]
    xs = np.arange(width, dtype=np.float64)[None, :]
    img = np.zeros((height, width, 3))
    scale = height / 121.0

    # Sky: vertical gradient plus soft clouds.
    horizon = height * rng.uniform(0.30, 0.38)
    t = np.clip(ys / max(horizon, 1.0), 0, 1)
    sky_top, sky_low = np.array([84, 140, 214]), np.array([186, 218, 240])
    img[:] = sky_top + (sky_low - sky_top) * t[..., None]
    clouds = _fractal(rng, height, width, 22 * scale + 4, 3)
    cloud_amount = np.clip((clouds - 0.55) * 4.0, 0, 1) * np.clip(1.2 - ys / max(horizon, 1.0), 0, 1)
    img += (np.array([250, 250, 252]) - img) * cloud_amount[..., None]

    # Far hills (bluish) and near hills (green), each a noisy ridge line.
    def ridge(base: float, amp: float, cell: float) -> np.ndarray:
        line = _fractal(rng, 1, width, cell, 3)[0]
        return base - amp * line

    far = ridge(horizon + 6 * scale, 14 * scale, 40 * scale + 4)
    near = ridge(horizon + 14 * scale, 12 * scale, 28 * scale + 4)
    far_mask = ys >= far[None, :]
    near_mask = ys >= near[None, :]
    tex = _fractal(rng, height, width, 6.0, 2)
    img[far_mask] = (np.array([112, 146, 170]) + 18 * (tex[far_mask, None] - 0.5))
    near_col = np.array([86, 140, 78]) + 30 * (tex[..., None] - 0.5)
    img[near_mask] = near_col[near_mask]

    # Field: from a wavy line below the near hills to the bottom; lighter towards the viewer.
    field_top = horizon + 22 * scale + 3 * np.sin(xs[0] / (9 * scale + 1) + rng.uniform(0, 6.28))
    field = ys >= field_top[None, :]
    depth = np.clip((ys - field_top[None, :]) / max(height - field_top.mean(), 1.0), 0, 1)
    coarse = _fractal(rng, height, width, 14 * scale + 2, 3)
    fine = rng.random((height, width))
    grass = (np.array([70, 128, 52])[None, None] + depth[..., None] * np.array([40, 50, 10])
             + (coarse[..., None] - 0.5) * np.array([40, 50, 26]) + (fine[..., None] - 0.5) * np.array([34, 40, 22]))
    # grass blades: short darker vertical streaks
    blades = (rng.random((height, width)) < 0.09) & field
    blade_shift = np.zeros_like(blades)
    blade_shift[:-1] = blades[1:]
    grass[blades | blade_shift] *= 0.78
    img[field] = grass[field]

    # Dirt path winding from the bottom towards the horizon.
    path_x0 = width * rng.uniform(0.3, 0.7)
    wobble = rng.uniform(0, 6.28)
    path_center = path_x0 + 10 * scale * np.sin(ys / (14 * scale + 1) + wobble)
    half = (1.5 + 11 * scale * depth)
    path = field & (np.abs(xs - path_center) <= half)
    dirt = (np.array([172, 138, 92])[None, None] + (coarse[..., None] - 0.5) * 40
            + (fine[..., None] - 0.5) * np.array([36, 30, 24]))
    pebbles = (rng.random((height, width)) < 0.05)
    dirt[pebbles] = dirt[pebbles] * 0.72
    edge = path & ~(np.abs(xs - path_center) <= half - 1.2)
    img[path] = dirt[path]
    img[edge] *= 0.85

    def disc(cx, cy, r, color, shade=0.75, berries=None):
        dist = np.sqrt((xs - cx) ** 2 + ((ys - cy) * 1.1) ** 2)
        bumpy = r * (1.0 + 0.12 * np.cos(6 * np.arctan2(ys - cy, xs - cx)))
        mask = dist <= bumpy
        rim = (dist <= bumpy + 1.0) & ~mask
        lit = mask & ((xs - cx) + (ys - cy) < -r * 0.2)
        img[rim] = np.array(color) * 0.45
        img[mask] = color
        img[mask & ~lit] = np.array(color) * shade
        leaf = mask & (rng.random((height, width)) < 0.25)
        img[leaf] = np.array(color) * (shade - 0.12)
        if berries is not None:
            dots = mask & (rng.random((height, width)) < 0.06)
            img[dots] = berries

    # Trees on the near hills / field edge, bushes and flowers in the field (not on the path).
    for _ in range(rng.integers(3, 6)):
        tx_ = rng.uniform(0, width)
        base_y = float(field_top[int(np.clip(tx_, 0, width - 1))]) + rng.uniform(-2, 4) * scale
        trunk_h = rng.uniform(8, 13) * scale
        trunk = (np.abs(xs - tx_) <= 1.2 * scale + 0.5) & (ys <= base_y) & (ys >= base_y - trunk_h)
        img[trunk] = np.array([96, 64, 36]) * (0.85 + 0.3 * tex[trunk, None])
        crown_r = rng.uniform(6, 10) * scale
        disc(tx_, base_y - trunk_h - crown_r * 0.5, crown_r, [46 + rng.integers(0, 30), 104 + rng.integers(0, 30), 44])
    for _ in range(rng.integers(3, 7)):
        bx = rng.uniform(0, width)
        by = rng.uniform(field_top.mean() + 6 * scale, height)
        if abs(bx - (path_x0 + 10 * scale * np.sin(by / (14 * scale + 1) + wobble))) < 8 * scale + 6:
            continue
        disc(bx, by, rng.uniform(3, 6) * scale, [70 + rng.integers(0, 30), 140 + rng.integers(0, 30), 60],
             berries=[(220, 40, 60), (250, 220, 80), (240, 240, 250)][int(rng.integers(0, 3))])
    flower_colors = np.array([[240, 80, 90], [250, 230, 90], [250, 250, 250], [180, 110, 230], [250, 160, 60]])
    flowers = field & ~path & (rng.random((height, width)) < 0.012)
    fy, fx = np.nonzero(flowers)
    colors = flower_colors[rng.integers(0, len(flower_colors), size=len(fy))]
    img[fy, fx] = colors
    ok = fx + 1 < width
    img[fy[ok], fx[ok] + 1] = colors[ok] * 0.8
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
