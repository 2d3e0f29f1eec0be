"""``Preparer``: plans, looks up and computes the importance stores of one or more
configs. Each store is planned (``prepare.plan``), looked up in the store cache
and computed with ``locate`` when missing; every model is resolved and every
store planned once per instance. A computed store is checked before it is
cached: the model unchanged while it was scored, the samples the ones planned.

``prepare.config_prepare`` walks a config and asks a ``Preparer`` for its stores; the merge
method's lookup (``prepare.resolve``) plans with one but never computes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

from mergekit.common import ModelReference

from mergekit_led.core.locate_options import RUN_OPTIONS
from mergekit_led.core.parameters import BASE_REQUIRED, DATA_PARAMETER, STORE_PARAMETERS
from mergekit_led.errors import (
    ConfigError,
    LEDError,
    LocateError,
    StoreError,
    StoresNotComputed,
)
from mergekit_led.location.data import SKIP_NONFINITE
from mergekit_led.location.steps import RunHooks
from mergekit_led.prepare.cache import StoreCache
from mergekit_led.prepare.config_options import locate_options_from, score_options
from mergekit_led.prepare.models import (
    ResolvedModel,
    local_files_digest,
    local_identity,
    resolve_model,
    with_weights,
)
from mergekit_led.prepare.plan import PlannedStore, StoreRequest, plan_store
from mergekit_led.store.manifest import read_manifest

LOG = logging.getLogger(__name__)


@dataclass
class PreparedStore:
    planned: PlannedStore
    path: str
    computed: bool


class Preparer:
    """Plans, looks up and computes the stores of one or more configs; every
    model is resolved and every store planned once per instance."""

    def __init__(
        self,
        cache: Optional[StoreCache] = None,
        *,
        run: Optional[Mapping[str, Any]] = None,
        report: Optional[Callable[[str], None]] = None,
        progress: bool = True,
        hooks: Optional[RunHooks] = None,
    ):
        unknown = sorted(set(run or {}) - set(RUN_OPTIONS))
        if unknown:
            raise TypeError(f"Unknown run options: {', '.join(unknown)}")
        self.cache = cache or StoreCache()
        self.run = dict(run or {})
        self.report = report or LOG.info
        self.progress = progress
        self.hooks = hooks
        self._models: Dict[ModelReference, ResolvedModel] = {}
        self._plans: Dict[Tuple, PlannedStore] = {}

    # planning ----------------------------------------------------------------
    def model(self, reference: Union[ModelReference, str]) -> ResolvedModel:
        key = (
            reference if isinstance(reference, ModelReference) else ModelReference.parse(reference)
        )
        if key not in self._models:
            self._models[key] = resolve_model(
                key, trust_remote_code=bool(self.run.get("trust_remote_code"))
            )
        return self._models[key]

    def plan_input(
        self,
        model: Union[ModelReference, str],
        base: Optional[Union[ModelReference, str]],
        parameters: Mapping[str, Any],
        roles: Tuple[str, ...] = STORE_PARAMETERS,
    ) -> Dict[str, PlannedStore]:
        """The planned stores ``roles`` of one fine-tuned model from its
        (merged) parameters: ``importance`` on the model, ``base_importance`` on
        the base, both on the model's ``importance_data``."""
        label = str(model)
        data = parameters.get(DATA_PARAMETER)
        if not isinstance(data, str) or not data.strip():
            raise ConfigError(
                f"`{DATA_PARAMETER}` of model {label} must be one path or Hub dataset name, "
                f"not {data!r}."
            )
        if base is None:
            raise ConfigError(f"{BASE_REQUIRED}; model {label} needs it for `{DATA_PARAMETER}`.")
        options = locate_options_from(parameters, model=label, run=self.run)
        planned = {}
        for role in roles:
            try:
                scored = self.model(model if role == "importance" else base)
            except LEDError as error:
                raise type(error)(
                    f"{str(error).rstrip('.')} (to score it on importance_data {data})."
                ) from None  # cause: the same error, extended
            planned[role] = self.plan(StoreRequest(scored, data, options))
        return planned

    def plan(self, request: StoreRequest) -> PlannedStore:
        if request.identity not in self._plans:
            self._plans[request.identity] = plan_store(request)
        return self._plans[request.identity]

    # computing ---------------------------------------------------------------
    def ensure(self, planned: PlannedStore, *, compute: bool = True) -> PreparedStore:
        """The cached store of ``planned``, computed first when missing."""
        entry = self.cache.lookup(planned.key)
        if entry is not None:
            return PreparedStore(planned, entry.path, computed=False)
        if not compute:
            raise StoresNotComputed(
                f"The store {planned.describe()} is not in the cache {self.cache.root} "
                f"(key {planned.key})."
            )
        started = time.perf_counter()
        entry, computed = self.cache.compute(
            planned.key,
            _record(planned),
            lambda folder: self._locate(planned, folder),
            on_wait=lambda: self.report(
                f"  waiting for another process computing {planned.key[:12]} ..."
            ),
        )
        if computed:
            self.report(f"  done in {time.perf_counter() - started:.1f} s: {entry.path}")
        return PreparedStore(planned, entry.path, computed)

    def _locate(self, planned: PlannedStore, folder: str) -> None:
        from mergekit_led.location import locate

        request = planned.request
        model = with_weights(request.model)
        options = score_options(request.options)
        options.update(self.run)
        locate(
            model.path,
            request.data,
            folder,
            hooks=self.hooks,
            overwrite=True,
            resume=True,
            progress=self.progress,
            **options,
        )
        _check_unchanged(request.model)
        _check_planned(planned, folder)


