"""The one answer type of the admission core, turned into an AdmissionReview in one place."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

ADMISSION_API_VERSION = "admission.k8s.io/v1"
ADMISSION_KIND = "AdmissionReview"

JsonPatch = list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Decision:
    """What the webhook says about one request: allowed or not, a patch, warnings."""

    allowed: bool
    message: str = ""
    code: int = 200
    patch: JsonPatch = field(default_factory=list)
    warnings: tuple[str, ...] = ()

    @classmethod
    def allow(cls, warnings: Iterable[str] = ()) -> Decision:
        return cls(allowed=True, warnings=tuple(warnings))

    @classmethod
    def deny(cls, problems: Sequence[object], warnings: Iterable[str] = ()) -> Decision:
        """Deny with every problem listed, joined by "; " (403 Forbidden, as apiserver shows)."""
        return cls(allowed=False, code=403, message="; ".join(str(p) for p in problems),
                   warnings=tuple(warnings))

    @classmethod
    def patched(cls, patch: JsonPatch, warnings: Iterable[str] = ()) -> Decision:
        return cls(allowed=True, patch=list(patch), warnings=tuple(warnings))

    def response(self, uid: str) -> dict[str, Any]:
        response: dict[str, Any] = {"uid": uid, "allowed": self.allowed}
        if not self.allowed:
            response["status"] = {"code": self.code, "reason": "Forbidden",
                                  "message": self.message, "status": "Failure"}
        if self.patch:
            encoded = json.dumps(self.patch, separators=(",", ":")).encode()
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(encoded).decode()
        if self.warnings:
            response["warnings"] = list(self.warnings)
        return response

    def review(self, uid: str, api_version: str = ADMISSION_API_VERSION) -> dict[str, Any]:
        """The complete AdmissionReview answer: the one place uid, apiVersion and kind are
        filled in (the API server wants its request's apiVersion back)."""
        return {"apiVersion": api_version, "kind": ADMISSION_KIND,
                "response": self.response(uid)}
