"""What a refused member id says by default: the API and the CLI show these words."""

from __future__ import annotations

import pytest

from hafleet_agent.ids import MEMBER_ID_RULE, check_member_id, member_id_error


def test_the_default_wording_names_a_member_id() -> None:
    with pytest.raises(ValueError) as info:
        check_member_id("-x")
    assert str(info.value) == f"member id '-x' is not valid: {MEMBER_ID_RULE}"
    with pytest.raises(ValueError) as info:
        check_member_id(5)
    assert str(info.value) == f"member id must be a string, got int: {MEMBER_ID_RULE}"
    assert member_id_error("-x") == f"member id '-x' is not valid: {MEMBER_ID_RULE}"
    assert member_id_error("ok") is None
