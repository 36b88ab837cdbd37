"""Sweeps on a real PostgreSQL server: workers that share nothing but the storage URL (each its own
output_dir, standing in for two hosts) drain a grid and a TPE study, a SIGKILLed worker's trial is
retried by the other, and a storage that cannot work is one `error:` line with the password masked.

The server is Debian's (`.ci/run` installs it when missing). Without one these tests skip on a
developer's machine but FAIL under CI=true: a PostgreSQL test that silently skips in CI tests nothing."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests import postgres_server
from tests.helpers import write_tiny_experiment

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning", "ignore::DeprecationWarning", "ignore::optuna.exceptions.ExperimentalWarning"
)
GRID = "sampler: grid\nspace:\n  model.moe.top_k: [1, 2]\n  model.moe.n_experts: [4, 8]\n"


@pytest.fixture(scope="module")
def server():
    try:
        pytest.importorskip("psycopg") if not os.environ.get("CI") else __import__("psycopg")
        srv = postgres_server.start()
    except (RuntimeError, OSError, ImportError) as err:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs a PostgreSQL server for these tests: {err}")
        pytest.skip(f"no PostgreSQL server: {err}")
    print(f"\nPostgreSQL server set up in {srv.setup_s:.1f} s")
    yield srv
    postgres_server.stop(srv)


@pytest.fixture
def database(server, request):
    return postgres_server.create_database(server, request.node.name.lower()[:40].replace("[", "_").replace("]", ""))


def write_sweep(tmp_path: Path, data_cache: Path, body: str, steps: int = 2, grace: int = 3) -> Path:
    write_tiny_experiment(tmp_path / "tiny.yaml", data_cache, steps=steps)
    path = tmp_path / "sweep.yaml"
    path.write_text(f"base: tiny.yaml\nname: pg\nheartbeat_interval: 1\ngrace_period: {grace}\n" + body)
    return path


def host_cmd(path: Path, url: str, host: str, tmp_path: Path) -> list[str]:
    """The command a researcher runs on each host: same sweep, same storage, the host's own disk."""
    return [sys.executable, "-m", "moe_lab.sweep", str(path), f"storage={url}", f"output_dir={tmp_path / host}"]


def start(cmd: list[str]) -> subprocess.Popen:
    # Reports read the storage URL from study_info.json, which holds no password: libpq takes it
    # from PGPASSWORD, as on a real host.
    env = {**os.environ, "PGPASSWORD": postgres_server.PASSWORD}
    return subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )


def load_trials(url: str):
    import optuna

    return optuna.load_study(study_name="pg", storage=url).get_trials()


def trial_table(ts) -> str:
    rows = [
        f"{t.number:>3} {t.state.name:<8} {json.dumps(t.params):<48} {t.user_attrs.get('worker', '-'):<22} "
        f"attempt {t.user_attrs.get('attempt', '-')}  {t.user_attrs.get('error') or ''}"
        for t in ts
    ]
    return "\n".join(rows)


def drain_on_two_hosts(path: Path, database: str, tmp_path: Path) -> list:
    """Run the sweep as two workers with their own output_dirs (two hosts) until both exit 0; the trials."""
    procs = [start(host_cmd(path, database, host, tmp_path)) for host in ("hostA", "hostB")]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    ts = load_trials(database)
    print("\n" + trial_table(ts))
    return ts


def test_two_hosts_drain_one_grid_exactly_once(tmp_path, data_cache, database):
    ts = drain_on_two_hosts(write_sweep(tmp_path, data_cache, GRID), database, tmp_path)
    assert [t.state for t in ts] == [TrialState.COMPLETE] * 4
    assert sorted((t.params["model.moe.top_k"], t.params["model.moe.n_experts"]) for t in ts) == [
        (1, 4),
        (1, 8),
        (2, 4),
        (2, 8),
    ]
    workers = {t.user_attrs["worker"] for t in ts}
    ran_on = {
        host: sorted(p.name for p in (tmp_path / host / "pg" / "trials").glob("t*")) for host in ("hostA", "hostB")
    }
    # Each grid point trained on exactly one host, and each host's summary lists all four.
    assert sorted(ran_on["hostA"] + ran_on["hostB"]) == sorted({*ran_on["hostA"], *ran_on["hostB"]})
    assert len(ran_on["hostA"]) + len(ran_on["hostB"]) == 4, (ran_on, workers)
    for host in ("hostA", "hostB"):
        summary = (tmp_path / host / "pg" / "summary.md").read_text()
        assert all(t.user_attrs["label"] in summary for t in ts), summary
        assert postgres_server.PASSWORD not in summary
        info = (tmp_path / host / "pg" / "study_info.json").read_text()
        assert postgres_server.PASSWORD not in info and "127.0.0.1" in info


