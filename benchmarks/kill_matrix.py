"""Kill-and-rerun matrix: does a `kill -9` at a random moment lose, duplicate or orphan anything?

For each job (ingest shapes, concepts, features with mvp-tiny, pretrain stage1 tiny, and the whole
pipeline flow on tiny data) and each mode the CLI offers (Prefect flow; `--no-prefect` for the data
commands; `python -m model.training.pretrain` beside `mvp pretrain`):
  1. restore the warehouse the job needs (earlier jobs run to completion, in chain order) and run
     the command uninterrupted: the reference (its duration, row ids, final step, registered
     versions), and when its work phase began: Prefect's "Beginning flow run" line, since the
     first ~20 s of a Prefect command start a temporary server and write nothing;
  2. K times (seeded): restore the same warehouse, start the command in its own process group,
     wait for its work phase, SIGKILL the command's process at a time uniform over the
     reference's work phase, wait for the project's watchdog (flows/orphans.py) to reap children,
     count processes still carrying the trial's PREFECT_HOME/work dir, then rerun the command to
     completion and compare with the reference: keys lost, keys duplicated (or unexpected) per
     table, `mvp verify` on the warehouse; for pretrain the final step and whether the checkpoint
     loads; for the pipeline also the registered model versions (one per model and training
     step) and each model's champion.
Every run uses one fixed work dir (ids may depend on paths), a fresh PREFECT_HOME per trial
(shared by the killed run and its rerun, as for a user), a sqlite MLflow store in the work dir.
Only loopback traffic; only process groups started here are signalled.

    .venv/bin/python benchmarks/kill_matrix.py [--points 3] [--seed 0] [--budget-s 900]
Exit 1 if any cell lost or duplicated rows, left orphans or failed its rerun.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PY = sys.executable
MVP = str(Path(PY).parent / "mvp")

# key columns per table: rows with the same key are duplicates; the build id (vocab,
# feature_set) is part of the key, it is deterministic for the same input warehouse
KEYS = {
    "images": ["id"], "captions": ["id"], "regions": ["region_id"], "questions": ["id"],
    "relations": ["id"], "entailment": ["id"], "referring": ["id"], "rejects": ["id"], "feature_sets": ["id"],
    "region_features": ["feature_set", "region_id"], "image_features": ["feature_set", "image_id"],
    "concepts": ["vocab", "id"],
    "caption_concepts": ["vocab", "caption_id", "concept_id", "token_start", "token_end"],
    "image_concepts": ["vocab", "image_id", "concept_id", "source"],
}


def offline_env(prefect_home: Path, work: Path) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "true",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
            "PREFECT_HOME": str(prefect_home), "MVP_PROJECT_DIR": str(ROOT),
            "NLTK_DATA": str(ROOT / ".nltk_data"),
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
            "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
            "PYTHONUNBUFFERED": "1"}


def commands(work: Path, args) -> dict:
    """(job, mode) -> (command, rerun command or None: the same one)."""
    wh = str(work / "wh")
    ingest = [MVP, "ingest", "--dataset", "shapes", "--source", str(work / "src"),
              "--warehouse", wh, "--n-images", str(args.n_images), "--seed", "0",
              "--workers", "2"]
    pre = ["--warehouse", wh, "--stage", "stage1", "--config", "tiny",
           "--steps", str(args.steps), "--out-dir", str(work / "pretrain"),
           "--checkpoint-every", str(args.checkpoint_every)]
    concepts = [MVP, "concepts", "--warehouse", wh, "--min-count", "2"]
    features = [MVP, "features", "--warehouse", wh, "--backbone", "mvp-tiny",
                "--shard-size", "50"]
    return {
        ("ingest", "prefect"): ingest,
        ("ingest", "no-prefect"): ingest + ["--no-prefect"],
        ("concepts", "prefect"): concepts,
        ("concepts", "no-prefect"): concepts + ["--no-prefect"],
        ("features", "prefect"): features,
        ("features", "no-prefect"): features + ["--no-prefect"],
        ("pretrain", "prefect"): [MVP, "pretrain"] + pre,
        ("pretrain", "no-prefect"): [PY, "-m", "model.training.pretrain"] + pre,
        ("pipeline", "prefect"): [
            MVP, "pipeline", "--warehouse", wh, "--n-images", str(args.pipeline_images),
            "--easy-vqa-images", "0", "--backbone", "mvp-tiny", "--min-count", "2",
            "--config", "tiny", "--stage1-steps", "20", "--stage2-steps", "20",
            "--retrieval-steps", "10", "--vqa-steps", "10", "--k-text", "8", "--k-image", "4",
            "--out-dir", str(work / "pipeline")],
    }


WORK_STARTS = "Beginning flow run"  # Prefect's first line once the flow itself runs


def work_phase_marker(mode: str) -> str | None:
    return WORK_STARTS if mode == "prefect" else None


def restore(work: Path, snap: Path | None) -> None:
    shutil.rmtree(work, ignore_errors=True)
    if snap is None:
        work.mkdir(parents=True)
    else:
        shutil.copytree(snap, work, symlinks=True)


def tagged_pids(tags: list[str]) -> list[tuple[int, str]]:
    """Processes (not this one) whose command line or environment names one of `tags`."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            try:
                env = (p / "environ").read_bytes().decode(errors="replace")
            except OSError:
                env = ""
        except OSError:
            continue
        if any(t in cmd or t in env for t in tags):
            found.append((int(p.name), cmd[:160]))
    return found


