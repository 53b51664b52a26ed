"""The house: every family registered once (rmplugins.registry) and accepted everywhere a kind is named; imports
that point down only; modules of one job of at most 400 lines; ``import rmplugins`` importing neither torch nor TRL.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import rmplugins
from rmplugins.checkpoints import detect_kind, read_config, tensor_shapes
from rmplugins.cli import build_parser
from rmplugins.recipes.selection import check_rule, default_rule
from rmplugins.registry import FAMILIES, KINDS, family
from rmplugins.testing import BUILDERS

PACKAGE = Path(rmplugins.__file__).parent


def test_kinds_are_the_registered_families():
    assert set(KINDS) == set(FAMILIES)
    for kind, spec in FAMILIES.items():
        assert spec.kind == kind and spec.tiny and all(name in BUILDERS for name in spec.tiny)
        cls = spec.model_class()
        assert cls.kind == kind
        assert hasattr(cls, "from_pretrained")
        assert hasattr(cls, "vllm_engine_args") == spec.vllm, f"{kind}: vLLM support must be declared once"
    with pytest.raises(ValueError, match="unknown kind 'nope'"):
        family("nope")


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_is_accepted_by_every_cli_loader_and_recipe(kind, tiny, models):
    spec = FAMILIES[kind]
    parser = build_parser()
    assert parser.parse_args(["serve", "--model", "m", "--kind", kind]).kind == kind
    assert parser.parse_args(["serve", "--model", "m", "--kind", kind, "--judge", "j1-pairwise"]).judge
    for recipe in ("iterative-dpo", "rejection-sampling"):
        args = parser.parse_args([recipe, "--policy", "p", "--reward-model", "r", "--prompts", "f", "--output", "o",
                                  "--reward-kind", kind, "--judge", "mt-bench"])
        assert args.reward_kind == kind and args.judge == "mt-bench"
    path = tiny(spec.tiny[0])
    judge = "qwen3-reranker" if spec.mode == "judge" else None  # a judge is never guessed: its spec is given
    rm = rmplugins.load_reward_model(path, kind=kind, judge=judge, device="cpu") if judge else models(spec.tiny[0])
    assert rm.kind == kind
    config, shapes = read_config(Path(path)), tensor_shapes(path)
    if spec.detect is not None:
        assert detect_kind(config, shapes) == kind
    assert spec.missing(config, shapes) == []
    check_rule(default_rule(kind, judge), kind, judge)  # the recipes' default pair rule applies to the kind
    check_rule("best-of-n", kind, judge)
    from rmplugins import RewardFunction

    assert RewardFunction(rm).kind == kind


def test_import_rmplugins_imports_neither_torch_nor_trl():
    code = ("import sys, rmplugins; assert 'torch' not in sys.modules and 'trl' not in sys.modules, "
            "sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'trl')); "
            "rmplugins.RewardFunction; rmplugins.AsyncRemoteRewardFunction; assert 'trl' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_public_names_are_documented():
    import pydoc

    for name in ("load_reward_model", "RewardFunction", "AsyncRemoteRewardFunction", "Ranking", "KINDS"):
        assert name in rmplugins.__all__
    text = pydoc.render_doc(rmplugins, renderer=pydoc.plaintext)
    assert "class RewardFunction" in text and "load_reward_model(" in text


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py"))


def test_imports_point_down():
    """No import of a name from a package's ``__init__`` (``from .. import load_reward_model`` climbs back to the
    package root: only submodules may be imported that way), no ``from rmplugins import`` inside the package, and
    no module imported by a string outside the two lazy tables (the registry and the packages' exports)."""
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level and node.module is None:
                package = path.parent
                for _ in range(node.level - 1):
                    package = package.parent
                for alias in node.names:
                    sub = package / alias.name
                    assert alias.name == "__version__" or sub.with_suffix(".py").exists() or \
                        (sub / "__init__.py").exists(), f"{path}: `from {'.' * node.level} import {alias.name}` " \
                                                        "climbs back to a package's exports"
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "rmplugins":
                raise AssertionError(f"{path}: an absolute import of rmplugins inside rmplugins")
            if isinstance(node, ast.Attribute) and node.attr == "import_module":
                assert path.name in ("registry.py", "lazy.py"), f"{path}: a module imported by a string"


def test_modules_are_at_most_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in _modules() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"modules over 400 lines: {long}"
