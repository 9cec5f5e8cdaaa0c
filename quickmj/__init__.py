"""quickmj: an async-first Python SDK for Midjourney through midjourney-proxy style relays.

Start with :class:`AsyncClient` (or the blocking :class:`Client` facade). Errors live in
:mod:`quickmj.errors` and are re-exported here; test helpers (the relay simulator and
``MockTransport``) live in :mod:`quickmj.testing`.

Names are imported on first use (``quickmj.AsyncClient`` loads the client, ``import
quickmj`` alone loads almost nothing), so command-line tools and pytest plugins that only
need a corner of the package start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from ._accounts import Account, AccountPool, Reservation, read_keys
    from ._batch import (
        AccountSummary,
        BatchItem,
        BatchProgress,
        BatchSummary,
        plan_batch,
        read_prompts,
        reconcile,
        run_batch,
    )
    from ._billing import Balance
    from ._budget_redis import RedisBudgets
    from ._budgets import AdmissionPolicy, BudgetStats
    from ._client import AsyncClient
    from ._config import DEFAULT_BASE_URL, AuthScheme, Dialect, Mode, RetryPolicy, Timeouts
    from ._gallery import write_gallery
    from ._jobs import AsyncJob, Submission
    from ._models import (
        BlendDimensions,
        BotType,
        Button,
        MediaUrl,
        SubmitResult,
        Task,
        TaskAction,
        TaskStatus,
    )
    from ._poller import PollPolicy
    from ._spend import BatchPlan, SpendLine, SpendReport, parse_prices
    from ._sync import Client, Job
    from ._transport import AsyncTransport, Request, Response
    from ._types import ProgressCallback, TaskRef
    from .errors import (
        APIError,
        AuthenticationError,
        BannedPromptError,
        BatchError,
        BatchLockedError,
        ButtonNotFoundError,
        ClientClosedError,
        ConfigurationError,
        ConnectError,
        DownloadError,
        HTTPStatusError,
        ImageExpiredError,
        InvalidInputError,
        JournalError,
        MalformedResponseError,
        ModelUnavailableError,
        NoAvailableAccountError,
        NotAnImageError,
        NotFoundError,
        NoUsableAccountError,
        QueueFullError,
        QuickMJError,
        RateLimitError,
        RelatedTaskNotFoundError,
        RelayUnreachableError,
        RequestTimeoutError,
        ServerError,
        StorageError,
        SubmitOutcomeUnknownError,
        SubmitRejectedError,
        TaskError,
        TaskFailedError,
        TaskNeedsModalError,
        TaskNotFoundError,
        TaskStalledError,
        TaskTimeoutError,
        TransportError,
        UnsafeURLError,
        UnsupportedByRelayError,
        UsageError,
        ValidationError,
    )

# name -> the private module that defines it (errors come from the public quickmj.errors)
_SOURCES: dict[str, str] = {
    **dict.fromkeys(("Account", "AccountPool", "Reservation", "read_keys"), "_accounts"),
    **dict.fromkeys(("AdmissionPolicy", "BudgetStats"), "_budgets"),
    **dict.fromkeys(
        (
            "AccountSummary",
            "BatchItem",
            "BatchProgress",
            "BatchSummary",
            "plan_batch",
            "read_prompts",
            "reconcile",
            "run_batch",
        ),
        "_batch",
    ),
    **dict.fromkeys(("BatchPlan", "SpendLine", "SpendReport", "parse_prices"), "_spend"),
    "Balance": "_billing",
    "RedisBudgets": "_budget_redis",
    "AsyncClient": "_client",
    **dict.fromkeys(("ProgressCallback", "TaskRef"), "_types"),
    **dict.fromkeys(
        ("DEFAULT_BASE_URL", "AuthScheme", "Dialect", "Mode", "RetryPolicy", "Timeouts"),
        "_config",
    ),
    "write_gallery": "_gallery",
    **dict.fromkeys(("AsyncJob", "Submission"), "_jobs"),
    **dict.fromkeys(
        (
            "BlendDimensions",
            "BotType",
            "Button",
            "MediaUrl",
            "SubmitResult",
            "Task",
            "TaskAction",
            "TaskStatus",
        ),
        "_models",
    ),
    "PollPolicy": "_poller",
    **dict.fromkeys(("Client", "Job"), "_sync"),
    **dict.fromkeys(("AsyncTransport", "Request", "Response"), "_transport"),
}
_ERRORS = (
    "APIError",
    "AuthenticationError",
    "BannedPromptError",
    "BatchError",
    "BatchLockedError",
    "ButtonNotFoundError",
    "ClientClosedError",
    "ConfigurationError",
    "ConnectError",
    "DownloadError",
    "HTTPStatusError",
    "ImageExpiredError",
    "InvalidInputError",
    "JournalError",
    "MalformedResponseError",
    "ModelUnavailableError",
    "NoAvailableAccountError",
    "NoUsableAccountError",
    "NotAnImageError",
    "NotFoundError",
    "QueueFullError",
    "QuickMJError",
    "RateLimitError",
    "RelatedTaskNotFoundError",
    "RelayUnreachableError",
    "RequestTimeoutError",
    "ServerError",
    "StorageError",
    "SubmitOutcomeUnknownError",
    "SubmitRejectedError",
    "TaskError",
    "TaskFailedError",
    "TaskNeedsModalError",
    "TaskNotFoundError",
    "TaskStalledError",
    "TaskTimeoutError",
    "TransportError",
    "UnsafeURLError",
    "UnsupportedByRelayError",
    "UsageError",
    "ValidationError",
)
_SOURCES.update(dict.fromkeys(_ERRORS, "errors"))

__all__ = (
    "DEFAULT_BASE_URL",
    "APIError",
    "Account",
    "AccountPool",
    "AccountSummary",
    "AdmissionPolicy",
    "AsyncClient",
    "AsyncJob",
    "AsyncTransport",
    "AuthScheme",
    "AuthenticationError",
    "Balance",
    "BannedPromptError",
    "BatchError",
    "BatchItem",
    "BatchLockedError",
    "BatchPlan",
    "BatchProgress",
    "BatchSummary",
    "BlendDimensions",
    "BotType",
    "BudgetStats",
    "Button",
    "ButtonNotFoundError",
    "Client",
    "ClientClosedError",
    "ConfigurationError",
    "ConnectError",
    "Dialect",
    "DownloadError",
    "HTTPStatusError",
    "ImageExpiredError",
    "InvalidInputError",
    "Job",
    "JournalError",
    "MalformedResponseError",
    "MediaUrl",
    "Mode",
    "ModelUnavailableError",
    "NoAvailableAccountError",
    "NoUsableAccountError",
    "NotAnImageError",
    "NotFoundError",
    "PollPolicy",
    "ProgressCallback",
    "QueueFullError",
    "QuickMJError",
    "RateLimitError",
    "RedisBudgets",
    "RelatedTaskNotFoundError",
    "RelayUnreachableError",
    "Request",
    "RequestTimeoutError",
    "Reservation",
    "Response",
    "RetryPolicy",
    "ServerError",
    "SpendLine",
    "SpendReport",
    "StorageError",
    "Submission",
    "SubmitOutcomeUnknownError",
    "SubmitRejectedError",
    "SubmitResult",
    "Task",
    "TaskAction",
    "TaskError",
    "TaskFailedError",
    "TaskNeedsModalError",
    "TaskNotFoundError",
    "TaskRef",
    "TaskStalledError",
    "TaskStatus",
    "TaskTimeoutError",
    "Timeouts",
    "TransportError",
    "UnsafeURLError",
    "UnsupportedByRelayError",
    "UsageError",
    "ValidationError",
    "__version__",
    "parse_prices",
    "plan_batch",
    "read_keys",
    "read_prompts",
    "reconcile",
    "run_batch",
    "write_gallery",
)


def __getattr__(name: str) -> Any:
    module = _SOURCES.get(name)
    if module is None:
        from ._removed import missing  # only on this error path: nothing to load otherwise

        raise missing("quickmj", name)
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    if module != "errors" and isinstance(value, type) and value.__module__.startswith("quickmj."):
        # Report public classes where users import them from (as httpx does).
        value.__module__ = "quickmj"
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
