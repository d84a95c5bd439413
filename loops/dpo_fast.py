"""The fast path of the DPO + KL trainer (issue 7): one prompt pass per pair, and a reference computed once per round.

    pack_pairs          trl's [prompt+chosen; prompt+rejected] batch (2B rows) -> B packed rows
                        [prompt | chosen | rejected] with a block-causal mask: the rejected tokens see the prompt
                        but not the chosen ones, and their positions restart where the prompt ends. Each row then
                        computes exactly what the two unpacked rows compute, with the prompt run once.
    pair_keys           a content key per pair (its prompt, chosen and rejected token ids)
    ReferenceCache      the reference's per-token log-probabilities (chosen and rejected) and its final hidden
                        states on the chosen completion, keyed by pair. The full reference distributions the KL
                        needs are rebuilt from those hidden states through the LM head, which LoRA never adapts
                        (it is the base model's, shared by policy and reference), so the cache is exact and small:
                        L x d numbers per pair instead of L x V.
    lm_head_inputs      a forward hook that records what the LM head was applied to (the hidden states)

Cost, for B pairs with a T-token prompt and L-token completions: trl computes 2B(T + L) positions in the policy
and again in the reference at every step; the packed policy forward computes B(T + 2L), and the reference is run
once per round (also packed) instead of once per step. See docs/dpo.md, "The fast path".
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple

import torch


class PackedPairs(NamedTuple):
    """B packed rows ``[prompt | chosen | rejected]`` built from a trl preference batch of 2B rows.

    S is the longest packed row; L the longest completion (chosen or rejected) in the batch.

    Attributes:
        input_ids: (B, S) token ids, right-padded with the batch's pad id.
        position_ids: (B, S) prompt 0..P-1, chosen P..P+Lc-1, rejected P..P+Lr-1 (as in its own unpacked row).
        attention: (B, S, S) bool, True where query i may attend to key j (block-causal; a pad attends to itself).
        predictors: (B, 2L) packed position whose logits predict each completion token, chosen tokens in
            [:, :L], rejected in [:, L:]; padding slots repeat a valid position.
        mask: (2B, L) bool, True on real completion tokens (rows 0..B-1 chosen, B..2B-1 rejected); a completion
            token with no token before it (empty prompt) has no predictor and is masked, as in trl's shift.
        labels: (2B, L) the completion token ids (0 on padding).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention: torch.Tensor
    predictors: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor


