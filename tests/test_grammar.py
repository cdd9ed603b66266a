import random

from dpo_teach import grammar
from dpo_teach.reward import ground_truth_reward, in_lexicon


def test_every_sentiment_word_is_scored_by_vader_and_neutral_words_are_not():
    # A grammar word outside VADER's lexicon would silently score 0 and distort the reward.
    for word in grammar.POSITIVE + grammar.NEGATIVE + grammar.VERBS_POSITIVE + grammar.VERBS_NEGATIVE:
        assert in_lexicon(word), word
    for word in grammar.NEUTRAL + grammar.VERBS_NEUTRAL + grammar.INTENSIFIERS:
        assert not in_lexicon(word), word


def test_sampled_completions_are_well_formed_and_start_with_a_space():
    rng = random.Random(0)
    for _ in range(2000):
        c = grammar.sample_completion(rng)
        assert c.startswith(" ") and c.endswith(" .")
        assert grammar.is_well_formed(c), c


def test_ill_formed_completions_are_rejected():
    bad = [" great great .", " great", " great . .", "great .", " great and .", " so so great .",
           " great , but the music was .", " great\x02 .", " great and i loved .", ""]
    for c in bad:
        assert not grammar.is_well_formed(c), repr(c)


def test_corpus_is_reproducible_and_balanced():
    a, b = grammar.make_corpus(3000, seed=1), grammar.make_corpus(3000, seed=1)
    assert a == b and a != grammar.make_corpus(3000, seed=2)
    rng = random.Random(0)
    r = ground_truth_reward([grammar.sample_completion(rng) for _ in range(3000)])
    assert abs(r.mean()) < 0.15  # π_ref starts near neutral, so DPO has room to move either way
    assert (r > 0.5).mean() > 0.2 and (r < -0.5).mean() > 0.15


def test_prompts():
    prompts = grammar.all_prompts()
    assert len(prompts) == len(set(prompts)) == 200
    assert "honestly , the acting was" in prompts
    assert all(not p.startswith(" ") and not p.endswith(" ") for p in prompts)
