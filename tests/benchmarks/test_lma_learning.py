"""A learning smoke test of the local half: 40 LMA steps must not end in a collapsed action codebook.

benchmarks/lma_alone.py trains the LMA of the tiny config (small widths, 64×48 frames) on the true
foregrounds of the test dataset for 40 steps with the codebook options on; a collapsed codebook
(every transition on one or two codes, z shrunk to a point) fails it. It guards against a
regression (a broken restart, a quantiser that stops passing gradients): with the authors'
options off the same 40 steps do not collapse yet either (5 codes, perplexity 4.5); the collapse
of longer runs and what the options change there are in the README's experiment tables.
"""
import json
import math
import os

import numpy as np
import pytest
import torch

from benchmarks import lma_alone
from tests.small_model import SMALL_MODEL
from utils.errors import GlassError

pytestmark = pytest.mark.usefixtures("two_torch_threads")


def test_the_codebook_stays_spread_with_kmeans_and_restarts(dataset_root, tmp_path):
    out = str(tmp_path / "lma")
    assert lma_alone.main(["--config", os.path.join(os.path.dirname(lma_alone.__file__), "..", "configs",
                                                    "wsprites-tiny.yaml"),
                           "--out", out, "--steps", "40", "--eval-every", "40", "--eval-windows", "6",
                           "--eval-split", "train", "--threads", "2", f"data.root={dataset_root}", "data.num_workers=0",
                           "training.batch_size=2", "data.input_size=[64, 48]", "data.crop=null",
                           *[override for override in SMALL_MODEL if override.startswith("model.lma.")],
                           "model.lma.num_actions=6", "model.lma.decoder_skip=true", "model.lma.decoder_skip_mask=true",
                           "training.codebook_kmeans_init=true", "training.codebook_restart_every=10"]) == 0
    with open(os.path.join(out, "curves.json"), encoding="utf-8") as handle:
        last = json.load(handle)["curves"][-1]
    assert last["step"] == 40 and os.path.isfile(os.path.join(out, "step_000040.png"))
    assert last["train_codes_used"] >= 3 and last["train_perplexity"] >= 2.0, last
    assert last["codes_used"] >= 2 and last["z_spread"] > 1e-3, last
    # The mask travels through the skip: after these 40 steps the generated masks' soft IoU with the true ones is
    # 0.20 with decoder_skip_mask, 0.13 without it (measured on this test, 2 threads).
    assert last["mask_iou_one_step"] > 0.16 and 0.0 <= last["nmi_character"] <= 1.0, last


def _small_lma_and_inputs(dataset_root):
    import torch

    from data.video_dataset import VideoDataset, collate_videos
    from model.lma import LocalMotionAnalysis
    from utils.config import load_config

    config = load_config(os.path.join(os.path.dirname(lma_alone.__file__), "..", "configs", "wsprites-tiny.yaml"),
                         [f"data.root={dataset_root}", "data.input_size=[64, 48]", "data.crop=null",
                          *[override for override in SMALL_MODEL if override.startswith("model.lma.")],
                          "model.lma.num_actions=6"])
    torch.manual_seed(0)
    lma = LocalMotionAnalysis(config.model.lma, config.model.state_resolution(config.data.input_size))
    dataset = VideoDataset(config.data, "train", observations_count=6)
    batch = collate_videos([dataset[i] for i in range(4)])
    return lma, lma_alone.true_inputs(batch, config.data.input_size), batch


