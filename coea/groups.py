"""Representative users and group portraits D_s (DSIE, paper Eq. 7 and the Profile LLM).

* :func:`representatives`: the k members of a group nearest its centroid in u_long space by cosine (Eq. 7).
* Portraits, two backends (``profile.backend``):

  - ``statistical``: names the group's distinctive categories: the highest smoothed lift of a category's share
    of the group's long-term clicks over its share of everyone's (``profile.top_categories`` of them), plus
    the globally popular category the group avoids most, when there is one. Deterministic, microseconds.
  - ``llm``: any Hugging Face causal LM (``profile.model`` or ``backbone.name``) prompted with
    ``profile.prompt`` filled with the representatives' long-term categories; greedy decoding, no fine-tuning;
    whitespace collapsed, a text cut off by ``max_new_tokens`` trimmed to its last full sentence
    (:func:`tidy_portrait`). An empty generation falls back to the statistical portrait.

* :class:`PortraitCache`: llm portraits keyed by (csid, hash of the writer and of the representatives'
  long-term categories) in a JSON file, so groups whose representatives did not change are not regenerated.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coea.config import BackboneConfig, ProfileConfig
from coea.data.schema import Sequences

log = logging.getLogger("coea.groups")


@dataclass
class GroupPortrait:
    """One line of groups.jsonl."""

    csid: str
    size: int
    portrait: str
    representatives: list[str]
    top_categories: list[str]


def category_counts(seqs: Sequences, item_category: dict[str, str], categories: list[str]) -> np.ndarray:
    """(N, C) counts of each category among each user's I_long items (items without a category are skipped)."""
    col = {c: j for j, c in enumerate(categories)}
    item_col = np.array([col.get(item_category.get(item, ""), -1) for item in seqs.item_vocab] or [-1])  # (V,)
    counts = np.zeros((len(seqs.user_ids), len(categories)), dtype=np.int64)
    for u, items in enumerate(seqs.long_items):
        if len(items):
            cols = item_col[np.asarray(items, dtype=np.int64) - 1]
            np.add.at(counts[u], cols[cols >= 0], 1)
    return counts


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def representatives(embeddings: np.ndarray, csids: list[str], k: int) -> dict[str, list[int]]:
    """Rows of the k members of each group nearest the group centroid by cosine (Eq. 7); ties keep row order.

    Args:
        embeddings: (N, d) u_long.
        csids: (N,) group of each row.
    Returns:
        csid -> row indices, nearest first.
    """
    csids_arr = np.asarray(csids, dtype=object)
    out: dict[str, list[int]] = {}
    for csid in sorted(set(csids)):
        rows = np.flatnonzero(csids_arr == csid)  # (n_g,)
        members = embeddings[rows]  # (n_g, d)
        sims = _unit(members) @ _unit(members.mean(axis=0))  # (n_g,)
        out[csid] = [int(r) for r in rows[np.argsort(-sims, kind="stable")[:k]]]
    return out


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def distinctive_categories(group: np.ndarray, overall: np.ndarray, categories: list[str],
                           top: int) -> tuple[list[str], list[str]]:
    """(core, avoided) categories of a group from its (C,) category counts and everyone's (C,) counts.

    lift_c = ((g_c + 1) / (G + C)) / ((a_c + 1) / (A + C))  (add-one smoothing). Core = categories the group
    clicked with lift > 1, by lift, then count, then name; ``top`` of them (the most clicked when none has
    lift > 1). Avoided = the one category, among those at or above the median global share, with the lowest
    lift below 0.5 (empty when none).
    """
    n_cat = len(categories)
    lift = ((group + 1) / (group.sum() + n_cat)) / ((overall + 1) / (overall.sum() + n_cat))  # (C,)
    order = sorted(range(n_cat), key=lambda c: (-lift[c], -group[c], categories[c]))
    core = [categories[c] for c in order if group[c] > 0 and lift[c] > 1][:top]
    if not core:
        core = [categories[c] for c in sorted(range(n_cat), key=lambda c: (-group[c], categories[c]))
                if group[c] > 0][:top]
    popular = overall >= np.median(overall)
    avoided = [categories[c] for c in reversed(order) if popular[c] and lift[c] < 0.5][:1]
    return core, avoided


