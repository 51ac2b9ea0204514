#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for the tests and for developers.
#
#   bash slurm/dev/cluster.sh start    # install (Debian packages) if needed, then start everything
#   eval "$(bash slurm/dev/cluster.sh env)"   # SLURM_CONF for sbatch/squeue/submitit
#   bash slurm/dev/cluster.sh status
#   bash slurm/dev/cluster.sh stop     # stop by pid, in reverse order
#
# munged (as the munge user), MariaDB with its own data dir on loopback, slurmdbd (accounting:
# submitit needs sacct, or a job that dies without a result makes job.result() hang), slurmctld
# and slurmd, all as root without systemd.  The node is `hostname -s` with 2 fake GPUs (character
# devices, gres AutoDetect=off): GPU requests pass through, nothing runs on them.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
STATE="${PYRAMIDREPRO_SLURM_STATE:-/tmp/pyramidrepro-slurm}"
NODE="$(hostname -s)"
CPUS="$(nproc)"
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
DB_PORT=3317
CTLD_PORT=6917
SLURMD_PORT=6918
DBD_PORT=6919
PACKAGES="slurmctld slurmd slurm-client munge slurmdbd mariadb-server"

log() { echo "cluster: $*" >&2; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmdbd >/dev/null && command -v munged >/dev/null \
        && command -v mariadbd >/dev/null; then
        return 0
    fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        log "Slurm is not installed and cannot be installed here (needs root and apt-get)"
        return 1
    fi
    log "installing $PACKAGES (Debian packages) ..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null 2>&1 || true
    apt-get install -y -qq $PACKAGES >/dev/null 2>&1 || { log "apt-get install failed"; return 1; }
}

write_configs() {
    mkdir -p "$STATE"/{ctld,slurmd,log,run,mysql}
    chmod 755 "$STATE"
    for i in 0 1; do
        [ -e "$STATE/fakegpu$i" ] || mknod "$STATE/fakegpu$i" c 1 3
    done
    cat > "$STATE/slurm.conf" <<CONF
ClusterName=pyrtest
SlurmctldHost=$NODE
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=300
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$NODE CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
    cat > "$STATE/gres.conf" <<CONF
AutoDetect=off
NodeName=$NODE Name=gpu File=$STATE/fakegpu[0-1]
CONF
    cat > "$STATE/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=root
StorageLoc=slurm_acct_db
CONF
    chmod 600 "$STATE/slurmdbd.conf"
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local secs=$1 what=$2; shift 2
    for _ in $(seq $((secs * 5))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    log "$what did not come up; logs in $STATE/log"
    return 1
}

start() {
    if [ -f "$STATE/run/slurmd.pid" ] && kill -0 "$(cat "$STATE/run/slurmd.pid")" 2>/dev/null; then
        log "already running ($STATE)"
        return 0
    fi
    install_packages || return 1
    stop >/dev/null 2>&1 || true
    write_configs
    export SLURM_CONF="$STATE/slurm.conf"
    # munge
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    fi
    if ! pgrep -x munged >/dev/null; then
        runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
    fi
    cp /run/munge/munged.pid "$STATE/run/munged.pid" 2>/dev/null || true
    wait_for 10 munged bash -c "munge -n | unmunge"
    # MariaDB with its own data dir, loopback only
    if [ ! -d "$STATE/mysql/mysql" ]; then
        mariadb-install-db --user=root --datadir="$STATE/mysql" --auth-root-authentication-method=normal \
            >"$STATE/log/mysql-install.log" 2>&1
    fi
    nohup mariadbd --user=root --datadir="$STATE/mysql" --socket="$STATE/run/mysql.sock" \
        --port=$DB_PORT --bind-address=127.0.0.1 --pid-file="$STATE/run/mariadb.pid" \
        --skip-name-resolve --innodb-buffer-pool-size=64M \
        >"$STATE/log/mariadb.log" 2>&1 &
    wait_for 30 mariadb mariadb --socket="$STATE/run/mysql.sock" -uroot -e "select 1"
    # slurmdbd, then register the cluster before slurmctld starts
    slurmdbd  # reads slurmdbd.conf beside $SLURM_CONF
    wait_for 30 slurmdbd sacctmgr -n list cluster
    sacctmgr -i add cluster pyrtest >/dev/null 2>&1 || true
    slurmctld -f "$STATE/slurm.conf"
    wait_for 30 slurmctld scontrol ping
    slurmd -f "$STATE/slurm.conf"
    wait_for 30 "slurmd (node idle)" bash -c "sinfo -h -N -o %t | grep -qx idle"
    log "up: node $NODE, $CPUS CPUs, 2 fake GPUs; SLURM_CONF=$STATE/slurm.conf"
}

stop() {
    for name in slurmd slurmctld slurmdbd mariadb; do
        local pidf="$STATE/run/$name.pid"
        if [ -f "$pidf" ]; then
            local pid; pid="$(cat "$pidf")"
            if kill -0 "$pid" 2>/dev/null; then
                kill "$pid" 2>/dev/null || true
                for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
                kill -9 "$pid" 2>/dev/null || true
            fi
            rm -f "$pidf"
        fi
    done
    log "stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    env) echo "export SLURM_CONF=$STATE/slurm.conf" ;;
    status) SLURM_CONF="$STATE/slurm.conf" sinfo && SLURM_CONF="$STATE/slurm.conf" squeue ;;
    *) echo "usage: $0 start|stop|env|status" >&2; exit 2 ;;
esac
