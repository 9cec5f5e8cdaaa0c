"""The key is redacted in every JSON spelling: each character as itself, as ``\\uXXXX`` in
any case (a surrogate pair beyond the BMP), or as its short escape (``\\/`` is PHP's default
for '/'; ``\\"``, ``\\\\``, ``\\n``...), mixed freely; the body stays JSON."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from fakes import Script
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quickmj import BatchItem, QuickMJError, run_batch
from quickmj._config import Secret
from quickmj._converter import _has_lone_surrogate, loads

SHORT = {'"': '\\"', "\\": "\\\\", "/": "\\/", "\b": "\\b", "\f": "\\f", "\n": "\\n",
         "\r": "\\r", "\t": "\\t"}  # fmt: skip
# A key holding every character JSON has a short escape for that a header can carry.
KEY = 'sk-Zq8v/LkP3"dist\\inctive-7f3c9e1a'


def units(c: str) -> list[int]:
    code = ord(c)
    if code <= 0xFFFF:
        return [code]
    code -= 0x10000
    return [0xD800 + (code >> 10), 0xDC00 + (code & 0x3FF)]


def php(text: str) -> str:
    """How PHP's json_encode writes ``text`` inside a string: ``\\/``, ``\\"``, ``\\\\``."""
    return json.dumps(text)[1:-1].replace("/", "\\/")


