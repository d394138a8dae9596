"""The setting table: every setting kind (``setting.kind`` of a protocol) and what it means.

The one place a new setting kind is added: the protocol schema (its allowed values and checks),
validation before any work (which methods can run in it), the layout of a pool
(bench.settings.resolve_layout), summary.md's wording and the audit's claims all read it.
No import beyond the standard library, so the schema and bench.analysis can use it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SettingKind:
    """One setting kind."""

    name: str
    #: data kinds (bench.methods.base.DATA_KINDS) it can offer, known before data is loaded
    offers: frozenset[str]
    #: the protocol names `source` and `target` domains (and pools all its datasets)
    domains: bool
    #: unlabeled target training identities are given to the methods that take them
    target_training: bool
    #: tested query -> gallery across cameras on target identities (CMC, mAP), else retrieval
    reid: bool
    #: summary.md's words for the training data
    training_data: str


SETTINGS: dict[str, SettingKind] = {s.name: s for s in (
    SettingKind("dml", frozenset({"labeled", "domain_labels"}), domains=False,
                target_training=False, reid=False, training_data="labeled training classes"),
    SettingKind("uda", frozenset({"labeled", "unlabeled_target", "domain_labels",
                                  "camera_views"}), domains=True, target_training=True,
                reid=True, training_data="labeled source + unlabeled target training "
                "identities"),
    SettingKind("dg", frozenset({"labeled", "domain_labels"}), domains=True,
                target_training=False, reid=True, training_data="labeled sources only"),
)}
#: the allowed values of ``setting.kind``, in the order documentation lists them
SETTING_KINDS: tuple[str, ...] = tuple(SETTINGS)
DEFAULT_SETTING = "dml"
