"""MoE expert routing of the A14B tasks: which expert and which guidance scale at timestep t.

Official rule (wan/text2video.py, image2video.py): with `boundary` a fraction of the 1000 train
timesteps, a step whose (shifted, int64) timestep t satisfies `t >= boundary * 1000` runs the
high-noise expert with `guide_scale[1]`, otherwise the low-noise expert with `guide_scale[0]`.
Single-model tasks (TI2V-5B) have no boundary and always run "model".

ComfyUI's templates switch by step index instead (two KSamplerAdvanced nodes, e.g. steps 0-2 on the
high-noise expert and 2-4 on the low-noise one): `switch_step` N > 0 runs steps [0, N) on the
high-noise expert and the rest on the low-noise one, whatever their timesteps.
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
    switch_step: Optional[int] = None     # > 0: switch by step index instead of the boundary

    def expert_at(self, step: int, t: float) -> Expert:
        """The expert of step `step` (0-based) whose timestep is `t`."""
        if self.boundary is not None and self.switch_step:
            return Expert.HIGH_NOISE if step < self.switch_step else Expert.LOW_NOISE
        return self.expert_for(t)

    def guide_at(self, step: int, t: float) -> float:
        return self._guide_of(self.expert_at(step, t))

    def _guide_of(self, expert: Expert) -> float:
        return self.guide.high_noise if expert == Expert.HIGH_NOISE else self.guide.low_noise

    def uses_uncond(self, timesteps) -> bool:
        """Whether any step needs the unconditional branch (guidance != 1), i.e. whether the
        negative prompt must be encoded at all."""
        return any(self.guide_at(i, float(t)) != 1.0 for i, t in enumerate(timesteps))

    def expert_for(self, t: float) -> Expert:
        if self.boundary is None:
            return Expert.SINGLE
        return Expert.HIGH_NOISE if t >= self.boundary * NUM_TRAIN_TIMESTEPS else Expert.LOW_NOISE

    def guide_for(self, t: float) -> float:
        return self._guide_of(self.expert_for(t))

    def plan(self, timesteps) -> list[tuple[Expert, float]]:
        """(expert, guide) for every timestep, in order."""
        return [(self.expert_at(i, t.item() if hasattr(t, "item") else t),
                 self.guide_at(i, t.item() if hasattr(t, "item") else t))
                for i, t in enumerate(timesteps)]