def statistical_portrait(group: np.ndarray, overall: np.ndarray, categories: list[str],
                         top: int) -> tuple[str, list[str]]:
    """Portrait text and its core categories, e.g. "Users in this group keep coming back to Jazz, Hiking and
    Chess; they rarely pick Horror." (rules in :func:`distinctive_categories`)."""
    core, avoided = distinctive_categories(group, overall, categories, top)
    if not core:
        return "Users in this group have little long-term history yet.", []
    text = f"Users in this group keep coming back to {_join(core)}"
    return text + (f"; they rarely pick {avoided[0]}." if avoided else "."), core


def default_portrait(overall: np.ndarray, categories: list[str], top: int) -> tuple[str, list[str]]:
    """Portrait of the cold-start group: the globally most clicked categories."""
    popular = [categories[c] for c in sorted(range(len(categories)), key=lambda c: (-overall[c], categories[c]))
               if overall[c] > 0][:top]
    if not popular:
        return "A new user without long-term history.", []
    return f"A new user without long-term history; most users enjoy {_join(popular)}.", popular


def user_line(counts: np.ndarray, categories: list[str], n: int) -> str:
    """A user's ``n`` most clicked long-term categories, most clicked first (ties by name)."""
    cols = sorted(np.flatnonzero(counts).tolist(), key=lambda c: (-counts[c], categories[c]))[:n]
    return ", ".join(categories[c] for c in cols) or "(no history)"


class LlmPortraitWriter:
    """Profile LLM: native greedy generation from any HF causal LM (no fine-tuning).

    Loads ``model_path`` with ``from_pretrained`` (straight onto ``device`` through ``device_map`` when it is
    not the CPU, so a 7B model never sits in host memory first); :meth:`from_model` wraps a model already loaded.
    ``identity`` names the writer in the portrait cache: model, max_new_tokens, prompt hash (and ``chat`` when
    the chat template is used), so changing any of them regenerates the portraits.
    """

    def __init__(self, *, model_path: str, prompt: str, max_new_tokens: int, device: str = "cpu",
                 dtype: str = "auto", use_chat_template: bool = False) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if model_path in ("", "embedded"):
            raise ValueError("profile.backend 'llm' needs profile.model or backbone.name to name a Hugging Face "
                             "model; the untrained embedded backbone cannot write portraits (use 'statistical')")
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        torch_dtype: Any = "auto" if dtype == "auto" else getattr(torch, dtype)
        placement = {} if device == "cpu" else {"device_map": device}
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype, **placement)
        self._setup(model.to(device).eval(), tokenizer, name=model_path, prompt=prompt,
                    max_new_tokens=max_new_tokens, device=device, use_chat_template=use_chat_template)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, *, name: str, prompt: str, max_new_tokens: int,
                   device: str = "cpu", use_chat_template: bool = False) -> LlmPortraitWriter:
        """A writer around an already loaded model and tokenizer (``name`` goes into the cache identity)."""
        writer = cls.__new__(cls)
        writer._setup(model.eval(), tokenizer, name=name, prompt=prompt, max_new_tokens=max_new_tokens,
                      device=device, use_chat_template=use_chat_template)
        return writer

    def _setup(self, model: Any, tokenizer: Any, *, name: str, prompt: str, max_new_tokens: int, device: str,
               use_chat_template: bool) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.prompt, self.max_new_tokens, self.device = prompt, max_new_tokens, device
        self.use_chat_template = use_chat_template and bool(getattr(tokenizer, "chat_template", None))
        if use_chat_template and not self.use_chat_template:
            log.warning("profile: backbone.use_chat_template is set but %s's tokenizer has no chat template; "
                        "the Profile LLM gets the plain prompt", name)
        self.identity = f"llm:{name}:{max_new_tokens}:{hashlib.sha256(prompt.encode()).hexdigest()[:8]}" + (
            ":chat" if self.use_chat_template else "")

    def render(self, lines: list[str]) -> str:
        """The prompt for one group's representative lines (chat-templated when the writer uses a template;
        ``enable_thinking=False`` reaches templates that know it, e.g. Qwen3, so no reasoning block is written)."""
        text = self.prompt.format(k=len(lines), users="\n".join(f"- {line}" for line in lines))
        if self.use_chat_template:
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=True, enable_thinking=False)
        return text

    def write(self, lines: list[str]) -> str:
        """Greedy generation of one portrait, tidied by :func:`tidy_portrait`; '' when nothing usable came out."""
        import torch

        # a chat template already starts with the model's special tokens: do not add them twice
        enc = self.tokenizer(self.render(lines), return_tensors="pt", add_special_tokens=not self.use_chat_template)
        input_ids = enc["input_ids"].to(self.device)  # (1, P)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.no_grad():
            out = self.model.generate(input_ids=input_ids, attention_mask=enc["attention_mask"].to(self.device),
                                      max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad)
        new = out[0, input_ids.shape[1]:]  # (n,)
        eos = self.model.generation_config.eos_token_id
        eos_ids = (set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}) - {None}
        finished = len(new) < self.max_new_tokens or any(int(t) in eos_ids for t in new)
        return tidy_portrait(self.tokenizer.decode(new, skip_special_tokens=True), finished=finished)