def test_the_code_measures_tell_a_decoder_that_ignores_the_code(dataset_root):
    import torch

    from model.lma import ActionOutput

    lma, inputs, batch = _small_lma_and_inputs(dataset_root)
    lma.eval()
    with torch.no_grad():
        lma.action_network.codebook.normal_(generator=torch.Generator().manual_seed(0))

    # window b: code b
    def distinct_actions(shifted_foregrounds, states, attention, gumbel_temperature=None, reader_images=None,
                         foreground_shifts=None):
        ids = torch.arange(shifted_foregrounds.shape[0])[:, None].expand(shifted_foregrounds.shape[:2]) % 6
        codes = lma.action_network.codebook[ids]
        return ActionOutput(codes=codes, ids=ids, vq_loss=codes.sum() * 0, vectors=codes)

    lma.infer_actions = distinct_actions
    reading = lma_alone.evaluate(lma, inputs, batch, 6)
    # untrained: 5e-5 dB
    assert abs(reading["psnr_one_step_rolled_codes"] - reading["psnr_one_step_eval"]) > 1e-6, reading
    assert reading["codes_used"] == 4 and 0.0 <= reading["code_recovery"] <= 1.0
    # the code effect split as evaluate.py splits it: one entry per true label of frame t+1 up to the largest,
    # None exactly where a label has no transition in these windows
    labels = batch["local_actions"][:, 1:]
    per_label = reading["code_effect_per_label_db"]
    assert len(per_label) == int(labels.max()) + 1
    assert [value is None for value in per_label] == [not bool((labels == k).any()) for k in range(len(per_label))]
    assert any(abs(value) > 1e-9 for value in per_label if value is not None), per_label
    assert math.isfinite(reading["code_effect_non_switch_db"])
    with torch.no_grad():  # the code's only way into the dynamics (no decoder_action here): cut
        lma.dynamics.local_projection.weight.zero_()
    ignoring = lma_alone.evaluate(lma, inputs, batch, 6)
    assert ignoring["psnr_one_step_rolled_codes"] == pytest.approx(ignoring["psnr_one_step_eval"], abs=1e-7)
    for key in ("code_effect_db", "code_effect_switch_db", "code_effect_non_switch_db"):
        assert ignoring[key] == pytest.approx(0.0, abs=1e-6), key
    assert all(value == pytest.approx(0.0, abs=1e-6) for value in ignoring["code_effect_per_label_db"]
               if value is not None)


def test_the_action_recovery_term_trains(dataset_root, tmp_path):
    out = str(tmp_path / "cycle")
    assert lma_alone.main(["--config", os.path.join(os.path.dirname(lma_alone.__file__), "..", "configs",
                                                    "wsprites-tiny.yaml"),
                           "--out", out, "--steps", "2", "--eval-every", "2", "--eval-windows", "4", "--eval-split",
                           "train", "--action-cycle", "1", f"data.root={dataset_root}", "data.num_workers=0",
                           "training.batch_size=2", "data.input_size=[64, 48]", "data.crop=null",
                           *[override for override in SMALL_MODEL if override.startswith("model.lma.")]]) == 0
    with open(os.path.join(out, "curves.json"), encoding="utf-8") as handle:
        curves = json.load(handle)["curves"]
    assert [record["step"] for record in curves] == [0, 2]
    assert curves[-1]["step"] == 2 and 0.0 <= curves[-1]["code_recovery"] <= 1.0


def test_lma_alone_freezes_the_action_readers_and_adds_the_slowness_term(dataset_root, tmp_path):
    """training.action_freeze_step 1 in lma_alone: after 3 steps the action encoder and network are the ones of a
    1-step run from the same seed (no update, no BatchNorm statistics moved), the decoder is not; with
    loss.action_slowness_weight the runs train (the term enters the total)."""
    def run(name, steps, *extra):
        out = str(tmp_path / name)
        assert lma_alone.main(["--config", os.path.join(os.path.dirname(lma_alone.__file__), "..", "configs",
                                                        "wsprites-tiny.yaml"),
                               "--out", out, "--steps", str(steps), "--eval-every", str(steps), "--eval-windows", "2",
                               "--eval-split", "train", f"data.root={dataset_root}", "data.num_workers=0",
                               "training.batch_size=2", "data.input_size=[64, 48]", "data.crop=null",
                               "model.lma.action_from_masks=true", "loss.action_slowness_weight=1", *extra,
                               *[override for override in SMALL_MODEL if override.startswith("model.lma.")]]) == 0
        return torch.load(os.path.join(out, "lma.pt"), weights_only=False)["lma"]

    one = run("one", 1)
    frozen = run("frozen", 3, "training.action_freeze_step=1")
    free = run("free", 3)
    readers = [name for name in one if name.startswith(("action_encoder.", "action_network."))]
    assert readers and all(torch.equal(one[name], frozen[name]) for name in readers)
    assert any(not torch.equal(one[name], free[name]) for name in readers)
    assert any(not torch.equal(one[name], frozen[name]) for name in one if name.startswith("decoder."))


