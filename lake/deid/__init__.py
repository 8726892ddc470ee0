"""De-identification: profiles (``deid`` recipes in ``profiles/``) compiled into an engine.

Public contract used by ingest and the network services::

    profile = load_profile("basic")          # Profile: .name .version .sha256
    engine = Deidentifier(profile, secret)   # picklable; safe to share between threads
    result = engine.apply(ds)                # mutates ds (and ds.file_meta) in place
    result.actions                           # Counter of action codes taken, no values

``apply`` raises :class:`lake.DeidRefusedError` when the profile refuses the instance.
"""

from lake.deid._engine import DeidResult, Deidentifier
from lake.deid._profile import Profile, list_profiles, load_profile

__all__ = ["DeidResult", "Deidentifier", "Profile", "list_profiles", "load_profile"]
