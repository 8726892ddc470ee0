"""Access control: tokens, roles, cohort scopes, teaching sets, and the one authorisation function.

Examples
--------
>>> import lake  # doctest: +SKIP
>>> from lake.access import Access, Credentials, Permission, create_token
>>> lk = lake.open("/data/lake")  # doctest: +SKIP
>>> record, text = create_token(lk, "researcher", cohorts=["ct-chest"])  # doctest: +SKIP
>>> grant = Access(lk).authorize(Credentials(bearer=text), Permission.READ)  # doctest: +SKIP
>>> [c.name for c in grant.cohorts]  # doctest: +SKIP
['ct-chest']
"""

from lake.access._audit import AuditEvent, AuditLog, event_for, record_events
from lake.access._authorize import Access, CohortView, Credentials, Grant, Principal
from lake.access._roles import ROLE_PERMISSIONS, Permission, Role, scope_words
from lake.access._sessions import Session, SessionStore, SignInThrottle, TooManyAttemptsError
from lake.access._shares import Share, ShareBook, create_share, list_shares, revoke_share
from lake.access._teaching import (
    is_teaching_material,
    mark_teaching_set,
    teaching_sets,
    unmark_teaching_set,
)
from lake.access._tokens import (
    Token,
    TokenBook,
    create_token,
    list_tokens,
    parse_duration,
    revoke_token,
)
from lake.access._users import (
    MIN_PASSWORD_LENGTH,
    User,
    UserBook,
    add_user,
    list_users,
    remove_user,
    set_password,
)

__all__ = [
    "MIN_PASSWORD_LENGTH",
    "ROLE_PERMISSIONS",
    "Access",
    "AuditEvent",
    "AuditLog",
    "CohortView",
    "Credentials",
    "Grant",
    "Permission",
    "Principal",
    "Role",
    "Session",
    "SessionStore",
    "Share",
    "ShareBook",
    "SignInThrottle",
    "Token",
    "TokenBook",
    "TooManyAttemptsError",
    "User",
    "UserBook",
    "add_user",
    "create_share",
    "create_token",
    "event_for",
    "is_teaching_material",
    "list_shares",
    "list_tokens",
    "list_users",
    "mark_teaching_set",
    "parse_duration",
    "record_events",
    "remove_user",
    "revoke_share",
    "revoke_token",
    "scope_words",
    "set_password",
    "teaching_sets",
    "unmark_teaching_set",
]
