"""Bytes on the wire between ledger nodes: PBFT messages and length-prefixed frames.

PBFT messages travel in the consensus package's own canonical encoding
(:meth:`~bcsfl_flower.consensus.messages.Message.encoded`), which is unambiguous and
self-delimiting; :func:`decode_message` reverses it. Decoding never runs code from the
peer (no pickle) and checks every field against the dataclass's type hints, so a
malformed or hostile frame becomes a :class:`WireError`, never a half-typed message
that could crash the replica. Signatures are *not* checked here: the replica does that.

A frame is ``length (4 bytes, big-endian) | kind (1 byte) | payload``; ``kind`` is
:data:`PBFT` (an encoded message) or :data:`APP` (a JSON object between node drivers).
Every PBFT message type has a size bound (:func:`~bcsfl_flower.consensus.limits.message_bounds`,
all well under :data:`MAX_FRAME`); :func:`decode_message` reads the type tag first and
refuses a message over its type's bound before parsing the rest.
"""

from __future__ import annotations

import dataclasses
import struct
import typing
from collections.abc import Mapping
from typing import Any, Optional, Union

from bcsfl_flower.consensus import messages as pbft_messages
from bcsfl_flower.consensus import quorum as pbft_quorum
from bcsfl_flower.consensus.limits import message_bounds
from bcsfl_flower.consensus.messages import CommittedEntry, Message
from bcsfl_flower.consensus.quorum import QuorumCertificate
from bcsfl_flower.consensus.state import PBFTConfig

__all__ = [
    "APP",
    "MAX_FRAME",
    "MESSAGE_BOUNDS",
    "PBFT",
    "WireError",
    "decode_message",
    "encode_frame",
    "encode_message",
]

PBFT = 0x50  # "P"
APP = 0x41  # "A"
MAX_FRAME = 64 * 1024 * 1024
"""Largest frame a node accepts (a PBFT message carrying a batch block or a model)."""

#: Size bound per message tag that :func:`decode_message` applies by default: the
#: consensus defaults (``PBFTConfig()``, requests up to 24 MiB) for clusters of up to 16
#: replicas with a log window up to 256. A node with other settings passes its own
#: (``message_bounds(config, n)``).
MESSAGE_BOUNDS: dict[str, int] = message_bounds(PBFTConfig(log_window=256), 16)
assert max(MESSAGE_BOUNDS.values()) < MAX_FRAME // 2, "a message bound near the frame limit"

_HEADER = struct.Struct(">IB")
_MAX_DEPTH = 8


class WireError(ValueError):
    """A frame or message that cannot be decoded; ``str(err)`` says why."""


def encode_frame(kind: int, payload: bytes) -> bytes:
    """Prefix ``payload`` with its length and kind.

    Parameters
    ----------
    kind : int
        :data:`PBFT` or :data:`APP`.
    payload : bytes
        The frame body.

    Returns
    -------
    bytes
        The frame, ready to write to a stream.
    """
    if len(payload) + 1 > MAX_FRAME:
        raise WireError(f"frame of {len(payload)} bytes exceeds {MAX_FRAME}")
    return _HEADER.pack(len(payload) + 1, kind) + payload


def encode_message(msg: Message) -> bytes:
    """The canonical encoding of a PBFT message (body plus signature)."""
    return msg.encoded()