def test_crop_windows_centres_one_box_per_window_on_its_masks():
    import torch

    frames = torch.rand(2, 3, 3, 20, 30)
    masks = torch.zeros(2, 3, 1, 20, 30)
    masks[0, 0, :, 6:10, 10:14] = 1  # window 0: the character moves right; union rows 6–9, columns 10–17
    masks[0, 2, :, 6:10, 14:18] = 1
    masks[1, 1, :, 15:20, 25:30] = 1  # window 1: at the bottom-right corner; the box must stay inside the frame
    cropped, cut = lma_alone.crop_windows({"observations": frames, "masks": masks, "sprite_id": torch.arange(2)},
                                          (8, 10))
    assert cropped["observations"].shape == (2, 3, 3, 8, 10) and cropped["masks"].shape == (2, 3, 1, 8, 10)
    # window 0: union centre (8, 14) → rows 4–11, columns 9–18
    assert torch.equal(cropped["observations"][0], frames[0, ..., 4:12, 9:19])
    assert torch.equal(cropped["masks"][0], masks[0, ..., 4:12, 9:19])
    # window 1: clamped to the last 8 rows and 10 columns
    assert torch.equal(cropped["observations"][1], frames[1, ..., 12:20, 20:30])
    assert cut == 0.0 and torch.equal(cropped["sprite_id"], torch.arange(2))
    # a union wider than the box: the cut share of the mask pixels is reported
    masks[0, 1, :, 6:10, 0:4] = 1
    _, cut = lma_alone.crop_windows({"observations": frames, "masks": masks}, (8, 10))
    assert cut > 0.0
    with pytest.raises(ValueError, match="larger than the frames"):
        lma_alone.crop_windows({"observations": frames, "masks": masks}, (24, 10))


def test_blob_masks_fill_the_gaps_keep_the_mask_and_cut_foregrounds_with_the_blob():
    import torch

    masks = torch.zeros(1, 2, 1, 20, 20)
    masks[..., 5:15, 6:8] = 1  # two legs, three pixels apart
    masks[..., 5:15, 11:13] = 1
    blobs = lma_alone.blob_masks(masks, 3)
    assert blobs.shape == masks.shape and (blobs >= masks).all() and blobs.max() == 1
    assert (blobs[..., 10, 8:11] == 1).all()  # the gap between the legs filled
    assert 0 < blobs[..., 10, 3].min() < 1 and blobs[..., 19, 19].max() == 0  # a soft rim, nothing far away
    assert torch.equal(lma_alone.blob_masks(masks, 0), masks)
    frames = torch.rand(1, 2, 3, 20, 20)
    batch = {"observations": frames, "masks": masks, "global_shifts": torch.zeros(1, 2, 2)}
    inputs = lma_alone.true_inputs(batch, (20, 20), blob_radius=3)
    assert torch.equal(inputs.masks, blobs) and torch.allclose(inputs.foregrounds, blobs * frames)
    assert torch.equal(lma_alone.true_inputs(batch, (20, 20)).masks, masks)
    with pytest.raises(SystemExit):
        lma_alone.main(["--out", "unused", "--blob-masks", "-1"])


def test_code_switch_record_counts_the_marked_transitions_that_are_true_switches():
    import torch

    # window 0: labels 0 0 1 1 → switch at transition 1; codes 2 5 5 → marked at 1 (hit)
    # window 1: labels 3 3 3 4 → switch at transition 2; codes 1 0 0 → marked at 1 (miss), 2 not marked
    labels = torch.tensor([[0, 0, 1, 1], [3, 3, 3, 4]])
    ids = torch.tensor([[2, 5, 5], [1, 0, 0]])
    record = lma_alone.code_switch_record(ids, labels)
    assert record == {"code_switch_precision": 0.5, "code_switch_recall": 0.5, "code_switch_share": 0.5}
    nothing = lma_alone.code_switch_record(torch.zeros(2, 3, dtype=torch.long), labels)
    assert nothing == {"code_switch_precision": 0.0, "code_switch_recall": 0.0, "code_switch_share": 0.0}


