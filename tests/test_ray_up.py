"""`ray up` for real, on this machine: cluster-local.yaml's own setup and start steps (deploy/node.sh) over SSH.

An sshd of the test's own (Debian's openssh-server, key auth, only a throwaway user allowed) listens on 127.0.0.1
(the head) and 127.0.0.2 (the worker), port 22. As that user: `ray up -y` a copy of cluster-local.yaml whose
addresses, ports, folders and user are this machine's (the head's setup installs raysft from the synced repo into a
fresh venv: `node.sh setup --reuse-site` takes the dependencies from this Python's installed packages, as there is no
package index here) → the worker joins → `ray job submit -- raysft doctor smoke` passes on both nodes → `ray job
submit -- raysft tune smoke` lands its runs in the head's MLflow server → `node.sh stop head` and `ray down -y`.

Why a throwaway user: `ray up`/`ray down` run `ray stop` on every node, which ends every Ray process its user may
signal; run as an unprivileged user of its own, it cannot touch anyone else's Ray on a shared machine. So the test
needs root (for that user and for sshd on port 22), sshd, ssh, rsync and a system python3 of this Python's version;
it is skipped, with the reason, where any is missing (`apt-get install -y openssh-server rsync`). Everything it
started is stopped by pid (sshd) or is the throwaway user's own (ended, then the user is deleted).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.multinode]

REPO = Path(__file__).resolve().parent.parent
HEAD, WORKER = "127.0.0.1", "127.0.0.2"
TRANSCRIPT: list[str] = []


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _world_readable(path: Path) -> bool:
    return all(os.stat(p).st_mode & 0o005 == 0o005 for p in [path, *path.parents])


def _system_python() -> str | None:
    for cand in (f"/usr/bin/python3.{sys.version_info.minor}", f"/usr/local/bin/python3.{sys.version_info.minor}"):
        if os.access(cand, os.X_OK):
            return cand
    return None


def skip_reason() -> str | None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root: it runs its own sshd on port 22 and a throwaway user (whose `ray stop` touches no other Ray)"
    for tool in ("/usr/sbin/sshd", "ssh", "ssh-keygen", "rsync", "useradd", "userdel", "su"):
        if not shutil.which(tool):
            return f"{tool} not found: apt-get install -y openssh-server rsync"
    if _system_python() is None:
        return f"no system python3.{sys.version_info.minor} for the cluster user's venv"
    site = Path(sysconfig.get_paths()["purelib"])
    if not _world_readable(site) or not _world_readable(REPO):
        return f"{site} or {REPO} is not readable by other users: the cluster user needs both"
    for host in (HEAD, WORKER):
        if not _port_free(host, 22):
            return f"port 22 on {host} is in use: this test runs its own sshd there"
    return None


def run(cmd: list[str] | str, timeout: float, check: bool = True, **kw) -> subprocess.CompletedProcess:
    shown = cmd if isinstance(cmd, str) else shlex.join(cmd)
    TRANSCRIPT.append(f"$ {shown}")
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, shell=isinstance(cmd, str), **kw)
    out = (p.stdout + p.stderr).strip()
    lines = [line if len(line) <= 240 else line[:240] + " …" for line in out.splitlines()[-40:]]
    TRANSCRIPT.append("\n".join(lines) + f"\n[exit {p.returncode}, {time.time() - t:.0f} s]")
    if check and p.returncode != 0:
        pytest.fail(f"{shown} exited {p.returncode}:\n" + "\n".join(TRANSCRIPT[-2:]))
    return p


class Machine:
    """The throwaway user, its home, its key, and the sshd that lets it in on 127.0.0.1 and 127.0.0.2."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="rsu"))  # short: Ray's socket paths live under it
        os.chmod(self.root, 0o755)
        self.user = f"raysft{os.getpid()}"
        self.home = self.root / "h"
        self.sshd_pid: int | None = None
        self.uid: int | None = None

    def start(self) -> None:
        # -p '*': no password, but not a locked account (sshd refuses locked ones, even with a key)
        run(["useradd", "-M", "-d", str(self.home), "-s", "/bin/bash", "-p", "*", self.user], 30)
        import pwd

        self.uid = pwd.getpwnam(self.user).pw_uid
        ssh = self.home / ".ssh"
        ssh.mkdir(parents=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh / "id_ed25519")], 30)
        (ssh / "authorized_keys").write_text((ssh / "id_ed25519.pub").read_text())
        # A login shell reads ~/.profile, which reads ~/.bashrc (where node.sh adds ~/.raysft_env).
        (self.home / ".profile").write_text('[ -f ~/.bashrc ] && . ~/.bashrc\n')
        (self.home / ".bashrc").write_text("")
        run(["chown", "-R", f"{self.user}:{self.user}", str(self.home)], 30)
        os.chmod(ssh, 0o700)
        sshd = self.root / "sshd"
        sshd.mkdir()
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(sshd / "host_key")], 30)
        (sshd / "config").write_text("\n".join([
            f"ListenAddress {HEAD}:22", f"ListenAddress {WORKER}:22", f"HostKey {sshd / 'host_key'}",
            f"PidFile {sshd / 'pid'}", f"AllowUsers {self.user}", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "PubkeyAuthentication yes", "UsePAM no", "StrictModes no",
            "PermitRootLogin no", "X11Forwarding no", "MaxSessions 50", "MaxStartups 50", "",
        ]))
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation folder
        run(["/usr/sbin/sshd", "-f", str(sshd / "config"), "-E", str(sshd / "log")], 30)
        for _ in range(50):
            if (sshd / "pid").exists():
                self.sshd_pid = int((sshd / "pid").read_text())
                break
            time.sleep(0.1)
        assert self.sshd_pid, "sshd did not start: " + (sshd / "log").read_text()[-2000:]
        for host in (HEAD, WORKER):  # key auth works on both addresses, before `ray up` retries for minutes
            p = self.as_user(f"ssh -i ~/.ssh/id_ed25519 -o BatchMode=yes -o StrictHostKeyChecking=no "
                             f"-o UserKnownHostsFile=/dev/null {host} 'echo ok:$SSH_CONNECTION'", 60, check=False)
            assert p.returncode == 0 and f"ok:" in p.stdout, (p.stdout + p.stderr + (sshd / "log").read_text())[-2000:]

    def as_user(self, command: str, timeout: float, check: bool = True) -> subprocess.CompletedProcess:
        return run(["su", "-", self.user, "-c", command], timeout, check=check)

    def own_processes(self) -> list:
        import psutil

        out = []
        for p in psutil.process_iter(["uids"]):
            try:
                if p.info["uids"] and p.info["uids"].real == self.uid:
                    out.append(p)
            except psutil.Error:
                pass
        return out

    def raylets(self) -> list:
        import psutil

        out = []
        for p in self.own_processes():
            try:
                if "raylet" in " ".join(p.cmdline()):
                    out.append(p)
            except psutil.Error:
                pass
        return out

    def stop(self) -> None:
        if self.uid is not None:  # what `ray down` and `node.sh stop` left of the user's own processes
            import psutil

            deadline = time.time() + 30
            while self.own_processes() and time.time() < deadline:
                time.sleep(1)
            left = self.own_processes()
            for p in left:
                try:
                    p.kill()
                except psutil.Error:
                    pass
            psutil.wait_procs(left, timeout=30)
        if self.sshd_pid:
            try:
                os.kill(self.sshd_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if self.uid is not None:
            for _ in range(30):  # userdel refuses while a process of the user is still exiting
                if subprocess.run(["userdel", self.user], capture_output=True).returncode in (0, 6):
                    break
                time.sleep(1)
        for f in Path("/tmp/ray").glob(f"cluster-raysft-test-{os.getpid()}.*"):  # the local provider's state
            f.unlink(missing_ok=True)
        shutil.rmtree(self.root, ignore_errors=True)


def cluster_file(m: Machine, ports: dict[str, int]) -> Path:
    """cluster-local.yaml with this machine's addresses, user, ports and folders; its node.sh steps unchanged."""
    c = yaml.safe_load((REPO / "cluster-local.yaml").read_text())
    c["cluster_name"] = f"raysft-test-{os.getpid()}"
    c["provider"].update(head_ip=HEAD, worker_ips=[WORKER])
    c["auth"] = {"ssh_user": m.user, "ssh_private_key": str(m.home / ".ssh" / "id_ed25519")}
    # the product's own mounts (its parts of the repo, not `.`), made absolute: `ray up` runs from REPO anyway
    c["file_mounts"] = {remote: str((REPO / local).resolve()) for remote, local in c["file_mounts"].items()}
    c["initialization_commands"] = []  # no NFS here: one machine shares its disk
    home = str(m.home)
    setup = {"--reuse-site": sysconfig.get_paths()["purelib"], "--storage": f"{home}/storage",
             "--data": f"{home}/data", "--mlflow-port": str(ports["mlflow"])}
    temp = f"{home}/rt"
    starts = {
        "head_start_ray_commands": ({"--port": str(ports["gcs"]), "--dashboard-port": str(ports["dashboard"]),
                                     "--mlflow-port": str(ports["mlflow"]), "--drivers": "2",
                                     "--mlflow-artifacts": f"{home}/mlflow-artifacts", "--temp-dir": temp},
                                    [f"--ray-client-server-port={ports['client']}",
                                     f"--dashboard-agent-listen-port={ports['agent_head']}"]),
        "worker_start_ray_commands": ({"--port": str(ports["gcs"]), "--temp-dir": temp},
                                      [f"--dashboard-agent-listen-port={ports['agent_worker']}"]),
    }

    def rewrite(cmd: str, updates: dict[str, str], extra: list[str], env: list[str] = ()) -> str:
        words = shlex.split(cmd)
        head, rest = words[:4], words[4:]
        assert head[0] == "bash" and head[1].endswith("deploy/node.sh"), cmd
        if "--" in rest:
            rest = rest[: rest.index("--")]
        pairs = list(zip(rest[::2], rest[1::2]))  # --env may repeat: keep every pair, replace the updated ones
        pairs = [(k, updates.get(k, v)) for k, v in pairs] + [(k, v) for k, v in updates.items() if k not in rest]
        args = [*head, *(x for kv in pairs for x in kv)]
        for e in env:
            args += ["--env", e]
        # the script's path as written (bash expands its ~); node.sh expands a quoted ~ in --venv itself
        return " ".join(head) + " " + shlex.join(args[4:] + (["--", *extra] if extra else []))

    for key in ("head_setup_commands", "worker_setup_commands"):
        # no token auth between this machine's users; no Ray memory monitor (it counts the whole shared machine's
        # memory, and killed this test's job supervisor while other people's runs filled it)
        c[key] = [rewrite(cmd, setup, [], ["RAY_AUTH_MODE=disabled", "RAY_memory_monitor_refresh_ms=0"])
                  for cmd in c[key]]
    for key, (updates, extra) in starts.items():
        c[key] = [rewrite(cmd, updates, extra) for cmd in c[key]]
    path = m.root / "cluster.yaml"
    path.write_text(yaml.safe_dump(c, sort_keys=False))
    os.chmod(path, 0o644)
    return path


@pytest.fixture(scope="module")
def machine():
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    m = Machine()
    try:
        m.start()
        yield m
    finally:
        m.stop()
        Path(os.environ.get("RAYSFT_RAY_UP_TRANSCRIPT", tempfile.gettempdir() + "/raysft-ray-up-transcript.txt")).write_text(
            "\n".join(TRANSCRIPT) + "\n")


def test_ray_up_setup_job_submit_tune_into_mlflow_ray_down(machine):
    from tests.hub_layout import write_nusax

    m = machine
    ports = {k: _free_port() for k in ("gcs", "dashboard", "mlflow", "client", "agent_head", "agent_worker")}
    cfg = cluster_file(m, ports)
    write_nusax(m.root / "unused-hub-cache", m.home / "data", langs=("eng", "jav", "sun"),
                sizes={"train": 64, "dev": 16, "test": 16})  # a small NusaX in the local layout
    run(["chown", "-R", f"{m.user}:{m.user}", str(m.home)], 30)
    # The user's own `ray` command (Ray only, no raysft), as on the laptop a user types `ray up` on.
    client = m.root / "client"
    run([_system_python(), "-m", "venv", "--without-pip", str(client)], 60)
    purelib = subprocess.run([str(client / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "reused.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    ray = f"RAY_AUTH_MODE=disabled {client}/bin/python -m ray.scripts.scripts"
    down = f"cd {REPO} && {ray} down -y {cfg}"
    try:
        m.as_user(f"cd {REPO} && {ray} up -y --disable-usage-stats --no-config-cache {cfg}", 600)
        # The worker is started by the head's autoscaler over SSH (setup + start): wait for both nodes.
        wait = (f"{client}/bin/python -c \"import ray, time; ray.init(address='{HEAD}:{ports['gcs']}', "
                "logging_level='ERROR'); t = time.time()\nwhile len([n for n in ray.nodes() if n['Alive']]) < 2 "
                "and time.time() - t < 300: time.sleep(2)\nprint(sorted(n['NodeManagerAddress'] for n in ray.nodes() "
                "if n['Alive']))\"")
        nodes = m.as_user(f"RAY_AUTH_MODE=disabled {wait}", 360).stdout
        # (Ray registers a head started at 127.0.0.1 under the machine's own address)
        assert nodes.count("'") == 4 and f"'{WORKER}'" in nodes, nodes
        submit = f"{ray} job submit --address http://{HEAD}:{ports['dashboard']} --"
        doctor = m.as_user(f"{submit} raysft doctor smoke", 300, check=False)
        out = doctor.stdout + doctor.stderr
        assert doctor.returncode == 0 and "checks passed" in out and "FAIL" not in out, out[-3000:]
        tune = m.as_user(f"{submit} raysft tune smoke --trials 1 --set dense.max_steps=4 --set sparse.max_steps=4", 600,
                         check=False)
        assert tune.returncode == 0, (tune.stdout + tune.stderr)[-4000:]

        from mlflow.tracking import MlflowClient

        client_ = MlflowClient(f"http://{HEAD}:{ports['mlflow']}")
        exp = client_.get_experiment_by_name("smoke")
        assert exp is not None, "no 'smoke' experiment in the head's MLflow server"
        runs = client_.search_runs([exp.experiment_id])
        assert len(runs) >= 2 and all(r.info.status == "FINISHED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
        child = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
        assert child and any(k.startswith(("f1/", "acc/")) for k in child[0].data.metrics), child[0].data.metrics
        TRANSCRIPT.append(f"# MLflow http://{HEAD}:{ports['mlflow']}: experiment smoke, {len(runs)} runs "
                          f"({len(child)} trial), all FINISHED; trial metrics: {sorted(child[0].data.metrics)[:6]}")
        m.as_user(f"cd {REPO} && {ray} exec {cfg} 'bash ~/raysft-repo/deploy/node.sh stop head'", 120, check=False)
    finally:
        m.as_user(down, 300, check=False)
    deadline = time.time() + 60
    while time.time() < deadline and m.raylets():
        time.sleep(2)
    assert not m.raylets(), "ray down left a raylet running"
