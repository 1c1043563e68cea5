"""The study storage counts a RUNNING trial that never sent a heartbeat as stale once the grace period is over."""

import datetime
import warnings

import optuna
from optuna.storages._rdb import models

from bitladder.pipeline.tune.run import _storage


def test_a_trial_killed_before_its_first_heartbeat_is_failed_and_retried(tmp_path):
    storage = _storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage, study_name="s")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.ask()  # RUNNING, and no heartbeat thread ever wrote for it
    assert storage._get_stale_trial_ids(study._study_id) == []  # just started: not stale yet
    with storage.scoped_session() as session:  # as if it had started a minute ago
        row = session.query(models.TrialModel).one()
        row._datetime_start_utc -= datetime.timedelta(seconds=60)
        session.commit()
    optuna.storages.fail_stale_trials(study)
    states = [t.state for t in study.get_trials()]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING]  # failed, then queued again
    assert study.get_trials()[1].system_attrs["failed_trial"] == 0
