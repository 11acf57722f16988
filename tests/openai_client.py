"""Drives a running `mimo serve` with the official `openai` Python client.

Run by tests/server.rs (test `official_openai_client`) when MIMO_OPENAI_PYTHON names a Python
with `openai` installed (.ci/install-openai makes one):

    python tests/openai_client.py --base-url http://127.0.0.1:8000/v1

Checks chat completions and completions, streaming and not, the shapes the client parses
(ids, objects, finish reasons, usage), stop strings, and that bad input is a 400 the client
raises as BadRequestError. Exits non-zero with a message on the first failure.
"""

import argparse
import sys

import openai
from openai import OpenAI


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True, help="the server's /v1 URL")
    args = parser.parse_args()
    client = OpenAI(base_url=args.base_url, api_key="unused", timeout=60, max_retries=0)

    models = client.models.list()
    check(len(models.data) == 1, f"one served model, got {models.data}")
    model = models.data[0].id

    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a river."},
    ]
    chat = client.chat.completions.create(
        model=model, messages=messages, max_tokens=12, temperature=0, seed=1
    )
    check(chat.object == "chat.completion", f"object {chat.object}")
    check(chat.id.startswith("chatcmpl-"), f"id {chat.id}")
    check(chat.model == model, f"model {chat.model}")
    choice = chat.choices[0]
    check(choice.message.role == "assistant", f"role {choice.message.role}")
    check(isinstance(choice.message.content, str), "content is text")
    check(choice.finish_reason in ("stop", "length"), f"finish_reason {choice.finish_reason}")
    usage = chat.usage
    check(usage.completion_tokens >= 1 and usage.prompt_tokens >= 1, f"usage {usage}")
    check(usage.total_tokens == usage.prompt_tokens + usage.completion_tokens, "total_tokens")

    # Streaming gives the same text (greedy), then a usage chunk.
    pieces, finish, stream_usage, roles = [], None, None, []
    stream = client.chat.completions.create(
        model="any-name-is-accepted",
        messages=messages,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        check(chunk.object == "chat.completion.chunk", f"chunk object {chunk.object}")
        check(chunk.model == "any-name-is-accepted", f"chunk model {chunk.model}")
        if chunk.usage is not None:
            stream_usage = chunk.usage
            check(chunk.choices == [], "the usage chunk has no choices")
            continue
        delta = chunk.choices[0].delta
        if delta.role:
            roles.append(delta.role)
        if delta.content:
            pieces.append(delta.content)
        if chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    check(roles == ["assistant"], f"roles {roles}")
    check("".join(pieces) == choice.message.content,
          f"streamed {''.join(pieces)!r} != {choice.message.content!r}")
    check(finish == choice.finish_reason, f"stream finish_reason {finish}")
    check(stream_usage is not None and stream_usage.completion_tokens == usage.completion_tokens,
          f"stream usage {stream_usage}")

    # Completions, both ways.
    comp = client.completions.create(
        model=model, prompt="The river", max_tokens=10, temperature=0, extra_body={"ignore_eos": True}
    )
    check(comp.object == "text_completion", f"object {comp.object}")
    check(comp.id.startswith("cmpl-"), f"id {comp.id}")
    check(comp.choices[0].finish_reason == "length", f"finish {comp.choices[0].finish_reason}")
    check(comp.usage.completion_tokens == 10, f"usage {comp.usage}")
    text = comp.choices[0].text
    check(len(text) > 0, "completion text is empty")
    streamed = []
    for chunk in client.completions.create(
        model=model, prompt="The river", max_tokens=10, temperature=0, stream=True,
        extra_body={"ignore_eos": True},
    ):
        check(chunk.object == "text_completion", f"chunk object {chunk.object}")
        streamed.append(chunk.choices[0].text)
    check("".join(streamed) == text, f"streamed {''.join(streamed)!r} != {text!r}")

    # A stop string from the middle of the text ends it there, excluded.
    stop = text[len(text) // 2:len(text) // 2 + 2]
    if stop.strip():
        cut = client.completions.create(
            model=model, prompt="The river", max_tokens=10, temperature=0, stop=[stop],
            extra_body={"ignore_eos": True},
        )
        check(cut.choices[0].text == text[:text.find(stop)], f"stop {stop!r}: {cut.choices[0].text!r}")
        check(cut.choices[0].finish_reason == "stop", "finish_reason after a stop string")

    # Bad input is a 400 the client raises, with the server's message.
    for bad in ({"max_tokens": 0}, {"temperature": -1}, {"n": 2}):
        try:
            client.chat.completions.create(model=model, messages=messages, **bad)
        except openai.BadRequestError as e:
            check(e.status_code == 400, f"{bad}: status {e.status_code}")
            check(e.body and e.body.get("message"), f"{bad}: no message in {e.body}")
        else:
            raise AssertionError(f"{bad} was accepted")

    print(f"openai {openai.__version__} client: all checks passed against {model}")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"openai client check failed: {e}", file=sys.stderr)
        sys.exit(1)
