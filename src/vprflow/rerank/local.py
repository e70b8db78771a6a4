"""``method: local``: geometric verification of each shortlist with the local features of
any local model (``features: <model>``, a ``sift`` or ``delf`` model of ``models:``), read
back from what the extraction stage stored; matching, RANSAC and the scoring that never
lets chance inliers reorder a good ranking are in ``vprflow.local.verification``."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..errors import InputError, SettingError
from ..local.store import LocalFeatureStore
from ..local.verification import (VERIFICATION_DEFAULTS, FeatureCache, check_verification, resolved,
                                  verified_ranking, verify_shortlists)
from ..logs import log


class LocalVerification:
    DEFAULTS: dict[str, Any] = {"features": None, **VERIFICATION_DEFAULTS}

    @staticmethod
    def check(settings: dict[str, Any]) -> None:
        if not isinstance(settings["features"], str) or not settings["features"]:
            raise SettingError("features", "name the model (under models:) whose local features verify the pairs, "
                                           f"e.g. a model with descriptor sift or delf; got {settings['features']!r}")
        check_verification(settings)

    @staticmethod
    def apply(neighbours: pd.DataFrame, settings: dict[str, Any], inputs) -> pd.DataFrame:
        if not inputs.local_features:
            raise InputError(f"re-ranking by local features of {settings['features']!r} got no feature shards")
        store = LocalFeatureStore(inputs.local_features)
        settings = resolved(settings, store.info.get("verification"))
        log.info("local verification with %s features of %s: %s", store.info.get("descriptor"), settings["features"],
                 {k: settings[k] for k in VERIFICATION_DEFAULTS})
        shortlists, inliers, matches = verify_shortlists(neighbours, FeatureCache(store.get), settings,
                                                         threads=inputs.threads)
        return verified_ranking(shortlists, inliers, matches, settings)
