"""Desired specs vs the containers that exist → what apply must do. Pure: it only reads.

The containers come from the Docker adapter's label filter, so a container without the
appliance's `managed-by` label can never appear here, and nothing here can touch it. The state is
the labels (spec hash and the spec itself), never a side file.

Per role (vllm, tei):

- no container → create;
- one with the desired spec hash, the desired name, and running → keep;
- otherwise → replace, naming the fields that differ (or why an unchanged one is recreated:
  it is not running);
- every other container of the role (a leftover `-previous` of an interrupted apply, a second
  copy) and every container of a role no longer desired → remove.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from appliance.runtime.model import SET_ASIDE_MARK, ContainerSpec, ObservedContainer

__all__ = ["Action", "ActionKind", "FieldChange", "Plan", "make_plan"]

ActionKind = Literal["create", "replace", "remove", "keep"]


@dataclass(frozen=True)
class FieldChange:
    """One field of a spec that differs: `before` is None when the old spec is unknown."""

    field: str
    before: str | None
    after: str | None

    def render(self) -> str:
        return f"{self.field}: {self.before or '—'} → {self.after or '—'}"


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    role: str
    name: str
    spec: ContainerSpec | None = None  # the desired spec (create, replace, keep)
    container: ObservedContainer | None = None  # the existing one (replace, remove, keep)
    changes: tuple[FieldChange, ...] = ()
    reason: str = ""
    # A model update (issue #19): the new engine starts beside the old one, which keeps
    # serving until the gateway has moved to the new one (blue/green).
    beside: bool = False

    def render(self) -> str:
        line = f"{self.kind:<8} {self.role:<5} {self.name}"
        if self.reason:
            line += f"  ({self.reason})"
        if self.beside:
            line += "  [blue/green: beside the old one]"
        return "\n".join([line, *(f"           {change.render()}" for change in self.changes)])

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.kind,
            "role": self.role,
            "name": self.name,
            "container_id": self.container.id if self.container else None,
            "reason": self.reason,
            "beside": self.beside,
            "changes": [
                {"field": c.field, "before": c.before, "after": c.after} for c in self.changes
            ],
        }


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...] = field(default_factory=tuple)
    # What the plan decided besides the containers, one line each (the sleep level auto chose,
    # how a model update is served), shown after the actions.
    notes: tuple[str, ...] = ()

    @property
    def changes(self) -> tuple[Action, ...]:
        """The actions that change something (everything but keep)."""
        return tuple(a for a in self.actions if a.kind != "keep")

    @property
    def is_noop(self) -> bool:
        return not self.changes

    def render(self) -> str:
        notes = [f"note: {note}" for note in self.notes]
        if self.is_noop:
            return "\n".join(["no changes: every container is running as the profile asks", *notes])
        return "\n".join([*(action.render() for action in self.actions), *notes])

    def to_json(self) -> dict[str, Any]:
        return {
            "changes": not self.is_noop,
            "actions": [a.to_json() for a in self.actions],
            "notes": list(self.notes),
        }


def utilization_of(container: ObservedContainer) -> float | None:
    """The --gpu-memory-utilization a running chat engine was started with (vLLM's own
    default, 0.9, when its command does not say); None when its spec is not readable."""
    if container.spec_json is None:
        return None
    try:
        command = json.loads(container.spec_json).get("command") or []
        flags = _flags([str(item) for item in command])
        value = flags.get("--gpu-memory-utilization") or flags.get("--mem-fraction-static")
        return 0.9 if value is None else float(value)
    except (ValueError, AttributeError, TypeError):
        return None


def _flags(argv: Sequence[str]) -> dict[str, str]:
    """`--flag value` pairs (and bare `--flag`s) of a command line, by flag."""
    flags: dict[str, str] = {}
    current: str | None = None
    for item in argv:
        if item.startswith("-"):
            name, eq, value = item.partition("=")
            flags[name] = value if eq else ""
            current = None if eq else name
        elif current is not None:
            flags[current] = f"{flags[current]} {item}".strip()
        else:
            flags[f"<arg {len(flags)}>"] = item
    return flags


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


def _diff(before: dict[str, Any], after: dict[str, Any]) -> tuple[FieldChange, ...]:
    changes: list[FieldChange] = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if key == "command":
            old_flags, new_flags = _flags(old or ()), _flags(new or ())
            for flag in sorted(set(old_flags) | set(new_flags)):
                if old_flags.get(flag) != new_flags.get(flag):
                    changes.append(
                        FieldChange(
                            f"command {flag}",
                            _present(old_flags.get(flag)),
                            _present(new_flags.get(flag)),
                        )
                    )
            continue
        changes.append(
            FieldChange(
                key, None if old is None else _show(old), None if new is None else _show(new)
            )
        )
    return tuple(changes)


def _present(value: str | None) -> str | None:
    """A bare flag's value is "" — show it as present rather than as nothing."""
    if value is None:
        return None
    return value or "(set)"


