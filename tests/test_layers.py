"""The package's shape: layers import one way, every trainer's body stays short, the preference math has one home."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import dpo_teach

PACKAGE = Path(dpo_teach.__file__).parent

# Lowest first. A module may import from its own layer or a lower one, never from a higher one.
LAYERS = [
    # foundations, the world's r, the notebooks' claim checks, running notebooks headless (kernels that start warm)
    {"utils", "claims", "grammar", "tokenizer", "model", "reward", "compute", "measure", "plots", "headless",
     "warm_kernel", "answer_checks"},
    {"logprobs", "sampling", "rollout"},  # tokens → log-probabilities, samples, rollouts
    {"preference_rows", "preference_file"},  # a user's preference file: rows checked, the file read (data re-exports)
    {"data"},  # preference pairs (sampled from π_ref, labelled by the ground truth), splits, files
    {"losses", "training"},  # the preference math; the shared loop mechanics
    {"sft", "dpo", "reward_model", "ppo", "grpo", "rloo", "online_dpo"},  # trainers
    {"world", "evaluate", "bandit", "pitfalls"},  # π_ref (built by SFT), evaluation, the notebooks' worlds
    {"compare", "runs", "frontier", "conclusions", "pipeline", "trl_bridge", "setup_check"},  # jobs, reports, set-up
    # entry points (the command, its arguments); the course site (its build, its executed and its written pages)
    {"cli", "cli_args", "grading", "site", "site_pages", "site_readme"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
TRAINERS = next(layer for layer in LAYERS if "dpo" in layer)


def modules() -> dict[str, Path]:
    out = {p.stem: p for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    out.update({p.parent.name: p for p in PACKAGE.glob("*/__init__.py")})
    return out


def package_imports(path: Path) -> set[str]:
    """Top-level ``dpo_teach`` modules that ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dpo_teach"):
            parts = node.module.split(".")
            if len(parts) > 1:
                found.add(parts[1])
            else:  # from dpo_teach import a, b
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("dpo_teach."))
    return found


def test_every_module_has_a_layer():
    missing = sorted(set(modules()) - set(RANK))
    assert not missing, f"place {missing} in a layer of LAYERS (lowest first) so the layering test covers them"


def test_the_packages_map_names_every_module_in_its_layer():
    """dpo_teach/__init__.py's list of layers is what a reader opens first: it listed 11 groups where LAYERS had 9,
    put four modules in the wrong layer and left 14 out."""
    import dpo_teach

    text = dpo_teach.__doc__.split("One topic per module", 1)[1].split("Shape letters", 1)[0]
    bullets = [b.split(":", 1)[0] for b in re.split(r"\n- ", text)[1:]]  # each layer's names, before its colon
    listed = [set(re.findall(r"``(\w+)``", names)) for names in bullets]
    assert listed == LAYERS, "dpo_teach/__init__.py's list of layers differs from LAYERS: " + "; ".join(
        f"layer {i}: {sorted(a ^ b)}" for i, (a, b) in enumerate(zip(listed, LAYERS)) if a != b) + (
        f"; {len(listed)} layers listed, {len(LAYERS)} in LAYERS" if len(listed) != len(LAYERS) else "")


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_imports_a_higher_layer(name):
    path = modules()[name]
    if path.name == "__init__.py":  # a subpackage: check its files together
        imports = set().union(*(package_imports(p) for p in path.parent.glob("*.py")))
    else:
        imports = package_imports(path)
    upward = sorted(m for m in imports - {name} if RANK.get(m, -1) > RANK[name])
    assert not upward, f"dpo_teach.{name} (layer {RANK[name]}) imports higher layers: {upward}"


def test_nothing_below_the_trainers_imports_a_trainer():
    below = [n for n in modules() if RANK[n] < RANK["dpo"]]
    offenders = {n: sorted(package_imports(modules()[n]) & TRAINERS) for n in below}
    assert not any(offenders.values()), offenders


@pytest.mark.parametrize("qualname", ["sft.train_sft", "dpo.train_dpo", "reward_model.train_reward_model",
                                      "ppo.train_ppo", "ppo.ppo_update", "grpo.train_group_policy", "grpo.update",
                                      "grpo.train_grpo", "rloo.train_rloo", "online_dpo.train_online_dpo"])
def test_trainer_bodies_show_only_their_algorithm(qualname):
    """Each training function stays short enough to read as its algorithm (the loop mechanics live in training)."""
    module, name = qualname.split(".")
    fn = getattr(__import__(f"dpo_teach.{module}", fromlist=[name]), name)
    tree = ast.parse(inspect.getsource(fn).lstrip()).body[0]
    body = tree.body[1:] if isinstance(tree.body[0], ast.Expr) else tree.body  # without the docstring
    lines = body[-1].end_lineno - body[0].lineno + 1
    assert lines <= 40, f"{qualname}'s body is {lines} lines; move loop mechanics into dpo_teach.training"


def test_preference_math_has_one_home():
    """Every DPO-family loss, the Bradley–Terry loss and the implicit reward are defined in losses.py only."""
    names = {"dpo_loss", "cdpo_loss", "ipo_loss", "hinge_loss", "reference_free_loss", "dpop_loss",
             "bradley_terry_loss", "bt_loss", "implicit_reward", "step_metrics", "preference_probability"}
    homes: dict[str, list[str]] = {}
    for mod, path in modules().items():
        files = path.parent.glob("*.py") if path.name == "__init__.py" else [path]
        for f in files:
            for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
                if isinstance(node, ast.FunctionDef) and node.name in names:
                    homes.setdefault(node.name, []).append(mod)
    assert all(h == ["losses"] for h in homes.values()), homes
    from dpo_teach.losses import LOSSES

    assert set(LOSSES) == {"sigmoid", "cdpo", "ipo", "hinge", "reference_free", "dpop"}
