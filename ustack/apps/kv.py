"""The `kv` server: memcached's text protocol as an asyncio Protocol.

This module owns the wire side: splitting the byte stream into command
lines and data blocks, answering each command the way memcached 1.6 does,
byte for byte, and writing the replies.  The items themselves live in
`ustack.apps.kvstore.KvStore`; the connection counters in
`ustack.apps.runner.AppCounters`.  The same code runs on ustack's asyncio
loop and on uvloop over kernel sockets (`ustack serve kv`).

Theory of operation
-------------------

`data_received` walks the chunk with an index; nothing is copied until a
complete line or data block is in hand.  A connection is in one of three
states:

- *line*: look for ``\\n`` with bytes.find.  A line is tokenised on single
  spaces only (as memcached does: a tab is part of a token), a trailing
  ``\\r`` is dropped and a NUL ends the line early.  A partial line is kept
  as a list of pieces, so a line trickling in byte by byte costs O(n).
- *data*: a storage command is waiting for ``<bytes>`` + 2 bytes.  A block
  inside one chunk is one slice; a block spread over chunks is collected as
  memoryviews and joined once.  The block must end in CRLF, else
  ``CLIENT_ERROR bad data chunk``, and whatever follows is read as the
  next command (memcached swallows nothing more).
- *swallow*: a value that is too large (``SERVER_ERROR object too large for
  cache``) or cannot fit in memory is counted down and dropped as it
  arrives, never buffered.

Replies of one `data_received` are collected in a list (references to the
stored values, not copies) and leave in one `transport.write`.  Past
`OUT_FLUSH_BYTES` (a pipeline of large gets) they are written early, at
most `WRITE_CHUNK` bytes per write, and only while the transport has not
asked us to pause: when it does (its buffer is above the high-water mark)
the replies not yet written and the rest of the input wait, and reading
stops until `resume_writing`.  A client that sends ``get k k k ...`` for a
1 MB value and never reads thus costs a list of references, not copies.

Bounded lines.  A line still without its newline after `LINE_LIMIT` (2048)
bytes closes the connection (memcached's rule; replies not yet written are
dropped with it, as memcached drops them), unless it is a ``get`` or
``gets`` (after at most 100 spaces), which memcached allows to be
unbounded.  Those are processed as they stream in: each complete key is
looked up and only the unfinished last key (at most 250 bytes) and at
most 1 MiB of replies are kept back, so the memory a get line costs does
not grow with its length.  A complete
line longer than memcached's 16 KiB read buffer that is not a get is
closed too, since memcached could never have seen its end.

Documented differences from memcached 1.6.18
--------------------------------------------

(`tests/test_kv_conformance.py` replays scripted sessions, malformed ones
included, against a real memcached and requires the same bytes back but
for these, each of which it checks on both sides.)

- ``version`` and the ``version`` stat name this server (`VERSION`); it
  says 1.5 on purpose, so clients do not expect the meta protocol.
- ``stats``: the values are ours (pid, uptime, memory, connections); the
  names are a subset of memcached's (no slab, LRU-maintainer, extstore
  or TLS lines).  Command counters (``cmd_get``, ``get_hits``,
  ``delete_hits``, ``incr_misses``, ``cas_badval``, ``touch_hits`` ...)
  count as memcached's do; ``get_flushed`` stays 0 because a flushed item
  is gone at once rather than found and skipped.  ``stats settings``
  reports the settings that exist here (maxbytes, item_size_max,
  verbosity, cas, evictions ...).  ``stats items``, ``stats slabs`` and
  ``stats conns`` answer an empty ``END``; ``stats detail on|off|dump``
  is accepted but records nothing (dump is ``END``); ``stats
  cachedump`` and other engine subcommands answer ``ERROR``.
  ``stats reset`` zeroes the command counters only.
- Keys: besides memcached's 250-byte limit, a key with a control
  character (0x00-0x1f, 0x7f) is refused with ``CLIENT_ERROR bad command
  line format``, as the protocol's specification asks (memcached itself
  only splits on spaces and accepts them).  Like any other bad command
  line, the data block of a refused storage command is then read as
  commands.  That is the ``strict`` key mode, the default; in the
  ``memcached`` mode (``KvServer(keys="memcached")``, ``ustack serve kv
  --keys memcached``) a key is any bytes but a space, as in memcached
  1.6: a line ends at ``\\n`` (a ``\\r`` before it dropped, one anywhere
  else part of the key) and at its first NUL, so neither can be in a key.
  Clients whose keys hold binary bytes need it (memaslap's keys start
  with an 8-byte counter whose bytes are 0x10-0x1f).
- Meta commands (``mg``, ``ms``, ``md``, ``ma``, ``mn``, ``me``) and
  administrative ones (``slabs``, ``lru``, ``lru_crawler``, ``watch``,
  ``extstore``) answer ``ERROR``.  ``cache_memlimit`` and ``shutdown``
  (disabled, as by default) answer as memcached does.
- Memory: one LRU over all items, not per slab class, with memcached's
  per-item size (key + value + 59 bytes, 63 with flags).  An item that
  could not fit even in an empty cache gets ``SERVER_ERROR out of memory
  storing object``; memcached decides that per slab class.
- A ``get`` line longer than 2048 bytes that arrives in pieces: if a key
  after the first 1 MiB of replies is too long, the values already sent
  stay sent (memcached would replace them all with the CLIENT_ERROR).
- Time: expiry and ``flush_all <delay>`` use a float clock; memcached's
  clock ticks once a second, so there a 1-second TTL may end up to a
  second early, and ``flush_all 1`` also hides items stored during the
  rest of the current tick (here it is an immediate flush).
- Where a read ends matters to memcached in two places, here to the
  chunks `data_received` gets: replies to commands before a junk line
  that closes the connection are dropped only if they came in the same
  read, and a line between 2 KiB and 16 KiB is processed only if its end
  came in the same read as its first 2 KiB.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import time
from collections.abc import Callable
from typing import cast

from ustack.apps.kvstore import (
    COMMAND_STAT_NAMES,
    ITEM_STAT_NAMES,
    KEY_MAX_LENGTH,
    DeltaError,
    Item,
    KvStore,
    StoreMode,
    StoreResult,
)
from ustack.apps.runner import AppCounters

VERSION = b"1.5.0-ustack"
LINE_LIMIT = 2048  # memcached: a line without newline past this is junk (or a huge get)
READ_BUFFER = 16384  # memcached's read buffer: a complete line longer could not be seen
GET_STREAM_HOLD = 1 << 20  # replies of a streamed get held back in case a key fails
_PIECE_OVERHEAD = 64  # about what a small bytes object and its list slot cost
OUT_FLUSH_BYTES = 4 << 20  # write replies early past this, to let flow control act
WRITE_CHUNK = 1 << 20  # the most one write takes while draining a large reply
INT32_MAX = (1 << 31) - 1
U64 = 1 << 64
MAX_VERBOSITY = 2

KEY_MODES = ("strict", "memcached")  # see "Keys" in the module docstring
_CTRL = re.compile(rb"[\x00-\x1f\x7f]")
# C strtol/strtoul over a token (which never holds a space): leading blanks,
# a sign, digits, then the token's end or a blank.
_NUMBER = re.compile(rb"[\t\n\v\f\r]*([+-]?)([0-9]+)(?:[\t\n\v\f\r]|\Z)")

_ERROR = b"ERROR\r\n"
_BAD_FORMAT = b"CLIENT_ERROR bad command line format\r\n"
_BAD_EXPTIME = b"CLIENT_ERROR invalid exptime argument\r\n"
_BAD_DELTA = b"CLIENT_ERROR invalid numeric delta argument\r\n"
_BAD_CHUNK = b"CLIENT_ERROR bad data chunk\r\n"
_TOO_LARGE = b"SERVER_ERROR object too large for cache\r\n"
_NO_MEMORY = b"SERVER_ERROR out of memory storing object\r\n"
_DELETE_USAGE = b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"
_END = b"END\r\n"


# -- numbers as memcached's safe_strto* read them (util.c) --------------------


def _strtou64(tok: bytes) -> int | None:
    """C strtoull: the value mod 2**64 (a '-' negates), None if no number or ERANGE."""
    if tok.isdigit():
        v = int(tok)
        return v if v < U64 else None
    m = _NUMBER.match(tok)
    if m is None:
        return None
    v = int(m.group(2))
    if v >= U64:
        return None
    return -v % U64 if m.group(1) == b"-" else v


def safe_strtoull(tok: bytes) -> int | None:
    v = _strtou64(tok)
    if v is None or (v >= 1 << 63 and b"-" in tok):
        return None  # a '-' that made the number wrap is refused
    return v


def safe_strtoul(tok: bytes) -> int | None:
    """An unsigned long stored in a uint32 (memcached truncates silently)."""
    v = safe_strtoull(tok)
    return None if v is None else v & 0xFFFFFFFF


def safe_strtol(tok: bytes) -> int | None:
    """A long (64-bit) stored in an int32 (memcached truncates silently)."""
    if tok.isdigit():
        v = int(tok)
    else:
        m = _NUMBER.match(tok)
        if m is None:
            return None
        v = -int(m.group(2)) if m.group(1) == b"-" else int(m.group(2))
    if not -(1 << 63) <= v < 1 << 63:
        return None  # ERANGE
    return (v + (1 << 31)) % (1 << 32) - (1 << 31)


# -- the state shared by a server's connections ---------------------------------


class KvServer:
    """One kv server: the store, the app counters and the settings clients can change.

    `keys` is the key mode: ``strict`` refuses control characters in keys,
    ``memcached`` takes any byte but a space (see the module docstring).
    """

    def __init__(
        self,
        store: KvStore,
        counters: AppCounters,
        *,
        port: int = 11211,
        version: bytes = VERSION,
        keys: str = "strict",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if keys not in KEY_MODES:
            raise ValueError(f"unknown key mode {keys!r} (known: {', '.join(KEY_MODES)})")
        self.store = store
        self.keys = keys
        self.counters = counters
        self.port = port
        self.version = version
        self.clock = clock
        self.started = clock()
        self.verbosity = 0

    def protocol(self) -> KvProtocol:
        """The protocol factory for loop.create_server."""
        return KvProtocol(self)

    def general_stats(self) -> list[tuple[str, str]]:
        store, c = self.store, self.counters
        now = self.clock()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        s = store.stats
        pairs: list[tuple[str, object]] = [
            ("pid", os.getpid()),
            ("uptime", int(now - self.started)),
            ("time", int(now)),
            ("version", self.version.decode()),
            ("pointer_size", 64),
            ("rusage_user", f"{ru.ru_utime:.6f}"),
            ("rusage_system", f"{ru.ru_stime:.6f}"),
            ("max_connections", 1024),
            ("curr_connections", c.conns_active),
            ("total_connections", c.conns_accepted),
        ]
        pairs += [(name, s[name]) for name in COMMAND_STAT_NAMES]
        pairs += [
            ("bytes_read", c.bytes_in),
            ("bytes_written", c.bytes_out),
            ("limit_maxbytes", store.memory_limit),
            ("threads", 1),
            ("bytes", store.bytes),
            ("curr_items", len(store)),
        ]
        pairs += [(name, s[name]) for name in ITEM_STAT_NAMES]
        return [(k, str(v)) for k, v in pairs]

    def settings_stats(self) -> list[tuple[str, str]]:
        store = self.store
        pairs: list[tuple[str, object]] = [
            ("maxbytes", store.memory_limit),
            ("maxconns", 1024),
            ("tcpport", self.port),
            ("udpport", 0),
            ("verbosity", self.verbosity),
            ("evictions", "on"),
            ("num_threads", 1),
            ("cas_enabled", "yes"),
            ("item_size_max", store.item_size_max),
            ("flush_enabled", "yes"),
        ]
        return [(k, str(v)) for k, v in pairs]


def _stats_reply(pairs: list[tuple[str, str]]) -> bytes:
    return b"".join(b"STAT %s %s\r\n" % (k.encode(), v.encode()) for k, v in pairs) + _END


class _Pending:
    """A storage command waiting for its data block."""

    __slots__ = ("cas_unique", "exptime", "flags", "key", "mode", "noreply")

    def __init__(
        self,
        mode: StoreMode,
        key: bytes,
        flags: int,
        exptime: float,
        cas_unique: int,
        noreply: bool,
    ) -> None:
        self.mode = mode
        self.key = key
        self.flags = flags
        self.exptime = exptime
        self.cas_unique = cas_unique
        self.noreply = noreply


class _StreamedGet:
    """A get/gets line longer than LINE_LIMIT, processed key by key as it arrives."""

    __slots__ = ("failed", "held", "held_bytes", "partial", "return_cas", "truncated")

    def __init__(self, return_cas: bool) -> None:
        self.return_cas = return_cas
        self.partial = b""  # the unfinished last key (at most KEY_MAX_LENGTH bytes)
        self.held: list[bytes] = []  # replies held back until the line ends (bounded)
        self.held_bytes = 0
        self.failed = False  # a key was too long: the line ends in CLIENT_ERROR
        self.truncated = False  # a NUL ended the line early: ignore the rest


class KvProtocol(asyncio.Protocol):
    """One client connection speaking memcached's text protocol."""

    def __init__(self, server: KvServer) -> None:
        self.server = server
        self.store = server.store
        self.counters = server.counters
        self.transport: asyncio.Transport | None = None
        self._out: list[bytes] = []  # replies not yet written, from index _out_pos
        self._out_pos = 0
        self._out_bytes = 0
        self._line_parts: list[bytes] = []
        self._line_bytes = 0
        self._need = 0  # bytes of the data block still to come (or to swallow)
        self._swallow = False
        self._block_parts: list[bytes | memoryview] = []
        self._pending: _Pending | None = None
        self._stream: _StreamedGet | None = None
        self._strict_keys = server.keys == "strict"
        self._ctrl = False  # strict keys and the current line holds a control character
        self._closing = False  # no more input is read (quit, bad line, lost)
        self._close_when_drained = False  # quit: close once the replies are out
        self._paused = False
        self._stash: bytes | None = None  # input left over while writing is paused

    # -- asyncio.Protocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.counters.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.counters.connection_lost(self.transport)
        self._closing = True
        self._drop_output()
        self._block_parts.clear()
        self._line_parts.clear()
        self._stash = None

    def eof_received(self) -> bool | None:
        return None  # close; replies already written still go out first

    def pause_writing(self) -> None:
        self._paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self.transport is None:
            return
        self._flush()
        if self._out or self._paused or self._closing:
            return
        stash, self._stash = self._stash, None
        if stash:
            self._feed(stash)
            self._flush()
        if not self._paused and not self._closing and self._stash is None:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.counters.bytes_in += len(data)
        if self._closing:
            return
        if self._paused or self._stash is not None:
            # Replies are still waiting to be written: keep the input, in order.
            self._stash = data if self._stash is None else self._stash + data
            return
        self._feed(data)
        self._flush()

    # -- input -----------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        pos = 0
        n = len(data)
        while pos < n:
            if self._need:
                pos = self._feed_block(data, pos)
                continue
            nl = data.find(b"\n", pos)
            if nl < 0:
                self._partial_line(data[pos:])
                return
            if self._stream is not None:
                self._line_parts.clear()
                self._stream_feed(data[pos:nl], final=True)
                pos = nl + 1
                continue
            if self._line_parts:
                self._line_parts.append(data[pos:nl])
                line = b"".join(self._line_parts)
                self._line_parts.clear()
                self._line_bytes = 0
            else:
                line = data[pos:nl]
            pos = nl + 1
            if len(line) > 1 and line[-1] == 13:  # memcached strips "\r" from lines > 1
                line = line[:-1]
            if len(line) > READ_BUFFER and not _is_get_line(line):
                self._close_bad_line()
                return
            self._command(line)
            if self._closing:
                return
            if self._out_bytes > OUT_FLUSH_BYTES:
                self._flush()
                if self._out:
                    # The transport is full: stop here until resume_writing.
                    self._stash = data[pos:] if pos < n else None
                    return

    def _feed_block(self, data: bytes, pos: int) -> int:
        """Take (or swallow) the next bytes of a data block; the new position."""
        need = self._need
        take = min(need, len(data) - pos)
        self._need = need - take
        if self._swallow:
            if not self._need:
                self._swallow = False
            return pos + take
        if self._need:
            # More to come: keep a view, copy once when the block is complete.
            whole = pos == 0 and take == len(data)
            self._block_parts.append(data if whole else memoryview(data)[pos : pos + take])
            return pos + take
        if self._block_parts:
            self._block_parts.append(memoryview(data)[pos : pos + take])
            block = b"".join(self._block_parts)
            self._block_parts.clear()
        else:
            block = data[pos : pos + take]
        self._complete_store(block)
        return pos + take

    def _partial_line(self, piece: bytes) -> None:
        if self._stream is not None:
            self._stream_feed(piece, final=False)
            return
        self._line_parts.append(piece)
        self._line_bytes += len(piece)
        if self._line_bytes <= LINE_LIMIT:
            return
        head = b"".join(self._line_parts)
        self._line_parts.clear()
        self._line_bytes = 0
        body = head.lstrip(b" ")
        if len(head) - len(body) > 100 or not body.startswith((b"get ", b"gets ")):
            self._close_bad_line()
            return
        # memcached lets get lines grow without bound; take their keys as they come.
        return_cas = body.startswith(b"gets ")
        self._stream = _StreamedGet(return_cas)
        self.counters.requests += 1
        self._stream_feed(body[5 if return_cas else 4 :], final=False)

    def _close_bad_line(self) -> None:
        # memcached closes, dropping the replies of this read it has not sent.
        self.counters.protocol_errors += 1
        self._drop_output()
        self._closing = True
        if self.transport is not None:
            self.transport.close()

    # -- commands --------------------------------------------------------

    def _command(self, line: bytes) -> None:
        nul = line.find(b"\x00")
        if nul >= 0:
            line = line[:nul]  # memcached's tokenizer stops at the first NUL
        tokens = line.split(b" ")
        if b"" in tokens:
            tokens = [t for t in tokens if t]
        if not tokens or len(tokens[0]) < 2:
            self._emit(_ERROR)
            return
        handler = _HANDLERS.get(tokens[0])
        if handler is None:
            self._emit(_ERROR)
            return
        self.counters.requests += 1
        self._ctrl = self._strict_keys and _CTRL.search(line) is not None
        handler(self, tokens)

    def _emit(self, reply: bytes) -> None:
        self._out.append(reply)
        self._out_bytes += len(reply)

    def _reply(self, reply: bytes, noreply: bool) -> None:
        if not noreply:
            self._out.append(reply)
            self._out_bytes += len(reply)

    def _bad_key(self, key: bytes) -> bool:
        return len(key) > KEY_MAX_LENGTH or (self._ctrl and _CTRL.search(key) is not None)

    def _cmd_get(self, tokens: list[bytes]) -> None:
        if len(tokens) < 2:
            self._emit(_ERROR)
            return
        self._get_keys(tokens, 1, tokens[0] == b"gets", None)

    def _cmd_gat(self, tokens: list[bytes]) -> None:
        if len(tokens) < 2:
            self._emit(_ERROR)
            return
        exptime = safe_strtol(tokens[1])
        if exptime is None:
            self._emit(_BAD_EXPTIME)
            return
        self._get_keys(tokens, 2, tokens[0] == b"gats", self.store.expiry(exptime))

    def _get_keys(
        self, tokens: list[bytes], first: int, return_cas: bool, touch: float | None
    ) -> None:
        store = self.store
        ctrl = self._ctrl
        out = self._out
        mark = len(out)
        size = len(_END)
        for i in range(first, len(tokens)):
            key = tokens[i]
            # _bad_key(), inlined on the get path.
            if len(key) > KEY_MAX_LENGTH or (ctrl and _CTRL.search(key) is not None):
                # memcached replaces the whole reply, values found so far included.
                del out[mark:]
                self._emit(_BAD_FORMAT)
                return
            it = store.get(key) if touch is None else store.get_and_touch(key, touch)
            if it is not None:
                size += _append_value(out, key, it, return_cas)
        out.append(_END)
        self._out_bytes += size

    def _stream_feed(self, text: bytes, final: bool) -> None:
        """More of a streamed get line; `final` when its newline has come."""
        s = self._stream
        assert s is not None
        if not s.truncated:
            nul = text.find(b"\x00")
            if nul >= 0:
                text = text[:nul]
                s.truncated = True
            buf = s.partial + text if s.partial else text
            if final or s.truncated:
                if final and not s.truncated and buf.endswith(b"\r"):
                    buf = buf[:-1]  # the line's "\r\n"
                complete, s.partial = buf, b""
            else:
                cut = buf.rfind(b" ")
                complete, s.partial = (b"", buf) if cut < 0 else (buf[:cut], buf[cut + 1 :])
            if not s.failed:
                self._stream_keys(s, complete)
            # One byte of slack: the "\r" of the line's end may follow a full key.
            if len(s.partial) > KEY_MAX_LENGTH + 1:
                s.failed = True
                s.partial = b""
        if not final:
            return
        self._stream = None
        if s.failed:
            self._emit(_BAD_FORMAT)
        else:
            self._out += s.held
            self._out_bytes += s.held_bytes
            self._emit(_END)

    def _stream_keys(self, s: _StreamedGet, text: bytes) -> None:
        store = self.store
        strict = self._strict_keys
        for key in text.split(b" "):
            if not key:
                continue
            if len(key) > KEY_MAX_LENGTH or (strict and _CTRL.search(key) is not None):
                s.failed = True
                s.held.clear()
                return
            it = store.get(key)
            if it is None:
                continue
            # Count the objects too: for small values they cost more than the bytes.
            s.held_bytes += _append_value(s.held, key, it, s.return_cas) + 2 * _PIECE_OVERHEAD
            if s.held_bytes > GET_STREAM_HOLD:
                # Bounded memory wins over memcached's all-or-nothing reply.
                self._out += s.held
                self._out_bytes += s.held_bytes
                s.held = []
                s.held_bytes = 0

    def _cmd_update(self, tokens: list[bytes]) -> None:
        mode = _STORE_MODES[tokens[0]]
        n = len(tokens)
        if (n not in (6, 7)) if mode is StoreMode.CAS else (n not in (5, 6)):
            self._emit(_ERROR)
            return
        noreply = tokens[-1] == b"noreply"
        key = tokens[1]
        if self._bad_key(key):
            self._reply(_BAD_FORMAT, noreply)
            return
        flags = safe_strtoul(tokens[2])
        exptime = safe_strtol(tokens[3])
        vlen = safe_strtol(tokens[4])
        if flags is None or exptime is None or vlen is None:
            self._reply(_BAD_FORMAT, noreply)
            return
        store = self.store
        expires = store.expiry(exptime)
        cas_unique = 0
        if mode is StoreMode.CAS:
            parsed = safe_strtoull(tokens[5])
            if parsed is None:
                self._reply(_BAD_FORMAT, noreply)
                return
            cas_unique = parsed
        if vlen < 0 or vlen > INT32_MAX - 2:
            self._reply(_BAD_FORMAT, noreply)
            return
        if not store.item_size_ok(len(key), flags, vlen):
            store.stats["store_too_large"] += 1
            self._refuse(key, mode, vlen, _TOO_LARGE, noreply)
            return
        if not store.memory_ok(len(key), flags, vlen):
            store.stats["store_no_memory"] += 1
            self._refuse(key, mode, vlen, _NO_MEMORY, noreply)
            return
        self._pending = _Pending(mode, key, flags, expires, cas_unique, noreply)
        self._need = vlen + 2

    def _refuse(self, key: bytes, mode: StoreMode, vlen: int, reply: bytes, noreply: bool) -> None:
        self._reply(reply, noreply)
        # Drop the data block as it arrives, without keeping it.
        self._need = vlen + 2
        self._swallow = True
        if mode is StoreMode.SET:
            # A failed set must not leave the old value readable (memcached).
            self.store.discard(key)

    def _complete_store(self, block: bytes) -> None:
        p = self._pending
        assert p is not None
        self._pending = None
        self.store.stats["cmd_set"] += 1
        if block[-2:] != b"\r\n":
            self._reply(_BAD_CHUNK, p.noreply)
            return
        result: StoreResult = self.store.store(
            p.mode, p.key, block, p.flags, p.exptime, p.cas_unique
        )
        self._reply(result.value, p.noreply)

    def _number_arg(
        self, tokens: list[bytes], keyed: bool, parse: Callable[[bytes], int | None], bad: bytes
    ) -> int | None:
        """The number of ``<cmd> [<key>] <number> [noreply]``; None once the line is refused.

        A wrong count of arguments is ``ERROR``, a bad key (when `keyed`)
        ``CLIENT_ERROR bad command line format``, a number `parse` refuses `bad`.
        """
        at = 2 if keyed else 1
        n = len(tokens)
        if n != at + 1 and n != at + 2:
            self._emit(_ERROR)
            return None
        noreply = tokens[-1] == b"noreply"
        if keyed and self._bad_key(tokens[1]):
            self._reply(_BAD_FORMAT, noreply)
            return None
        number = parse(tokens[at])
        if number is None:
            self._reply(bad, noreply)
        return number

    def _cmd_delta(self, tokens: list[bytes]) -> None:
        delta = self._number_arg(tokens, True, safe_strtoull, _BAD_DELTA)
        if delta is None:
            return
        result = self.store.delta(tokens[1], delta, tokens[0] == b"incr")
        reply = result.value if isinstance(result, DeltaError) else result + b"\r\n"
        self._reply(reply, tokens[-1] == b"noreply")

    def _cmd_delete(self, tokens: list[bytes]) -> None:
        n = len(tokens)
        if not 2 <= n <= 4:
            self._emit(_ERROR)
            return
        noreply = False
        if n > 2:
            # "delete <key> 0" is an old form memcached still takes.
            hold_is_zero = tokens[2] == b"0"
            noreply = tokens[-1] == b"noreply"
            if not (
                (n == 3 and (hold_is_zero or noreply)) or (n == 4 and hold_is_zero and noreply)
            ):
                self._reply(_DELETE_USAGE, noreply)
                return
        key = tokens[1]
        if self._bad_key(key):
            self._reply(_BAD_FORMAT, noreply)
            return
        self._reply(b"DELETED\r\n" if self.store.delete(key) else b"NOT_FOUND\r\n", noreply)

    def _cmd_touch(self, tokens: list[bytes]) -> None:
        exptime = self._number_arg(tokens, True, safe_strtol, _BAD_EXPTIME)
        if exptime is None:
            return
        found = self.store.touch(tokens[1], self.store.expiry(exptime))
        self._reply(b"TOUCHED\r\n" if found else b"NOT_FOUND\r\n", tokens[-1] == b"noreply")

    def _cmd_flush_all(self, tokens: list[bytes]) -> None:
        n = len(tokens)
        if n > 3:
            self._emit(_ERROR)
            return
        noreply = tokens[-1] == b"noreply"
        self.store.stats["cmd_flush"] += 1
        delay = 0
        if n != (2 if noreply else 1):
            parsed = safe_strtol(tokens[1])
            if parsed is None:
                self._reply(_BAD_EXPTIME, noreply)
                return
            delay = parsed
        self.store.flush_all(delay)
        self._reply(b"OK\r\n", noreply)

    def _cmd_version(self, tokens: list[bytes]) -> None:
        self._emit(b"VERSION %b\r\n" % self.server.version)

    def _cmd_quit(self, tokens: list[bytes]) -> None:
        # Replies before the quit still go out; nothing after it is read.
        self._closing = True
        self._close_when_drained = True
        self._flush()

    def _cmd_verbosity(self, tokens: list[bytes]) -> None:
        level = self._number_arg(tokens, False, safe_strtoul, _BAD_FORMAT)
        if level is None:
            return
        self.server.verbosity = min(level, MAX_VERBOSITY)
        self._reply(b"OK\r\n", tokens[-1] == b"noreply")

    def _cmd_stats(self, tokens: list[bytes]) -> None:
        if len(tokens) == 1:
            self._emit(_stats_reply(self.server.general_stats()))
            return
        sub = tokens[1]
        if sub == b"reset":
            self.store.reset_stats()
            self._emit(b"RESET\r\n")
        elif sub == b"detail":
            arg = tokens[2] if len(tokens) > 2 else b""
            if arg in (b"on", b"off"):
                self._emit(b"OK\r\n")
            elif arg == b"dump":
                self._emit(_END)
            else:
                self._emit(b"CLIENT_ERROR usage: stats detail on|off|dump\r\n")
        elif sub == b"settings":
            self._emit(_stats_reply(self.server.settings_stats()))
        elif sub == b"sizes":
            self._emit(b"STAT sizes_status disabled\r\n" + _END)
        elif sub in (b"items", b"slabs", b"conns"):
            self._emit(_END)
        else:
            self._emit(_ERROR)

    def _cmd_shutdown(self, tokens: list[bytes]) -> None:
        self._emit(b"ERROR: shutdown not enabled\r\n")

    def _cmd_cache_memlimit(self, tokens: list[bytes]) -> None:
        mb = self._number_arg(tokens, False, safe_strtoul, _ERROR)
        if mb is None:
            return
        noreply = tokens[-1] == b"noreply"
        if mb < 8:
            self._reply(b"MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m\r\n", noreply)
        elif mb > 1_000_000_000:
            self._reply(b"MEMLIMIT_ADJUST_FAILED input value is megabytes not bytes\r\n", noreply)
        else:
            self.store.set_memory_limit(mb * 1024 * 1024)
            self._reply(b"OK\r\n", noreply)

    # -- output ----------------------------------------------------------

    def _flush(self) -> None:
        """Write the waiting replies: all in one write, or in chunks until paused."""
        out = self._out
        transport = self.transport
        if transport is None:
            return
        while out and not self._paused:
            pos = self._out_pos
            if self._out_bytes <= OUT_FLUSH_BYTES:
                data = out[pos] if len(out) - pos == 1 else b"".join(out[pos:])
                out.clear()
                self._out_pos = 0
                self._out_bytes = 0
            else:
                end = pos
                size = 0
                while end < len(out) and size < WRITE_CHUNK:
                    size += len(out[end])
                    end += 1
                data = b"".join(out[pos:end])
                self._out_pos = end
                self._out_bytes -= size
            self.counters.bytes_out += len(data)
            transport.write(data)  # may call pause_writing()
        if not out and self._close_when_drained:
            self._close_when_drained = False
            transport.close()

    def _drop_output(self) -> None:
        self._out.clear()
        self._out_pos = 0
        self._out_bytes = 0


