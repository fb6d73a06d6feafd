"""Constrained sampling (refllm.engine.structured): replies that are JSON, or JSON a schema
allows; the mask it puts on each draw; the formats it refuses, in Python and on the CLI."""

from __future__ import annotations

import json
import sys

import jsonschema
import numpy as np
import pytest

import refllm
from refllm.cli import main
from refllm.engine import SamplingOptions, Session, Transformer, prompt_tokens
from refllm.engine.structured import FormatError, OutputConstraint, _vocabulary, closed_objects, special_tokens
from refllm.errors import RefllmError
from refllm.tokenizer import Tokenizer

SCHEMA = {"type": "object",
          "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                         "color": {"enum": ["red", "green", "blue"]},
                         "hobbies": {"type": "array", "items": {"type": "string"}, "maxItems": 3}},
          "required": ["name", "age", "color", "hobbies"]}
PERSON = "Describe a person as JSON with a name, an age, a favourite color and hobbies."
NUM_PREDICT = 120           # a bound: each reply below must end by itself well before it


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    model = refllm.open(smollm2_path)
    return model, Transformer(model, "ggml"), Tokenizer.from_model(model)


def reply(loaded, fmt, prompt: str, **options) -> tuple[str, Session]:
    model, net, tok = loaded
    session = Session(net, 512)
    constraint = OutputConstraint.from_format(fmt, tok)
    text = "".join(session.generate(prompt_tokens(tok, model.metadata, prompt), tok,
                                    SamplingOptions(num_predict=NUM_PREDICT, **options), constraint=constraint))
    return text, session


def piece(tok: Tokenizer, token: int) -> bytes:
    return tok.token_to_piece(token, special=True)


# -- whole replies ----------------------------------------------------------------------------

@pytest.mark.parametrize("options", [{"temperature": 0}, {"temperature": 0.8, "seed": 7},
                                     {"temperature": 1.5, "seed": 3}])
def test_a_schema_reply_is_valid_and_ends_by_itself(smollm2, options):
    text, session = reply(smollm2, SCHEMA, PERSON, **options)
    jsonschema.validate(json.loads(text), SCHEMA)
    assert session.stats.done_reason == "stop"
    assert session.stats.eval_count < NUM_PREDICT


def test_json_mode_gives_a_json_object(smollm2):
    text, session = reply(smollm2, "json", "List three fruits and their colors as JSON.", temperature=0)
    assert isinstance(json.loads(text), dict)         # ollama's "json" is an object at the top
    assert session.stats.done_reason == "stop"
    assert session.stats.eval_count < NUM_PREDICT


def test_without_a_format_the_reply_is_not_json(smollm2):
    # the check above means something: unconstrained, this prompt gets prose
    model, net, tok = smollm2
    session = Session(net, 512)
    text = "".join(session.generate(prompt_tokens(tok, model.metadata, PERSON), tok,
                                    SamplingOptions(num_predict=30, temperature=0)))
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_gemma3_schema_reply(gemma3_path):
    model = refllm.open(gemma3_path)
    text, session = reply((model, Transformer(model, "ggml"), Tokenizer.from_model(model)), SCHEMA, PERSON,
                          temperature=0)
    jsonschema.validate(json.loads(text), SCHEMA)
    assert session.stats.done_reason == "stop"


# -- the mask ---------------------------------------------------------------------------------

def replay(constraint: OutputConstraint, tok: Tokenizer, text: str) -> list[tuple[np.ndarray, bool]]:
    """The mask and `done` before each token of `text`, accepting each token."""
    states = []
    for t in tok.tokenize(text, add_special=False):
        states.append((constraint.mask(), constraint.done))
        assert states[-1][0][t], f"{piece(tok, t)!r} was not allowed"
        constraint.accept(t)
    return states


def test_end_of_generation_only_where_the_json_is_complete(smollm2):
    _, _, tok = smollm2
    eog = sorted(tok.vocab.eog_ids)
    special = special_tokens(tok)
    for fmt, text in [(SCHEMA, '{"name": "Ann", "age": 30, "color": "red", "hobbies": ["chess"]}'),
                      ("json", '{"a": [1, 2.5, {"b": null}], "c": "x"}')]:
        constraint = OutputConstraint.from_format(fmt, tok)
        for mask, done in replay(constraint, tok, text):
            assert not mask[eog].any()
            assert not (mask & special).any()          # special tokens never, EOG included here
            assert not done
        assert constraint.done
        final = constraint.mask()
        assert final[eog].all() and final.sum() == len(eog)