def decoded_strings(value: Any) -> list[str]:
    """Every string (keys and values) in a parsed JSON value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *decoded_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in decoded_strings(v)]
    return []


@pytest.mark.parametrize(
    "spelling",
    [
        php(KEY),  # PHP: \/ \" \\
        json.dumps(KEY)[1:-1],  # Python, Go, Java: \" \\ and a raw '/'
        json.dumps(KEY)[1:-1].replace("\\\\", "\\u005C").replace("/", "\\u002f"),
        "".join(f"\\u{ord(c):04X}" if i % 2 else SHORT.get(c, c) for i, c in enumerate(KEY)),
    ],
    ids=["php", "python", "mixed-u", "alternating"],
)
def test_short_escapes_are_redacted(spelling: str) -> None:
    """Each spelling of a key with '/', '"' and '\\' is replaced; the body still parses."""
    secret = Secret(KEY)
    body = '{"code": 4, "description": "bad key ' + spelling + '", "k": "' + spelling + '"}'
    for clean in (secret.redact_bytes(body.encode()).decode(), secret.redact(body)):
        parsed = json.loads(clean)
        assert {"bad key ***", "***"} == {parsed["description"], parsed["k"]}
        assert spelling not in clean and KEY not in clean


def test_astral_characters_as_surrogate_pairs() -> None:
    """A character beyond the BMP is escaped as a surrogate pair (any case)."""
    key = "sk-\U0001f600-abc"
    secret = Secret(key)
    for body in (json.dumps({"d": key}), json.dumps({"d": key}).upper().replace("\\U", "\\u")):
        clean = secret.redact_bytes(body.encode())
        assert key not in json.dumps(json.loads(clean), ensure_ascii=False)


def test_honest_answers_take_the_fast_path() -> None:
    """A key holding '/' does not send every PHP answer (a ``\\/`` in each URL) down the
    full search: the short escape only counts next to the rest of the key."""
    secret = Secret(KEY)
    tasks = [{"id": str(i), "imageUrl": f"https://cdn.test/{i}.png", "x": "猫"} for i in range(50)]
    for body in (json.dumps(tasks).replace("/", "\\/"), json.dumps(tasks, ensure_ascii=False)):
        assert not secret._has_escape(body.encode())
        assert secret.redact_bytes(body.encode()) == body.encode()
    # ...while the rest of the key next to a short escape does.
    assert secret._has_escape(php(f"x {KEY}").encode())


def test_escape_boundaries_are_kept() -> None:
    """A match that starts or ends inside an escape is widened to the whole escape, so the
    body stays JSON (``\\nabc`` holds the key ``nabc`` only as plain text)."""
    secret = Secret("nabc-key")
    body = '{"d": "line\\nabc-key end", "e": "\\\\nabc-key"}'
    parsed = json.loads(secret.redact_bytes(body.encode()))
    assert "nabc-key" not in parsed["d"] + parsed["e"]
    ends = Secret("abc-key\\")  # ends in a backslash: the plain match stops inside \"
    body = json.dumps({"d": 'abc-key\\"x', "e": "abc-key\\"})
    parsed = json.loads(ends.redact_bytes(body.encode()))
    assert "abc-key\\" not in parsed["d"] + parsed["e"]


ALPHABET = 'ab7Z-_/"\\+=.\u00e9\u4e2d\U0001f600\t\n'


def spell(data: st.DataObject, text: str) -> str:
    """``text`` as one JSON encoder might write it inside a string: each character as
    itself (where JSON allows), ``\\uXXXX`` in a random case, or its short escape."""
    out = []
    for c in text:
        choices = ["u"]
        if c not in '"\\' and ord(c) >= 0x20:
            choices.append("raw")
        if c in SHORT:
            choices.append("short")
        how = data.draw(st.sampled_from(choices))
        if how == "raw":
            out.append(c)
        elif how == "short":
            out.append(SHORT[c])
        else:
            for unit in units(c):
                digits = f"{unit:04x}"
                cased = [data.draw(st.sampled_from([d, d.upper()])) for d in digits]
                out.append("\\u" + "".join(cased))
    return "".join(out)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=st.text(alphabet=ALPHABET, min_size=4, max_size=14),
    before=st.text(alphabet=ALPHABET + " ,:{}[]u0", max_size=6),
    after=st.text(alphabet=ALPHABET + " ,:{}[]u0", max_size=6),
    other=st.text(alphabet=ALPHABET + " ,:{}[]u0", max_size=10),
    twice=st.booleans(),
    data=st.data(),
)
def test_every_spelling_is_redacted_and_the_body_still_parses(
    key: str, before: str, after: str, other: str, twice: bool, data: st.DataObject
) -> None:
    """Random keys (with '/', '"', '\\', control and non-ASCII characters) spelled by random
    encoders' choices: the redacted body parses, and neither its text nor any decoded
    string holds the key."""
    secret = Secret(key)
    said = spell(data, before + key + after + (key if twice else ""))
    body = '{"code": 4, "description": "' + said + '", "other": "' + spell(data, other) + '"}'
    assert key in json.loads(body)["description"]
    for clean in (secret.redact_bytes(body.encode()).decode(), secret.redact(body)):
        parsed = json.loads(clean)
        assert not any(key in s for s in decoded_strings(parsed))
        assert key not in clean


async def test_php_echo_never_reaches_the_manifest_or_the_journal(tmp_path: Path) -> None:
    """A relay that echoes the key PHP-style in a submit answer and a task's failReason:
    the batch's files and its errors hold no spelling of it."""
    echo = php(KEY)
    script = Script(
        {
            "POST /mj/submit/imagine": {
                "body": '{"code": 1, "description": "ok for ' + echo + '", "result": "1"}'
            },
            "POST /mj/task/list-by-condition": {
                "body": '[{"id": "1", "status": "FAILURE", "failReason": "key ' + echo + '"}]'
            },
            "GET /mj/task/1/fetch": {
                "body": '{"id": "1", "status": "FAILURE", "failReason": "key ' + echo + '"}'
            },
        }
    )
    async with script.client(api_key=KEY) as mj:
        try:
            await run_batch(mj, [BatchItem("a cat")], tmp_path, download=False, timeout=10)
        except QuickMJError as exc:  # pragma: no cover - the failure is a row, not a raise
            assert KEY not in str(exc)
    assert_no_spelling_in(tmp_path)


