"""The Delta Lake actions and checkpoint schema the commit log writes (see ``log``)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Final

import pyarrow as pa

from ..errors import IncompatibleDatasetError
from .manifest import Damaged, FileEntry, Snapshot, SpanEntry, is_int

__all__ = [
    "CHECKPOINT_SCHEMA",
    "DOMAIN",
    "PARTIAL_SPAN_DOMAIN",
    "PROTOCOL",
    "SPAN_DOMAIN",
    "apply_span_domain",
    "check_protocol",
    "delta_schema",
    "domain",
    "is_span_domain",
    "line",
    "remove_action",
    "span_domain",
    "span_domains",
]

DOMAIN: Final = "usage_analytics"
SPAN_DOMAIN: Final = "usage_analytics.span."
PARTIAL_SPAN_DOMAIN: Final = "usage_analytics.partial_span."

PROTOCOL: Final = {
    "minReaderVersion": 1,
    "minWriterVersion": 7,
    "writerFeatures": ["domainMetadata"],
}

_DELTA_TYPES: Final = {
    pa.int64(): "long",
    pa.int32(): "integer",
    pa.string(): "string",
    pa.timestamp("us", tz="UTC"): "timestamp",
}
_STR_MAP: Final = pa.map_(pa.string(), pa.string())
CHECKPOINT_SCHEMA: Final = pa.schema(
    [
        (
            "add",
            pa.struct(
                [
                    ("path", pa.string()),
                    ("partitionValues", _STR_MAP),
                    ("size", pa.int64()),
                    ("modificationTime", pa.int64()),
                    ("dataChange", pa.bool_()),
                    ("stats", pa.string()),
                    ("tags", _STR_MAP),
                ]
            ),
        ),
        (
            "metaData",
            pa.struct(
                [
                    ("id", pa.string()),
                    ("name", pa.string()),
                    ("description", pa.string()),
                    ("format", pa.struct([("provider", pa.string()), ("options", _STR_MAP)])),
                    ("schemaString", pa.string()),
                    ("partitionColumns", pa.list_(pa.string())),
                    ("configuration", _STR_MAP),
                    ("createdTime", pa.int64()),
                ]
            ),
        ),
        (
            "protocol",
            pa.struct(
                [
                    ("minReaderVersion", pa.int32()),
                    ("minWriterVersion", pa.int32()),
                    ("readerFeatures", pa.list_(pa.string())),
                    ("writerFeatures", pa.list_(pa.string())),
                ]
            ),
        ),
        (
            "domainMetadata",
            pa.struct(
                [("domain", pa.string()), ("configuration", pa.string()), ("removed", pa.bool_())]
            ),
        ),
    ]
)


def delta_schema(schema: pa.Schema) -> str:
    """The Delta ``schemaString`` of data files of ``schema``, with the ``date`` partition."""
    fields = [
        {"name": f.name, "type": _DELTA_TYPES[f.type], "nullable": f.nullable, "metadata": {}}
        for f in schema
    ]
    fields.append({"name": "date", "type": "string", "nullable": False, "metadata": {}})
    return json.dumps({"type": "struct", "fields": fields}, separators=(",", ":"))


def line(action: Mapping[str, Any]) -> bytes:
    return json.dumps(action, separators=(",", ":")).encode() + b"\n"


#: The tag of an add action that holds the store's entry of the file.
TAG: Final = "usage_analytics"
#: Operations that only rearrange rows (compaction): their actions say ``dataChange: false``,
#: as Delta's OPTIMIZE writes them, so that streaming readers skip them instead of reading the
#: rows again.
REARRANGING: Final = frozenset(("OPTIMIZE",))


def metadata_action(schema: pa.Schema, now: int) -> dict[str, Any]:
    """The ``metaData`` of a table whose data files have ``schema``."""
    return {
        "id": str(uuid.uuid4()),
        "format": {"provider": "parquet", "options": {}},
        "schemaString": delta_schema(schema),
        "partitionColumns": ["date"],
        "configuration": {},
        "createdTime": now,
    }


def add_action(entry: FileEntry, size: int, now: int, data_change: bool) -> dict[str, Any]:
    """The ``add`` of a data file of ``size`` bytes, with the store's entry in its tags."""
    stats = {
        "numRecords": entry.rows,
        "minValues": {c: lo for c, (lo, _) in entry.stats.items()},
        "maxValues": {c: hi for c, (_, hi) in entry.stats.items()},
    }
    return {
        "path": entry.path,
        "partitionValues": {"date": entry.date},
        "size": size,
        "modificationTime": now,
        "dataChange": data_change,
        "stats": json.dumps(stats, separators=(",", ":")),
        "tags": {TAG: entry.json_bytes.decode()},
    }