def _changes(container: ObservedContainer, spec: ContainerSpec) -> tuple[FieldChange, ...]:
    new = spec.model_dump(mode="json")
    if container.spec_json is None:
        return (FieldChange("spec-hash", container.spec_hash or None, spec.spec_hash()),)
    try:
        old = json.loads(container.spec_json)
    except ValueError:
        return (FieldChange("spec-hash", container.spec_hash or None, spec.spec_hash()),)
    if not isinstance(old, dict):
        return (FieldChange("spec-hash", container.spec_hash or None, spec.spec_hash()),)
    return _diff(old, new)


def _current(candidates: Sequence[ObservedContainer], spec: ContainerSpec) -> ObservedContainer:
    """The container that stands for this role now: the one with the spec's name, else the one
    that is running, else the first."""
    for container in candidates:
        if container.name == spec.name:
            return container
    for container in candidates:
        if container.state == "running":
            return container
    return candidates[0]


def _candidates(
    spec: ContainerSpec, observed: Sequence[ObservedContainer], *, shared: bool
) -> list[ObservedContainer]:
    """The containers that may stand for `spec`: those of its role; when several chat models
    (spec.switching) share the role, each one's own, found by name (set-aside copies too)."""
    candidates = [c for c in observed if c.role == spec.role]
    if shared:
        candidates = [
            c for c in candidates if c.name.split(SET_ASIDE_MARK, maxsplit=1)[0] == spec.name
        ]
    return candidates


def make_plan(desired: Sequence[ContainerSpec], observed: Sequence[ObservedContainer]) -> Plan:
    """What to do so that exactly `desired` runs; `observed` are the managed containers."""
    actions: list[Action] = []
    claimed: set[str] = set()
    roles = [spec.role for spec in desired]
    for spec in desired:
        candidates = _candidates(spec, observed, shared=roles.count(spec.role) > 1)
        if not candidates:
            actions.append(Action("create", spec.role, spec.name, spec=spec, reason="not running"))
            continue
        current = _current(candidates, spec)
        claimed.add(current.id)
        same = current.spec_hash == spec.spec_hash() and current.name == spec.name
        if same and current.state == "running":
            actions.append(Action("keep", spec.role, spec.name, spec=spec, container=current))
            continue
        if same:
            reason = f"unchanged but {current.state}"
            if current.exit_code is not None:
                reason += f" (exit code {current.exit_code})"
            changes: tuple[FieldChange, ...] = ()
        else:
            reason = "spec changed"
            changes = _changes(current, spec)
            if current.name != spec.name:
                changes = (FieldChange("name", current.name, spec.name), *changes)
        actions.append(
            Action(
                "replace",
                spec.role,
                spec.name,
                spec=spec,
                container=current,
                changes=changes,
                reason=reason,
            )
        )
    desired_roles = {spec.role for spec in desired}
    for container in observed:
        if container.id in claimed:
            continue
        if container.role not in desired_roles:
            reason = "no longer in the profile"
        elif "-previous-" in container.name:
            reason = "set aside by an apply that did not finish; apply restores it instead "
            reason += "unless its replacement answers healthy"
        else:
            reason = "an extra copy of this role"
        actions.append(
            Action("remove", container.role, container.name, container=container, reason=reason)
        )
    return Plan(tuple(actions))