def start(cmd, env, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)   # the group this script started
    except ProcessLookupError:
        pass


def log_size(log: Path) -> int:
    return log.stat().st_size if log.exists() else 0


def wait_for_marker(proc: subprocess.Popen, log: Path, offset: int, marker: str | None,
                    timeout: float) -> float | None:
    """Seconds from now until `marker` shows in `log` past `offset` (None: it never did before
    the process ended or the timeout); no marker: 0."""
    if marker is None:
        return 0.0
    t = time.monotonic()
    needle = marker.encode()
    while time.monotonic() - t < timeout:
        with open(log, "rb") as f:
            f.seek(offset)
            if needle in f.read():
                return time.monotonic() - t
        if proc.poll() is not None:
            return None
        time.sleep(0.1)
    return None


def run_to_end(cmd, env, log: Path, timeout: float,
               marker: str | None = None) -> tuple[int, float, float]:
    """(exit code, duration, seconds until the work phase began)."""
    t = time.monotonic()
    offset = log_size(log)
    proc = start(cmd, env, log)
    began = wait_for_marker(proc, log, offset, marker, timeout)
    try:
        rc = proc.wait(timeout=max(1.0, timeout - (time.monotonic() - t)))
    except subprocess.TimeoutExpired:
        kill_group(proc)
        proc.wait()
        rc = -999
    kill_group(proc)   # stragglers of a finished run are not this matrix's business
    return rc, time.monotonic() - t, began if began is not None else 0.0


BUILD_IDS = ("vocab", "feature_set")


def table_keys(wh: Path, from_scratch: bool = False) -> dict:
    """table -> (row count, set of keys). `from_scratch`: the warehouse was built anew by the
    run, so a vocabulary's id (a hash over its input part files, whose names are unique per
    write) differs from the reference's: build ids leave the key and their count is compared
    instead (a second build of the same thing shows as repeated keys)."""
    from warehouse.catalog import connect
    out = {}
    with connect(str(wh)) as con:
        for table, key in KEYS.items():
            builds = [c for c in key if c in BUILD_IDS] if from_scratch else []
            cols = [c for c in key if c not in builds] or key
            rows = con.execute(f"SELECT {', '.join(cols)} FROM {table}").fetchall()
            out[table] = (len(rows), set(rows))
            for b in builds:
                n = con.execute(f"SELECT count(DISTINCT {b}) FROM {table}").fetchone()[0]
                out[f"{table}.{b}s"] = (n, set(range(n)))
    return out


def compare_rows(ref: dict, got: dict) -> tuple[int, int, str]:
    lost = dup = 0
    notes = []
    for table, (n_ref, keys_ref) in ref.items():
        n, keys = got.get(table, (0, set()))
        t_lost = len(keys_ref - keys)
        t_dup = (n - len(keys)) + len(keys - keys_ref)   # repeated keys + keys the ref lacks
        if t_lost or t_dup or n != n_ref:
            notes.append(f"{table}: ref {n_ref} rows, got {n} ({len(keys)} distinct), "
                         f"lost {t_lost}, dup/extra {t_dup}")
        lost += t_lost
        dup += t_dup
    return lost, dup, "; ".join(notes)


def registered_versions(work: Path) -> dict:
    """(model name, training step) -> [versions], and model name -> champion version."""
    from mlflow import MlflowClient

    from model.pipeline.report import STEP_TAG
    uri = f"sqlite:///{work / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    versions, champions = {}, {}
    for rm in client.search_registered_models():
        champions[rm.name] = rm.aliases.get("champion")
        for mv in client.search_model_versions(f"name = '{rm.name}'"):
            key = (rm.name, mv.tags.get(STEP_TAG))
            versions.setdefault(key, []).append(mv.version)
    return {"versions": versions, "champions": champions}