def remove_action(entry: FileEntry, now: int, *, data_change: bool = True) -> dict[str, Any]:
    return {
        "path": entry.path,
        "deletionTimestamp": now,
        "dataChange": data_change,
        "extendedFileMetadata": True,
        "partitionValues": {"date": entry.date},
        "size": entry.size,
    }


def span_domain(span: SpanEntry, *, removed: bool = False) -> dict[str, Any]:
    """The domain of one span: its entry, or its removal. A partial span has a domain of its
    own, which versions before partial spans ignore (they read the files it lists by their
    own summaries, as they read every file of days without a span)."""
    prefix = PARTIAL_SPAN_DOMAIN if span.partial else SPAN_DOMAIN
    config = "" if removed else json.dumps(span.to_json(), separators=(",", ":"))
    return {"domain": prefix + span.name, "configuration": config, "removed": removed}


def span_domains(before: Sequence[SpanEntry], now: Sequence[SpanEntry]) -> list[dict[str, Any]]:
    """The domains a commit from spans ``before`` to spans ``now`` writes: a span made partial
    moves to the partial spans' domain, and its old domain is removed."""
    out = []
    names = {sp.name: sp for sp in now}
    for span in before:
        if span.name not in names or names[span.name].partial != span.partial:
            out.append(span_domain(span, removed=True))
    was = {sp.name: sp for sp in before}
    out += [span_domain(sp) for sp in now if was.get(sp.name) != sp]
    return out


def is_span_domain(body: Mapping[str, Any]) -> bool:
    return str(body.get("domain")).startswith((SPAN_DOMAIN, PARTIAL_SPAN_DOMAIN))


def apply_span_domain(body: Mapping[str, Any], spans: dict[str, SpanEntry]) -> None:
    """Apply a span's domain metadata action to the live ``spans``, by name."""
    partial = str(body["domain"]).startswith(PARTIAL_SPAN_DOMAIN)
    name = body["domain"][len(PARTIAL_SPAN_DOMAIN if partial else SPAN_DOMAIN) :]
    if body.get("removed") is True:
        gone = spans.pop(name, None)
        if gone is None or gone.partial != partial:
            raise Damaged(f"it drops the span {name!r}, which is not live")
        return
    span = SpanEntry.from_json(json.loads(body["configuration"]))
    if span.name != name or span.partial != partial:
        raise Damaged(f"the span domain {name!r} holds span {span.name!r}")
    spans[name] = span


def domain(snap: Snapshot) -> dict[str, Any]:
    state = {
        "txid": snap.txid,
        "schema_version": snap.schema_version,
        "next_id": snap.next_id,
    }
    if snap.retention:
        state["retention_s"] = snap.retention
    return {
        "domain": DOMAIN,
        "configuration": json.dumps(state, separators=(",", ":")),
        "removed": False,
    }


def check_protocol(protocol: Mapping[str, Any], path: str) -> None:
    reader = protocol.get("minReaderVersion")
    features = protocol.get("readerFeatures") or []
    if not is_int(reader) or reader > 3 or features:
        raise IncompatibleDatasetError(
            f"{path} asks for Delta reader version {reader!r} with features {features!r}; "
            "this usage_analytics reads only the tables it writes (reader version 1)"
        )
