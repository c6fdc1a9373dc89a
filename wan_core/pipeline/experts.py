"""MoE expert routing of the A14B tasks: which expert and which guidance scale at timestep t.

Official rule (wan/text2video.py, image2video.py): with `boundary` a fraction of the 1000 train
timesteps, a step whose (shifted, int64) timestep t satisfies `t >= boundary * 1000` runs the
high-noise expert with `guide_scale[1]`, otherwise the low-noise expert with `guide_scale[0]`.
Single-model tasks (TI2V-5B) have no boundary and always run "model".
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional

from ..config import GuideScale

NUM_TRAIN_TIMESTEPS = 1000


class Expert(str, enum.Enum):
    HIGH_NOISE = "high_noise_model"
    LOW_NOISE = "low_noise_model"
    SINGLE = "model"


@dataclass(frozen=True)
class ExpertSchedule:
    """Routing of one run. `boundary` None means a single model."""

    guide: GuideScale
    boundary: Optional[float] = None

    def expert_for(self, t: int) -> Expert:
        if self.boundary is None:
            return Expert.SINGLE
        return Expert.HIGH_NOISE if t >= self.boundary * NUM_TRAIN_TIMESTEPS else Expert.LOW_NOISE

    def guide_for(self, t: int) -> float:
        expert = self.expert_for(t)
        return self.guide.high_noise if expert == Expert.HIGH_NOISE else self.guide.low_noise

    def plan(self, timesteps) -> list[tuple[Expert, float]]:
        """(expert, guide) for every timestep, in order."""
        return [(self.expert_for(int(t)), self.guide_for(int(t))) for t in timesteps]
