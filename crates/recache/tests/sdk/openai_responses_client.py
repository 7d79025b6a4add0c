"""OpenAI's official Python SDK, Responses API, against recache (tests/sdk.rs runs it).

Every check is an assert: a failure exits non-zero with its message.
RECACHE_URL is the gateway, RECACHE_KEY a tenant's client key.
"""
import os

import openai

client = openai.OpenAI(base_url=os.environ["RECACHE_URL"] + "/v1", api_key=os.environ["RECACHE_KEY"], max_retries=0)
MODEL = "gpt-4o-mini"


def status(headers):
    """HIT, MISS, BYPASS, or SHARED: a miss answered by another request's
    provider call (a repeat that arrives while the first is being stored)."""
    s = headers.get("x-recache-status")
    return "SHARED" if s == "MISS" and headers.get("x-recache-coalesced") == "true" else s


def cached(s):
    return s in ("HIT", "SHARED")


def norm(response):
    """A response as a dict, without the `parsed` fields the SDK's stream helper
    adds to its own (ParsedResponse) type: what the provider sent."""
    d = response.model_dump()
    d.pop("output_parsed", None)
    for item in d.get("output") or []:
        for part in item.get("content") or []:
            if isinstance(part, dict):
                part.pop("parsed", None)
        item.pop("parsed_arguments", None)
    return d


def create(**kw):
    raw = client.responses.with_raw_response.create(**kw)
    return status(raw.headers), raw.parse(), raw.headers


def stream(**kw):
    with client.responses.stream(**kw) as s:
        text = ""
        for event in s:
            if event.type == "response.output_text.delta":
                text += event.delta
        final = s.get_final_response()
        # (The stream keeps its HTTP response in `_response`.)
        return status(s._response.headers), text, final


# JSON: a miss, then a hit.
ask = dict(model=MODEL, input="What does a cache gateway do?")
s1, r1, _ = create(**ask)
s2, r2, _ = create(**ask)
assert s1 == "MISS" and cached(s2), (s1, s2)
assert norm(r1) == norm(r2)
assert r1.output_text.startswith("stub answer #1"), r1.output_text

# The stored JSON answer streamed: the text and the final response are the JSON answer's.
s3, text, final = stream(**ask)
assert cached(s3), s3
assert text == r1.output_text, (text, r1.output_text)
assert norm(final) == norm(r1), (norm(final), norm(r1))

# Streamed first (live), then as JSON and as a replayed stream; a function call.
tools = [{"type": "function", "name": "get_weather", "description": "The weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
rich = dict(model=MODEL, input="What is the weather in Paris?", tools=tools, reasoning={"effort": "low"})
live_status, _, live = stream(**rich)
json_status, as_json, _ = create(**rich)
replay_status, _, replayed = stream(**rich)
assert live_status == "MISS" and cached(json_status) and cached(replay_status), (live_status, json_status, replay_status)
assert norm(live) == norm(as_json) == norm(replayed), "one response, three ways"
kinds = [o.type for o in as_json.output]
assert kinds == ["reasoning", "function_call"], kinds
call = as_json.output[1]
assert call.call_id == live.output[1].call_id and call.arguments == '{"city":"Paris"}', call

# The function result goes back, chained on the response id: cached for that chain only.
follow = dict(model=MODEL, tools=tools, previous_response_id=as_json.id,
              input=[{"type": "function_call_output", "call_id": call.call_id, "output": "18 C, sunny"}])
s4, a4, _ = create(**follow)
s5, a5, _ = create(**follow)
assert s4 == "MISS" and cached(s5), (s4, s5)
other_chain = {**follow, "previous_response_id": "resp_elsewhere"}
s6, _, _ = create(**other_chain)
assert s6 == "MISS", "another chain is another answer"

# Background runs at the provider: never cached.
s7, _, h7 = create(model=MODEL, input="Run this in the background", background=True)
s8, _, h8 = create(model=MODEL, input="Run this in the background", background=True)
assert (s7, s8) == ("BYPASS", "BYPASS"), (s7, s8)
assert h7.get("x-recache-bypass") == "background", dict(h7)

print("openai responses sdk: all checks passed")
