"""DPO + KL trainer for the Novelty LLM (Eq. 16-17). See docs/dpo.md.

    load_policy_and_reference   policy = base + previous Novelty adapter (trainable LoRA);
                                reference = base + anchor adapter (previous round, or round 0), frozen, separate
    DPOKLTrainer                trl's DPOTrainer with its loss replaced by
                                  sigmoid: L = L_DPO + alpha * KL(pi_theta || pi_ref)         (Eq. 16-17)
                                  ipo:     L = L_IPO + alpha * NLL(chosen)                      (SERAL)
                                and alerts for early pair-accuracy saturation, KL spikes and completion-length drift
    run_dpo                     one round of PCO training: load, train, save the adapter and metrics.json

The KL is the exact divergence over the whole vocabulary, summed over the chosen completion's tokens:

    KL = 1/B sum_b sum_t sum_v pi_theta(v | x_b, y_b,<t) [log pi_theta(v | x_b, y_b,<t) - log pi_ref(v | x_b, y_b,<t)]

so it needs both models' full next-token distributions on the chosen completion. trl 1.16 computes only the
sampled token's log-probability (a fused LM head that never builds the logits), so this trainer replaces
``DPOTrainer._compute_loss`` with its own forward: one policy pass and one reference pass over the
[chosen; rejected] batch, each projecting only the positions that predict completion tokens through the LM head
(``logits_to_keep`` with per-row positions). Everything else (tokenisation, collation, the training loop,
gradient accumulation, ``precompute_ref_log_probs`` for the reference's sequence log-probs) is trl's.

Hooks for the fast path of issue 7: :meth:`DPOKLTrainer.policy_scores` and :meth:`DPOKLTrainer.reference_scores`
are the only places that run models; a shared-prompt forward or a per-round cache of the reference's chosen
distributions replaces them without touching the loss.
"""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from coea.config import LoraConfig as CoeaLoraConfig, PcoConfig
from coea.console import plural
from coea.workdir import library_versions, write_json
from loops.dpo_fast import ReferenceCache, additive_mask, lm_head_inputs, pack_pairs, pair_keys
from loops.launch import shard_bounds
from loops.trainer_log import reporting

log = logging.getLogger("coea.dpo")

VARIANTS = ("sigmoid", "ipo")
VERSIONED_LIBRARIES = ("torch", "transformers", "trl", "peft")


# ------------------------------------------------------------------------------------------------- loss terms


