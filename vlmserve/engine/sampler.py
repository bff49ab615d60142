"""Batched sampling: penalties, temperature, top-k / top-p / min-p and seeded draws, vectorised over the batch."""

from dataclasses import dataclass

import torch

from vlmserve.sampling_params import SamplingParams


@dataclass
class SamplingMetadata:
    """One step's sampling parameters as tensors on the logits' device, one row per sequence.

    Optional fields are None when no row needs them, so the sampler skips that work for the whole batch.
    """

    temperature: torch.Tensor  # [B] float; 1.0 on greedy rows, which never divide by it
    is_greedy: torch.Tensor  # [B] bool
    all_greedy: bool
    all_random: bool
    top_k: torch.Tensor | None  # [B] long; < 1 keeps every token
    top_p: torch.Tensor | None  # [B] float; 1.0 keeps every token
    min_p: torch.Tensor | None  # [B] float; 0.0 keeps every token
    repetition_penalty: torch.Tensor | None  # [B] float
    seen_mask: torch.Tensor | None  # [B, V] bool: token in the prompt or the output
    presence_penalty: torch.Tensor | None  # [B] float
    frequency_penalty: torch.Tensor | None  # [B] float
    output_counts: torch.Tensor | None  # [B, V] float32: occurrences among generated tokens only
    banned_mask: torch.Tensor | None  # [B, V] bool: forced to -inf this step
    generators: list[torch.Generator | None]  # per row: the request's own generator when it is seeded
    max_num_logprobs: int | None  # the most top logprobs any row asked for; None when no row did

    @classmethod
    def build(cls, params: list[SamplingParams], prompt_token_ids: list[list[int]],
              output_token_ids: list[list[int]], generators: list[torch.Generator | None], vocab_size: int,
              device, banned_token_ids: list[list[int]] | None = None) -> "SamplingMetadata":
        """Per-row parameters to tensors. Token ids outside [0, vocab_size) (e.g. Mllama's image token, one past
        the LM head) are ignored by the penalties and the ban."""
        device = torch.device(device)
        is_greedy = [p.is_greedy for p in params]
        float32 = torch.float32
        repetition = _column_if_used(params, "repetition_penalty", lambda v: v != 1, float32, device)
        presence = _column_if_used(params, "presence_penalty", lambda v: v != 0, float32, device)
        frequency = _column_if_used(params, "frequency_penalty", lambda v: v != 0, float32, device)
        requested_logprobs = [p.logprobs for p in params if p.logprobs is not None]
        return cls(
            temperature=torch.tensor([1.0 if g else p.temperature for p, g in zip(params, is_greedy)],
                                     dtype=float32, device=device),
            is_greedy=torch.tensor(is_greedy, dtype=torch.bool, device=device),
            all_greedy=all(is_greedy),
            all_random=not any(is_greedy),
            top_k=_column_if_used(params, "top_k", lambda v: v > 0, torch.long, device),
            top_p=_column_if_used(params, "top_p", lambda v: v < 1, float32, device),
            min_p=_column_if_used(params, "min_p", lambda v: v > 0, float32, device),
            repetition_penalty=repetition,
            seen_mask=(None if repetition is None
                       else _seen_mask(prompt_token_ids, output_token_ids, vocab_size, device)),
            presence_penalty=presence,
            frequency_penalty=frequency,
            output_counts=(None if presence is None and frequency is None
                           else _token_counts(output_token_ids, vocab_size, device)),
            banned_mask=_banned_mask(banned_token_ids, vocab_size, device),
            generators=list(generators),
            max_num_logprobs=max(requested_logprobs, default=None),
        )


@dataclass
class SamplerOutput:
    """One step's sampled tokens and, when any row asked, their logprobs."""

    sampled_token_ids: torch.Tensor  # [B] long
    # (sampled_logprob [B] float, top_ids [B, k] long, top_logprobs [B, k] float), k = max_num_logprobs, sorted
    # best first; rows that asked for fewer use a prefix. None when no row asked for logprobs.
    logprobs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None


