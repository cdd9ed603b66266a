"""dpo-teach: Direct Preference Optimization, derived, broken, fixed and run on a laptop CPU.

The helper package behind the course notebooks, the ``dpo-teach`` command and the tests.
One topic per module:

- ``grammar``    the toy world's movie-review grammar and its well-formedness check
- ``tokenizer``  a byte-level BPE tokenizer (GPT-2's algorithm) trained on that grammar
- ``model``      tiny ``GPT2Config`` presets and the reference model π_ref (SFT, disk cache, checkpoints)
- ``reward``     the ground-truth reward r(x, y): VADER's compound sentiment score
- ``data``       preference pairs: generation, JSONL I/O and validation (also HH-RLHF rows)
- ``logprobs``   tokenization with a completion mask and summed sequence log-probabilities
- ``losses``     DPO (Eq. 7 of Rafailov et al. 2023) and its variants, as pure functions
- ``dpo``        the DPO training loop
- ``evaluate``   sampling, mean reward, KL(π‖π_ref), win rate, implicit-reward accuracy, fluency

Shape letters used in docstrings and comments throughout:

- ``B``: batch size (number of preference pairs, or of sequences when stated)
- ``T``: sequence length in tokens (prompt + completion + padding)
- ``V``: vocabulary size
"""

__version__ = "0.1.0"
