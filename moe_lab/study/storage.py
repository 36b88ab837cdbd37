"""The study's storage: open an Optuna storage from a sweep's URL, with errors a person can act on.
The one place a storage URL is taken apart (journal:<file>, SQLite file, database server).

Every way a storage URL can be wrong (unparsable, driver not installed, folder missing, server
unreachable, password refused, database missing) becomes one `MoELabError` naming the storage with
its password masked, raised before anything is written.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from pathlib import Path

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url

from moe_lab.artifacts.study_dir import default_storage_url
from moe_lab.errors import MoELabError, first_line

PASSWORD_VARIABLE = "MOE_LAB_STORAGE_PASSWORD"
JOURNAL = "journal:"  # journal:<file>: Optuna's file journal, for filesystems where SQLite locking fails
SCHEMA_RETRIES = 5
# The SQLAlchemy dialects whose drivers we name in the install hint.
DRIVER_HINTS = {
    "postgresql": "pip install 'moe-lab[postgres]' (psycopg 3) and write postgresql+psycopg://user@host/db",
    "mysql": "pip install a MySQL driver (e.g. pymysql) and write mysql+pymysql://user@host/db",
}


def masked_url(url: str) -> str:
    """The URL as it may be shown or logged: a password becomes ***."""
    if url.startswith(JOURNAL):
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def recorded_url(url: str) -> str:
    """The URL as it may be written to disk (the study directory's STUDY_INFO): without the password,
    which the database client then takes from PGPASSWORD or ~/.pgpass like any libpq program."""
    if url.startswith(JOURNAL):
        return url
    try:
        # URL is a NamedTuple; URL.set(password=None) would keep the password (None = unchanged).
        return make_url(url)._replace(password=None).render_as_string(hide_password=False)
    except sqlalchemy.exc.ArgumentError:
        return url


def with_password_from_environment(url: str) -> str:
    """`url` with the password of MOE_LAB_STORAGE_PASSWORD when it names a user and no password. (The
    libpq conventions, PGPASSWORD and ~/.pgpass, work anyway: the driver reads them itself.) So the URL
    in a sweep file, on a command line or in the study's records never needs to hold the password."""
    password = os.environ.get(PASSWORD_VARIABLE)
    if not password or url.startswith(JOURNAL):
        return url
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        return url
    if not parsed.username or parsed.password is not None:
        return url
    return parsed.set(password=password).render_as_string(hide_password=False)


def storage_file(url: str) -> Path | None:
    """The local file a journal:<file> or SQLite URL keeps its study in; None for a database server
    (or an in-memory SQLite)."""
    if url.startswith(JOURNAL):
        return Path(url.removeprefix(JOURNAL)).expanduser()
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        return None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return Path(parsed.database).expanduser()
    return None


def with_storage_file(url: str, path: Path) -> str:
    """`url` with its study file (storage_file) replaced by `path`: a study directory that was copied
    or moved holds its storage where the recorded URL no longer points."""
    if url.startswith(JOURNAL):
        return f"{JOURNAL}{path}"
    return make_url(url).set(database=str(path)).render_as_string(hide_password=False)


def _hide(text: str, url: str) -> str:
    password = None
    with contextlib.suppress(sqlalchemy.exc.ArgumentError):
        password = make_url(url).password
    return text.replace(password, "***") if password else text


def _check_folder(path: Path, shown: str, what: str) -> None:
    if not path.parent.is_dir():
        raise MoELabError(
            f"storage: {shown}: folder {path.parent} does not exist; create it "
            f"(mkdir -p {path.parent}) or point the {what} elsewhere"
        )


def open_storage(
    url: str, heartbeat_interval: int | None = None, grace_period: int | None = None, max_retries: int = 0
):
    """An Optuna storage for `url` (an SQLAlchemy URL or journal:<file>), connected and checked. The
    heartbeat settings are a running sweep's (stale trials failed and retried); a reader passes none."""
    url = with_password_from_environment(url)
    shown = masked_url(url)
    file = storage_file(url)
    if url.startswith(JOURNAL):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        _check_folder(file, shown, "journal file")
        return JournalStorage(JournalFileBackend(str(file)))
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise MoELabError(
            f"storage: {shown!r} is not a storage URL; expected sqlite:///path/study.db, "
            "postgresql+psycopg://user@host/db (any SQLAlchemy URL) or journal:<file>"
        ) from None
    try:
        parsed.get_dialect().import_dbapi()  # the driver module, as create_engine will import it
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as err:
        hint = DRIVER_HINTS.get(parsed.get_backend_name(), "install the SQLAlchemy driver it names")
        raise MoELabError(f"storage: {shown}: database driver not available ({first_line(err)}); {hint}") from None
    if file is not None:
        _check_folder(file, shown, "sqlite file")
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    heartbeat = (
        {}
        if heartbeat_interval is None
        else dict(
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retries),
        )
    )
    for attempt in range(SCHEMA_RETRIES + 1):
        try:
            return optuna.storages.RDBStorage(
                url,
                **heartbeat,
                # A dead connection (server restarted, idle timeout) is replaced instead of failing a trial.
                engine_kwargs={"pool_pre_ping": True} if parsed.get_backend_name() != "sqlite" else None,
            )
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as err:
            # Workers starting together on an empty database race to create Optuna's tables; the
            # losers see a duplicate table or key (SQLite reports "table ... already exists" as an
            # OperationalError) and find the tables there when they try again. A connection that fails
            # (host, password, database) will not get better: report it.
            racing = not isinstance(err, sqlalchemy.exc.OperationalError) or any(
                sign in str(err) for sign in ("locked", "already exists")
            )
            if racing and attempt < SCHEMA_RETRIES:
                time.sleep(0.5 + random.random())
                continue
            reason = _hide(first_line(err), url)
            raise MoELabError(
                f"storage: cannot open {shown}: {reason}; check the host, port, user, password "
                "(PGPASSWORD or ~/.pgpass) and that the database exists (createdb)"
            ) from None


def load_stored_study(study_dir: Path, study_name: str, storage_url: str = ""):
    """The Optuna study a sweep recorded in its study directory (read only: a sweep creates and runs
    it with moe_lab.sweep.runner.open_study). A SQLite or journal file that is not where it was written
    (the study directory was copied or moved) is looked for in the study directory."""
    url = storage_url or default_storage_url(study_dir)
    recorded = storage_file(url)
    if recorded is not None:
        url = with_storage_file(url, _local_file(recorded, study_dir, url).resolve())
    storage = open_storage(url)  # MoELabError naming the storage when it cannot be opened
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise MoELabError(f"{url}: no study named {study_name!r}") from None
    except Exception as err:  # storage backends raise their own types (SQLAlchemy, redis, ...)
        raise MoELabError(f"{url}: cannot open the study storage: {first_line(err)}") from None


def _local_file(path: Path, study_dir: Path, url: str) -> Path:
    if path.is_file():
        return path
    moved = study_dir / path.name
    if moved.is_file():
        return moved
    looked = f"{path} and {moved}" if path.resolve() != moved.resolve() else str(path)
    raise MoELabError(f"{url}: no such storage file (looked for {looked})")
