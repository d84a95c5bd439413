"""Judge backends: a local Hugging Face causal LM and an OpenAI-compatible chat endpoint, behind one reply cache.

A request is one judge call (:class:`coea.judge_prompts.Call`) with the conversation before it; a :class:`Reply`
is the answer text and its parsed scores.

- :class:`LocalBackend`: batched greedy decoding. Each aspect's reason is generated freely (up to
  ``max_reasoning_tokens``, CoT and LtM) and its score is one token constrained to the digits 1-5 with transformers'
  ``prefix_allowed_tokens_fn``: a local answer always parses.
- :class:`EndpointBackend`: ``POST <url>/chat/completions`` (vLLM, TGI, any OpenAI-compatible server) at
  temperature 0 from a bounded thread pool; HTTP 429 / 5xx and connection errors are retried with exponential
  backoff (``Retry-After`` honoured); an answer whose format is broken is re-asked once with the format restated,
  and an answer still broken keeps ``None`` scores (counted by the caller, never dropped).
- :class:`ReplyCache`: ``cache.jsonl``, one line per finished reply keyed by :func:`request_key` (a hash of the
  backend's identity and the exact messages), appended and flushed as each reply arrives, so a crashed run repeats
  no call and a rerun makes none.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from coea.judge_prompts import answer_lines, parse_scores

log = logging.getLogger("coea.judge")

Messages = list[dict[str, str]]
RETRY_STATUS = (429, 500, 502, 503, 504)


@dataclass(frozen=True)
class Request:
    """One judge call: the whole conversation (``messages``, ending with the user turn) and what to score."""

    messages: tuple[tuple[str, str], ...]  # (role, content)
    aspects: tuple[str, ...]
    reasoning: bool

    def as_messages(self) -> Messages:
        return [{"role": r, "content": c} for r, c in self.messages]


@dataclass
class Reply:
    """An answer: its text, each aspect's score (None = unparseable), tokens spent and HTTP attempts made."""

    text: str
    scores: dict[str, int | None]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 1
    reasked: bool = False

    @property
    def parsed(self) -> bool:
        return all(v is not None for v in self.scores.values())


