"""Records to tensors and back, for every model, from its ``ModelIO``: the one packing code.

The client packs a request and unpacks its result; a server's handler unpacks the
requests of a batch and packs their results. Batched models' tensors have a leading batch
axis (one row per request); a stream's tensors, one request or one piece, have none.

A row that cannot be read (bad JSON, bytes that are not UTF-8 or whole float32 samples)
becomes that request's ``InputError``; a result that is an ``InputError`` travels in the
``error`` tensor, its other tensors empty.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from contract.records import InputError
from contract.tensors import ERROR, Kind, ModelIO, TensorSpec

Arrays = dict[str, np.ndarray]
PCM_DTYPE = np.dtype("<f4")
# What unpacking a malformed row raises (wrapped as that row's InputError).
_UNREADABLE = (ValueError, TypeError, KeyError, UnicodeDecodeError)


# -- the client's side -------------------------------------------------------------


def pack_request(io: ModelIO, request: Any) -> Arrays:
    """One request's input tensors; an optional input left empty (None, "", ()) is not sent."""
    arrays = {}
    for spec in io.inputs:
        value = getattr(request, spec.attribute)
        if spec.optional and (value is None or (isinstance(value, str | tuple | list) and not value)):
            continue
        column = _column(spec, [value])
        arrays[spec.name] = column[0] if io.streaming else column
    return arrays


def unpack_result(io: ModelIO, outputs: Arrays) -> Any:
    """The result a model answered (the first row); raises its ``InputError`` where it refused the request."""
    rows = {name: value if io.streaming else value[0] for name, value in outputs.items()}
    error = _value(ERROR, _cell(rows["error"])) if "error" in rows else ""
    if error:
        raise InputError(error)
    return _record(io.result, io.outputs, rows)


# -- a server's side -----------------------------------------------------------------


def unpack_requests(io: ModelIO, inputs: Arrays) -> list[Any]:
    """The requests of a batch (a stream: its one request) as records, a row that cannot be read
    as its ``InputError``; optional inputs not sent take the record's defaults."""
    count = 1 if io.streaming else len(next(iter(inputs.values())))
    requests: list[Any] = []
    for i in range(count):
        row = {name: value if io.streaming else value[i] for name, value in inputs.items()}
        try:
            requests.append(_record(io.request, io.inputs, row))
        except InputError as exc:
            requests.append(exc)
        except _UNREADABLE as exc:
            requests.append(InputError(str(exc) or type(exc).__name__))
    return requests


def pack_results(io: ModelIO, results: Sequence[Any]) -> Arrays:
    """A batch's output tensors, one row per result; an ``InputError`` fills its row's ``error``
    (and None leaves a row empty)."""
    answered = [None if isinstance(r, InputError) else r for r in results]
    arrays: Arrays = {}
    for spec in io.outputs:
        if spec.name == "error":
            arrays["error"] = _column(spec, [str(r) if isinstance(r, InputError) else "" for r in results])
        elif spec.kind is Kind.SAMPLES:
            arrays.update(_samples(spec, [None if r is None else getattr(r, spec.attribute) for r in answered]))
        elif spec.name not in arrays:  # not a length that ``_samples`` wrote
            values = [_empty(spec) if r is None else getattr(r, spec.attribute) for r in answered]
            arrays[spec.name] = _column(spec, values)
    return arrays


def pack_piece(io: ModelIO, piece: Any) -> Arrays:
    """One response of a stream: a piece, or the ``InputError`` that refused the request."""
    return {name: value[0] for name, value in pack_results(io, [piece]).items()}


def filler(io: ModelIO) -> Arrays:
    """A stream's empty piece (no text, sample rate 0), which clients skip: for a server that
    answers several streams in lockstep and must say something for one that has ended."""
    return pack_piece(io, None)


def is_filler(io: ModelIO, outputs: Arrays) -> bool:
    """Whether a stream's response is a ``filler`` piece: every output but samples empty."""
    return all(
        not _cell(outputs[spec.name]) for spec in io.outputs if spec.kind is not Kind.SAMPLES and spec.name in outputs
    )


# -- values ----------------------------------------------------------------------


def _empty(spec: TensorSpec) -> Any:
    return {Kind.TEXT: "", Kind.LIST: [], Kind.PCM: b"", Kind.FLOAT: 0.0}.get(spec.kind, 0)


