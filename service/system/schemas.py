from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class HealthResponse(BaseModel):
    status: str = Field(examples=["ok"])


class ReadyResponse(BaseModel):
    status: str = Field(examples=["ready"])
    models: dict[str, bool] = Field(examples=[{"language": True, "digits": True}])


class InfoResponse(BaseModel):
    service: dict[str, Any] = Field(description="Service name and versions of the main libraries.")
    language_model: dict[str, Any] | None = Field(description="The loaded language model, or null when disabled.")
    digit_model: dict[str, Any] | None = Field(description="The loaded digit classifier, or null.")
    engine: dict[str, Any] | None = Field(description="Generation engine state: running and waiting requests, steps.")
    limits: dict[str, Any] = Field(description="Request limits in force.")
    settings: dict[str, Any] = Field(description="Effective settings (secrets masked).")
