#!/usr/bin/env bash
# One node of a raysft Ray cluster: the setup and start steps that cluster.yaml (AWS, Ray's docker image) and
# cluster-local.yaml (your machines over SSH) share. `ray up` syncs the repo to every node and runs, from it:
#
#   node.sh setup head|worker [options]   install raysft (+ Ray pinned) and write ~/.raysft_env (read by every shell)
#   node.sh start head|worker [options] [-- extra `ray start` args]
#                                         (re)start Ray on this node; on the head also the MLflow server
#   node.sh stop  head|worker [--temp-dir DIR]
#                                         stop the head's MLflow server and this node's Ray (`ray down` stops Ray only)
#
# setup options:
#   --venv DIR          install into this venv (created with python3 when missing) and put it first on PATH;
#                       default: the current python (the docker image's)
#   --reuse-site DIR    install no dependencies: reuse the packages of this site-packages folder (an offline node
#                       with an installed environment, as tests/test_ray_up.py does); needs --venv
#   --pip-extra PKGS    more packages to install with raysft (e.g. boto3)
#   --storage URI       RAYSFT_STORAGE on every node (an s3:// URI or a folder every node shares)
#   --data DIR          RAYSFT_DATA_DIR (omit it: data.source auto then reads the hub cache, see `raysft data fetch`)
#   --mlflow-port N     the head's MLflow server port (MLFLOW_TRACKING_URI=http://<head>:N); default 5000
#   --env K=V           one more line for ~/.raysft_env (repeatable)
# start options:
#   --port N --dashboard-port N --mlflow-port N --drivers N (the head's raysft_driver resource: trials at once)
#   --mlflow-artifacts URI (the server's --artifacts-destination)  --temp-dir DIR (Ray's session folder)
#
# The node's address is the one `ray up` (or the head's autoscaler) reached it at over SSH ($SSH_CONNECTION), so a
# node is registered in Ray under the IP the provider knows it by, even with several nodes on one machine.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RAY_VERSION="2.60.0"   # tests/test_cluster.py checks this against the Ray raysft is tested with
ENV_FILE="$HOME/.raysft_env"

die() { echo "node.sh: $*" >&2; exit 2; }

node_ip() {
  if [ -n "${SSH_CONNECTION:-}" ]; then echo "$SSH_CONNECTION" | awk '{print $3}'; else hostname -I | awk '{print $1}'; fi
}

make_venv() {  # make_venv DIR [REUSE_SITE]
  local venv="$1" site="${2:-}"
  if [ -n "$site" ]; then
    [ -d "$site" ] || die "--reuse-site $site is not a folder"
    [ -x "$venv/bin/python" ] || python3 -m venv --without-pip "$venv"
    local own
    own="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    echo "$site" > "$own/raysft-reused-site.pth"
    # The reused packages' commands (ray, mlflow, ...) as small launchers on this venv's python.
    "$venv/bin/python" - "$venv/bin" <<'PY'
import importlib.metadata as md, os, sys
bin_dir = sys.argv[1]
for ep in md.entry_points(group="console_scripts"):
    path = os.path.join(bin_dir, ep.name)
    if ep.name in ("ray", "mlflow", "serve", "tune") and not os.path.exists(path):
        mod, _, attr = ep.value.partition(":")
        with open(path, "w") as f:
            f.write(f"#!{sys.executable}\nimport sys\nfrom {mod} import {attr.split('.')[0]} as _m\n"
                    f"sys.exit(_m{'.' + attr.split('.', 1)[1] if '.' in attr else ''}())\n")
        os.chmod(path, 0o755)
PY
  else
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  fi
}

setup() {
  local role="$1"; shift
  local venv="" site="" extra="" storage="" data="" mlflow_port=5000 envs=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --venv) venv="$2"; shift 2 ;;
      --reuse-site) site="$2"; shift 2 ;;
      --pip-extra) extra="$2"; shift 2 ;;
      --storage) storage="$2"; shift 2 ;;
      --data) data="$2"; shift 2 ;;
      --mlflow-port) mlflow_port="$2"; shift 2 ;;
      --env) envs+=("$2"); shift 2 ;;
      *) die "unknown setup option $1" ;;
    esac
  done
  local py=python3
  if [ -n "$venv" ]; then
    venv="${venv/#\~/$HOME}"
    make_venv "$venv" "$site"
    py="$venv/bin/python"
  elif [ -n "$site" ]; then
    die "--reuse-site needs --venv"
  fi
  if [ -n "$site" ]; then
    "$py" -m pip install -q --no-deps --no-build-isolation -e "$REPO"
  else
    # shellcheck disable=SC2086
    "$py" -m pip install -q -U pip && "$py" -m pip install -q -e "$REPO" "ray[default,tune,train]==$RAY_VERSION" $extra
  fi
  local ip head_ip
  ip="$(node_ip)"
  if [ "$role" = head ]; then head_ip="$ip"; else head_ip="${RAY_HEAD_IP:?RAY_HEAD_IP is not set (ray up sets it on workers)}"; fi
  {
    [ -n "$venv" ] && echo "export PATH=$venv/bin:\$PATH"
    echo "export RAYSFT_NODE_IP=$ip"
    [ -n "$storage" ] && echo "export RAYSFT_STORAGE=$storage"
    [ -n "$data" ] && echo "export RAYSFT_DATA_DIR=$data"
    echo "export MLFLOW_TRACKING_URI=http://$head_ip:$mlflow_port"
    echo "export RAY_USAGE_STATS_ENABLED=0"
    for kv in "${envs[@]}"; do echo "export $kv"; done
  } > "$ENV_FILE"
  grep -qs raysft_env "$HOME/.bashrc" || echo '. ~/.raysft_env' >> "$HOME/.bashrc"
  [ "$role" = head ] && mkdir -p "$HOME/raysft-mlflow"
  # shellcheck disable=SC1090
  . "$ENV_FILE"
  echo "node.sh: $role $ip ready: $(raysft --help >/dev/null && echo raysft) $(ray --version | head -1)"
}

