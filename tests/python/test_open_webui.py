"""Open WebUI's requests, replayed as the raw JSON it posts (no client library).

Open WebUI talks to an Ollama backend with /api/chat (NDJSON streaming), adds its built-in
tools in native function-calling mode, sends its model options, and fires background tasks
(title, tags, follow-ups) as non-streamed chats while the user's answer is still streaming.
Its OpenAI connections post /v1/chat/completions with extra fields it passes through.
"""

import json
import threading
import urllib.error
import urllib.request

import httpx
import pytest

STATS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
         "eval_count", "eval_duration")

# Open WebUI's built-in tools, as its middleware adds them (native function calling).
WEBUI_TOOLS = [
    {"type": "function", "function": {
        "name": "get_current_timestamp",
        "description": "Get the current Unix timestamp in seconds",
        "parameters": {"type": "object", "properties": {}, "required": []}}},
    {"type": "function", "function": {
        "name": "calculate_timestamp",
        "description": "Get the timestamp relative to now",
        "parameters": {"type": "object", "properties": {
            "days_ago": {"type": "integer", "description": "Number of days ago"},
            "weeks_ago": {"type": "integer", "description": "Number of weeks ago"},
            "months_ago": {"type": "integer", "description": "Number of months ago"},
            "years_ago": {"type": "integer", "description": "Number of years ago"}},
            "required": []}}},
]

HISTORY = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


def _title_task(model):
    prompt = (
        "### Task:\nGenerate a concise, 3-5 word title with an emoji summarizing the chat "
        "history.\n### Guidelines:\n- The title should clearly represent the main theme or "
        "subject of the conversation.\n- Write the title in the chat's primary language.\n"
        "### Output:\nJSON format: { \"title\": \"your concise title here\" }\n"
        "### Chat History:\n<chat_history>\nUSER: What is the capital of France?\n"
        "ASSISTANT: The capital of France is Paris.\n</chat_history>"
    )
    return {"model": model, "messages": [{"role": "user", "content": prompt}],
            "stream": False, "options": {"num_predict": 12, "temperature": 0},
            "keep_alive": "5m"}


def _chat_body(model, num_predict):
    return {
        "model": model,
        "messages": HISTORY,
        "stream": True,
        "tools": WEBUI_TOOLS,
        "options": {"num_ctx": 2048, "seed": 42, "num_predict": num_predict,
                    "stop": ["<|im_end|>", "\nUSER:"], "temperature": 0.8},
        "keep_alive": "5m",
    }


def _read_ndjson(response):
    lines = [line for line in response.iter_lines() if line.strip()]
    return [json.loads(line) for line in lines]


def _assert_ndjson_chat(objs, model):
    assert len(objs) >= 2
    for o in objs:
        assert o["model"] == model
        assert isinstance(o["created_at"], str) and o["created_at"].endswith("Z")
        assert isinstance(o["done"], bool)
        assert o["message"]["role"] == "assistant"
    assert all(o["done"] is False for o in objs[:-1])
    last = objs[-1]
    assert last["done"] is True
    assert last["done_reason"] in ("stop", "length")
    for k in STATS:
        assert isinstance(last[k], int) and not isinstance(last[k], bool), (k, last)
    assert last["eval_count"] > 0 and last["prompt_eval_count"] > 0


@pytest.fixture(scope="module")
def http(server_url):
    with httpx.Client(base_url=server_url, timeout=60) as c:
        yield c


def test_chat_stream_with_builtin_tools_and_options(http, model):
    with http.stream("POST", "/api/chat", json=_chat_body(model, 12)) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        objs = _read_ndjson(r)
    _assert_ndjson_chat(objs, model)
    assert objs[-1]["eval_count"] <= 12
    text = "".join(o["message"].get("content", "") for o in objs)
    assert text or any(o["message"].get("tool_calls") for o in objs)


def test_title_task_while_a_chat_streams(server_url, http, model):
    """The title request, sent while the user's answer streams: both are answered."""
    got_first_line = threading.Event()
    result = {"objs": []}

    def stream_chat():
        try:
            with httpx.Client(base_url=server_url, timeout=60) as c:
                with c.stream("POST", "/api/chat", json=_chat_body(model, 48)) as r:
                    result["status"] = r.status_code
                    for line in r.iter_lines():
                        if line.strip():
                            result["objs"].append(json.loads(line))
                            got_first_line.set()
        except Exception as e:  # surfaced by the main thread
            result["error"] = e
        finally:
            got_first_line.set()

    t = threading.Thread(target=stream_chat)
    t.start()
    assert got_first_line.wait(60), "the streamed chat sent nothing"
    assert "error" not in result, result.get("error")
    in_flight = not result["objs"][-1]["done"]
    title = http.post("/api/chat", json=_title_task(model))
    t.join(90)
    assert not t.is_alive(), "the streamed chat did not finish"
    assert "error" not in result, result.get("error")
    assert in_flight, "the stream ended before the title request was sent: nothing tested"

    assert title.status_code == 200, title.text
    tj = title.json()
    assert tj["done"] is True and tj["model"] == model
    assert isinstance(tj["message"]["content"], str) and tj["message"]["content"]
    for k in STATS:
        assert isinstance(tj[k], int) and not isinstance(tj[k], bool), (k, tj)

    assert result["status"] == 200
    _assert_ndjson_chat(result["objs"], model)
    # Whether the title overtakes the stream is not asserted: it samples at temperature 0,
    # the chat at 0.8, and requests with different sampling are separate runs (docs/server.md).


