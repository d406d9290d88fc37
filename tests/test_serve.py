"""`asymtune serve` as a server: concurrent requests generated together and each answered as it is alone, hostile
requests answered 4xx in OpenAI's error shape naming the field, a bounded queue, SIGTERM finishing what is in flight.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import serving

from asymtune.inference import causal, serve
from asymtune.inference.batching import Batcher, QueueFull, Request
from asymtune.inference.sampling import Sampling

pytestmark = pytest.mark.slow

QUESTIONS = [f"question {i}: name the colour of thing {i}" for i in range(8)]
HOSTILE = [  # (body, status, the field the error names)
    ({"model": "tiny", "messages": []}, 400, "messages"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**9}, 400, "max_tokens"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 0}, 400,
     "max_completion_tokens"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": 100}, 400, "n"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": -1}, 400, "temperature"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "top_p": 0}, 400, "top_p"),
    ({"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role"),
    ({"model": "tiny", "messages": [{"role": "user"}]}, 400, "messages.0.content"),
    ({"model": "tiny", "messages": [{"role": "system", "content": "be brief"}]}, 400, "messages"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "word " * 5000}]}, 400, "messages"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stop": list("abcde")}, 400, "stop"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, 400,
     "tools"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "logprobs": True}, 400, "logprobs"),
    ({"messages": [{"role": "user", "content": "hi"}]}, 400, "model"),
    ({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
    ({"model": "tiny", "prompt": "hi", "echo": True}, 400, "echo"),
]


@pytest.fixture(scope="module")
def served(sft_run, tiny_llama_dir, tmp_path_factory):
    """The run as "tiny", and the untrained base model (whose answers vary with the prompt) as "base"."""
    model = causal.open_run(str(sft_run.path), sft_run.path.parent, tmp_path_factory.mktemp("scratch"),
                            log=lambda _: None)
    base = causal.open_base(str(tiny_llama_dir), template="raw", log=lambda _: None)
    with serving(serve.build_app({"tiny": model, "base": base}, serve.Limits(max_tokens=40))) as url:
        yield url


def chat(url, question, **fields):
    body = {"model": "tiny", "messages": [{"role": "user", "content": question}], "max_tokens": 12} | fields
    reply = httpx.post(f"{url}/chat/completions", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_concurrent_requests_are_batched_and_each_answered_as_alone(served):
    alone = [chat(served, question, model="base")["choices"][0]["message"]["content"] for question in QUESTIONS]
    assert len(set(alone)) > 4  # the questions get different answers: a mix-up between rows would show
    before = httpx.get(served.removesuffix("/v1") + "/health").json()
    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        together = list(pool.map(lambda q: chat(served, q, model="base")["choices"][0]["message"]["content"],
                                 QUESTIONS))
    after = httpx.get(served.removesuffix("/v1") + "/health").json()
    assert together == alone
    assert after["batches"] - before["batches"] <= 3 and after["widest_batch"] >= 4, (before, after)
    assert after["answers_held"] == 0


def test_n_stop_usage_and_streaming_agree_with_one_plain_answer(served):
    from openai import OpenAI

    client = OpenAI(base_url=served, api_key="unused")
    question = [{"role": "user", "content": QUESTIONS[0]}]
    plain = client.chat.completions.create(model="tiny", messages=question, max_tokens=12)
    text = plain.choices[0].message.content
    assert plain.usage.completion_tokens == 12 or plain.choices[0].finish_reason == "stop"
    several = client.chat.completions.create(model="tiny", messages=question, max_tokens=12, n=3)
    assert [choice.message.content for choice in several.choices] == [text] * 3  # greedy: three equal answers
    assert several.usage.completion_tokens == 3 * plain.usage.completion_tokens
    stop = text.split()[1]
    cut = client.chat.completions.create(model="tiny", messages=question, max_tokens=12, stop=[stop])
    assert cut.choices[0].finish_reason == "stop" and cut.choices[0].message.content == text[:text.find(stop)]
    chunks = list(client.chat.completions.create(model="tiny", messages=question, max_tokens=12, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    prompts = client.completions.create(model="tiny", prompt=["one two", "three four"], max_tokens=5)
    assert len(prompts.choices) == 2 and [c.index for c in prompts.choices] == [0, 1]


def test_hostile_requests_get_4xx_naming_the_field_and_the_server_stays_up(served):
    for body, status, field in HOSTILE:
        endpoint = "completions" if "prompt" in body else "chat/completions"
        reply = httpx.post(f"{served}/{endpoint}", json=body, timeout=60)
        assert reply.status_code == status, (body, reply.text)
        error = reply.json()["error"]
        assert error["param"] == field and error["message"], (body, error)
    for raw in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        reply = httpx.post(f"{served}/chat/completions", content=raw, timeout=60)
        assert reply.status_code == 400 and reply.json()["error"]["message"], reply.text
    assert httpx.get(f"{served}/models/nope").status_code == 404
    assert chat(served, QUESTIONS[1])["choices"][0]["message"]["content"] is not None


def test_a_request_the_queue_cannot_hold_is_refused_whole_and_what_it_queued_is_dropped(served):
    health = served.removesuffix("/v1") + "/health"
    body = {"model": "base", "prompt": [f"prompt {i}" for i in range(9)], "n": 8, "max_tokens": 40}  # 72 > 64 held
    reply = httpx.post(f"{served}/completions", json=body, timeout=60)
    assert reply.status_code == 503 and reply.json()["error"]["code"] == "server_busy", reply.text
    deadline = time.monotonic() + 60
    while httpx.get(health).json()["answers_held"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert httpx.get(health).json()["answers_held"] == 0
    assert chat(served, QUESTIONS[3])["choices"][0]["message"]["content"] is not None


def test_a_full_queue_refuses_and_a_closing_batcher_finishes_what_it_took(sft_run, tmp_path):
    model = causal.open_run(str(sft_run.path), sft_run.path.parent, tmp_path, log=lambda _: None)
    ids = model.prompt_ids([{"role": "user", "content": QUESTIONS[0]}], 8, "test")
    entered, release = threading.Event(), threading.Event()
    events = []

    def held_sink(event):  # holds the worker inside its first call until the test releases it
        entered.set()
        release.wait(60)
        events.append(("first", event))

    batcher = Batcher(max_rows=2, max_waiting=3)
    batcher.submit(Request(model.model, model.tokenizer, ids, Sampling(8), held_sink, n=2))
    assert entered.wait(60)
    batcher.submit(Request(model.model, model.tokenizer, ids, Sampling(8), lambda e: events.append(("second", e))))
    with pytest.raises(QueueFull, match="the limit is 3"):
        batcher.submit(Request(model.model, model.tokenizer, ids, Sampling(8), lambda e: None))
    release.set()
    batcher.close(60)
    finishes = [(who, event.index) for who, event in events if event.finish is not None]
    assert sorted(finishes) == [("first", 0), ("first", 1), ("second", 0)] and batcher.held == 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_cli_server_answers_then_sigterm_finishes_in_flight_streams_and_exits(sft_run):
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "asymtune", "serve", str(sft_run.path), "--name", "tiny",
                                "--port", str(port), "--max-tokens", "200"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                assert process.poll() is None, process.communicate()
                time.sleep(0.3)
        for body, status, field in HOSTILE[:4]:
            reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
            assert (reply.status_code, reply.json()["error"]["param"]) == (status, field)
        body = {"model": "tiny", "messages": [{"role": "user", "content": QUESTIONS[2]}], "max_tokens": 200,
                "n": 8, "stream": True, "temperature": 1.0, "seed": 3}
        lines = []
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as stream:
            for line in stream.iter_lines():
                if line and not lines:
                    process.send_signal(signal.SIGTERM)  # the stream has begun: it is in flight
                if line:
                    lines.append(line)
        out, err = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: {")]
    finished = {choice["index"] for chunk in chunks for choice in chunk["choices"] if choice.get("finish_reason")}
    assert lines[-1] == "data: [DONE]" and finished == set(range(8)), lines[-3:]
    assert process.returncode == 0 and "stopped serving tiny" in out + err, (out, err)
    assert "Traceback" not in err and "Traceback" not in out, err