def test_random_switches_never_mark_the_first_transition_and_mark_about_the_share():
    import torch

    marks = lma_alone.random_switches((2000, 3), 0.3, torch.Generator().manual_seed(0))
    assert marks.dtype == torch.bool and not marks[:, 0].any()
    assert 0.27 < marks[:, 1:].float().mean().item() < 0.33
    assert not lma_alone.random_switches((5, 4), 0.0, torch.Generator().manual_seed(0)).any()
    with pytest.raises(SystemExit):
        lma_alone.main(["--out", "unused", "--random-switches", "0.5"])  # needs --switch-weight


def test_the_oracle_trains_on_crops(dataset_root, tmp_path):
    from PIL import Image

    from utils.media import GRID_PADDING

    out = str(tmp_path / "crop")
    assert lma_alone.main(["--config", os.path.join(os.path.dirname(lma_alone.__file__), "..", "configs",
                                                    "wsprites-tiny.yaml"),
                           "--out", out, "--steps", "2", "--eval-every", "2", "--eval-windows", "4", "--eval-split",
                           "train", "--length", "3", "--oracle", "--crop", "32", "32", f"data.root={dataset_root}",
                           "data.num_workers=0", "training.batch_size=2", "data.input_size=[64, 48]", "data.crop=null",
                           *[override for override in SMALL_MODEL if override.startswith("model.lma.")],
                           "model.lma.decoder_skip=true", "model.lma.decoder_skip_mask=true",
                           "model.lma.glimpse=[64, 80]"]) == 0  # a whole-model glimpse is set aside: the crop is used
    with open(os.path.join(out, "curves.json"), encoding="utf-8") as handle:
        curves = json.load(handle)["curves"]
    assert [record["step"] for record in curves] == [0, 2]
    with Image.open(os.path.join(out, "step_000002.png")) as sheet:  # two columns (T − 1 = 2) of 32 × 32 boxes
        assert (sheet.width, sheet.height) == (2 * 32 + 3 * GRID_PADDING, 4 * 4 * 32 + 17 * GRID_PADDING)


def test_the_switch_sheet_draws_each_code_at_the_switch_transitions(dataset_root):
    import torch

    lma, inputs, batch = _small_lma_and_inputs(dataset_root)  # 4 windows, T 6, 64 × 48 frames
    lma.eval()
    labels = torch.zeros(4, 6, dtype=torch.int64)
    labels[0, 3:] = 4  # one switch: window 0, transition 2 → 3
    labels[2, 1:] = 7  # one switch: window 2, transition 0 → 1
    batch = dict(batch, local_actions=labels)
    with torch.no_grad():
        one_step = lma(inputs.foregrounds, inputs.shifted_foregrounds, inputs.foreground_shifts, 5, masks=inputs.masks)
    rows = torch.randn(3, lma.action_network.codebook.shape[1])
    sheet = lma_alone.switch_sheet(lma, inputs, batch, one_step, rows, ["a", "b", "c"])
    # two rows (the two switches, in window order) and 2 + 3 columns of 64 × 48 cells, a header and a label column
    from utils.media import GRID_PADDING as pad
    from utils.media import to_uint8_images

    header, label_width = sheet.shape[0] - (2 * 48 + 3 * pad), sheet.shape[1] - (5 * 64 + 6 * pad)
    assert sheet.dtype == np.uint8 and header > 0 and label_width > 0

    def cell(row, column):
        top, left = header + pad + row * (48 + pad), label_width + pad + column * (64 + pad)
        return sheet[top:top + 48, left:left + 64]

    assert np.array_equal(cell(0, 0), to_uint8_images(inputs.foregrounds[0, 2]))  # f_t of window 0's switch
    assert np.array_equal(cell(1, 1), to_uint8_images(inputs.foregrounds[2, 1]))  # f_t+1 of window 2's switch
    with torch.no_grad():
        drawn, _ = lma.unroll(one_step.states[:, :5], one_step.foreground_shifts, rows[2].expand(4, 5, -1),
                              ground_truth_foregrounds=inputs.foregrounds[:, :5],
                              ground_truth_masks=inputs.masks[:, :5])
    assert np.array_equal(cell(1, 4), to_uint8_images(drawn[0][2, 0]))  # window 2's switch drawn with code "c"
    assert lma_alone.switch_sheet(lma, inputs, dict(batch, local_actions=torch.zeros(4, 6, dtype=torch.int64)),
                                  one_step, rows, ["a", "b", "c"]) is None