def test_a_token_the_schema_forbids_is_masked(smollm2):
    _, _, tok = smollm2
    constraint = OutputConstraint.from_format(SCHEMA, tok)
    replay(constraint, tok, '{"name": "Ann", "age": ')
    mask = constraint.mask()
    quote, digit, letter = (tok.tokenize(s, add_special=False) for s in ('"', "4", "x"))
    assert mask[digit].all()                            # an integer may start here
    assert not mask[quote].any() and not mask[letter].any()
    # and every allowed token starts the integer (or is one)
    allowed = [piece(tok, int(t)) for t in np.flatnonzero(mask)]
    assert allowed and all(p[:1] in b"-0123456789" for p in allowed)
    with pytest.raises(ValueError, match="not allowed"):
        constraint.accept(quote[0])


def test_json_mode_starts_with_an_object(smollm2):
    _, _, tok = smollm2
    mask = OutputConstraint.from_format("json", tok).mask()
    allowed = [piece(tok, int(t)) for t in np.flatnonzero(mask)]
    assert allowed and all(p.startswith(b"{") for p in allowed)


def test_the_tokenizer_is_built_once(smollm2):
    _, _, tok = smollm2
    assert _vocabulary(tok) is _vocabulary(tok)


def test_objects_listing_properties_allow_no_others():
    schema = {"type": "object",
              "properties": {"properties": {"type": "string"},        # a property named "properties"
                             "list": {"type": "array", "items": {"properties": {"x": {}}}}},
              "$defs": {"Open": {"properties": {}, "additionalProperties": True}}}
    closed = closed_objects(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["properties"] == {"type": "string"}
    assert closed["properties"]["list"]["items"]["additionalProperties"] is False
    assert closed["$defs"]["Open"]["additionalProperties"] is True
    assert "additionalProperties" not in schema                     # the caller's schema is kept


# -- formats it refuses -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_path):
    return Tokenizer.from_model(refllm.open(smollm2_path))


def test_no_format_is_no_constraint(smollm2_tokenizer):
    assert OutputConstraint.from_format(None, smollm2_tokenizer) is None
    assert OutputConstraint.from_format("", smollm2_tokenizer) is None


@pytest.mark.parametrize("fmt, message", [
    (42, 'expected "json" or a JSON schema (an object), not 42 (int)'),
    ([1], 'expected "json" or a JSON schema (an object), not [1] (list)'),
    ("yaml", "expected \"json\" or a JSON schema (an object), not 'yaml'"),
    ({"type": "invalid"}, "llguidance rejects the JSON schema: Invalid type: invalid"),
    ({"type": "integer", "minimum": 5, "maximum": 1}, "llguidance rejects the JSON schema: Unsatisfiable"),
])
def test_bad_formats_are_named(smollm2_tokenizer, fmt, message):
    with pytest.raises(FormatError) as e:
        OutputConstraint.from_format(fmt, smollm2_tokenizer)
    assert message in str(e.value)
    assert isinstance(e.value, RefllmError) and isinstance(e.value, ValueError)


def test_without_llguidance_the_error_says_what_to_install(smollm2_tokenizer, monkeypatch):
    monkeypatch.setitem(sys.modules, "llguidance", None)          # import llguidance fails
    with pytest.raises(RefllmError, match=r'pip install "refllm\[serve\]"'):
        OutputConstraint.from_format("json", smollm2_tokenizer)


@pytest.mark.parametrize("value, message", [
    ("yaml", "--format: expected json, a JSON schema file or JSON schema text; the text is not JSON"),
    ("[1, 2]", "--format: expected \"json\" or a JSON schema (an object), not [1, 2] (list)"),
    ('{"type": "invalid"}', "--format: llguidance rejects the JSON schema: Invalid type: invalid"),
    ("missing.json", "--format: cannot read missing.json"),
])
def test_cli_bad_format_is_one_line_and_exit_2(smollm2_path, capsys, value, message):
    with pytest.raises(SystemExit) as e:
        main(["generate", str(smollm2_path), "Hi", "--format", value, "-n", "4"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_cli_format_from_a_schema_file(smollm2_path, tmp_path, capsys):
    path = tmp_path / "person.json"
    path.write_text(json.dumps(SCHEMA))
    with pytest.raises(SystemExit) as e:
        main(["generate", str(smollm2_path), PERSON, "--format", str(path), "--temperature", "0",
              "-n", str(NUM_PREDICT)])
    assert e.value.code == 0
    jsonschema.validate(json.loads(capsys.readouterr().out), SCHEMA)
