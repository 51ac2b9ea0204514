#!/usr/bin/env bash
# A real multi-node Slurm cluster on this one machine, for the tests and for developers.
#
#   bash slurm/dev/cluster.sh start [--nodes N]   # install (Debian packages) if needed, start N nodes (3)
#   eval "$(bash slurm/dev/cluster.sh env)"        # SLURM_CONF for sbatch/squeue/submitit
#   bash slurm/dev/cluster.sh status
#   bash slurm/dev/cluster.sh node-pids NODE       # the PIDs inside a node (to kill one rank, say)
#   bash slurm/dev/cluster.sh stop                 # stop everything and remove the nodes' namespaces
#
# Partitions: debug (default, no limits) and short (5 minutes, 1 node per job), both on every node.
#
# Each node is a network namespace (pyr-node1 ...) joined by a veth pair to a bridge in the root
# namespace, with an address of the documentation range 198.51.100.0/24 that exists only there
# (bridge .1, node i at .10+i; no forwarding, no route out).  slurmd runs in its node's namespace
# with its own hostname (UTS namespace) and a hosts file listing every node bound over /etc/hosts
# in a private mount namespace, so jobs see node1, node2, ... and reach each other by name; the
# machine's real /etc/hosts is never touched.  The root namespace runs a munged of the cluster's
# own (its socket in the state folder), MariaDB on loopback, slurmdbd (submitit reads sacct) and
# slurmctld.  Every node has the machine's CPUs and 2 fake GPUs (character devices, gres
# AutoDetect=off): GPU requests pass through, nothing runs on them.
set -euo pipefail
STATE="${PYRAMIDREPRO_SLURM_STATE:-/tmp/pyramidrepro-slurm}"
NODES="${PYRAMIDREPRO_SLURM_NODES:-3}"
CTL="$(hostname -s)"
NET=198.51.100
CTL_ADDR=$NET.1
BRIDGE=pyrbr0
NS_PREFIX=pyr-node
CPUS="$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"  # nproc honours both: a shell with OMP_NUM_THREADS=1 got 1-CPU nodes
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
DB_PORT=3317
CTLD_PORT=6917
SLURMD_PORT=6918
DBD_PORT=6919
MUNGE_SOCKET="$STATE/munge/munge.socket"
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

node_names() { seq -f "node%g" 1 "$NODES"; }

first_job_id() {  # above every id the database has seen, so sacct never answers with a stale record
    local max
    max=$(mariadb --socket="$STATE/run/mysql.sock" -uroot -N -e \
        "select coalesce(max(id_job), 0) from slurm_acct_db.pyrtest_job_table" 2>/dev/null || echo 0)
    echo $(( ${max:-0} + 1 ))
}