def _spans(inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt lengths (2B,) and completion lengths (2B,) of trl's right-padded rows."""
    attention = inputs["attention_mask"].bool()
    completion = inputs["completion_mask"].bool()
    return (attention & ~completion).sum(1), completion.sum(1)


def pack_pairs(inputs: dict[str, torch.Tensor], pad_token_id: int = 0) -> PackedPairs | None:
    """Pack each pair's two rows into one ``[prompt | chosen | rejected]`` row, or None when they cannot share.

    trl's collator lays a batch of B pairs out as rows ``prompt_b + chosen_b`` (b < B) then ``prompt_b + rejected_b``,
    right-padded, with ``completion_mask`` on the completion tokens. The two rows of a pair share the prompt unless
    truncation cut them differently; then packing would change what the model sees, so this returns None and the
    caller runs the plain two-row forward.

    Example (prompt [5, 6], chosen [7], rejected [8, 9]): ids [5, 6, 7, 8, 9], positions [0, 1, 2, 2, 3];
    token 8 attends to 5, 6 and itself (not 7); predictors of chosen [1], of rejected [1, 3].

    Args:
        inputs: trl batch with ``input_ids``, ``attention_mask``, ``completion_mask``, each (2B, T).
        pad_token_id: id written into the padding of the packed rows (never attended to).

    Returns:
        The packed batch (see :class:`PackedPairs`), or None when a pair's two prompts differ.
    """
    input_ids = inputs["input_ids"]
    n_pairs = input_ids.size(0) // 2
    prompt_len, comp_len = (t.tolist() for t in _spans(inputs))
    for b in range(n_pairs):
        p = prompt_len[b]
        if p != prompt_len[n_pairs + b] or not torch.equal(input_ids[b, :p], input_ids[n_pairs + b, :p]):
            return None

    longest = max(comp_len)
    if longest == 0:
        return None  # every completion truncated away: nothing to share
    device = input_ids.device
    width = max(prompt_len[b] + comp_len[b] + comp_len[n_pairs + b] for b in range(n_pairs))
    ids = torch.full((n_pairs, width), pad_token_id, dtype=input_ids.dtype, device=device)
    positions = torch.zeros((n_pairs, width), dtype=torch.long, device=device)
    segment = torch.full((n_pairs, width), -1, dtype=torch.long, device=device)  # 0 prompt, 1 chosen, 2 rejected
    predictors = torch.zeros((n_pairs, 2 * longest), dtype=torch.long, device=device)
    mask = torch.zeros((2 * n_pairs, longest), dtype=torch.bool, device=device)
    labels = torch.zeros((2 * n_pairs, longest), dtype=input_ids.dtype, device=device)
    for b in range(n_pairs):
        p, lc, lr = prompt_len[b], comp_len[b], comp_len[n_pairs + b]
        chosen = input_ids[b, p:p + lc]
        rejected = input_ids[n_pairs + b, p:p + lr]
        ids[b, :p + lc] = input_ids[b, :p + lc]
        ids[b, p + lc:p + lc + lr] = rejected
        positions[b, :p + lc] = torch.arange(p + lc, device=device)
        positions[b, p + lc:p + lc + lr] = torch.arange(p, p + lr, device=device)
        segment[b, :p], segment[b, p:p + lc], segment[b, p + lc:p + lc + lr] = 0, 1, 2
        # Token j of a completion is predicted by the position before it in its own unpacked row: the prompt's
        # last token for j = 0 (shared by chosen and rejected), else the completion's previous token.
        chosen_pred = torch.arange(p - 1, p - 1 + lc, device=device)
        rejected_pred = torch.cat([torch.tensor([p - 1], device=device),
                                   torch.arange(p + lc, p + lc + lr - 1, device=device)])[:lr]
        predictors[b, :lc], predictors[b, longest:longest + lr] = chosen_pred, rejected_pred
        mask[b, :lc], mask[n_pairs + b, :lr] = chosen_pred >= 0, rejected_pred >= 0
        labels[b, :lc], labels[n_pairs + b, :lr] = chosen, rejected
    predictors = predictors.clamp(min=0)
    return PackedPairs(ids, positions, block_causal_mask(segment), predictors, mask, labels)


def block_causal_mask(segment: torch.Tensor) -> torch.Tensor:
    """(B, S) segment ids (0 prompt, 1 chosen, 2 rejected, -1 pad) -> (B, S, S) bool attention.

    Causal over the packed order, no attention into padding, and rejected queries never see chosen keys. A pad
    query attends to itself only, so no softmax row is empty (its output is never read).
    """
    width = segment.size(1)
    causal = torch.ones(width, width, dtype=torch.bool, device=segment.device).tril()  # (S, S)
    query, key = segment[:, :, None], segment[:, None, :]  # (B, S, 1), (B, 1, S)
    allowed = causal & (key >= 0) & (query >= 0) & ~((query == 2) & (key == 1))  # (B, S, S)
    return allowed | (torch.eye(width, dtype=torch.bool, device=segment.device) & (query < 0))


def additive_mask(attention: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, S, S) bool -> (B, 1, S, S) additive mask (0 where allowed, dtype min elsewhere), for eager attention."""
    return torch.zeros(attention.shape, dtype=dtype, device=attention.device).masked_fill(
        ~attention, torch.finfo(dtype).min)[:, None]


def pair_keys(inputs: dict[str, torch.Tensor]) -> list[bytes]:
    """A key per pair from its token ids: prompt length, prompt + chosen (the chosen row), the rejected completion.

    Two pairs with the same key are the same tokens, so the reference computes the same values for both.
    """
    input_ids = inputs["input_ids"].cpu()
    n_pairs = input_ids.size(0) // 2
    masks = {k: inputs[k].cpu() for k in ("attention_mask", "completion_mask")}
    prompt_len, comp_len = (t.tolist() for t in _spans(masks))
    keys = []
    for b in range(n_pairs):
        p = prompt_len[b]
        chosen_row = input_ids[b, :p + comp_len[b]].numpy().tobytes()
        rejected = input_ids[n_pairs + b, p:p + comp_len[n_pairs + b]].numpy().tobytes()
        boundary = p.to_bytes(4, "little")  # the same ids split differently are different completions
        keys.append(hashlib.blake2b(boundary + chosen_row + b"|" + rejected, digest_size=16).digest())
    return keys


@contextlib.contextmanager
def lm_head_inputs(model) -> Iterator[list[torch.Tensor]]:
    """Record the hidden states the model's LM head is applied to (one tensor per call) while the block runs."""
    head = model.get_output_embeddings()
    seen: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda module, args, output: seen.append(args[0].detach()))
    try:
        yield seen
    finally:
        handle.remove()


