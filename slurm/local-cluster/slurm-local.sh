#!/usr/bin/env bash
# slurm-local.sh - a real, throwaway Slurm cluster on localhost for development and CI.
#
# Debian 12 (bookworm) packages (Slurm 22.05 + munge, optionally slurmdbd + MariaDB), run as
# root, works without systemd: every daemon is started directly and tracked by a PID file in
# $SLURM_LOCAL_DIR/run, and 'down' stops only those PIDs.
#
#   slurm-local.sh up      install (if needed), configure, start, smoke-test     (idempotent)
#   slurm-local.sh down    cancel all jobs, stop the daemons this script started (by PID)
#   slurm-local.sh status  daemons + sinfo; exit 0 when the controller answers, 1 otherwise
#   slurm-local.sh reset   down + delete the state dir (next 'up' also recreates the accounting DB)
#
# One cluster, many users: 'up', 'down' and 'reset' hold $SLURM_LOCAL_DIR/cluster.lock (flock)
# exclusively while they run, and whoever uses the cluster holds it shared (.ci/run around the
# tests: flock -s -o "$SLURM_LOCAL_DIR/cluster.lock" CMD); so an 'up', 'down' or 'reset' while
# another run uses the cluster is refused with one line and exit 2, instead of stopping it under
# that run. 'status' takes no lock.
#
# Knobs (environment):
#   SLURM_LOCAL_DIR         state, logs, pid files          (default /var/tmp/slurm-local)
#   SLURM_LOCAL_NODES       virtual nodes, 1..N             (default 2: n1, n2; 1 = one node named $(hostname -s))
#   SLURM_LOCAL_CPUS        CPUs advertised per node        (default $(nproc); may exceed the real count,
#                                                            e.g. 4 to run several trials per node)
#   SLURM_LOCAL_MEM_MB      RealMemory per node in MB       (default 90% of host memory / nodes)
#   SLURM_LOCAL_ACCOUNTING  1 = slurmdbd + MariaDB, sacct works (default; submitit needs it); 0 = none
#
# Partitions: debug (default), gpu (same nodes, no GPUs configured), urgent (PriorityTier=10:
# its jobs preempt debug/gpu jobs with PreemptMode=REQUEUE; the victims get their --signal first).
set -eEuo pipefail

cmd=${1:-up}
D=${SLURM_LOCAL_DIR:-/var/tmp/slurm-local}
NODES=${SLURM_LOCAL_NODES:-2}
CPUS=${SLURM_LOCAL_CPUS:-$(nproc)}
ACCT=${SLURM_LOCAL_ACCOUNTING:-1}
CLUSTER=localcluster
HOST=$(hostname -s)
DBPASS=slurm-local-test          # MariaDB runs with --skip-networking (unix socket only)
CONF=/etc/slurm/slurm.conf
DBDCONF=/etc/slurm/slurmdbd.conf
RUN_START=$(date +%FT%T)
LOCK=$D/cluster.lock

log() { echo "[slurm-local] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

tail_logs() {  # the last lines of each daemon log, then the recent real errors (known noise filtered)
  local f
  for f in "$D"/log/*.log /var/log/munge/munged.log; do
    [ -s "$f" ] || continue
    case "$f" in */apt.log) continue ;; esac   # apt failures print their own tail
    echo "----- tail -n 15 $f" >&2
    tail -n 15 "$f" >&2 || true
  done
  echo "----- errors logged by the Slurm daemons since this command started (known noise filtered out)" >&2
  cat "$D"/log/slurm*.log 2>/dev/null | awk -v t="[$RUN_START" '$1 >= t' | grep -iE 'fatal|error' |
    grep -vE 'pmix|PMIx|MPI: Cannot create|Could not open .* state file|Trying backup|No fed_mgr|Database settings not recommended' |
    tail -n 8 >&2 || true
}
fail() {  # fail MESSAGE : say what failed, show the logs, stop
  trap - ERR
  log "ERROR: $*"
  tail_logs
  log "ERROR: $*"
  log "state dir: $D (logs in $D/log); '$0 reset' then '$0 up' starts from scratch"
  exit 1
}
on_err() {  # ERR trap: an unexpected command failed
  fail "'$cmd' failed: '$3' exited with $1 (line $2)"
}
trap 'on_err $? $LINENO "$BASH_COMMAND"' ERR

