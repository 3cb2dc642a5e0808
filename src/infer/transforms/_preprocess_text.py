"""A preprocessing spec written as text: the one syntax every command's `--preprocess` takes.

    image:letterbox,size=640,mean=0.485/0.456/0.406,std=0.229/0.224/0.225
    images=image:stretch,size=224x224          # NAME=...: for one input of several
    tensor:source_dtype=int16,scale=1/32768
    spec.json  or  spec.toml                   # keys: Preprocess.image's (or .tensor's) keywords

After `KIND:` come comma-separated items: a bare word is the image's resize mode (`letterbox`),
`key=value` sets a keyword of `Preprocess.image` / `Preprocess.tensor`. Lists are separated by
`/` (`mean=0.485/0.456/0.406`, `transpose=0/3/1/2`); a size is `640` or `HEIGHTxWIDTH`; a
single number may be a fraction (`scale=1/255`). A file holds one spec (optionally with
`kind = "tensor"`; image is the default) or a table per input name.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import OptionError
from .preprocess import RESIZE_MODES, ImagePreprocess, Preprocess, TensorPreprocess

KINDS: dict[str, type[ImagePreprocess] | type[TensorPreprocess]] = {
    "image": ImagePreprocess,
    "tensor": TensorPreprocess,
}
# How each keyword's text is read (any keyword not listed is a string).
_SIZE = {"size"}
_NUMBER = {("image", "scale"), ("image", "pad_value")}
_NUMBERS = {("image", "mean"), ("image", "std"), ("tensor", "scale"), ("tensor", "offset")}
_INTS = {("tensor", "transpose")}

Spec = Preprocess | dict[str, Preprocess]


def parse(text: str, option: str = "--preprocess") -> Spec:
    """The spec `text` writes: one Preprocess, or {input name: Preprocess}.

    text: the inline syntax, a JSON object, or a path to a .json/.toml file. Raises
    OptionError naming `option` and the part that is wrong.
    """
    text = text.strip()
    if not text:
        raise OptionError(f"{option} is empty; give e.g. image:letterbox,size=640 or a .json file")
    path = Path(text)
    if path.suffix.lower() in (".json", ".toml"):
        return _from_file(path, option)
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as e:
            raise OptionError(f"{option}: not valid JSON ({e})") from e
        return _from_mapping(data, option, text)
    return _inline(text, option)


def parse_many(items: list[str], option: str = "--preprocess") -> Spec | None:
    """Several `option` values (one per input, each `NAME=...`) as one spec; None for none."""
    if not items:
        return None
    if len(items) == 1:
        return parse(items[0], option)
    out: dict[str, Preprocess] = {}
    for item in items:
        spec = parse(item, option)
        if not isinstance(spec, dict):
            raise OptionError(
                f"{option} {item!r}: with several {option} options each names its input "
                "(NAME=image:...)"
            )
        twice = sorted(set(spec) & set(out))
        if twice:
            raise OptionError(f"{option}: input(s) {twice} given twice")
        out.update(spec)
    return out


def _inline(text: str, option: str) -> Spec:
    head, colon, rest = text.partition(":")
    name = None
    if colon and "=" in head and "," not in head:
        name, _, head = head.partition("=")
        name = name.strip()
        if not name:
            raise OptionError(f"{option} {text!r}: the input name before '=' is empty")
    kind = head.strip()
    if kind not in KINDS:
        raise OptionError(
            f"{option} {text!r}: {kind!r} is not a kind of preprocessing; start with image: or "
            "tensor: (e.g. image:letterbox,size=640), or give a .json/.toml file"
        )
    fields: dict[str, Any] = {}
    for part in (p.strip() for p in rest.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep:
            if kind == "image" and key in RESIZE_MODES:
                key, value = "resize", key
            else:
                modes = f"a resize mode ({', '.join(RESIZE_MODES)}) or " if kind == "image" else ""
                raise OptionError(f"{option} {text!r}: {part!r} is not {modes}key=value")
        if key in fields:
            raise OptionError(f"{option} {text!r}: {key!r} is given twice")
        fields[key] = _value(kind, key, value.strip(), option, text)
    spec = _build(kind, fields, option, text)
    return {name: spec} if name is not None else spec


def _value(kind: str, key: str, value: str, option: str, text: str) -> Any:
    def bad(what: str) -> OptionError:
        return OptionError(f"{option} {text!r}: {key}={value!r} is not {what}")

    try:
        if key in _SIZE:
            sizes = [int(v) for v in value.replace("x", "/").split("/")]
            if len(sizes) not in (1, 2):
                raise bad("a size (640 or HEIGHTxWIDTH)")
            return sizes[0] if len(sizes) == 1 else tuple(sizes)
        if (kind, key) in _NUMBER:
            return _number(value)
        if (kind, key) in _NUMBERS:
            values = [float(v) for v in value.split("/")]
            return values[0] if len(values) == 1 else tuple(values)
        if (kind, key) in _INTS:
            return tuple(int(v) for v in value.split("/"))
    except ValueError:
        what = {"size": "a size (640 or HEIGHTxWIDTH)", "transpose": "integers such as 0/3/1/2"}
        raise bad(what.get(key, "a number or numbers separated by /")) from None
    if value.lower() in ("none", "null"):
        return None
    return value


def _number(value: str) -> float:
    top, sep, bottom = value.partition("/")
    return float(top) / float(bottom) if sep else float(value)


def _build(kind: str, fields: Mapping[str, Any], option: str, text: str) -> Preprocess:
    try:
        return Preprocess.from_dict({"kind": kind, **fields})
    except OptionError as e:
        raise OptionError(f"{option} {text!r}: {e}") from e
    except TypeError as e:  # a value of a type the spec cannot take
        raise OptionError(f"{option} {text!r}: {e}") from e


def _from_file(path: Path, option: str) -> Spec:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise OptionError(f"{option} {str(path)!r}: the file cannot be read ({e})") from e
    try:
        json_file = path.suffix.lower() == ".json"
        data = json.loads(raw) if json_file else _toml().loads(raw.decode())
    except (ValueError, UnicodeDecodeError) as e:  # tomllib.TOMLDecodeError is a ValueError
        raise OptionError(f"{option} {str(path)!r}: not valid {path.suffix[1:]} ({e})") from e
    return _from_mapping(data, option, str(path))


def _toml() -> Any:
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    try:
        import tomli  # type: ignore[import-not-found]  # Python 3.10's TOML reader
    except ImportError:
        raise OptionError(
            "reading a .toml preprocess spec needs Python 3.11 or `pip install tomli`; "
            "or give a .json file"
        ) from None
    return tomli


def _from_mapping(data: Any, option: str, where: str) -> Spec:
    if not isinstance(data, Mapping) or not data:
        raise OptionError(
            f"{option} {where!r}: expected a table of Preprocess.image keywords (or one table "
            f"per input name), got {type(data).__name__ if data else 'nothing'}"
        )
    known = {f.name for cls in KINDS.values() for f in dataclasses.fields(cls)}
    known |= {"kind", "format"}
    if all(isinstance(v, Mapping) for v in data.values()) and not set(data) & known:
        return {name: _one(value, option, f"{where}: {name}") for name, value in data.items()}
    return _one(data, option, where)


def _one(data: Mapping[str, Any], option: str, where: str) -> Preprocess:
    fields = dict(data)
    kind = fields.pop("kind", "image")
    if kind not in KINDS:
        raise OptionError(f"{option} {where!r}: kind {kind!r} is not valid; use image or tensor")
    return _build(kind, fields, option, where)
