"""Feeds for a model's inputs: seeded random arrays, arrays read from files, folders of samples.

The tools (`infer run | bench | compare | build`) and `infer.compare` share these so that the
same seed gives the same feeds everywhere. Random values are uniform in [0, 1) for floating
types, 0 or 1 for integers, and random for booleans, except a sequence model's inputs that
have a role (`infer.sequence`: token ids, masks, positions, a KV cache's past). A dynamic
dimension takes the size given for it (by input shape or by dimension name) and otherwise 1
(`resolve_shapes`), or the size a real run of that kind of model would give it
(`representative_shapes`); one named by an expression of others takes their value.
"""

from __future__ import annotations

import ast
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import sequence
from .errors import InputError
from .model import Model, ModelFormat
from .sequence import SEQUENCE, Phase, Roles
from .tensors import Dim, TensorSpec, describe, describe_specs, dtype_info

log = logging.getLogger(__name__)

DEFAULT_DIM = 1
"""The size a dynamic dimension takes when no shape names it."""

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

ShapeArg = Mapping[str, "Sequence[int] | int"]


def parse_shape(text: str) -> tuple[int, ...]:
    """'1x3x224x224' (or '1,3,224,224'; '' for a scalar) -> (1, 3, 224, 224)."""
    text = text.strip()
    if text in ("", "()", "[]"):
        return ()
    parts = re.split(r"[x,×]", text.strip("()[] "))
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise InputError(
            f"shape {text!r} is not valid: expected sizes separated by 'x', e.g. 1x3x224x224"
        ) from None
    if any(d < 0 for d in dims):
        raise InputError(f"shape {text!r} has a negative size")
    return dims


