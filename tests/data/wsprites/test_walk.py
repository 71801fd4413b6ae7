"""The random processes of W-Sprites against the rules of SPEC §1.2, over many steps."""
import numpy as np
import pytest

from data.wsprites import walk
from data.wsprites.generate import WSpritesParameters, simulate_video, video_seed

STEPS = 60_000


@pytest.fixture(scope="module")
def sprite_walk():
    rng = np.random.default_rng(123)
    return walk.random_walk(rng, STEPS, max_x=63, max_y=31, step=7, p_inertia=0.9)


def _available_mask(positions, actions, max_x, max_y):
    """True where the previous action was still available at the previous position."""
    return np.array([actions[t - 1] in walk.available_actions(*positions[t - 1], max_x, max_y)
                     for t in range(1, len(actions))])


def test_sprite_walk_stays_in_bounds_and_moves_axis_aligned_by_at_most_7(sprite_walk):
    positions, actions = sprite_walk
    assert positions[:, 0].min() == 0 and positions[:, 0].max() == 63
    assert positions[:, 1].min() == 0 and positions[:, 1].max() == 31
    moves = walk.displacements(positions)[1:]
    assert np.all((moves[:, 0] == 0) | (moves[:, 1] == 0)), "moves are horizontal or vertical"
    assert np.abs(moves).max() == 7
    # A move of fewer than 7 pixels happens only when clamped at a border.
    short = (np.abs(moves).sum(axis=1) > 0) & (np.abs(moves).sum(axis=1) < 7)
    ends = positions[1:][short]
    assert np.all((ends[:, 0] == 0) | (ends[:, 0] == 63) | (ends[:, 1] == 0) | (ends[:, 1] == 31))


def test_sprite_walk_direction_matches_action(sprite_walk):
    positions, actions = sprite_walk
    moves = walk.displacements(positions)[1:]
    expected_sign = {walk.LEFT: (-1, 0), walk.RIGHT: (1, 0), walk.UP: (0, -1), walk.DOWN: (0, 1), walk.STAY: (0, 0)}
    for action, (sx, sy) in expected_sign.items():
        selected = moves[actions[1:] == action]
        assert len(selected) > 1000
        assert np.all(np.sign(selected[:, 0]) == sx) and np.all(np.sign(selected[:, 1]) == sy)


def test_sprite_walk_keeps_its_action_with_probability_0_9(sprite_walk):
    positions, actions = sprite_walk
    available = _available_mask(positions, actions, 63, 31)
    kept = actions[1:][available] == actions[:-1][available]
    assert kept.mean() == pytest.approx(0.9, abs=0.006)


def test_sprite_walk_never_keeps_an_unavailable_action(sprite_walk):
    positions, actions = sprite_walk
    available = _available_mask(positions, actions, 63, 31)
    assert (~available).sum() > 100, "the walk should hit the borders often"
    assert np.all(actions[1:][~available] != actions[:-1][~available])
    # ... and never takes an unavailable one.
    for t in range(1, 5000):
        assert actions[t] in walk.available_actions(*positions[t - 1], 63, 31)


def test_walk_switches_uniformly_among_the_other_actions():
    # A large grid keeps the walk away from the borders, where fewer actions are available.
    positions, actions = walk.random_walk(np.random.default_rng(5), 100_000, 100_000, 100_000, 1, 0.9)
    interior = np.all((positions[:-1] > 0) & (positions[:-1] < 100_000), axis=1)
    switched = (actions[1:] != actions[:-1]) & interior
    for previous in range(5):
        targets = actions[1:][switched & (actions[:-1] == previous)]
        counts = np.bincount(targets, minlength=5)
        assert counts[previous] == 0
        shares = np.delete(counts, previous) / counts.sum()
        assert np.allclose(shares, 0.25, atol=0.03), (previous, shares)


def test_walk_start_is_uniform():
    starts = np.array([walk.random_walk(np.random.default_rng(seed), 1, 63, 31, 7, 0.9)[0][0] for seed in range(4000)])
    assert starts[:, 0].min() == 0 and starts[:, 0].max() == 63
    assert starts[:, 0].mean() == pytest.approx(31.5, abs=1.2)
    assert starts[:, 1].mean() == pytest.approx(15.5, abs=0.6)