def _append_value(out: list[bytes], key: bytes, it: Item, return_cas: bool) -> int:
    """Append the ``VALUE`` reply of one item (header, then the stored data); its bytes."""
    data = it.data
    if return_cas:
        head = b"VALUE %b %d %d %d\r\n" % (key, it.flags, len(data) - 2, it.cas)
    else:
        head = b"VALUE %b %d %d\r\n" % (key, it.flags, len(data) - 2)
    out.append(head)
    out.append(data)
    return len(head) + len(data)


def _is_get_line(line: bytes) -> bool:
    body = line.lstrip(b" ")
    return len(line) - len(body) <= 100 and body.startswith((b"get ", b"gets "))


_STORE_MODES = {
    b"set": StoreMode.SET,
    b"add": StoreMode.ADD,
    b"replace": StoreMode.REPLACE,
    b"append": StoreMode.APPEND,
    b"prepend": StoreMode.PREPEND,
    b"cas": StoreMode.CAS,
}

_HANDLERS: dict[bytes, Callable[[KvProtocol, list[bytes]], None]] = {
    b"get": KvProtocol._cmd_get,
    b"gets": KvProtocol._cmd_get,
    b"bget": KvProtocol._cmd_get,
    b"gat": KvProtocol._cmd_gat,
    b"gats": KvProtocol._cmd_gat,
    **dict.fromkeys(_STORE_MODES, KvProtocol._cmd_update),
    b"incr": KvProtocol._cmd_delta,
    b"decr": KvProtocol._cmd_delta,
    b"delete": KvProtocol._cmd_delete,
    b"touch": KvProtocol._cmd_touch,
    b"flush_all": KvProtocol._cmd_flush_all,
    b"version": KvProtocol._cmd_version,
    b"quit": KvProtocol._cmd_quit,
    b"verbosity": KvProtocol._cmd_verbosity,
    b"stats": KvProtocol._cmd_stats,
    b"shutdown": KvProtocol._cmd_shutdown,
    b"cache_memlimit": KvProtocol._cmd_cache_memlimit,
}
