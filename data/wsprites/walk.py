"""The random processes of W-Sprites (SPEC §1.2): sprite walk, animation choice, background walk.

Frame convention, used for every per-frame label: `actions[t]` is the walk action that
moved the walker from frame t−1 to frame t, and `positions[t] − positions[t−1]` is the
displacement it produced (clamped at the borders); frame 0 carries the initial action and
no displacement. The animation shown in frame t follows `actions[t]`.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

# Global (walk) action ids, SPEC §1.2.
LEFT, RIGHT, UP, DOWN, STAY = 0, 1, 2, 3, 4
GLOBAL_ACTION_NAMES = ("left", "right", "up", "down", "stay")
_DIRECTIONS = {LEFT: (-1, 0), RIGHT: (1, 0), UP: (0, -1), DOWN: (0, 1), STAY: (0, 0)}

# Local action (animation) ids, SPEC §1.2.
LOCAL_ACTION_NAMES = (
    "walk-front", "walk-left", "walk-right",
    "spellcast-front", "spellcast-left", "spellcast-right",
    "slash-front", "slash-left", "slash-right",
)
WALK_ANIMATION_FOR_ACTION = {RIGHT: 2, LEFT: 1, UP: 0, DOWN: 0}
STAY_ANIMATIONS = (3, 4, 5, 6, 7, 8)
FRAMES_PER_ANIMATION = 8


def available_actions(x: int, y: int, max_x: int, max_y: int) -> List[int]:
    """Actions that do not push against a border the walker already stands on (stay always)."""
    actions = []
    if x > 0:
        actions.append(LEFT)
    if x < max_x:
        actions.append(RIGHT)
    if y > 0:
        actions.append(UP)
    if y < max_y:
        actions.append(DOWN)
    actions.append(STAY)
    return actions


def random_walk(rng: np.random.Generator, num_frames: int, max_x: int, max_y: int,
                step: int, p_inertia: float) -> Tuple[np.ndarray, np.ndarray]:
    """An inertial random walk over the integer grid [0, max_x] × [0, max_y].

    The start is uniform and its action a uniform draw from the available ones. At each
    later frame a candidate is drawn uniformly from the available actions other than the
    current one; the current action is kept with probability `p_inertia`, else the
    candidate is taken. A current action that has become unavailable is replaced by a
    uniform draw from the available ones. Each move is `step` pixels, clamped to the grid.

    Returns positions (num_frames, 2) int64 as (x, y) and actions (num_frames,) int64.
    """
    positions = np.zeros((num_frames, 2), dtype=np.int64)
    actions = np.zeros(num_frames, dtype=np.int64)
    x, y = int(rng.integers(0, max_x + 1)), int(rng.integers(0, max_y + 1))
    available = available_actions(x, y, max_x, max_y)
    action = available[int(rng.integers(len(available)))]
    positions[0], actions[0] = (x, y), action
    for t in range(1, num_frames):
        available = available_actions(x, y, max_x, max_y)
        if action not in available:
            action = available[int(rng.integers(len(available)))]
        else:
            others = [a for a in available if a != action]
            candidate = others[int(rng.integers(len(others)))]
            if rng.random() >= p_inertia:
                action = candidate
        dx, dy = _DIRECTIONS[action]
        x = min(max(x + dx * step, 0), max_x)
        y = min(max(y + dy * step, 0), max_y)
        positions[t], actions[t] = (x, y), action
    return positions, actions


def choose_animations(rng: np.random.Generator, actions: np.ndarray,
                      min_hold: int = 4, max_hold: int = 8) -> Tuple[np.ndarray, np.ndarray]:
    """The animation (local action id) and its frame index for every frame of a walk.

    Moving right/left shows walk-right/walk-left, up and down walk-front. While the walker
    stays, a stay animation (slash or spellcast, left/right/front) is drawn uniformly among
    those different from the previous stay animation and held for a uniform number of
    frames in [min_hold, max_hold], or until the walk leaves stay; then a new one is drawn.
    An animation starts at its first frame whenever the animation changes, then loops.

    Returns animation ids (T,) int64 and frame indices in [0, 8) (T,) int64.
    """
    num_frames = len(actions)
    animations = np.zeros(num_frames, dtype=np.int64)
    phases = np.zeros(num_frames, dtype=np.int64)
    previous_stay_animation = -1
    hold_remaining = 0
    previous_animation, phase = -1, 0
    for t, action in enumerate(actions):
        if action == STAY:
            if hold_remaining == 0:
                choices = [a for a in STAY_ANIMATIONS if a != previous_stay_animation]
                previous_stay_animation = choices[int(rng.integers(len(choices)))]
                hold_remaining = int(rng.integers(min_hold, max_hold + 1))
            animation = previous_stay_animation
            hold_remaining -= 1
        else:
            hold_remaining = 0  # leaving stay ends the hold: the next stay draws anew
            animation = WALK_ANIMATION_FOR_ACTION[int(action)]
        phase = 0 if animation != previous_animation else (phase + 1) % FRAMES_PER_ANIMATION
        animations[t], phases[t] = animation, phase
        previous_animation = animation
    return animations, phases


def displacements(positions: np.ndarray) -> np.ndarray:
    """Per-frame displacement (T, 2) from the previous frame; the first is (0, 0)."""
    result = np.zeros_like(positions)
    result[1:] = positions[1:] - positions[:-1]
    return result
