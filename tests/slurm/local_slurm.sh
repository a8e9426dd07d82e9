#!/usr/bin/env bash
# tests/slurm/local_slurm.sh - a REAL SLURM cluster on one machine for the SLURM tests (adapted from a recipe proven
# on Debian 12): own munged + slurmctld + N slurmd "nodes" n1..nN.
#
#   local_slurm.sh start        install pkgs if missing, start daemons, wait until all nodes idle (idempotent;
#                               prints "SLURM READY ..."; restarts daemons only if the generated config changed)
#   local_slurm.sh stop         stop every daemon it started, by PID from its pid files (never by name); netns teardown
#   local_slurm.sh status       sinfo + daemon PIDs
#   local_slurm.sh env          print "export SLURM_CONF=..."  -> eval "$(local_slurm.sh env)" before sbatch/srun/squeue
#   local_slurm.sh run ARGS...  sbatch --parsable ARGS, poll until the job ends, exit 0 iff COMPLETED
#
# Modes (LS_MODE):
#   loopback (default) all nodes share the host network stack; node nI = 127.0.0.I, slurmd port LS_PORT_BASE+I.
#                      Adds "127.0.0.I nI" to /etc/hosts once (job scripts resolve node names).
#   netns              node nI = network+UTS+mount namespace: own IP LS_NET.(10+I), own hostname nI, own loopback,
#                      private /etc/hosts (bind mount inside its namespace); bridge lsbr0 = LS_NET.1 (slurmctld).
#                      Catches multi-node bugs the loopback mode cannot (e.g. MASTER_ADDR=localhost).
# Env: LS_NODES (2)  LS_PREFIX (/tmp/slurm-local-$LS_MODE)  LS_CTLD_PORT (27817 loopback / 28817 netns)
#      LS_PORT_BASE (27820)  LS_NET (10.231.0)  LS_READY_TIMEOUT (60)  LS_JOB_TIMEOUT (900, for "run")
# Proven on: Debian 12, root, 2 CPUs, no systemd (PID 1 is not systemd), slurm-wlm 22.05.8 (multiple-slurmd build:
# "slurmd -N name"), munge 0.5.15; no cgroups used (proctrack/linuxproc, task/none).
set -euo pipefail

MODE=${LS_MODE:-loopback}
case "$MODE" in loopback|netns) ;; *) echo "LS_MODE must be loopback or netns" >&2; exit 2;; esac
NODES=${LS_NODES:-2}
P=${LS_PREFIX:-/tmp/slurm-local-$MODE}
if [ "$MODE" = netns ]; then CTLD_PORT=${LS_CTLD_PORT:-28817}; else CTLD_PORT=${LS_CTLD_PORT:-27817}; fi
PORT_BASE=${LS_PORT_BASE:-27820}
NET=${LS_NET:-10.231.0}
BR=lsbr0
READY_TIMEOUT=${LS_READY_TIMEOUT:-60}
CONF=$P/slurm.conf
M=$P/munge
export SLURM_CONF=$CONF
log() { echo "[local_slurm $(date +%T)] $*" >&2; }

