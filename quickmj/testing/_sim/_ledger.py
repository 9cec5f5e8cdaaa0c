"""new-api's money, for the quickrouter dialect: each key's token quota and account quota,
a fixed price per model, charges at submit and refunds of failed jobs.

Sources, QuantumNous/new-api: ``relay/mjproxy_handler.go`` (``RelayMidjourneySubmit``: the
account must cover the price before the upstream is asked, ``quota_not_enough``; the
charge, ``service.PostConsumeQuota``, after the upstream answered HTTP 200 with code 1,
21 or 22, none for INPAINT and CUSTOM_ZOOM: it decrements the token without checking it,
so a token can end below zero), ``model/token.go`` (``ValidateUserToken``: a token at or
below zero is refused on its next request), ``controller/midjourney.go``
(``UpdateMidjourneyTaskBulk``: a job the refresher sees fail is refunded to the *user*,
``IncreaseUserQuota``; the token's own counters keep the charge), ``setting``
(``QuotaPerUnit`` 500,000; the price in quota is ``int(price * QuotaPerUnit * group
ratio)``, the group ratio 1 here).

Deviation: the ledger is not saved by ``Simulator.save`` (a loaded simulator starts with
full quotas).
"""

from __future__ import annotations

from collections.abc import Callable

from ._config import SimulatorConfig

__all__ = ("Ledger", "TokenLedger", "model_of")


def model_of(action: str) -> str:
    """``service.CovertMjpActionToModelName``: ``IMAGINE`` -> ``mj_imagine``."""
    return "swap_face" if action == "SWAP_FACE" else "mj_" + action.lower()


class TokenLedger:
    """One key's token (``remain``/``used``, raw quota) and its account (``account``)."""

    __slots__ = (
        "account",
        "charges",
        "marked_exhausted",
        "refunded",
        "remain",
        "unlimited",
        "used",
    )

    def __init__(self, remain: int, unlimited: bool, account: int | None) -> None:
        self.remain = remain
        self.used = 0
        self.unlimited = unlimited
        #: The user's quota (None: unlimited); refunds go here.
        self.account = account
        #: (task id, quota) of every charge, in order; ``refunded`` the ids paid back.
        self.charges: list[tuple[str, int]] = []
        self.refunded: set[str] = set()
        #: new-api marked the token exhausted (its second refusal's words differ).
        self.marked_exhausted = False

    @property
    def granted(self) -> int:
        return self.remain + self.used

    @property
    def exhausted(self) -> bool:
        return not self.unlimited and self.remain <= 0


class Ledger:
    """Every key's money, created on first use from the config."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.tokens: dict[str, TokenLedger] = {}

    def of(self, key: str) -> TokenLedger:
        found = self.tokens.get(key)
        if found is None:
            cfg = self.config
            token = cfg.quota_usd
            account = cfg.account_quota_usd
            found = self.tokens[key] = TokenLedger(
                remain=0 if token is None else self.quota(token),
                unlimited=token is None,
                account=None if account is None else self.quota(account),
            )
        return found

    def quota(self, usd: float) -> int:
        """USD -> raw quota units (``QuotaPerUnit`` per USD)."""
        return int(usd * self.config.quota_per_unit)

    def price(self, action: str) -> int:
        """The quota one submit of ``action`` costs (unknown models: 0)."""
        return self.quota(self.config.model_prices.get(model_of(action), 0.0))

    def can_pay(self, key: str, action: str, failed: Callable[[str], bool]) -> bool:
        """Whether the account covers one more ``action`` (failures refunded first)."""
        token = self.of(key)
        self.refund_failures(key, failed)
        return token.account is None or token.account - self.price(action) >= 0

    def charge(self, key: str, action: str, task_id: str) -> int:
        """``PostConsumeQuota`` for an accepted submit; the quota charged."""
        token = self.of(key)
        quota = self.price(action)
        token.remain -= quota  # an unlimited token's remainder goes negative too
        token.used += quota
        if token.account is not None:
            token.account -= quota
        token.charges.append((task_id, quota))
        return quota

    def refund_failures(self, key: str, failed: Callable[[str], bool]) -> None:
        """Pay back to the account every charged job the relay now sees failed."""
        token = self.of(key)
        for task_id, quota in token.charges:
            if quota and task_id not in token.refunded and failed(task_id):
                token.refunded.add(task_id)
                if token.account is not None:
                    token.account += quota
