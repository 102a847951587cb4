"""The `team` profile: one machine that several people share, built from Dagster's and MLflow's own pieces.

    imagegen team up      # PostgreSQL, mlflow server, dagster-webserver and dagster-daemon, all on 127.0.0.1
    imagegen team down    # stops all four; the data (databases, artifacts, shards) stays for the next `up`

- PostgreSQL (Debian's server) holds Dagster's run, event-log and schedule storage (`dagster-postgres`) and MLflow's
  tracking and registry tables. Password auth (scram); the password lives in a 0600 pgpass file, never in argv.
- `mlflow server` serves the registry over REST and proxies the artifact store (`--artifacts-destination`).
- `dagster-webserver` and `dagster-daemon` run as separate processes against one instance: the daemon's
  QueuedRunCoordinator launches runs, and the `gpu` pool admits one training run at a time (`granularity: run`).

Nothing in the pipeline knows: the same code reads $DAGSTER_HOME, $IMAGEGEN_TRACKING_URI and $IMAGEGEN_HOME,
which `team.env` (written by `up`) sets for anyone who runs the CLI against the team's servers.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from imagegen_pipeline.net import LOOPBACK, free_port, url_for, warn_if_exposed
from imagegen_pipeline.paths import REPO_ROOT, DataPaths
from imagegen_pipeline.ui import venv_bin, start_group, wait_http

DB_USER = "imagegen"
DATABASES = ("dagster", "mlflow")
GPU_POOL = "gpu"  # the pool of feature_extractor and dcgan_checkpoint
SERVICES = ("mlflow", "dagster-webserver", "dagster-daemon")  # started in this order; stopped together


class TeamError(RuntimeError):
    """The profile cannot come up here; the message says what is missing."""


@dataclass
class Team:
    """Where one team profile lives and listens. Its files are under `root` (default <data root>/.team)."""

    root: Path
    home: Path  # the data root the pipeline reads and writes
    host: str = LOOPBACK
    pg_port: int = 5433
    mlflow_port: int = 5002
    dagster_port: int = 3001

    @property
    def pgdata(self) -> Path:
        return self.root / "pgdata"

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster_home"

    @property
    def mlflow_url(self) -> str:
        return url_for(self.host, self.mlflow_port)

    @property
    def dagster_url(self) -> str:
        return url_for(self.host, self.dagster_port)

    def postgres_url(self, db: str) -> str:
        """No password in the URL: libpq reads it from $PGPASSFILE. The driver is named: SQLAlchemy 2.1's default
        for postgresql:// is psycopg 3, while dagster-postgres brings psycopg2."""
        return f"postgresql+psycopg2://{DB_USER}@127.0.0.1:{self.pg_port}/{db}"

    def env(self) -> dict[str, str]:
        """What a process needs to use the team's servers instead of the embedded stores."""
        return {"IMAGEGEN_HOME": str(self.home), "DAGSTER_HOME": str(self.dagster_home),
                "IMAGEGEN_TRACKING_URI": self.mlflow_url, "IMAGEGEN_MLFLOW_UI": self.mlflow_url,
                "PGPASSFILE": str(self.root / "pgpass")}

    def save(self) -> None:
        (self.root / "team.json").write_text(json.dumps({k: str(v) for k, v in asdict(self).items()}, indent=1))
        (self.root / "team.env").write_text("".join(f"export {k}={v}\n" for k, v in self.env().items()))

    @classmethod
    def load(cls, root: Path) -> Team:
        d = json.loads((root / "team.json").read_text())
        return cls(Path(d["root"]), Path(d["home"]), d["host"], int(d["pg_port"]), int(d["mlflow_port"]),
                   int(d["dagster_port"]))


def default_root(paths: DataPaths) -> Path:
    return paths.home / ".team"


