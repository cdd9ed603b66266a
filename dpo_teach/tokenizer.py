"""A byte-level BPE tokenizer (GPT-2's algorithm) trained on the toy corpus.

Byte-level means every string tokenizes, including text the grammar never produced (real preference data, junk a
policy samples); words the corpus uses often become single tokens. The result is a ``PreTrainedTokenizerFast``,
so it saves, loads and behaves like any Hugging Face tokenizer.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"  # GPT-2's single special token: end of text, also used as BOS and padding


def train_tokenizer(corpus: list[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train byte-level BPE on ``corpus`` and wrap it.

    Args:
        corpus: whole training texts.
        vocab_size: upper bound on the vocabulary, 256 byte tokens and the EOS token included.

    Returns:
        A tokenizer whose ``eos_token``, ``bos_token`` and ``pad_token`` are all ``<|endoftext|>``, like GPT-2's.
        ``clean_up_tokenization_spaces`` is off so that ``decode(encode(s)) == s`` exactly (with it on, " ."
        would come back as ".").
    """
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: any text is representable
        show_progress=False,
    )
    core.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=EOS,
        bos_token=EOS,
        pad_token=EOS,
        unk_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=1024,
    )
