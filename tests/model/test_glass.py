"""The full model (SPEC §3): shapes for the dataset configs and every ablation, gradient isolation,
and (CUDA only) autocast. Tests taking `device` run where `pytest --device` says (tests/conftest.py)."""
from pathlib import Path

import pytest
import torch

from model.glass import Glass, build_model, refit_action_reader_statistics
from utils.config import load_config

torch.set_num_threads(2)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ABLATIONS = {
    "paper": {},
    "gumbel": {"use_gumbel": True},
    "plain_direction": {"use_plain_direction": True},
    "no_modulated_conv": {"modulated_conv": False},
    "joint_input": {"joint_input": True},
    "nine_actions": {"num_actions": 9},
    "noise": {"noise_size": 3},
    "decoder_skip": {"decoder_skip": True},  # ours, opt-in
    "decoder_skip_mask": {"decoder_skip": True, "decoder_skip_mask": True},  # ours, opt-in
    "decoder_action": {"decoder_action": True},  # ours, opt-in
    "action_state_difference": {"action_state_difference": True},  # ours, opt-in
    "decoder_warp": {"decoder_skip": True, "decoder_skip_mask": True, "decoder_warp": 2.0},  # ours, opt-in
    "action_matching": {"action_matching": True},  # ours, opt-in
    "action_mask_predictor": {"action_mask_predictor": True, "action_mask_predictor_change_weight": 10.0},  # ours
    "decoder_mask_prediction": {"action_mask_predictor": True, "decoder_skip": True, "decoder_skip_mask": True,
                                "decoder_mask_prediction": True},  # ours, opt-in
    "action_from_masks": {"action_from_masks": True},  # ours, opt-in
    "action_from_changes": {"action_from_changes": True},  # ours, opt-in
    "action_colour_jitter": {"action_colour_jitter": True},  # ours, opt-in
    "action_mirror_features": {"action_from_masks": True, "action_mirror_features": True},  # ours, opt-in
    "action_target_only": {"action_from_masks": True, "action_target_only": True,
                           "action_mirror_features": True},  # ours, opt-in
    "action_shift_input": {"action_from_masks": True, "action_shift_input": 10.0},  # ours, opt-in
    "autoregressive_share": {"autoregressive_share": 0.5},  # ours, opt-in
    "decoder_action_film": {"decoder_action": True, "decoder_action_film": True},  # ours, opt-in
    "decoder_palette": {"decoder_skip": True, "decoder_skip_mask": True, "decoder_palette": 4},  # ours, opt-in
    "glimpse": {"glimpse": [16, 16], "decoder_skip": True, "action_from_masks": True},  # ours, opt-in
    "glimpse_changes": {"glimpse": [16, 16], "decoder_skip": True, "action_from_changes": True},  # ours, opt-in
    "glimpse_shift_warp": {"glimpse": [16, 16], "decoder_skip": True, "decoder_skip_mask": True, "decoder_warp": 2.0,
                           "decoder_action": True, "action_from_masks": True, "action_shift_input": 300.0,
                           "num_actions": 9},  # ours, opt-in: docs/local-actions.md, nineteenth round
    "glimpse_warp_mirror": {"glimpse": [16, 16], "decoder_skip": True, "decoder_skip_mask": True,
                            "decoder_warp": 2.0, "decoder_warp_mirror": True, "decoder_action": True,
                            "action_from_masks": True},  # ours, opt-in: docs/local-actions.md, twenty-third round
}