def parse_shapes(items: Iterable[str]) -> dict[str, tuple[int, ...] | int]:
    """['x=1x3x224x224', 'batch=4'] -> {'x': (1, 3, 224, 224), 'batch': (4,)}.

    A key names an input (its whole shape) or a symbolic dimension (its size); which one is
    settled against the model's inputs by `resolve_shapes`.
    """
    out: dict[str, tuple[int, ...] | int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--shape {item!r}: expected NAME=SHAPE, e.g. images=1x3x224x224")
        out[name.strip()] = parse_shape(value)
    return out


def resolve_shapes(
    specs: Sequence[TensorSpec],
    given: ShapeArg | None = None,
    *,
    arrays: Mapping[str, np.ndarray] | None = None,
    default: int = DEFAULT_DIM,
) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """Concrete shapes for every input, and a note for each dynamic dimension set to `default`.

    `given` maps an input name to its whole shape, or a dimension name ("batch", "N") to a
    size; `arrays` are inputs already at hand, whose shapes also size the dimensions they
    name. Raises InputError for names that are neither, and for shapes that contradict the
    model's fixed dimensions.
    """

    def fill(spec: TensorSpec, axis: int, dim: Dim) -> tuple[int, str]:
        return default, ""

    return _fill(specs, given, arrays, fill)


def representative_shapes(
    specs: Sequence[TensorSpec],
    shapes: ShapeArg | None = None,
    *,
    arrays: Mapping[str, np.ndarray] | None = None,
    model: Model | None = None,
    roles: Roles | None = None,
    phase: Phase | None = None,
) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """The input shapes of a run a user would really make, and a note for each size chosen.

    Every input is sized from, in this order: `shapes` (an input's whole shape, or a
    dimension name's size, as `resolve_shapes` takes them; the opt of a (min, opt, max)
    triple), the example `arrays`, the model's metadata where it says (a key named after an
    input, a dimension, or an image size such as Ultralytics' "imgsz"), else sizes a model
    of that kind takes: 1 for a batch (the first axis, or a dimension called batch/N), an
    image input's height and width from what its outputs say it is (`IMAGE_SIZES`), a
    sequence dimension `SEQUENCE`, and 1 where nothing says (noted, to set with --shape).
    A sequence model's dimensions follow `phase` (`infer.sequence.phases`; by default the
    run it spends its life on: a decoder's decode step after a `SEQUENCE`-token context, an
    encoder's pass over `SEQUENCE` tokens), its roles read from `model` unless given. A
    named dimension gets one value across all inputs, and one named by an expression of
    others ("past_sequence_length + sequence_length") their value. Raises InputError as
    `resolve_shapes` does.
    """
    given = {k: _opt(v) for k, v in (shapes or {}).items()}
    if roles is None:
        roles = roles_of(specs, model)
    if phase is None:
        phase = next(iter(sequence.phases(roles)), None)
    by_phase = phase.sizes(roles) if phase is not None else {}
    meta_shapes, meta_sizes, meta_image, meta_key = _metadata(model, specs)
    outputs = model.outputs if model is not None and model.format is ModelFormat.ONNX else None
    images = {s.name: _image_axes(s) for s in specs}

    def fill(spec: TensorSpec, axis: int, dim: Dim) -> tuple[int, str]:
        if spec.name in meta_shapes:
            return meta_shapes[spec.name][axis], f"from the model's metadata {spec.name!r}"
        if isinstance(dim, str) and dim in meta_sizes:
            return meta_sizes[dim], f"from the model's metadata {dim!r}"
        if isinstance(dim, str) and dim in by_phase:
            return by_phase[dim], f"a sequence model's {phase}"
        hw = images[spec.name]
        if hw is not None and axis in hw:
            if meta_image is not None:
                return meta_image[hw.index(axis)], f"from the model's metadata {meta_key!r}"
            (h, w), why = _image_size(spec, hw, outputs)
            return (h if axis == hw[0] else w), why
        words = set(re.split(r"[^a-z0-9]+", dim.lower())) if isinstance(dim, str) else set()
        if axis == 0 or words & _BATCH_WORDS:
            return 1, "the batch dimension"
        if words & _SEQUENCE_WORDS:
            return SEQUENCE, "a typical sequence length"
        return DEFAULT_DIM, "nothing says how large"

    return _fill(specs, given, arrays, fill)


def roles_of(specs: Sequence[TensorSpec], model: Model | None) -> Roles:
    """A model's sequence roles: read from its graph where it is ONNX, else from the inputs'
    names and shapes alone."""
    if model is not None and model.format is ModelFormat.ONNX:
        return sequence.read(model)
    return sequence.from_specs(specs, ())


IMAGE_SIZES = {
    "classifier": (224, 224),
    "detector": (640, 640),
    "text line": (48, 320),
    "text direction": (48, 192),
}
"""Height and width `representative_shapes` gives an image input with open ones, by what the
model's outputs say it is: class scores ([N, C]) a classifier, two of them ([N, 2]) a text
line's direction classifier (0 or 180 degrees, as PP-OCR's cls, which takes 48x192 lines), a
sequence of class scores ([N, T, C], as CTC text recognizers give) a text-line recognizer,
else a detector (maps, boxes)."""

_BATCH_WORDS = frozenset({"batch", "batchsize", "bs", "n", "b"})
_SEQUENCE_WORDS = frozenset(
    {"seq", "sequence", "seqlen", "length", "len", "time", "frames", "tokens", "steps", "t"}
)
_IMAGE_KEYS = ("imgsz", "img_size", "image_size", "imgsize", "input_size", "resolution")
_SIZES_TEXT = re.compile(r"[\[(]?\s*\d+(\s*[,x×]\s*\d+)*\s*[\])]?")

Fill = Callable[[TensorSpec, int, "Dim"], tuple[int, str]]


def _fill(
    specs: Sequence[TensorSpec],
    given: ShapeArg | None,
    arrays: Mapping[str, np.ndarray] | None,
    fill: Fill,
) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """Shapes from `given` and `arrays` (see resolve_shapes); `fill(spec, axis, dim)` gives
    (size, why) for each dimension they leave open, once per dimension name."""
    given = dict(given or {})
    arrays = dict(arrays or {})
    names = {s.name for s in specs}
    symbols = {d for s in specs for d in (s.shape or ()) if isinstance(d, str)}
    symbols |= {n for d in symbols for n in sequence.symbols(d)}
    sizes: dict[str, int] = {}
    for spec in specs:
        if spec.name in arrays and spec.shape is not None:
            shape = np.shape(arrays[spec.name])
            if len(shape) == len(spec.shape):
                for d, size in zip(spec.shape, shape):
                    if isinstance(d, str):
                        sizes.setdefault(d, int(size))
    for key, value in given.items():
        if key in names:
            continue
        if key in symbols:
            dims = (value,) if isinstance(value, int) else tuple(value)
            if len(dims) != 1:
                raise InputError(
                    f"--shape {key}=...: {key!r} is a dimension name, so it takes one size, "
                    f"got {'x'.join(map(str, dims))}"
                )
            sizes[key] = int(dims[0])
            continue
        listing = describe_specs(specs)
        raise InputError(
            f"--shape {key}: no input or dimension is called {key!r}; the model's inputs are "
            f"{listing}"
        )
    for d, size in list(sizes.items()):  # an expression's one unknown name, from its size
        solved = sequence.solve(d, size, sizes)
        if solved is not None:
            sizes.setdefault(*solved)
    shapes: dict[str, tuple[int, ...]] = {}
    chosen: list[tuple[list[str], Dim, int, str]] = []  # (where, dim, size, why)
    noted: dict[str, int] = {}  # dimension name -> its entry in `chosen`
    for spec in specs:
        if spec.name in arrays:
            shapes[spec.name] = tuple(np.shape(arrays[spec.name]))
            continue
        if spec.name in given:
            value = given[spec.name]
            shape = (value,) if isinstance(value, int) else tuple(int(d) for d in value)
            _check_against(spec, shape)
            shapes[spec.name] = shape
            continue
        if spec.shape is None:
            raise InputError(
                f"input {spec.name!r} has no known rank; give its shape with "
                f"--shape {spec.name}=... or its value with --input {spec.name}=FILE.npy"
            )
        out = []
        for axis, d in enumerate(spec.shape):
            if isinstance(d, int):
                out.append(d)
                continue
            if isinstance(d, str) and d in sizes:
                out.append(sizes[d])
                if d in noted:
                    chosen[noted[d]][0].append(f"{spec.name}[{axis}]")
                continue
            if sequence.is_expression(d):
                assert isinstance(d, str)
                for name in sorted(sequence.symbols(d) - set(sizes)):
                    part, why = fill(spec, axis, name)
                    sizes[name] = part
                    noted[name] = len(chosen)
                    chosen.append(([f"{spec.name}[{axis}]"], name, part, why))
                computed = sequence.evaluate(d, sizes)
                if computed is not None and computed >= 0:
                    out.append(computed)
                    sizes[d] = computed
                    continue
            size, why = fill(spec, axis, d)
            out.append(size)
            if isinstance(d, str) and d:
                sizes[d] = size
                noted[d] = len(chosen)
            chosen.append(([f"{spec.name}[{axis}]"], d, size, why))
        shapes[spec.name] = tuple(out)
    notes = [
        f"{', '.join(where)} ({repr(d) if d else '?'}) = {size}" + (f": {why}" if why else "")
        for where, d, size, why in chosen
    ]
    return shapes, notes


def _opt(value: Any) -> Any:
    """A (min, opt, max) triple of shapes -> its opt; anything else as it is."""
    if (
        isinstance(value, (tuple, list))
        and len(value) == 3
        and all(isinstance(v, (tuple, list)) for v in value)
    ):
        return tuple(value[1])
    return value


def _image_axes(spec: TensorSpec) -> tuple[int, int] | None:
    """(height axis, width axis) of an NCHW or NHWC image input with 1, 3 or 4 channels whose
    height or width is open; None for any other input."""
    shape = spec.shape
    if shape is None or len(shape) != 4 or np.dtype(spec.dtype).kind not in "fu":
        return None
    if isinstance(shape[1], int) and shape[1] in (1, 3, 4):
        hw = (2, 3)
    elif isinstance(shape[3], int) and shape[3] in (1, 3, 4):
        hw = (1, 2)
    else:
        return None
    return hw if any(not isinstance(shape[a], int) for a in hw) else None


def _image_size(
    spec: TensorSpec, hw: tuple[int, int], outputs: Sequence[TensorSpec] | None
) -> tuple[tuple[int, int], str]:
    """Height and width for an image input, and why: a size of its kind where both are open,
    else the open one from the fixed one (a text line's width, or square)."""
    shape = spec.shape or ()
    kind, why = "classifier", "an image classifier's input size"
    ranks = [len(o.shape) for o in outputs or () if o.shape is not None]
    sequence = any(
        o.shape is not None
        and len(o.shape) == 3
        and isinstance(o.shape[2], int)
        and not isinstance(o.shape[1], int)
        for o in outputs or ()
    )
    two_way = bool(outputs) and all(
        o.shape is not None and len(o.shape) == 2 and o.shape[1] == 2 for o in outputs or ()
    )
    if outputs is None:
        why += " (the outputs are not known)"
    elif two_way:
        kind = "text direction"
        why = "a text line's direction classifier's (it outputs two classes: 0 or 180 degrees)"
    elif sequence:
        kind, why = "text line", "a text-line recognizer's (it outputs a sequence of scores)"
    elif ranks and max(ranks) > 2:
        kind, why = "detector", "a detector's input size (it outputs maps or boxes)"
    h, w = IMAGE_SIZES[kind]
    fixed_h, fixed_w = shape[hw[0]], shape[hw[1]]
    if isinstance(fixed_h, int):
        w = IMAGE_SIZES["text line"][1] if fixed_h <= 64 else fixed_h
        why = f"{'a text line' if fixed_h <= 64 else 'square'} at height {fixed_h}"
        h = fixed_h
    elif isinstance(fixed_w, int):
        h, why = fixed_w, f"square at width {fixed_w}"
    return (h, w), why


def _metadata(
    model: Model | None, specs: Sequence[TensorSpec]
) -> tuple[dict[str, tuple[int, ...]], dict[str, int], tuple[int, int] | None, str]:
    """What an ONNX model's metadata says about sizes: {input: whole shape}, {dimension name:
    size}, an image (height, width) and the key that gave it."""
    if model is None or model.format is not ModelFormat.ONNX:
        return {}, {}, None, ""
    by_name = {s.name: s for s in specs}
    symbols = {d for s in specs for d in (s.shape or ()) if isinstance(d, str)}
    shapes: dict[str, tuple[int, ...]] = {}
    sizes: dict[str, int] = {}
    image: tuple[int, int] | None = None
    image_key = ""
    for prop in model._skeleton.metadata_props:
        key, text = prop.key, prop.value.strip()
        if len(text) > 64 or not _SIZES_TEXT.fullmatch(text):
            continue
        values = tuple(int(v) for v in re.findall(r"\d+", text))
        spec = by_name.get(key)
        if spec is not None and spec.shape is not None and len(values) == len(spec.shape):
            if all(not isinstance(d, int) or d == v for d, v in zip(spec.shape, values)):
                shapes[key] = values
        elif key in symbols and len(values) == 1:
            sizes[key] = values[0]
        elif key.lower() in _IMAGE_KEYS and image is None and len(values) in (1, 2):
            image = (values[0], values[-1])
            image_key = key
    return shapes, sizes, image, image_key


IMAGE_SIZE_KEYS = _IMAGE_KEYS
"""Metadata keys `representative_shapes` reads an image size from ("imgsz": "[640, 640]")."""


def metadata_image_size(
    model: Model, spec: TensorSpec, axes: tuple[int, int]
) -> tuple[tuple[int, int], str] | None:
    """(height, width) of image input `spec` (`axes`: its height and width axes) where the
    model says, as `representative_shapes` reads it: a fixed size, else the model's metadata
    (the input's whole shape, a dimension's name, an image size key such as "imgsz"); and
    the keys that said. None where neither says for both."""
    shapes, sizes, image, image_key = _metadata(model, model.inputs)
    shape = spec.shape or ()
    if len(shape) <= max(axes):
        return None
    hw: list[int] = []
    keys: list[str] = []
    for i, axis in enumerate(axes):
        dim = shape[axis]
        if isinstance(dim, int):
            hw.append(dim)
        elif spec.name in shapes:
            hw.append(shapes[spec.name][axis])
            keys.append(spec.name)
        elif isinstance(dim, str) and dim in sizes:
            hw.append(sizes[dim])
            keys.append(dim)
        elif image is not None:
            hw.append(image[i])
            keys.append(image_key)
        else:
            return None
    return (hw[0], hw[1]), ", ".join(repr(k) for k in dict.fromkeys(keys))


def profile(shape_sets: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, Any]:
    """`Engine.load(shapes=...)` covering every set of input shapes, for backends that build
    for fixed shapes (TensorRT): an input's shape where all sets agree, else a (min, opt,
    max) triple, element-wise, with opt the first set's shape."""
    out: dict[str, Any] = {}
    if not shape_sets:
        return out
    for name, first in shape_sets[0].items():
        shapes = [tuple(s[name]) for s in shape_sets if name in s]
        if len({len(x) for x in shapes}) != 1:
            continue  # ranks differ: leave this input to the backend
        if all(x == shapes[0] for x in shapes):
            out[name] = tuple(first)
        else:
            lo = tuple(min(d) for d in zip(*shapes))
            hi = tuple(max(d) for d in zip(*shapes))
            out[name] = (lo, tuple(first), hi)
    return out


def _check_against(spec: TensorSpec, shape: tuple[int, ...]) -> None:
    if spec.shape is None:
        return
    bad = len(shape) != len(spec.shape) or any(
        isinstance(want, int) and want != got for want, got in zip(spec.shape, shape)
    )
    if bad:
        raise InputError(
            f"--shape {spec.name}={'x'.join(map(str, shape))} does not fit the input "
            f"{describe(spec.shape, spec.dtype)}"
        )


def random_array(shape: Sequence[int], dtype: Any, rng: np.random.Generator) -> np.ndarray:
    """Uniform [0, 1) floats, 0/1 integers, random booleans; 'a' for strings."""
    info = dtype_info(dtype)
    np_dtype = info.numpy
    shape = tuple(shape)
    if np_dtype == np.bool_:
        return rng.random(shape) < 0.5
    if np_dtype.kind == "O":
        return np.full(shape, "a", dtype=object)
    if np_dtype.kind == "c":
        return (rng.random(shape) + 1j * rng.random(shape)).astype(np_dtype)
    if np_dtype.kind in "iu" or info.name in ("int4", "uint4", "int2", "uint2"):
        return rng.integers(0, 2, shape).astype(np_dtype)
    return rng.random(shape, dtype=np.float32).astype(np_dtype)


def random_feeds(
    specs: Sequence[TensorSpec],
    shapes: ShapeArg | None = None,
    *,
    seed: int = 0,
    given: Mapping[str, np.ndarray] | None = None,
    roles: Roles | None = None,
    phase: Phase | None = None,
) -> dict[str, np.ndarray]:
    """Seeded random feeds for `specs`, in input order; inputs in `given` are taken as they are.

    With a sequence model's `roles`, the inputs that have one get what such a model sees
    (`infer.sequence.feeds`: ids within the vocabulary, masks of ones, positions after the
    past), the others random values as any model's.
    """
    given = dict(given or {})
    unknown = sorted(set(given) - {s.name for s in specs})
    if unknown:
        listing = describe_specs(specs)
        raise InputError(f"unknown input(s) {unknown}; the model's inputs are {listing}")
    resolved, notes = resolve_shapes(specs, shapes, arrays=given)
    for note in notes:
        log.info("dynamic dimension %s; set it with --shape", note)
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.name in given:
            out[spec.name] = given[spec.name]
        else:
            out[spec.name] = random_array(resolved[spec.name], spec.dtype, rng)
    if roles is not None and roles.is_sequence:
        made = sequence.feeds(roles, specs, resolved, rng, phase=phase)
        out.update({k: v for k, v in made.items() if k not in given})
    return out


def read_inputs(items: Iterable[str], specs: Sequence[TensorSpec] = ()) -> dict[str, np.ndarray]:
    """Arrays from `--input` items: NAME=FILE.npy, FILE.npz (every array in it), NAME=VALUE.

    VALUE is a Python literal (a number or a nested list), for small inputs such as a sample rate;
    like Python data given to `Engine.run`, it takes the dtype of the input in `specs` it names
    when the kinds agree (`scale=2` into a float input is 2.0). Arrays from files keep theirs.
    """
    dtypes = {s.name: s.dtype for s in specs}
    out: dict[str, np.ndarray] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            path = Path(item)
            if path.suffix.lower() != ".npz":
                raise InputError(
                    f"--input {item!r}: expected NAME=FILE.npy, NAME=VALUE or FILE.npz"
                )
            out.update(_read_npz(path))
            continue
        name = name.strip()
        path = Path(value)
        if path.suffix.lower() in (".npy", ".npz") or path.exists():
            out[name] = _read_array(path, name)
        else:
            out[name] = _literal(name, value, dtypes.get(name))
    return out


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise InputError(f"input file {str(path)!r} cannot be read as .npz: {e}") from e


def _read_array(path: Path, name: str) -> np.ndarray:
    if path.suffix.lower() == ".npz":
        arrays = _read_npz(path)
        if name in arrays:
            return arrays[name]
        if len(arrays) == 1:
            return next(iter(arrays.values()))
        raise InputError(
            f"input {name!r}: {str(path)!r} holds {sorted(arrays)}, none called {name!r}"
        )
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"input {name!r}: {str(path)!r} cannot be read as .npy: {e}") from e