def test_the_oracle_with_merged_sides_gives_a_left_and_a_right_animation_one_code():
    from data.wsprites.walk import LOCAL_ACTION_NAMES

    plain = lma_alone.OracleCodes(len(LOCAL_ACTION_NAMES), 16, seed=0)
    merged = lma_alone.OracleCodes(len(LOCAL_ACTION_NAMES), 16, seed=0, merge_sides=True)
    names = list(LOCAL_ACTION_NAMES)
    for label, name in enumerate(names):
        twin = names.index(name.replace("-right", "-left")) if name.endswith("-right") else label
        assert torch.equal(merged.table[label], plain.table[twin]), name  # the rest keep their own rows
    assert len({tuple(row.tolist()) for row in merged.table}) == 6
    assert len({tuple(row.tolist()) for row in plain.table}) == 9
    # walk-left → walk-right → walk-front: the turn to the right is told with walk-left's row, the turn to the front not
    codes = merged(torch.tensor([[1, 2, 0]]))
    assert torch.equal(codes[0, 0], plain.table[1]) and torch.equal(codes[0, 1], plain.table[0])
    with pytest.raises(GlassError, match="needs --oracle"):
        lma_alone.main(["--out", "unused", "--oracle-merge-sides"])


def test_the_oracle_is_told_the_codes_a_trained_run_gives_each_transition(trained_run, tmp_path):
    """`--oracle-codes`: the run's code per transition, read from whole videos, is what its action network infers
    on any window (frame 0 of a window: the transition into it); the oracle trains with them, weighting where they
    change (`--switch-on codes`)."""
    from data.video_dataset import VideoDataset, collate_videos
    from model.generation import one_step_drawer, video_gma
    from model.trained import load_trained_model

    codes, num_codes = lma_alone.run_code_ids(trained_run["run_folder"], None, ["train"])
    trained = load_trained_model(trained_run["run_folder"])
    dataset = VideoDataset(trained.config.data, "train", observations_count=4)
    assert num_codes == 3 and set(codes) == {video.name for video in dataset.videos}
    for video in dataset.videos:
        ids = codes[video.name]
        assert ids.shape == (len(video) - 1,) and 0 <= int(ids.min()) and int(ids.max()) < 3
    dataset.set_epoch(1)
    batch = collate_videos([dataset[i] for i in range(4)])
    assert batch["start_frame"].gt(0).any()  # a window inside its video: frame 0 reads the transition before it
    with torch.no_grad():
        gma = video_gma(trained.model, batch["observations"])
        motion, _ = one_step_drawer(trained.model.lma, gma.foregrounds, gma.shifted_foregrounds,
                                    gma.foreground_shifts, gma.masks)
    attached = lma_alone.attach_run_codes(batch, codes)
    assert torch.equal(attached["oracle_labels"][:, 1:], motion.actions.ids)
    for b, (name, start) in enumerate(zip(batch["video_name"], batch["start_frame"].tolist())):
        assert attached["oracle_labels"][b, 0] == codes[name][max(start - 1, 0)]
    assert lma_alone.oracle_labels(attached) is attached["oracle_labels"]
    assert lma_alone.oracle_labels(batch) is batch["local_actions"]
    with pytest.raises(GlassError, match="no video"):
        lma_alone.attach_run_codes(batch, {})

    out = str(tmp_path / "told")
    arguments = ["--config", os.path.join(os.path.dirname(lma_alone.__file__), "..", "configs", "wsprites-tiny.yaml"),
                 "--out", out, "--steps", "2", "--eval-every", "2", "--eval-windows", "4", "--eval-split",
                 "train", "--length", "3", "--threads", "1", "--oracle", "--oracle-codes",
                 trained_run["run_folder"], "--switch-weight", "5", "--switch-on", "codes",
                 f"data.root={trained_run['dataset_root']}", "data.num_workers=0", "training.batch_size=2",
                 "data.input_size=[64, 48]", "data.crop=null",
                 *[override for override in SMALL_MODEL if override.startswith("model.lma.")]]
    assert lma_alone.main(arguments) == 0
    saved = torch.load(os.path.join(out, "lma.pt"), weights_only=False)
    assert saved["oracle"]["table"].shape[0] == 3  # one row per code of the run, not per W-Sprites label
    told = torch.load(os.path.join(out, "told_codes.pt"), weights_only=True)
    assert told["num_codes"] == 3 and all(torch.equal(told["codes"][name], codes[name]) for name in codes)
    # the saved file, edited (every id moved to a fourth code), is told instead of the run
    edited = tmp_path / "edited.pt"
    torch.save({"codes": {name: torch.full_like(ids, 3) for name, ids in codes.items()}, "num_codes": 4}, edited)
    again = str(tmp_path / "told_again")
    changed = list(arguments)
    changed[changed.index("--out") + 1], changed[changed.index("--oracle-codes") + 1] = again, str(edited)
    assert lma_alone.main(changed) == 0
    assert torch.load(os.path.join(again, "lma.pt"), weights_only=False)["oracle"]["table"].shape[0] == 4
    with open(os.path.join(out, "curves.json"), encoding="utf-8") as handle:
        assert [record["step"] for record in json.load(handle)["curves"]] == [0, 2]


