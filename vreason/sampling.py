"""Sampling through transformers' own logits warpers, in the order ``generate`` applies them.

We own the decode loop, not sampling: temperature, top-h, top-k, top-p and min-p are transformers'
``LogitsProcessor`` classes. Each sample has its own random generator seeded from (seed, sample key),
so a sample draws the same tokens whether it runs alone or in a batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers import (
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopHLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


@dataclass
class SamplingConfig:
    """Decoding settings. Defaults are the paper's (temperature 0.1, top-p 0.001, 1024 new tokens).

    ``do_sample=False`` (or temperature 0) is greedy decoding.
    """

    do_sample: bool = True
    temperature: float = 0.1
    top_p: float | None = 0.001
    top_k: int | None = None
    min_p: float | None = None
    top_h: float | None = None
    max_new_tokens: int = 1024
    stop_strings: list[str] = field(default_factory=list)

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0.0

    def logits_processor(self) -> LogitsProcessorList:
        if self.greedy:
            return LogitsProcessorList()
        warpers = LogitsProcessorList()
        if self.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(self.temperature))
        if self.top_h is not None:
            warpers.append(TopHLogitsWarper(top_h=self.top_h))
        if self.top_k is not None and self.top_k > 0:
            warpers.append(TopKLogitsWarper(top_k=self.top_k))
        if self.top_p is not None and self.top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=self.top_p))
        if self.min_p is not None:
            warpers.append(MinPLogitsWarper(min_p=self.min_p))
        return warpers


def sample_generators(seed: int, keys: list[str], device: torch.device | str) -> list[torch.Generator]:
    """One generator per sample, seeded from (seed, key) with a stable hash."""
    generators = []
    for key in keys:
        digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
        generator = torch.Generator(device=device)
        generator.manual_seed(int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF)
        generators.append(generator)
    return generators


def next_tokens(scores: Tensor, config: SamplingConfig, generators: list[torch.Generator]) -> Tensor:
    """[batch] next token ids from processed scores [batch, vocab]."""
    if config.greedy:
        return scores.argmax(dim=-1)
    probs = torch.softmax(scores.float(), dim=-1)
    return torch.cat(
        [
            torch.multinomial(probs[row : row + 1], 1, generator=gen).flatten()
            for row, gen in enumerate(generators)
        ]
    )