@pytest.mark.slow
def test_killed_host_is_retried_by_the_other(tmp_path, data_cache, database):
    path = write_sweep(tmp_path, data_cache, "sampler: grid\nspace:\n  model.moe.top_k: [1, 2, 3]\n", steps=40)
    victim = start(host_cmd(path, database, "hostA", tmp_path))
    deadline = time.time() + 300
    while not list((tmp_path / "hostA" / "pg" / "trials").glob("t*/seed0/checkpoints/last.ckpt")):
        assert victim.poll() is None and time.time() < deadline, victim.stdout.read()
        time.sleep(0.2)
    survivor = start(host_cmd(path, database, "hostB", tmp_path))
    os.killpg(victim.pid, signal.SIGKILL)  # mid-trial, with a checkpoint on host A's disk only
    victim.wait()
    log = survivor.communicate(timeout=900)[0]
    assert survivor.returncode == 0, log
    ts = load_trials(database)
    print("\n" + trial_table(ts))
    done, failed = [t for t in ts if t.state == TrialState.COMPLETE], [t for t in ts if t.state == TrialState.FAIL]
    assert sorted(t.params["model.moe.top_k"] for t in done) == [1, 2, 3]  # none lost, none twice
    assert len(failed) == 1 and "no heartbeat for over 3 s" in failed[0].user_attrs["error"]
    (retry,) = [t for t in done if t.user_attrs["config_id"] == failed[0].user_attrs["config_id"]]
    assert retry.user_attrs["attempt"] == 1 and retry.user_attrs["worker"] != failed[0].user_attrs["worker"]
    # Host B could not see host A's checkpoint: the retry trained from scratch, all 40 steps, in its
    # own attempt directory; the half-trained seed on host A is not a result.
    assert retry.user_attrs["run_dirs"] == [
        f"trials/t{retry.user_attrs['config_id']:03d}-{retry.user_attrs['label']}/seed0.retry1"
    ]
    metrics = json.loads((tmp_path / "hostB" / "pg" / retry.user_attrs["run_dirs"][0] / "metrics.json").read_text())
    assert metrics["steps"] == 40 and metrics["status"] == "completed"
    assert retry.value == pytest.approx(metrics["val_loss"])


@pytest.mark.slow
def test_tpe_over_two_workers_runs_exactly_n_trials(tmp_path, data_cache, database):
    body = "sampler: tpe\nn_trials: 6\nspace:\n  optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
    ts = drain_on_two_hosts(write_sweep(tmp_path, data_cache, body), database, tmp_path)
    assert len(ts) == 6 and all(t.state == TrialState.COMPLETE for t in ts)
    assert sorted(t.user_attrs["config_id"] for t in ts) == list(range(6))
    assert len({t.user_attrs["worker"] for t in ts}) == 2  # both workers took part
    assert len({t.params["optim.lr"] for t in ts}) == 6  # workers' samplers seeded alike draw apart


@pytest.mark.parametrize("case", ["wrong password", "unreachable host", "missing database"])
def test_storage_that_cannot_work_is_one_error_line(tmp_path, data_cache, server, case):
    wrong = "not-the-" + postgres_server.PASSWORD
    url = {
        "wrong password": server.url(password=wrong),
        "unreachable host": server.url(port=postgres_server.free_port()),
        "missing database": server.url("no_such_db"),
    }[case]
    path = write_sweep(tmp_path, data_cache, "sampler: grid\nspace:\n  model.moe.top_k: [1]\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = subprocess.run(host_cmd(path, url, "hostA", tmp_path), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: storage: cannot open postgresql")
    assert f"127.0.0.1:{url.rsplit(':', 1)[1].split('/')[0]}" in proc.stderr  # names the storage
    assert "***" in proc.stderr and postgres_server.PASSWORD not in proc.stdout + proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output_dir, no .study.lock


def files_holding(root: Path, secret: str) -> list[str]:
    """Every file under `root` whose bytes contain `secret` (TensorBoard event files and checkpoints too)."""
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_a_password_in_the_url_reaches_no_file_and_the_sweep_reports(tmp_path, data_cache, database):
    """The URL with its password on the command line and no PGPASSWORD: the sweep trains, writes its report
    with the URL it ran with, and no file of its output (env.json's argv included) holds the password."""
    path = write_sweep(tmp_path, data_cache, "sampler: grid\nspace:\n  model.moe.top_k: [1, 2]\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "MOE_LAB_STORAGE_PASSWORD")}
    proc = subprocess.run(
        host_cmd(path, database, "hostA", tmp_path), cwd=REPO, capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    study = tmp_path / "hostA" / "pg"
    assert (study / "summary.md").is_file() and "top_k=2" in (study / "summary.md").read_text()
    assert len(list(study.glob("trials/*/seed0/env.json"))) == 2
    assert files_holding(tmp_path / "hostA", postgres_server.PASSWORD) == []
    assert postgres_server.PASSWORD not in proc.stdout + proc.stderr
    # The argv a run records still says which storage it used, password masked.
    argv = json.loads(next(study.glob("trials/*/seed0/env.json")).read_text())["argv"]
    assert any(a.startswith("storage=postgresql+psycopg://") and ":***@127.0.0.1" in a for a in argv), argv


@pytest.mark.slow  # 15 s; the default suite's test above covers the password in the URL
def test_the_password_may_come_from_moe_lab_storage_password(tmp_path, data_cache, database):
    """A URL without a password, the password in MOE_LAB_STORAGE_PASSWORD: the sweep and a later report
    both open the storage."""
    from sqlalchemy.engine import make_url

    url = make_url(database)._replace(password=None).render_as_string(hide_password=False)
    path = write_sweep(tmp_path, data_cache, "sampler: grid\nspace:\n  model.moe.top_k: [1]\n")
    env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    env["MOE_LAB_STORAGE_PASSWORD"] = postgres_server.PASSWORD
    proc = subprocess.run(host_cmd(path, url, "hostA", tmp_path), cwd=REPO, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = [sys.executable, "-m", "moe_lab.report", str(tmp_path / "hostA" / "pg")]
    again = subprocess.run(report, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert files_holding(tmp_path / "hostA", postgres_server.PASSWORD) == []