class Sampler(torch.nn.Module):
    """One token per row from one step's logits, in this order:

    1. logprobs from the RAW model logits (log_softmax before any ban, penalty or temperature: vLLM's default
       "raw_logprobs"), when any row asked for them;
    2. banned ids -> -inf;
    3. repetition penalty (transformers): for tokens in the prompt or output, logit > 0 -> logit / p, else logit * p;
    4. frequency and presence penalties (OpenAI, generated tokens only): logit -= count * freq + (count > 0) * pres;
    5. greedy rows (temperature 0 or top_k 1): argmax of the penalised logits;
    6. other rows: / temperature, top-k, top-p, min-p, then an exponential race argmax(probs / q), q ~ Exp(1).
       A seeded row draws q from its own generator, so its tokens depend on nothing else in the batch.

    Nothing waits on the device; the only Python loop is one draw per seeded row.
    """

    def forward(self, logits: torch.Tensor, metadata: SamplingMetadata) -> SamplerOutput:
        logits = logits.float()  # [B, V]; every step below is out of place, so the caller's tensor is untouched
        raw_logprobs = None if metadata.max_num_logprobs is None else logits.log_softmax(dim=-1)
        token_ids = self.sample(self.apply_penalties(logits, metadata), metadata)
        return SamplerOutput(token_ids, _logprobs_of(raw_logprobs, token_ids, metadata.max_num_logprobs))

    @staticmethod
    def apply_penalties(logits: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
        """Steps 2-4: banned ids, repetition, frequency and presence penalties; returns a new [B, V] tensor."""
        if metadata.banned_mask is not None:
            logits = logits.masked_fill(metadata.banned_mask, float("-inf"))
        if metadata.repetition_penalty is not None:
            penalty = torch.where(metadata.seen_mask, metadata.repetition_penalty[:, None], 1.0)  # [B, V]
            logits = torch.where(logits > 0, logits / penalty, logits * penalty)
        if metadata.frequency_penalty is not None:
            logits = logits - metadata.output_counts * metadata.frequency_penalty[:, None]
        if metadata.presence_penalty is not None:
            logits = logits - (metadata.output_counts > 0) * metadata.presence_penalty[:, None]
        return logits

    @staticmethod
    def sample(logits: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
        """Steps 5-6 on penalised logits [B, V]; returns token ids [B]."""
        if metadata.all_greedy:
            return logits.argmax(dim=-1)
        scaled = logits / metadata.temperature[:, None]
        filtered = apply_top_k_top_p_min_p(scaled, metadata.top_k, metadata.top_p, metadata.min_p)
        probs = filtered.softmax(dim=-1)
        sampled = (probs / _exponential_noise(probs, metadata.generators)).argmax(dim=-1)
        if metadata.all_random:
            return sampled
        return torch.where(metadata.is_greedy, logits.argmax(dim=-1), sampled)


def apply_top_k_top_p_min_p(logits: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None,
                            min_p: torch.Tensor | None) -> torch.Tensor:
    """Sets to -inf the logits that top-k, then top-p, then min-p drop; returns a new [B, V] tensor.

    top_k: [B] long; keep the k largest logits (exactly k, ties broken by index); values < 1 keep all.
    top_p: [B] float in (0, 1]; keep the smallest set of most likely tokens whose probability reaches top_p (the
        token that crosses it stays, and so does the top token); 1 keeps all.
    min_p: [B] float in [0, 1]; drop tokens whose probability is below min_p * the top token's.
    Each filter judges the distribution the previous ones left. None skips a filter for the whole batch.
    """
    if top_k is not None or top_p is not None:
        logits = _apply_top_k_top_p(logits, top_k, top_p)
    if min_p is not None:
        # prob < min_p * max_prob  <=>  logit < max_logit + log(min_p): no softmax needed, and log(0) keeps all.
        threshold = logits.amax(dim=-1) + min_p.log()  # [B]
        logits = logits.masked_fill(logits < threshold[:, None], float("-inf"))
    return logits


def _apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor | None,
                       top_p: torch.Tensor | None) -> torch.Tensor:
    vocab_size = logits.shape[-1]
    sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)  # [B, V]
    if top_k is not None:
        k = torch.where(top_k < 1, vocab_size, top_k)  # [B]
        rank = torch.arange(vocab_size, device=logits.device)  # [V]
        sorted_logits = sorted_logits.masked_fill(rank >= k[:, None], float("-inf"))
    if top_p is not None:
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # [B, V]; exactly 0 for the top token, which always stays
        # Rows with top_p 1 are spared explicitly: rounding can push the tail's mass_before to 1.0.
        drop = (mass_before >= top_p[:, None]) & (top_p < 1)[:, None]
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def _exponential_noise(probs: torch.Tensor, generators: list[torch.Generator | None]) -> torch.Tensor:
    """[B, V] Exp(1) noise: a seeded row gets a fresh [V] draw from its own generator (so the values depend
    neither on its row index nor on its neighbours); the other rows share one draw from the default generator."""
    noise = torch.empty_like(probs)
    if any(generator is None for generator in generators):
        noise.exponential_()
    for row, generator in enumerate(generators):
        if generator is not None:
            noise[row] = torch.empty_like(probs[row]).exponential_(generator=generator)
    return noise.clamp_(min=torch.finfo(noise.dtype).tiny)  # a 0 draw would make a dropped token's 0 / 0 NaN