def test_openai_side_with_extra_fields(http, model):
    body = {
        "model": model,
        "messages": HISTORY,
        "stream": True,
        "stream_options": {"include_usage": True},
        "reasoning_effort": "low",
        "min_p": 0.05,
        "logit_bias": {"1234": -100},
        "seed": 42,
        "max_tokens": 8,
        "temperature": 0.7,
        "user": "webui-user",
        "metadata": {"chat_id": "c1", "message_id": "m1"},
    }
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        data = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    events = [json.loads(d) for d in data[:-1]]
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    usage = events[-1]["usage"]
    assert usage and usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text

    # The same, not streamed: the title/tag tasks on an OpenAI connection.
    body.update(stream=False)
    del body["stream_options"]
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]


def test_scripted_tool_call_over_ndjson(http, scripted_model):
    """Open WebUI's native tool mode: the call arrives in a chunk, arguments as an object."""
    body = _chat_body(scripted_model, 64)
    body["messages"] = [{"role": "user", "content": "What is the weather like in Paris?"}]
    body["tools"] = WEBUI_TOOLS + [{"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}]
    with http.stream("POST", "/api/chat", json=body) as r:
        assert r.status_code == 200
        objs = _read_ndjson(r)
    calls = [tc for o in objs for tc in o["message"].get("tool_calls") or []]
    assert [c["function"]["name"] for c in calls] == ["get_weather"]
    assert calls[0]["function"]["arguments"] == {"city": "Paris"}
    assert objs[-1]["done"] is True
    assert "<tool_call>" not in "".join(o["message"].get("content", "") for o in objs)


# Open WebUI's RAG: agenerate_ollama_batch_embeddings posts {"input": [...], "model": ...,
# "truncate": true} to /api/embed with a Bearer header (empty without a key) and, with
# ENABLE_FORWARD_USER_INFO_HEADERS, its X-OpenWebUI-User-* headers; batches of
# RAG_EMBEDDING_BATCH_SIZE go out in parallel; a non-200 is read as json()["error"].
WEBUI_EMBED_HEADERS = {
    "Content-Type": "application/json",
    "Authorization": "Bearer ",
    "X-OpenWebUI-User-Name": "Jane Doe",
    "X-OpenWebUI-User-Id": "8d2a4c1e-0000-4000-8000-000000000000",
    "X-OpenWebUI-User-Email": "jane@example.com",
    "X-OpenWebUI-User-Role": "user",
}

CHUNKS = [
    "Paris is the capital and largest city of France.",
    "The Eiffel Tower was completed in 1889 for the World's Fair.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "The mitochondria is the powerhouse of the cell.",
    "France borders Belgium, Luxembourg, Germany, Switzerland, Italy and Spain.",
    "Chlorophyll absorbs mostly blue and red light.",
]


def _webui_post_embed(url, body):
    """POSTs as requests/aiohttp do; urllib, since httpx refuses the bare "Bearer " that
    Open WebUI sends without a key. Returns (status, parsed JSON)."""
    req = urllib.request.Request(f"{url}/api/embed", data=json.dumps(body).encode(),
                                 headers=WEBUI_EMBED_HEADERS, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _webui_embed(url, model, texts):
    status, data = _webui_post_embed(url, {"input": texts, "model": model, "truncate": True})
    if status != 200:
        raise AssertionError(f"Ollama embed error ({status}): {data.get('error', data)}")
    assert "embeddings" in data, data
    return data["embeddings"]


def test_open_webui_rag_embed_replay(server_url, model):
    # Documents are embedded in parallel batches of 2, as RAG_EMBEDDING_BATCH_SIZE=2 does.
    batches = [CHUNKS[i:i + 2] for i in range(0, len(CHUNKS), 2)]
    results = [None] * len(batches)

    def run(i, batch):
        results[i] = _webui_embed(server_url, model, batch)

    threads = [threading.Thread(target=run, args=(i, b)) for i, b in enumerate(batches)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    docs = [v for batch in results for v in batch]
    assert len(docs) == len(CHUNKS)
    dim = len(docs[0])
    assert all(len(v) == dim for v in docs)
    # The query is embedded alone, then ranked by cosine (vectors are unit length).
    [query] = _webui_embed(server_url, f"{model}:latest", ["What is the capital city of France?"])
    scores = [sum(a * b for a, b in zip(query, d)) for d in docs]
    best = max(range(len(docs)), key=scores.__getitem__)
    assert "France" in CHUNKS[best], (CHUNKS[best], scores)


def test_open_webui_embed_error_is_readable(server_url):
    status, data = _webui_post_embed(
        server_url, {"input": ["x"], "model": "no-such-model", "truncate": True})
    assert status == 404
    assert isinstance(data.get("error"), str) and "no-such-model" in data["error"]
