"""The model, its loss, Adam + MultiStepLR and one training step of SPEC §4.2 (`Trainer`)."""
from __future__ import annotations

import bisect
import collections
import contextlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from model.augmentation import COLOUR_ORDERS, augmentation_generator, draw_colour_orders
from model.blocks import use_cpu_kernels
from model.codebook import kmeans_codebook, restart_dead_codes
from model.generation import video_code_effect_errors
from model.glass import Glass, build_model, refit_action_reader_statistics
from model.losses import GlassLoss, LossResult
from model.ops import native_transforms
from model.vgg import build_vgg_features
from utils.checkpoint import AVERAGED_MODEL_KEY
from utils.config import Config, TrainingConfig
from utils.distributed import DistributedContext, all_gather_objects, average_over_processes, broadcast_tensors
from utils.errors import GlassError
from utils.evaluation.action_metrics import reader_refit_batches
from utils.metrics import code_effect_db, switch_transitions
from utils.pretrained import MissingWeightsError
from utils.run_logger import lma_step_statistics
from utils.schedules import (
    action_readers_frozen,
    gma_frozen,
    ground_truth_steps_at,
    gumbel_temperature_at,
    in_gma_warmup,
    observations_count_at,
)
from utils.training.averaging import WeightAverage, module_state_keys, parameter_state_key, weights_swapped_in
from utils.training.media import write_training_media
from utils.training.state import preserved_buffers, preserved_random_state


def check_device_support(training: TrainingConfig, device_kind: str) -> None:
    """Autocast precisions need CUDA: a one-line `GlassError` for bf16 / fp16 on the CPU."""
    if training.precision != "fp32" and device_kind != "cuda":
        raise GlassError(f"training.precision: {training.precision} needs a CUDA device (autocast); "
                         f"use training.precision=fp32 on the CPU")


@dataclass
class StepResult:
    """What one training step reports."""

    loss: LossResult  # the total and the terms, detached scalars
    observations_count: int  # T of the step
    ground_truth_steps: int  # T_f of the step
    ran_lma: bool  # false during the 'gma_only' warm-up
    learning_rate: float  # the learning rate of the step (the scheduler has moved on to the next one)
    # utils.run_logger.lma_step_statistics; None in gma_only warm-up
    lma_statistics: Optional[Dict[str, torch.Tensor]] = None


def to_channels_last_frames(observations: torch.Tensor) -> torch.Tensor:
    """(B, T, C, H, W) with each frame channels-last in memory (so its (B·T, C, H, W) view is channels-last)."""
    return observations.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


