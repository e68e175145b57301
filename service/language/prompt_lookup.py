"""Prompt lookup: draft tokens for greedy decoding copied from earlier in the text itself.

Why: one decode step reads all the weights whatever the number of positions it computes, so checking
a few guessed tokens costs little more than computing one. Text often repeats itself (code, lists,
names, quoted prompt phrases); where the last few tokens occurred before, the tokens that followed
them then are a good guess for what follows now. The engine checks the guesses in one forward pass
and keeps the ones greedy decoding would have chosen anyway, so the output is unchanged
(transformers' `prompt_lookup_num_tokens`, vLLM's n-gram speculation and llama.cpp's lookup decoding
do the same).
"""

from __future__ import annotations


def draft_from_context(tokens: list[int], max_draft: int, max_ngram: int = 3, window: int = 1024) -> list[int]:
    """Up to `max_draft` tokens that followed the most recent earlier occurrence of the text's last n
    tokens (n from `max_ngram` down to 1, longest match first), searching the last `window` tokens."""
    if max_draft <= 0 or len(tokens) < 2:
        return []
    start = max(0, len(tokens) - window)
    for n in range(min(max_ngram, len(tokens) - 1), 0, -1):
        key = tokens[-n:]
        for at in range(len(tokens) - n - 1, start - 1, -1):  # occurrences that end before the last token
            if tokens[at : at + n] == key:
                return tokens[at + n : at + n + max_draft]
    return []
