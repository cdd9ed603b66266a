"""dpo_teach.trl_bridge: preference rows to a TRL dataset and trainer; the same loss on a batch; a clear message
without TRL. (tests/test_trl_parity.py checks tokens, metrics and gradients against TRL in depth.)"""

from __future__ import annotations

import sys

import pytest

from dpo_teach import trl_bridge


def test_without_trl_the_bridge_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "trl", None)  # what a missing package looks like to `import`
    assert not trl_bridge.trl_available()
    with pytest.raises(ImportError, match=r"pip install 'dpo-teach\[peers\]'"):
        trl_bridge.to_dataset([{"prompt": "x", "chosen": " a", "rejected": " b"}])


def test_to_dataset_keeps_trls_three_columns(pairs):
    pytest.importorskip("trl")
    dataset = trl_bridge.to_dataset(pairs[:5])
    assert dataset.column_names == ["prompt", "chosen", "rejected"] and len(dataset) == 5
    assert dataset[0] == {k: pairs[0][k] for k in ("prompt", "chosen", "rejected")}


@pytest.mark.parametrize("loss_type, beta, average", [("sigmoid", 0.5, False), ("ipo", 0.1, True)])
def test_trl_trainer_computes_our_loss_on_a_batch(world, pairs, trained_policy, tmp_path, loss_type, beta, average):
    pytest.importorskip("trl")
    reference, tokenizer = world
    rows, policy = pairs[:32], trained_policy
    trainer = trl_bridge.trl_trainer(policy, reference, tokenizer, rows, beta=beta, loss_type=loss_type,
                                     output_dir=str(tmp_path))
    assert not trainer.args.bf16 and not trainer.args.gradient_checkpointing and trainer.args.use_cpu
    theirs = trl_bridge.trl_batch_metrics(trainer)
    ours = trl_bridge.our_batch_metrics(policy, reference, tokenizer, rows, beta, loss_type=loss_type, average=average)
    keys = list(ours) if loss_type == "sigmoid" else ["loss"]  # TRL's IPO averages log-probs only inside the loss
    assert set(ours) <= set(theirs)
    for key in keys:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-5, rel=0), key
    assert abs(ours["loss"] - {"sigmoid": 0.6931, "ipo": 1 / (4 * beta**2)}[loss_type]) > 0.01


def test_the_readmes_gpu_script_builds_its_config_without_a_deprecated_argument():
    """The README's `train_dpo_trl.py` is copied by people with GPUs: its DPOConfig must build with the pinned TRL
    and transformers without a warning (a deprecated name stops working at the next major version), and notebook
    07 must name the same file."""
    trl = pytest.importorskip("trl")
    import ast
    import re
    import warnings
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    block = next(b for b in re.findall(r"```python\n(.*?)```", (root / "README.md").read_text(), re.S)
                 if b.startswith("# train_dpo_trl.py"))
    call = next(n.value for n in ast.parse(block).body
                if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "args")
    call.keywords.append(ast.keyword("use_cpu", ast.Constant(True)))  # bf16=True on a machine without a GPU needs it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        args = eval(compile(ast.fix_missing_locations(ast.Expression(call)), "README.md", "eval"),
                    {"DPOConfig": trl.DPOConfig})
    assert args.bf16 and args.gradient_checkpointing and args.precompute_ref_log_probs
    notebook = (root / "notebooks" / "07_variants_and_pitfalls.ipynb").read_text()
    assert "train_dpo_trl.py" in notebook and "train_dpo.py" not in notebook