def up(paths: DataPaths, *, root: Path | None = None, host: str = LOOPBACK, pg_port: int = 0, mlflow_port: int = 5002,
       dagster_port: int = 3001, gpus: int = 1, log=print) -> Team:
    """Start PostgreSQL, MLflow, the Dagster webserver and the daemon (creating the databases the first time);
    return once all answer. A service already running for this root is left as it is. `gpus`: how many
    training runs the `gpu` pool admits at once."""
    root = (root or default_root(paths)).resolve()
    root.mkdir(parents=True, exist_ok=True)
    old = Team.load(root) if (root / "team.json").is_file() else None
    team = Team(root, paths.home.resolve(), host, pg_port or (old.pg_port if old else free_port()), mlflow_port,
                dagster_port)
    warn_if_exposed(host, "the team's Dagster and MLflow servers")
    (root / "logs").mkdir(exist_ok=True)
    (root / "run").mkdir(exist_ok=True)
    _start_postgres(team, log)
    _write_dagster_yaml(team)
    team.save()
    env = {**os.environ, **team.env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    # the pool's limit lives in the instance's storage: set it before any run is queued, so the daemon's first
    # pass already holds a second training run back (an unknown pool only gets its default limit later)
    done = subprocess.run([venv_bin("dagster"), "instance", "concurrency", "set", GPU_POOL, str(gpus)], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise TeamError(f"could not set the {GPU_POOL} pool's limit: {done.stderr.strip()[-1500:]}")
    argv = {
        "mlflow": [venv_bin("mlflow"), "server", "--backend-store-uri", team.postgres_url("mlflow"),
                   "--artifacts-destination", (root / "mlflow-artifacts").as_uri(), "--host", host,
                   "--port", str(mlflow_port), "--workers", "1"],
        "dagster-webserver": [venv_bin("dagster-webserver"), "-w", str(REPO_ROOT / "workspace.yaml"), "-h", host,
                              "-p", str(dagster_port)],
        "dagster-daemon": [venv_bin("dagster-daemon"), "run", "-w", str(REPO_ROOT / "workspace.yaml")],
    }
    health = {"mlflow": f"{team.mlflow_url}/health", "dagster-webserver": f"{team.dagster_url}/server_info"}
    for name in SERVICES:
        if _alive(root, name):
            log(f"{name} already running")
            continue
        proc = start_group(argv[name], env=env, cwd=REPO_ROOT, log=root / "logs" / f"{name}.log")
        (root / "run" / f"{name}.pid").write_text(str(proc.pid))
        if name in health:
            wait_http(health[name], timeout=180, proc=proc)
        log(f"{name} started (pid {proc.pid})")
    log(f"Dagster UI {team.dagster_url}, MLflow {team.mlflow_url}; to use them from a shell: "
        f"source {root / 'team.env'}")
    return team


def down(paths: DataPaths, *, root: Path | None = None, timeout: float = 30, log=print) -> None:
    """Stop the three servers (their whole process groups, told together, so the wait is the slowest one's, not
    the sum) and then PostgreSQL. Idempotent."""
    root = (root or default_root(paths)).resolve()
    stopping: dict[str, int] = {}
    for name in reversed(SERVICES):
        pid_file = root / "run" / f"{name}.pid"
        if not pid_file.is_file():
            continue
        pgid = int(pid_file.read_text())
        if _ours(pgid, name) and _group_signal(pgid, signal.SIGTERM):
            stopping[name] = pgid
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_group_signal(pgid, 0) for pgid in stopping.values()):
        time.sleep(0.2)
    for name, pgid in stopping.items():
        _group_signal(pgid, signal.SIGKILL)
        log(f"{name} stopped")
    for name in SERVICES:
        (root / "run" / f"{name}.pid").unlink(missing_ok=True)
    if (root / "pgdata" / "postmaster.pid").is_file():
        _as_postgres([_pg_bin("pg_ctl"), "-D", str(root / "pgdata"), "-m", "fast", "-w", "stop"], root)
        log("postgres stopped")


def _alive(root: Path, name: str) -> bool:
    pid_file = root / "run" / f"{name}.pid"
    if not pid_file.is_file():
        return False
    pgid = int(pid_file.read_text())
    return _ours(pgid, name) and _group_signal(pgid, 0)


def _ours(pgid: int, name: str) -> bool:
    """Whether process group `pgid` still runs the server we started (a leader that died may have left its
    children; after a reboot the number may belong to anything else)."""
    import psutil

    key = name.split("-")[0]  # mlflow, dagster
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if os.getpgid(proc.info["pid"]) == pgid and any(key in part for part in proc.info["cmdline"] or ()):
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def _group_signal(pgid: int, sig: int) -> bool:
    """Send `sig` to a process group; whether it still existed. (Leaders we started are our children: reap them.)"""
    try:
        os.waitpid(pgid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False


# ---- PostgreSQL -----------------------------------------------------------------------------------------------

def _pg_bin(name: str) -> str:
    """Debian keeps the server binaries out of PATH, under /usr/lib/postgresql/<major>/bin."""
    found = shutil.which(name) or next(iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)),
                                       None)
    if not found:
        raise TeamError(f"{name} not found: install PostgreSQL (`apt-get install postgresql`, or `make system-deps`)")
    return str(found)


