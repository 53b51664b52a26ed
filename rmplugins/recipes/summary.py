"""The recipes' summary: per iteration, what each finished stage recorded in its marker (``<stage>.done.json``),
gathered into ``DIR/summary.json`` and one log line per iteration."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from .config import RecipeConfig

logger = logging.getLogger("rmplugins.recipes")

STAGES = ("generate", "score", "select", "train")


def stats_of(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "max": None, "min": None}
    return {"mean": sum(values) / len(values), "max": max(values), "min": min(values)}


def iteration_summary(d: Path, done_stages: Callable[[Path], dict]) -> dict:
    """One iteration's (or the final evaluation's) summary from its stages' markers."""
    stages = done_stages(d)
    out: dict = {"iteration": d.name}
    if stages["generate"]:
        out["policy"] = stages["generate"]["policy"]
    if stages["score"]:
        out["reward_mean"] = stages["score"]["reward"]["mean"]
        out["reward_max"] = stages["score"]["reward"]["max"]
        out["best_of_n_mean"] = stages["score"]["best_of_n_mean"]
        out["unscored"] = stages["score"].get("unscored", 0)  # candidates without a verdict (older markers: 0)
    if stages["select"]:
        sel = stages["select"]
        out["selection"] = {k: sel[k] for k in ("rule", "groups", "kept", "ties", "below_margin",
                                                "degenerate", "comparisons") if k in sel}
        if "mean_margin" in sel:
            out["selection"]["mean_margin"] = sel["mean_margin"]
    if stages["train"]:
        out["train"] = {k: v for k, v in stages["train"].items() if k != "seconds"}
    out["seconds"] = {s: (v or {}).get("seconds") for s, v in stages.items() if v is not None}
    return out


def run_summary(cfg: RecipeConfig, prompts: int, out: Path, done_stages: Callable[[Path], dict]) -> dict:
    iters = [iteration_summary(out / f"iter-{k}", done_stages) for k in range(1, cfg.iterations + 1)
             if (out / f"iter-{k}").exists()]
    summary: dict = {"recipe": cfg.recipe, "prompts": prompts, "num_candidates": cfg.num_candidates,
                     "iterations": iters}
    ev = out / f"eval-{cfg.iterations}"
    if ev.exists():
        summary["final_eval"] = iteration_summary(ev, done_stages)
    return summary


def number(value: float | None, spec: str = ".4f") -> str:
    """A reward for the log and the table; ``-`` where nothing was scored (a judge that gave no verdict at all)."""
    return "-" if value is None else format(value, spec)


def log_iteration(k: int, s: dict, select_file: str) -> None:
    sel = s.get("selection", {})
    secs = ", ".join(f"{n} {v:.1f}s" if v is not None else f"{n} (resumed)" for n, v in s["seconds"].items())
    unscored = f"; {s['unscored']} candidates without a verdict" if s.get("unscored") else ""
    logger.info("iteration %d: candidate reward mean %s max %s%s; %s kept %d/%d (ties %d, below margin %d, "
                "degenerate %d); %s", k, number(s.get("reward_mean")), number(s.get("reward_max")), unscored,
                select_file, sel.get("kept", 0), sel.get("groups", 0), sel.get("ties", 0), sel.get("below_margin", 0),
                sel.get("degenerate", 0), secs)


def score_row(row: dict, ranking, method) -> dict:
    """A line of ``scores.jsonl``; a group the model could not rank (a judge that gave no verdict) has no scores and
    the reason."""
    if isinstance(ranking, ValueError):
        return {"index": row["index"], "scores": [None] * len(row["candidates"]), "best": None, "worst": None,
                "comparisons": 0, "method": method, "reason": str(ranking)}
    return {"index": row["index"], "scores": [None if s is None else float(s) for s in ranking.scores],
            "best": ranking.best, "worst": ranking.worst, "comparisons": ranking.comparisons,
            "method": ranking.method}