def _check_unchanged(model: ResolvedModel) -> None:
    """A local model rewritten while ``locate`` scored it: its store would be filed
    under the key of the old model and serve it, so no entry is written."""
    if model.is_hub:
        return  # a Hub model is read at the commit its identity names
    now = (local_identity(model.label, model.path), local_files_digest(model.label, model.path))
    if now != (model.identity, model.files_digest):
        raise LocateError(
            f"Model {model.label} ({model.path}) changed while its importance store was "
            "computed; the store was not cached. Run again once the model is no longer "
            "being written."
        )


def _check_planned(planned: PlannedStore, folder: str) -> None:
    """The store ``locate`` wrote scored the planned samples (else the key would lie)."""
    manifest = read_manifest(folder)
    dataset = manifest.dataset
    skipped = ((dataset.model_extra or {}).get("skipped") or {}) if dataset else {}
    skipped_nonfinite = bool(skipped.get(SKIP_NONFINITE))
    tokenization = manifest.metadata.get("tokenization") or {}
    if (
        dataset is None
        or (not skipped_nonfinite and dataset.fingerprint != planned.data_fingerprint)
        or tokenization.get("max_length") != planned.max_length
    ):
        request = planned.request
        try:
            again = plan_store(request)
        except LEDError:
            again = None
        if again is None or again.data_fingerprint != planned.data_fingerprint:
            raise LocateError(
                f"importance_data {request.data} changed while prepare computed the "
                f"{planned.describe()} (other samples than planned); the store was not "
                "cached. Run again once the data is no longer being written."
            )
        raise StoreError(
            f"locate scored other samples than planned for {planned.describe()} (store "
            f"{folder}); the cache entry was not written. This is a bug in mergekit-led."
        )


def _record(planned: PlannedStore) -> Dict[str, Any]:
    request = planned.request
    return {
        "model": request.model.label,
        "model_identity": request.model.identity,
        "model_files": request.model.files_digest,
        "data": request.data,
        "data_fingerprint": planned.data_fingerprint,
        "samples": planned.samples,
        "answer_tokens": planned.answer_tokens,
        "score": request.options.score,
        "options": planned.material["options"],
        "key_material": planned.material,
    }
