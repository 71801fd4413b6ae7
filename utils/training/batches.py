"""Each process's training batches: the sharded, resumable stream of `TrainingBatches` (each batch with T of
the curriculum) and the fixed `MediaBatch` drawn every `media_every` steps."""
from __future__ import annotations

from typing import Any, Dict, Iterator, List

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from data.video_dataset import ScheduledLengthBatchSampler, VideoDataset, collate_videos
from utils.allocator import reset_malloc_tuning
from utils.config import Config, TrainingConfig
from utils.distributed import DistributedContext
from utils.errors import DatasetError
from utils.schedules import observations_count_at
from utils.training.stopping import ignore_stop_signals

MEDIA_SEQUENCES = 4  # sequences in the fixed media batch


def start_loader_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn` of training and evaluation: stop signals are left to the main process, and the
    allocator settings of CPU training and evaluation, which a forked worker inherits, give way to glibc's starting
    thresholds (utils/allocator.py)."""
    ignore_stop_signals(worker_id)
    reset_malloc_tuning()


class ShardSampler(Sampler[int]):
    """This process's share of one epoch of a dataset of `dataset_size` items, from `start_position` on.

    Epoch e visits a permutation drawn by `torch.Generator().manual_seed(seed + e)`, padded
    with its own first items to a multiple of `world_size`; process r takes the items r,
    r + world_size, … of it. The same (seed, epoch, world_size) gives the same shards on any
    machine; `start_position` skips the items a resumed run has already used.
    """

    def __init__(self, dataset_size: int, rank: int, world_size: int, seed: int):
        self.dataset_size = dataset_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shard_size = -(-dataset_size // world_size)
        self.epoch = 0
        self.start_position = 0

    def set_epoch(self, epoch: int, start_position: int = 0) -> None:
        self.epoch = epoch
        self.start_position = start_position

    def shard(self, epoch: int) -> List[int]:
        """The whole shard of this process in `epoch` (shard_size indices)."""
        order = torch.randperm(self.dataset_size, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        padded = (order * (-(-self.shard_size * self.world_size // len(order))))[:self.shard_size * self.world_size]
        return padded[self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.shard(self.epoch)[self.start_position:])

    def __len__(self) -> int:
        return max(self.shard_size - self.start_position, 0)


def max_observations_count(training: TrainingConfig) -> int:
    """The largest T of the curriculum (its start or its end), whatever the run's length."""
    schedule = training.observations_count
    return max(observations_count_at(training, 0),
               observations_count_at(training, schedule.start_step + schedule.steps))


class TrainingBatches:
    """An endless stream of this process's training batches, resumable at (epoch, position).

    `VideoDataset(config.data, 'train')` keeps the videos long enough for the largest T of the
    curriculum; `ShardSampler` orders them; `ScheduledLengthBatchSampler` gives batch b (b
    counted from `first_step`) the length T = observations_count_at(b). Each epoch gets a new
    DataLoader iterator after `dataset.set_epoch(e)`, so its workers draw the windows of that
    epoch, and a DataLoader generator seeded by (seed, rank, epoch), so the global torch
    generator is never touched. `epoch` and `position` (items of the epoch already used)
    describe where the next batch starts.
    """

    def __init__(self, config: Config, context: DistributedContext, first_step: int, epoch: int = 0, position: int = 0):
        training = config.training
        self.seed = training.seed
        self.rank = context.rank
        self.batch_size = training.batch_size
        self.num_workers = config.data.num_workers
        self.pin_memory = context.device.type == "cuda"
        self.dataset = VideoDataset(config.data, "train", seed=training.seed,
                                    observations_count=max_observations_count(training))
        self.sampler = ShardSampler(len(self.dataset), context.rank, context.world_size, training.seed)
        if self.sampler.shard_size < self.batch_size:
            raise DatasetError(f"{config.data.root}: the train split has {len(self.dataset)} videos long enough for "
                               f"T = {self.dataset.observations_count}, fewer than the "
                               f"{self.batch_size * context.world_size} "
                               f"of one step (training.batch_size × {context.world_size} processes)")
        self.batch_sampler = ScheduledLengthBatchSampler(
            self.sampler, self.batch_size, length_at_batch=lambda batch: observations_count_at(training, batch),
            drop_last=True, first_batch=first_step)
        self.epoch, self.position = epoch, position
        self._normalize_position()

    def _normalize_position(self) -> None:
        """Move to the start of the next epoch when the rest of this one is less than a batch (dropped)."""
        if self.sampler.shard_size - self.position < self.batch_size:
            self.epoch, self.position = self.epoch + 1, 0

    def state(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        while True:
            self.sampler.set_epoch(self.epoch, self.position)
            self.dataset.set_epoch(self.epoch)
            seed = int(np.random.SeedSequence([self.seed, self.rank, self.epoch]).generate_state(1)[0])
            loader = DataLoader(self.dataset, batch_sampler=self.batch_sampler, collate_fn=collate_videos,
                                num_workers=self.num_workers, pin_memory=self.pin_memory,
                                worker_init_fn=start_loader_worker, generator=torch.Generator().manual_seed(seed))
            for batch in loader:
                self.position += self.batch_size
                self._normalize_position()
                yield batch


class MediaBatch:
    """The first `MEDIA_SEQUENCES` training videos from their first frame: the same sequences at every media step."""

    def __init__(self, config: Config):
        self.training = config.training
        self.dataset = VideoDataset(config.data, "train", sampling="first",
                                    observations_count=max_observations_count(config.training))

    def observations(self, step: int) -> torch.Tensor:
        """(B, T, 3, H, W) with T of the curriculum at `step`."""
        length = observations_count_at(self.training, step)
        count = min(MEDIA_SEQUENCES, len(self.dataset))
        return collate_videos([self.dataset[(index, length)] for index in range(count)])["observations"]
