"""Kill-and-resume for real: ``bitladder tune`` with two workers on SQLite is SIGKILLed mid-trial (one worker,
then the parent and the rest), and the same command, run again, keeps the finished trials, marks the killed
ones failed, retries them and completes the study."""

import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import optuna

from bitladder.pipeline.tune.run import _storage

TRIALS = 8


def _cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "bitladder.cli.app", "tune", "--model", "tests.zoo.user_models:slow_classifier",
            "--max-drop", "100",
            "--trials", str(TRIALS), "--workers", "2", "--out", str(out), "--study", "s"]


def _trials(out: Path):
    if not (out / "study.db").exists():
        return []
    try:
        return optuna.load_study(study_name="s", storage=_storage(f"sqlite:///{out / 'study.db'}")).get_trials()
    except KeyError:  # the study is not created yet
        return []


def _workers(parent: int) -> list[int]:
    """The parent's worker processes (spawned multiprocessing children, not its resource tracker)."""
    kids = []
    for pid in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        if b"multiprocessing" in cmd and b"resource_tracker" not in cmd:
            kids.append(int(pid))
    return kids


def test_sigkilled_tune_resumes_keeps_finished_trials_and_retries_the_killed_ones(tmp_path):
    out = tmp_path / "tune"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(_cmd(out), env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:  # until a trial has finished and another has just started
            trials = _trials(out)
            done = [t.params for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
            # a trial that started under a second ago and will measure (a repeat of finished params reuses
            # their figures at once): its forwards of 0.2 s each keep it running well past the kill
            fresh = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING and t.params
                     and t.params not in done and (datetime.now() - t.datetime_start).total_seconds() < 1.0]
            if fresh and done:
                break
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        workers = _workers(proc.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)  # one worker mid-trial ...
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGKILL)  # ... then the parent and everything left of the job
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = _trials(out)
    finished = {t.number for t in before if t.state == optuna.trial.TrialState.COMPLETE}
    killed = {t.number: t.params for t in before if t.state == optuna.trial.TrialState.RUNNING}
    assert finished and killed and len(finished) < TRIALS
    time.sleep(21)  # past the heartbeat grace period (20 s): the killed trials are now stale
    again = subprocess.run(_cmd(out), env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    after = {t.number: t for t in _trials(out)}
    assert finished <= {n for n, t in after.items() if t.state == optuna.trial.TrialState.COMPLETE}
    for number, params in killed.items():
        assert after[number].state == optuna.trial.TrialState.FAIL
        retries = [t for t in after.values() if t.system_attrs.get("failed_trial") == number]
        assert retries and retries[0].state == optuna.trial.TrialState.COMPLETE
        # the retry replays what the killed trial had suggested (all, none when killed before its first
        # suggestion, or a part when killed between two) and samples the rest
        assert all(retries[0].params.get(k) == v for k, v in params.items())
    complete = [t for t in after.values() if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) >= TRIALS
