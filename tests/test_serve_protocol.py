"""The pure parts of `runner serve`: request parsing (each bad field named) and stop strings held
back across streamed pieces. No model; the real server is exercised in test_serve.py."""
from __future__ import annotations

import pytest

from runner.serve.protocol import ApiError, parse_chat, parse_completion, parse_json
from runner.serve.stops import IncrementalDecoder, StopScanner

KNOWN = {"quickstart": "quickstart"}
USER = [{"role": "user", "content": "hi"}]


def feed_all(stops, pieces):
    scanner = StopScanner(stops)
    out = [scanner.feed(p) for p in pieces]
    out.append(scanner.flush())
    return "".join(out), out, scanner.stopped


@pytest.mark.parametrize("pieces", [
    ["I am Nova", ", made by Acme Labs."],
    ["I am No", "va, made by Ac", "me", " Labs."],
    list("I am Nova, made by Acme Labs."),
])
def test_stop_found_across_piece_boundaries(pieces):
    text, out, stopped = feed_all(["Acme"], pieces)
    assert text == "I am Nova, made by " and stopped


def test_possible_stop_prefix_is_held_back_then_released():
    scanner = StopScanner(["</answer>"])
    assert scanner.feed("x </ans") == "x "  # "</ans" could start the stop string: held
    assert scanner.feed("wer is y") == "</answer is y"  # it did not: released
    assert scanner.flush() == "" and not scanner.stopped
    scanner = StopScanner(["END"])
    assert scanner.feed("the E") == "the " and scanner.flush() == "E"  # held text is never lost at the end


def test_earliest_of_several_stops_wins_and_overlapping_prefixes():
    assert feed_all(["c", "ab"], ["xa", "bc"])[0] == "x"
    assert feed_all(["aab"], ["a", "a", "a", "b", "zz"])[0] == "a"
    assert feed_all([], ["a", "b"])[0] == "ab"


def test_incremental_decoder_joins_to_the_whole_text():
    from tests.tiny_tokenizer import tiny_tokenizer

    tok = tiny_tokenizer()
    ids = tok("héllo wörld, ünïcode ✓ text", add_special_tokens=False)["input_ids"]
    decoder = IncrementalDecoder(tok)
    pieces = [decoder.add(ids[:i], final=i == len(ids)) for i in range(1, len(ids) + 1)]
    assert "".join(pieces) == tok.decode(ids, skip_special_tokens=True)
    assert all("\ufffd" not in p for p in pieces)


def test_chat_request_parsed():
    req = parse_chat({"model": "quickstart", "messages": [{"role": "developer", "content": "be brief"},
                                                          {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                      "max_completion_tokens": 7, "temperature": 0, "stop": "x", "seed": 3, "stream": True,
                      "stream_options": {"include_usage": True}, "user": "u1"}, KNOWN)
    assert req.messages == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert (req.sampling.max_tokens, req.sampling.temperature, req.sampling.stop, req.sampling.seed) == (7, 0.0, ("x",), 3)
    assert req.stream and req.include_usage


@pytest.mark.parametrize("change, status, param", [
    ({"model": "gpt-4"}, 404, "model"),
    ({"model": None}, 400, "model"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "user"}]}, 400, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, 400, "messages[0].content"),
    ({"n": 3}, 400, "n"),
    ({"top_p": 0}, 400, "top_p"),
    ({"temperature": "hot"}, 400, "temperature"),
    ({"temperature": True}, 400, "temperature"),
    ({"max_tokens": 1.5}, 400, "max_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"stop": [""]}, 400, "stop"),
    ({"seed": "1"}, 400, "seed"),
    ({"stream": "yes"}, 400, "stream"),
    ({"tools": []}, 400, "tools"),
    ({"logprobs": True}, 400, "logprobs"),
])
def test_bad_chat_fields_name_the_field(change, status, param):
    with pytest.raises(ApiError) as caught:
        parse_chat({"model": "quickstart", "messages": USER, **change}, KNOWN)
    assert (caught.value.status, caught.value.param) == (status, param)
    assert set(caught.value.body()["error"]) == {"message", "type", "param", "code"}


def test_completion_request_and_bad_json():
    req = parse_completion({"model": "quickstart", "prompt": ["once upon"], "max_tokens": 4, "echo": True}, KNOWN)
    assert (req.prompt, req.sampling.max_tokens, req.echo) == ("once upon", 4, True)
    with pytest.raises(ApiError) as caught:
        parse_completion({"model": "quickstart", "prompt": ["a", "b"]}, KNOWN)
    assert caught.value.param == "prompt"
    for raw in (b"{", b"\xff\xfe", b"[1]", b'"text"'):
        with pytest.raises(ApiError) as caught:
            parse_json(raw)
        assert caught.value.status == 400 and caught.value.code == "invalid_json"