def _column(spec: TensorSpec, values: Sequence[Any]) -> np.ndarray:
    """One row per value, each of shape ``spec.shape`` (SAMPLES: see ``_samples``)."""
    if spec.kind is Kind.TEXT:
        return np.array([[_utf8(v)] for v in values], dtype=np.object_)
    if spec.kind is Kind.LIST:
        return np.array([[json.dumps(_plain(v), ensure_ascii=False).encode()] for v in values], dtype=np.object_)
    if spec.kind is Kind.PCM:
        return np.array([[encode_pcm(v)] for v in values], dtype=np.object_)
    return np.array([[_empty(spec) if v is None else v] for v in values], dtype=spec.dtype)


def _samples(spec: TensorSpec, values: Sequence[np.ndarray | None]) -> Arrays:
    """Sample vectors as rows padded to the longest, and their lengths where the spec names a tensor
    for them. Triton cannot ship a zero-length tensor: rows without samples still carry one."""
    longest = max((v.size for v in values if v is not None), default=0) or 1
    rows = np.zeros((len(values), longest), dtype=np.float32)
    for i, value in enumerate(values):
        if value is not None:
            rows[i, : value.size] = value
    arrays = {spec.name: rows}
    if spec.length:
        arrays[spec.length] = np.array([[0 if v is None else v.size] for v in values], dtype=np.int32)
    return arrays


def _record(record_type: type, specs: Sequence[TensorSpec], row: Arrays) -> Any:
    lengths = {spec.length: spec for spec in specs if spec.length}
    fields = {}
    for spec in specs:
        if spec.name == "error" or spec.name in lengths or spec.name not in row:
            continue
        if spec.kind is Kind.SAMPLES:
            samples = np.asarray(row[spec.name], dtype=np.float32).reshape(-1)
            fields[spec.attribute] = samples[: int(_cell(row[spec.length]))] if spec.length in row else samples
        else:
            fields[spec.attribute] = _value(spec, _cell(row[spec.name]))
    return record_type(**fields)


def _cell(row: np.ndarray) -> Any:
    return np.asarray(row).reshape(-1)[0]


def _value(spec: TensorSpec, cell: Any) -> Any:
    if spec.kind is Kind.PCM:
        return decode_pcm(bytes(cell))
    if spec.kind in (Kind.TEXT, Kind.LIST):
        text = cell.decode("utf-8") if isinstance(cell, bytes) else str(cell)
        return text if spec.kind is Kind.TEXT else _list(spec, json.loads(text))
    if spec.kind is Kind.FLOAT:
        # The shortest decimal that is this float32 (0.9, not 0.8999999761581421): what the caller sent.
        return float(str(cell)) if isinstance(cell, np.float32) else float(cell)
    return int(cell)


def _list(spec: TensorSpec, decoded: Any) -> Any:
    of = spec.of
    if not isinstance(decoded, list):
        raise InputError(f"{spec.name} must be a JSON list")
    if of is str:
        if not all(isinstance(item, str) for item in decoded):
            raise InputError(f"{spec.name} must be a JSON list of strings")
        return tuple(decoded)
    assert of is not None and dataclasses.is_dataclass(of)
    fields = dataclasses.fields(of)
    names = [f.name for f in fields]
    items = []
    for item in decoded:
        if not isinstance(item, dict) or any(name not in item for name in names):
            raise InputError(f"{spec.name} must be a JSON list of {{{', '.join(names)}}} objects")
        items.append(of(**{f.name: _typed(spec, f, item[f.name]) for f in fields}))
    return items


def _typed(spec: TensorSpec, field: dataclasses.Field[Any], value: Any) -> Any:
    if field.type == "str" and isinstance(value, str):
        return value
    if field.type == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise InputError(f"{spec.name}: {field.name} must be a {field.type}, not {type(value).__name__}")


def _plain(value: Any) -> Any:
    return [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in value]


def _utf8(value: str | bytes | None) -> bytes:
    if value is None:
        return b""
    return value if isinstance(value, bytes) else value.encode("utf-8")


# -- audio -----------------------------------------------------------------------


def encode_pcm(samples: np.ndarray) -> bytes:
    """Mono float samples to STT's wire format (float32 little-endian)."""
    return np.ascontiguousarray(np.asarray(samples).ravel(), dtype=PCM_DTYPE).tobytes()


def decode_pcm(buffer: bytes) -> np.ndarray:
    if len(buffer) % PCM_DTYPE.itemsize:
        raise InputError("audio buffer length is not a whole number of float32 samples")
    return np.frombuffer(buffer, dtype=PCM_DTYPE).astype(np.float32)
