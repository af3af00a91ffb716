"""Redaction: API keys, tokens and passwords are replaced with ``[REDACTED]`` before anything is
written, and :func:`scrub_file` removes them from a trace file written without redaction.

Two kinds of rules:

* **Text rules** find secrets inside any string: OpenAI / Anthropic (``sk-...``), Google
  (``AIza...``) and AWS (``AKIA...`` / ``ASIA...``) keys, ``Bearer`` tokens, JWTs, private key
  blocks, credentials in URLs, and ``name=value`` / ``"name": "value"`` pairs whose name says
  secret (``api_key``, ``password``, ``Authorization``, ...). A rule replaces only the secret:
  never a quote, never part of an escape sequence, never JSON structure. So a JSON document inside
  a string (``gen_ai.input.messages``) stays valid JSON with the same structure; quotes and line
  breaks around and inside a secret may be escaped at any depth.
* **The attribute-name rule**: the value of an attribute whose *key* names a secret
  (``http.request.header.authorization``, ``...x-api-key``, ``db.password``, ...) is replaced
  whole, whatever it looks like. Counts such as ``gen_ai.usage.input_tokens`` never match.

Cost. The writer encodes each batch of spans as one JSON document anyway, so the text rules look
at that document first (``Redactor.scan``), and only the rows of a batch that may hold a secret
are walked and re-encoded. Each rule states what any of its matches must contain, in a form that
survives JSON escaping: single characters (``gates``, tested with ``in``, which is memchr) and a
short probe regex with a literal prefix. A gate missing from the document rules the rule out for
the whole batch at a few nanoseconds; a probe that finds nothing does the same for about 0.3 ns a
character. Probes are looser than their rules, never tighter: a probe miss proves the rule cannot
match any string in the document, so the shortcut is exact.

Extra patterns (``redact_patterns``) are kept exact the same way: the longest run of literal text
every match must contain is found by parsing the pattern, escaped as JSON escapes it, and looked
for in the document. A pattern without such a literal (``\\b\\d{16}\\b``) is checked against every
string of every batch. A user callable sees every string.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from otel_sqlite_exporter._config import Options

logger = logging.getLogger("otel_sqlite_exporter")

REDACTED = "[REDACTED]"
#: Stored instead of a string when a user's redaction callable raised or returned no string.
REDACTION_FAILED = "[REDACTION FAILED]"

_A = re.ASCII  # case-insensitive parts match ASCII letters only, so their gates can be exact

# -- the text rules -------------------------------------------------------------------------------

# A quote around a name or value, escaped any number of times (JSON inside a JSON string).
_QUOTE = r"""\\*["']"""
# Between a name and its value: a quoted name needs a quoted value (an unquoted one is a JSON
# number, true/false or null: replacing it would break the JSON); an unquoted name may have either.
_SEP = rf"(?:{_QUOTE}[ \t]*[:=][ \t]*{_QUOTE}|[ \t]*[:=][ \t]*(?:{_QUOTE})?)"
# For the names made only of letters common in every document (token, secret): no unquoted
# ``name: value``, so that their gates can be characters rare elsewhere (\, ' or =).
_SEP_QUOTED_OR_EQUALS = rf"(?:{_QUOTE}[ \t]*[:=][ \t]*{_QUOTE}|[ \t]*=[ \t]*(?:{_QUOTE})?)"
# A value ends at whitespace, a quote, a backslash or punctuation that delimits values. It cannot
# start with "[", so "[REDACTED]" is never redacted again, nor with ":": a quote taken for the
# value's opening one may have closed a JSON string instead (``{"password=":1}``), and then what
# follows is JSON structure, which starts with ":", ",", "}", "]" or a space, never with a value.
_VALUE = r"""[^\s"'\\,;&(){}\[\]<>:][^\s"'\\,;&(){}\[\]<>]*"""
# An optional scheme ("Basic"), then the credential; "Bearer [REDACTED]" is left as it is.
_AUTH_VALUE = (
    r"""(?:[A-Za-z][A-Za-z0-9-]*[ \t]+)?"""
    r"""[^\s"'\\,;:{}\[\]][^\s"'\\,;{}\[\]]*(?=[\s"'\\,;{}\[\]]|\Z)(?![ \t]*\[)"""
)
# What probes allow between a name and ":" / "=": quotes and backslashes in any number, spaces,
# tabs raw or escaped. Valid on JSON text and on decoded strings alike.
_PROBE_SEP = r"""(?:\\|["'])*(?:[ \t]|\\t)*[:=]"""
# Private key bodies: base64, PEM header lines, whitespace, and line breaks escaped at any depth.
# A body never swallows a quote or ends on a lone backslash.
_PEM_BODY = r"(?:[A-Za-z0-9+/=\s:,.-]|\\+[nrt/]|\\+u[0-9A-Fa-f]{4})"
_PEM_LABEL = r"[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"


class _Text:
    """A text being scanned. Which characters occur, and the lower-cased copy, are computed once
    and only when a rule asks."""

    __slots__ = ("_chars", "_lower", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._chars: dict[str, bool] = {}
        self._lower: str | None = None

    def has_any(self, chars: str) -> bool:
        for char in chars:
            found = self._chars.get(char)
            if found is None:
                found = self._chars[char] = char in self.text
            if found:
                return True
        return False

    @property
    def lower(self) -> str:
        if self._lower is None:
            self._lower = self.text.lower()
        return self._lower


class _Rule:
    """One way a secret looks: ``apply`` redacts a decoded string; ``possible`` says whether the
    rule may match any string encoded in a JSON text (False only when it cannot)."""

    __slots__ = ("always", "gates", "lowered", "name", "pattern", "probe", "replacement")

    def __init__(
        self,
        name: str,
        pattern: re.Pattern[str],
        replacement: str = REDACTED,
        *,
        gates: tuple[str, ...] = (),
        probe: re.Pattern[str] | None = None,
        lowered: bool = False,
    ) -> None:
        self.name = name
        self.pattern = pattern
        self.replacement = replacement
        self.gates = gates  # every gate needs one of its characters in the text
        self.probe = probe  # None: any text may match
        self.lowered = lowered  # the probe reads the lower-cased text
        self.always = probe is None and not gates

    def possible(self, text: _Text) -> bool:
        for gate in self.gates:
            if not text.has_any(gate):
                return False
        if self.probe is None:
            return True
        return self.probe.search(text.lower if self.lowered else text.text) is not None

    def apply(self, value: str) -> str:
        return self.pattern.sub(self.replacement, value)

    def __repr__(self) -> str:
        return f"<redaction rule {self.name}>"


class _LiteralRule(_Rule):
    """An extra pattern found through the longest literal every match contains."""

    __slots__ = ("escaped", "folded")

    def __init__(self, pattern: re.Pattern[str], literal: str, ignore_case: bool) -> None:
        # JSON escapes a string character by character, so a literal inside a string is, escaped,
        # inside the document.
        escaped = orjson.dumps(literal).decode()[1:-1]
        flags = re.IGNORECASE | (pattern.flags & re.ASCII) if ignore_case else 0
        super().__init__(pattern.pattern, pattern, probe=re.compile(re.escape(escaped), flags))
        self.escaped = escaped
        # Lower-casing is the same comparison as the pattern's only between ASCII texts.
        self.folded = escaped.lower() if ignore_case and escaped.isascii() else None

    def possible(self, text: _Text) -> bool:
        if self.folded is not None and text.text.isascii():
            return self.folded in text.lower
        return super().possible(text)


class _CallableRule(_Rule):
    """A user's ``(text) -> text``: every string goes through it. One that raises, or returns no
    string, never stops the writer; the string is then stored as ``[REDACTION FAILED]``."""

    __slots__ = ("_failed", "_function")

    def __init__(self, function: Callable[[str], str]) -> None:
        super().__init__(getattr(function, "__name__", "callable"), re.compile(""))
        self._function = function
        self._failed = 0

    def apply(self, value: str) -> str:
        try:
            result = self._function(value)
        except Exception as exc:  # noqa: BLE001 - a user's bug must not reach the application
            return self._failure(exc)
        if not isinstance(result, str):
            return self._failure(TypeError(f"returned {type(result).__name__}, not str"))
        return result

    def _failure(self, exc: BaseException) -> str:
        self._failed += 1
        if self._failed == 1:
            logger.error(
                "otel-sqlite-exporter: the redact callable %r failed (%s: %s); the text it was given "
                "is stored as %s, and further failures are not logged",
                self._function,
                type(exc).__name__,
                exc,
                REDACTION_FAILED,
            )
        return REDACTION_FAILED


def _rule(
    name: str,
    pattern: str,
    replacement: str = REDACTED,
    *,
    gates: tuple[str, ...],
    probe: str,
    lowered: bool = False,
) -> _Rule:
    return _Rule(
        name,
        re.compile(pattern, _A),
        replacement,
        gates=gates,
        probe=re.compile(probe, _A),
        lowered=lowered,
    )


# Names whose ``name: value`` text is redacted; each group has a character its gates can test.
_KEY_NAMES = r"(?:api|access|secret|client|auth|master|signing|encryption|subscription)[ _-]?key"
_TOKEN_NAMES = r"(?:access|refresh|id|auth|api|session|bearer|security|oauth|csrf|xsrf)[_-]?token"
_KEEP = r"\g<keep>" + REDACTED

# Order: provider keys first, so "Bearer sk-..." reads "Bearer [REDACTED]" rather than a name rule
# swallowing both; AWS before OpenAI, so that redacting once is redacting for good ("AKIA...sk-..."
# only shows the OpenAI key its word boundary once the AWS key is gone).
DEFAULT_RULES: tuple[_Rule, ...] = (
    _rule(
        "google-aws-key",
        r"AIza[0-9A-Za-z_-]{30,}|A(?:KIA|SIA)(?<![A-Z0-9]A[KS]IA)[A-Z0-9]{16}(?![A-Z0-9])",
        gates=("A", "I"),
        # No word boundaries here: escaped, a control character before the key ends in a digit.
        probe=r"A(?:Iza[0-9A-Za-z_-]{30}|[KS]IA[A-Z0-9]{16})",
    ),
    _rule(
        "openai-anthropic-key",
        # Not inside a word ("risk-..."), unless the letter before is a JSON escape ("\nsk-...").
        r"sk-(?:(?<![A-Za-z0-9]sk-)|(?<=\\[nrtbf]sk-)|(?<=\\u[0-9A-Fa-f]{4}sk-))[A-Za-z0-9_-]{20,}",
        # "-", "k" and "s" occur in almost every batch: no gates, the probe decides. Escaped, what
        # is before "sk-" is a non-letter or the end of an escape; a digit too, when the key starts
        # a span name (the head gives the name's length just before it).
        gates=(),
        probe=r"k-(?<=sk-)(?:(?<![A-Za-z]sk-)|(?<=\\[nrtbf]sk-)|(?<=\\u[0-9A-Fa-f]{4}sk-))[A-Za-z0-9_-]{20}",
    ),
    _rule(
        "bearer-token",
        r"(?P<keep>(?:Bearer|BEARER)[ \t]+)"
        # A long token, or a shorter one with a digit or punctuation: not "Bearer authentication".
        r"(?:[A-Za-z0-9._~+/-]{20,}|(?=[A-Za-z]*[0-9._~+/-])[A-Za-z0-9._~+/-]{8,})=*",
        _KEEP,
        gates=("B",),
        probe=r"B(?:earer|EARER)(?: |\\t)",
    ),
    _rule(
        "jwt",
        r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*",
        gates=("J",),
        probe=r"J(?<=eyJ)[A-Za-z0-9_-]{8,}\.eyJ",
    ),
    _rule(
        "private-key",
        # Up to its END line; a block cut short (a truncated text) is redacted to its end.
        rf"-----BEGIN{_PEM_LABEL}(?:{_PEM_BODY}*?-----END{_PEM_LABEL}|{_PEM_BODY}*)",
        gates=("K", "Y"),
        probe=r"PRIVATE KEY(?: BLOCK)?-----",
    ),
    _rule(
        "url-credentials",
        r"""(?P<keep>[A-Za-z][A-Za-z0-9+.-]*://[^\s/:@"'\\]+:)[^\s/@"'\\]+(?=@)""",
        _KEEP,
        gates=("@",),
        probe=r"""://[^\s/:@"']+:[^\s/@"']+@""",
    ),
    _rule(
        "authorization",
        rf"(?P<keep>(?i:(?:proxy-)?authorization){_SEP}){_AUTH_VALUE}",
        _KEEP,
        gates=("zZ",),
        probe=r"z(?<=authoriz)ation",
        lowered=True,
    ),
    _rule(
        "key-name",
        rf"(?P<keep>(?i:{_KEY_NAMES}){_SEP}){_VALUE}",
        _KEEP,
        gates=("yY",),
        probe=rf"y(?<=key){_PROBE_SEP}",
        lowered=True,
    ),
    _rule(
        "password",
        rf"(?P<keep>(?i:passw(?:or)?d){_SEP}){_VALUE}",
        _KEEP,
        gates=("wW",),
        probe=rf"w(?<=passw)(?:or)?d{_PROBE_SEP}",
        lowered=True,
    ),
    # A quoted name shows in JSON text as \" (or as '), an unquoted one needs "=".
    _rule(
        "token-name",
        rf"(?P<keep>(?i:{_TOKEN_NAMES}){_SEP_QUOTED_OR_EQUALS}){_VALUE}",
        _KEEP,
        gates=("\\'=",),
        probe=rf"token{_PROBE_SEP}",
        lowered=True,
    ),
    _rule(
        "secret-name",
        rf"(?P<keep>(?i:secret){_SEP_QUOTED_OR_EQUALS}){_VALUE}",
        _KEEP,
        gates=("\\'=",),
        probe=rf"cret(?<=secret){_PROBE_SEP}",
        lowered=True,
    ),
)

# When a text was cut short (input_text / output_text keep max_content_length characters), a
# secret may have lost its end, and with it what its rule needs. From a recognisable start to the
# end of the text, it is redacted too. Only for stored texts whose original is gone (scrub_file);
# the writer redacts the whole text before cutting it.
_CUT_SECRET = re.compile(
    r"(?:sk-(?<![A-Za-z0-9]sk-)|AIza|(?<![A-Z0-9])A[KS]IA|eyJ|(?:Bearer|BEARER)[ \t]+)"
    r"[A-Za-z0-9._~+/=-]{4,}\Z"
    # user:password in a URL, but not host:port
    r"|(?<=://)[^\s/:@\"'\\]+:(?![0-9]*\Z)[^\s/@\"'\\]*\Z",
    _A,
)

# The attribute-name rule: the key's last word (or words) names a secret. Not "tokens".
_SECRET_KEY = re.compile(
    r"(?:^|[._-])(?:(?:proxy-)?authorization|(?:set-)?cookie|passw(?:or)?d|secret|credentials?"
    r"|apikey|(?:api|access|secret|private|client|auth|master|signing|encryption|subscription)[._-]?key"
    r"|(?:access|refresh|id|auth|api|session|bearer|security|oauth|csrf|xsrf)[._-]?token)$",
    re.IGNORECASE | _A,
)
_KEY_CACHE_LIMIT = 65_536


def is_secret_key(key: str) -> bool:
    """Whether an attribute's value is redacted whole because its key names a secret."""
    return _SECRET_KEY.search(key) is not None


def secret_value(value: Any) -> Any:
    """An attribute value under a secret-naming key: every string in it becomes ``[REDACTED]``."""
    if isinstance(value, str):
        return REDACTED
    if isinstance(value, (list, tuple)):
        return [REDACTED if isinstance(item, str) else item for item in value]
    return value


# -- extra patterns ---------------------------------------------------------------------------------


def _literal_rule(pattern: re.Pattern[str]) -> _Rule:
    """The rule for an extra pattern: through its longest required literal when it has one, else
    checked against every string."""
    found = _required_literals(pattern)
    if found:
        literal, ignore_case = max(found, key=lambda item: (len(item[0]), not item[1]))
        try:
            return _LiteralRule(pattern, literal, ignore_case)
        except (TypeError, orjson.JSONEncodeError):  # a lone surrogate: nothing to look for
            pass
    return _Rule(pattern.pattern, pattern)


def _required_literals(pattern: re.Pattern[str]) -> list[tuple[str, bool]]:
    """Runs of literal text that every match of ``pattern`` contains, each with whether it
    matches case-insensitively. Empty when the pattern cannot be read (it is then checked
    against every string, which is always exact)."""
    try:
        if hasattr(re, "_parser"):
            from re import _parser as parser  # type: ignore[attr-defined]
        else:  # pragma: no cover - Python 3.10
            import sre_parse as parser
        tree = parser.parse(pattern.pattern, pattern.flags)
        return _literal_runs(parser, tree, bool(pattern.flags & re.IGNORECASE))
    except Exception:  # noqa: BLE001 - a private module of the standard library: fall back
        return []


def _literal_runs(parser: Any, tree: Any, ignore_case: bool) -> list[tuple[str, bool]]:
    runs: list[tuple[str, bool]] = []
    current: list[str] = []

    def flush() -> None:
        if current:
            runs.append(("".join(current), ignore_case))
            current.clear()

    repeats = {getattr(parser, name, None) for name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT")}
    for op, av in tree:
        if op is parser.LITERAL:
            current.append(chr(av))
            continue
        flush()
        if op is parser.SUBPATTERN:
            _group, add_flags, del_flags, sub = av
            case = (ignore_case or bool(add_flags & re.IGNORECASE)) and not del_flags & re.IGNORECASE
            runs.extend(_literal_runs(parser, sub, case))
        elif op in repeats and op is not None and av[0] >= 1:
            runs.extend(_literal_runs(parser, av[2], ignore_case))
        elif op is getattr(parser, "ATOMIC_GROUP", None):
            runs.extend(_literal_runs(parser, av, ignore_case))
        # Anything else (alternatives, classes, assertions, optional parts) guarantees nothing.
    flush()
    return runs


# -- the redactor -----------------------------------------------------------------------------------


class Redactor:
    """Redaction as configured: ``redact`` True (the built-in rules), a callable (replacing
    them), or False (none); ``patterns`` are redacted in addition, whichever it is.

    Never raises: a failing user callable stores ``[REDACTION FAILED]``.
    """

    def __init__(
        self,
        redact: bool | Callable[[str], str] = True,
        patterns: Iterable[str | re.Pattern[str]] = (),
    ) -> None:
        extra = tuple(_literal_rule(p if isinstance(p, re.Pattern) else re.compile(p)) for p in patterns)
        if callable(redact):
            base: tuple[_Rule, ...] = (_CallableRule(redact),)
        else:
            base = DEFAULT_RULES if redact else ()
        self.rules: tuple[_Rule, ...] = base + extra
        #: The attribute-name rule is one of the built-in rules.
        self.names = redact is True
        self._known: dict[str, bool] = {}

    @classmethod
    def from_options(cls, options: Options) -> Redactor | None:
        """The options' redactor, or None when nothing is to be redacted."""
        if options.redact is False and not options.redact_patterns:
            return None
        return cls(options.redact, options.redact_patterns)

    # -- finding ------------------------------------------------------------------------------------

    def scan(self, json_text: str, rules: Sequence[_Rule] | None = None) -> tuple[_Rule, ...]:
        """The rules (of ``rules``, default all) that may match a string encoded in ``json_text``."""
        text = _Text(json_text)
        return tuple(rule for rule in (self.rules if rules is None else rules) if rule.possible(text))

    def secret_keys(self, keys: Iterable[str]) -> frozenset[str]:
        """Those of ``keys`` that name a secret (see :func:`is_secret_key`)."""
        if not self.names:
            return frozenset()
        known = self._known
        found = []
        for key in keys:
            secret = known.get(key)
            if secret is None:
                secret = is_secret_key(key)
                if len(known) >= _KEY_CACHE_LIMIT:
                    known.clear()
                known[key] = secret
            if secret:
                found.append(key)
        return frozenset(found)

    # -- redacting ----------------------------------------------------------------------------------

    def text(self, value: str, rules: Sequence[_Rule] | None = None) -> str:
        """A decoded string with ``rules`` (default all) applied."""
        return _apply(self.rules if rules is None else rules, value)

    def function(self, rules: Sequence[_Rule] | None = None) -> Callable[[str], str]:
        """``text`` with ``rules`` as one function of a string: cheaper to call once per string."""
        chosen = tuple(self.rules if rules is None else rules)
        if any(rule in _BUILTIN for rule in chosen):
            return functools.partial(_apply, chosen)
        applies = tuple(rule.apply for rule in chosen)
        if len(applies) == 1:
            return applies[0]

        def each(value: str) -> str:
            for apply in applies:
                value = apply(value)
            return value

        return each

    def value(self, value: Any, rules: Sequence[_Rule] | None = None) -> Any:
        """Every string inside an attribute-shaped value redacted (sequences become lists)."""
        return walk(value, self.function(rules))

    def attributes(
        self, attributes: Mapping[str, Any], rules: Sequence[_Rule] | None = None
    ) -> dict[str, Any]:
        """A new attribute dict: secret-named keys' values replaced whole, every other string
        redacted with ``rules`` (default all)."""
        secret = self.secret_keys(attributes)
        redact = self.function(rules)
        return {
            key: secret_value(value) if key in secret else walk(value, redact)
            for key, value in attributes.items()
        }

    def secret_attributes(self, attributes: Mapping[str, Any]) -> Mapping[str, Any]:
        """``attributes`` itself when no key names a secret, else a copy with those values redacted."""
        secret = self.secret_keys(attributes)
        if not secret:
            return attributes
        return {key: secret_value(value) if key in secret else value for key, value in attributes.items()}


_SCALARS = frozenset({int, float, bool, bytes})


def walk(value: Any, redact: Callable[[str], str]) -> Any:
    """Every string inside an attribute-shaped value passed through ``redact`` (sequences become
    lists, which is how they are stored anyway)."""
    kind = type(value)
    if kind is str:
        return redact(value)
    # Exact types first: this runs for every value of a walked row, and an isinstance() test
    # against an abstract Mapping is slow.
    if kind in _SCALARS or value is None:
        return value
    if kind is list or kind is tuple or isinstance(value, (list, tuple)):
        return [walk(item, redact) for item in value]
    if kind is dict or isinstance(value, Mapping):
        return {key: walk(item, redact) for key, item in value.items()}
    if isinstance(value, str):
        return redact(value)
    return value


_MAX_PASSES = 8
_BUILTIN = frozenset(DEFAULT_RULES)
#: One redaction rule (see ``Redactor.rules``).
Rule = _Rule


def _apply(rules: Sequence[_Rule], value: str) -> str:
    """The rules applied once, then the built-in ones again until nothing changes: a secret glued
    to another one can fail its word boundary until the other is redacted ("AKIA...AIza...").
    A user's callable and extra patterns run once."""
    original = value
    for rule in rules:
        value = rule.apply(value)
    if value == original:
        return value
    builtin = [rule for rule in rules if rule in _BUILTIN]
    for _ in range(_MAX_PASSES - 1):
        before = value
        for rule in builtin:
            value = rule.apply(value)
        if value == before:
            break
    return value


def redact_text(text: str) -> str:
    """``text`` with the built-in rules applied; handy inside a ``redact`` callable that should
    keep them: ``redact=lambda text: my_rules(redact_text(text))``."""
    return _apply(DEFAULT_RULES, text)


# -- scrubbing an existing file -------------------------------------------------------------------


@dataclass(frozen=True)
class ScrubResult:
    """What :func:`scrub_file` changed (with ``dry_run``: would change)."""

    spans_scanned: int
    spans_changed: int
    resources_changed: int
    traces_changed: int
    logs_changed: int
    dry_run: bool
    #: The write-ahead log was emptied, so no old page versions remain beside the file.
    checkpointed: bool
    #: The file was rebuilt (VACUUM), so no deleted bytes remain in its free space.
    vacuumed: bool

    @property
    def changed(self) -> int:
        return self.spans_changed + self.resources_changed + self.traces_changed + self.logs_changed


_SCRUB_BATCH = 500
# Columns of a span that scrub_file rewrites: (column, is JSON).
_SPAN_COLUMNS = (
    ("name", False),
    ("status_message", False),
    ("input_text", False),
    ("output_text", False),
    ("reasoning_text", False),
    ("attributes", True),
    ("events", True),
    ("links", True),
    ("scope_name", False),
    ("scope_version", False),
)
_LOG_COLUMNS = (("event_name", False), ("body", False), ("attributes", True))
_CUT_TEXT_COLUMNS = frozenset({"input_text", "output_text", "reasoning_text"})
# A JSON column holds a secret-named key only if one of these ends a key in its text.
_KEY_PROBE = re.compile(
    r'(?:authorization|cookie|passw(?:or)?d|secret|credentials?|key|token)"', re.IGNORECASE | _A
)


def scrub_file(
    path: str | os.PathLike[str],
    *,
    redact: bool | Callable[[str], str] = True,
    patterns: Sequence[str | re.Pattern[str]] = (),
    dry_run: bool = False,
) -> ScrubResult:
    """Redact a trace file in place, for example one written with ``redact=False``.

    Span names, status messages, input/output/reasoning text, attributes, events, links and scope,
    log records' bodies and attributes, resource attributes and trace root names are redacted like
    the writer redacts them (``redact`` and ``patterns`` as the options of the same names), in
    transactions of 500 rows, so an application may keep writing meanwhile. Then the bytes replaced
    leave the file: deletions are zeroed (``secure_delete``), the full-text index is merged (its
    old tokens purged), the file is rebuilt (``VACUUM``: earlier versions of rows also linger in
    free space) and shrunk, and the write-ahead log is emptied. ``dry_run`` only counts.

    Raises ``TraceFileError`` when the file is missing or not a trace file; a rebuild or log
    reset that other connections prevent is reported in the result, not raised.
    """
    from otel_sqlite_exporter._schema import connect, open_reader

    redactor = Redactor(redact, [p if isinstance(p, re.Pattern) else re.compile(p) for p in patterns])
    # A dry run reads only: the file is not even migrated.
    conn = open_reader(os.fspath(path)) if dry_run else connect(os.fspath(path), create=False)
    try:
        conn.execute("PRAGMA secure_delete = ON")
        spans_scanned, spans_changed = _scrub_rows(conn, redactor, dry_run, "spans", "id", _SPAN_COLUMNS)
        _, logs_changed = _scrub_rows(conn, redactor, dry_run, "logs", "log_id", _LOG_COLUMNS)
        resources_changed = _scrub_resources(conn, redactor, dry_run)
        traces_changed = _scrub_traces(conn, redactor, dry_run)
        checkpointed = vacuumed = False
        if not dry_run:
            conn.execute("INSERT INTO spans_fts (spans_fts) VALUES ('optimize')")
            conn.execute("PRAGMA incremental_vacuum")
            vacuumed = _try(conn, "VACUUM")
            row = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            checkpointed = row is not None and row[0] == 0
        return ScrubResult(
            spans_scanned=spans_scanned,
            spans_changed=spans_changed,
            resources_changed=resources_changed,
            traces_changed=traces_changed,
            logs_changed=logs_changed,
            dry_run=dry_run,
            checkpointed=checkpointed,
            vacuumed=vacuumed,
        )
    finally:
        conn.close()


def _try(conn: sqlite3.Connection, statement: str) -> bool:
    try:
        conn.execute(statement)
    except sqlite3.OperationalError as exc:  # another connection in the way: report, not raise
        logger.warning("otel-sqlite-exporter: %s did not run (%s)", statement, exc)
        return False
    return True


def _scrub_rows(
    conn: sqlite3.Connection,
    redactor: Redactor,
    dry_run: bool,
    table: str,
    key: str,
    spec: Sequence[tuple[str, bool]],
) -> tuple[int, int]:
    """(rows scanned, rows changed) of ``table``, whose ``spec`` columns (name, is JSON) are scrubbed."""
    columns = [name for name, _ in spec]
    select = (
        f"SELECT {key}, {', '.join(columns)} FROM {table} WHERE {key} > ? ORDER BY {key} LIMIT {_SCRUB_BATCH}"
    )
    update = f"UPDATE {table} SET {', '.join(f'{c} = ?' for c in columns)} WHERE {key} = ?"
    scanned = changed = 0
    last = 0
    while True:
        # Read and rewrite in one transaction: a row the application completes meanwhile is never
        # overwritten with an older version.
        conn.execute("BEGIN" if dry_run else "BEGIN IMMEDIATE")
        try:
            rows = conn.execute(select, (last,)).fetchall()
            updates = []
            for row in rows:
                new = [
                    _scrub_column(redactor, name, is_json, value)
                    for (name, is_json), value in zip(spec, row[1:], strict=True)
                ]
                if new != list(row[1:]):
                    updates.append((*new, row[0]))
            if updates and not dry_run:
                conn.executemany(update, updates)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if not rows:
            return scanned, changed
        scanned += len(rows)
        changed += len(updates)
        last = rows[-1][0]


def _scrub_column(redactor: Redactor, name: str, is_json: bool, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if is_json:
        return _scrub_json(redactor, name, value)
    try:
        rules = redactor.scan(orjson.dumps(value).decode())
    except orjson.JSONEncodeError:
        rules = redactor.rules
    text = redactor.text(value, rules) if rules else value
    if name in _CUT_TEXT_COLUMNS and redactor.names:
        text = _CUT_SECRET.sub(REDACTED, text)
    return text


def _scrub_json(redactor: Redactor, column: str, text: str) -> str:
    rules = redactor.scan(text)
    if not rules and not (redactor.names and _KEY_PROBE.search(text)):
        return text
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return redactor.text(text, rules)
    if column == "attributes" and isinstance(data, dict):
        new: Any = redactor.attributes(data, rules)
    elif isinstance(data, list):
        new = [_scrub_item(redactor, column, item, rules) for item in data]
    else:
        new = redactor.value(data, rules)
    return text if new == data else orjson.dumps(new).decode()


def _scrub_item(redactor: Redactor, column: str, item: Any, rules: Sequence[_Rule]) -> Any:
    """One stored event ({name, time_unix_nano, attributes}) or link ({trace_id, span_id, attributes})."""
    if not isinstance(item, dict):
        return redactor.value(item, rules)
    out = dict(item)
    if isinstance(item.get("attributes"), dict):
        out["attributes"] = redactor.attributes(item["attributes"], rules)
    if column == "events" and isinstance(item.get("name"), str):
        out["name"] = redactor.text(item["name"], rules)
    return out


def _scrub_resources(conn: sqlite3.Connection, redactor: Redactor, dry_run: bool) -> int:
    changed = 0
    conn.execute("BEGIN" if dry_run else "BEGIN IMMEDIATE")
    try:
        for resource_id, text, schema_url in conn.execute(
            "SELECT resource_id, attributes, schema_url FROM resources"
        ).fetchall():
            try:
                data = orjson.loads(text)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(data, dict):
                continue
            new = redactor.attributes(data)
            if new == data:
                continue
            changed += 1
            if dry_run:
                continue
            new_text = orjson.dumps(new).decode()
            service = new.get("service.name")
            twin = conn.execute(
                "SELECT resource_id FROM resources WHERE attributes = ? AND schema_url = ?",
                (new_text, schema_url),
            ).fetchone()
            if twin is None:
                conn.execute(
                    "UPDATE resources SET attributes = ?, service_name = ? WHERE resource_id = ?",
                    (new_text, None if service is None else str(service), resource_id),
                )
            else:  # redacted, it equals another resource: one row for both
                conn.execute("UPDATE spans SET resource_id = ? WHERE resource_id = ?", (twin[0], resource_id))
                conn.execute("DELETE FROM resources WHERE resource_id = ?", (resource_id,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return changed


def _scrub_traces(conn: sqlite3.Connection, redactor: Redactor, dry_run: bool) -> int:
    changed = 0
    last = ""
    while True:
        conn.execute("BEGIN" if dry_run else "BEGIN IMMEDIATE")
        try:
            rows = conn.execute(
                "SELECT trace_id, root_span_name FROM traces WHERE trace_id > ? ORDER BY trace_id LIMIT ?",
                (last, _SCRUB_BATCH),
            ).fetchall()
            updates = []
            for trace_id, name in rows:
                new = _scrub_column(redactor, "name", False, name)
                if new != name:
                    updates.append((new, trace_id))
            if updates and not dry_run:
                conn.executemany("UPDATE traces SET root_span_name = ? WHERE trace_id = ?", updates)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if not rows:
            return changed
        changed += len(updates)
        last = rows[-1][0]


__all__ = [
    "DEFAULT_RULES",
    "REDACTED",
    "REDACTION_FAILED",
    "Redactor",
    "Rule",
    "ScrubResult",
    "is_secret_key",
    "redact_text",
    "scrub_file",
    "secret_value",
    "walk",
]