def assert_no_spelling_in(out: Path) -> None:
    """No file under ``out`` holds the key, its PHP or Python spelling, or a JSON line
    whose decoded strings hold it."""
    echo = php(KEY)
    written = [p for p in out.rglob("*") if p.is_file()]
    assert written
    for path in written:
        text = path.read_text("utf-8", "replace")
        assert KEY not in text and echo not in text and json.dumps(KEY)[1:-1] not in text
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            assert not any(KEY in s for s in decoded_strings(row)), path.name


BAD_KEYS = {
    "lone surrogate": "sk-\ud800distinctive42",
    "undecodable byte (env)": "sk-\udcffdistinctive42",
    "newline inside": "sk-distinc\ntive42",
    "header injection": "sk-distinctive42\r\nX-Evil: 1",
    "NUL": "sk-distinctive42\x00",
    "DEL": "sk-distinc\x7ftive42",
}


@pytest.mark.parametrize("key", list(BAD_KEYS.values()), ids=list(BAD_KEYS))
async def test_a_key_that_is_not_valid_text_is_a_configuration_error(key: str) -> None:
    """A key with a lone surrogate or a control character: ConfigurationError from
    AsyncClient(...), Client(...) and an Account, saying what and where, not the key."""
    from quickmj import AsyncClient, Client, ConfigurationError
    from quickmj._accounts import Account

    made: list[Any] = []
    for build in (
        lambda: AsyncClient(key, base_url="http://relay.test"),
        lambda: Client(key, base_url="http://relay.test"),
        lambda: Account(key),
    ):
        with pytest.raises(ConfigurationError, match="the API key is not valid text") as info:
            made.append(build())
        said = str(info.value) + repr(info.value)
        assert "distinc" not in said and "tive42" not in said
        assert info.value.__cause__ is None and info.value.__context__ is None
    assert not made


def test_the_cli_names_a_bad_key_in_the_environment(tmp_path: Path) -> None:
    """QUICKMJ_API_KEY holding bytes that are not UTF-8 (decoded with surrogateescape) or a
    newline: a one-line error, a non-zero exit, no traceback, no key."""
    import os
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items() if not k.startswith("QUICKMJ_")}
    for key in ("sk-\udcffdistinctive42", "sk-distinc\ntive42"):
        done = subprocess.run(
            [sys.executable, "-m", "quickmj", "fetch", "1"], cwd=tmp_path, capture_output=True,
            env={**clean, "QUICKMJ_API_KEY": key, "QUICKMJ_BASE_URL": "http://127.0.0.1:9"},
            timeout=120,
        )  # fmt: skip
        err = done.stderr.decode("utf-8", "replace")
        assert 0 != done.returncode
        assert "the API key is not valid text" in err and "Traceback" not in err, err
        assert b"distinc" not in done.stderr + done.stdout


def test_one_scan_for_key_escapes_and_lone_surrogates_misses_neither() -> None:
    """redact_answer's single scan says "plain" only when neither exact check would fire:
    no escaped key character (the key is then removed) and no lone surrogate escape (the
    parser then repairs it), whatever the mix of pairs, lone halves and other escapes."""
    secret = Secret("sk-bench-0123456789abcdef")
    pieces = [b"\\ud83c", b"\\udfa8", b"\\uD83D", b"\\uDE00", b"\\u0026", b"\\u0073", b"\\\\", b"a"]
    pieces += [b"\\u006B", b"\\ud8", b"\\udcx", b"\\u", b"d"]  # upper-case key escape, cut escapes
    rng = random.Random(7)
    plain_seen = 0
    for _ in range(3000):
        body = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))
        redacted, plain = secret.redact_answer(body)
        exact = _has_lone_surrogate(body) or secret._has_escape(body)
        assert not (plain and exact), body
        assert redacted == secret.redact_bytes(body)
        plain_seen += plain
    assert 0 < plain_seen < 3000  # both outcomes were exercised
    # A lone surrogate in a plain-looking answer is still repaired by the parser.
    body, plain = secret.redact_answer(b'["\\u0026\\ud83c\\udfa8", "\\ud800"]')
    assert not plain
    assert loads(body, plain=plain) == ["&\U0001f3a8", "\ufffd"]
