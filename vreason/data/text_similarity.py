"""Word error rate and ROUGE F1, for the OCR and free-form problem types.

Neither type occurs in the six evaluation files (Video-R1's ``eval_bench.py`` scores them 0); they come
from Video-R1's training reward (``open_r1/grpo.py``), which we follow:

- OCR: ``1 - WER`` on whitespace-split words (case-sensitive), clipped to [0, 1].
- free-form: the mean of ROUGE-1, ROUGE-2 and ROUGE-L F1. Video-R1 calls ``rouge_score`` with the Porter
  stemmer; we tokenise the same way (lower case, runs of ``[a-z0-9]``) but do not stem, since neither
  ``rouge_score`` nor ``nltk`` is a dependency. Scores can differ from Video-R1's where words differ only
  by inflection ("runs" / "running").
"""

from __future__ import annotations

import re
from collections import Counter


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level Levenshtein distance divided by the reference length (at least 1)."""
    ref, hyp = reference.split(), hypothesis.split()
    previous = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, start=1):
        current = [i]
        for j, hyp_word in enumerate(hyp, start=1):
            substitution = previous[j - 1] + (ref_word != hyp_word)
            current.append(min(previous[j] + 1, current[j - 1] + 1, substitution))
        previous = current
    return previous[-1] / max(1, len(ref))


def rouge_tokens(text: str) -> list[str]:
    """``rouge_score``'s default tokenisation, without stemming: lower case, alphanumeric runs."""
    return re.findall(r"[a-z0-9]+", text.lower())


def _f1(overlap: int, n_reference: int, n_hypothesis: int) -> float:
    if overlap == 0:
        return 0.0
    precision, recall = overlap / n_hypothesis, overlap / n_reference
    return 2 * precision * recall / (precision + recall)


def rouge_n_f1(reference: list[str], hypothesis: list[str], n: int) -> float:
    ref = Counter(tuple(reference[i : i + n]) for i in range(len(reference) - n + 1))
    hyp = Counter(tuple(hypothesis[i : i + n]) for i in range(len(hypothesis) - n + 1))
    return _f1(sum((ref & hyp).values()), sum(ref.values()), sum(hyp.values()))


def rouge_l_f1(reference: list[str], hypothesis: list[str]) -> float:
    """F1 of the longest common subsequence."""
    previous = [0] * (len(hypothesis) + 1)
    for ref_word in reference:
        current = [0]
        for j, hyp_word in enumerate(hypothesis, start=1):
            current.append(previous[j - 1] + 1 if ref_word == hyp_word else max(previous[j], current[j - 1]))
        previous = current
    return _f1(previous[-1], len(reference), len(hypothesis))


def mean_rouge_f1(reference: str, hypothesis: str) -> float:
    """Mean of ROUGE-1, ROUGE-2 and ROUGE-L F1 (Video-R1's free-form reward)."""
    ref, hyp = rouge_tokens(reference), rouge_tokens(hypothesis)
    return (rouge_n_f1(ref, hyp, 1) + rouge_n_f1(ref, hyp, 2) + rouge_l_f1(ref, hyp)) / 3
