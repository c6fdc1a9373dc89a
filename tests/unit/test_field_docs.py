"""wan_core.field_docs: one description per setting, official figures read from TASKS."""
from __future__ import annotations

import dataclasses

from wan_core import config
from wan_core.field_docs import FIELDS, describe
from wan_core.pipeline.s2v_plan import S2VOptions

# Widget-level names that split or derive a config field (size -> width/height; the task's fps).
DERIVED = {"GenerateRequest.width", "GenerateRequest.height", "GenerateRequest.fps"}


def test_every_key_names_a_real_field():
    classes = {name: obj for name, obj in vars(config).items()     # every dataclass of config.py
               if isinstance(obj, type) and dataclasses.is_dataclass(obj)}
    classes["S2VOptions"] = S2VOptions
    for key in set(FIELDS) - DERIVED:
        owner, name = key.split(".")
        assert name in {f.name for f in dataclasses.fields(classes[owner])}, key


def test_official_figures_are_generated():
    steps = describe("GenerateRequest.steps")
    assert steps.startswith(FIELDS["GenerateRequest.steps"].text)
    for task, spec in config.TASKS.items():      # every task's figure, named
        assert f"{spec.sample_steps} (" in steps and task.value in steps
    assert describe("GenerateRequest.seed") == FIELDS["GenerateRequest.seed"].text   # no figure: text only
    # A figure shared by every task is said once, without task names.
    assert describe("GenerateRequest.solver").endswith("Official: unipc")
    # Single-model tasks have no boundary: only the MoE tasks are listed.
    boundary = describe("GenerateRequest.boundary")
    assert "t2v-A14B" in boundary and "ti2v-5B" not in boundary
