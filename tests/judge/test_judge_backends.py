"""The endpoint backend against a stub OpenAI-compatible server on 127.0.0.1 (retries, re-asking, the cache,
bounded concurrency) and the local backend on a tiny checkpoint saved by the test (constrained digits)."""

from __future__ import annotations

import pytest

from coea.config import load_config
from coea.judge.backends import (
    EndpointBackend,
    EndpointError,
    LocalBackend,
    ReplyCache,
    Request,
    chat_url,
    digit_token_ids,
    run_cached,
)
from coea.judge.run import build_embedded_judge
from coea.judge_prompts import ASPECTS, calls


def _request(template: str = "base", item: str = "Astronomy") -> Request:
    c = calls(template, ["Jazz"], item)[0]
    return Request((("user", c.prompt),), c.aspects, c.reasoning)


def _endpoint(server, **kw) -> EndpointBackend:
    sleeps: list[float] = []
    backend = EndpointBackend(server.url, "stub-model", backoff_s=0.5, sleep=sleeps.append, **kw)
    backend.sleeps = sleeps
    return backend


def test_chat_url():
    assert chat_url("http://h:8000") == "http://h:8000/v1/chat/completions"
    assert chat_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
    assert chat_url("http://h/x/chat/completions") == "http://h/x/chat/completions"


def test_retries_429_and_500_with_backoff_then_answers(stub_server):
    with stub_server(statuses=[429, 500]) as server:
        backend = _endpoint(server)
        reply = backend.answer(_request())
    assert reply.scores == {"serendipity": 5} and reply.attempts == 3
    assert len(server.requests) == 3 and backend.retries == 2
    assert backend.sleeps == [0.5, 1.0]  # exponential backoff
    body = server.requests[-1]
    assert body["path"] == "/v1/chat/completions" and body["temperature"] == 0 and body["model"] == "stub-model"


def test_retry_after_is_honoured_and_retries_are_bounded(stub_server):
    with stub_server(statuses=[503] * 10, retry_after="2") as server:
        backend = _endpoint(server, max_retries=2)
        with pytest.raises(EndpointError, match="gave up after 3 attempts"):
            backend.answer(_request())
    assert len(server.requests) == 3 and backend.sleeps == [2.0, 2.0]


def test_client_error_is_not_retried(stub_server):
    with stub_server(statuses=[400]) as server:
        with pytest.raises(EndpointError, match="HTTP 400"):
            _endpoint(server).answer(_request())
    assert len(server.requests) == 1


def test_broken_format_is_reasked_once_and_still_broken_counts_as_unparseable(stub_server):
    def sloppy(messages):
        return "Serendipity score: 4" if "did not follow the format" in messages[-1]["content"] else "Quite nice!"

    with stub_server(answer=sloppy) as server:
        reply = _endpoint(server).answer(_request())
    assert reply.scores == {"serendipity": 4} and reply.reasked and len(server.requests) == 2
    assert "Quite nice!" in reply.text  # the first answer is kept in the text

    with stub_server(answer=lambda m: "no idea") as server:
        reply = _endpoint(server).answer(_request())
    assert reply.scores == {"serendipity": None} and not reply.parsed and len(server.requests) == 2


def test_cache_makes_a_rerun_call_nothing_and_concurrency_is_bounded(stub_server, tmp_path):
    requests = [_request("cot", f"Item{i}") for i in range(8)] + [_request("cot", "Item0")]  # one duplicate
    with stub_server(delay_s=0.05) as server:
        backend = _endpoint(server, concurrency=2)
        replies, sent = run_cached(backend, requests, ReplyCache(tmp_path / "cache.jsonl"))
        assert sent == 8 and len(server.requests) == 8  # the duplicate is sent once
        assert server.max_in_flight <= 2
        assert all(r.scores == {"relevance": 3, "unexpectedness": 4, "serendipity": 4} for r in replies)
        again, sent = run_cached(backend, requests, ReplyCache(tmp_path / "cache.jsonl"))  # a fresh process
        assert sent == 0 and len(server.requests) == 8
    assert [r.scores for r in again] == [r.scores for r in replies]


def test_torn_cache_line_is_skipped_and_counted(stub_server, tmp_path):
    path = tmp_path / "cache.jsonl"
    with stub_server() as server:
        run_cached(_endpoint(server), [_request()], ReplyCache(path))
    with path.open("a") as fh:
        fh.write('{"key": "abc", "reply": {"te')  # a crash mid-write
    cache = ReplyCache(path)
    assert cache.torn == 1 and len(cache.entries) == 1


@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory):
    """A tiny Qwen2 judge saved by the test (random weights) and loaded back like any checkpoint."""
    from coea.backbones import load_causal_lm, load_tokenizer

    cfg = load_config(None, ["backbone.hidden_size=16", "backbone.num_layers=1", "backbone.num_heads=2",
                             "backbone.intermediate_size=32"])
    texts = [c.prompt for t in ("base", "ls", "cot", "ltm") for c in calls(t, ["Jazz", "Blues"], "Astronomy")]
    model_dir, tok_dir = build_embedded_judge(cfg, texts, tmp_path_factory.mktemp("judge"))
    tok = load_tokenizer(tok_dir)
    return load_causal_lm(model_dir, cfg, pad_token_id=tok.pad_token_id), tok


def test_local_backend_scores_are_constrained_digits(tiny_judge):
    model, tok = tiny_judge
    backend = LocalBackend(model, tok, identity="tiny", batch_size=3, max_reasoning_tokens=4)
    assert set(digit_token_ids(tok)) == set("12345")
    requests = [_request("base", "Astronomy"), _request("cot", "Astronomy"), _request("ls", "Astronomy"),
                _request("base", "Jazz")]
    got: dict[int, object] = {}
    backend.run(requests, lambda i, r: got.__setitem__(i, r))
    assert sorted(got) == [0, 1, 2, 3]
    for i, reply in got.items():
        assert reply.parsed and all(1 <= s <= 5 for s in reply.scores.values())
        assert reply.prompt_tokens > 0
    assert set(got[1].scores) == set(ASPECTS) and got[1].text.count("score:") == 3
    assert got[1].completion_tokens <= 3 * (4 + 1)
    # greedy: the same request gives the same answer
    again: dict[int, object] = {}
    backend.run(requests[:1], lambda i, r: again.__setitem__(i, r))
    assert again[0].text == got[0].text
