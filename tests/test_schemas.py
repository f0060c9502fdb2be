"""The record contract's own rules, in memory: the identifier table, NFC, the canonical form."""

from __future__ import annotations

import unicodedata

import pytest

from app.api.routes import EVENT_EXAMPLE
from app.core.identifier_chars import UNICODE_VERSION, VISIBLE_RANGES
from app.schemas import IDENTIFIER_RULE, UserEvent, canonical_json, canonical_wire


@pytest.mark.skipif(
    unicodedata.unidata_version != UNICODE_VERSION,
    reason=f"the table is generated from a Python with Unicode {UNICODE_VERSION}",
)
def test_the_identifier_table_is_the_generated_one() -> None:
    from scripts.gen_identifier_chars import check_closed_under_nfc, ranges

    check_closed_under_nfc()
    assert list(VISIBLE_RANGES) == ranges(), (
        "app/core/identifier_chars.py is out of date: run `python scripts/gen_identifier_chars.py`"
    )


def event(user_id: str) -> UserEvent:
    return UserEvent.model_validate({**EVENT_EXAMPLE, "UserId": user_id})


def accepted(user_id: str) -> bool:
    try:
        event(user_id)
    except ValueError:
        return False
    return True


def test_the_ascii_shortcut_gives_the_table_verdict() -> None:
    for code_point in range(0x80):
        by_table = any(first <= code_point <= last for first, last in VISIBLE_RANGES)
        expected = by_table or code_point == ord(" ")
        assert accepted(f"a{chr(code_point)}b") == expected, hex(code_point)
        # The same character beside a non-ASCII one takes the regular expression.
        assert accepted(f"ü{chr(code_point)}b") == expected, hex(code_point)


def test_ids_are_stored_in_nfc() -> None:
    assert event(unicodedata.normalize("NFD", "Çağrı")).user_id == "Çağrı"


def test_the_rule_has_absolute_anchors() -> None:
    assert IDENTIFIER_RULE.pattern.startswith(r"\A") and IDENTIFIER_RULE.pattern.endswith(r"\z")


def test_the_canonical_form_has_one_zero_and_sorted_keys() -> None:
    attributes = {**EVENT_EXAMPLE["Attributes"], "Discount": -0.0}
    wire = canonical_wire(UserEvent.model_validate({**EVENT_EXAMPLE, "Attributes": attributes}))
    text = canonical_json(wire).decode()
    assert '"Discount":0.0,' in text and "-0.0" not in text
    assert text.index('"Attributes"') < text.index('"EventName"') < text.index('"UserId"')