# a PID file is "ours and alive" only if that PID still runs the expected program
# (guards against a recycled PID after a crash or reboot)
comm_for() {
  case "$(basename "$1" .pid)" in
    slurmd-*) echo slurmd ;; mariadb) echo mariadbd ;; *) basename "$1" .pid ;;
  esac
}
running() {  # running PID: exists and is not a zombie (PID 1 here may reap orphans late)
  kill -0 "$1" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]
}
alive() {
  local p
  [ -s "$1" ] || return 1
  p=$(cat "$1")
  running "$p" || return 1
  [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$(comm_for "$1")" ]
}
wait_for() {  # wait_for SECONDS WHAT CMD... : retry CMD (each try at most 10 s) until it succeeds
  local t=$1 what=$2 end=$((SECONDS + $1)); shift 2
  while ((SECONDS < end)); do
    if [ "$(type -t "$1")" = function ]; then "$@" >/dev/null 2>&1 && return 0
    else timeout 10 "$@" >/dev/null 2>&1 && return 0; fi
    sleep 0.2
  done
  log "timeout after ${t}s waiting for $what"; return 1
}
wait_daemon() {  # wait_daemon SECONDS NAME PIDFILE CMD... : like wait_for, but stop early if NAME died
  local t=$1 name=$2 pf=$3 start=$SECONDS; shift 3
  while ((SECONDS < start + t)); do
    timeout 10 "$@" >/dev/null 2>&1 && return 0
    if ((SECONDS >= start + 2)) && ! alive "$pf"; then fail "$name exited during startup (see its log below)"; fi
    sleep 0.2
  done
  fail "$name did not answer '$*' within ${t}s; it says: $(timeout 10 "$@" 2>&1 | tail -n 3 | tr '\n' ' ')"
}
live_pids() {  # live_pids NAME : PIDs of running (non-zombie) processes called NAME
  local p
  for p in $(pgrep -x "$1" || true); do if running "$p"; then echo -n "$p "; fi; done
}
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
stop_pidfile() {  # stop_pidfile PIDFILE NAME : TERM, wait 20 s, then KILL; only this PID
  local f=$1 p i
  if ! alive "$f"; then rm -f "$f"; return 0; fi
  p=$(cat "$f"); log "stopping $2 (pid $p)"
  kill -TERM "$p" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do running "$p" || break; sleep 0.2; done
  if running "$p"; then log "$2 still alive after 20 s, SIGKILL"; kill -KILL "$p" 2>/dev/null || true; fi
  log "  $2 stopped after $((i / 5)).$((i % 5 * 2)) s"
  rm -f "$f"
}
nodenames() { if [ "$NODES" -eq 1 ]; then echo "$HOST"; else for ((i = 1; i <= NODES; i++)); do echo "n$i"; done; fi; }

check_env() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages, writes /etc/slurm and /etc/hosts)"
  [[ "$NODES" =~ ^[1-9][0-9]*$ ]] || die "SLURM_LOCAL_NODES must be a positive integer, got '$NODES'"
  [[ "$CPUS" =~ ^[1-9][0-9]*$ ]] || die "SLURM_LOCAL_CPUS must be a positive integer, got '$CPUS'"
  [ -z "${SLURM_LOCAL_MEM_MB:-}" ] || [[ "$SLURM_LOCAL_MEM_MB" =~ ^[1-9][0-9]*$ ]] ||
    die "SLURM_LOCAL_MEM_MB must be a positive integer (MB), got '$SLURM_LOCAL_MEM_MB'"
  [[ "$ACCT" =~ ^[01]$ ]] || die "SLURM_LOCAL_ACCOUNTING must be 0 or 1, got '$ACCT'"
}

