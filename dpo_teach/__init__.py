"""dpo-teach: Direct Preference Optimization, derived, broken, fixed and run on a laptop CPU.

The helper package behind the course notebooks, the ``dpo-teach`` command and the tests.
One topic per module, in layers that import one way (lowest first; tests/test_layers.py checks it):

- ``utils``, ``grammar``, ``tokenizer``, ``model``  seeding and atomic writes; the toy world's review grammar, its
  byte-level BPE tokenizer (GPT-2's algorithm) and tiny ``GPT2Config`` presets, checkpoints with clear errors
- ``reward``     the ground-truth reward r(x, y) (VADER) and the Bradley–Terry probability the "human" labels with
- ``compute``, ``measure``, ``plots``  cost counters; time, memory and load; figures
- ``logprobs``, ``sampling``, ``rollout``  tokenization with a completion mask, summed sequence log-probs, π_ref's
  log-probs precomputed once; sampling; rollouts with per-token log-probs
- ``data``       preference pairs: generation, JSONL I/O and validation (also HH-RLHF rows)
- ``losses``     the preference math: Bradley–Terry, the implicit reward, DPO (Eq. 7 of Rafailov et al. 2023) and
  its variants, each a pure function registered in ``LOSSES``; TRL's metric names
- ``training``   the loop mechanics every trainer shares (optimizer, minibatches, schedule, one step)
- ``sft``, ``dpo``, ``reward_model``, ``ppo``  the trainers: SFT, DPO, a Bradley–Terry reward model, our own PPO
- ``world``, ``evaluate``, ``bandit``, ``pitfalls``  the cached π_ref; evaluation (reward, KL, fluency, win rate,
  implicit-reward accuracy, the shared evaluation prompts and samples table); the exact bandit world of notebooks
  01–04; notebook 07's failure modes
- ``compare``, ``frontier``, ``conclusions``, ``pipeline``, ``trl_bridge``  PPO vs DPO (the sweep, the frontier,
  the table and sentences); the demo job; preference rows to TRL's ``DPOTrainer`` (optional ``peers`` extra)
- ``cli``, ``grading``  the ``dpo-teach`` command; otter-grader (``make assign`` and ``dpo-teach grade``)

Shape letters used in docstrings and comments throughout:

- ``B``: batch size (number of preference pairs, or of sequences when stated)
- ``T``: sequence length in tokens (prompt + completion + padding)
- ``V``: vocabulary size
"""

__version__ = "0.1.0"
