"""YAML loading for configs: safe, and `1e-3` is a float (YAML 1.1 would read a string)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml


class _Loader(yaml.SafeLoader):
    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        """A key written twice in one mapping is refused (YAML would keep the last silently)."""
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: YAML's own way to override
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in first:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {key!r} is written twice in one mapping (first on line {first[key] + 1}): keep one",
                        key_node.start_mark,
                    )
                first[key] = key_node.start_mark.line
            except TypeError:  # an unhashable key: the constructor says so itself
                pass
        return super().construct_mapping(node, deep)


_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def load(text: str, source: str = "YAML") -> Any:
    """Parse YAML text; a syntax error names `source` (a file, an override), the line and
    the column, in one line."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        context = getattr(e, "context", None)
        raise ValueError(f"{source}{where}: invalid YAML: {problem}" + (f" ({context})" if context else "")) from None


def load_file(path: str | os.PathLike, what: str = "config") -> Any:
    """Parse a YAML file; a missing file, a directory, a binary file or a syntax error is
    a one-line error naming the file."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory: give the YAML file inside it")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        raise ValueError(f"{what} {path} is not a text file (YAML is UTF-8 text): is it the right file?")
    return load(text, str(path))
