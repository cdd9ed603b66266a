"""dpo-teach: Direct Preference Optimization, derived, broken, fixed and run on a laptop CPU.

The helper package behind the course notebooks, the ``dpo-teach`` command and the tests.
One topic per module, in layers that import one way: a module imports only from the layers above it in this list
(tests/test_layers.py checks the imports, and that this list names every module in its layer):

- ``utils``, ``claims``, ``grammar``, ``tokenizer``, ``model``, ``reward``, ``compute``, ``measure``, ``plots``,
  ``headless``, ``warm_kernel``, ``answer_checks``: seeding and atomic writes; the notebooks' claim checks and what
  their exercises' tests check first about an answer (a tensor, its shape and dtype); the toy world's review
  grammar, its byte-level BPE tokenizer (GPT-2's algorithm) and tiny ``GPT2Config`` presets, checkpoints with clear
  errors; the ground-truth reward r(x, y) (VADER) and the Bradley–Terry probability the "human" labels with; cost
  counters; time, memory and load; figures; notebooks run headless, in kernels that can start warm
- ``logprobs``, ``sampling``, ``rollout``: tokenization with a completion mask, summed sequence log-probs, π_ref's
  log-probs precomputed once; sampling; rollouts with per-token log-probs
- ``preference_rows``, ``preference_file``: a user's preference file (JSON Lines, HH-RLHF rows too): each row
  checked, the file read, every bad row named
- ``data``: preference pairs sampled from π_ref and labelled by the ground truth, splits, JSONL files (it re-exports
  the loader)
- ``losses``, ``training``: the preference math (Bradley–Terry, the implicit reward, DPO as Eq. 7 of Rafailov et
  al. 2023 and its variants, each a pure function registered in ``LOSSES``; TRL's metric names); the loop mechanics
  every trainer shares (optimizer, minibatches, schedule, one step)
- ``sft``, ``dpo``, ``reward_model``, ``ppo``, ``grpo``, ``rloo``, ``online_dpo``: the trainers: SFT, DPO, a
  Bradley–Terry reward model, our own PPO, GRPO, RLOO and online DPO
- ``world``, ``evaluate``, ``bandit``, ``pitfalls``: the cached π_ref; evaluation (reward, KL, fluency, win rate,
  implicit-reward accuracy, the shared evaluation prompts and samples table); the exact bandit world of notebooks
  01–04; notebook 07's failure modes
- ``compare``, ``runs``, ``frontier``, ``conclusions``, ``pipeline``, ``trl_bridge``, ``setup_check``: PPO vs DPO
  (the sweep, each run's record, the frontier, the table and sentences); the demo job; preference rows to TRL's
  ``DPOTrainer`` (optional ``peers`` extra); notebook 00's first-run check
- ``cli``, ``cli_args``, ``grading``, ``site``, ``site_pages``, ``site_readme``: the ``dpo-teach`` command and its
  arguments; otter-grader (``make assign`` and ``dpo-teach grade``); the course site (its build, its executed and
  its written pages)

Shape letters used in docstrings and comments throughout:

- ``B``: batch size (number of preference pairs, or of sequences when stated)
- ``T``: sequence length in tokens (prompt + completion + padding)
- ``V``: vocabulary size
"""

__version__ = "0.1.0"
