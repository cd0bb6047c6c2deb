"""The model registry's champion/challenger rule: a new version is the `challenger`; it becomes the
`champion` only when strictly better on the declared metric, and every decision is written on the
version (tags + description), promoted or not."""
from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
from mlflow import MlflowClient  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

CHAMPION, CHALLENGER = "champion", "challenger"
# what a version was made from, written as its tags
LINEAGE = ("feature_set", "vocab", "warehouse_snapshot", "git_commit")
PROMOTION_TAG, REASON_TAG = "promotion", "promotion_reason"


def metric_tag(metric: str) -> str:
    return f"metric.{metric}"


def _source(client: MlflowClient, model_uri: str) -> tuple[str, str | None, str | None]:
    """(source, run_id, model_id) for create_model_version: MLflow 3 logs models as
    `models:/m-<id>` (a logged model, which knows its run); `runs:/<run>/<path>` also works."""
    if model_uri.startswith("models:/m-"):
        model_id = model_uri[len("models:/"):].split("/")[0]
        return model_uri, client.get_logged_model(model_id).source_run_id, model_id
    if model_uri.startswith("runs:/"):
        run_id = model_uri[len("runs:/"):].split("/")[0]
        return model_uri, run_id, None
    return model_uri, None, None


def register(model_uri: str, name: str, lineage: dict, metric: str, value: float,
             client: MlflowClient | None = None, tags: dict | None = None) -> str:
    """A new version of registered model `name` (created if new) with lineage, metric and the
    caller's `tags` (set with the version itself, so a killed caller never leaves an untagged
    version), aliased `challenger`. Returns the version number as a string."""
    client = client or MlflowClient()
    missing = [k for k in LINEAGE if not lineage.get(k)]
    if missing:
        raise ValueError(f"lineage of a registered version needs {', '.join(LINEAGE)}; "
                         f"missing: {', '.join(missing)}")
    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source, run_id, model_id = _source(client, model_uri)
    tags = {**{k: str(v) for k, v in lineage.items()}, "metric": metric,
            metric_tag(metric): repr(float(value)), **(tags or {})}
    mv = client.create_model_version(name, source, run_id=run_id, tags=tags, model_id=model_id,
                                     description=f"{metric} = {float(value):.6g}")
    client.set_registered_model_alias(name, CHALLENGER, mv.version)
    return str(mv.version)


def _value(mv, metric: str) -> float | None:
    raw = mv.tags.get(metric_tag(metric))
    return None if raw is None else float(raw)


def _champion(client: MlflowClient, name: str):
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def promote(name: str, version, metric: str, higher_is_better: bool = True,
            client: MlflowClient | None = None) -> tuple[bool, str]:
    """Move `champion` to `version` when it beats the current champion on `metric` (strictly;
    no champion yet: promoted). The decision and its reason are recorded on the version before
    the aliases move, so calling it again after an interruption finishes the same decision."""
    client = client or MlflowClient()
    version = str(version)
    mv = client.get_model_version(name, version)
    value = _value(mv, metric)
    if value is None:
        raise ValueError(f"{name} v{version} has no {metric} (tag {metric_tag(metric)}): "
                         "register it with that metric")
    if PROMOTION_TAG in mv.tags:  # decided by an earlier, possibly interrupted, call
        promoted = mv.tags[PROMOTION_TAG] == "promoted"
        reason = mv.tags.get(REASON_TAG, "")
        _apply(client, name, version, promoted, mv.tags.get(BEFORE_TAG) or None)
        return promoted, reason
    champion = _champion(client, name)
    direction = "higher" if higher_is_better else "lower"
    if champion is None:
        promoted, reason = True, "no champion yet"
    elif str(champion.version) == version:
        promoted, reason = False, f"v{version} is already the champion"
    elif (best := _value(champion, metric)) is None:
        promoted, reason = False, (f"champion v{champion.version} has no {metric}: compare "
                                   "them on a common metric and promote by hand")
    else:
        promoted = value > best if higher_is_better else value < best
        verdict = "beats" if promoted else ("ties" if value == best else "does not beat")
        reason = (f"{metric} {value:.6g} {verdict} champion v{champion.version}'s {best:.6g} "
                  f"({direction} is better)")
    verdict = "promoted to champion" if promoted else "not promoted"
    client.update_model_version(name, version, description=(
        f"{mv.description}\n{verdict}: {reason}" if mv.description else f"{verdict}: {reason}"))
    before = "" if champion is None else str(champion.version)
    client.set_model_version_tag(name, version, BEFORE_TAG, before)
    client.set_model_version_tag(name, version, REASON_TAG, reason)
    # the decision tag is written last: its presence means the decision is complete
    client.set_model_version_tag(name, version, PROMOTION_TAG,
                                 "promoted" if promoted else "rejected")
    _apply(client, name, version, promoted, before or None)
    return promoted, reason


BEFORE_TAG = "champion_before"  # the champion when the decision was taken ("" for none)


def _apply(client: MlflowClient, name: str, version: str, promoted: bool,
           before: str | None) -> None:
    """Move the aliases for a recorded decision; safe to repeat. The champion alias moves only
    while it still points where it did at decision time, so a finished older decision never
    takes `champion` back from a newer version."""
    if not promoted:
        return
    current = _champion(client, name)
    current = None if current is None else str(current.version)
    if current not in (before, version):
        return  # a later decision moved the champion on
    if current != version:
        client.set_registered_model_alias(name, CHAMPION, version)
    if before is not None:
        client.set_model_version_tag(name, before, "superseded_by", version)
    if str(client.get_registered_model(name).aliases.get(CHALLENGER)) == version:
        client.delete_registered_model_alias(name, CHALLENGER)  # it is the champion now
