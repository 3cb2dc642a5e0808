"""The generate loop over an engine whose model has past/present pairs (a decoder).

`engine.decoder()` gives a `Decoder`: `prefill(ids)` runs the prompt, `step(ids)` one more
token per row, `generate` and `stream` pick tokens (greedy, or sampled with temperature,
top-k and top-p from a seed) until `max_new_tokens` or an end id. The caller gives and takes
token ids (tokenization stays with the caller); what a model's inputs are (ids, attention mask,
positions, token types, encoder states, `use_cache_branch`, past/present pairs and their
growing axis) is read once by `infer.sequence`, and the decoder fills them every step. Batches
of prompts of different lengths are left-padded with the model's pad id under a mask.

Where the past lives between steps is the session's business (`Session.kv_cache`): ONNX
Runtime keeps it in bound OrtValues on the model's device, OpenVINO inside a stateful compiled
model, TensorRT in device buffers, every other backend in the host loop of the base.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from . import sequence
from .errors import InferError, InputError, ModelError, OptionError

if TYPE_CHECKING:
    from .backends.base import KVCache, Session
    from .model import Model

log = logging.getLogger(__name__)

CACHES = ("auto", "host")
"""Decoder(cache=...): "auto" keeps the past where the backend keeps it best; "host" runs the
plain host loop (present fed back as numpy arrays) on any backend."""

Ids = Sequence[int] | Sequence[Sequence[int]] | np.ndarray


class Decoder:
    """A stateful generate loop over one engine (one set of sequences at a time; not
    thread-safe: give each thread its own).

    `prefill` and `step` return the logits of each row's last token, float [batch, vocab].
    """

    def __init__(
        self,
        session: Session,
        roles: sequence.Roles,
        model: Model,
        *,
        cache: str = "auto",
        max_length: int | None = None,
        dims: Mapping[str, int] | None = None,
        owner: object = None,
    ):
        """Made by `Engine.decoder()`: the engine's settled session, the model's roles and the
        model (for messages); `owner` (the engine) is kept alive while the decoder is.

        cache: "auto" (the backend's own place for the past) or "host" (the host loop).
        max_length: the longest sequence (prompt + new tokens) allowed; default: what the model
        bounds (its position table, or a fixed-length past buffer), else unbounded.
        dims: sizes of dimensions the pasts name that the graph leaves open, such as
        onnxruntime-genai's {"kv_cache_dim": head size}."""
        if cache not in CACHES:
            raise OptionError(f"decoder(cache={cache!r}): use one of {', '.join(CACHES)}")
        _check_decoder(roles, model)
        self._owner = owner
        self.roles = roles
        self._session = session
        self._specs = {s.name: s for s in self._session.inputs}
        self.max_length = _max_length(roles, self._specs, max_length)
        for name, size in (dims or {}).items():
            if not isinstance(size, int) or isinstance(size, bool) or size < 1:
                raise OptionError(f"dims[{name!r}] must be a positive int, got {size!r}")
        self._cache: KVCache = self._session.kv_cache(roles, host=cache == "host", dims=dims)
        for pair in roles.kv:
            self._cache.past_shape(pair, 1)  # a dim it cannot size: said now, not at a step
        self._batch = 0
        self._mask: np.ndarray | None = None  # [batch, past + new]: 1 = a real token
        self._length = 0  # tokens in the cache (padding included)
        self._fixed: dict[str, np.ndarray] = {}  # encoder states and mask, held for every step

    def __repr__(self) -> str:
        return (
            f"<Decoder {self._session.backend} on {self._session.device}: cache in "
            f"{self.cache}, {self._length} tokens x {self._batch} rows>"
        )

    @property
    def cache(self) -> str:
        """Where the past lives between steps, in words."""
        return self._cache.where

    @property
    def length(self) -> int:
        """Tokens in the cache per row, left padding included (0 after `reset`)."""
        return self._length

    # -- the two runs -------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the sequences: the next call must be `prefill` (or `generate`)."""
        self._batch = 0
        self._mask = None
        self._length = 0
        self._fixed = {}

    def prefill(
        self,
        ids: Ids,
        mask: np.ndarray | None = None,
        *,
        encoder_states: np.ndarray | None = None,
        encoder_mask: np.ndarray | None = None,
    ) -> np.ndarray:
        """Start new sequences from prompts: one list of ids, a list of lists (left-padded
        here), or an int array [batch, length] with its `mask` (1 = token, 0 = left padding).
        A seq2seq decoder takes the encoder's output as `encoder_states` (and its mask).
        Returns the logits of each row's last token, [batch, vocab]."""
        tokens, pad_mask = self._prompt(ids, mask)
        self.reset()
        batch, length = tokens.shape
        self._check_length(length)
        self._fixed = self._encoder_feeds(batch, encoder_states, encoder_mask)
        self._guard(self._cache.start, batch)
        self._batch = batch
        self._mask = pad_mask
        positions = np.maximum(np.cumsum(pad_mask, axis=1) - 1, 0)  # padding: masked out anyway
        return self._run(tokens, positions, first=True)

    def step(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Append one token to every row (ids [batch]), or several ([batch, n]); returns the
        logits of each row's last token, [batch, vocab]."""
        if self._mask is None:
            raise InputError("step() before prefill(): start the sequences with prefill(ids)")
        tokens = np.asarray(ids)
        if tokens.ndim == 1:
            tokens = tokens[:, None]
        if tokens.ndim != 2 or tokens.shape[0] != self._batch:
            raise InputError(
                f"step(ids): expected {self._batch} id(s), one per row (or [{self._batch}, n]), "
                f"got shape {list(np.shape(ids))}"
            )
        tokens = _as_ids(tokens, "step(ids)")
        self._check_vocab(tokens)
        n = tokens.shape[1]
        self._check_length(self._length + n)
        seen = self._mask.sum(axis=1, keepdims=True)
        self._mask = np.concatenate([self._mask, np.ones((self._batch, n), np.int64)], axis=1)
        positions = seen + np.arange(n)
        return self._run(tokens, positions, first=False)

    def _run(self, tokens: np.ndarray, positions: np.ndarray, *, first: bool) -> np.ndarray:
        roles = self.roles
        assert self._mask is not None and roles.ids is not None
        feeds: dict[str, np.ndarray] = {roles.ids: self._typed(roles.ids, tokens)}
        if roles.mask is not None:
            feeds[roles.mask] = self._typed(roles.mask, self._mask)
        if roles.positions is not None:
            feeds[roles.positions] = self._typed(roles.positions, positions)
        if roles.token_types is not None:
            feeds[roles.token_types] = self._typed(roles.token_types, np.zeros_like(tokens))
        if roles.cache_branch is not None:
            feeds[roles.cache_branch] = self._typed(roles.cache_branch, np.array([not first]))
        feeds.update(self._fixed)
        logits = self._guard(self._cache.step, feeds)
        self._length += tokens.shape[1]
        return np.asarray(logits)[:, -1, :] if np.ndim(logits) == 3 else np.asarray(logits)

    def _guard(self, call: Any, *args: Any) -> Any:
        """A runtime's own exception becomes infer's (the session's one seam)."""
        try:
            return call(*args)
        except InferError:
            raise
        except Exception as e:
            raise self._session.failure(e) from e

    # -- generating ---------------------------------------------------------------------------

    def generate(
        self,
        ids: Ids,
        max_new_tokens: int,
        *,
        mask: np.ndarray | None = None,
        eos: int | Iterable[int] | None = None,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        encoder_states: np.ndarray | None = None,
        encoder_mask: np.ndarray | None = None,
    ) -> list[int] | list[list[int]]:
        """The new tokens after each prompt, a row ending at its first `eos` id (kept).

        One prompt (a list of ids) gives a list of ids; a batch (a list of lists, or an array
        [batch, length] with `mask`) a list per row. temperature 0 is greedy (argmax); above 0
        tokens are sampled from softmax(logits / temperature), cut to the `top_k` likeliest
        and to the smallest set whose probability reaches `top_p`, reproducibly from `seed`.
        """
        single = _is_single(ids)
        rows: list[list[int]] | None = None
        for tokens in self._tokens(
            ids, max_new_tokens, mask, eos, temperature, top_k, top_p, seed, encoder_states,
            encoder_mask,
        ):  # fmt: skip
            if rows is None:
                rows = [[] for _ in tokens]
            for row, t in zip(rows, tokens):
                if t is not None:
                    row.append(t)
        rows = rows or [[] for _ in range(self._batch)]
        return rows[0] if single else rows

    def stream(
        self,
        ids: Ids,
        max_new_tokens: int,
        *,
        mask: np.ndarray | None = None,
        eos: int | Iterable[int] | None = None,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        encoder_states: np.ndarray | None = None,
        encoder_mask: np.ndarray | None = None,
    ) -> Iterator[Any]:
        """`generate` token by token, as each is picked: an int per step for one prompt; for a
        batch, a list with one id per row (None for a row that has ended)."""
        single = _is_single(ids)
        for tokens in self._tokens(
            ids, max_new_tokens, mask, eos, temperature, top_k, top_p, seed, encoder_states,
            encoder_mask,
        ):  # fmt: skip
            yield tokens[0] if single else tokens

    def _tokens(
        self,
        ids: Ids,
        max_new_tokens: int,
        mask: np.ndarray | None,
        eos: int | Iterable[int] | None,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        seed: int | None,
        encoder_states: np.ndarray | None,
        encoder_mask: np.ndarray | None,
    ) -> Iterator[list[int | None]]:
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool):
            raise OptionError(f"max_new_tokens must be an int, got {max_new_tokens!r}")
        if max_new_tokens < 0:
            raise OptionError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        pick = Picker(temperature, top_k, top_p, seed)
        ends = _ends(eos)
        tokens, pad_mask = self._prompt(ids, mask)
        self._check_length(tokens.shape[1] + max_new_tokens)
        if max_new_tokens == 0:
            self._batch = tokens.shape[0]
            return
        logits = self.prefill(
            tokens, pad_mask, encoder_states=encoder_states, encoder_mask=encoder_mask
        )
        done = np.zeros(self._batch, bool)
        pad = self.roles.pad_id
        for i in range(max_new_tokens):
            chosen = pick(logits)
            yield [None if d else int(t) for t, d in zip(chosen, done)]
            chosen[done] = pad  # ended rows go on with padding (their tokens are dropped)
            done |= np.isin(chosen, ends)
            if done.all() or i == max_new_tokens - 1:
                return
            logits = self.step(chosen)

    # -- checks -------------------------------------------------------------------------------

    def _prompt(self, ids: Ids, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Prompts as (ids [batch, length], mask [batch, length]), left-padded with the pad id."""
        if isinstance(ids, np.ndarray):
            tokens = ids[None, :] if ids.ndim == 1 else ids
            if tokens.ndim != 2:
                raise InputError(f"ids must be [batch, length], got shape {list(ids.shape)}")
            tokens = _as_ids(tokens, "ids")
            if mask is None:
                pad_mask = np.ones(tokens.shape, np.int64)
            else:
                pad_mask = np.asarray(mask)
                if pad_mask.ndim == 1:
                    pad_mask = pad_mask[None, :]
                if pad_mask.shape != tokens.shape:
                    raise InputError(
                        f"mask has shape {list(np.shape(mask))}, the ids {list(tokens.shape)}: "
                        "one entry per id (1 = token, 0 = padding)"
                    )
                pad_mask = (pad_mask != 0).astype(np.int64)
                _check_left_padded(pad_mask)
        else:
            if mask is not None:
                raise InputError("mask= goes with an ids array; lists of ids are padded here")
            rows: list[list[Any]] = (
                [list(ids)] if _is_single(ids) else [list(cast(Sequence[int], r)) for r in ids]
            )
            if not rows or any(not r for r in rows):
                raise InputError("every prompt needs at least one id")
            width = max(len(r) for r in rows)
            tokens = np.full((len(rows), width), self.roles.pad_id, np.int64)
            pad_mask = np.zeros((len(rows), width), np.int64)
            for i, r in enumerate(rows):
                tokens[i, width - len(r) :] = _as_ids(np.asarray(r), "ids")
                pad_mask[i, width - len(r) :] = 1
        if tokens.shape[1] == 0:
            raise InputError("every prompt needs at least one id")
        tokens = np.where(pad_mask == 1, tokens, self.roles.pad_id)  # what padding holds: unread
        self._check_vocab(tokens)
        if self.roles.mask is None and not pad_mask.all():
            raise InputError(
                "prompts of different lengths need an attention mask, and this model takes none: "
                "run them one at a time, or in batches of one length"
            )
        return tokens, pad_mask

    def _encoder_feeds(
        self, batch: int, states: np.ndarray | None, mask: np.ndarray | None
    ) -> dict[str, np.ndarray]:
        roles = self.roles
        if roles.encoder_states is None:
            if states is not None:
                raise InputError("encoder_states given, but this decoder takes no encoder output")
            return {}
        if states is None:
            raise InputError(
                f"this is a seq2seq decoder: give the encoder's output as encoder_states= "
                f"(the model's input {roles.encoder_states!r})"
            )
        states = np.asarray(states)
        if states.ndim < 2 or states.shape[0] != batch:
            raise InputError(
                f"encoder_states has shape {list(states.shape)}: expected {batch} row(s), "
                "one per prompt, [batch, encoder length, ...]"
            )
        feeds = {roles.encoder_states: self._typed(roles.encoder_states, states)}
        if roles.encoder_mask is not None:
            m = np.ones(states.shape[:2], np.int64) if mask is None else np.asarray(mask)
            if m.shape != states.shape[:2]:
                raise InputError(
                    f"encoder_mask has shape {list(m.shape)}, expected {list(states.shape[:2])}"
                )
            feeds[roles.encoder_mask] = self._typed(roles.encoder_mask, m)
        return feeds

    def _typed(self, name: str, value: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(value, self._specs[name].dtype)

    def _check_vocab(self, tokens: np.ndarray) -> None:
        vocab = self.roles.vocab
        if vocab is None:
            return
        bad = (tokens < 0) | (tokens >= vocab)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise InputError(
                f"token id {int(tokens[where])} at {list(where)} is outside the vocabulary: "
                f"{self.roles.ids!r} takes ids 0 to {vocab - 1}"
            )

    def _check_length(self, length: int) -> None:
        if self.max_length is not None and length > self.max_length:
            raise InputError(
                f"{length} tokens exceed the decoder's maximum length of {self.max_length} "
                "(prompt and new tokens, left padding included): ask for fewer new tokens or "
                "shorten the prompt"
            )

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Free the cache (the engine stays open)."""
        self.reset()
        self._cache.close()

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Picker:
    """Picks one token per row from logits [batch, vocab]: argmax at temperature 0, else a
    sample after temperature, top-k and top-p, from a generator seeded once."""

    def __init__(
        self,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> None:
        if not isinstance(temperature, (int, float)) or not temperature >= 0:
            raise OptionError(f"temperature must be a number >= 0 (0: greedy), got {temperature!r}")
        if top_k is not None and (
            not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1
        ):
            raise OptionError(f"top_k must be a positive int, got {top_k!r}")
        if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
            raise OptionError(f"top_p must be in (0, 1], got {top_p!r}")
        self.temperature = float(temperature)
        self.top_k = top_k
        self.top_p = top_p
        self._rng = np.random.default_rng(seed)

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        if self.temperature == 0:
            return np.argmax(logits, axis=-1).astype(np.int64)
        scores = np.asarray(logits, np.float64) / self.temperature
        if self.top_k is not None and self.top_k < scores.shape[-1]:
            kth = np.partition(scores, -self.top_k, axis=-1)[:, -self.top_k, None]
            scores = np.where(scores < kth, -np.inf, scores)
        probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        if self.top_p is not None and self.top_p < 1:
            order = np.argsort(-probs, axis=-1, kind="stable")
            ranked = np.take_along_axis(probs, order, axis=-1)
            # keep a token while the mass before it is below top_p (the first always stays)
            keep = (np.cumsum(ranked, axis=-1) - ranked) < self.top_p
            cut = np.zeros_like(probs)
            np.put_along_axis(cut, order, np.where(keep, ranked, 0.0), axis=-1)
            probs = cut / cut.sum(axis=-1, keepdims=True)
        draws = self._rng.random(probs.shape[0])[:, None]
        chosen = (np.cumsum(probs, axis=-1) < draws).sum(axis=-1)
        return np.minimum(chosen, probs.shape[-1] - 1).astype(np.int64)


# -- helpers ----------------------------------------------------------------------------------


def _check_decoder(roles: sequence.Roles, model: Model) -> None:
    """A model the loop can drive: ids in, logits out, every past paired with a present."""
    if not roles.is_decoder:
        raise ModelError(
            f"{model!r} has no past/present pairs (past key/value inputs that come back "
            "grown as present outputs): each step would recompute the whole sequence. Export "
            "the decoder with its cache (optimum: a '-with-past' task)"
        )
    unpaired = [p.past for p in roles.kv if p.present is None]
    if unpaired:
        raise ModelError(f"past input(s) {unpaired} have no present output to feed them next step")
    if roles.ids is None:
        raise ModelError(f"{model!r} has no token ids input: the decoder feeds ids")
    if roles.logits is None:
        raise ModelError(f"{model!r} has no logits output (last dimension the vocabulary)")


def _max_length(roles: sequence.Roles, specs: Mapping[str, Any], given: int | None) -> int | None:
    bounds = []
    if roles.positions is not None and roles.positions in roles.bounds:
        bounds.append(roles.bounds[roles.positions])
    for p in roles.kv:
        shape = specs[p.past].shape
        if p.shared and shape is not None and isinstance(shape[p.axis], int):
            bounds.append(shape[p.axis])
    model = min(bounds) if bounds else None
    if given is None:
        return model
    if not isinstance(given, int) or isinstance(given, bool) or given < 1:
        raise OptionError(f"max_length must be a positive int, got {given!r}")
    if model is not None and given > model:
        raise OptionError(f"max_length={given}: the model holds at most {model} tokens")
    return given


def _is_single(ids: Any) -> bool:
    if isinstance(ids, np.ndarray):
        return ids.ndim == 1
    try:
        first = ids[0]
    except (IndexError, TypeError, KeyError):
        return True
    return np.ndim(first) == 0


def _as_ids(values: np.ndarray, what: str) -> np.ndarray:
    if values.dtype.kind not in "iub":
        if values.dtype.kind == "f" and np.all(np.mod(values, 1) == 0):
            return values.astype(np.int64)
        raise InputError(f"{what}: token ids must be integers, got {values.dtype}")
    return values.astype(np.int64, copy=False)


def _check_left_padded(mask: np.ndarray) -> None:
    """Padding only at the left: once a row has a token, every later entry is a token."""
    started = np.maximum.accumulate(mask, axis=1)
    if (started != mask).any():
        row = int(np.argwhere((started != mask).any(axis=1))[0, 0])
        raise InputError(
            f"mask row {row} has padding after a token: the decoder takes left padding only "
            "(pad at the start of the shorter prompts)"
        )


def _ends(eos: int | Iterable[int] | None) -> np.ndarray:
    if eos is None:
        return np.empty(0, np.int64)
    if isinstance(eos, (int, np.integer)):
        return np.array([int(eos)], np.int64)
    try:
        return np.array([int(e) for e in eos], np.int64)
    except (TypeError, ValueError) as e:
        raise OptionError(f"eos must be an id or a collection of ids, got {eos!r}") from e
