"""Bounded reading and parsing of files we did not write: manifests for `check`, policy files.

Every limit here exists so that a hostile or careless input costs bounded time and memory and
ends in one line naming what is wrong (a `LoadError`), never a hang, a traceback or an
exhausted machine:

- only regular files are read (a FIFO would block, /dev/zero never ends), and at most
  `limit` bytes of them;
- YAML documents are scanned as an event stream first (libyaml's parser is iterative, its
  composer is not), so depth and alias expansion are measured before anything is built: an
  alias bomb ("billion laughs") is refused by its expanded size, like Kubernetes' YAML decoding
  refuses excessive aliasing (gopkg.in/yaml.v2 v2.4.0 and yaml.v3, decode.go allowedAliasRatio);
- duplicate mapping keys are refused, naming the key and both lines (kubectl does the same
  through sigs.k8s.io/yaml's strict mode); silent last-wins hides typos;
- integers too long for Python's int conversion (over 4,300 digits) are a reason, not a crash.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from typing import Any, BinaryIO

import yaml
from yaml.nodes import MappingNode, ScalarNode

# The API server refuses request bodies over 3 MiB (apiserver's MaxRequestBodyBytes,
# k8s.io/apiserver/pkg/server/config.go), so no real object is bigger.
MAX_DOCUMENT_BYTES = 3 * 1024 * 1024
# A manifest file may hold many documents; each is checked against MAX_DOCUMENT_BYTES.
MAX_FILE_BYTES = 16 * 1024 * 1024
# KubeVirt objects nest about 15 levels; CRD schemas about 40. Every code path we run on a
# parsed object (deepcopy, jsonpatch, json.dumps) recurses a few frames per level, so 100
# levels stays far below Python's recursion limit of 1,000.
MAX_DEPTH = 100
# Nodes of one document after alias expansion: a 3 MiB document without aliases has at
# most ~1.5 M (two bytes a node), real ones far fewer.
MAX_NODES = 1_000_000


class LoadError(ValueError):
    """Why an input cannot be used, in one line, without the file name (callers add it)."""


# --- Reading --------------------------------------------------------------------------
def read_regular_file(path: str | os.PathLike[str], limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; LoadError otherwise.

    O_NONBLOCK makes opening a FIFO return at once instead of waiting for a writer; the
    fstat then refuses it, like devices and directories. Symlinks are followed (a loop is
    an OSError). The read stops one byte past the limit whatever the file claims.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise LoadError(f"cannot read: {err.strerror or err}") from None
    try:
        kind = os.fstat(fd).st_mode
        if not stat.S_ISREG(kind):
            raise LoadError(f"not a regular file ({_file_type(kind)}): refused")
        os.set_blocking(fd, True)
        with os.fdopen(os.dup(fd), "rb") as stream:
            return read_capped(stream, limit)
    except OSError as err:
        raise LoadError(f"cannot read: {err.strerror or err}") from None
    finally:
        os.close(fd)


def read_capped(stream: BinaryIO, limit: int) -> bytes:
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise LoadError(f"larger than the {limit} byte limit")
    return data


def _file_type(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not regular"


def utf8_text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise LoadError(f"not UTF-8 text (byte 0x{data[err.start]:02x} at offset "
                        f"{err.start})") from None


# --- Structure ------------------------------------------------------------------------
def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether dicts and lists nest more than `limit` levels; iterative, level by level."""
    level = [value] if isinstance(value, dict | list) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        children: list[Any] = []
        for item in level:
            members = item.values() if isinstance(item, dict) else item
            children.extend(child for child in members if isinstance(child, dict | list))
        level = children
    return False


