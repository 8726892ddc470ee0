"""De-identification: PS3.15 Annex E profiles (``deid`` recipes in ``profiles/``) and the engine.

Public contract used by ingest and the network services::

    profile = load_profile("basic")          # Profile: .name .version .sha256 .options
    engine = Deidentifier(profile, secret)   # compiled once; picklable; thread-safe
    result = engine.apply(ds)                # mutates ds (and ds.file_meta) in place
    result.actions                           # Counter of action codes taken, no values
    result.pixels_cleaned                    # True when burned-in regions were masked

``apply`` raises :class:`lake.DeidRefusedError` when the profile refuses the instance.

Free text is cleaned by the Clean Descriptors rule, also for callers that are not the
engine (documents)::

    clean_text("CT chest Heart", profile.vocabulary, {"heart"})   # 'CT chest *'
    explain("CT chest Heart", profile.vocabulary, {"heart"})      # [('Heart', reason)]

Compressed frames (JPEG, JPEG-LS, JPEG 2000) lose their metadata segments without
re-encoding, in ``apply`` and for callers that wrap images (documents)::

    strip_jpeg(jpeg_bytes)                   # EXIF, XMP, ICC, comments removed; or None

What happens to every attribute, the edition, the date-shift rule and how to write a site
profile: ``docs/deid.md``.
"""

from lake.deid._clean import Vocabulary, clean_text, explain, identifier_words
from lake.deid._codes import EDITION, Action, ProfileOption
from lake.deid._codestreams import jpeg_segments, strip_frame, strip_jpeg
from lake.deid._engine import Deidentifier, DeidResult
from lake.deid._profile import Profile, list_profiles, load_profile
from lake.deid._uids import well_formed_uids

__all__ = [
    "EDITION",
    "Action",
    "DeidResult",
    "Deidentifier",
    "Profile",
    "ProfileOption",
    "Vocabulary",
    "clean_text",
    "explain",
    "identifier_words",
    "jpeg_segments",
    "list_profiles",
    "load_profile",
    "strip_frame",
    "strip_jpeg",
    "well_formed_uids",
]
