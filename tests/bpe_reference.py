"""A plain Python byte-level BPE trainer: the slow, readable reference that
nanochat.rustbpe.train must match merge for merge."""

from collections import Counter, defaultdict

import regex


def count_pieces(texts, pattern):
    """How often each pre-token (a match of `pattern`) occurs in `texts`."""
    return Counter(piece for text in texts for piece in regex.findall(pattern, text))


def merge_pair(word, pair, new_id):
    """`word` with the non-overlapping occurrences of `pair`, left to right, replaced by `new_id`."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def train_reference(texts, vocab_size, pattern):
    """The merges (left_id, right_id) in order; merge i creates token 256 + i.

    A pair's count is the sum over unique pieces of count x (positions holding the pair), so
    "aaa" holds (a, a) twice. Each step merges the pair with the highest count, ties going to
    the smallest (left_id, right_id); training stops at vocab_size or when no pair is left.
    """
    pieces = count_pieces(texts, pattern)
    words = [list(piece.encode("utf-8")) for piece in pieces]
    counts = list(pieces.values())
    pair_counts = Counter()
    pair_words = defaultdict(set)  # pair -> indices of words that held it at some point
    for i, word in enumerate(words):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += counts[i]
            pair_words[pair].add(i)

    merges = []
    while 256 + len(merges) < vocab_size and pair_counts:
        pair, _ = min(pair_counts.items(), key=lambda item: (-item[1], item[0]))
        new_id = 256 + len(merges)
        merges.append(pair)
        for i in pair_words.pop(pair):
            # take the word's pairs out, merge, and put the merged word's pairs back in
            for p in zip(words[i], words[i][1:]):
                pair_counts[p] -= counts[i]
                if pair_counts[p] == 0:
                    del pair_counts[p]
            words[i] = merge_pair(words[i], pair, new_id)
            for p in zip(words[i], words[i][1:]):
                pair_counts[p] += counts[i]
                pair_words[p].add(i)
    return merges