def _column_if_used(params: list[SamplingParams], name: str, is_used, dtype: torch.dtype,
                    device: torch.device) -> torch.Tensor | None:
    """[B] tensor of one parameter, or None when no row uses it."""
    values = [getattr(p, name) for p in params]
    return torch.tensor(values, dtype=dtype, device=device) if any(map(is_used, values)) else None


def _seen_mask(prompt_token_ids: list, output_token_ids: list, vocab_size: int,
               device: torch.device) -> torch.Tensor:
    """[B, V] bool: the id occurs in the row's prompt or output."""
    rows = [torch.cat([torch.as_tensor(prompt, dtype=torch.long, device=device),
                       torch.as_tensor(output, dtype=torch.long, device=device)])
            for prompt, output in zip(prompt_token_ids, output_token_ids)]
    row_of, ids = _flat_ids(rows, vocab_size, device)
    mask = torch.zeros(len(rows), vocab_size + 1, dtype=torch.bool, device=device)
    return mask.index_put_((row_of, ids), torch.ones_like(ids, dtype=torch.bool))[:, :vocab_size]


def _banned_mask(banned_token_ids: list[list[int]] | None, vocab_size: int,
                 device: torch.device) -> torch.Tensor | None:
    """[B, V] bool, or None when no row bans anything."""
    if not banned_token_ids or not any(banned_token_ids):
        return None
    return _token_counts(banned_token_ids, vocab_size, device) > 0


def _token_counts(token_ids: list, vocab_size: int, device: torch.device) -> torch.Tensor:
    """[B, V] float32: occurrences of each id per row (float: the penalties multiply them with float logits)."""
    row_of, ids = _flat_ids(token_ids, vocab_size, device)
    counts = torch.zeros(len(token_ids), vocab_size + 1, dtype=torch.float32, device=device)
    return counts.index_put_((row_of, ids), torch.ones_like(ids, dtype=torch.float32), accumulate=True)[:, :vocab_size]


def _flat_ids(token_ids: list, vocab_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row's ids (lists or 1-D tensors) flattened, with the row each came from; ids outside [0, V) are moved
    to column V, which callers drop. Tensors let a caller keep long prompts out of per-step Python loops."""
    rows = [torch.as_tensor(ids, dtype=torch.long, device=device) for ids in token_ids]
    flat = torch.cat(rows) if rows else torch.empty(0, dtype=torch.long, device=device)
    flat = torch.where((flat >= 0) & (flat < vocab_size), flat, vocab_size)
    lengths = torch.tensor([len(row) for row in rows], device=device)
    return torch.repeat_interleave(torch.arange(len(rows), device=device), lengths), flat


def _logprobs_of(raw_logprobs: torch.Tensor | None, token_ids: torch.Tensor,
                 k: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    if raw_logprobs is None:
        return None
    sampled = raw_logprobs.gather(1, token_ids[:, None]).squeeze(1)  # [B]
    top_logprobs, top_ids = raw_logprobs.topk(k, dim=-1)  # [B, k], sorted best first
    return sampled, top_ids, top_logprobs
