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

from lake.access._authorize import Access, CohortView, Credentials, Grant, Principal
from lake.access._roles import ROLE_PERMISSIONS, Permission, Role
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

__all__ = [
    "ROLE_PERMISSIONS",
    "Access",
    "CohortView",
    "Credentials",
    "Grant",
    "Permission",
    "Principal",
    "Role",
    "Token",
    "TokenBook",
    "create_token",
    "is_teaching_material",
    "list_tokens",
    "mark_teaching_set",
    "parse_duration",
    "revoke_token",
    "teaching_sets",
    "unmark_teaching_set",
]
