"""dpo-teach: Direct Preference Optimization, derived, broken, fixed and run on a laptop CPU.

The helper package behind the course notebooks, the ``dpo-teach`` command and the tests.
One topic per module:

- ``grammar``    the toy world's movie-review grammar and its well-formedness check
- ``tokenizer``  a byte-level BPE tokenizer (GPT-2's algorithm) trained on that grammar
- ``model``      tiny ``GPT2Config`` presets; loading and saving checkpoints with clear errors
- ``sft``, ``world``  supervised fine-tuning and the cached reference model π_ref
- ``reward``     the ground-truth reward r(x, y): VADER's compound sentiment score
- ``data``       preference pairs: generation, JSONL I/O and validation (also HH-RLHF rows)
- ``logprobs``   tokenization with a completion mask and summed sequence log-probabilities
- ``losses``     DPO (Eq. 7 of Rafailov et al. 2023) and its variants, as pure functions
- ``dpo``        the DPO training loop
- ``sampling``, ``evaluate``  sampling; mean reward, KL(π‖π_ref), win rate, implicit-reward accuracy, fluency
- ``bandit``     the exact bandit world of notebooks 01–04
- ``reward_model``, ``rollout``, ``ppo``  classic RLHF: a Bradley–Terry reward model and our own PPO
- ``compare``, ``frontier``  PPO vs DPO: the sweep, the reward–KL frontier and the cost table
- ``pitfalls``   notebook 07's failure modes: length-biased labels, a length-balanced subset, DPOP, sample reports
- ``trl_bridge`` preference rows to TRL's ``DPOTrainer`` (optional ``peers`` extra) and the two losses on one batch
- ``plots``, ``pipeline``, ``cli``  figures, the demo job and the ``dpo-teach`` command
- ``grading``    (a package) otter-grader: ``make assign`` and ``dpo-teach grade``

Shape letters used in docstrings and comments throughout:

- ``B``: batch size (number of preference pairs, or of sequences when stated)
- ``T``: sequence length in tokens (prompt + completion + padding)
- ``V``: vocabulary size
"""

__version__ = "0.1.0"
