"""The difficult → easy curriculum (UniMMVSR §3.4) and the randomness of every training sample.

Stages run one after another for their step counts. Every random choice of a sample (its task, clip, crop,
degradation, references, σ, noise, text dropout) comes from a generator seeded by (run seed, optimizer step, slot
in the global batch, attempt): the data stream is a pure function of the step, so resuming needs no data-loader
state beyond the step, and N ranks with micro-batch b see exactly the samples one rank sees with micro-batch N·b.
"""
from __future__ import annotations

import numpy as np


def stage_at(stages, step: int):
    """(index, stage) that optimizer step ``step`` (0-based) belongs to; the last stage goes on past its end."""
    end = 0
    for i, stage in enumerate(stages):
        end += stage.steps
        if step < end:
            return i, stage
    return len(stages) - 1, stages[-1]


def sample_rng(seed: int, step: int, slot: int, attempt: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(step), int(slot), int(attempt)]))


def slot_of(accumulation_index: int, rank: int, index: int, micro_batch: int, world_size: int) -> int:
    """Position of a sample in the global batch of one optimizer step."""
    return (accumulation_index * world_size + rank) * micro_batch + index


def step_task_rng(seed: int, step: int) -> np.random.Generator:
    """The generator of a step's shared task (``[training] one_task_per_step``): its own stream, apart from every
    slot's."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(step)], spawn_key=(1,)))


def draw_task(stage, rng: np.random.Generator) -> str:
    names = sorted(stage.tasks)
    return names[int(rng.choice(len(names), p=[stage.tasks[n] for n in names]))]