# --- JSON -----------------------------------------------------------------------------
def json_document(text: str) -> Any:
    """One JSON document, with the same limits as YAML and duplicate keys refused."""
    if len(text.encode()) > MAX_DOCUMENT_BYTES:
        raise LoadError(f"document larger than the {MAX_DOCUMENT_BYTES} byte limit")
    try:
        value = json.loads(text, object_pairs_hook=_unique_pairs,
                           parse_constant=_no_constant)
    except json.JSONDecodeError as err:
        raise LoadError(f"invalid JSON at line {err.lineno}: {err.msg}") from None
    except RecursionError:
        raise LoadError(f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as err:  # a duplicate key, NaN, an integer of over 4,300 digits
        raise LoadError(f"invalid JSON: {_value_reason(err)}") from None
    if too_deep(value):
        raise LoadError(f"nested deeper than {MAX_DEPTH} levels")
    return value


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# --- YAML -----------------------------------------------------------------------------
def yaml_documents(text: str) -> list[Any]:
    """Every document of a YAML stream, after the scan has found it within the limits."""
    _scan(text)
    try:
        return list(yaml.load_all(text, Loader=_StrictLoader))
    except LoadError:
        raise
    except yaml.MarkedYAMLError as err:
        raise LoadError(_yaml_reason(err)) from None
    except yaml.YAMLError as err:
        raise LoadError(f"invalid YAML: {_first_line(err)}") from None
    except ValueError as err:  # e.g. int() of a 5,000-digit scalar
        raise LoadError(f"invalid YAML: {_value_reason(err)}") from None


def _scan(text: str) -> None:
    """Refuse a stream whose documents nest too deep, expand too far or are too big.

    The expanded size of an alias is the size its anchor's node had, so the count is exact
    without expanding anything.
    """
    try:
        for _ in _checked_events(text):
            pass
    except yaml.MarkedYAMLError as err:
        raise LoadError(_yaml_reason(err)) from None
    except yaml.YAMLError as err:
        raise LoadError(f"invalid YAML: {_first_line(err)}") from None


def _checked_events(text: str) -> Iterator[yaml.Event]:
    sizes: dict[str, int] = {}  # anchor -> expanded node count of its node
    open_nodes: list[tuple[str | None, int]] = []  # (anchor, count when it started)
    nodes, start = 0, 0
    for event in yaml.parse(text, Loader=yaml.CSafeLoader):
        if isinstance(event, yaml.DocumentStartEvent):
            nodes, start = 0, _index(event.start_mark)
        elif isinstance(event, yaml.DocumentEndEvent):
            if _index(event.end_mark) - start > MAX_DOCUMENT_BYTES:
                raise LoadError(f"document at line {_line(event.start_mark)} is larger than "
                                f"the {MAX_DOCUMENT_BYTES} byte limit")
        elif isinstance(event, yaml.AliasEvent):
            nodes += sizes.get(event.anchor or "", 1)
        elif isinstance(event, yaml.ScalarEvent):
            nodes += 1
            if event.anchor:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.CollectionStartEvent):
            nodes += 1
            open_nodes.append((event.anchor, nodes))
            if len(open_nodes) > MAX_DEPTH:
                raise LoadError(f"nested deeper than {MAX_DEPTH} levels (line "
                                f"{_line(event.start_mark)})")
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, began = open_nodes.pop()
            if anchor:
                sizes[anchor] = nodes - began + 1
        if nodes > MAX_NODES:
            raise LoadError(f"more than {MAX_NODES} nodes after expanding aliases (line "
                            f"{_line(event.start_mark)}): refused as an alias bomb")
        yield event


def _index(mark: Any) -> int:
    return int(mark.index) if mark is not None else 0


def _line(mark: Any) -> int:
    return int(mark.line) + 1 if mark is not None else 0


class _StrictLoader(yaml.CSafeLoader):
    """libyaml's safe loader, refusing duplicate keys in a mapping."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[tuple[str, str], int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = (key_node.tag, key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise LoadError(f"duplicate key {key_node.value!r} at line {line} "
                                f"(first at line {seen[key]})")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)



def _yaml_reason(err: yaml.MarkedYAMLError) -> str:
    mark = err.problem_mark or err.context_mark
    where = f" at line {mark.line + 1}" if mark is not None else ""
    return f"invalid YAML{where}: {_first_line(err.problem or err)}"


def _value_reason(err: ValueError) -> str:
    if "integer string conversion" in str(err):  # Python's int_max_str_digits guard
        return "a number with more than 4300 digits"
    return _first_line(err)


def _first_line(value: object, limit: int = 200) -> str:
    line = " ".join(str(value).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