def _server_user() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root: as root we run it as Debian's `postgres` user."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise TeamError("running as root, and there is no `postgres` user to run the server as: install "
                        "PostgreSQL from Debian's packages (it creates the user) or run as a normal user") from None


def _as_postgres(argv: list[str], root: Path) -> None:
    user = _server_user()
    if user is not None:
        argv = ["runuser", "-u", user.pw_name, "--", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, cwd="/")
    if done.returncode != 0:
        raise TeamError(f"{' '.join(argv[:4])}... failed ({done.returncode}): {done.stderr.strip()[-1500:]}; "
                        f"see {root / 'logs' / 'postgres.log'}")


def _own(path: Path) -> None:
    user = _server_user()
    if user is not None:
        os.chown(path, user.pw_uid, user.pw_gid)


def _start_postgres(team: Team, log) -> None:
    root, pgdata = team.root, team.pgdata
    pgpass = root / "pgpass"
    if not pgdata.is_dir():
        user = _server_user()
        if user is not None and not _reachable_by(root, user):
            raise TeamError(f"{root} is not readable by user {user.pw_name}, which runs the server under root: "
                            f"give its folders o+x, or pass --root in a folder it can reach")
        password = secrets.token_urlsafe(24)
        pwfile = root / "initdb.pw"
        write_secret(pwfile, password + "\n")
        _own(pwfile)
        pgdata.mkdir(mode=0o700)
        _own(pgdata)
        _own(root / "logs")
        try:
            _as_postgres([_pg_bin("initdb"), "-D", str(pgdata), "-U", DB_USER, "--auth=scram-sha-256",
                          f"--pwfile={pwfile}", "-E", "UTF8", "--no-instructions"], root)
        finally:
            pwfile.unlink()
        write_secret(pgpass, f"127.0.0.1:*:*:{DB_USER}:{password}\n")
        created = True
    else:
        created = False
    if not (pgdata / "postmaster.pid").is_file():
        options = f"-p {team.pg_port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={pgdata}"
        _as_postgres([_pg_bin("pg_ctl"), "-D", str(pgdata), "-l", str(root / "logs" / "postgres.log"), "-o", options,
                      "-w", "-t", "60", "start"], root)
        log(f"postgres started on 127.0.0.1:{team.pg_port}")
    if created:
        import psycopg2

        password = pgpass.read_text().strip().rsplit(":", 1)[1]
        conn = psycopg2.connect(host="127.0.0.1", port=team.pg_port, user=DB_USER, password=password,
                                dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            for db in DATABASES:
                cur.execute(f"CREATE DATABASE {db}")
        conn.close()


def write_secret(path: Path, text: str) -> None:
    """Write a password file that is 0600 from its first byte on (write-then-chmod leaves a window where any local
    user may read it); an existing copy is made private before it is rewritten."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _reachable_by(path: Path, user: pwd.struct_passwd) -> bool:
    """Whether every folder above `path` lets others through (o+x), as the server user needs."""
    return all(p.stat().st_mode & 0o001 for p in [path, *path.parents])


# ---- Dagster instance ------------------------------------------------------------------------------------------

def _write_dagster_yaml(team: Team) -> None:
    """The repo's dagster.yaml (telemetry off, run limits, the gpu pool) on PostgreSQL storage, with the queued
    run coordinator and the gpu pool counted per run: a second training run waits in the queue, not in a worker."""
    config = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    config["storage"] = {"postgres": {"postgres_url": team.postgres_url("dagster")}}
    config["run_coordinator"] = {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"}
    config.setdefault("concurrency", {}).setdefault("pools", {})["granularity"] = "run"
    config["local_artifact_storage"] = {"module": "dagster._core.storage.root", "class": "LocalArtifactStorage",
                                        "config": {"base_dir": str(team.dagster_home / "storage")}}
    team.dagster_home.mkdir(parents=True, exist_ok=True)
    (team.dagster_home / "dagster.yaml").write_text(
        "# Written by `imagegen team up` (imagegen_pipeline/team.py): the team profile's instance.\n"
        + yaml.safe_dump(config, sort_keys=False))