class Trainer:
    """The model, its loss, Adam + MultiStepLR, and one training step of SPEC §4.2 on this process.

    GMA warm-up (the first `gma_warmup_steps` steps): with `warmup_mode: gma_only` the LMA is
    not run and its parameters get no gradient and no optimiser step (Adam skips parameters
    whose `.grad` is None, weight decay included), so they stay bit-identical; with
    `warmup_mode: authors` the LMA runs with its loss terms multiplied by 0, and Adam's weight
    decay moves its weights towards zero, as in the authors' code.

    Parameters that a step's loss leaves without gradient (the LMA's during the 'gma_only'
    warm-up; those trained only by a term whose weight is 0, e.g. the codebook without the VQ
    loss) are found by a probe at the start of each phase (warm-up, after it). They get no
    optimiser step. With several processes, where the model is wrapped in
    DistributedDataParallel (once per phase), they are added to the loss times 0, so that DDP
    sees a gradient for every parameter and needs no search for unused ones.
    """

    def __init__(self, config: Config, context: DistributedContext):
        self.config = config
        self.training = config.training
        self.context = context
        self.device = context.device
        check_device_support(self.training, self.device.type)
        if self.device.type == "cpu" and self.training.flush_denormal:
            # Process-wide: tiny gradients make denormal floats (Adam's second moments, the LMA's BatchNorm
            # inputs), on which x86 arithmetic is ~10× slower; flushed, they cost 5 s less per W-Sprites step.
            torch.set_flush_denormal(True)
        self.model: Glass = build_model(config).to(self.device)
        if self.training.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loss = GlassLoss(config.loss, self._build_vgg()).to(self.device)
        if self.training.channels_last:  # the VGG19 of the perceptual losses: 7% faster on CPU
            self.loss = self.loss.to(memory_format=torch.channels_last)
        if self.device.type == "cpu":
            kernels = self.training.cpu_kernels
            if use_cpu_kernels(self.model, kernels) + use_cpu_kernels(self.loss, kernels) and kernels == "native":
                native_transforms()  # built (or its warning given) before the first step
        # On CUDA the fused Adam: one kernel for all parameters instead of a few per parameter (same update up to
        # rounding); on the CPU the default implementation, so CPU runs and their checkpoints stay as they were.
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.training.learning_rate,
                                          weight_decay=self.training.weight_decay,
                                          fused=True if self.device.type == "cuda" else None)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones=self.training.lr_milestones,
                                                              gamma=self.training.lr_gamma)
        self.grad_scaler = torch.amp.GradScaler(self.device.type, enabled=self.training.precision == "fp16")
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.training.precision)
        # Codebook maintenance (training.codebook_restart_every): transitions per code since the last restart check,
        # averaged over the processes at each check and in checkpoints.
        self.code_usage = torch.zeros(config.model.lma.num_actions, device=self.device)
        # training.weight_average_decay: the moving average of the weights (utils/training/averaging.py), or None;
        # kept by rank 0 alone, which writes the checkpoints and the media (the replicas are identical, and rank 0's
        # batch-norm statistics are the ones DDP broadcasts and the checkpoint holds)
        self.weight_average: Optional[WeightAverage] = (
            WeightAverage(self.model, self.training.weight_average_decay)
            if self.training.weight_average_decay > 0 and context.is_main else None)
        self._frozen_state_keys: Optional[set] = None  # the frozen readers' state-dict keys, found once
        # the phase the following are for: (whether the LMA runs, whether the GMA is frozen)
        self._phase: Optional[Tuple[bool, bool]] = None
        self._forward_module: nn.Module = self.model
        self._idle_parameters: List[nn.Parameter] = []

    def _build_vgg(self):
        if not GlassLoss.needs_vgg(self.config.loss):
            return None
        # Seeded apart from the run's generators: random weights (tests, smoke runs) are then the same
        # on every process and after a resume, and building them changes no other random number.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.training.seed)
            try:
                vgg = build_vgg_features(self.config.loss, random_weights=self.training.random_vgg_weights)
            except MissingWeightsError as error:
                raise MissingWeightsError(f"{error}; a test or smoke run can use --random-vgg-weights instead "
                                          f"(not comparable with the paper)") from None
        return vgg.to(self.device)

    def _enter_phase(self, observations: torch.Tensor, plan: Dict[str, Any]) -> None:
        """At the first step of a phase (warm-up, the LMA trained, the GMA frozen): find the idle parameters, wrap the
        model."""
        phase = (plan["run_lma"], plan["freeze_gma"])
        if phase == self._phase:
            return
        self._forward_module = self.model  # free the previous wrapper's gradient buckets first
        idle_names = set(self.parameters_without_gradient(observations, plan))
        self._idle_parameters = [parameter for name, parameter in self.model.named_parameters() if name in idle_names]
        module: nn.Module = self.model
        if self.context.is_distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            module = DistributedDataParallel(module, device_ids=device_ids)
        if self.training.compile:
            module = torch.compile(module)
        self._forward_module, self._phase = module, phase

    def parameters_without_gradient(self, observations: torch.Tensor, plan: Dict[str, Any]) -> List[str]:
        """Names of the trainable parameters that the loss of a step planned as `plan` leaves without
        gradient, found by a forward of the bare model on `observations` and `torch.autograd.grad` of its loss,
        which leaves no trace (no `.grad` written, so no hook of a previous phase's DistributedDataParallel
        wrapper fires; batch-norm statistics and random generators as before)."""
        named = [(name, parameter) for name, parameter in self.model.named_parameters() if parameter.requires_grad]
        with preserved_buffers(self.model), preserved_random_state(self.device):
            with self._autocast():
                output = self.model(observations, plan["ground_truth_steps"], run_lma=plan["run_lma"],
                                    gumbel_temperature=plan["gumbel_temperature"], freeze_gma=plan["freeze_gma"])
                total = self.loss(observations, output, lma_loss_scale=plan["lma_loss_scale"]).total
            gradients = torch.autograd.grad(total, [parameter for _, parameter in named], allow_unused=True)
        return [name for (name, _), gradient in zip(named, gradients) if gradient is None]

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def curriculum(self, step: int, observations_count: int) -> Dict[str, Any]:
        """T_f, whether the LMA runs, its loss scale, the Gumbel temperature and whether the GMA is frozen
        (training.gma_freeze_step) at 0-based `step` for sequences of T frames."""
        warmup = in_gma_warmup(self.training, step)
        return {
            "ground_truth_steps": ground_truth_steps_at(self.training, step, observations_count),
            "run_lma": not (warmup and self.training.warmup_mode == "gma_only"),
            "lma_loss_scale": 0.0 if warmup else 1.0,
            "gumbel_temperature": (gumbel_temperature_at(self.training, step) if self.config.model.lma.use_gumbel
                                   else None),
            "freeze_gma": gma_frozen(self.training, step),
        }

    def prepare_observations(self, observations: torch.Tensor) -> torch.Tensor:
        observations = observations.to(self.device, non_blocking=True)
        return to_channels_last_frames(observations) if self.training.channels_last else observations

    def colour_orders(self, batch_size: int, step: int) -> Optional[torch.Tensor]:
        """training.colour_permutation: the (B, 3) channel orders in which the LMA sees the windows of step `step`
        (model/augmentation.py; drawn from (seed, rank, step), so a resumed run draws the same); None when
        off or when every window keeps its order."""
        if not self.training.colour_permutation:
            return None
        orders = draw_colour_orders(batch_size, self.training.colour_permutation,
                                    augmentation_generator(self.training.seed, self.context.rank, step))
        return None if torch.equal(orders, COLOUR_ORDERS[0].expand_as(orders)) else orders

    def training_step(self, batch: Dict[str, Any], step: int) -> StepResult:
        """One optimiser step on `batch` at 0-based `step`; batch["observations"] (B, T, 3, H, W) with T of
        the curriculum."""
        observations = self.prepare_observations(batch["observations"])
        observations_count = observations.shape[1]
        if observations_count != observations_count_at(self.training, step):
            raise RuntimeError(f"step {step}: a batch of T = {observations_count}, the curriculum says "
                               f"{observations_count_at(self.training, step)}")
        plan = self.curriculum(step, observations_count)
        self.model.train()
        if self.training.action_freeze_refit_batches and step == self.training.action_freeze_step:
            self.refit_frozen_readers()
        if self.training.gma_freeze_average and step == self.training.gma_freeze_step:
            self.load_gma_average()
        frozen = self.action_modules_frozen(step)
        for module in frozen:  # training.action_freeze_step: a fixed function, BatchNorm on running statistics
            module.eval()
        self._enter_phase(observations, plan)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            output = self._forward_module(observations, plan["ground_truth_steps"], run_lma=plan["run_lma"],
                                          gumbel_temperature=plan["gumbel_temperature"],
                                          colour_orders=self.colour_orders(observations.shape[0], step),
                                          freeze_gma=plan["freeze_gma"])
            result = self.loss(observations, output, lma_loss_scale=plan["lma_loss_scale"])
        total = result.total
        if self.context.is_distributed and self._idle_parameters:
            total = total + 0.0 * sum(parameter.sum() for parameter in self._idle_parameters)
        self.grad_scaler.scale(total).backward()
        # No Adam step, so no weight decay either: idle parameters and frozen action readers stay as they are
        for parameter in [*self._idle_parameters, *(p for module in frozen for p in module.parameters())]:
            parameter.grad = None
        self.grad_scaler.unscale_(self.optimizer)
        for parameter in self.model.parameters():
            if parameter.grad is not None:
                torch.nan_to_num_(parameter.grad, nan=self.training.nan_gradient_value,
                                  posinf=self.training.inf_gradient_value, neginf=-self.training.inf_gradient_value)
        learning_rate = self.optimizer.param_groups[0]["lr"]
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        self.scheduler.step()
        statistics = lma_step_statistics(output, self.model.num_actions)
        restarted = 0
        if statistics is not None and plan["lma_loss_scale"] > 0:
            restarted = self.maintain_codebook(step, statistics["code_counts"], output.lma.action_vectors)
            # new_full: a fill on the device, where new_tensor would copy a host value to the GPU at every step
            statistics["codes_restarted"] = statistics["z_spread"].new_full((), float(restarted))
        if self.weight_average is not None:
            self.update_weight_average(step, frozen, codebook_moved=restarted > 0)
        return StepResult(loss=LossResult(total=result.total.detach(), terms=result.terms),
                          observations_count=observations_count, ground_truth_steps=plan["ground_truth_steps"],
                          ran_lma=plan["run_lma"], learning_rate=learning_rate, lma_statistics=statistics)

    def update_weight_average(self, step: int, frozen: List[nn.Module], codebook_moved: bool) -> None:
        """training.weight_average_decay: the average moves towards the weights after the optimiser step of `step`;
        the frozen action readers, and the codebook when a restart or the k-means initialisation has just moved it,
        are copied as they are (utils/training/averaging.py)."""
        copied = set()
        if frozen:  # the same modules at every step from the freeze on
            if self._frozen_state_keys is None:
                self._frozen_state_keys = module_state_keys(self.model, frozen)
            copied = self._frozen_state_keys
        if codebook_moved:
            copied = copied | {parameter_state_key(self.model, self.model.lma.action_network.codebook)}
        self.weight_average.update(self.model, step, copied)

    @torch.no_grad()
    def load_gma_average(self) -> None:
        """`training.gma_freeze_average`: at the GMA's freeze, its parameters and BatchNorm statistics become those of
        the moving average of the weights (rank 0 keeps it; every process then takes rank 0's values)."""
        state = self.model.state_dict()
        keys = sorted(module_state_keys(self.model, [self.model.gma]))
        if self.weight_average is not None:
            average = self.weight_average.state_dict()
            for key in keys:
                state[key].copy_(average[key])
        broadcast_tensors(self.context, [state[key] for key in keys])
        if self.context.is_main:
            print(f"step {self.training.gma_freeze_step}: the GMA is frozen at its moving average", flush=True)

    def refit_frozen_readers(self) -> int:
        """`training.action_freeze_refit_batches` N: at the freeze step, the action readers' BatchNorm running
        statistics recomputed from N batches of the training split (`reader_refit_batches`, the same in every
        process) with the current weights; training's data order and random state are untouched. Returns the number
        of batches read."""
        batches = (self.prepare_observations(observations) for observations in
                   reader_refit_batches(self.config, self.training.action_freeze_refit_batches, self.device))
        with preserved_random_state(self.device), self._autocast():
            count = refit_action_reader_statistics(self.model, batches)
        if self.context.is_main:
            print(f"step {self.training.action_freeze_step}: the action readers are frozen, their BatchNorm statistics "
                  f"refitted from {count} training batch(es)", flush=True)
        return count

    def action_modules_frozen(self, step: int) -> List[nn.Module]:
        """`training.action_freeze_step` S > 0: from 0-based step S on, the modules that read the local actions (the
        LMA's action network with its codebook, and its own encoder where it has one), which then get no optimiser
        step and run in eval mode; [] before S or when off."""
        return self.model.lma.action_readers() if action_readers_frozen(self.training, step) else []

    def maintain_codebook(self, step: int, code_counts: torch.Tensor, vectors: torch.Tensor) -> int:
        """The opt-in codebook options (`model.codebook`) after the optimiser step of 0-based `step`, one that
        trained the LMA: k-means of z after the first such step (`codebook_kmeans_init`), and every
        `codebook_restart_every` such steps the restart of the codes no transition chose since the last
        check. z of every process is gathered and the random picks are seeded by (seed, step), so every
        replica makes the same change. Returns the number of codes restarted (k-means counts all)."""
        training = self.training
        if self.config.model.lma.use_gumbel or not (training.codebook_kmeans_init or training.codebook_restart_every):
            return 0
        if self.action_modules_frozen(step):  # training.action_freeze_step: the codebook stays as it is
            return 0
        lma_step = step - training.gma_warmup_steps  # 0 for the first step that trains the LMA
        self.code_usage += code_counts.to(self.code_usage)
        kmeans_now = training.codebook_kmeans_init and lma_step == 0
        restart_now = training.codebook_restart_every and (lma_step + 1) % training.codebook_restart_every == 0
        if not (kmeans_now or restart_now):
            return 0
        gathered = all_gather_objects(self.context, vectors.detach().flatten(0, -2).float().cpu())
        points = torch.cat(gathered)
        generator = torch.Generator().manual_seed(training.seed * 1_000_003 + step)
        codebook = self.model.lma.action_network.codebook
        if kmeans_now:
            kmeans_codebook(codebook, points, generator, optimizer=self.optimizer)
            self.code_usage.zero_()
            return codebook.shape[0]
        usage = average_over_processes(self.context, self.code_usage.clone())
        self.code_usage.zero_()
        return len(restart_dead_codes(codebook, usage, points, generator, optimizer=self.optimizer))

    @torch.no_grad()
    def code_effect(self, batch: Dict[str, Any], step: int) -> Dict[str, float]:
        """Does the LMA's decoder read the code, on this training batch? `lma_code_effect_db`: the one-step
        foreground PSNR with the inferred codes minus that with uniformly random codebook rows (drawn with a
        generator seeded by the step, so training's random state is untouched), in eval mode (no BatchNorm
        statistics change); `lma_code_effect_switch_db` the same over the transitions where the true local action
        changes, when the batch has labels and some. Squared errors are summed over the processes (a collective:
        every process calls it)."""
        observations = self.prepare_observations(batch["observations"])
        with self._autocast():
            effect = video_code_effect_errors(self.model, observations,
                                              torch.Generator().manual_seed(self.training.seed * 1_000_003 + step))
        inferred, random = effect.inferred.double(), effect.random.double()
        labelled = batch["has_actions"].to(self.device).bool()[:, None].expand_as(inferred)
        switches = switch_transitions(batch["local_actions"].to(self.device)) & labelled
        sums = torch.stack([inferred.sum(), random.sum(), (inferred * switches).sum(), (random * switches).sum(),
                            switches.sum().double()])
        sums = average_over_processes(self.context, sums).cpu()
        row = {"lma_code_effect_db": code_effect_db(sums[:1], sums[1:2])}
        if float(sums[4]) > 0:
            row["lma_code_effect_switch_db"] = code_effect_db(sums[2:3], sums[3:4])
        return row

    @torch.no_grad()
    def write_media(self, observations: torch.Tensor, step: int, folder: str) -> Dict[str, str]:
        """`write_training_media` for `observations` (B, T, 3, H, W) after 0-based `step` (files named step + 1):
        the training-mode forward of that step, then generation in eval mode, with the moving average of the
        weights when training.weight_average_decay keeps one (what evaluate.py and play.py read), else the trained
        weights. Leaves no trace on training: the weights, the batch-norm statistics and every random generator are
        as before."""
        observations = self.prepare_observations(observations)
        plan = self.curriculum(step, observations.shape[1])
        average = self.weight_average.state_dict() if self.weight_average is not None else None
        with preserved_random_state(self.device), weights_swapped_in(self.model, average):
            with preserved_buffers(self.model):  # restored before generation, which reads them in eval mode
                output = self.model(observations, plan["ground_truth_steps"], run_lma=plan["run_lma"],
                                    gumbel_temperature=plan["gumbel_temperature"])
            return write_training_media(self.model, observations, output, step + 1, folder)

    def state_dict(self) -> Dict[str, Any]:
        """What a checkpoint holds of the trainer, the one place its keys are written: 'model', 'optimizer',
        'scheduler', 'grad_scaler' (their state dicts), 'code_usage' (averaged over the processes, on the
        CPU) and, with training.weight_average_decay, 'averaged_model' (the moving average of the weights, a state
        dict of the model; rank 0 alone keeps it). A collective under several processes: every process calls it."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.grad_scaler.state_dict(),
            "code_usage": average_over_processes(self.context, self.code_usage.clone()).cpu(),
        }
        if self.weight_average is not None:
            state[AVERAGED_MODEL_KEY] = self.weight_average.state_dict()
        return state

    def _apply_configured_lr_schedule(self) -> None:
        """After the optimiser and scheduler states are loaded: a resumed run whose config changed
        `training.learning_rate`, `lr_milestones` or `lr_gamma` (a key=value override) gets the configured schedule —
        the optimiser's and MultiStepLR's state dicts hold their own copies, which would otherwise win silently —
        with every group's learning rate set to what the new schedule gives at the current step (`learning_rate` ·
        gamma^(milestones passed)). An unchanged schedule is left as loaded, so an exact resume stays bit-identical."""
        training = self.training
        rate, milestones, gamma = training.learning_rate, sorted(training.lr_milestones), training.lr_gamma
        if (sorted(self.scheduler.milestones.elements()) == milestones and self.scheduler.gamma == gamma
                and all(group["initial_lr"] == rate for group in self.optimizer.param_groups)):
            return
        self.scheduler.milestones = collections.Counter(milestones)
        self.scheduler.gamma = gamma
        self.scheduler.base_lrs = [rate] * len(self.optimizer.param_groups)
        passed = bisect.bisect_right(milestones, self.scheduler.last_epoch)
        for group in self.optimizer.param_groups:
            group["initial_lr"] = rate
            group["lr"] = rate * gamma ** passed
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Load a `state_dict` (a checkpoint dict may be given whole; its other keys are not read). A checkpoint
        written before the codebook options has no 'code_usage': the usage stays zero. With
        training.weight_average_decay, a checkpoint without 'averaged_model' (a run that had it off, resumed with it on)
        starts the average at its weights, and says so; one with it, resumed with the average off, drops it (a
        warning)."""
        self.model.load_state_dict(state["model"])
        averaged = state.get(AVERAGED_MODEL_KEY)
        if self.weight_average is not None:
            if averaged is None:
                self.weight_average.load_state_dict(self.model.state_dict())
                if self.context.is_main:
                    print("the checkpoint has no averaged weights (training.weight_average_decay was off): the average "
                          "starts at its trained weights", flush=True)
            else:
                self.weight_average.load_state_dict(averaged)
        elif averaged is not None and self.context.is_main:
            print("warning: the checkpoint's averaged weights are dropped (training.weight_average_decay is 0 in this "
                  "run's config)", flush=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._apply_configured_lr_schedule()
        self.grad_scaler.load_state_dict(state["grad_scaler"])
        if "code_usage" in state:
            self.code_usage.copy_(state["code_usage"].to(self.code_usage))
