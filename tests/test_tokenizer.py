from dpo_teach.grammar import make_corpus
from dpo_teach.tokenizer import train_tokenizer


def test_roundtrip_and_word_level_tokens():
    tok = train_tokenizer(make_corpus(2000, seed=0), vocab_size=512)
    assert len(tok) <= 512
    s = "honestly , the acting was very dull , but the music was great ."
    ids = tok(s)["input_ids"]
    assert tok.decode(ids) == s  # clean_up_tokenization_spaces is off: " ." stays " ."
    assert len(ids) == len(s.split())  # every grammar word is one token


def test_byte_level_means_any_text_tokenizes():
    tok = train_tokenizer(make_corpus(500, seed=0), vocab_size=300)
    for s in ["héllo 🙂 wörld", "\n\nHuman: hi\n\nAssistant:", "\x00\x07"]:
        assert tok.decode(tok(s)["input_ids"]) == s


def test_special_tokens_are_gpt2_like():
    tok = train_tokenizer(make_corpus(500, seed=0), vocab_size=300)
    assert tok.eos_token == tok.bos_token == tok.pad_token == "<|endoftext|>"
    # prompt and space-prefixed completion tokenized apart equal the whole sentence tokenized at once
    p, c = "the film was", " very dull ."
    assert tok(p)["input_ids"] + tok(c)["input_ids"] == tok(p + c)["input_ids"]