install_pkgs() {
  local p pkgs="munge slurmctld slurmd slurm-client" missing=""
  [ "$ACCT" = 1 ] && pkgs="$pkgs slurmdbd mariadb-server"
  for p in $pkgs; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing="$missing $p"
  done
  [ -z "$missing" ] && return 0
  command -v apt-get >/dev/null || die "missing packages:$missing, and no apt-get (this script targets Debian 12)"
  log "apt-get install$missing  (output: $D/log/apt.log)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >"$D/log/apt.log" 2>&1 ||
    { tail -n 20 "$D/log/apt.log" >&2; die "apt-get update failed; see $D/log/apt.log"; }
  # do not install the slurm-wlm metapackage: it pulls ~43 packages (every plugin)
  # shellcheck disable=SC2086
  apt-get install -y -q --no-install-recommends $missing >>"$D/log/apt.log" 2>&1 ||
    { tail -n 30 "$D/log/apt.log" >&2; die "apt-get install$missing failed; see $D/log/apt.log"; }
}

fix_hosts() {  # host name and virtual node names must resolve (srun, submitit, torch/Ray rendezvous)
  local n names=$HOST
  [ "$NODES" -gt 1 ] && names="$HOST $(nodenames | tr '\n' ' ')"
  for n in $names; do
    getent hosts "$n" >/dev/null && continue
    if [ ! -w /etc/hosts ]; then log "warning: $n does not resolve and /etc/hosts is not writable"; continue; fi
    [ ! -s /etc/hosts ] || [ -z "$(tail -c 1 /etc/hosts)" ] || echo >>/etc/hosts   # keep lines separate
    log "adding '127.0.0.1 $n' to /etc/hosts"
    echo "127.0.0.1 $n  # slurm-local" >>/etc/hosts
  done
}

start_munge() {
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi   # ours or someone's munged is up
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid  # forks into the background
  wait_daemon 15 munged /run/munge/munged.pid sh -c 'munge -n | unmunge'
  cp /run/munge/munged.pid "$D/run/munged.pid"   # marks it as ours, for 'down'
}

start_mariadb() {
  install -d -o mysql -g mysql -m 0755 /run/mysqld
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >>"$D/log/mariadb.log" 2>&1
  if ! mariadb-admin ping >/dev/null 2>&1; then
    log "starting mariadbd"
    nohup /usr/sbin/mariadbd --user=mysql --skip-networking --socket=/run/mysqld/mysqld.sock \
      --pid-file=/run/mysqld/mysqld.pid >>"$D/log/mariadb.log" 2>&1 </dev/null &
    echo $! >"$D/run/mariadb.pid"
    wait_daemon 60 mariadbd "$D/run/mariadb.pid" mariadb-admin ping
  fi
  if [ ! -e "$D/state/db-initialized" ]; then  # fresh state dir => fresh accounting DB (job ids restart at 1)
    mariadb -e "DROP DATABASE IF EXISTS slurm_acct_db; CREATE DATABASE slurm_acct_db;"
    touch "$D/state/db-initialized"
  fi
  mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost'; ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
}

