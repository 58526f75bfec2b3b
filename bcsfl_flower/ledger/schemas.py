"""OpenAPI request-body schemas for the endpoints that parse their JSON by hand.

``POST /postModelUpdate``, ``POST /identities`` and ``POST /blocks`` read the raw body (large batches are
checked field by field with the ledger's own parsers, faster than a model layer and
with the same error messages as the ledger); these schemas document the bodies and let
API fuzzers generate them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BLOCK_SCHEMA", "ENROLMENT_SCHEMA", "TRANSACTION", "UPDATE_SCHEMA"]

_HEX64 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_HEX128 = {"type": "string", "pattern": "^[0-9a-f]{128}$"}

TRANSACTION: dict[str, Any] = {
    "type": "object",
    "description": "A signed transaction (paper field names): an enrolled client's model "
                   "submission, or the enrolment authority's enrolment (data.enrol).",
    "required": ["id", "public", "data", "timestamp", "hash", "sign"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string"},
        "public": _HEX64,
        "data": {
            "type": "object",
            "description": "model-params (sha256 of stored model bytes), model-acc, num; or enrol",
            "properties": {
                "model-params": _HEX64,
                "model-acc": {"type": ["number", "null"]},
                "num": {"type": "integer"},
                "enrol": {"type": "object", "required": ["client_id", "public_key", "role"],
                          "additionalProperties": False,
                          "properties": {"client_id": {"type": "string", "minLength": 1, "maxLength": 256},
                                         "public_key": _HEX64,
                                         "role": {"enum": ["client", "relay"]}}},
            },
        },
        "timestamp": {"type": "number"},
        "hash": _HEX64,
        "sign": _HEX128,
    },
}

_BLOCK: dict[str, Any] = {
    "type": "object",
    "description": "A signed block that follows the current head.",
    "required": ["hash", "lastHash", "timestamp", "data", "public", "sign", "sequenceNo"],
    "additionalProperties": False,
    "properties": {
        "hash": _HEX64,
        "lastHash": {"type": "string"},
        "timestamp": {"type": "number"},
        "data": {"type": "object"},
        "public": _HEX64,
        "sign": _HEX128,
        "sequenceNo": {"type": "integer", "minimum": 1},
    },
}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": schema}}}}


UPDATE_SCHEMA = _body({
    "oneOf": [
        TRANSACTION,
        {"type": "object", "required": ["transactions"], "additionalProperties": False,
         "properties": {"transactions": {"type": "array", "items": TRANSACTION,
                                         "minItems": 1}}},
    ]
})
BLOCK_SCHEMA = _body(_BLOCK)
ENROLMENT_SCHEMA = _body({**TRANSACTION, "description": "The enrolment authority's signed enrolment "
                          "transaction (data.enrol = {client_id, public_key, role}), e.g. a ticket "
                          "written by bcsfl ledger enrol --out."})
