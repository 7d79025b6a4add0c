"""Google's official Gen AI SDK (google-genai) against recache (tests/sdk.rs runs it).

Every check is an assert: a failure exits non-zero with its message.
RECACHE_URL is the gateway, RECACHE_KEY a tenant's client key.
"""
import os

from google import genai
from google.genai import types

client = genai.Client(
    api_key=os.environ["RECACHE_KEY"],
    http_options=types.HttpOptions(base_url=os.environ["RECACHE_URL"], api_version="v1beta"),
)
MODEL = "gemini-2.5-flash"


def status(resp):
    """HIT, MISS, or SHARED (a repeat answered by the first one's provider call)."""
    headers = {k.lower(): v for k, v in (resp.sdk_http_response.headers or {}).items()}
    s = headers.get("x-recache-status")
    return "SHARED" if s == "MISS" and headers.get("x-recache-coalesced") == "true" else s


def cached(s):
    return s in ("HIT", "SHARED")


def stream(**kw):
    chunks = list(client.models.generate_content_stream(**kw))
    return status(chunks[0]), chunks


def dump(resp):
    d = resp.model_dump(exclude_none=True)
    d.pop("sdk_http_response", None)
    d.pop("automatic_function_calling_history", None)
    return d


# JSON: a miss, then a hit.
r1 = client.models.generate_content(model=MODEL, contents="What does a cache gateway do?")
r2 = client.models.generate_content(model=MODEL, contents="What does a cache gateway do?")
assert status(r1) == "MISS" and cached(status(r2)), (status(r1), status(r2))
assert dump(r1) == dump(r2)
assert r1.text.startswith("stub answer #1"), r1.text

# The stored answer, streamed: the chunks' text is the answer's.
s3, chunks = stream(model=MODEL, contents="What does a cache gateway do?")
assert cached(s3), s3
assert "".join(c.text or "" for c in chunks) == r1.text
assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP

# Thoughts and a function call, streamed live first, then as JSON and as a replayed stream.
weather = types.FunctionDeclaration(
    name="get_weather",
    description="The weather in a city",
    parameters=types.Schema(type="OBJECT", properties={"city": types.Schema(type="STRING")}),
)
config = types.GenerateContentConfig(
    tools=[types.Tool(function_declarations=[weather])],
    automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    thinking_config=types.ThinkingConfig(include_thoughts=True),
)
rich = dict(model=MODEL, contents="What is the weather in Paris?", config=config)
live_status, live = stream(**rich)
as_json = client.models.generate_content(**rich)
replay_status, replayed = stream(**rich)
assert live_status == "MISS" and cached(status(as_json)) and cached(replay_status), (live_status, status(as_json), replay_status)
parts = as_json.candidates[0].content.parts
replayed_parts = [p for c in replayed for p in c.candidates[0].content.parts]
assert [p.model_dump(exclude_none=True) for p in replayed_parts] == [p.model_dump(exclude_none=True) for p in parts], "a replay chunks the stored parts"
assert parts[0].thought is True and parts[0].thought_signature, parts[0]
live_parts = [p for c in live for p in c.candidates[0].content.parts]
assert live_parts[0].thought_signature == parts[0].thought_signature, "thought signatures byte-identical"
call = as_json.function_calls[0]
assert call.name == "get_weather" and call.args == {"city": "Paris"}, call

# The function's result goes back; that answer is cached like any other.
follow = [
    types.Content(role="user", parts=[types.Part.from_text(text="What is the weather in Paris?")]),
    as_json.candidates[0].content,
    types.Content(role="user", parts=[types.Part.from_function_response(name="get_weather", response={"temp": "18 C"})]),
]
a4 = client.models.generate_content(model=MODEL, contents=follow, config=config)
a5 = client.models.generate_content(model=MODEL, contents=follow, config=config)
assert status(a4) == "MISS" and cached(status(a5)), (status(a4), status(a5))
assert dump(a4) == dump(a5)

print("google-genai sdk: all checks passed")