def test_the_told_codes_need_the_oracle_and_a_run_folder(tmp_path):
    with pytest.raises(GlassError, match="needs --oracle"):
        lma_alone.main(["--out", str(tmp_path / "a"), "--oracle-codes", str(tmp_path)])
    with pytest.raises(GlassError, match="no such run folder or file"):
        lma_alone.main(["--out", str(tmp_path / "b"), "--oracle", "--oracle-codes", str(tmp_path / "missing")])
    not_codes = tmp_path / "not_codes.pt"
    torch.save({"something": 1}, not_codes)
    with pytest.raises(GlassError, match="not a told_codes.pt file"):
        lma_alone.main(["--out", str(tmp_path / "e"), "--oracle", "--oracle-codes", str(not_codes)])
    with pytest.raises(SystemExit):
        lma_alone.main(["--out", str(tmp_path / "c"), "--switch-on", "pixels"])
    with pytest.raises(SystemExit):
        lma_alone.main(["--out", str(tmp_path / "d"), "--switch-on", "codes"])  # needs --switch-weight


def test_the_settings_the_lma_alone_does_not_apply_are_named():
    from utils.config import load_config

    configs = os.path.join(os.path.dirname(lma_alone.__file__), "..", "configs")
    assert lma_alone.settings_not_applied(load_config(os.path.join(configs, "wsprites-tiny.yaml")), 600) == []
    notes = lma_alone.settings_not_applied(load_config(os.path.join(configs, "wsprites-c3.yaml")), 4000)
    assert [note.split(" (")[0] for note in notes] == [
        "loss.code_switch_weight 10", "training.lr_milestones [2000]", "training.action_freeze_refit_batches",
        "training.weight_average_decay"]
    assert "--switch-weight 10 --switch-on codes" in notes[0]
    # a milestone the run does not reach changes nothing; a colour permutation is named
    notes = lma_alone.settings_not_applied(load_config(os.path.join(configs, "wsprites-c2.yaml"),
                                                       ["training.colour_permutation=0.5"]), 2000)
    assert not any(note.startswith("training.lr_milestones") for note in notes)
    assert any(note.startswith("training.colour_permutation") for note in notes)
