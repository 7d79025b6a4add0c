"""Anthropic's official Python SDK against recache (tests/sdk.rs runs it).

Every check is an assert: a failure exits non-zero with its message.
RECACHE_URL is the gateway, RECACHE_KEY a tenant's client key.
"""
import os

import anthropic

client = anthropic.Anthropic(base_url=os.environ["RECACHE_URL"], api_key=os.environ["RECACHE_KEY"], max_retries=0)
MODEL = "claude-sonnet-4-5"


def status(headers):
    """HIT, MISS, or SHARED: a miss answered by another request's provider call
    (a repeat that arrives while the first answer is still being stored)."""
    s = headers.get("x-recache-status")
    return "SHARED" if s == "MISS" and headers.get("x-recache-coalesced") == "true" else s


def cached(s):
    return s in ("HIT", "SHARED")


def create(**kw):
    raw = client.messages.with_raw_response.create(**kw)
    return status(raw.headers), raw.parse()


def stream(**kw):
    with client.messages.stream(**kw) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
        return status(s.response.headers), text, final


# JSON: a miss, then a hit with the same message.
ask = dict(model=MODEL, max_tokens=200, messages=[{"role": "user", "content": "What does a cache gateway do?"}])
s1, m1 = create(**ask)
s2, m2 = create(**ask)
assert s1 == "MISS" and cached(s2), (s1, s2)
assert m1.model_dump() == m2.model_dump(), "a hit is the same message"
assert m1.content[0].type == "text" and m1.usage.output_tokens == 24, m1

# The stored JSON answer, streamed to the SDK: its text and its final message are the JSON answer's.
s3, text, final = stream(**ask)
assert cached(s3), s3
assert text == m1.content[0].text, (text, m1.content[0].text)
assert final.model_dump() == m1.model_dump(), (final.model_dump(), m1.model_dump())

# Thinking and a tool call, streamed first (live from the provider), then as JSON and as a replayed stream.
tools = [{
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}]
q = [{"role": "user", "content": "What is the weather in Paris?"}]
rich = dict(model=MODEL, max_tokens=1024, thinking={"type": "enabled", "budget_tokens": 512}, tools=tools, messages=q)
live_status, _, live = stream(**rich)
json_status, as_json = create(**rich)
replay_status, _, replayed = stream(**rich)
assert live_status == "MISS" and cached(json_status) and cached(replay_status), (live_status, json_status, replay_status)
assert live.model_dump() == as_json.model_dump() == replayed.model_dump(), "one message, three ways"
kinds = [b.type for b in as_json.content]
assert kinds == ["thinking", "text", "tool_use"], kinds
assert as_json.content[0].signature == live.content[0].signature != "", "thinking signatures byte-identical"
tool_use = as_json.content[2]
assert tool_use.id == live.content[2].id and tool_use.input == {"city": "Paris", "unit": "celsius"}, tool_use
assert as_json.stop_reason == "tool_use"

# The tool round trip: the result goes back, the answer is cached like any other.
follow = q + [
    {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in as_json.content]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "18 C, sunny"}]},
]
s4, a4 = create(**{**rich, "messages": follow})
s5, a5 = create(**{**rich, "messages": follow})
assert s4 == "MISS" and cached(s5), (s4, s5)
assert a4.stop_reason == "end_turn" and a4.model_dump() == a5.model_dump()

# count_tokens goes through, and is cached.
c1 = client.messages.count_tokens(model=MODEL, messages=q)
assert c1.input_tokens == 12, c1

# recache's own errors reach the SDK as Anthropic errors.
bad = anthropic.Anthropic(base_url=os.environ["RECACHE_URL"], api_key="sk-nobody", max_retries=0)
try:
    bad.messages.create(**ask)
    raise AssertionError("an unknown key was served")
except anthropic.AuthenticationError as e:
    assert e.status_code == 401 and e.body["error"]["type"] == "authentication_error", e.body

print("anthropic sdk: all checks passed")
