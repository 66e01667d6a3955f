"""Embeddings through the official clients: openai `embeddings.create` (which asks for base64
by default and decodes it), ollama `embed` and the legacy `embeddings`."""

import math

import ollama
import openai
import pytest

CAT = "The cat sat on the mat."
KITTEN = "A kitten was sitting on the rug."
REVENUE = "Quarterly revenue grew by twelve percent in Europe."


def _dot(a, b):
    assert len(a) == len(b)
    return sum(x * y for x, y in zip(a, b))


def _norm(a):
    return math.sqrt(_dot(a, a))


@pytest.fixture(scope="module")
def oai(server_url):
    c = openai.OpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0, timeout=120)
    yield c
    c.close()


@pytest.fixture(scope="module")
def oll(server_url):
    return ollama.Client(host=server_url, timeout=120)


def test_openai_list_in_order_unit_length_and_meaning(oai, model):
    r = oai.embeddings.create(model=model, input=[CAT, KITTEN, REVENUE])
    assert r.object == "list"
    assert r.model == model
    assert [d.index for d in r.data] == [0, 1, 2]
    vs = [d.embedding for d in r.data]
    assert all(len(v) == len(vs[0]) > 0 for v in vs)
    assert all(abs(_norm(v) - 1.0) < 1e-4 for v in vs)
    assert _dot(vs[0], vs[1]) > _dot(vs[0], vs[2])
    assert r.usage.prompt_tokens > 10
    assert r.usage.total_tokens == r.usage.prompt_tokens


def test_openai_float_and_base64_agree(oai, model):
    default = oai.embeddings.create(model=model, input=CAT).data[0].embedding
    floats = oai.embeddings.create(model=model, input=CAT, encoding_format="float").data[0].embedding
    assert max(abs(a - b) for a, b in zip(default, floats)) < 1e-6


def test_openai_dimensions(oai, model):
    size = len(oai.embeddings.create(model=model, input=CAT).data[0].embedding)
    r = oai.embeddings.create(model=model, input=CAT, dimensions=size)
    assert len(r.data[0].embedding) == size
    with pytest.raises(openai.BadRequestError) as ei:
        oai.embeddings.create(model=model, input=CAT, dimensions=8)
    assert ei.value.body["param"] == "dimensions"


def test_openai_refusals(oai, model):
    with pytest.raises(openai.NotFoundError):
        oai.embeddings.create(model="no-such-model", input=CAT)
    with pytest.raises(openai.BadRequestError) as ei:
        oai.embeddings.create(model=model, input=[[1, 2, 3]])
    assert "token arrays" in ei.value.message
    with pytest.raises(openai.BadRequestError):
        oai.embeddings.create(model=model, input="")


def test_ollama_embed_matches_openai(oll, oai, model):
    r = oll.embed(model=model, input=[CAT, KITTEN])
    assert r.model == model
    assert len(r.embeddings) == 2
    assert all(abs(_norm(v) - 1.0) < 1e-4 for v in r.embeddings)
    assert r.prompt_eval_count > 10
    assert r.total_duration > 0
    ref = oai.embeddings.create(model=model, input=CAT, encoding_format="float").data[0].embedding
    assert max(abs(a - b) for a, b in zip(ref, r.embeddings[0])) < 1e-5
    one = oll.embed(model=model, input=CAT)
    assert max(abs(a - b) for a, b in zip(ref, one.embeddings[0])) < 1e-5


def test_ollama_legacy_embeddings(oll, model):
    r = oll.embeddings(model=model, prompt=CAT)
    assert len(r.embedding) > 0
    assert abs(_norm(r.embedding) - 1.0) < 1e-4


def test_ollama_unknown_model(oll):
    with pytest.raises(ollama.ResponseError) as ei:
        oll.embed(model="no-such-model", input=CAT)
    assert ei.value.status_code == 404