write_conf() {  # writes $CONF (and $DBDCONF); returns 0 if anything changed, 1 if not
  local mem_total mem n i=0 acct changed=1
  mem_total=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  mem=${SLURM_LOCAL_MEM_MB:-$((mem_total * 9 / 10 / NODES))}
  if [ "$ACCT" = 1 ]; then acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost"; else acct="AccountingStorageType=accounting_storage/none"; fi
  {
    cat <<EOF
# generated by slurm-local.sh - single-machine test cluster (do not edit: rewritten by 'up')
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
$acct
JobCompType=jobcomp/none
MailProg=/bin/true
SchedulerType=sched/backfill
# re-evaluate pending jobs often (requeued jobs otherwise wait for the 30-60 s periodic passes)
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
# trust the CPUs/RealMemory below instead of the hardware (needed for >1 slurmd per host)
SlurmdParameters=config_overrides
ReturnToService=2
# requeued jobs become eligible again after cred_expire+1 s (default 120 s)
AuthInfo=cred_expire=10
# real preemption: jobs in 'urgent' requeue jobs in the other partitions and the
# victims get their --signal (submitit: USR2) first, like on a production cluster.
# (22.05 spelling; PreemptParameters=send_user_signal is 23.02+ and breaks every command here)
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
KillWait=5
MinJobAge=600
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$D/state/ctld
SlurmdSpoolDir=$D/state/slurmd-%n
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd-%n.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd-%n.log
EOF
    for n in $(nodenames); do
      if [ "$NODES" -eq 1 ]; then
        echo "NodeName=$n NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem State=UNKNOWN"
      else
        i=$((i + 1))
        echo "NodeName=$n NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((17000 + i)) CPUs=$CPUS RealMemory=$mem State=UNKNOWN"
      fi
    done
    cat <<EOF
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=30
PartitionName=gpu Nodes=ALL Default=NO MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=30
PartitionName=urgent Nodes=ALL Default=NO MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF
  } >"$D/slurm.conf.new"
  install -d /etc/slurm
  if ! cmp -s "$D/slurm.conf.new" "$CONF"; then mv "$D/slurm.conf.new" "$CONF"; changed=0; else rm -f "$D/slurm.conf.new"; fi
  chmod 644 "$CONF"
  if [ "$ACCT" = 1 ]; then
    cat >"$D/slurmdbd.conf.new" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
PidFile=$D/run/slurmdbd.pid
LogFile=$D/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DBPASS
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$D/slurmdbd.conf.new"   # slurmdbd refuses a readable config
    if ! cmp -s "$D/slurmdbd.conf.new" "$DBDCONF"; then mv "$D/slurmdbd.conf.new" "$DBDCONF"; changed=0; else rm -f "$D/slurmdbd.conf.new"; fi
    chmod 600 "$DBDCONF"
  fi
  return $changed
}

foreign_check() {  # refuse to fight a Slurm (or anything) that this script did not start
  local n i=0
  if ! alive "$D/run/slurmctld.pid"; then
    n=$(live_pids slurmctld)
    [ -z "$n" ] || die "a slurmctld not started by this script is running (pid $n); stop it, or use the SLURM_LOCAL_DIR it was started with"
    port_busy 6817 && die "port 6817 (slurmctld) is already in use by another program"
  fi
  if [ "$ACCT" = 1 ] && ! alive "$D/run/slurmdbd.pid"; then
    n=$(live_pids slurmdbd)
    [ -z "$n" ] || die "a slurmdbd not started by this script is running (pid $n); stop it first"
    port_busy 6819 && die "port 6819 (slurmdbd) is already in use by another program"
  fi
  if [ "$NODES" -gt 1 ]; then
    for n in $(nodenames); do
      i=$((i + 1))
      if ! alive "$D/run/slurmd-$n.pid" && port_busy $((17000 + i)); then die "port $((17000 + i)) (slurmd $n) is already in use"; fi
    done
  fi
  return 0
}

stop_slurm() {
  local f
  if alive "$D/run/slurmctld.pid" && [ -n "$(squeue -h -o %A 2>/dev/null)" ]; then
    log "cancelling jobs"; squeue -h -o %A | xargs -r scancel || true
    wait_for 60 "jobs to end" sh -c '[ -z "$(squeue -h -o %A)" ]' || true
  fi
  for f in "$D"/run/slurmd-*.pid; do
    if [ -e "$f" ]; then stop_pidfile "$f" "slurmd $(basename "$f" .pid)"; fi
  done
  stop_pidfile "$D/run/slurmctld.pid" slurmctld
  stop_pidfile "$D/run/slurmdbd.pid" slurmdbd
}

nodes_ready() {  # all nodes registered and usable
  [ "$(timeout 10 sinfo -h -N -t idle,mixed,allocated,completing -o %N 2>/dev/null | sort -u | wc -l)" -eq "$NODES" ]
}

