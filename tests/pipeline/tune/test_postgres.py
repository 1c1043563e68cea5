"""tune on a real PostgreSQL server (started by the test): two workers share one study through the URL, and a
seeded serial study gives the same trials as on SQLite."""

import pytest

from bitladder.pipeline.tune import study as T
from bitladder.pipeline.tune.run import run_tune
from tests.pipeline.tune import postgres
from tests.pipeline.tune.test_study import FAST

pytestmark = pytest.mark.skipif(postgres.missing() is not None, reason=str(postgres.missing()))


def _complete(res):
    return [t for t in res["trials"] if t["state"] == "COMPLETE"]


def test_two_workers_share_a_postgresql_study_and_a_serial_one_matches_sqlite(tmp_path):
    cfg = T.TuneConfig(max_drop=100.0, trials=4, **FAST)
    with postgres.server() as url:
        shared = run_tune("digits", cfg, tmp_path / "pg2", storage=url, workers=2)
        serial_pg = run_tune("digits", cfg, tmp_path / "pg1", storage=url, study_name="serial")
    done = _complete(shared)
    assert len(shared["workers"]) == 2 and len(done) >= 4  # both processes wrote trials into one study
    assert len({t["number"] for t in shared["trials"]}) == len(shared["trials"])
    assert shared["study"]["storage"].startswith("postgresql://bl@127.0.0.1")
    serial_sqlite = run_tune("digits", cfg, tmp_path / "sq1")
    # same seed, one worker: the sampler proposes the same trials whatever the database
    assert [t["params"] for t in _complete(serial_pg)] == [t["params"] for t in _complete(serial_sqlite)]
    assert serial_pg["best"]["params"] == serial_sqlite["best"]["params"]
    assert serial_pg["rungs"][0]["bits_per_weight"] == serial_sqlite["rungs"][0]["bits_per_weight"]