start() {
  local role="$1"; shift
  local port=6379 dash=8265 mlflow_port=5000 drivers=8 artifacts="$HOME/raysft-mlflow/artifacts" temp="" extra=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --port) port="$2"; shift 2 ;;
      --dashboard-port) dash="$2"; shift 2 ;;
      --mlflow-port) mlflow_port="$2"; shift 2 ;;
      --drivers) drivers="$2"; shift 2 ;;
      --mlflow-artifacts) artifacts="$2"; shift 2 ;;
      --temp-dir) temp="$2"; shift 2 ;;
      --) shift; extra=("$@"); break ;;
      *) die "unknown start option $1" ;;
    esac
  done
  # shellcheck disable=SC1090
  . "$ENV_FILE"
  ulimit -n 65536 2>/dev/null || true
  local temp_args=()
  [ -n "$temp" ] && temp_args=(--temp-dir="${temp/#\~/$HOME}")
  local ip
  ip="$(node_ip)"
  if [ "$role" = head ]; then
    ray stop   # `ray up` restarts the cluster: give it machines that run no other Ray of this user
    # raysft_driver: trials at once at most; each trial's driver takes one unit (and no CPU) on the head.
    ray start --head --port="$port" --node-ip-address="$ip" --autoscaling-config="$HOME/ray_bootstrap_config.yaml" \
      --dashboard-host=0.0.0.0 --dashboard-port="$dash" --disable-usage-stats \
      --resources="{\"raysft_driver\": $drivers}" "${temp_args[@]}" "${extra[@]}"
    # MLflow on the head: runs in sqlite on the head's disk (one writer: the sweep's driver, also on the head),
    # artifacts served by the server (clients need no storage credentials).
    local dir="$HOME/raysft-mlflow"
    mkdir -p "$dir"
    if [ -f "$dir/server.pid" ]; then kill "$(cat "$dir/server.pid")" 2>/dev/null || true; fi
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false nohup mlflow server --host 0.0.0.0 --port "$mlflow_port" --workers 2 \
      --backend-store-uri "sqlite:///$dir/mlflow.db" --artifacts-destination "$artifacts" \
      > "$dir/server.log" 2>&1 < /dev/null &
    echo $! > "$dir/server.pid"
    echo "node.sh: head $ip: Ray on :$port (dashboard :$dash), MLflow on :$mlflow_port (pid $(cat "$dir/server.pid"))"
  else
    stop_raylet "$ip"   # a restart: this node's Ray only (a worker may share its machine with the head)
    ray start --address="${RAY_HEAD_IP:?RAY_HEAD_IP is not set}:$port" --node-ip-address="$ip" --disable-usage-stats \
      "${temp_args[@]}" "${extra[@]}"
  fi
}

stop_raylet() {  # stop_raylet IP: this user's raylet of node IP (its workers and agents end with it)
  local pattern pids
  pattern="raylet/raylet .*--node_ip_address=${1//./\\.}( |$)"
  pids="$(pgrep -u "$(id -u)" -f "$pattern" || true)"
  [ -n "$pids" ] || return 0
  # shellcheck disable=SC2086
  kill $pids 2>/dev/null || true
  for _ in $(seq 60); do pgrep -u "$(id -u)" -f "$pattern" >/dev/null || return 0; sleep 0.5; done
  # shellcheck disable=SC2086
  kill -9 $pids 2>/dev/null || true
}

stop() {
  local role="$1"; shift
  local dir="$HOME/raysft-mlflow"
  if [ "$role" = head ] && [ -f "$dir/server.pid" ]; then
    kill "$(cat "$dir/server.pid")" 2>/dev/null || true
    rm -f "$dir/server.pid"
  fi
  # shellcheck disable=SC1090
  . "$ENV_FILE"
  if [ "$role" = head ]; then ray stop; else stop_raylet "$(node_ip)"; fi
}

[ $# -ge 2 ] || die "usage: node.sh setup|start|stop head|worker [options]"
cmd="$1"; role="$2"; shift 2
case "$role" in head|worker) ;; *) die "the role must be head or worker, got $role" ;; esac
case "$cmd" in
  setup) setup "$role" "$@" ;;
  start) start "$role" "$@" ;;
  stop) stop "$role" "$@" ;;
  *) die "unknown command $cmd: use setup, start or stop" ;;
esac
