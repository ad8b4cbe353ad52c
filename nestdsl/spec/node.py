"""The base of every IR node (`nestdsl.spec.ir`): strict fields and a source position."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from nestdsl.spec.source import Span

__all__ = ["Node"]


class Node(BaseModel):
    """Base of every IR node: unknown fields are errors; `span` is the node's source position."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=False, use_enum_values=True, allow_inf_nan=False
    )

    span: SkipJsonSchema[Span | None] = Field(default=None, exclude=True, repr=False)

    def __eq__(self, other: object) -> bool:
        # Positions are provenance, not meaning: two specs are equal when their content is.
        if type(self) is not type(other):
            return NotImplemented
        return self.model_dump() == other.model_dump()

    __hash__ = None  # type: ignore[assignment]