def compare_registry(ref: dict, got: dict) -> tuple[int, int, str]:
    """Versions lost (a model/step the reference registered and the rerun did not) and
    duplicated (a model/step registered twice); champions missing."""
    lost = len(set(ref["versions"]) - set(got["versions"]))
    dup = sum(len(v) - 1 for v in got["versions"].values())
    no_champion = [n for n in ref["champions"] if not got["champions"].get(n)]
    notes = []
    if lost or dup:
        notes.append(f"registry: lost {lost}, duplicated {dup}: {got['versions']}")
    if no_champion:
        notes.append(f"no champion: {', '.join(no_champion)}")
    return lost, dup + len(no_champion), "; ".join(notes)


def verify_problems(wh: Path) -> str:
    from warehouse.verify import verify
    report = verify(str(wh))
    return "" if report.passed else "mvp verify: " + " / ".join(report.lines())


def checkpoint_state(work: Path):
    from model.training.checkpoint import load_checkpoint
    path = work / "pretrain" / "stage1" / "last.pt"
    try:
        return load_checkpoint(path), ""
    except Exception as e:  # noqa: BLE001 - the report says what went wrong
        return None, f"checkpoint does not load: {type(e).__name__}: {e}"


def weights_equal(a: dict, b: dict) -> bool:
    import torch
    wa, wb = a.get("model") or {}, b.get("model") or {}
    if not wa or wa.keys() != wb.keys():
        return False
    return all(torch.equal(wa[k], wb[k]) for k in wa)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=3, help="kill points per cell (K)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget-s", type=float, default=900, help="skip cells past this")
    p.add_argument("--n-images", type=int, default=300)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--pipeline-images", type=int, default=60)
    p.add_argument("--checkpoint-every", type=int, default=5)
    p.add_argument("--only", nargs="*", help="cells to run, e.g. ingest:no-prefect "
                   "(earlier jobs still run once to build their input)")
    p.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = p.parse_args()

    rng = random.Random(args.seed)
    base = Path(tempfile.mkdtemp(prefix="mvp-kill-matrix-"))
    work = base / "work"       # every run happens here: ids and paths stay the same
    logs = base / "logs"
    logs.mkdir()
    cmds = commands(work, args)
    t0 = time.monotonic()
    results, skipped = [], []
    state = {None: None}       # job -> snapshot dir of the warehouse after it (None: empty)
    chain = [("ingest", None), ("concepts", "ingest"), ("features", "concepts"),
             ("pretrain", "features"), ("pipeline", None)]
    print(f"work dir {work}, logs {logs}", flush=True)

    wanted_jobs = {c.split(":")[0] for c in args.only} if args.only else {j for j, _ in chain}
    needed = set(wanted_jobs)
    for job, needs in reversed(chain):   # the jobs whose output a wanted job starts from
        if job in needed and needs:
            needed.add(needs)

    def left() -> float:
        return args.budget_s - (time.monotonic() - t0)

    for job, needs in chain:
        if job not in needed:
            continue
        if needs not in state:
            skipped.append(f"{job}: input ({needs}) was not built")
            continue
        modes = [m for (j, m) in cmds if j == job]
        for mode in modes:
            cell = f"{job}:{mode}"
            wanted = args.only is None or cell in args.only
            is_builder = job not in state and mode == modes[0]
            if not wanted and not is_builder:
                continue
            if left() <= 0:
                skipped.append(f"{cell}: budget exceeded")
                continue
            cmd = cmds[(job, mode)]
            # reference
            restore(work, state[needs])
            home = base / f"prefect-{job}-{mode}-ref"
            marker = work_phase_marker(mode)
            rc, dur, began = run_to_end(cmd, offline_env(home, work),
                                        logs / f"{job}-{mode}-ref.log", max(60, left()), marker)
            print(f"{cell} reference: rc {rc}, {dur:.1f}s, work phase from {began:.1f}s",
                  flush=True)
            if rc != 0:
                results.append((job, mode, 0, "-", "-", "-", "reference failed",
                                f"rc {rc}, see {logs}"))
                continue
            if job == "pretrain":
                ref_ckpt, _ = checkpoint_state(work)
                ref = None
            else:
                ref = table_keys(work / "wh", from_scratch=job == "pipeline")
            ref_registry = registered_versions(work) if job == "pipeline" else None
            if is_builder:
                snap = base / f"after-{job}"
                shutil.copytree(work, snap, symlinks=True)
                state[job] = snap
            if not wanted:
                continue
            kills, lost, dup, orphans, rerun_ok, notes = 0, 0, 0, 0, True, []
            for i in range(args.points):
                if left() <= 0:
                    notes.append(f"budget exceeded after {i} kills")
                    skipped.append(f"{cell}: kills {i + 1}..{args.points} (budget)")
                    break
                at = rng.uniform(0, dur - began)   # into the work phase
                restore(work, state[needs])
                home = base / f"prefect-{job}-{mode}-{i}"
                env = offline_env(home, work)
                log = logs / f"{job}-{mode}-{i}.log"
                proc = start(cmd, env, log)
                waited = wait_for_marker(proc, log, 0, marker, max(60, 3 * began))
                try:
                    proc.wait(timeout=at)
                    notes.append(f"#{i}: finished before the kill at {at:.1f}s into its work"
                                 + ("" if waited is not None else " (no work phase seen)"))
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)   # kill -9 the command, not its group
                    proc.wait()
                    kills += 1
                # the watchdog stops children SIGTERM, then SIGKILL after a 5 s grace
                deadline = time.monotonic() + 12
                tags = [str(home), str(work)]
                while tagged_pids(tags) and time.monotonic() < deadline:
                    time.sleep(0.5)
                left_over = tagged_pids(tags)
                if left_over:
                    orphans += len(left_over)
                    notes.append(f"#{i} killed at {at:.1f}s: {len(left_over)} orphans: "
                                 + " | ".join(f"{pid} {c}" for pid, c in left_over[:4]))
                kill_group(proc)   # clean up what is in our group before the rerun
                rerun = list(cmd)
                ck = work / "pretrain" / "stage1" / "last.pt"
                resumed = job == "pretrain" and ck.exists()
                if resumed:
                    rerun.append("--resume")
                rc, rdur, _ = run_to_end(rerun, env, log, max(60, left() + 60))
                how = " --resume" if resumed else ""
                print(f"{cell} #{i}: killed at {at:.1f}s into the work phase, rerun{how}"
                      f" rc {rc} in {rdur:.1f}s", flush=True)
                if rc != 0:
                    rerun_ok = False
                    tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                    notes.append(f"#{i} killed at {at:.1f}s: rerun rc {rc}: "
                                 + " / ".join(tail))
                    continue
                if job == "pretrain":
                    got, err = checkpoint_state(work)
                    if got is None:
                        rerun_ok = False
                        notes.append(f"#{i}: {err}")
                    else:
                        if got.get("step") != ref_ckpt.get("step"):
                            rerun_ok = False
                            notes.append(f"#{i}: final step {got.get('step')} != "
                                         f"ref {ref_ckpt.get('step')}")
                        if not weights_equal(got, ref_ckpt):
                            notes.append(f"#{i} (killed at {at:.1f}s"
                                         f"{', resumed' if resumed else ''}): weights differ "
                                         "from the reference")
                else:
                    l_, d_, n_ = compare_rows(ref, table_keys(work / "wh",
                                                              from_scratch=job == "pipeline"))
                    if job == "pipeline":
                        rl, rd, rn = compare_registry(ref_registry, registered_versions(work))
                        l_, d_, n_ = l_ + rl, d_ + rd, "; ".join(x for x in (n_, rn) if x)
                    lost += l_
                    dup += d_
                    if n_:
                        notes.append(f"#{i} killed at {at:.1f}s: {n_}")
                    broken = verify_problems(work / "wh")
                    if broken:
                        rerun_ok = False
                        notes.append(f"#{i}: {broken}")
            na = job == "pretrain"
            results.append((job, mode, kills, "n/a" if na else lost, "n/a" if na else dup,
                            orphans, "yes" if rerun_ok else "NO",
                            (f"ref {dur:.1f}s (work from {began:.1f}s)"
                             + (f", step {ref_ckpt.get('step')}" if na
                                                  else "")
                             + ("; " + "; ".join(notes) if notes else ""))))
        # after the job's cells: the chain continues from its builder snapshot

    from warehouse.text_table import format_table
    print()
    print(format_table(["job", "mode", "kills", "rows lost", "rows duplicated", "orphans",
                        "rerun ok", "notes"], results))
    for s in skipped:
        print(f"skipped: {s}")
    print(f"total {time.monotonic() - t0:.0f}s")
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    bad = any((isinstance(r[3], int) and r[3]) or (isinstance(r[4], int) and r[4]) or r[5]
              or r[6] != "yes" for r in results)
    return 1 if bad or any("reference failed" in str(r[6]) for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