@dataclass
class ReferenceEntry:
    """The reference model's values for one pair (completion tokens left-aligned, as in the trainer's windows).

    Attributes:
        chosen_hidden: (Lc, d) final hidden states that predict the chosen completion's tokens (model dtype).
        chosen_token_logps: (Lc,) log pi_ref of each chosen token (float32).
        rejected_token_logps: (Lr,) the same for the rejected completion.
    """

    chosen_hidden: torch.Tensor
    chosen_token_logps: torch.Tensor
    rejected_token_logps: torch.Tensor


@dataclass
class ReferenceCache:
    """Per-pair reference values, filled once per round before training (see :class:`ReferenceEntry`)."""

    entries: dict[bytes, ReferenceEntry] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.entries)

    def add_batch(self, keys: list[bytes], hidden: torch.Tensor, token_logps: torch.Tensor,
                  lengths: torch.Tensor) -> None:
        """Store a batch: hidden (B, L, d) on the chosen windows, token_logps (2B, L), lengths (2B,) of completions.

        Slot j of a window is the completion's j-th token (a first token with no predictor keeps its slot and is
        masked by the caller), so the entries stay aligned with the trainer's windows.
        """
        n_pairs = len(keys)
        lengths = lengths.tolist()
        for b, key in enumerate(keys):
            lc, lr = lengths[b], lengths[n_pairs + b]
            self.entries[key] = ReferenceEntry(hidden[b, :lc].cpu(), token_logps[b, :lc].float().cpu(),
                                               token_logps[n_pairs + b, :lr].float().cpu())

    def merge(self, other: "ReferenceCache") -> None:
        self.entries.update(other.entries)

    def lookup(self, keys: list[bytes], width: int, lm_head, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference's (2B, width) token log-probs and (B, width, V) chosen log-distributions for a batch.

        Raises:
            KeyError: a pair that was not precomputed (the training data changed after precomputation).
        """
        missing = [k for k in keys if k not in self.entries]
        if missing:
            raise KeyError(f"reference cache: {len(missing)} of {len(keys)} pairs were not precomputed")
        entries = [self.entries[k] for k in keys]
        n_pairs, dim = len(keys), entries[0].chosen_hidden.size(-1)
        hidden = torch.zeros((n_pairs, width, dim), dtype=entries[0].chosen_hidden.dtype)
        token_logps = torch.zeros((2 * n_pairs, width))
        for b, e in enumerate(entries):
            hidden[b, :len(e.chosen_hidden)] = e.chosen_hidden
            token_logps[b, :len(e.chosen_token_logps)] = e.chosen_token_logps
            token_logps[n_pairs + b, :len(e.rejected_token_logps)] = e.rejected_token_logps
        with torch.no_grad():
            logits = lm_head(hidden.to(device=device, dtype=lm_head.weight.dtype))  # (B, width, V)
        return token_logps.to(device), logits.float().log_softmax(-1)
