"""Everything a recipe run checks before any work (before its output directory is created or locked): each
mistake is answered in a few lines naming the option, the value and what to do, and nothing is left on disk."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..checkpoints import check_policy, identify
from ..judges import judge_spec
from ..placement import check_device
from ..vllm import require_vllm
from .config import RecipeConfig
from .selection import check_rule

# transformers' report_to names -> the package each needs (transformers.integrations.INTEGRATION_TO_CALLBACK)
TRACKER_PACKAGES = {"azure_ml": "azureml", "comet_ml": "comet_ml", "mlflow": "mlflow", "neptune": "neptune",
                    "tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb", "codecarbon": "codecarbon",
                    "clearml": "clearml", "dagshub": "dagshub", "flyte": "flytekit", "dvclive": "dvclive",
                    "swanlab": "swanlab", "kubeflow": "kubeflow"}


def check_output(output: str) -> None:
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output {output} is a file, not a directory: give a directory for the run (new, or a "
                         "run's directory to resume it)")


def check_report_to(report_to: str) -> None:
    """The trackers exist and their packages are installed (transformers would fail at the first logging step,
    after generation and scoring)."""
    names = [n.strip() for n in str(report_to).split(",") if n.strip()]
    if names in ([], ["none"], ["all"]):
        return
    for name in names:
        if name not in TRACKER_PACKAGES:
            raise ValueError(f"--report-to {name}: not a tracker transformers knows; choose from none, all, "
                             f"{', '.join(sorted(TRACKER_PACKAGES))}")
        package = TRACKER_PACKAGES[name]
        if importlib.util.find_spec(package) is None:
            raise ValueError(f"--report-to {name}: the {package!r} package is not installed (pip install {package}), "
                             "or use --report-to none")


def check_training_packages() -> None:
    """TRL and datasets (rmplugins' own dependencies, which train each iteration) import: a missing or broken one
    (a TRL that does not match the installed transformers) failed after the candidates were generated and scored."""
    def broken(name: str, err: ImportError) -> ValueError:
        return ValueError(f"the recipes train with TRL on datasets, and `import {name}` fails here "
                          f"({type(err).__name__}: {err}); reinstall them as rmplugins requires: pip install "
                          "'trl>=1.16,<2' 'datasets>=3.0'")

    try:
        import datasets  # noqa: F401
    except ImportError as err:
        raise broken("datasets", err) from None
    try:
        import trl  # noqa: F401
    except ImportError as err:
        raise broken("trl", err) from None


def check_run(cfg: RecipeConfig, rule_for_kind) -> str:
    """Every check that can fail, in the order a user fixes them; returns the reward model's kind."""
    check_output(cfg.output)
    check_report_to(cfg.report_to)
    for option, device in (("--device", cfg.device), ("--rm-device", cfg.rm_device)):
        if device is not None:
            check_device(device, option)
    if cfg.backend == "vllm":
        require_vllm("--backend vllm", "--backend hf")
        from ..vllm.settings import unknown_engine_args

        if unknown := unknown_engine_args(cfg.vllm_engine_args):
            raise ValueError(f"--vllm-engine-args: {', '.join(unknown)}: not an argument of vllm.LLM or "
                             "vllm.EngineArgs (see `vllm serve --help` for the names, with - written as _)")
    policy = Path(cfg.policy).expanduser()
    if policy.is_dir() and not (policy / "config.json").exists():
        raise ValueError(f"--policy {cfg.policy}: a directory without config.json, not a model")
    check_policy(cfg.policy, "--policy")
    judge = cfg.reward_kwargs.get("judge")
    try:
        checkpoint = identify(cfg.reward_model, kind=cfg.reward_kwargs.get("kind"),
                              variant=cfg.reward_kwargs.get("variant"))
    except ValueError as err:
        raise ValueError(f"--reward-model: {err}") from None
    if checkpoint.kind == "pairrm" and checkpoint.variant is None:
        raise ValueError(f"--reward-model {cfg.reward_model}: PairRM and Better-PairRM share this layout "
                         "but not their input format; pass --reward-variant pairrm or --reward-variant better")
    if (judge is not None) != (checkpoint.kind == "genrm"):
        raise ValueError("--judge is the prompt and verdicts of a generative judge: give it with --reward-kind genrm "
                         f"(the reward model is kind {checkpoint.kind!r})" if judge is not None else
                         "--reward-kind genrm needs --judge PRESET|FILE.json: a judge's prompt and verdicts are never "
                         "guessed from its checkpoint")
    if judge is not None:
        try:
            judge_spec(judge)
        except ValueError as err:
            raise ValueError(f"--judge: {err}") from None
    check_rule(rule_for_kind(checkpoint.kind), checkpoint.kind, judge)
    check_training_packages()  # last: the import takes seconds, the checks above none
    return checkpoint.kind
