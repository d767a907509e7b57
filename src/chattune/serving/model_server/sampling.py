"""How the engine picks each next token from the logits, and what it records of them for
`logprobs`: `SamplingParams` (one request's settings), `sample_next`, `token_logprobs`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# OpenAI's clients parse a number: a token the model rules out (-inf) is given this instead,
# as vLLM does
LOGPROB_FLOOR = -9999.0


@dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded.

    Attributes:
        max_new_tokens: most tokens to generate (>= 1), eos included.
        do_sample: False: greedy (argmax); True: sample with `temperature` and `top_p`.
        temperature: logits are divided by it; 0 means greedy whatever `do_sample` says.
        top_p: nucleus sampling: sample among the most likely tokens whose probabilities
            add up to `top_p` (in (0, 1]).
        seed: seeds this request's own generator: same seed, same text (None: random).
        stop: strings that end the answer; the text stops before them.
        logprobs: None: record nothing; k >= 0: record each answer token's log probability
            and the k most likely tokens' (`Handle.logprobs`).
    """

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0


@dataclass(frozen=True)
class TokenLogprobs:
    """What was recorded of one answer token: its id and log probability, and the
    (id, log probability) of the most likely tokens at its position, most likely first."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def sample_next(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator) -> int:
    """The next token from one row's logits (V,): argmax, or temperature + top-p sampling."""
    if params.greedy:
        return int(torch.argmax(logits))
    # In float64, where every temperature a request can send is a number (in float32 1e-300
    # is 0); and with the largest logit at 0 before the division, a tiny temperature gives
    # -inf to the others (a one-hot softmax), never inf - inf = NaN.
    logits = logits.double().cpu()
    probs = torch.softmax((logits - logits.max()) / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        # keep a token if the ones more likely than it add up to less than top_p
        keep = (torch.cumsum(sorted_p, dim=-1) - sorted_p) < params.top_p
        keep[0] = True
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=gen))


def token_logprobs(logits: torch.Tensor, token: int, top: int) -> TokenLogprobs:
    """The log probability of `token` under one row's logits (V,), the model's own
    distribution (before temperature and top-p, as OpenAI and vLLM report it), and the `top`
    most likely tokens'."""
    logp = torch.log_softmax(logits.float(), dim=-1).clamp_(min=LOGPROB_FLOOR)
    best = torch.topk(logp, min(top, logp.shape[-1]))
    pairs = zip(best.indices.tolist(), best.values.tolist(), strict=True)
    return TokenLogprobs(token, float(logp[token]), tuple(pairs))