def tidy_portrait(text: str, *, finished: bool) -> str:
    """A generated portrait as it goes into prompts: whitespace (newlines included) collapsed to single spaces,
    since the portrait fills one field of one-line templates; when generation stopped at ``max_new_tokens``
    (``finished`` False), cut back to the last complete sentence if there is one."""
    text = " ".join(text.split())
    if not finished:
        end = max(text.rfind(". "), text.rfind("! "), text.rfind("? "))
        if text.endswith((".", "!", "?")):
            return text
        if end > 0:
            return text[: end + 1]
    return text


class PortraitCache:
    """JSON file ``{csid: {"key": ..., "portrait": ..., "top_categories": [...]}}``."""

    def __init__(self, entries: dict[str, dict] | None = None) -> None:
        self.entries = dict(entries or {})
        self.hits = 0

    @staticmethod
    def key(identity: str, lines: list[str]) -> str:
        return hashlib.sha256(json.dumps([identity, lines]).encode()).hexdigest()[:16]

    def get(self, csid: str, key: str) -> dict | None:
        hit = self.entries.get(csid)
        if hit is not None and hit["key"] == key:
            self.hits += 1
            return hit
        return None

    def put(self, csid: str, key: str, portrait: str, top_categories: list[str]) -> None:
        self.entries[csid] = {"key": key, "portrait": portrait, "top_categories": top_categories}

    @classmethod
    def load(cls, path: str | Path | None) -> PortraitCache:
        if path is None or not Path(path).exists():
            return cls()
        return cls(json.loads(Path(path).read_text()))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.entries, indent=1, sort_keys=True))


def build_portraits(
    *,
    csids: list[str],
    embeddings: np.ndarray,
    user_ids: list[str],
    counts: np.ndarray,
    categories: list[str],
    profile: ProfileConfig,
    backbone: BackboneConfig,
    default_csid: str,
    cache: PortraitCache | None = None,
    device: str = "cpu",
    writer: LlmPortraitWriter | None = None,
) -> list[GroupPortrait]:
    """One :class:`GroupPortrait` per distinct csid (sorted; ``default_csid`` last, always present).

    Args:
        csids: (N,) group of each user (cold-start users carry ``default_csid``).
        embeddings: (N, d) u_long; counts: (N, C) long-term category counts (:func:`category_counts`).
        writer: an already loaded llm writer (loaded from the config when None and the backend is llm).
    """
    cache = cache if cache is not None else PortraitCache()
    overall = counts.sum(axis=0)  # (C,)
    csids_arr = np.asarray(csids, dtype=object)
    warm = np.flatnonzero(csids_arr != default_csid)
    reps = representatives(embeddings[warm], [csids[i] for i in warm], profile.k_representatives)
    if profile.backend == "llm" and writer is None and reps:
        writer = LlmPortraitWriter(model_path=profile.model or backbone.name, prompt=profile.prompt,
                                   max_new_tokens=profile.max_new_tokens, device=device, dtype=backbone.dtype,
                                   use_chat_template=backbone.use_chat_template)
    out = []
    for csid, rep_rows in reps.items():
        rows = warm[rep_rows]  # rows in the full user order
        members = warm[csids_arr[warm] == csid]
        text, top = statistical_portrait(counts[members].sum(axis=0), overall, categories, profile.top_categories)
        if profile.backend == "llm":
            lines = [user_line(counts[r], categories, profile.categories_per_user) for r in rows]
            key = PortraitCache.key(writer.identity, lines)
            hit = cache.get(csid, key)
            if hit is None:
                generated = writer.write(lines)
                text = generated or text
                cache.put(csid, key, text, top)
            else:
                text = hit["portrait"]
        out.append(GroupPortrait(csid, len(members), text, [user_ids[r] for r in rows], top))
    text, top = default_portrait(overall, categories, profile.top_categories)
    out.append(GroupPortrait(default_csid, int((csids_arr == default_csid).sum()), text, [], top))
    return out