write_configs() {
    mkdir -p "$STATE"/{ctld,slurmd,log,run,mysql,munge}
    chmod 755 "$STATE"
    for i in 0 1; do
        [ -e "$STATE/fakegpu$i" ] || mknod "$STATE/fakegpu$i" c 1 3
    done
    local nodes_line="node[1-$NODES]"
    [ "$NODES" = 1 ] && nodes_line=node1
    {
        echo "127.0.0.1 localhost"
        echo "$CTL_ADDR $CTL"
        for i in $(seq "$NODES"); do echo "$NET.$((10 + i)) node$i"; done
    } > "$STATE/hosts"
    cat > "$STATE/slurm.conf" <<CONF
ClusterName=pyrtest
SlurmctldHost=$CTL($CTL_ADDR)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd/%n
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
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
FirstJobId=$(first_job_id)
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$MUNGE_SOCKET
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
CONF
    for i in $(seq "$NODES"); do
        echo "NodeName=node$i NodeAddr=$NET.$((10 + i)) NodeHostname=node$i CPUs=$CPUS RealMemory=$MEM_MB" \
             "Gres=gpu:2 State=UNKNOWN" >> "$STATE/slurm.conf"
    done
    echo "PartitionName=debug Nodes=$nodes_line Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO" \
        >> "$STATE/slurm.conf"
    # a partition with per-job limits, as real clusters have: a job over them is accepted and then
    # pends for ever (PartitionTimeLimit, PartitionNodeLimit), the case `submit --wait` must notice
    echo "PartitionName=short Nodes=$nodes_line MaxTime=5 MaxNodes=1 State=UP OverSubscribe=NO" \
        >> "$STATE/slurm.conf"
    cat > "$STATE/gres.conf" <<CONF
AutoDetect=off
NodeName=$nodes_line Name=gpu File=$STATE/fakegpu[0-1]
CONF
    cat > "$STATE/slurmdbd.conf" <<CONF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
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

make_network() {
    ip link add "$BRIDGE" type bridge
    ip addr add "$CTL_ADDR/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    for i in $(seq "$NODES"); do
        local ns="$NS_PREFIX$i"
        ip netns add "$ns"
        ip link add "pyrv$i" type veth peer name eth0 netns "$ns"
        ip link set "pyrv$i" master "$BRIDGE" up
        ip -n "$ns" addr add "$NET.$((10 + i))/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
    done
}

start_munged() {
    chown munge:munge "$STATE/munge" && chmod 711 "$STATE/munge"  # clients need to reach the socket
    if [ ! -s "$STATE/munge/munge.key" ]; then
        dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
    fi
    chown munge:munge "$STATE/munge/munge.key" && chmod 400 "$STATE/munge/munge.key"
    runuser -u munge -- /usr/sbin/munged --socket="$MUNGE_SOCKET" --key-file="$STATE/munge/munge.key" \
        --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/munge/munged.log" \
        --seed-file="$STATE/munge/munged.seed"
    wait_for 10 munged bash -c "munge -S '$MUNGE_SOCKET' -n | unmunge -S '$MUNGE_SOCKET'"
}

start_slurmd() {  # start_slurmd NODE_INDEX: slurmd in the node's network namespace, own hostname and hosts
    local node="node$1"
    mkdir -p "$STATE/slurmd/$node"
    # not `ip netns exec`: it remounts /sys and slurmd's cgroup setup then fails
    nsenter --net="/run/netns/$NS_PREFIX$1" unshare --uts --mount --propagation private -- sh -c \
        "mount --bind '$STATE/hosts' /etc/hosts && hostname $node && exec slurmd -f '$STATE/slurm.conf' -N $node"
}

start() {
    case "${1:-}" in --nodes) NODES="$2" ;; "") ;; *) log "unknown option $1"; return 2 ;; esac
    if ! [[ "$NODES" =~ ^[1-9]$ ]]; then log "--nodes: expected 1 to 9, got '$NODES'"; return 2; fi
    if [ -f "$STATE/nodes" ] && ip link show "$BRIDGE" >/dev/null 2>&1 \
        && SLURM_CONF="$STATE/slurm.conf" scontrol ping >/dev/null 2>&1; then
        log "already running ($STATE, $(cat "$STATE/nodes") nodes)"
        return 0
    fi
    install_packages || return 1
    stop >/dev/null 2>&1 || true
    local t0; t0=$(date +%s.%N)
    mkdir -p "$STATE/run" "$STATE/log"
    echo "$NODES" > "$STATE/nodes"
    export SLURM_CONF="$STATE/slurm.conf"
    make_network
    mkdir -p "$STATE/munge"
    start_munged
    # MariaDB with its own data dir, loopback only
    if [ ! -d "$STATE/mysql/mysql" ]; then
        mkdir -p "$STATE/mysql"
        mariadb-install-db --user=root --datadir="$STATE/mysql" --auth-root-authentication-method=normal \
            >"$STATE/log/mysql-install.log" 2>&1
    fi
    nohup mariadbd --user=root --datadir="$STATE/mysql" --socket="$STATE/run/mysql.sock" \
        --port=$DB_PORT --bind-address=127.0.0.1 --pid-file="$STATE/run/mariadb.pid" \
        --skip-name-resolve --innodb-buffer-pool-size=64M \
        >"$STATE/log/mariadb.log" 2>&1 &
    wait_for 30 mariadb mariadb --socket="$STATE/run/mysql.sock" -uroot -e "select 1"
    write_configs
    # slurmdbd, then register the cluster before slurmctld starts
    slurmdbd  # reads slurmdbd.conf beside $SLURM_CONF
    wait_for 30 slurmdbd sacctmgr -n list cluster
    sacctmgr -i add cluster pyrtest >/dev/null 2>&1 || true
    slurmctld -f "$STATE/slurm.conf"
    wait_for 30 slurmctld scontrol ping
    # slurmctld recovers the jobs of the cluster's last life (stopped mid-job); they would hold
    # its nodes, so they are cancelled (job ids keep counting up, unlike with a wiped state)
    local stale; stale=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
    if [ -n "${stale// }" ]; then
        # shellcheck disable=SC2086
        scancel $stale && log "cancelled jobs left from the cluster's last run: $stale"
    fi
    for i in $(seq "$NODES"); do start_slurmd "$i"; done
    wait_for 30 "slurmd (every node idle)" bash -c \
        "[ \"\$(sinfo -h -N -p debug -o '%N %t' | grep -c ' idle\$')\" = $NODES ]"
    local secs; secs=$(awk "BEGIN {printf \"%.1f\", $(date +%s.%N) - $t0}")
    log "up in ${secs} s: $NODES node(s) node1..node$NODES at $NET.11.., $CPUS CPUs and 2 fake GPUs each;" \
        "SLURM_CONF=$STATE/slurm.conf"
}

alive() {  # alive PID: running and not a zombie (killed daemons linger as zombies until reaped)
    local st
    st=$(ps -o stat= -p "$1" 2>/dev/null | tr -d ' ') || return 1
    [ -n "$st" ] && [ "${st:0:1}" != Z ]
}

stop_pid() {  # stop_pid PID: TERM, wait up to 5 s, then KILL
    local pid=$1
    alive "$pid" || return 0
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do alive "$pid" || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}

stop() {
    local t0; t0=$(date +%s.%N)
    local pidf
    for pidf in "$STATE"/run/slurmd-*.pid "$STATE/run/slurmctld.pid" "$STATE/run/slurmdbd.pid" \
                "$STATE/run/mariadb.pid" "$STATE/munge/munged.pid"; do
        [ -f "$pidf" ] || continue
        stop_pid "$(cat "$pidf")"
        rm -f "$pidf"
    done
    # every process left in a node (job steps, ranks) goes with it, then the namespace
    local ns
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$NS_PREFIX" || true); do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns delete "$ns" 2>/dev/null || true
    done
    ip link delete "$BRIDGE" 2>/dev/null || true
    rm -f "$STATE/nodes"
    log "stopped in $(awk "BEGIN {printf \"%.1f\", $(date +%s.%N) - $t0}") s"
}

case "${1:-}" in
    start) shift; start "$@" ;;
    stop) stop ;;
    env) echo "export SLURM_CONF=$STATE/slurm.conf" ;;
    status) SLURM_CONF="$STATE/slurm.conf" sinfo -N && SLURM_CONF="$STATE/slurm.conf" squeue ;;
    node-pids) ip netns pids "$NS_PREFIX${2#node}" ;;
    *) echo "usage: $0 start [--nodes N] | stop | env | status | node-pids NODE" >&2; exit 2 ;;
esac