def _message_classes() -> dict[str, type]:
    """Every wire message dataclass of the consensus package, by ``TAG``."""
    found: dict[str, type] = {}
    todo = list(Message.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.__module__ not in (pbft_messages.__name__, pbft_quorum.__name__):
            continue  # only the protocol's own types, never test or Byzantine helpers
        if dataclasses.is_dataclass(cls) and cls.TAG != "?":
            found[cls.TAG] = cls
    return found


_FIELDS: dict[type, tuple[tuple[str, Any], ...]] = {}


def _fields(cls: type) -> tuple[tuple[str, Any], ...]:
    """``(name, type hint)`` of ``cls`` in encoding order, ``sig`` last if present."""
    cached = _FIELDS.get(cls)
    if cached is None:
        hints = typing.get_type_hints(cls, vars(pbft_messages))
        if cls is CommittedEntry:
            hints["certificate"] = QuorumCertificate  # typed Any upstream (import cycle)
        names = [f.name for f in dataclasses.fields(cls)]
        ordered = [n for n in names if n != "sig"] + (["sig"] if "sig" in names else [])
        cached = tuple((n, hints[n]) for n in ordered)
        _FIELDS[cls] = cached
    return cached


class _Reader:
    """A cursor over one canonical encoding."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.classes = _CLASSES

    def _take_int(self, end: bytes) -> int:
        stop = self.data.find(end, self.pos, self.pos + 24)
        if stop < 0:
            raise WireError("unterminated number")
        text = self.data[self.pos : stop]
        if not text or not (text.isdigit() or (text[:1] == b"-" and text[1:].isdigit())):
            raise WireError(f"bad number {text[:24]!r}")
        self.pos = stop + 1
        return int(text)

    def _take_bytes(self) -> bytes:
        size = self._take_int(b":")
        if size < 0 or self.pos + size > len(self.data):
            raise WireError("length runs past the end of the frame")
        raw = self.data[self.pos : self.pos + size]
        self.pos += size
        return raw

    def value(self, depth: int = 0) -> Any:
        if depth > _MAX_DEPTH:
            raise WireError("message nested too deeply")
        if self.pos >= len(self.data):
            raise WireError("truncated message")
        tag = self.data[self.pos : self.pos + 1]
        self.pos += 1
        if tag == b"N":
            return None
        if tag == b"T":
            return True
        if tag == b"F":
            return False
        if tag == b"i":
            return self._take_int(b";")
        if tag == b"s":
            try:
                return self._take_bytes().decode("utf-8")
            except UnicodeDecodeError as err:
                raise WireError("string is not UTF-8") from err
        if tag == b"b":
            return self._take_bytes()
        if tag == b"l":
            count = self._take_int(b":")
            if count < 0 or count > len(self.data) - self.pos:
                raise WireError("bad list length")
            return tuple(self.value(depth + 1) for _ in range(count))
        if tag == b"m":
            name = self._take_bytes().decode("ascii", "replace")
            cls = self.classes.get(name)
            if cls is None:
                raise WireError(f"unknown message type {name!r}")
            return self.message(cls, depth)
        raise WireError(f"unknown value tag {tag!r}")

    def message(self, cls: type, depth: int) -> Message:
        values: dict[str, Any] = {}
        for name, hint in _fields(cls):
            value = self.value(depth + 1)
            if not _conforms(value, hint):
                raise WireError(f"{cls.__name__}.{name} has the wrong type")
            values[name] = value
        try:
            return cls(**values)
        except (TypeError, ValueError) as err:
            raise WireError(f"cannot build {cls.__name__}: {err}") from err


def _conforms(value: Any, hint: Any) -> bool:
    """Whether a decoded value matches a dataclass field's type hint."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin is Union:
        return any(_conforms(value, arg) for arg in typing.get_args(hint))
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_conforms(v, args[0]) for v in value)
        return len(args) == len(value) and all(_conforms(v, a) for v, a in zip(value, args))
    if hint is type(None):
        return value is None
    if hint is int:
        return type(value) is int
    if hint is bool:
        return type(value) is bool
    if isinstance(hint, type):
        return isinstance(value, hint)
    return False


_CLASSES = _message_classes()


def message_tag(data: bytes) -> str:
    """The type tag an encoded message starts with (``m<len>:<tag>``), read without
    parsing the rest; :class:`WireError` when there is none."""
    colon = data.find(b":", 1, 12)
    if data[:1] != b"m" or colon < 0 or not data[1:colon].isdigit():
        raise WireError("frame is not a message")
    size = int(data[1:colon])
    tag = data[colon + 1 : colon + 1 + size]
    if size > 64 or len(tag) != size:
        raise WireError("bad message tag")
    return tag.decode("ascii", "replace")


def decode_message(data: bytes, bounds: Optional[Mapping[str, int]] = None) -> Message:
    """Decode one PBFT message from its canonical encoding.

    Parameters
    ----------
    data : bytes
        What :func:`encode_message` produced (one message, nothing after it).
    bounds : Mapping[str, int], optional
        Largest size per message tag; default :data:`MESSAGE_BOUNDS`. A message over
        its type's bound is refused before it is parsed.

    Returns
    -------
    Message
        The message, with every field of the declared type.

    Raises
    ------
    WireError
        If the bytes are not exactly one well-typed message of a known kind, or the
        message is larger than its type's bound.
    """
    tag = message_tag(data)
    bound = (MESSAGE_BOUNDS if bounds is None else bounds).get(tag)
    if bound is not None and len(data) > bound:
        raise WireError(f"{tag} message of {len(data)} bytes exceeds its bound of {bound}")
    reader = _Reader(bytes(data))
    msg = reader.value()
    if not isinstance(msg, Message) or reader.pos != len(reader.data):
        raise WireError("frame is not exactly one message")
    return msg
