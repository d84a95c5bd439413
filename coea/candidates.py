"""Novelty LLM candidate generation: M catalogue categories per key, never an invented name.

Two modes (docs/candidates.md):

- **Closed-vocabulary scoring** (:func:`category_logprobs`, :func:`rank_categories`): the log-probability of
  every category's completion given the prompt, ``log p(c | x) = sum_t log p(y_t | x, y_<t)`` over the completion
  tokens ``y`` (plus EOS when SFT completions end with it). The prompt is run once per prompt; its KV cache is
  gathered across all category completions, which then cost one short forward. Top-M returned, sorted.
- **Constrained decoding** (:func:`generate_candidates`): sampling or beam search through Hugging Face
  ``generate(prefix_allowed_tokens_fn=...)`` (:class:`TriePrefixConstraint`; coea's own
  :class:`TrieLogitsProcessor` gives identical candidates and stays as the reference) that only allows token ids
  on a prefix trie of the categories' completions, EOS only at a complete name. Fails closed: a sequence with no allowed token is forced
  to end, then dropped and counted; it is never decoded unconstrained. Outputs map back to categories through the
  trie, not by string matching.

Completions are tokenised the way SFT tokenises them (trl's prompt-completion convention): with
``full = tokenizer(prompt + completion)``, the completion starts where ``full`` and ``tokenizer(prompt)`` diverge.
Where the boundary is unstable (a BPE merge across it, e.g. a prompt ending in a space), the context is then a
strict prefix of the prompt's ids and the merged token belongs to the completion; scoring conditions on exactly
the context training saw.

Everything here is generic over Hugging Face causal LMs (peft-wrapped included) and fast or slow tokenizers.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from coea.console import iterate
from coea.prompts import completion_text

if TYPE_CHECKING:
    from coea.config import NoveltyConfig

__all__ = [
    "CandidateResult",
    "CategoryTrie",
    "CompletionTokenizer",
    "TrieLogitsProcessor",
    "TriePrefixConstraint",
    "category_logprobs",
    "default_completion_format",
    "generate_candidates",
    "propose",
    "rank_categories",
]

# A sequence with no allowed token gets only EOS, at this log-score: it ends at once (sampling puts all mass on
# it), ranks below every real beam, and is then dropped because it does not end at a complete name.
_DEAD_END_SCORE = -1.0e4


# --------------------------------------------------------------------------------------------- completions


def default_completion_format() -> Callable[[str], str]:
    """The completion string SFT trains on for a category: ``coea.prompts.completion_text``."""
    return completion_text


def _ids(tokenizer, texts: list[str], *, special: bool) -> list[list[int]]:
    return [list(x) for x in tokenizer(texts, add_special_tokens=special)["input_ids"]]


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class CompletionTokenizer:
    """Token ids of every category's completion in a prompt's own tokenisation context.

    For a prompt ``x`` and completion ``y``: ``prompt_ids = tok(x)``, ``full = tok(x + y)``, ``k`` = their common
    prefix length (trl's ``common_prefix_length``); the completion is ``full[k:]`` (+ EOS when ``append_eos``) and
    its context ``prompt_ids[:k]``, which is all of ``prompt_ids`` when the boundary is stable.

    Tokenising ``x + y`` for every prompt and category costs a full tokenisation per pair, so by default only the
    prompt's last ``boundary_chars`` characters (the "tail") are tokenised with each completion, cached per distinct
    tail (prompts share their closing template, so usually one tail in all). The shortcut is used only when the
    tail's own ids, less its first (possibly split) token, are a suffix of ``prompt_ids`` and every divergence lies
    inside that verified suffix; otherwise the prompt is tokenised in full. ``boundary_chars=None`` always
    tokenises in full.

    Args:
        tokenizer: any Hugging Face tokenizer.
        categories: the catalogue, unique names.
        completion_format: category -> completion string (default :func:`default_completion_format`).
        append_eos: append the EOS id to every completion (SFT data that ends with EOS).
        boundary_chars: tail length for the cached shortcut; None disables it.
    """

    def __init__(
        self,
        tokenizer,
        categories: Sequence[str],
        *,
        completion_format: Callable[[str], str] | None = None,
        append_eos: bool = True,
        boundary_chars: int | None = 64,
    ):
        if len(set(categories)) != len(categories):
            raise ValueError("categories must be unique")
        if not categories:
            raise ValueError("categories is empty")
        self.tokenizer = tokenizer
        self.categories = list(categories)
        self.format = completion_format or default_completion_format()
        self.completions = [self.format(c) for c in self.categories]
        self.append_eos = append_eos
        self.boundary_chars = boundary_chars
        self.eos_id = _eos_id(tokenizer) if append_eos else None
        self._tails: dict[str, tuple[list[int], list[tuple[int, list[int]]]]] = {}
        self._standalone: list[tuple[int, ...]] | None = None

    def prompt_ids(self, prompts: Sequence[str]) -> list[list[int]]:
        """``tok(prompt)`` with the tokenizer's special tokens, as SFT tokenises the prompt."""
        return _ids(self.tokenizer, list(prompts), special=True)

    def in_context(self, prompt: str, prompt_ids: list[int]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """Per category: ``(context_ids, completion_ids)``; completion ids include EOS when ``append_eos``."""
        pairs = self._from_tail(prompt, prompt_ids)
        if pairs is None:
            pairs = self._exact(prompt, prompt_ids)
        out = []
        for category, (context, completion) in zip(self.categories, pairs):
            if not completion:
                raise ValueError(f"category {category!r}: its completion tokenises to no tokens after the prompt")
            if self.eos_id is not None:
                completion = completion + [self.eos_id]
            out.append((tuple(context), tuple(completion)))
        return out

    def standalone(self) -> list[tuple[int, ...]]:
        """Per category: ids of the completion tokenised on its own (no context, no special tokens)."""
        if self._standalone is None:
            self._standalone = [tuple(x) for x in _ids(self.tokenizer, self.completions, special=False)]
        return self._standalone

    def _exact(self, prompt: str, prompt_ids: list[int]) -> list[tuple[list[int], list[int]]]:
        fulls = _ids(self.tokenizer, [prompt + y for y in self.completions], special=True)
        out = []
        for full in fulls:
            k = _common_prefix(prompt_ids, full)
            out.append((prompt_ids[:k], full[k:]))
        return out

    def _from_tail(self, prompt: str, prompt_ids: list[int]) -> list[tuple[list[int], list[int]]] | None:
        if self.boundary_chars is None or len(prompt) <= self.boundary_chars:
            return None
        tail = prompt[-self.boundary_chars:]
        if tail not in self._tails:
            tail_ids = _ids(self.tokenizer, [tail], special=False)[0]
            fulls = _ids(self.tokenizer, [tail + y for y in self.completions], special=False)
            per_category = []
            for full in fulls:
                k = _common_prefix(tail_ids, full)
                per_category.append((k, full[k:]))
            self._tails[tail] = (tail_ids, per_category)
        tail_ids, per_category = self._tails[tail]
        m = len(tail_ids)
        verified = m >= 2 and len(prompt_ids) >= m - 1 and prompt_ids[len(prompt_ids) - (m - 1):] == tail_ids[1:]
        if not verified or any(k < 1 for k, _ in per_category):
            return None  # a divergence inside the unverified first token: tokenise in full
        n = len(prompt_ids)
        return [(prompt_ids[: n - (m - k)], completion) for k, completion in per_category]


def _eos_id(tokenizer) -> int:
    eos = tokenizer.eos_token_id
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id; completions need one to end")
    return int(eos)


def _pad_id(tokenizer) -> int:
    return int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else _eos_id(tokenizer)


def _exclusion_masks(categories: Sequence[str], exclude: list[set[str]] | None, n_prompts: int) -> list[list[bool]]:
    """(P, C) booleans: True where the category is excluded for that prompt (unknown names are ignored)."""
    if exclude is not None and len(exclude) != n_prompts:
        raise ValueError(f"exclude has {len(exclude)} entries for {n_prompts} prompts")
    if exclude is None:
        return [[False] * len(categories) for _ in range(n_prompts)]
    return [[c in ex for c in categories] for ex in exclude]


# ------------------------------------------------------------------------------------------------ helpers


def _input_device(model) -> torch.device:
    return model.get_input_embeddings().weight.device


@contextmanager
def _eval_mode(model) -> Iterator[None]:
    """Dropout off while scoring / decoding; every module's own mode is restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask, both (B, T)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


# ------------------------------------------------------------------------------------------------ scoring


@dataclass
class _Job:
    """One shared context (a prompt, or a prompt whose boundary a completion re-tokenises) and its completions."""

    prompt: int
    context: tuple[int, ...]
    rows: list[tuple[int, tuple[int, ...]]]  # (category index, completion ids)


@torch.inference_mode()
def category_logprobs(
    model,
    tokenizer,
    prompts: Sequence[str],
    categories: Sequence[str],
    *,
    exclude: list[set[str]] | None = None,
    batch_size: int = 32,
    completion_format: Callable[[str], str] | None = None,
    append_eos: bool = True,
    boundary_chars: int | None = 64,
    max_rows: int = 1024,
) -> torch.Tensor:
    """Log-probability of every category's completion given each prompt.

    Each distinct context is run once (contexts sorted by length, ``batch_size`` per left-padded forward, with
    ``use_cache``); the first completion token is read off the context's last logits, and the remaining tokens of
    all completions of a batch run in one forward over the context KV cache gathered across them (at most
    ``max_rows`` completions per forward). The last completion token is never fed: nothing reads its logits.

    Args:
        model: a Hugging Face causal LM (peft-wrapped allowed).
        tokenizer: its tokenizer.
        prompts: P prompt strings.
        categories: C catalogue names.
        exclude: per prompt, names that are not scored (recent categories).
        batch_size: contexts per forward.
        completion_format: see :class:`CompletionTokenizer`.
        append_eos: count the EOS token after the name (SFT completions that end with EOS).
        boundary_chars: see :class:`CompletionTokenizer`.
        max_rows: completions per forward over the gathered cache.

    Returns:
        (P, C) float32 on CPU: ``sum_t log p(y_t | context, y_<t)``; ``-inf`` where excluded.
    """
    comp = CompletionTokenizer(
        tokenizer, categories, completion_format=completion_format, append_eos=append_eos,
        boundary_chars=boundary_chars,
    )
    excluded = _exclusion_masks(categories, exclude, len(prompts))
    scores = torch.full((len(prompts), len(categories)), -math.inf, dtype=torch.float32)

    jobs: list[_Job] = []
    for p, (prompt, prompt_ids) in enumerate(zip(prompts, comp.prompt_ids(prompts))):
        by_context: dict[tuple[int, ...], _Job] = {}
        for c, (context, completion) in enumerate(comp.in_context(prompt, prompt_ids)):
            if excluded[p][c]:
                continue
            if context not in by_context:
                by_context[context] = _Job(p, context, [])
            by_context[context].rows.append((c, completion))
        jobs.extend(by_context.values())
    jobs.sort(key=lambda j: len(j.context))

    device = _input_device(model)
    pad_id = _pad_id(tokenizer)
    with _eval_mode(model):
        for start in iterate(range(0, len(jobs), batch_size), "Novelty candidates", unit="batches"):
            _score_batch(model, jobs[start:start + batch_size], scores, pad_id, device, max_rows)
    return scores


def _score_batch(model, jobs: list[_Job], scores: torch.Tensor, pad_id: int, device, max_rows: int) -> None:
    ctx_ids, ctx_mask = _left_pad([j.context for j in jobs], pad_id, device)  # (B, Tp)
    ctx_pos = (ctx_mask.cumsum(-1) - 1).clamp(min=0)  # positions restart at 0 after the left padding
    out = model(input_ids=ctx_ids, attention_mask=ctx_mask, position_ids=ctx_pos, use_cache=True, logits_to_keep=1)
    first = F.log_softmax(out.logits[:, -1, :].float(), dim=-1)  # (B, V): predicts every completion's y_0
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    ctx_len = ctx_mask.sum(-1)  # (B,)

    rows = [(j, job.prompt, c, completion) for j, job in enumerate(jobs) for c, completion in job.rows]
    job_of = torch.tensor([r[0] for r in rows], device=device)
    y0 = torch.tensor([r[3][0] for r in rows], device=device)
    where = (torch.tensor([r[1] for r in rows]), torch.tensor([r[2] for r in rows]))
    scores.index_put_(where, first[job_of, y0].cpu())

    # The rest of each completion: rows of one length share a forward (no padding, so no LM-head work on pads)
    # over the context cache gathered for them. The last token is never fed: nothing reads its logits.
    by_length: dict[int, list[tuple[int, int, int, tuple[int, ...]]]] = {}
    for r in rows:
        if len(r[3]) > 1:
            by_length.setdefault(len(r[3]), []).append(r)
    for length, group in sorted(by_length.items()):
        for i in range(0, len(group), max_rows):
            chunk = group[i:i + max_rows]
            job_idx = torch.tensor([r[0] for r in chunk], device=device)  # (R,)
            seqs = torch.tensor([r[3] for r in chunk], device=device)  # (R, n)
            mask = torch.cat([ctx_mask[job_idx], torch.ones_like(seqs[:, :-1])], dim=1)  # (R, Tp + n - 1)
            pos = ctx_len[job_idx, None] + torch.arange(length - 1, device=device)[None, :]  # (R, n - 1)
            logits = model(input_ids=seqs[:, :-1], attention_mask=mask, position_ids=pos,
                           use_cache=True, **{_CACHE_KWARG: _gathered(cache, job_idx)}).logits  # (R, n - 1, V)
            logp = F.log_softmax(logits.float(), dim=-1).gather(-1, seqs[:, 1:, None]).squeeze(-1)  # (R, n - 1)
            where = (torch.tensor([r[1] for r in chunk]), torch.tensor([r[2] for r in chunk]))
            scores.index_put_(where, logp.sum(-1).cpu(), accumulate=True)


def _cache_kwarg() -> str:
    """The forward keyword of a KV cache: ``cache`` since transformers 5.2x (``past_key_values`` is deprecated
    there, with a FutureWarning), ``past_key_values`` before."""
    try:
        from transformers.generation.utils import ALL_CACHE_NAMES
    except ImportError:  # pragma: no cover - older transformers
        return "past_key_values"
    return "cache" if "cache" in ALL_CACHE_NAMES else "past_key_values"


_CACHE_KWARG = _cache_kwarg()


def _gathered(cache, index: torch.Tensor):
    """A cache holding rows ``index`` of ``cache`` (which stays intact for the next chunk)."""
    if hasattr(cache, "layers"):  # transformers >= 4.56 caches: layers reassign their tensors when gathered
        rows = copy.copy(cache)
        rows.layers = [copy.copy(layer) for layer in cache.layers]
    else:
        rows = copy.deepcopy(cache)
    rows.batch_select_indices(index)  # (R, kv_heads, Tp, head_dim) per layer
    return rows


def rank_categories(
    model,
    tokenizer,
    prompts: list[str],
    categories: list[str],
    *,
    exclude: list[set[str]] | None = None,
    top_m: int,
    batch_size: int = 32,
    completion_format: Callable[[str], str] | None = None,
    append_eos: bool = True,
    boundary_chars: int | None = 64,
    max_rows: int = 1024,
) -> list[list[tuple[str, float]]]:
    """Top-M categories per prompt by completion log-probability (closed-vocabulary scoring).

    See :func:`category_logprobs` for the arguments. Returns, per prompt, up to ``top_m`` ``(category, log_prob)``
    sorted by decreasing log-probability (ties: catalogue order); excluded categories never appear.
    """
    if top_m < 1:
        raise ValueError("top_m must be >= 1")
    scores = category_logprobs(
        model, tokenizer, prompts, categories, exclude=exclude, batch_size=batch_size,
        completion_format=completion_format, append_eos=append_eos, boundary_chars=boundary_chars, max_rows=max_rows,
    )
    ranked = []
    for row in scores:
        order = sorted(range(len(categories)), key=lambda c: (-row[c].item(), c))
        ranked.append([(categories[c], row[c].item()) for c in order[:top_m] if row[c] > -math.inf])
    return ranked


# ------------------------------------------------------------------------------------------------ trie


class _Node:
    __slots__ = ("children", "category", "reach")

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}
        self.category: int | None = None  # the category whose completion ends here
        self.reach = 0  # bitmask of categories that end at or below this node


class CategoryTrie:
    """Prefix trie over the token ids of category completions; a node may end one category and continue others.

    Exclusion is a per-sequence bitmask over category indices: a child is allowed only if some non-excluded category
    ends at or below it, so a sequence never enters a subtree it cannot complete.
    """

    def __init__(self, variants: Sequence[Sequence[tuple[int, ...]]], categories: Sequence[str]):
        """Args: variants[c] = the id sequences that spell category c; categories = names (for errors)."""
        self.root = _Node()
        self.max_len = 0
        for c, seqs in enumerate(variants):
            for seq in set(seqs):
                self._insert(seq, c, categories)

    def _insert(self, seq: tuple[int, ...], c: int, categories: Sequence[str]) -> None:
        if not seq:
            raise ValueError(f"category {categories[c]!r} tokenises to no tokens")
        node = self.root
        node.reach |= 1 << c
        for t in seq:
            node = node.children.setdefault(t, _Node())
            node.reach |= 1 << c
        if node.category is not None and node.category != c:
            raise ValueError(
                f"categories {categories[node.category]!r} and {categories[c]!r} tokenise to the same ids {list(seq)}; "
                "decoded candidates would be ambiguous"
            )
        node.category = c
        self.max_len = max(self.max_len, len(seq))

    def walk(self, ids: Sequence[int]) -> _Node | None:
        node = self.root
        for t in ids:
            node = node.children.get(t)
            if node is None:
                return None
        return node

    @staticmethod
    def allowed(node: _Node, allowed_mask: int) -> tuple[list[int], bool]:
        """Token ids that keep a reachable category, and whether EOS (a complete allowed name) is allowed."""
        tokens = [t for t, child in node.children.items() if child.reach & allowed_mask]
        ends = node.category is not None and bool((allowed_mask >> node.category) & 1)
        return tokens, ends

    def match(self, generated: Sequence[int], eos_id: int, allowed_mask: int) -> int | None:
        """The category that ``generated`` spells (ids up to the first EOS), or None: not a complete allowed name."""
        if eos_id not in generated:
            return None  # cut off before its EOS: the name might have continued
        node = self.walk(generated[: list(generated).index(eos_id)])
        if node is None or node.category is None or not (allowed_mask >> node.category) & 1:
            return None
        return node.category


def _allowed_next(trie: CategoryTrie, allowed_mask: int, generated: Sequence[int], eos_id: int) -> list[int]:
    """Token ids a row may produce next; empty for a dead end (no allowed continuation and no complete name).

    A finished row (EOS already generated; sampling keeps scoring finished rows, generate pads them) may only
    repeat EOS.
    """
    if eos_id in generated:
        return [eos_id]
    node = trie.walk(generated)
    tokens, ends = ([], False) if node is None else CategoryTrie.allowed(node, allowed_mask)
    return tokens + [eos_id] if ends else tokens


class TriePrefixConstraint:
    """The trie as transformers' ``prefix_allowed_tokens_fn``: ``(batch_id, input_ids) -> allowed token ids``.

    ``generate(prefix_allowed_tokens_fn=...)`` wraps it in ``PrefixConstrainedLogitsProcessor``, which calls it for
    every row (``batch_id`` = the row's prompt within the batch, rows grouped per prompt) and adds ``-inf`` to every
    token it does not return. A dead end (nothing allowed) returns EOS alone: transformers refuses an empty list,
    and EOS is the only way to stop the row; the row is dropped afterwards (fail-closed, as with
    :class:`TrieLogitsProcessor`).

    Args:
        tries: one :class:`CategoryTrie` per prompt of the batch.
        allowed_masks: per prompt, the bitmask of categories it may produce.
        prompt_len: padded prompt width; generated ids start there.
        eos_id: the terminator.
    """

    def __init__(self, tries: list[CategoryTrie], allowed_masks: list[int], *, prompt_len: int, eos_id: int):
        self.tries, self.allowed_masks = tries, allowed_masks
        self.prompt_len, self.eos_id = prompt_len, eos_id
        self.dead_ends = 0  # rows forced to stop at some step (a row counts once per step it is dead)

    def __call__(self, batch_id: int, input_ids: torch.Tensor) -> list[int]:
        tokens = _allowed_next(self.tries[batch_id], self.allowed_masks[batch_id],
                               input_ids[self.prompt_len:].tolist(), self.eos_id)
        if not tokens:
            self.dead_ends += 1
            return [self.eos_id]
        return tokens


class TrieLogitsProcessor(LogitsProcessor):
    """Masks every token the trie does not allow; EOS only at complete names; dead ends are forced to stop.

    Rows of ``input_ids`` are ``rows_per_prompt`` consecutive rows per prompt (HF expands inputs with
    ``repeat_interleave`` for ``num_return_sequences`` and ``num_beams``). Each call walks a row's generated ids from
    the root, so it stays right when beam search reorders rows. A row with no allowed token (everything excluded,
    or a beam-search filler that left the trie) gets only EOS at a very low score; it is dropped afterwards.

    Args:
        tries: one :class:`CategoryTrie` per prompt (shared objects are fine).
        allowed_masks: per prompt, the bitmask of categories it may produce.
        rows_per_prompt: sequences per prompt in the batch.
        prompt_len: padded prompt width; generated ids start there.
        eos_id: the terminator.
    """

    def __init__(self, tries: list[CategoryTrie], allowed_masks: list[int], *, rows_per_prompt: int,
                 prompt_len: int, eos_id: int):
        self.tries = tries
        self.allowed_masks = allowed_masks
        self.rows_per_prompt = rows_per_prompt
        self.prompt_len = prompt_len
        self.eos_id = eos_id
        self.dead_ends = 0  # rows forced to stop at some step (a row counts once per step it is dead)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_len:].tolist()
        rows: list[int] = []
        cols: list[int] = []
        dead: list[int] = []
        for r, gen in enumerate(generated):
            p = r // self.rows_per_prompt
            tokens = _allowed_next(self.tries[p], self.allowed_masks[p], gen, self.eos_id)
            if not tokens:
                dead.append(r)
                continue
            rows.extend([r] * len(tokens))
            cols.extend(tokens)
        keep = torch.zeros_like(scores, dtype=torch.bool)
        keep[torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)] = True
        out = scores.masked_fill(~keep, -math.inf)
        if dead:
            self.dead_ends += len(dead)
            out[torch.tensor(dead), self.eos_id] = _DEAD_END_SCORE
        return out


# ------------------------------------------------------------------------------------------------ decoding


@dataclass(frozen=True)
class CandidateResult:
    """Candidates per prompt.

    Attributes:
        candidates: per prompt, distinct catalogue names, best first (beam: by sequence log-probability; sample: in
            order of first appearance; score: by log-probability).
        dropped: decoded sequences that did not spell a complete allowed name (fail-closed drops; 0 for scoring).
        decoded: sequences decoded in all (dropped / decoded is the drop rate; for scoring, the number of prompts).
    """

    candidates: list[list[str]]
    dropped: int
    decoded: int


def _decoding_config(mode: str, *, rows: int, temperature: float, max_new_tokens: int, eos_id: int,
                     pad_id: int) -> GenerationConfig:
    """A config with every knob that could reshape the distribution set to neutral.

    generate() fills unset (None) fields from the model's own generation_config (e.g. an instruct checkpoint's
    top_k / repetition_penalty), so neutral values are spelled out rather than left unset.
    """
    neutral = dict(
        repetition_penalty=1.0, encoder_repetition_penalty=1.0, no_repeat_ngram_size=0, min_new_tokens=0,
        renormalize_logits=False, max_new_tokens=max_new_tokens, eos_token_id=eos_id, pad_token_id=pad_id,
        use_cache=True, return_dict_in_generate=True, output_scores=False,
    )
    if mode == "beam":  # length_penalty 0: a beam's score is its summed log-probability, as in rank_categories
        return GenerationConfig(do_sample=False, num_beams=rows, num_return_sequences=rows, early_stopping=True,
                                length_penalty=0.0, **neutral)
    if temperature == 0.0:  # greedy; distinct candidates come from the exclusion rounds
        return GenerationConfig(do_sample=False, num_beams=1, num_return_sequences=1, **neutral)
    return GenerationConfig(do_sample=True, num_beams=1, num_return_sequences=rows, temperature=temperature,
                            top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0,
                            **neutral)


@torch.inference_mode()
def generate_candidates(
    model,
    tokenizer,
    prompts: Sequence[str],
    categories: Sequence[str],
    *,
    mode: Literal["sample", "beam"] = "sample",
    num_candidates: int,
    exclude: list[set[str]] | None = None,
    temperature: float = 1.0,
    max_new_tokens: int | None = None,
    seed: int = 0,
    completion_format: Callable[[str], str] | None = None,
    batch_size: int = 32,
    num_beams: int | None = None,
    sample_rounds: int = 3,
    boundary_chars: int | None = 64,
    constraint: Literal["transformers", "processor"] = "transformers",
) -> CandidateResult:
    """Trie-constrained decoding of up to ``num_candidates`` (M) distinct categories per prompt.

    The trie of a prompt holds, per non-excluded category, the completion ids in that prompt's tokenisation context
    (when the boundary is stable) and the completion tokenised on its own (the leading-space variant SFT would
    produce for an unstable boundary); EOS ends a name.

    - ``sample``: M sequences per prompt per round; de-duplicated in order of appearance. If fewer than M distinct
      names came out, another round samples with the names found so far excluded (up to ``sample_rounds``; later
      rounds skip prompts with nothing left to propose). ``temperature=0`` is greedy decoding with these rounds.
    - ``beam``: beam search with ``num_beams`` (default M, at least M) beams, sum of log-probabilities
      (length penalty 0, the same score :func:`rank_categories` uses); the top M finished beams, de-duplicated.

    Fails closed: a sequence that reaches a step with no allowed token (e.g. every category excluded) is forced to
    end, and every sequence that does not spell a complete allowed name (cut off by ``max_new_tokens`` included) is
    dropped and counted in ``dropped``; nothing is ever decoded unconstrained. Names come back through the trie and
    are checked against the catalogue and the exclusions once more.

    Args:
        model: a Hugging Face causal LM (peft-wrapped allowed).
        tokenizer: its tokenizer; needs an EOS token.
        prompts: P prompts.
        categories: the catalogue (unique names).
        mode: "sample" or "beam".
        num_candidates: M.
        exclude: per prompt, names never proposed (recent categories).
        temperature: sampling temperature.
        max_new_tokens: default: the longest completion in the trie + 1 (its EOS).
        seed: sampling seed (the global RNG state is restored afterwards).
        completion_format: see :class:`CompletionTokenizer`.
        batch_size: prompts per generate call (prompts are sorted by length first).
        num_beams: beam width (beam mode).
        sample_rounds: maximum sampling rounds (sample mode).
        boundary_chars: see :class:`CompletionTokenizer`.
        constraint: how ``generate`` is constrained: ``"transformers"`` (default) passes the trie as
            ``prefix_allowed_tokens_fn`` (:class:`TriePrefixConstraint`); ``"processor"`` passes coea's own
            :class:`TrieLogitsProcessor`. Both give identical candidates in both modes (tested); the processor
            is kept as the reference and for transformers versions whose prefix constraint differs.
    """
    if mode not in ("sample", "beam"):
        raise ValueError(f"mode must be 'sample' or 'beam', got {mode!r}")
    if constraint not in ("transformers", "processor"):
        raise ValueError(f"constraint must be 'transformers' or 'processor', got {constraint!r}")
    if num_candidates < 1:
        raise ValueError("num_candidates must be >= 1")
    if temperature < 0:
        raise ValueError("temperature must be >= 0")
    comp = CompletionTokenizer(tokenizer, categories, completion_format=completion_format, append_eos=False,
                               boundary_chars=boundary_chars)
    eos_id, pad_id = _eos_id(tokenizer), _pad_id(tokenizer)
    catalogue = set(categories)
    excluded = _exclusion_masks(categories, exclude, len(prompts))
    full = (1 << len(categories)) - 1
    allowed = [full & ~sum(1 << c for c, ex in enumerate(row) if ex) for row in excluded]

    prompt_ids = comp.prompt_ids(prompts)
    standalone = comp.standalone()
    tries: dict[tuple, CategoryTrie] = {}
    prompt_trie: list[CategoryTrie] = []
    for prompt, ids in zip(prompts, prompt_ids):
        variants = tuple(
            tuple(sorted({completion, standalone[c]})) if context == tuple(ids) else (standalone[c],)
            for c, (context, completion) in enumerate(comp.in_context(prompt, ids))
        )
        if variants not in tries:
            tries[variants] = CategoryTrie(variants, categories)
        prompt_trie.append(tries[variants])
    if max_new_tokens is None:
        max_new_tokens = max(t.max_len for t in tries.values()) + 1

    found: list[list[str]] = [[] for _ in prompts]
    dropped = decoded = 0
    device = _input_device(model)
    order = sorted(range(len(prompts)), key=lambda p: len(prompt_ids[p]))
    index = {name: c for c, name in enumerate(categories)}
    # Greedy decoding yields one name per round, so it takes up to M rounds.
    rounds = 1 if mode == "beam" else (sample_rounds if temperature > 0 else max(sample_rounds, num_candidates))
    fork_devices = [device] if device.type == "cuda" else []
    with _eval_mode(model), torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        for round_ in range(rounds):
            todo = [p for p in order if len(found[p]) < num_candidates]
            if round_ > 0:  # top-up rounds: only prompts that still have something left to propose
                todo = [p for p in todo if allowed[p]]
            if not todo:
                break
            for start in range(0, len(todo), batch_size):
                batch = todo[start:start + batch_size]
                if mode == "beam":
                    rows = max(num_beams or num_candidates, num_candidates)
                else:
                    rows = num_candidates if temperature > 0 else 1
                ids, mask = _left_pad([prompt_ids[p] for p in batch], pad_id, device)
                tries_b, allowed_b = [prompt_trie[p] for p in batch], [allowed[p] for p in batch]
                if constraint == "transformers":
                    hook: dict = {"prefix_allowed_tokens_fn": TriePrefixConstraint(
                        tries_b, allowed_b, prompt_len=ids.shape[1], eos_id=eos_id)}
                else:
                    hook = {"logits_processor": LogitsProcessorList([TrieLogitsProcessor(
                        tries_b, allowed_b, rows_per_prompt=rows, prompt_len=ids.shape[1], eos_id=eos_id)])}
                config = _decoding_config(mode, rows=rows, temperature=temperature, max_new_tokens=max_new_tokens,
                                          eos_id=eos_id, pad_id=pad_id)
                out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config, **hook)
                generated = out.sequences[:, ids.shape[1]:].tolist()
                keep = num_candidates if mode == "beam" else rows
                for i, p in enumerate(batch):
                    for gen in generated[i * rows:i * rows + keep]:
                        decoded += 1
                        c = prompt_trie[p].match(gen, eos_id, allowed[p])
                        name = None if c is None else categories[c]
                        if name is None or name not in catalogue or (exclude is not None and name in exclude[p]):
                            dropped += 1
                            continue
                        if name not in found[p] and len(found[p]) < num_candidates:
                            found[p].append(name)
                    if mode == "sample":  # the next round proposes something new
                        for name in found[p]:
                            allowed[p] &= ~(1 << index[name])
    return CandidateResult(candidates=found, dropped=dropped, decoded=decoded)


# ------------------------------------------------------------------------------------------------ entry point


def propose(
    model,
    tokenizer,
    prompts: Sequence[str],
    categories: Sequence[str],
    *,
    recent: list[set[str]] | None,
    config: NoveltyConfig,
    seed: int = 0,
    completion_format: Callable[[str], str] | None = None,
) -> CandidateResult:
    """M candidates per key with the configured mode (``config.generation_mode``).

    ``recent`` (C'_short per prompt) is excluded when ``config.exclude_recent``. Score mode returns the top-M by
    completion log-probability (``dropped`` is 0: scoring cannot produce an invalid name).
    """
    exclude = recent if config.exclude_recent else None
    if config.generation_mode == "score":
        ranked = rank_categories(
            model, tokenizer, list(prompts), list(categories), exclude=exclude, top_m=config.num_candidates,
            batch_size=config.inference_batch_size, completion_format=completion_format,
            append_eos=config.completion_eos,
        )
        return CandidateResult([[c for c, _ in r] for r in ranked], dropped=0, decoded=len(prompts))
    return generate_candidates(
        model, tokenizer, prompts, categories, mode=config.generation_mode, num_candidates=config.num_candidates,
        exclude=exclude, temperature=config.temperature, seed=seed, completion_format=completion_format,
        batch_size=config.inference_batch_size, num_beams=config.num_beams or None,
        sample_rounds=config.sample_rounds,
    )