def sigmoid_dpo_loss(
    chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sigmoid DPO loss (Eq. 16), averaged over the batch.

    ``L = -log sigma(beta * [(log pi_theta(y_w|x) - log pi_ref(y_w|x)) - (log pi_theta(y_l|x) - log pi_ref(y_l|x))])``

    Hand check: chosen log-ratio 1.0, rejected -1.0, beta 0.5 -> z = 0.5 * (1 - (-1)) = 1 ->
    L = log(1 + e^-1) = 0.313262. With pi_theta = pi_ref every log-ratio is 0 -> L = log 2 = 0.693147.

    Args:
        chosen_logratios: (B,) log pi_theta(y_w|x) - log pi_ref(y_w|x), summed over the completion's tokens.
        rejected_logratios: (B,) the same for y_l.
        beta: DPO temperature.

    Returns:
        The scalar loss and ``{"dpo_loss": (B,)}`` per-pair losses (detached).
    """
    per_pair = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))  # (B,)
    return per_pair.mean(), {"dpo_loss": per_pair.detach()}


def ipo_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """IPO loss (Azar et al. 2024, Eq. 17), length-normalised exactly as trl's ``loss_type="ipo"``.

    ``h = log-ratio(y_w) / |y_w| - log-ratio(y_l) / |y_l|``,  ``L = (h - 1 / (2 beta))^2``

    Hand check: chosen log-ratio 2.0 over 2 tokens, rejected -1.0 over 1 token, beta 0.5 ->
    h = 1 - (-1) = 2, 1 / (2 beta) = 1 -> L = (2 - 1)^2 = 1.

    Args:
        chosen_logratios, rejected_logratios: (B,) summed log-ratios as in :func:`sigmoid_dpo_loss`.
        chosen_lengths, rejected_lengths: (B,) completion lengths in tokens.
        beta: IPO regularisation (tau in the paper).

    Returns:
        The scalar loss and ``{"ipo_loss": (B,)}``.
    """
    h = chosen_logratios / chosen_lengths.clamp(min=1) - rejected_logratios / rejected_lengths.clamp(min=1)
    per_pair = (h - 1 / (2 * beta)) ** 2  # (B,)
    return per_pair.mean(), {"ipo_loss": per_pair.detach()}


def chosen_nll(token_logps: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SFT term of SERAL: negative log-likelihood of the chosen completion, averaged over its tokens in the batch.

    Same reduction as trl's ``loss_type="sft"`` (token mean over the batch).

    Hand check: token log-probs [[-1, -2], [-3, pad]] with mask [[1, 1], [1, 0]] -> (1 + 2 + 3) / 3 = 2.

    Args:
        token_logps: (B, T) log pi_theta of the chosen completion's tokens.
        mask: (B, T) 1 on completion tokens.

    Returns:
        The scalar loss and ``{"sft_nll": ()}``.
    """
    mask = mask.bool()
    loss = -token_logps[mask].sum() / mask.sum().clamp(min=1)
    return loss, {"sft_nll": loss.detach()}


def token_kl(
    policy_logprobs: torch.Tensor, reference_logprobs: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KL(pi_theta || pi_ref) over the whole vocabulary, summed over completion tokens, averaged over the batch.

    ``KL = 1/B sum_b sum_t mask_bt sum_v p_btv (log p_btv - log q_btv)``  with p = pi_theta, q = pi_ref (Eq. 17).
    Each per-token term is a true divergence, so the result is >= 0 and 0 only where the distributions agree;
    unlike the single-sample estimate ``log p(y_t) - log q(y_t)``, it cannot go negative.

    Hand check: one token, vocabulary of 2, p = (1/2, 1/2), q = (1/4, 3/4) ->
    1/2 log((1/2)/(1/4)) + 1/2 log((1/2)/(3/4)) = 1/2 log 2 + 1/2 log(2/3) = 1/2 log(4/3) = 0.143841.

    Args:
        policy_logprobs: (B, T, V) log pi_theta(. | x, y_<t); gradients flow through it.
        reference_logprobs: (B, T, V) log pi_ref(. | x, y_<t).
        mask: (B, T) 1 on the completion tokens y_t whose predicting distribution counts.

    Returns:
        The scalar loss and ``{"kl": (B,)}`` per-sequence divergences (detached).
    """
    per_token = F.kl_div(reference_logprobs, policy_logprobs, reduction="none", log_target=True).sum(-1)  # (B, T)
    per_sequence = (per_token * mask).sum(-1)  # (B,)
    return per_sequence.mean(), {"kl": per_sequence.detach()}


def reward_metrics(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float) -> dict[str, Any]:
    """trl's implicit-reward metrics: rewards are beta * log-ratio; accuracy is the share of pairs ranked right.

    Hand check: chosen log-ratios [1, 0], rejected [0, 0], beta 0.1 -> rewards/chosen [0.1, 0], margins [0.1, 0],
    accuracies [1, 0] (a tie is not a win).
    """
    chosen, rejected = beta * chosen_logratios.detach(), beta * rejected_logratios.detach()
    return {
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/margins": chosen - rejected,
        "rewards/accuracies": (chosen > rejected).float(),
    }


# ------------------------------------------------------------------------------------------------------ alerts


class Alert(NamedTuple):
    step: int
    kind: str  # "saturation" | "kl_spike" | "length_drift"
    message: str


@dataclass
class AlertMonitor:
    """Watches the averaged metrics of each logging step; raises each kind of alert at most once per run.

    - saturation: ``rewards/accuracies > saturation_accuracy`` and ``rewards/margins > saturation_margin`` within
      the first ``early_fraction`` of the steps. After any update the training pairs lean the right way by a hair,
      so accuracy alone saturates at step 2 with margins ~1e-6; the margin floor (0.1 = one nat of log-ratio at
      beta 0.1) keeps the alert for pairs separated with confidence early, i.e. too easy to teach anything.
    - kl_spike: ``kl > kl_spike_factor * max(running median of earlier kl, kl_floor)``, once 3 values are known.
    - length_drift: ``|length/eos_logratio| > eos_logratio``: the policy's log-probability of the completion's
      last token (EOS) moved that far from the reference's, i.e. the policy stops its completions that much
      less (negative: longer outputs) or more (positive: shorter) readily than the anchor.
    """

    saturation_accuracy: float = 0.95
    saturation_margin: float = 0.1
    early_fraction: float = 0.25
    kl_spike_factor: float = 10.0
    kl_floor: float = 1e-3
    eos_logratio: float = 0.7
    alerts: list[Alert] = field(default_factory=list)
    _kl_history: list[float] = field(default_factory=list)

    def update(self, step: int, max_steps: int, metrics: dict[str, float]) -> list[Alert]:
        """Check one logging step's averaged metrics; return (and keep) the alerts it raised."""
        raised = {a.kind for a in self.alerts}
        new: list[Alert] = []
        acc, margin = metrics.get("rewards/accuracies"), metrics.get("rewards/margins")
        early = max_steps <= 0 or step <= self.early_fraction * max_steps
        if (early and acc is not None and margin is not None and acc > self.saturation_accuracy
                and margin > self.saturation_margin and "saturation" not in raised):
            new.append(Alert(step, "saturation", f"pair accuracy {acc:.3f} with reward margin {margin:.3f} at step "
                             f"{step}/{max_steps}: the pairs are separated early; check that chosen and rejected "
                             "differ in more than a trivial feature"))
        kl = metrics.get("kl")
        if kl is not None:
            if len(self._kl_history) >= 3 and "kl_spike" not in raised:
                median = statistics.median(self._kl_history)
                if kl > self.kl_spike_factor * max(median, self.kl_floor):
                    new.append(Alert(step, "kl_spike", f"KL {kl:.4g} exceeds {self.kl_spike_factor:g}x its running "
                                     f"median {median:.4g} at step {step}"))
            self._kl_history.append(kl)
        drift = metrics.get("length/eos_logratio")
        if drift is not None and abs(drift) > self.eos_logratio and "length_drift" not in raised:
            way = "longer" if drift < 0 else "shorter"
            new.append(Alert(step, "length_drift", f"log-ratio of the completion-ending token {drift:+.3f} at step "
                             f"{step}: the policy drifts towards {way} completions than the reference"))
        for alert in new:
            log.warning("DPO alert [%s] %s", alert.kind, alert.message)
        self.alerts += new
        return new


# ------------------------------------------------------------------------------------------------------ config


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class DPOKLConfig(DPOConfig):
    """trl's DPOConfig plus the KL weight and the alert thresholds. ``loss_type`` is ``sigmoid`` or ``ipo``."""

    alpha: float = field(default=0.4, metadata=_help(
        "Weight of the KL(pi_theta || pi_ref) term over the chosen completion (Eq. 17) for loss_type 'sigmoid'; "
        "of the SFT term (NLL of the chosen completion) for loss_type 'ipo' (SERAL). 0 gives plain trl DPO / IPO."))
    alert_saturation_accuracy: float = field(default=0.95, metadata=_help(
        "Alert when pair accuracy (rewards/accuracies) exceeds this within the first alert_early_fraction of steps."))
    alert_saturation_margin: float = field(default=0.1, metadata=_help(
        "... and the mean reward margin exceeds this (beta-scaled); 0 alerts on accuracy alone."))
    alert_early_fraction: float = field(default=0.25, metadata=_help(
        "Share of the run's steps in which saturation counts as early."))
    alert_kl_spike_factor: float = field(default=10.0, metadata=_help(
        "Alert when KL exceeds this multiple of its running median (floored at alert_kl_floor)."))
    alert_kl_floor: float = field(default=1e-3, metadata=_help(
        "Floor of the running KL median in the spike test, so that KL rising from 0 at step 0 is no spike."))
    alert_eos_logratio: float = field(default=0.7, metadata=_help(
        "Alert when |policy - reference log-prob of the completion's last (EOS) token| exceeds this "
        "(0.7 ~ log 2: stopping twice or half as likely), i.e. completion length drifts."))
    shared_prompt: bool = field(default=False, metadata=_help(
        "Run each pair's prompt once for chosen and rejected: one packed [prompt | chosen | rejected] row with a "
        "block-causal mask instead of two rows (same values; sdpa or eager attention, else the two-row forward)."))
    precompute_reference: bool = field(default=False, metadata=_help(
        "Run the reference once over the training pairs before training and free it: the loss then reads the "
        "reference's token log-probs and rebuilds its full distributions (for the KL) from cached final hidden "
        "states through the shared, frozen LM head. Exact; needs an LM head that LoRA does not adapt."))

    def __post_init__(self):
        super().__post_init__()
        if len(self.loss_type) != 1 or self.loss_type[0] not in VARIANTS:
            raise ValueError(f"loss_type: must be one of {', '.join(VARIANTS)}; got {self.loss_type!r}")
        if self.alpha < 0:
            raise ValueError(f"alpha: must be >= 0; got {self.alpha}")
        unsupported = {
            "ld_alpha": self.ld_alpha is not None,
            "f_divergence_type": self.f_divergence_type != "reverse_kl",
            "use_weighting": self.use_weighting,
            "sync_ref_model": self.sync_ref_model,
            "loss_weights": self.loss_weights is not None,
        }
        bad = [name for name, is_set in unsupported.items() if is_set]
        if bad:
            raise ValueError(f"{bad[0]}: not supported by DPOKLTrainer (leave trl's default)")
        if self.precompute_reference and self.precompute_ref_log_probs:
            raise ValueError("precompute_reference: use it instead of trl's precompute_ref_log_probs, not with it")
        if self.precompute_ref_log_probs and self.loss_type[0] == "sigmoid" and self.alpha > 0:
            raise ValueError("precompute_ref_log_probs: trl caches only the reference's sequence log-probs, but the "
                             "KL term needs its full distributions; set alpha 0, loss_type 'ipo', or turn it off")

    @property
    def variant(self) -> str:
        return self.loss_type[0]


# ----------------------------------------------------------------------------------------------------- trainer


class Scores(NamedTuple):
    """Log-probabilities of one model over a [chosen; rejected] batch of B pairs, on the completion windows.

    Row n's window holds its completion tokens left-aligned (see :func:`completion_windows`); L is the longest
    completion in the batch.

    Attributes:
        logps: (2B,) log-probability of each completion, summed over its tokens; rows 0..B-1 are the chosen.
        token_logps: (2B, L) log-probability of each realised completion token, 0 on padding; None when the
            reference log-probs were precomputed.
        mask: (2B, L) bool, True on completion tokens; None with token_logps.
        chosen_logprobs: (B, L, V) full next-token log-distributions on the chosen rows; None when not needed.
    """

    logps: torch.Tensor
    token_logps: torch.Tensor | None
    mask: torch.Tensor | None
    chosen_logprobs: torch.Tensor | None


def completion_windows(completion_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of each row's completion tokens, left-aligned, and their validity.

    Args:
        completion_mask: (N, T) 1 on a contiguous completion span per row (trl's collator layout).

    Returns:
        ``targets`` (N, L) token positions (padding slots repeat a valid position) and ``mask`` (N, L) bool.
        A completion token at position 0 has no predicting logit and is masked out, as in trl's shift.

    Example: mask rows [0,0,0,1,1,0] and [0,0,1,1,1,1] -> targets [[3,4,3,3],[2,3,4,5]],
    mask [[T,T,F,F],[T,T,T,T]].
    """
    lengths = completion_mask.sum(1)  # (N,)
    first = completion_mask.int().argmax(1)  # (N,)
    offsets = torch.arange(int(lengths.max()), device=completion_mask.device)  # (L,)
    mask = offsets[None] < lengths[:, None]  # (N, L)
    targets = torch.where(mask, first[:, None] + offsets[None], first[:, None])  # (N, L)
    return targets, mask & (targets > 0)


def last_token_values(token_values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, L) values, (N, L) bool mask of a contiguous span per row -> (N,) value at each row's last True."""
    last = mask.size(1) - 1 - mask.flip(-1).int().argmax(-1)  # (N,)
    return token_values.gather(1, last.unsqueeze(1)).squeeze(1)


class DPOKLTrainer(DPOTrainer):
    """trl's DPOTrainer with the DPO + alpha * KL loss (Eq. 16-17) or IPO + alpha * SFT, against an explicit reference.

    ``ref_model`` is required: trl's default reference for a peft model is the policy with its adapters disabled
    (the bare base model), which is not the previous round's Novelty LLM. Use :func:`load_policy_and_reference`.
    """

    _name = "DPO+KL"

    def __init__(self, model, ref_model, args: DPOKLConfig, **kwargs):
        if ref_model is None:
            raise ValueError("ref_model: required; pass the previous round's Novelty LLM from "
                             "load_policy_and_reference (trl's default would be the adapter-disabled base model)")
        if not isinstance(args, DPOKLConfig):
            raise TypeError(f"args: expected DPOKLConfig; got {type(args).__name__}")
        super().__init__(model=model, ref_model=ref_model, args=args, **kwargs)
        self.alpha = args.alpha
        self.variant = args.variant
        self.monitor = AlertMonitor(
            saturation_accuracy=args.alert_saturation_accuracy, saturation_margin=args.alert_saturation_margin,
            early_fraction=args.alert_early_fraction, kl_spike_factor=args.alert_kl_spike_factor,
            kl_floor=args.alert_kl_floor, eos_logratio=args.alert_eos_logratio,
        )
        self.pad_token_id = self._tokenizer.pad_token_id
        self.attn_implementation = self.accelerator.unwrap_model(self.model).config._attn_implementation
        self.use_packing = args.shared_prompt and self.attn_implementation in ("sdpa", "eager")
        if args.shared_prompt and not self.use_packing:
            log.warning("shared_prompt: needs sdpa or eager attention (a block-causal mask), not %s; "
                        "running the two-row forward", self.attn_implementation)
        self.reference_cache: ReferenceCache | None = None
        self.reference_precompute_s = 0.0  # wall time of the once-per-round reference pass (synchronised on CUDA)
        if args.precompute_reference:
            self._check_shared_lm_head()
            t0 = time.perf_counter()
            cache = self.precompute_reference(self.train_dataset)
            if isinstance(self.eval_dataset, Dataset):
                cache.merge(self.precompute_reference(self.eval_dataset))
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.reference_precompute_s = time.perf_counter() - t0
            self.reference_cache = cache
            self.ref_model = None  # its work is done: free its weights for the training steps
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def _send_telemetry(self):
        # trl pings the Hugging Face Hub on construction; a cron job on an air-gapped host must never try.
        return

    # --- forwards (the only model calls) ---

    def window_scores(self, model, inputs: dict[str, torch.Tensor], full_chosen: bool) -> Scores:
        """One forward of ``model`` over the batch, projecting only the completion windows through the LM head."""
        return self.window_forward(model, inputs, full_chosen)[0]

    def window_forward(self, model, inputs: dict[str, torch.Tensor], full_chosen: bool,
                       keep_hidden: bool = False) -> tuple[Scores, torch.Tensor | None]:
        """One forward of ``model`` over the batch, projecting only the completion windows through the LM head.

        ``logits_to_keep`` with (N, L) positions (transformers >= 5) builds logits for 2B * L positions instead of
        2B * T, which matters with ~256-token prompts, ~8-token completions and a 150k vocabulary. With
        ``shared_prompt`` the pair's two rows run as one packed row (:func:`loops.dpo_fast.pack_pairs`), so the
        prompt is computed once; the windows, and so everything downstream, are laid out the same either way.

        Returns:
            The scores and, with ``keep_hidden``, the (B, L, d) hidden states the LM head saw on the chosen windows.
        """
        packed = pack_pairs(inputs, self.pad_token_id) if self.use_packing else None
        if packed is None:
            input_ids = inputs["input_ids"]  # (2B, T)
            targets, mask = completion_windows(inputs["completion_mask"])  # (2B, L), (2B, L)
            kwargs = {"input_ids": input_ids, "attention_mask": inputs["attention_mask"],
                      "logits_to_keep": (targets - 1).clamp(min=0)}
            labels = input_ids.gather(1, targets)  # (2B, L)
        else:
            mask, labels = packed.mask, packed.labels  # (2B, L)
            kwargs = {"input_ids": packed.input_ids, "position_ids": packed.position_ids,  # (B, S)
                      "attention_mask": self._mask_for_attention(packed.attention), "logits_to_keep": packed.predictors}
        with lm_head_inputs(self.accelerator.unwrap_model(model)) if keep_hidden else contextlib.nullcontext() as seen:
            out = model(**kwargs, use_cache=False)
        logits = out.logits  # (2B, L, V) unpacked; (B, 2L, V) packed: chosen windows, then rejected
        width = mask.size(1)
        if packed is not None:
            logits = torch.cat([logits[:, :width], logits[:, width:]])  # (2B, L, V)
        logprobs = logits.float().log_softmax(-1)  # the position before each target predicts it
        token_logps = logprobs.gather(-1, labels.unsqueeze(-1)).squeeze(-1).masked_fill(~mask, 0.0)  # (2B, L)
        n_pairs = logprobs.size(0) // 2
        chosen_logprobs = logprobs[:n_pairs] if full_chosen else None  # (B, L, V)
        hidden = None
        if keep_hidden:
            hidden = seen[-1][:, :width] if packed is not None else seen[-1][:n_pairs]  # (B, L, d)
        return Scores(token_logps.sum(-1), token_logps, mask, chosen_logprobs), hidden

    def _mask_for_attention(self, attention: torch.Tensor) -> torch.Tensor:
        # sdpa takes a boolean mask in any dtype (also under autocast); eager adds a float mask to its scores.
        if self.attn_implementation == "eager":
            return additive_mask(attention, self.accelerator.unwrap_model(self.model).dtype)
        return attention[:, None]  # (B, 1, S, S)

    def policy_scores(self, model, inputs: dict[str, torch.Tensor]) -> Scores:
        """Policy log-probabilities with gradients; full chosen distributions whenever a KL can be formed."""
        return self.window_scores(model, inputs, full_chosen=not self.precompute_ref_logps)

    def reference_scores(self, inputs: dict[str, torch.Tensor]) -> Scores:
        """Reference log-probabilities: from the per-round cache, trl's sequence log-probs, or a no-grad forward."""
        if self.reference_cache is not None:
            _, mask = completion_windows(inputs["completion_mask"])  # (2B, L)
            token_logps, chosen_logprobs = self.reference_cache.lookup(
                pair_keys(inputs), mask.size(1), self._lm_head(), mask.device)
            token_logps = token_logps.masked_fill(~mask, 0.0)
            return Scores(token_logps.sum(-1), token_logps, mask, chosen_logprobs)
        if self.precompute_ref_logps:
            logps = torch.cat([inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]])  # (2B,)
            return Scores(logps, None, None, None)
        with torch.no_grad():
            return self.window_scores(self.ref_model, inputs, full_chosen=True)

    # --- the reference, once per round ---

    def _lm_head(self):
        return self.accelerator.unwrap_model(self.model).get_output_embeddings()

    def _check_shared_lm_head(self) -> None:
        """The cache rebuilds the reference's distributions with the policy's LM head: it must be the frozen base's."""
        head, ref_head = self._lm_head(), self.accelerator.unwrap_model(self.ref_model).get_output_embeddings()
        if not isinstance(head, torch.nn.Linear) or any(p.requires_grad for p in head.parameters()):
            raise ValueError("precompute_reference: the policy's LM head is trained or adapted (e.g. LoRA on "
                             "lm_head), so it is not the reference's; turn precompute_reference off")
        if not torch.equal(head.weight.detach().cpu(), ref_head.weight.detach().cpu()):
            raise ValueError("precompute_reference: the policy's and the reference's LM heads differ; turn it off")

    def precompute_reference(self, dataset) -> ReferenceCache:
        """Run the reference once over ``dataset`` (this rank's share) and cache what the loss needs from it.

        Every rank computes a contiguous share of the pairs and the shares are exchanged, so the reference costs one
        packed forward per pair per round, whatever the number of processes, instead of one per pair per step.
        """
        from torch.utils.data import DataLoader

        state = self.accelerator.state
        rank, world = state.process_index, state.num_processes
        share = dataset.select(range(*shard_bounds(len(dataset), world, rank)))
        batch_size = self.args.precompute_ref_batch_size or self.args.per_device_train_batch_size
        loader = DataLoader(share, batch_size=batch_size, collate_fn=self.data_collator, shuffle=False)
        cache = ReferenceCache()
        device = self.accelerator.device
        self.ref_model.eval()
        with torch.no_grad():
            for batch in loader:
                batch = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
                scores, hidden = self.window_forward(self.ref_model, batch, full_chosen=False, keep_hidden=True)
                cache.add_batch(pair_keys(batch), hidden, scores.token_logps, batch["completion_mask"].sum(1))
        if world > 1:
            import torch.distributed as dist

            shares: list[ReferenceCache | None] = [None] * world
            dist.all_gather_object(shares, cache)
            for other in shares:
                cache.merge(other)
        log.info("reference: precomputed %d pairs (rank %d of %d)", len(cache), rank, world)
        return cache

    # --- loss ---

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        policy = self.policy_scores(model, inputs)
        reference = self.reference_scores(inputs)
        n_pairs = policy.logps.size(0) // 2
        chosen_logratios, rejected_logratios = (policy.logps - reference.logps).chunk(2)  # (B,), (B,)
        chosen_mask = policy.mask[:n_pairs]  # (B, L)
        metrics: dict[str, Any] = {}

        kl = None
        if reference.chosen_logprobs is not None:
            policy_chosen = policy.chosen_logprobs if self.variant == "sigmoid" else policy.chosen_logprobs.detach()
            kl, m = token_kl(policy_chosen, reference.chosen_logprobs, chosen_mask)
            metrics |= m

        if self.variant == "sigmoid":  # Eq. 16-17: L = L_DPO + alpha * KL(pi_theta || pi_ref)
            loss, m = sigmoid_dpo_loss(chosen_logratios, rejected_logratios, self.beta)
            metrics |= m
            if self.alpha:
                loss = loss + self.alpha * kl
        else:  # SERAL: L = L_IPO (Azar et al., Eq. 17) + alpha * NLL(y_w)
            lengths = policy.mask.sum(-1)  # (2B,)
            loss, m = ipo_loss(chosen_logratios, rejected_logratios, *lengths.chunk(2), self.beta)
            metrics |= m
            sft, m = chosen_nll(policy.token_logps[:n_pairs], chosen_mask)
            metrics |= m
            if self.alpha:
                loss = loss + self.alpha * sft

        metrics |= reward_metrics(chosen_logratios, rejected_logratios, self.beta)
        metrics |= self._drift_metrics(policy, reference)
        self._record(mode, metrics)
        return (loss, None) if return_outputs else loss

    @staticmethod
    def _drift_metrics(policy: Scores, reference: Scores) -> dict[str, torch.Tensor]:
        mask = policy.mask
        lengths = mask.sum(-1).clamp(min=1)  # (2B,)
        per_token = (policy.logps / lengths).detach()
        chosen, rejected = per_token.chunk(2)
        out = {"logps/chosen": policy.logps.detach().chunk(2)[0], "logps/rejected": policy.logps.detach().chunk(2)[1],
               "logps_per_token/chosen": chosen, "logps_per_token/rejected": rejected}
        if reference.token_logps is not None:
            # The completion's last token is the EOS trl appends: its log-ratio tells whether the policy stops
            # later (< 0) or sooner (> 0) than the reference, a cheap proxy for drift in generated length.
            eos_ratio = last_token_values(policy.token_logps.detach() - reference.token_logps, mask)  # (2B,)
            out["length/eos_logratio"] = eos_ratio
        return out

    def _record(self, mode: str, metrics: dict[str, torch.Tensor]) -> None:
        for name, value in metrics.items():
            value = self.accelerator.gather_for_metrics(value.detach().float().reshape(-1))
            self._metrics[mode][name].append(value.mean().item())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training and self._metrics["train"]:
            averaged = {k: sum(v) / len(v) for k, v in self._metrics["train"].items()}
            self.monitor.update(self.state.global_step, self.state.max_steps, averaged)
            logs["alerts"] = float(len(self.monitor.alerts))
        super().log(logs, start_time)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # Evaluation reports the loss and the metrics above; no logits are built to hand to compute_metrics.
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    @property
    def alerts(self) -> list[Alert]:
        return list(self.monitor.alerts)


# ------------------------------------------------------------------------------------------ models and run


def _model_kwargs(dtype: str, attn_implementation: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"dtype": "auto" if dtype == "auto" else getattr(torch, dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return kwargs


def load_policy_and_reference(
    base_model: str | Path,
    previous_adapter: Path | None,
    *,
    anchor_adapter: Path | None = None,
    lora: CoeaLoraConfig | None = None,
    dtype: str = "auto",
    attn_implementation: str | None = None,
):
    """Build the trainable policy and the frozen reference for one round of DPO.

    Both load ``base_model`` explicitly from its path (the same ``from_pretrained`` path for the embedded model and
    a 7B checkpoint); the reference never falls back to the adapter-disabled base.

    Args:
        base_model: Hugging Face directory (or id) of the causal LM the Novelty adapters sit on.
        previous_adapter: the previous round's Novelty adapter (peft ``save_pretrained`` directory); the policy
            starts from it and trains it further. None starts a fresh LoRA from ``lora`` (the policy then equals
            the base, so the base is the right reference).
        anchor_adapter: the reference's adapter; None means ``previous_adapter`` (the default anchor, so that
            policy == reference at step 0). Pass round 0's adapter for ``pco.anchor: round0``.
        lora: LoRA settings for a fresh adapter (ignored when ``previous_adapter`` is given: its own config rules).
        dtype: ``auto`` | ``float32`` | ``bfloat16`` | ``float16``.
        attn_implementation: ``eager`` | ``sdpa`` | ``flash_attention_2``; None keeps the model's default.

    Returns:
        ``(policy, reference)``: policy a ``peft.PeftModel`` with the trainable adapter ``default``; reference a
        separate model (base + anchor LoRA layers, not merged, so it matches the policy bit for bit at step 0 in
        any dtype), in eval mode with every parameter frozen.
    """
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    kwargs = _model_kwargs(dtype, attn_implementation)
    base = AutoModelForCausalLM.from_pretrained(base_model, **kwargs)
    if previous_adapter is not None:
        policy = PeftModel.from_pretrained(base, previous_adapter, is_trainable=True)
        # The adapter's config names the base it was trained on; after a vocabulary growth (coea.backbones) that base
        # has fewer embedding rows, and peft would then save the whole embedding matrix into the new adapter
        # (save_embedding_layers="auto"), which no longer loads on a later, larger base. Name the base it sits on.
        policy.peft_config["default"].base_model_name_or_path = str(base_model)
    else:
        lora = lora or CoeaLoraConfig()
        targets = lora.target_modules if lora.target_modules == "all-linear" else [
            t.strip() for t in lora.target_modules.split(",") if t.strip()]
        policy = get_peft_model(base, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                 target_modules=targets, task_type="CAUSAL_LM"))

    anchor = anchor_adapter if anchor_adapter is not None else previous_adapter
    reference = AutoModelForCausalLM.from_pretrained(base_model, **kwargs)
    if anchor is not None:
        # The LoRA layers are injected into the base modules in place; keep the plain transformers model so trl
        # treats it as an ordinary reference model (not as a peft policy whose adapters it would toggle).
        reference = PeftModel.from_pretrained(reference, anchor, is_trainable=False).get_base_model()
    reference.eval()
    reference.requires_grad_(False)
    return policy, reference


@dataclass
class DpoResult:
    """What one round of DPO produced.

    Attributes:
        adapter_dir: the new Novelty adapter (peft ``save_pretrained``).
        metrics: summary: train_loss, steps, n_pairs and the last logged step's dpo_loss / kl / rewards/*.
        alerts: one line per alert raised (``"[kind] step N: message"``).
        versions: torch, transformers, trl, peft versions that trained it.
    """

    adapter_dir: Path
    metrics: dict[str, float]
    alerts: list[str]
    versions: dict[str, str | None]


def _args_from_pco(cfg: PcoConfig, out_dir: Path, *, seed: int, deepspeed: str, max_steps: int) -> DPOKLConfig:
    cuda = torch.cuda.is_available()
    return DPOKLConfig(
        output_dir=str(out_dir / "trainer"),
        loss_type=cfg.loss_type, beta=cfg.beta, alpha=cfg.alpha,
        learning_rate=cfg.lr, num_train_epochs=cfg.epochs,
        max_steps=max_steps if max_steps > 0 else (cfg.steps_per_round or -1),
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        max_length=cfg.max_length, shared_prompt=cfg.shared_prompt, precompute_reference=cfg.precompute_reference,
        alert_saturation_accuracy=cfg.alert_saturation_accuracy, alert_saturation_margin=cfg.alert_saturation_margin,
        alert_early_fraction=cfg.alert_early_fraction, alert_kl_spike_factor=cfg.alert_kl_spike_factor,
        alert_eos_logratio=cfg.alert_eos_logratio,
        seed=seed, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
        use_cpu=not cuda, bf16=cuda and torch.cuda.is_bf16_supported(), gradient_checkpointing=cuda,
        deepspeed=deepspeed or None,
        ddp_find_unused_parameters=False,  # every LoRA matrix takes part in every forward: skip DDP's search
    )


def run_dpo(
    cfg: PcoConfig,
    lora: CoeaLoraConfig,
    base_model: str | Path,
    previous_adapter: Path | None,
    anchor_adapter: Path | None,
    tokenizer,
    pairs,
    out_dir: str | Path,
    *,
    seed: int = 0,
    dtype: str = "auto",
    deepspeed: str = "",
    max_steps: int = -1,
) -> DpoResult:
    """One round of PCO training of the Novelty LLM: DPO + alpha * KL against the anchor (Eq. 16-17).

    Writes ``out_dir/adapter`` (the new adapter) and ``out_dir/metrics.json`` (summary, per-step history, alerts,
    library versions, the DPO settings and which adapters were policy start and reference).

    Args:
        cfg: the ``pco`` section (loss_type, beta, alpha, lr, epochs, batch, accumulation, max_length, alerts).
        lora: the ``lora`` section, used only when ``previous_adapter`` is None.
        base_model: base causal LM directory or id.
        previous_adapter: round k-1 Novelty adapter: the policy's start and, by default, the reference.
        anchor_adapter: reference adapter when it is not the previous round's (``pco.anchor: round0``).
        tokenizer: a tokenizer or its directory; needs a pad token (falls back to EOS).
        pairs: ``datasets.Dataset`` with string columns prompt / chosen / rejected (trl's preference format).
        out_dir: the stage directory this writes into.
        seed: training seed.
        dtype: model dtype (see :func:`load_policy_and_reference`).
        deepspeed: path of a DeepSpeed config, '' for none.
        max_steps: > 0 caps the optimizer steps (overrides ``cfg.epochs``); otherwise ``cfg.steps_per_round``
            does when set (the paper's 5 batches a round: the sample is cycled if it holds fewer pairs).
    """
    from transformers import AutoTokenizer

    if len(pairs) == 0:
        raise ValueError("pairs: no preference pairs to train on")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(tokenizer, (str, Path)):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    policy, reference = load_policy_and_reference(
        base_model, previous_adapter, anchor_adapter=anchor_adapter, lora=lora, dtype=dtype)
    args = _args_from_pco(cfg, out_dir, seed=seed, deepspeed=deepspeed, max_steps=max_steps)
    trainer = DPOKLTrainer(policy, reference, args, train_dataset=pairs, processing_class=tokenizer)
    with reporting(trainer, "Novelty DPO + KL", plural(len(pairs), "pair"), out_dir):
        result = trainer.train()

    adapter_dir = out_dir / "adapter"
    trainer.save_model(str(adapter_dir))  # peft save_pretrained of the adapter (rank 0; gathers under DeepSpeed)
    history = [h for h in trainer.state.log_history if "loss" in h]
    last = history[-1] if history else {}
    wanted = ("loss", "dpo_loss", "ipo_loss", "sft_nll", "kl", "rewards/chosen", "rewards/rejected",
              "rewards/margins", "rewards/accuracies", "length/eos_logratio")
    metrics = {k: float(last[k]) for k in wanted if k in last}
    metrics |= {"train_loss": float(result.training_loss), "steps": float(result.global_step),
                "n_pairs": float(len(pairs))}
    versions = {lib: library_versions().get(lib) for lib in VERSIONED_LIBRARIES}
    alerts = [f"[{a.kind}] step {a.step}: {a.message}" for a in trainer.alerts]
    log.info("Novelty DPO + KL: %s, loss %.3f, KL %.4f, reward margin %.3f, accuracy %.2f%s",
             plural(len(pairs), "pair"), metrics.get("train_loss", math.nan), metrics.get("kl", math.nan),
             metrics.get("rewards/margins", math.nan), metrics.get("rewards/accuracies", math.nan),
             f", {len(alerts)} alerts" if alerts else "")
    if trainer.is_world_process_zero():
        write_json(out_dir / "metrics.json", {
            "summary": metrics, "history": history, "alerts": alerts, "versions": versions,
            "pco": asdict(cfg), "base_model": str(base_model),
            "policy_start": str(previous_adapter) if previous_adapter else None,
            "reference": str(anchor_adapter or previous_adapter or base_model),
            "fast_path": {"shared_prompt": trainer.use_packing,
                          "precomputed_reference_pairs": len(trainer.reference_cache or ()),
                          "reference_precompute_s": round(trainer.reference_precompute_s, 3)},
        })
    _finite_or_raise(metrics)
    return DpoResult(adapter_dir, metrics, alerts, versions)


def _finite_or_raise(metrics: dict[str, float]) -> None:
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    if bad:
        raise FloatingPointError(f"DPO produced non-finite {', '.join(bad)}; see metrics.json")