# alive PIDFILE COMM: the pid in PIDFILE is a live, non-zombie process named COMM
alive() {
  local pid
  [ -s "$1" ] && pid=$(cat "$1" 2>/dev/null) && [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
  [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}
stop_pidfile() {  # stop_pidfile PIDFILE COMM
  local pid i
  if alive "$1" "$2"; then
    pid=$(cat "$1"); kill "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do alive "$1" "$2" || break; sleep 0.1; done
    alive "$1" "$2" && { kill -9 "$pid" 2>/dev/null || true; sleep 0.2; }
    log "stopped $2 (pid $pid)"
  fi
  rm -f "$1"
}

install_pkgs() {
  local need=0 c pkgs="slurmctld slurmd slurm-client munge"
  for c in slurmctld slurmd slurmstepd sbatch munged mungekey; do command -v "$c" >/dev/null || need=1; done
  [ "$MODE" = netns ] && for c in ip nsenter unshare; do command -v "$c" >/dev/null || { need=1; pkgs="$pkgs iproute2 util-linux"; }; done
  [ "$need" = 0 ] && return 0
  log "installing $pkgs (apt)"
  export DEBIAN_FRONTEND=noninteractive
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $pkgs >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends $pkgs >/dev/null; }
}

start_munge() {  # private munged (own key/socket/pid/log; runs as root): no /run/munge, no systemd, no /etc/munge
  mkdir -p "$M"; chmod 755 "$P" "$M"  # munged: socket dir must be o+x and not group/other-writable
  [ -s "$M/munge.key" ] || { mungekey --create --keyfile="$M/munge.key"; chmod 400 "$M/munge.key"; }
  alive "$M/munged.pid" munged && return 0
  rm -f "$M/munged.pid" "$M/munge.socket" "$M/munge.socket.lock"
  munged --socket="$M/munge.socket" --key-file="$M/munge.key" --pid-file="$M/munged.pid" \
         --log-file="$M/munged.log" --seed-file="$M/munged.seed"
  for _ in $(seq 1 50); do munge -S "$M/munge.socket" -n </dev/null 2>/dev/null | unmunge -S "$M/munge.socket" >/dev/null 2>&1 && break; sleep 0.1; done
  log "munged started (pid $(cat "$M/munged.pid"))"
}

setup_netns() {  # bridge + one netns per node (veth), private hosts file for the nodes
  local i ns
  ip link show "$BR" >/dev/null 2>&1 || { ip link add "$BR" type bridge; ip addr add "$NET.1/24" dev "$BR"; }
  ip link set "$BR" up
  for i in $(seq 1 "$NODES"); do
    ns=ls-n$i
    [ -e "/run/netns/$ns" ] || ip netns add "$ns"
    if ! ip link show "lsv$i" >/dev/null 2>&1; then
      ip link add "lsv$i" type veth peer name eth0 netns "$ns"
      ip link set "lsv$i" master "$BR" up
      ip -n "$ns" addr add "$NET.$((10 + i))/24" dev eth0
    fi
    ip -n "$ns" link set lo up; ip -n "$ns" link set eth0 up
  done
  # ::ffff: twins: c10d reverse-resolves peers seen on its dual-stack socket; without them glibc falls through
  # to DNS (unreachable in the netns) and torch warns "hostname of the client socket cannot be retrieved. err=-3"
  { echo "127.0.0.1 localhost"; echo "::1 localhost ip6-localhost"; echo "::ffff:127.0.0.1 localhost"
    echo "$NET.1 $(hostname)"
    for i in $(seq 1 "$NODES"); do echo "$NET.$((10 + i)) n$i"; echo "::ffff:$NET.$((10 + i)) n$i"; done
  } > "$P/hosts"
}
teardown_netns() {
  local ns
  for ns in /run/netns/ls-n*; do [ -e "$ns" ] && ip netns del "${ns##*/}" && log "deleted netns ${ns##*/}"; done
  if ip link show "$BR" >/dev/null 2>&1; then ip link del "$BR"; log "deleted bridge $BR"; fi
  # a process left in a node's namespace (a job step still exiting) keeps its veth alive; the next start would
  # find lsvN and skip it, leaving the new namespace without eth0
  for i in $(seq 1 "$NODES"); do if ip link show "lsv$i" >/dev/null 2>&1; then ip link del "lsv$i"; log "deleted veth lsv$i"; fi; done
  return 0
}

gen_conf() {
  local hw mem i
  hw=$(slurmd -C | head -1 | grep -oE '(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=[0-9]+' | tr '\n' ' ')
  mem=$(slurmd -C | head -1 | grep -oP 'RealMemory=\K[0-9]+'); mem=$(( mem * 9 / 10 / NODES ))
  cat <<EOF
# generated by local_slurm.sh (LS_MODE=$MODE)
ClusterName=local$MODE
SlurmctldHost=$(if [ "$MODE" = netns ]; then echo "$(hostname)($NET.1)"; else echo localhost; fi)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also holds a requeued job this long before it may start again (default 120 s; 5 is the minimum)
AuthInfo=socket=$M/munge.socket,cred_expire=5
MailProg=/bin/true
StateSaveLocation=$P/state
SlurmdSpoolDir=$P/spool/%n
SlurmctldPidFile=$P/slurmctld.pid
SlurmdPidFile=$P/slurmd-%n.pid
SlurmctldLogFile=$P/log/slurmctld.log
SlurmdLogFile=$P/log/slurmd-%n.log
# no cgroups/systemd needed
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# default batch_sched_delay=3 holds a submitted batch job up to 3 s before it starts; a requeued job becomes
# startable when its hold ends, which no event announces: the scheduler loops (60 s and 30 s by default) find it
SchedulerParameters=batch_sched_delay=0,sched_interval=1,bf_interval=1
ReturnToService=2
MpiDefault=none
# no slurmdbd: plain sacct is disabled; "sacct -c -j ID" reads this completion log instead
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$P/log/jobcomp.log
KillWait=5
# finished jobs stay visible to "scontrol show job" for 10 min
MinJobAge=600
EOF
  for i in $(seq 1 "$NODES"); do
    if [ "$MODE" = netns ]; then
      echo "NodeName=n$i NodeHostname=n$i NodeAddr=$NET.$((10 + i)) Port=6818 $hw RealMemory=$mem State=UNKNOWN"
    else
      echo "NodeName=n$i NodeHostname=localhost NodeAddr=127.0.0.$i Port=$((PORT_BASE + i)) $hw RealMemory=$mem State=UNKNOWN"
    fi
  done
  echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
}

nodes_ready() {
  [ "$(sinfo -h -N -o '%N %T' 2>/dev/null | awk '$2 ~ /^(idle|mixed|allocated|completing)$/ {print $1}' | sort -u | wc -l)" -eq "$NODES" ]
}

stop_slurm() {
  local f
  for f in "$P"/slurmd-*.pid; do [ -e "$f" ] && stop_pidfile "$f" slurmd; done
  stop_pidfile "$P/slurmctld.pid" slurmctld
}

start_slurmd() {  # start_slurmd I
  if [ "$MODE" = netns ]; then
    # nsenter, not "ip netns exec": that remounts /sys, hiding /sys/fs/cgroup, and slurmd then dies with
    # "No filesystem mounted on /sys/fs/cgroup" (it initialises its cgroup plugin even with proctrack/linuxproc)
    nsenter --net="/run/netns/ls-n$1" unshare --uts --mount --propagation private \
      sh -c "mount --bind '$P/hosts' /etc/hosts && hostname n$1 && exec slurmd -f '$CONF' -N n$1"
  else
    slurmd -f "$CONF" -N "n$1"
  fi
  log "slurmd n$1 started"
}

start() {
  local t0=$SECONDS i end
  [ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }
  install_pkgs
  mkdir -p "$P/state" "$P/log"; for i in $(seq 1 "$NODES"); do mkdir -p "$P/spool/n$i"; done
  if [ "$MODE" = netns ]; then setup_netns; else
    for i in $(seq 1 "$NODES"); do  # job scripts resolve node names: MASTER_ADDR=$(scontrol show hostnames ..|head -1)
      getent hosts "n$i" >/dev/null || echo "127.0.0.$i n$i  # local_slurm" >> /etc/hosts
    done
  fi
  start_munge
  if ! gen_conf | cmp -s - "$CONF"; then gen_conf > "$CONF.new"; stop_slurm; mv "$CONF.new" "$CONF"; log "wrote $CONF"; fi
  alive "$P/slurmctld.pid" slurmctld || { slurmctld -f "$CONF"; log "slurmctld started"; }
  for i in $(seq 1 "$NODES"); do alive "$P/slurmd-n$i.pid" slurmd || start_slurmd "$i"; done
  end=$((SECONDS + READY_TIMEOUT))
  until nodes_ready; do
    if [ $SECONDS -ge $end ]; then log "NOT READY after ${READY_TIMEOUT}s"; sinfo -N -l >&2 || true; tail -n 20 "$P"/log/*.log >&2 || true; exit 1; fi
    for i in $(sinfo -h -N -t down,drain,fail -o %N 2>/dev/null | sort -u); do scontrol update NodeName="$i" State=RESUME 2>/dev/null || true; done
    sleep 0.2
  done
  echo "SLURM READY ($MODE) in $((SECONDS - t0))s: $(sinfo -h -N -o '%N=%T' | sort -u | tr '\n' ' ')SLURM_CONF=$CONF"
}

stop() {
  stop_slurm
  stop_pidfile "$M/munged.pid" munged
  [ "$MODE" = netns ] && teardown_netns
  echo "SLURM STOPPED ($MODE)"
}

run_job() {  # sbatch, then poll scontrol (faster than "sbatch --wait", which polls every 2..10 s)
  local j st end=$((SECONDS + ${LS_JOB_TIMEOUT:-900}))
  j=$(sbatch --parsable "$@")
  while :; do
    st=$(scontrol show job -o "$j" 2>/dev/null | grep -oP 'JobState=\K\S+' || true)
    case "$st" in PENDING|CONFIGURING|RUNNING|COMPLETING|SUSPENDED|REQUEUED|RESIZING|"") ;; *) break;; esac
    [ $SECONDS -ge $end ] && { log "job $j still $st after ${LS_JOB_TIMEOUT:-900}s"; return 2; }
    sleep 0.2
  done
  echo "job $j $st exit=$(scontrol show job -o "$j" | grep -oP ' ExitCode=\K\S+') out=$(scontrol show job -o "$j" | grep -oP ' StdOut=\K\S+')"
  [ "$st" = COMPLETED ]
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) sinfo -N -l || true; for f in "$M/munged.pid" "$P"/slurmctld.pid "$P"/slurmd-*.pid; do [ -s "$f" ] && echo "$f: $(cat "$f")"; done; true ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  run) shift; run_job "$@" ;;
  *) echo "usage: $0 start|stop|status|env|run SBATCH_ARGS..." >&2; exit 2 ;;
esac