def _check_shapes(model: Glass, observations: torch.Tensor, output) -> None:
    batch, length, _, height, width = observations.shape
    state_height, state_width = model.lma.state_resolution
    lma_config = model.config.lma
    assert output.gma.reconstructed_frames.shape == (batch, length - 1, 3, height, width)
    assert output.gma.masks.shape == (batch, length, 1, height, width)
    assert [tuple(f.shape) for f in output.lma.generated_foregrounds] == [
        (batch, length - 1, 3, height // 2 ** k, width // 2 ** k) for k in range(3)]
    assert output.lma.generated_masks.shape == (batch, length - 1, 1, height, width)
    assert output.lma.generated_masks.min() >= 0 and output.lma.generated_masks.max() <= 1
    assert output.lma.states.shape == (batch, length, lma_config.encoder_state_channels, state_height, state_width)
    assert output.lma.reencoded_states.shape == (batch, length - 1, lma_config.encoder_state_channels,
                                                 state_height, state_width)
    assert output.lma.action_codes.shape == (batch, length - 1, lma_config.action_dim)
    assert output.lma.action_ids.shape == (batch, length - 1)
    assert 0 <= output.lma.action_ids.min() and output.lma.action_ids.max() < lma_config.num_actions


@pytest.mark.parametrize("name, state_resolution", [("wsprites", (12, 16)), ("bair", (32, 32)), ("tennis", (12, 32))])
def test_dataset_configs_build_the_paper_model_and_run(name, state_resolution, device):
    config = load_config(str(CONFIGS / f"{name}.yaml"))
    torch.manual_seed(0)
    model = build_model(config).eval().to(device)
    assert model.lma.state_resolution == state_resolution
    width, height = config.data.input_size
    observations = (torch.rand(1, 2, 3, height, width) * 2 - 1).to(device)
    with torch.no_grad():
        output = model(observations, num_ground_truth_steps=1)
    _check_shapes(model, observations, output)


@pytest.mark.parametrize("ablation", list(ABLATIONS))
def test_every_ablation_trains_with_the_expected_shapes(make_small_model, small_video, ablation, device):
    overrides = ABLATIONS[ablation]
    model = make_small_model(**overrides).to(device)
    small_video = small_video.to(device)
    output = model(small_video, num_ground_truth_steps=2, gumbel_temperature=1.0)
    _check_shapes(model, small_video, output)
    assert (output.lma.action_vq_loss is None) == overrides.get("use_gumbel", False)
    loss = output.gma.reconstructed_frames.mean() + sum(f.mean() for f in output.lma.generated_foregrounds)
    loss = loss + output.lma.reencoded_states.mean() + (output.lma.action_vq_loss or 0)
    loss.backward()
    assert all(final[0].weight.grad.abs().sum() > 0 for final in model.lma.decoder.finals)
    assert model.lma.action_network.codebook.grad.abs().sum() > 0
    # decoder_action_film: every (γ, β) map starts at zero and is trained
    assert len(model.lma.decoder.films) == (4 if overrides.get("decoder_action_film") else 0)
    assert all(film.weight.grad.abs().sum() > 0 for film in model.lma.decoder.films)


def test_lma_losses_send_no_gradient_into_the_gma(make_small_model, small_video, device):
    model = make_small_model().to(device)
    output = model(small_video.to(device), num_ground_truth_steps=1)
    loss = sum(f.abs().mean() for f in output.lma.generated_foregrounds) + output.lma.generated_masks.mean()
    loss = (loss + (output.lma.reencoded_states - output.lma.states[:, 1:].detach()).abs().mean()
            + output.lma.action_vq_loss)
    loss.backward()
    gma_gradients = [p.grad for p in model.gma.parameters()]
    assert all(g is None or torch.count_nonzero(g) == 0 for g in gma_gradients)
    lma_gradients = [p.grad for p in model.lma.parameters() if p.grad is not None]
    assert len(lma_gradients) > 0 and any(torch.count_nonzero(g) > 0 for g in lma_gradients)


def test_the_gma_runs_alone_for_the_warm_up(make_small_model, small_video, device):
    model = make_small_model().to(device)
    output = model(small_video.to(device), num_ground_truth_steps=1, run_lma=False)
    assert output.lma is None
    output.gma.reconstructed_frames.mean().backward()
    assert all(p.grad is None for p in model.lma.parameters())
    assert model.gma.masking_network.layers[0].weight.grad.abs().sum() > 0


def test_forward_checks_frames_and_ground_truth_steps(make_small_model, small_video):
    model = make_small_model()
    with pytest.raises(ValueError, match="observations"):
        model(torch.zeros(1, 3, 3, 32, 32), num_ground_truth_steps=1)
    with pytest.raises(ValueError, match="ground-truth steps"):
        model(small_video, num_ground_truth_steps=small_video.shape[1])


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_runs_the_convolutions_in_half_precision_with_finite_outputs_and_gradients(make_small_model,
                                                                                           small_video, device, dtype):
    """training.precision bf16 / fp16: under autocast the convolutions compute in `dtype`, the outputs stay
    finite and every trained parameter gets a finite gradient (the GMA's BatchNorm layers run in float32)."""
    model = make_small_model(decoder_skip=True, decoder_skip_mask=True).to(device)
    computed = []
    model.gma.masking_network.layers[0].register_forward_hook(
        lambda module, inputs, output: computed.append(output.dtype))
    with torch.autocast(device.type, dtype=dtype):
        output = model(small_video.to(device), num_ground_truth_steps=2)
        _check_shapes(model, small_video, output)
        loss = (output.gma.reconstructed_frames.float().abs().mean()
                + sum(f.float().abs().mean() for f in output.lma.generated_foregrounds)
                + output.lma.generated_masks.float().mean() + output.lma.action_vq_loss.float())
    assert computed == [dtype]
    assert torch.isfinite(loss)
    loss.backward()
    gradients = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(gradients) > 0 and all(torch.isfinite(g).all() for g in gradients)


@pytest.mark.parametrize("overrides", [{}, {"action_from_masks": True}, {"action_from_changes": True}])
def test_parameter_counts_add_up_to_the_total(make_small_model, overrides):
    counts = make_small_model(**overrides).parameter_counts()
    assert sum(count for name, count in counts.items() if name != "total") == counts["total"]


@pytest.mark.parametrize("reader", [{}, {"action_from_masks": True}], ids=["features", "masks"])
def test_refit_sets_the_readers_statistics_to_the_plain_average_over_the_batches(make_small_model, reader):
    """The readers' running statistics become the mean of what each batch gives in training mode; nothing else
    changes (the other BatchNorm buffers, every parameter, the modes, the momenta)."""
    model = make_small_model(**reader)
    model.train()
    generator = torch.Generator().manual_seed(2)
    batches = [torch.rand(2, 4, 3, 16, 32, generator=generator) * 2 - 1 for _ in range(3)]
    for batch in batches[:2]:  # some training first, so the running statistics are not the initial ones
        model(batch, num_ground_truth_steps=2)
    readers = model.lma.action_readers()
    norms = [layer for module in readers for layer in module.modules() if isinstance(layer, torch.nn.BatchNorm1d)]
    first = norms[0]  # a BatchNorm1d of the action network: its input (N, C) is easy to catch
    seen = []
    handle = first.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach().clone()))
    before = {name: value.clone() for name, value in model.state_dict().items()}
    reader_names = {f"lma.{'action_encoder' if module is model.lma.action_encoder else 'action_network'}."
                    for module in readers}
    model.lma.decoder.eval()
    assert refit_action_reader_statistics(model, iter(batches)) == 3
    handle.remove()
    assert len(seen) == 3
    expected_mean = torch.stack([inputs.mean(dim=0) for inputs in seen]).mean(dim=0)
    expected_var = torch.stack([inputs.var(dim=0, unbiased=True) for inputs in seen]).mean(dim=0)
    assert torch.allclose(first.running_mean, expected_mean, atol=1e-6)
    assert torch.allclose(first.running_var, expected_var, atol=1e-6)
    after = model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(any(name.startswith(prefix) for prefix in reader_names) for name in changed)
    assert all(name.endswith(("running_mean", "running_var", "num_batches_tracked")) for name in changed)
    assert model.training and model.lma.action_network.training and not model.lma.decoder.training
    assert all(layer.momentum == 0.1 for layer in norms)
    refitted = first.running_mean.clone()
    with pytest.raises(ValueError, match="no batch"):
        refit_action_reader_statistics(model, [])
    assert torch.equal(first.running_mean, refitted)  # an empty refit resets nothing


def test_refit_leaves_group_norm_readers_alone(make_small_model, small_video):
    model = make_small_model(action_reader_norm="group")
    before = {name: value.clone() for name, value in model.state_dict().items()}
    assert refit_action_reader_statistics(model, [small_video]) == 0
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
