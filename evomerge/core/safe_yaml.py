"""The one YAML reader of evomerge: run configs, merge configs, ``--set`` values, run files.

``yaml.safe_load`` never runs code, but a hostile or damaged file can still hurt: an alias
bomb (a few lines that expand to billions of nodes), an alias that contains itself, nesting
deep enough to exhaust Python's stack, a key given twice (YAML keeps the last one silently), or
bytes that are not UTF-8. Each of those is refused here with one line (:class:`ValueError`
subclass :class:`YamlError`, worded for the file it came from).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_DEPTH = 64  # sections inside sections; real configs use fewer than 8
MAX_NODES = 200_000  # scalars, lists and mappings after aliases are expanded


class YamlError(ValueError):
    """Why a text is not acceptable YAML, one line (without the file's name)."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that bounds nesting while composing and refuses duplicate keys."""

    def compose_node(self, parent, index):
        depth = getattr(self, "_depth", 0)
        if depth >= MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise YamlError(f"line {mark.line + 1}: nested deeper than {MAX_DEPTH} levels")
        self._depth = depth + 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth = depth

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
                seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:
                continue  # an unhashable key: SafeLoader reports it itself
            if first is not None:
                raise YamlError(
                    f"line {key_node.start_mark.line + 1}: duplicate key '{key}' (first given "
                    f"at line {first}); keep one of them"
                )
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root) -> int:
    """Nodes after expanding aliases (each shared node counted once per use); refuses cycles."""
    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            active.discard(key)
            children = _children(node)
            sizes[key] = min(MAX_NODES + 1, 1 + sum(sizes[id(c)] for c in children))
            continue
        if key in sizes:
            continue
        if key in active:
            mark = node.start_mark
            raise YamlError(f"line {mark.line + 1}: an alias refers to a node that contains it")
        active.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)
    return sizes[id(root)]


def _children(node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def loads(text: str) -> Any:
    """Parse one YAML document; :class:`YamlError` for anything unsafe or invalid."""
    try:
        loader = _Loader(text)  # reads the text at once: a character YAML refuses fails here
    except yaml.reader.ReaderError as exc:
        char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        raise YamlError(
            f"position {exc.position}: character {char} is not allowed in YAML; remove it"
        ) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node) > MAX_NODES:
            raise YamlError(
                f"expands to more than {MAX_NODES} values (aliases repeating aliases); "
                "write the values out"
            )
        return loader.construct_document(node)
    except YamlError:
        raise
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise YamlError(f"{where}not valid YAML: {problem}") from None
    except RecursionError:
        raise YamlError(f"nested deeper than {MAX_DEPTH} levels") from None
    finally:
        loader.dispose()


def decode(data: bytes) -> str:
    """UTF-8 text, or :class:`YamlError` naming the first byte that is not."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlError(
            f"byte {exc.start} (0x{data[exc.start]:02x}) is not UTF-8 text; save the file as UTF-8"
        ) from None


def load_file(path: Path) -> Any:
    """Read and parse ``path`` (OSError for a missing or unreadable file, else YamlError)."""
    return loads(decode(Path(path).read_bytes()))