def test_background_walk_range_step_and_inertia():
    rng = np.random.default_rng(7)
    offsets, actions = walk.random_walk(rng, STEPS, max_x=25, max_y=25, step=2, p_inertia=0.95)
    assert offsets.min() == 0 and offsets.max() == 25
    moves = np.abs(walk.displacements(offsets)).sum(axis=1)
    assert set(np.unique(moves)) == {0, 1, 2}  # 1 only when clamped at 25 from 24
    available = _available_mask(offsets, actions, 25, 25)
    kept = actions[1:][available] == actions[:-1][available]
    assert kept.mean() == pytest.approx(0.95, abs=0.005)


def _stay_runs(actions, animations):
    """(animation, length, ended_by_leaving_stay_or_video_end) for each held stay animation."""
    runs, t = [], 0
    while t < len(actions):
        if actions[t] != walk.STAY:
            t += 1
            continue
        start = t
        while t + 1 < len(actions) and actions[t + 1] == walk.STAY and animations[t + 1] == animations[start]:
            t += 1
        cut = t + 1 == len(actions) or actions[t + 1] != walk.STAY
        runs.append((animations[start], t - start + 1, cut))
        t += 1
    return runs


def test_animation_follows_the_walk_direction():
    rng = np.random.default_rng(3)
    _, actions = walk.random_walk(rng, 20_000, 63, 31, 7, 0.9)
    animations, phases = walk.choose_animations(rng, actions)
    expected = {walk.RIGHT: 2, walk.LEFT: 1, walk.UP: 0, walk.DOWN: 0}
    for action, animation in expected.items():
        assert np.all(animations[actions == action] == animation)
    assert set(np.unique(animations[actions == walk.STAY])) == set(walk.STAY_ANIMATIONS)
    assert phases.min() == 0 and phases.max() == 7


def test_stay_animations_are_held_4_to_8_frames_uniformly():
    # Staying for good: every hold runs to its drawn length.
    actions = np.full(30_000, walk.STAY)
    animations, _ = walk.choose_animations(np.random.default_rng(2), actions)
    lengths = [length for _, length, _ in _stay_runs(actions, animations)][:-1]  # the last is cut by the end
    counts = np.bincount(lengths, minlength=9)
    assert counts[:4].sum() == 0 and len(counts) == 9
    assert np.allclose(counts[4:] / counts.sum(), 0.2, atol=0.02), counts


def test_stay_animations_end_when_the_walk_moves_and_do_not_repeat():
    rng = np.random.default_rng(11)
    _, actions = walk.random_walk(rng, 60_000, 63, 31, 7, 0.9)
    animations, phases = walk.choose_animations(rng, actions)
    runs = _stay_runs(actions, animations)
    assert min(length for _, length, cut in runs if not cut) == 4
    assert max(length for _, length, _ in runs) == 8
    assert any(length < 4 for _, length, cut in runs if cut), "leaving stay cuts a hold short"
    stay_sequence = [animation for animation, _, _ in runs]
    assert all(a != b for a, b in zip(stay_sequence, stay_sequence[1:])), "a new stay animation differs from the last"
    # Each new animation starts at its first frame, then loops.
    changes = np.flatnonzero(np.diff(animations) != 0) + 1
    assert np.all(phases[changes] == 0)
    same = np.flatnonzero(np.diff(animations) == 0) + 1
    assert np.all(phases[same] == (phases[same - 1] + 1) % 8)


def test_video_labels_are_consistent_with_positions():
    parameters = WSpritesParameters(num_frames=90)
    simulation = simulate_video(parameters, video_seed(0, 5, 2))
    assert np.array_equal(simulation["shifts"][0], [0, 0]) and np.array_equal(simulation["bg_shifts"][0], [0, 0])
    assert np.array_equal(np.cumsum(simulation["shifts"], axis=0) + simulation["positions"][0], simulation["positions"])
    # The background content moves opposite to the window offset.
    assert np.array_equal(simulation["background_offsets"][0] - np.cumsum(simulation["bg_shifts"], axis=0),
                          simulation["background_offsets"])
    again = simulate_video(parameters, video_seed(0, 5, 2))
    other = simulate_video(parameters, video_seed(0, 5, 3))
    assert all(np.array_equal(simulation[k], again[k]) for k in simulation)
    assert not np.array_equal(simulation["positions"], other["positions"])
