"""Must FAIL type checking (``tests/test_ergonomics.py`` asserts mypy reports each line
marked ``# E``): misspelt keyword arguments of AccountPool and its methods."""

from __future__ import annotations

from quickmj import AccountPool


async def misspelt() -> None:
    pool = AccountPool(["key"], timeoutz=5)  # E
    await pool.imagine("a fox", stat="s")  # E
    await pool.action("1", "U1", choose_same_chanel=True)  # E