def request_key(backend_id: str, request: Request) -> str:
    """The cache key of a request: sha256 of the backend's identity, the messages and the aspects asked."""
    blob = json.dumps([backend_id, request.messages, request.aspects, request.reasoning], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class ReplyCache:
    """Finished replies by :func:`request_key`, persisted as JSON lines (thread-safe appends, flushed each).

    A torn last line (a crash mid-write) is skipped on load and counted in ``torn``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.lock = threading.Lock()
        self.entries: dict[str, Reply] = {}
        self.torn = 0
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                    self.entries[row["key"]] = Reply(**row["reply"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    self.torn += 1

    def get(self, key: str) -> Reply | None:
        return self.entries.get(key)

    def put(self, key: str, reply: Reply) -> None:
        with self.lock:
            self.entries[key] = reply
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as fh:
                fh.write(json.dumps({"key": key, "reply": asdict(reply)}, ensure_ascii=False) + "\n")
                fh.flush()


def run_cached(backend: Any, requests: Sequence[Request], cache: ReplyCache | None) -> tuple[list[Reply], int]:
    """Replies for ``requests`` in order: cached ones read back, the rest sent to ``backend`` and cached as they
    arrive; also the number of requests actually sent."""
    keys = [request_key(backend.identity, r) for r in requests]
    out: list[Reply | None] = [cache.get(k) if cache is not None else None for k in keys]
    todo = [i for i, r in enumerate(out) if r is None]
    unique = list(dict.fromkeys(keys[i] for i in todo))  # the same call twice (two methods, one item) is sent once
    first = {k: next(i for i in todo if keys[i] == k) for k in unique}
    sent = [requests[first[k]] for k in unique]

    def done(j: int, reply: Reply) -> None:
        if cache is not None:
            cache.put(unique[j], reply)
        replies[unique[j]] = reply

    replies: dict[str, Reply] = {}
    if sent:
        backend.run(sent, done)
    for i in todo:
        out[i] = replies[keys[i]]
    return [r for r in out if r is not None], len(sent)


# ---------------------------------------------------------------------------------------------- local model


def digit_token_ids(tokenizer) -> dict[str, list[int]]:
    """digit "1".."5" -> the token ids that decode to it alone (with or without a leading space)."""
    out: dict[str, list[int]] = {}
    for d in "12345":
        ids = set()
        for variant in (d, " " + d):
            enc = tokenizer(variant, add_special_tokens=False)["input_ids"]
            if enc and tokenizer.decode([enc[-1]]).strip() == d and enc[-1] != tokenizer.unk_token_id:
                ids.add(enc[-1])
        if not ids:
            raise ValueError(f"the judge's tokenizer has no token for the score digit {d!r}")
        out[d] = sorted(ids)
    return out


class LocalBackend:
    """A Hugging Face causal LM as the judge: batched, greedy, score digits constrained (module docstring).

    Args:
        model: a causal LM (eval mode is set here).
        tokenizer: its tokenizer (left padding, pad token set: ``coea.backbones.load_tokenizer``).
        identity: what the cache keys on (e.g. the model's path).
        batch_size: requests per forward batch.
        max_reasoning_tokens: the longest generated reason per aspect (CoT, LtM).
        use_chat_template: wrap the conversation in the tokenizer's chat template when it has one; otherwise the
            turns are joined as plain text.
    """

    def __init__(self, model, tokenizer, *, identity: str, batch_size: int = 8, max_reasoning_tokens: int = 32,
                 use_chat_template: bool = True, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.tok = tokenizer
        self.identity = f"local:{identity}:r{max_reasoning_tokens}:t{int(use_chat_template)}"
        self.batch_size = batch_size
        self.max_reasoning_tokens = max_reasoning_tokens
        self.chat = use_chat_template and bool(getattr(tokenizer, "chat_template", None))
        self.device = device
        self.digits = digit_token_ids(tokenizer)
        self.allowed = sorted({i for ids in self.digits.values() for i in ids})
        self.digit_of = {i: int(d) for d, ids in self.digits.items() for i in ids}

    def render(self, messages: Messages) -> str:
        """The conversation as the model's input text, ending where the assistant's answer starts."""
        if self.chat:
            return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\n\n"

    def count_tokens(self, text: str) -> int:
        return len(self.tok(text, add_special_tokens=False)["input_ids"])

    def _generate(self, texts: list[str], *, max_new_tokens: int, digit: bool) -> tuple[list[list[int]], int]:
        enc = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        kwargs: dict[str, Any] = {}
        if digit:  # the score: one token among the digits 1-5, the most likely under the model
            kwargs["prefix_allowed_tokens_fn"] = lambda batch_id, ids: self.allowed
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                      pad_token_id=self.tok.pad_token_id, eos_token_id=self.tok.eos_token_id,
                                      **kwargs)
        new = out[:, enc["input_ids"].shape[1]:].tolist()  # (B, new)
        eos, pad = self.tok.eos_token_id, self.tok.pad_token_id
        return [[t for t in row if t not in (eos, pad)] if not digit else row[:1] for row in new], \
            int(enc["attention_mask"].sum())

    def run(self, requests: Sequence[Request], on_done: Callable[[int, Reply], None]) -> None:
        """Answer ``requests`` batch by batch; ``on_done(i, reply)`` after each batch."""
        order = sorted(range(len(requests)), key=lambda i: (requests[i].aspects, requests[i].reasoning))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            groups: dict[tuple, list[int]] = {}
            for i in idx:
                groups.setdefault((requests[i].aspects, requests[i].reasoning), []).append(i)
            for (aspects, reasoning), members in groups.items():
                for i, reply in zip(members, self._answer([requests[i] for i in members], aspects, reasoning)):
                    on_done(i, reply)

    def _answer(self, batch: list[Request], aspects: tuple[str, ...], reasoning: bool) -> list[Reply]:
        prompts = [self.render(r.as_messages()) for r in batch]
        answers = [""] * len(batch)
        scores: list[dict[str, int | None]] = [{} for _ in batch]
        prompt_tokens = [self.count_tokens(p) for p in prompts]
        completion = [0] * len(batch)
        for a in aspects:
            name = a.capitalize()
            reasons = [""] * len(batch)
            if reasoning:
                ids, _ = self._generate([p + s + f"{name}:" for p, s in zip(prompts, answers)],
                                        max_new_tokens=self.max_reasoning_tokens, digit=False)
                reasons = [self.tok.decode(x, skip_special_tokens=True).split("\n")[0].strip() for x in ids]
                completion = [c + len(x) for c, x in zip(completion, ids)]
            ids, _ = self._generate([p + s + answer_lines(a, r, "", reasoning=reasoning).rstrip()
                                     for p, s, r in zip(prompts, answers, reasons)], max_new_tokens=1, digit=True)
            for j, x in enumerate(ids):
                scores[j][a] = self.digit_of.get(x[0]) if x else None
                answers[j] += answer_lines(a, reasons[j], scores[j][a] if scores[j][a] else "?",
                                           reasoning=reasoning) + "\n"
                completion[j] += 1
        return [Reply(text.strip(), s, prompt_tokens=p, completion_tokens=c)
                for text, s, p, c in zip(answers, scores, prompt_tokens, completion)]


# ------------------------------------------------------------------------------------------------- endpoint


class EndpointError(RuntimeError):
    """An endpoint call that failed for good (a 4xx other than 429, or retries exhausted)."""


def chat_url(endpoint: str) -> str:
    """``http://host:8000`` or ``.../v1`` -> ``.../v1/chat/completions`` (a full URL is kept)."""
    url = endpoint.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    return (url if url.endswith("/v1") else url + "/v1") + "/chat/completions"


class EndpointBackend:
    """An OpenAI-compatible chat endpoint as the judge (module docstring).

    Args:
        endpoint: server URL (``http://127.0.0.1:8000`` or ``.../v1``).
        model: the served model's name (the request's ``model`` field).
        concurrency: requests in flight at most.
        max_retries: retries of one HTTP call on 429 / 5xx / connection errors (then :class:`EndpointError`).
        backoff_s: first retry delay; doubled each retry, capped at 60 s; a ``Retry-After`` header wins.
        timeout_s: per-request socket timeout.
        max_tokens: the answer's token cap (``max_tokens``).
        api_key: sent as ``Authorization: Bearer`` when not empty.
    """

    def __init__(self, endpoint: str, model: str, *, concurrency: int = 4, max_retries: int = 5,
                 backoff_s: float = 1.0, timeout_s: float = 120.0, max_tokens: int = 512, api_key: str = "",
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.url = chat_url(endpoint)
        self.model = model
        self.identity = f"endpoint:{model}:m{max_tokens}"  # not the URL: a restarted server on a new port still hits
        self.concurrency = max(1, concurrency)
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.max_tokens = max_tokens
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY", "")
        self.sleep = sleep
        self.http_calls = 0
        self.retries = 0
        self._lock = threading.Lock()

    def _post(self, messages: Messages) -> tuple[dict[str, Any], int]:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0, "top_p": 1,
                           "max_tokens": self.max_tokens, "seed": 0}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in range(self.max_retries + 1):
            with self._lock:
                self.http_calls += 1
            wait = min(60.0, self.backoff_s * 2 ** attempt)
            try:
                req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return json.loads(resp.read().decode()), attempt + 1
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:200].decode(errors="replace")
                if exc.code not in RETRY_STATUS:
                    raise EndpointError(f"{self.url}: HTTP {exc.code}: {detail}") from None
                after = exc.headers.get("Retry-After") if exc.headers else None
                if after and after.replace(".", "", 1).isdigit():
                    wait = min(60.0, float(after))
                why = f"HTTP {exc.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError) as exc:
                why = f"{type(exc).__name__}: {exc}"
            if attempt == self.max_retries:
                raise EndpointError(f"{self.url}: gave up after {attempt + 1} attempts ({why})")
            with self._lock:
                self.retries += 1
            log.info("judge endpoint: %s; retry %d/%d in %.1f s", why, attempt + 1, self.max_retries, wait)
            self.sleep(wait)
        raise AssertionError("unreachable")

    def answer(self, request: Request) -> Reply:
        """One judge call; re-asked once, with the format restated, when a score does not parse."""
        messages = request.as_messages()
        data, attempts = self._post(messages)
        text, usage = _content(data), data.get("usage") or {}
        scores = parse_scores(text, request.aspects)
        reply = Reply(text, scores, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)),
                      attempts)
        if reply.parsed:
            return reply
        fmt = "\n".join(answer_lines(a, "<one sentence>", "<1-5>", reasoning=request.reasoning)
                        for a in request.aspects)
        again = [*messages, {"role": "assistant", "content": text},
                 {"role": "user", "content": f"Your answer did not follow the format. Reply again in exactly this "
                                             f"format, every score an integer from 1 to 5:\n{fmt}"}]
        data, more = self._post(again)
        text2, usage2 = _content(data), data.get("usage") or {}
        scores2 = parse_scores(text2, request.aspects)
        merged = {a: scores2[a] if scores2[a] is not None else scores[a] for a in request.aspects}
        return Reply(text + "\n---\n" + text2, merged,
                     reply.prompt_tokens + int(usage2.get("prompt_tokens", 0)),
                     reply.completion_tokens + int(usage2.get("completion_tokens", 0)), attempts + more, True)

    def run(self, requests: Sequence[Request], on_done: Callable[[int, Reply], None]) -> None:
        """Answer ``requests`` with at most ``concurrency`` in flight; ``on_done(i, reply)`` as each arrives."""
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = {pool.submit(self.answer, r): i for i, r in enumerate(requests)}
            for fut in as_completed(futures):
                on_done(futures[fut], fut.result())

    @staticmethod
    def count_tokens(text: str) -> int:
        """An estimate without the server's tokenizer: one token per 4 characters (docs/judge.md, "Cost")."""
        return max(1, len(text) // 4)


def _content(data: dict[str, Any]) -> str:
    try:
        return str(data["choices"][0]["message"]["content"] or "")
    except (KeyError, IndexError, TypeError):
        return ""
