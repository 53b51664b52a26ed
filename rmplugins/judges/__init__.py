"""Generative judges: :class:`JudgeSpec` (how a judge is asked and read), the published formats (:data:`PRESETS`)
and :func:`judge_spec`. The judge family itself is :mod:`rmplugins.families.genrm`."""

from .presets import PRESETS, judge_spec
from .spec import JudgeSpec, after_thinking, last_json_field, transcript

__all__ = ["PRESETS", "JudgeSpec", "after_thinking", "judge_spec", "last_json_field", "transcript"]
