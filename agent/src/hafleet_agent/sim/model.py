"""The replicated key-value state machine the simulator drives through Raft.

Commands are JSON objects carried in Raft entries; applying one returns the result the
client sees. The state machine is deterministic, so every replica that applies the same
entries holds the same state -- which the checkers verify.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


def encode_command(
    op_id: str, kind: str, key: str, value: object = None, expected: object = None
) -> bytes:
    cmd = {"id": op_id, "op": kind, "key": key, "value": value, "expected": expected}
    return json.dumps(cmd, sort_keys=True, separators=(",", ":")).encode()


def decode_command(data: bytes) -> dict[str, object] | None:
    if not data:
        return None  # a leader's no-op
    return json.loads(data)


@dataclass
class KVStateMachine:
    kv: dict[str, object] = field(default_factory=dict)
    applied: int = 0

    def apply(self, index: int, data: bytes) -> tuple[str | None, object]:
        """Apply one normal entry. Returns (op id, result) -- (None, None) for a no-op."""
        if index != self.applied + 1:
            raise AssertionError(f"state machine applies {index} after {self.applied}")
        self.applied = index
        cmd = decode_command(data)
        if cmd is None:
            return None, None
        kind, key = cmd["op"], str(cmd["key"])
        if kind == "put":
            self.kv[key] = cmd["value"]
            return str(cmd["id"]), True
        if kind == "del":
            self.kv.pop(key, None)
            return str(cmd["id"]), True
        if kind == "cas":
            if self.kv.get(key) == cmd["expected"]:
                self.kv[key] = cmd["value"]
                return str(cmd["id"]), True
            return str(cmd["id"]), False
        raise AssertionError(f"unknown command {kind!r}")

    def skip(self, index: int) -> None:
        """A committed entry that is not a command (a configuration change)."""
        if index != self.applied + 1:
            raise AssertionError(f"state machine applies {index} after {self.applied}")
        self.applied = index

    def get(self, key: str) -> object:
        return self.kv.get(key)

    def snapshot(self) -> bytes:
        return json.dumps({"kv": self.kv, "applied": self.applied}, sort_keys=True).encode()

    @classmethod
    def restore(cls, data: bytes, index: int) -> KVStateMachine:
        if not data:
            return cls(applied=index)
        obj = json.loads(data)
        if obj["applied"] != index:
            raise AssertionError(f"snapshot data at {obj['applied']} labelled {index}")
        return cls(dict(obj["kv"]), index)
