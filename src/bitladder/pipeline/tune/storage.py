"""The study database: optuna's RDBStorage, with one more kind of stale trial.

optuna fails a RUNNING trial whose last heartbeat is older than the grace period, but skips a trial that never
recorded one: a worker killed between taking a trial and its heartbeat thread's first write (SQLite's write
lock can hold that write back) left the trial RUNNING for good, never retried
(tests/pipeline/tune/test_kill_resume.py found it). Here such a trial is stale too once it started more than
the grace period ago; the heartbeat thread writes within milliseconds of a live trial's start.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.trial import TrialState


class HeartbeatStorage(RDBStorage):
    """RDBStorage whose stale trials also include old RUNNING trials without any heartbeat."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = list(super()._get_stale_trial_ids(study_id))
        grace = self.grace_period or 2 * (self.heartbeat_interval or 0)
        cutoff = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(seconds=grace)  # stored as naive UTC
        with self.scoped_session() as session:
            beating = {h.trial_id for h in session.query(models.TrialHeartbeatModel.trial_id)}
            old = (session.query(models.TrialModel.trial_id)
                   .filter(models.TrialModel.study_id == study_id, models.TrialModel.state == TrialState.RUNNING,
                           models.TrialModel._datetime_start_utc < cutoff).all())
        return stale + [t.trial_id for t in old if t.trial_id not in beating and t.trial_id not in stale]