def _literal(name: str, text: str, dtype: np.dtype | None = None) -> np.ndarray:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise InputError(
            f"input {name!r}: {text!r} is neither a .npy/.npz file nor a number or list"
        ) from None
    if not isinstance(value, (int, float, bool, list, tuple)):
        raise InputError(f"input {name!r}: {text!r} is not a number or a list of numbers")
    arr = np.asarray(value)
    if dtype is not None and (
        (arr.dtype.kind in "biu" and dtype.kind in "biuf") or arr.dtype.kind == dtype.kind
    ):
        return arr.astype(dtype)
    return arr


def read_samples(
    folder: str | Path,
    specs: Sequence[TensorSpec],
    shapes: ShapeArg | None = None,
    *,
    limit: int | None = None,
    model: Model | None = None,
) -> list[dict[str, np.ndarray]]:
    """Feeds from a folder, one per file, in name order (for calibration).

    `.npz` files hold one array per input name; a `.npy` file is the one input of a
    single-input model; images (with Pillow) are resized to the height and width a run of
    `model` takes (`sample_image_size`: `shapes`, else the model's metadata or a size of its
    kind), scaled to [0, 1] and laid out NCHW or NHWC as its shape says (3 channels). A
    sample one dimension short of the input's rank gets a batch dimension of 1.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"calibration folder {str(root)!r} does not exist or is not a folder")
    files = sorted(
        p
        for p in root.iterdir()
        if p.is_file() and p.suffix.lower() in {".npy", ".npz", *IMAGE_SUFFIXES}
    )
    if not files:
        raise InputError(f"calibration folder {str(root)!r} holds no .npy, .npz or image files")
    if limit is not None:
        files = files[:limit]
    by_name = {s.name: s for s in specs}
    single = specs[0] if len(specs) == 1 else None
    size: tuple[int, int] | None = None
    out = []
    for path in files:
        suffix = path.suffix.lower()
        if suffix == ".npz":
            feeds = _read_npz(path)
            unknown = sorted(set(feeds) - set(by_name))
            missing = sorted(set(by_name) - set(feeds))
            if unknown or missing:
                raise InputError(
                    f"calibration file {str(path)!r}: arrays {sorted(feeds)} do not match the "
                    f"inputs {sorted(by_name)}"
                )
        elif single is None:
            raise InputError(
                f"calibration file {str(path)!r}: the model has {len(specs)} inputs "
                f"({', '.join(by_name)}); give each sample as an .npz with one array per input"
            )
        elif suffix == ".npy":
            feeds = {single.name: _read_array(path, single.name)}
        else:
            _check_image(path, single)
            if size is None:
                found = sample_image_size(specs, shapes, model=model)
                assert found is not None  # one image input, checked above
                size, why = found
                log.info("images in %s are resized to %dx%d: %s", root, *size, why)
            feeds = {single.name: _read_image(path, single, size)}
        out.append({n: _batched(a, by_name[n]) for n, a in feeds.items()})
    return out


def _batched(arr: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.shape is not None and arr.ndim == len(spec.shape) - 1:
        return arr[None]
    return arr


def sample_image_size(
    specs: Sequence[TensorSpec], shapes: ShapeArg | None = None, *, model: Model | None = None
) -> tuple[tuple[int, int], str] | None:
    """(height, width) `read_samples` resizes images to, and why; None unless the model takes
    one NCHW or NHWC image with 3 channels.

    The size is the one `run` and `bench` use (`representative_shapes`): `shapes` where they
    say, else the input's fixed size, else the model's metadata (such as "imgsz"), else a
    size of its kind.
    """
    if len(specs) != 1 or not _is_image(specs[0]):
        return None
    spec = specs[0]
    axes = (2, 3) if (spec.shape or ())[1] == 3 else (1, 2)
    resolved, notes = representative_shapes(specs, shapes, model=model)
    h, w = (resolved[spec.name][a] for a in axes)
    whys = []
    for axis in axes:
        for note in notes:
            where, _, why = note.partition(" = ")
            if f"{spec.name}[{axis}]" in where.split(" (")[0].split(", "):
                whys.append(why.partition(": ")[2])
    open_axes = [a for a in axes if not isinstance((spec.shape or ())[a], int)]
    if whys:
        why = "; ".join(dict.fromkeys(whys))
    elif not open_axes:
        why = "the model's input size"
    else:
        why = "the shape given" if shapes else "as a run of the model is sized"
    return (h, w), why


def _is_image(spec: TensorSpec) -> bool:
    shape = spec.shape
    return shape is not None and len(shape) == 4 and 3 in (shape[1], shape[3])


def _check_image(path: Path, spec: TensorSpec) -> None:
    if not _is_image(spec):
        raise InputError(
            f"image {str(path)!r}: input {spec.name!r} is {describe(spec.shape, spec.dtype)}, "
            "not an NCHW or NHWC image with 3 channels; give .npy files instead"
        )


def _read_image(path: Path, spec: TensorSpec, size: tuple[int, int]) -> np.ndarray:
    """The image at `path` as `spec` takes it: RGB, resized to `size` (height, width), [0, 1]."""
    try:
        from PIL import Image
    except ImportError:
        raise InputError(
            f"reading image {str(path)!r} needs Pillow: pip install pillow (or give .npy files)"
        ) from None
    nchw = (spec.shape or ())[1] == 3
    h, w = size
    try:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((w, h))
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except OSError as e:
        raise InputError(f"image {str(path)!r} cannot be read: {e}") from e
    if nchw:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr[None]).astype(spec.dtype)