up() {
  check_env
  install -d "$D/state/ctld" "$D/run" "$D/log"
  install_pkgs
  fix_hosts
  if write_conf && { alive "$D/run/slurmctld.pid" || alive "$D/run/slurmdbd.pid"; }; then
    log "configuration changed: restarting Slurm daemons"; stop_slurm
  fi
  foreign_check
  start_munge
  if [ "$ACCT" = 1 ]; then
    start_mariadb
    if ! alive "$D/run/slurmdbd.pid"; then log "starting slurmdbd"; slurmdbd; fi
    wait_daemon 30 slurmdbd "$D/run/slurmdbd.pid" sacctmgr -n list cluster
    sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null 2>&1 || true
  fi
  if ! alive "$D/run/slurmctld.pid"; then log "starting slurmctld"; slurmctld; fi
  wait_daemon 30 slurmctld "$D/run/slurmctld.pid" scontrol ping
  local n
  for n in $(nodenames); do
    if ! alive "$D/run/slurmd-$n.pid"; then log "starting slurmd $n"; slurmd -N "$n"; fi
  done
  if ! wait_for 30 "nodes to register" nodes_ready; then
    scontrol update NodeName=ALL State=RESUME 2>/dev/null || true
    if ! wait_for 30 "nodes to register" nodes_ready; then
      timeout 10 sinfo -N -l >&2 || true
      fail "the nodes did not become idle: $(nodenames | tr '\n' ' ')"
    fi
  fi
  # smoke test: a full job launch on every node
  timeout 60 srun -N "$NODES" -n "$NODES" -t 1 -o /dev/null true ||
    fail "smoke test 'srun -N $NODES -n $NODES true' failed"
  # let the smoke job's epilog finish, so that callers see the nodes idle, not 'completing'
  wait_for 15 "the smoke job to complete" sh -c '[ -z "$(sinfo -h -N -t completing -o %N)" ]' || true
  log "up: $(sinfo -h -o '%P %D %T' | tr '\n' ' ')"
}

down() {
  stop_slurm
  stop_pidfile "$D/run/mariadb.pid" mariadbd
  stop_pidfile "$D/run/munged.pid" munged
  local left; left=$(live_pids slurmstepd)
  [ -z "$left" ] || log "warning: slurmstepd still running: $left"
  log "down"
}

status() {
  local f rc=0
  for f in "$D"/run/*.pid; do
    [ -e "$f" ] || continue
    if alive "$f"; then echo "$(basename "$f" .pid): running (pid $(cat "$f"))"; else echo "$(basename "$f" .pid): dead"; fi
  done
  if scontrol ping >/dev/null 2>&1; then
    scontrol ping
    sinfo 2>/dev/null || true
    echo "jobs: $(squeue -h -o %A 2>/dev/null | wc -l) in the queue"
  else
    echo "slurmctld: not answering (cluster is down; start it with: $0 up)"; rc=1
  fi
  return $rc
}

lock_holders() {  # "pid N (command)" of each process holding $LOCK, from /proc/locks
  local ino p out=""
  ino=$(stat -c %i "$LOCK" 2>/dev/null) || { echo "another process"; return 0; }
  for p in $(awk -v i="$ino" '$2 == "FLOCK" && $6 ~ (":" i "$") {print $5}' /proc/locks 2>/dev/null | sort -un); do
    out="$out${out:+, }pid $p ($(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-100 | sed 's/ *$//'))"
  done
  echo "${out:-another process}"
}

# up/down/reset run again under flock(1), which holds the lock exclusively and closes it before
# running the script (-o): the daemons that 'up' starts must not inherit it
if [[ "$cmd" =~ ^(up|down|reset)$ ]] && [ -z "${_SLURM_LOCAL_LOCKED:-}" ]; then
  trap - ERR
  mkdir -p "$D"
  rc=0
  _SLURM_LOCAL_LOCKED=1 flock -x -n -o -E 75 "$LOCK" "$BASH" "$0" "$cmd" || rc=$?
  if [ "$rc" -eq 75 ]; then
    echo "error: the local SLURM cluster ($D) is in use by $(lock_holders); '$cmd' refused: wait for that run to end" >&2
    exit 2
  fi
  exit "$rc"
fi

case "$cmd" in
  up) up ;;
  down) down ;;
  status) trap - ERR; status ;;
  reset) down; rm -rf "$D"; log "state dir $D removed" ;;
  *) echo "usage: $0 up|down|status|reset" >&2; exit 2 ;;
esac
